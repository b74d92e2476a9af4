"""The PGD local Lipschitz estimate of softmax(h) (eq. C.1) against closed forms on linear models."""

import math

import pytest
import torch
from torch import nn

from asmix.attacks.margin import local_lipschitz
from asmix.errors import AsmixError


def _linear(weight, bias):
    model = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        model.weight.copy_(weight)
        model.bias.copy_(bias)
    return model.eval()


def _sigmoid(z):
    return 1 / (1 + math.exp(-z))


@pytest.mark.parametrize("norm,dual", [("linf", lambda w: w.abs().sum().item()), ("l2", lambda w: w.norm().item())])
def test_two_class_linear_softmax_closed_form(norm, dual):
    # p_1 = sigmoid(z), z = (w1 - w0).x + (b1 - b0); in the eps-ball z ranges over z0 +- eps * ||w1 - w0||_*
    weight = torch.tensor([[1.0, -2.0, 0.5, 0.0], [-1.0, 1.0, 1.5, 3.0]])
    bias = torch.tensor([0.3, -0.2])
    model = _linear(weight, bias)
    x = torch.full((1, 4), 0.5)
    eps = 0.05
    delta_w = weight[1] - weight[0]
    z0 = (delta_w @ x[0] + bias[1] - bias[0]).item()
    reach = eps * dual(delta_w)
    rise = _sigmoid(z0 + reach) - _sigmoid(z0)  # rise of p_1 = drop of p_0 (label 0)
    expected = (2 * rise) / (2 * eps)
    estimate = local_lipschitz(
        model,
        x,
        torch.tensor([0]),
        eps=eps,
        norm=norm,
        steps=50,
        step_size=eps / 4,
        generator=torch.Generator().manual_seed(0),
    )
    assert estimate.value.item() == pytest.approx(expected, rel=1e-3)
    assert estimate.drop.item() == pytest.approx(rise / eps, rel=1e-3)
    assert estimate.rise[0, 0].item() == pytest.approx(rise / eps, rel=1e-3)
    assert estimate.worst_pair.item() == pytest.approx(2 * rise / eps, rel=1e-3)


def test_constant_model_has_zero_lipschitz():
    model = _linear(torch.zeros(3, 4), torch.tensor([1.0, 0.0, -1.0]))
    estimate = local_lipschitz(model, torch.rand(5, 4), torch.zeros(5, dtype=torch.long), eps=0.1, steps=5)
    assert torch.equal(estimate.value, torch.zeros(5))


def test_class_limit_keeps_most_likely_others():
    weight = torch.randn(5, 6, generator=torch.Generator().manual_seed(1))
    model = _linear(weight, torch.tensor([0.0, 3.0, 2.0, 1.0, -1.0]))
    x = torch.full((2, 6), 0.5)
    y = torch.tensor([0, 2])
    limited = local_lipschitz(model, x, y, eps=0.05, steps=10, classes=2, generator=torch.Generator().manual_seed(0))
    full = local_lipschitz(model, x, y, eps=0.05, steps=10, generator=torch.Generator().manual_seed(0))
    assert limited.rise.shape == (2, 2) and full.rise.shape == (2, 4)
    probs = torch.softmax(model(x), dim=1)
    for row in range(2):
        others = probs[row].scatter(0, y[row : row + 1], -1).argsort(descending=True)[:2]
        assert limited.classes[row].tolist() == others.tolist()
        assert y[row].item() not in limited.classes[row].tolist()
    assert (limited.value <= full.value + 1e-6).all()
    assert limited.num_classes == 5


def test_lipschitz_needs_positive_eps():
    with pytest.raises(AsmixError):
        local_lipschitz(_linear(torch.zeros(2, 2), torch.zeros(2)), torch.rand(1, 2), torch.tensor([0]), eps=0.0)


def test_saturated_softmax_still_moves():
    # p_0 rounds to 1 in float32 at x, but the eps-ball crosses the decision boundary: the true
    # class can drop to about 0 (a probability objective would have an exactly zero gradient)
    model = _linear(torch.tensor([[30.0, 30.0], [-30.0, -30.0]]), torch.tensor([-15.0, 15.0]))
    x = torch.full((1, 2), 0.5)
    assert torch.softmax(model(x), dim=1)[0, 0].item() == 1.0
    estimate = local_lipschitz(
        model, x, torch.tensor([0]), eps=0.5, steps=10, generator=torch.Generator().manual_seed(0)
    )
    assert estimate.drop.item() * 0.5 == pytest.approx(1.0, abs=1e-3)
    assert estimate.rise[0, 0].item() * 0.5 == pytest.approx(1.0, abs=1e-3)
