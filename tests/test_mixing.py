import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import Exploding, FixedLogits, LinearImageModel
from torch import nn

from asmix import AsmixError, MixedClassifier, mix_logits

STD_LOGITS = torch.tensor([[2.0, 0.5, -1.0], [0.0, 3.0, 1.0]])
ROB_LOGITS = torch.tensor([[0.1, 0.3, 0.2], [1.0, -1.0, 0.5]])


def reference(std, rob, alpha):
    """log((1-a) softmax(g) + a softmax(h)) in float64 numpy."""

    def softmax(z):
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    return np.log((1 - alpha) * softmax(std.double().numpy()) + alpha * softmax(rob.double().numpy()))


@pytest.mark.parametrize("alpha", [0.1, 0.3, 0.5, 0.9])
def test_matches_formula(alpha):
    out = mix_logits(STD_LOGITS, ROB_LOGITS, alpha)
    np.testing.assert_allclose(out.numpy(), reference(STD_LOGITS, ROB_LOGITS, alpha), rtol=1e-6, atol=1e-6)
    # the output is a log of probabilities: exp sums to one
    np.testing.assert_allclose(out.exp().sum(1).numpy(), [1.0, 1.0], atol=1e-6)


def test_hand_computed_value():
    # g = [0, 0] -> p = [.5, .5]; h = [log 3, 0] -> p = [.75, .25]; alpha = .5 -> [.625, .375]
    out = mix_logits(torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]]), 0.5)
    assert out.exp().tolist()[0] == pytest.approx([0.625, 0.375], abs=1e-7)


def test_alpha_endpoints_are_exact_and_skip_unused_model():
    x = torch.zeros(2, 1, 2, 2)
    g, h = FixedLogits(STD_LOGITS), FixedLogits(ROB_LOGITS)
    assert torch.equal(MixedClassifier(g, Exploding(), 0.0)(x), F.log_softmax(STD_LOGITS, 1))
    assert torch.equal(MixedClassifier(Exploding(), h, 1.0)(x), F.log_softmax(ROB_LOGITS, 1))


def test_extreme_logits_give_finite_values_and_gradients():
    model = LinearImageModel(4, 3)
    big = FixedLogits(torch.tensor([[1e4, -1e4, 0.0]]))
    x = torch.rand(1, 1, 2, 2, requires_grad=True)
    for alpha in (0.0, 0.3, 1.0):
        mixed = MixedClassifier(_Scaled(model, 1e4), big, alpha)
        out = mixed(x)
        (grad,) = torch.autograd.grad(F.cross_entropy(out, torch.tensor([1])), x)
        assert torch.isfinite(out).all() and torch.isfinite(grad).all()
    per_example = torch.tensor([0.0, 1.0, 0.5], requires_grad=True)
    out = mix_logits(torch.tensor([[1e4, -1e4]] * 3), torch.tensor([[-1e4, 1e4]] * 3), per_example)
    (grad,) = torch.autograd.grad(out[:, 0].sum(), per_example)
    assert torch.isfinite(out).all() and torch.isfinite(grad).all()


class _Scaled(torch.nn.Module):
    def __init__(self, model, scale):
        super().__init__()
        self.model, self.scale = model, scale

    def forward(self, x):
        return self.model(x) * self.scale


def test_per_example_alpha_equals_scalar_alpha_rowwise():
    alphas = torch.tensor([0.2, 0.7])
    out = mix_logits(STD_LOGITS, ROB_LOGITS, alphas)
    for row, alpha in enumerate(alphas.tolist()):
        np.testing.assert_allclose(out[row].numpy(), mix_logits(STD_LOGITS, ROB_LOGITS, alpha)[row].numpy(), atol=1e-6)


def test_hardmax_std_mixes_one_hot():
    out = mix_logits(STD_LOGITS, ROB_LOGITS, 0.6, std_temperature=0)
    p_rob = F.softmax(ROB_LOGITS, 1)
    one_hot = F.one_hot(STD_LOGITS.argmax(1), 3).float()
    np.testing.assert_allclose(out.exp().numpy(), (0.4 * one_hot + 0.6 * p_rob).numpy(), atol=1e-6)


def test_temperature_and_scales():
    out = mix_logits(STD_LOGITS, ROB_LOGITS, 0.4, std_scale=2.0, rob_scale=0.5, std_temperature=4.0)
    expected = reference(STD_LOGITS * 0.5, ROB_LOGITS * 0.5, 0.4)
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-6)


def test_logit_space_ablation():
    out = mix_logits(STD_LOGITS, ROB_LOGITS, 0.25, mix_space="logit")
    assert torch.allclose(out, 0.75 * STD_LOGITS + 0.25 * ROB_LOGITS)


def test_bases_frozen_in_eval_and_gradient_reaches_input():
    g, h = LinearImageModel(4, 3, seed=1), LinearImageModel(4, 3, seed=2)
    g.train()
    mixed = MixedClassifier(g, h, 0.5).train()
    assert not g.training and not h.training
    assert all(not p.requires_grad for p in mixed.parameters())
    x = torch.rand(2, 1, 2, 2, requires_grad=True)
    mixed(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_return_alpha_for_fixed_alpha():
    mixed = MixedClassifier(FixedLogits(STD_LOGITS), FixedLogits(ROB_LOGITS), 0.3)
    _, alpha = mixed(torch.zeros(2, 1, 1, 1), return_alpha=True)
    assert alpha.tolist() == pytest.approx([0.3, 0.3])


@pytest.mark.parametrize(
    "kwargs",
    [{"alpha": 1.5}, {"alpha": -0.1}, {"alpha": float("nan")}, {"mix_space": "odds"}, {"std_temperature": -1.0}],
)
def test_bad_settings_raise(kwargs):
    with pytest.raises(AsmixError):
        MixedClassifier(FixedLogits(STD_LOGITS), FixedLogits(ROB_LOGITS), **kwargs)


def test_with_alpha_keeps_models_and_settings():
    mixed = MixedClassifier(
        FixedLogits(STD_LOGITS), FixedLogits(ROB_LOGITS), 0.2, std_scale=2.0, rob_scale=0.5, std_temperature=4.0
    )
    other = mixed.with_alpha(0.4)
    assert other.std is mixed.std and other.rob is mixed.rob and mixed.alpha == 0.2
    x = torch.zeros(2, 3)
    expected = reference(STD_LOGITS * 0.5, ROB_LOGITS * 0.5, 0.4)
    np.testing.assert_allclose(other(x).detach().numpy(), expected, atol=1e-6)


# MixedNUTS map (asmix.nuts), hand-computed: logits [0, 1, 2] -> mean 1, unbiased var 1 -> LN [-1, 0, 1];
# c = 0: GELU -> [-0.158655, 0, 0.841345]; p = 2 with sign: [-0.025171, 0, 0.707861]; s = 2: doubled.
GELU_AT_1 = 0.8413447460685429  # 1 * Phi(1)


def test_nuts_map_hand_computed():
    from asmix.nuts import NutsMap

    out = NutsMap(2.0, 2.0, 0.0)(torch.tensor([[0.0, 1.0, 2.0]]))
    expected = [-2 * (1 - GELU_AT_1) ** 2, 0.0, 2 * GELU_AT_1**2]
    assert out.dtype == torch.float32
    assert out[0].tolist() == pytest.approx(expected, abs=1e-6)
    # the clamp bias shifts before GELU: c = -1 maps LN value 1 to GELU(0) = 0 and 0 to GELU(-1)
    out = NutsMap(1.0, 1.0, -1.0)(torch.tensor([[0.0, 1.0, 2.0]]))
    assert out[0].tolist() == pytest.approx([-0.0455003, -(1 - GELU_AT_1), 0.0], abs=1e-6)
    # the layer norm makes the map blind to shifts and positive scales of h's logits
    z = torch.tensor([[0.3, -2.0, 1.5, 0.1]])
    assert torch.allclose(NutsMap(3.0, 2.5, -0.4)(z), NutsMap(3.0, 2.5, -0.4)(7 * z + 11), atol=1e-5)


def test_nuts_map_top_k_statistics():
    from asmix.nuts import NutsMap

    # ln_k = 2: mean and var from the two largest logits (3, 1): mean 2, var 2 -> (z - 2) / sqrt(2)
    z = torch.tensor([[3.0, 1.0, -5.0]])
    out = NutsMap(1.0, 1.0, 10.0, ln_k=2)(z)  # c = 10: GELU is the identity to 1e-20
    assert out[0].tolist() == pytest.approx(
        [10 + 1 / math.sqrt(2), 10 - 1 / math.sqrt(2), 10 - 7 / math.sqrt(2)], abs=1e-5
    )


def test_nuts_mix_matches_formula_and_hardmax():
    from asmix.nuts import NutsMap

    nuts = NutsMap(1.5, 2.0, -0.5)
    mapped = nuts(ROB_LOGITS)
    out = mix_logits(STD_LOGITS, ROB_LOGITS, 0.7, rob_map=nuts)
    np.testing.assert_allclose(out.numpy(), reference(STD_LOGITS, mapped, 0.7), rtol=1e-6, atol=1e-6)
    hard = mix_logits(STD_LOGITS, ROB_LOGITS, 0.7, rob_map=nuts, std_temperature=0.0).exp()
    rob_probs = torch.softmax(mapped, 1)
    expected = 0.7 * rob_probs + 0.3 * F.one_hot(STD_LOGITS.argmax(1), 3)
    assert torch.allclose(hard, expected, atol=1e-6)


def test_nuts_mixed_classifier_extreme_logits_finite_gradients():
    from asmix.nuts import NutsMap

    model = LinearImageModel(4, 3)
    x = torch.rand(3, 1, 2, 2, requires_grad=True)
    for temperature in (1.0, 0.0):
        for alpha in (0.3, 0.99, 1.0):
            mixed = MixedClassifier(
                _Scaled(model, 1e4),
                _Scaled(LinearImageModel(4, 3, seed=1), 1e4),
                alpha,
                std_temperature=temperature,
                rob_map=NutsMap(5.0, 4.0, -1.1),
            )
            out = mixed(x)
            (grad,) = torch.autograd.grad(F.cross_entropy(out, torch.tensor([0, 1, 2])), x)
            assert torch.isfinite(out).all() and torch.isfinite(grad).all()
            assert grad.abs().sum() > 0
    # equal logits (zero variance) and logits of 1e30 stay finite too
    for logits in (torch.zeros(1, 3), torch.tensor([[1e30, -1e30, 0.0]])):
        logits.requires_grad_(True)
        out = mix_logits(torch.zeros(1, 3), logits, 0.5, rob_map=NutsMap(2.0, 3.0, -0.5))
        (grad,) = torch.autograd.grad(out[0, 0], logits)
        assert torch.isfinite(out).all() and torch.isfinite(grad).all()


def test_nuts_with_alpha_keeps_the_map_and_bad_settings_are_refused():
    from asmix.nuts import NutsMap, parse_rob_map

    nuts = parse_rob_map("nuts:2,3,-0.5")
    assert nuts == NutsMap(2.0, 3.0, -0.5) and parse_rob_map("none") is None
    mixed = MixedClassifier(LinearImageModel(4, 3), LinearImageModel(4, 3), 0.5, rob_map=nuts)
    assert mixed.with_alpha(0.9).settings.rob_map == nuts
    for text, message in (
        ("nuts:0,1,0", r"scale must be in \(0, 1000\], got 0"),
        ("nuts:1e300,1,0", r"scale must be in \(0, 1000\], got 1e\+300"),
        ("nuts:1,0.5,0", r"power must be in \[1, 16\], got 0.5"),
        ("nuts:1,17,0", r"power must be in \[1, 16\], got 17"),
        ("nuts:1,2,-101", r"clamp bias must be in \[-100, 100\], got -101"),
        ("nuts:1,2", "needs 3 numbers"),
        ("gelu:1,2,3", "use nuts:S,P,C"),
        ("nuts:1,x,0", "must be numbers"),
        ("nuts:1,nan,0", "finite number"),
    ):
        with pytest.raises(AsmixError, match=message):
            parse_rob_map(text)
    with pytest.raises(AsmixError, match="rob scale 1"):
        MixedClassifier(LinearImageModel(4, 3), LinearImageModel(4, 3), 0.5, rob_scale=2.0, rob_map=nuts)
    with pytest.raises(AsmixError, match="mix space prob"):
        MixedClassifier(LinearImageModel(4, 3), LinearImageModel(4, 3), 0.5, mix_space="logit", rob_map=nuts)


def test_a_mix_is_not_changed_from_outside():
    std, rob = nn.Linear(4, 3), nn.Linear(4, 3)
    mixed = MixedClassifier(std, rob, 0.3)
    with pytest.raises(AttributeError):
        mixed.alpha = 0.7
    other = mixed.with_alpha(0.7)
    assert (mixed.alpha, other.alpha) == (0.3, 0.7) and other.std is mixed.std and other.rob is mixed.rob


def test_alpha_grid_probability_mix_and_accuracy_helpers():
    from asmix.calibration import largest_meeting
    from asmix.mixing import alpha_grid, mix_probabilities
    from asmix.runtime import accuracy, fraction

    assert alpha_grid(0.0, 1.0, 0.25) == (0.0, 0.25, 0.5, 0.75, 1.0) and alpha_grid(0.0, 0.3, 0.1)[-1] == 0.3
    with pytest.raises(AsmixError, match="step must be positive"):
        alpha_grid(0.0, 1.0, 0.0)
    std_logits, rob_logits = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([[-1.0, 1.5, 0.0]])
    probs = mix_probabilities(std_logits.softmax(1), rob_logits.softmax(1), 0.3)
    assert torch.allclose(probs.log(), mix_logits(std_logits, rob_logits, 0.3), atol=1e-6)
    scores, y = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]), torch.tensor([0, 0, 0])
    assert accuracy(scores, y) == pytest.approx(2 / 3) and fraction(torch.tensor([True, False])) == 0.5
    assert largest_meeting([1.0, 0.9, 0.8], 0.9) == 1 and largest_meeting([0.5, 0.4], 0.9) is None
