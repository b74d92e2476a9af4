import pytest
import torch

from asmix import PGD, AsmixError, load_model
from asmix.runtime import batch_generator
from conftest import LinearImageModel


def test_linf_pgd_breaks_a_linear_model_and_stays_in_the_ball():
    torch.manual_seed(0)
    model = LinearImageModel(16, 2, seed=1).eval()
    x = torch.rand(64, 1, 4, 4) * 0.5 + 0.25
    y = model(x).argmax(1)  # clean accuracy 100% by construction
    # a linear model's worst case in the l_inf ball is known: margin - eps * ||w_y - w_other||_1
    w = model.linear.weight.detach()
    logits = model(x).detach()
    margin = (logits[:, 0] - logits[:, 1]).abs()
    eps = 0.3
    breakable = margin < eps * (w[0] - w[1]).abs().sum()
    x_adv = PGD(eps=eps, steps=20).perturb(model, x, y, generator=torch.Generator().manual_seed(0))
    assert (x_adv - x).abs().max() <= eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    fooled = model(x_adv).argmax(1) != y
    assert breakable.sum() > 10
    assert torch.equal(fooled, breakable)  # PGD finds exactly the examples that can be broken


def test_l2_pgd_respects_the_radius():
    model = LinearImageModel(16, 3, seed=2).eval()
    x = torch.rand(8, 1, 4, 4)
    y = model(x).argmax(1)
    x_adv = PGD(eps=0.5, steps=10, norm="l2").perturb(model, x, y, generator=torch.Generator().manual_seed(1))
    assert ((x_adv - x).flatten(1).norm(dim=1) <= 0.5 + 1e-5).all()
    loss = torch.nn.functional.cross_entropy
    assert loss(model(x_adv), y) > loss(model(x), y)


def test_pgd_is_deterministic_and_batch_independent():
    model = load_model("demo-std")
    x = torch.rand(6, 1, 28, 28)
    y = torch.arange(6)
    attack = PGD(eps=0.1, steps=3, random_start=False)
    whole = attack.perturb(model, x, y)
    halves = torch.cat([attack.perturb(model, x[:3], y[:3]), attack.perturb(model, x[3:], y[3:])])
    assert torch.allclose(whole, halves, atol=1e-6)
    seeded = PGD(eps=0.1, steps=3)
    assert torch.equal(seeded.perturb(model, x, y, generator=batch_generator(1, "a")),
                       seeded.perturb(model, x, y, generator=batch_generator(1, "a")))
    assert not torch.equal(seeded.perturb(model, x, y, generator=batch_generator(1, "a")),
                           seeded.perturb(model, x, y, generator=batch_generator(2, "a")))


def test_pgd_does_not_touch_model_gradients():
    model = LinearImageModel(16, 2)
    PGD(eps=0.1, steps=2).perturb(model, torch.rand(2, 1, 4, 4), torch.tensor([0, 1]))
    assert model.linear.weight.grad is None


@pytest.mark.parametrize("kwargs", [{"eps": -0.1}, {"eps": 0.1, "steps": -1}, {"eps": 0.1, "norm": "l1"},
                                    {"eps": 0.1, "step_size": 0.0}])
def test_bad_attack_settings(kwargs):
    with pytest.raises(AsmixError):
        PGD(**kwargs)


@pytest.mark.parametrize("kwargs, message", [
    ({"eps": float("nan")}, "eps must be a finite number, got nan"),
    ({"eps": float("inf")}, "eps must be a finite number, got inf"),
    ({"eps": 0.1, "step_size": float("inf")}, "step size must be a finite number, got inf"),
    ({"eps": 0.1, "step_size": float("nan")}, "step size must be a finite number, got nan"),
])
def test_non_finite_radius_and_step_are_refused(kwargs, message):
    # NaN slipped through ``eps < 0`` and ``step_size <= 0``; inf gave an attack without a ball
    with pytest.raises(AsmixError, match=message):
        PGD(**kwargs)
