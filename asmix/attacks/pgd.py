"""Projected gradient descent (Madry et al.) in l_inf or l_2, with random start."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from asmix.checks import Norm, check_choice, check_finite
from asmix.errors import AsmixError

IterateFn = Callable[[torch.Tensor, torch.Tensor], None]
"""Called on every PGD iterate with (x_t, the attacked model's logits at x_t)."""

Objective = Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""Loss to maximise and the logits it was computed from: (model, x_adv, y) -> (losses (N,), logits (N, C)).
The logits let PGD see, at no extra forward pass, which iterate the model misclassifies."""


def cross_entropy_objective(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The default PGD objective: per-example cross-entropy of the model's logits."""
    logits = model(x)
    return F.cross_entropy(logits, y, reduction="none"), logits


@dataclass(frozen=True)
class PGD:
    """PGD-``steps`` within the ``norm`` ball of radius ``eps`` (step size defaults to 2.5 eps / steps). With
    ``stop_at_break`` an example stops at the first iterate (random start included) the attacked model misclassifies,
    as APGD keeps its best point, so the returned point is broken iff any iterate was. Losses are summed per example
    (a path does not depend on its batch); the model gets no gradient and should be in eval mode."""

    eps: float
    steps: int = 20
    step_size: float | None = None
    norm: Norm = "linf"
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
        check_choice(self.norm, Norm, "norm")
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
        on_iterate: IterateFn | None = None,
    ) -> torch.Tensor:
        """Adversarial examples for ``(x, y)``; ``generator`` (CPU) seeds the random start.

        ``on_iterate(x_t, logits_t)`` sees every iterate, the start and the last included, with the attacked
        model's logits there (those of the objective's own forward pass; one more forward for the last
        iterate). Transfer evaluations use it to count a point broken for another model if any iterate breaks
        it (see ``AllIteratesCorrect``).
        """
        if self.eps == 0 or self.steps == 0 and not self.random_start:
            if on_iterate is not None:
                with torch.no_grad():
                    on_iterate(x.detach(), model(x.detach()))
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
            if on_iterate is not None:
                on_iterate(x_adv.detach(), logits.detach())
            if self.stop_at_break:
                broken |= logits.detach().argmax(1) != y
            x_adv = x_adv.detach()
            x_adv = torch.where(broken.view(view), x_adv, self._project(x, x_adv + step * self._direction(grad)))
            if broken.all():
                break
        if on_iterate is not None:
            with torch.no_grad():
                on_iterate(x_adv, model(x_adv))
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


@dataclass(frozen=True)
class ThreatModel:
    """The attack an experiment measures against: the ``norm`` ball of radius ``eps`` and the attack's ``steps``
    and ``step_size`` (None: 2.5 eps / steps), as the paper's YAML groups them; checked on construction."""

    norm: Norm = "linf"
    eps: float = 0.3
    steps: int = 20
    step_size: float | None = None

    def __post_init__(self) -> None:
        self.pgd()

    def pgd(self) -> PGD:
        """The library PGD for this threat model."""
        return PGD(eps=self.eps, steps=self.steps, step_size=self.step_size, norm=self.norm)

    def to_dict(self) -> dict:
        """The settings, with the step size PGD uses."""
        return asdict(self) | {"step_size": self.pgd().resolved_step_size}


class AllIteratesCorrect:
    """Per judged classifier and example: is every iterate seen so far classified correctly? And the point to
    report: the first iterate that broke it, else the latest. An ``IterateFn`` builder for transfer attacks,
    where the attacked model is not the one judged; ``judge(x_t, logits_t)`` returns each judged classifier's
    logits at ``x_t``, shape (J, n, C)."""

    def __init__(self, judge: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], y: torch.Tensor) -> None:
        self.judge, self.y = judge, y
        self.correct: torch.Tensor | None = None
        self.points: torch.Tensor | None = None

    def __call__(self, x_t: torch.Tensor, logits_t: torch.Tensor) -> None:
        with torch.no_grad():
            right = self.judge(x_t, logits_t).argmax(-1) == self.y  # (J, n)
        if self.correct is None:
            self.correct, self.points = right.clone(), x_t.unsqueeze(0).repeat(len(right), *([1] * x_t.ndim))
            return
        view = (*right.shape, *([1] * (x_t.ndim - 1)))
        self.points = torch.where(self.correct.view(view), x_t.unsqueeze(0), self.points)
        self.correct &= right


def _l2(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.ndim - 1)))
