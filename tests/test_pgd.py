import pytest
import torch
from conftest import LinearImageModel

from asmix import PGD, AsmixError, load_model
from asmix.runtime import batch_generator


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
    assert torch.equal(
        seeded.perturb(model, x, y, generator=batch_generator(1, "a")),
        seeded.perturb(model, x, y, generator=batch_generator(1, "a")),
    )
    assert not torch.equal(
        seeded.perturb(model, x, y, generator=batch_generator(1, "a")),
        seeded.perturb(model, x, y, generator=batch_generator(2, "a")),
    )


def test_pgd_does_not_touch_model_gradients():
    model = LinearImageModel(16, 2)
    PGD(eps=0.1, steps=2).perturb(model, torch.rand(2, 1, 4, 4), torch.tensor([0, 1]))
    assert model.linear.weight.grad is None


@pytest.mark.parametrize(
    "kwargs", [{"eps": -0.1}, {"eps": 0.1, "steps": -1}, {"eps": 0.1, "norm": "l1"}, {"eps": 0.1, "step_size": 0.0}]
)
def test_bad_attack_settings(kwargs):
    with pytest.raises(AsmixError):
        PGD(**kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"eps": float("nan")}, "eps must be a finite number, got nan"),
        ({"eps": float("inf")}, "eps must be a finite number, got inf"),
        ({"eps": 0.1, "step_size": float("inf")}, "step size must be a finite number, got inf"),
        ({"eps": 0.1, "step_size": float("nan")}, "step size must be a finite number, got nan"),
    ],
)
def test_non_finite_radius_and_step_are_refused(kwargs, message):
    # NaN slipped through ``eps < 0`` and ``step_size <= 0``; inf gave an attack without a ball
    with pytest.raises(AsmixError, match=message):
        PGD(**kwargs)


class _FlipAfterStart(torch.nn.Module):
    """A 2-class model that misclassifies exactly the inputs whose pixel sum is above ``threshold``; PGD on
    cross-entropy pushes pixels up until the sum passes it, and then beyond."""

    def __init__(self, threshold: float) -> None:
        super().__init__()
        self.threshold = threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = x.flatten(1).sum(1)
        return torch.stack((self.threshold - total, total - self.threshold), dim=1)


def test_pgd_keeps_the_first_misclassified_iterate():
    # an iterate that breaks the model is kept even if later steps would not move it back; here the check is
    # that the example stops moving at its first broken iterate instead of walking on to the last step
    model = _FlipAfterStart(threshold=2.0)
    x = torch.full((3, 1, 2, 2), 0.4)  # pixel sum 1.6: class 0, right
    y = torch.zeros(3, dtype=torch.long)
    attack = PGD(eps=0.3, steps=10, step_size=0.05, random_start=False)
    x_adv = attack.perturb(model, x, y)
    # each step adds 0.05 to every pixel (sum +0.2): the sum passes 2.0 after 3 steps (2.2) and stops there
    assert torch.allclose(x_adv, torch.full_like(x, 0.55))
    assert (model(x_adv).argmax(1) != y).all()
    free = PGD(eps=0.3, steps=10, step_size=0.05, random_start=False, stop_at_break=False).perturb(model, x, y)
    assert torch.allclose(free, torch.full_like(x, 0.7))  # without the rule it walks to the edge of the ball


class _BreaksInTheMiddle(torch.nn.Module):
    """Misclassifies only a band of inputs: pixel sums in (2.0, 2.3). PGD on CE walks through the band and out
    of it, so scoring the last iterate would call the point robust although an iterate broke it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = x.flatten(1).sum(1)
        inside = ((total > 2.0) & (total < 2.3)).float()  # piecewise constant: no gradient
        score = (2 * inside - 1) + 1e-3 * total  # > 0 (class 1, wrong for y = 0) only inside the band
        return torch.stack((-score, score), dim=1)


def test_a_point_broken_by_any_iterate_counts_as_broken():
    model = _BreaksInTheMiddle()
    x = torch.full((2, 1, 2, 2), 0.4)
    y = torch.zeros(2, dtype=torch.long)
    # the gradient of CE pushes the sum up (the 1e-3 * total term) through the band (2.0, 2.3) and past it
    for stop_at_break, broken in ((False, False), (True, True)):
        x_adv = PGD(eps=0.3, steps=10, step_size=0.05, random_start=False, stop_at_break=stop_at_break).perturb(
            model, x, y
        )
        assert bool((model(x_adv).argmax(1) != y).all()) is broken


def test_transfer_counts_a_point_broken_for_the_judged_model_if_any_iterate_breaks_it():
    from asmix.attacks.pgd import AllIteratesCorrect

    source, judged = _FlipAfterStart(threshold=10.0), _BreaksInTheMiddle()  # source is never fooled in the ball
    x = torch.full((2, 1, 2, 2), 0.4)
    y = torch.zeros(2, dtype=torch.long)
    tracker = AllIteratesCorrect(lambda x_t, logits: torch.stack((logits, judged(x_t))), y)
    last = PGD(eps=0.3, steps=10, step_size=0.05, random_start=False, stop_at_break=False).perturb(
        source, x, y, on_iterate=tracker
    )
    assert bool((judged(last).argmax(1) == y).all())  # the last iterate (sum 2.8) fools nobody
    assert tracker.correct.tolist() == [[True, True], [False, False]]  # but an iterate inside the band fooled h
    # the reported point for the judged model is the first iterate in the band: sum 2.2 (0.55 per pixel)
    assert torch.allclose(tracker.points[1], torch.full_like(x, 0.55)) and torch.equal(tracker.points[0], last)
