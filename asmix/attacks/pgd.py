"""Projected gradient descent (Madry et al.) in l_inf or l_2, with random start."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from asmix.checks import NORMS, check_finite
from asmix.errors import AsmixError

Objective = Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""Loss to maximise and the logits it was computed from: (model, x_adv, y) -> (losses (N,), logits (N, C)).
The logits let PGD see, at no extra forward pass, which iterate the model misclassifies."""


def cross_entropy_objective(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The default PGD objective: per-example cross-entropy of the model's logits."""
    logits = model(x)
    return F.cross_entropy(logits, y, reduction="none"), logits


@dataclass(frozen=True)
class PGD:
    """PGD-``steps`` within the ``norm`` ball of radius ``eps`` (step size defaults to 2.5 eps / steps).

    With ``stop_at_break`` (the default) an example stops at the first iterate (random start included) that
    the attacked model misclassifies, as APGD keeps its best point: a point counts as broken if any iterate breaks it, and scoring the returned
    point on the attacked model gives exactly that count. Per-example losses are summed, so each example's
    path is independent of the batch it is in. Model weights get no gradient; the model should be in eval mode.
    """

    eps: float
    steps: int = 20
    step_size: float | None = None
    norm: str = "linf"
    random_start: bool = True
    stop_at_break: bool = True
    """Freeze an example at its first misclassified iterate; off where PGD maximises something else (Lipschitz)."""

    def __post_init__(self) -> None:
        check_finite(self.eps, "eps")
        if self.step_size is not None:
            check_finite(self.step_size, "step size")
        if self.eps < 0:
            raise AsmixError(f"eps must be >= 0, got {self.eps}")
        if self.steps < 0:
            raise AsmixError(f"steps must be >= 0, got {self.steps}")
        if self.norm not in NORMS:
            raise AsmixError(f"norm must be one of {', '.join(NORMS)}, got {self.norm!r}")
        if self.step_size is not None and self.step_size <= 0:
            raise AsmixError(f"step size must be positive, got {self.step_size}")

    @property
    def resolved_step_size(self) -> float:
        return self.step_size if self.step_size is not None else 2.5 * self.eps / max(self.steps, 1)

    def perturb(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
        objective: Objective = cross_entropy_objective,
    ) -> torch.Tensor:
        """Adversarial examples for ``(x, y)``; ``generator`` (CPU) seeds the random start."""
        if self.eps == 0 or self.steps == 0 and not self.random_start:
            return x.detach().clone()
        x = x.detach()
        x_adv = (x + self._random_start(x, generator)).clamp(0, 1) if self.random_start else x.clone()
        step = self.resolved_step_size
        broken = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        view = (-1,) + (1,) * (x.ndim - 1)
        for _ in range(self.steps):
            x_adv.requires_grad_(True)
            with torch.enable_grad():
                losses, logits = objective(model, x_adv, y)
                (grad,) = torch.autograd.grad(losses.sum(), x_adv)
            if self.stop_at_break:
                broken |= logits.detach().argmax(1) != y
            x_adv = x_adv.detach()
            x_adv = torch.where(broken.view(view), x_adv, self._project(x, x_adv + step * self._direction(grad)))
            if broken.all():
                break
        return x_adv.detach()

    def _random_start(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        if self.norm == "linf":
            noise = torch.rand(x.shape, generator=generator, dtype=torch.float32).to(x.device, x.dtype)
            return (2 * noise - 1) * self.eps
        direction = torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x.device, x.dtype)
        direction = direction / _l2(direction).clamp_min(1e-12)
        radius = torch.rand((len(x),) + (1,) * (x.ndim - 1), generator=generator).to(x.device, x.dtype)
        return direction * radius * self.eps

    def _direction(self, grad: torch.Tensor) -> torch.Tensor:
        if self.norm == "linf":
            return grad.sign()
        return grad / _l2(grad).clamp_min(1e-12)

    def _project(self, x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
        delta = x_adv - x
        if self.norm == "linf":
            delta = delta.clamp(-self.eps, self.eps)
        else:
            delta = delta * (self.eps / _l2(delta).clamp_min(1e-12)).clamp(max=1.0)
        return (x + delta).clamp(0, 1)


def _l2(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.ndim - 1)))
