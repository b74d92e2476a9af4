import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from asmix import AsmixError, MixedClassifier, mix_logits
from conftest import Exploding, FixedLogits, LinearImageModel

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


@pytest.mark.parametrize("kwargs", [{"alpha": 1.5}, {"alpha": -0.1}, {"alpha": float("nan")},
                                    {"mix_space": "odds"}, {"std_temperature": -1.0}])
def test_bad_settings_raise(kwargs):
    with pytest.raises(AsmixError):
        MixedClassifier(FixedLogits(STD_LOGITS), FixedLogits(ROB_LOGITS), **kwargs)


def test_with_alpha_keeps_models_and_settings():
    mixed = MixedClassifier(FixedLogits(STD_LOGITS), FixedLogits(ROB_LOGITS), 0.2, std_scale=2.0, rob_scale=0.5,
                            std_temperature=4.0)
    other = mixed.with_alpha(0.4)
    assert other.std is mixed.std and other.rob is mixed.rob and mixed.alpha == 0.2
    x = torch.zeros(2, 3)
    expected = reference(STD_LOGITS * 0.5, ROB_LOGITS * 0.5, 0.4)
    np.testing.assert_allclose(other(x).detach().numpy(), expected, atol=1e-6)
