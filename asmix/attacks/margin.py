"""Margin attacks and local Lipschitz estimates of softmax(h) (Section 5.1.2, App. C.3, D.2): the package's APGD-CE
and APGD-T subclassed to return per example the smallest-margin iterate (``min_margin_autoattack`` keeps the
smaller of both), and the PGD estimate of eq. C.1, one PGD per class."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from asmix.attacks.pgd import PGD
from asmix.checks import check_finite, threat_model_name
from asmix.compat import autoattack_package
from asmix.errors import AsmixError

_apgd = autoattack_package().autopgd_base  # imported here, where the attacks that subclass it are defined
APGDAttack, APGDAttack_targeted = _apgd.APGDAttack, _apgd.APGDAttack_targeted


def probability_gap(logits: torch.Tensor) -> torch.Tensor:
    """Confidence gap p_top - p_runner_up of softmax(logits): Table 1's ✓/✗ gap per example."""
    top2 = torch.softmax(logits.float(), dim=1).topk(2, dim=1).values
    return top2[:, 0] - top2[:, 1]


def true_class_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Signed margin p_y - max_{i != y} p_i of softmax(logits): >= 0 iff correct; Lemma 3.2's margin."""
    probs = torch.softmax(logits.float(), dim=1)
    true = probs.gather(1, y[:, None])[:, 0]
    others = probs.scatter(1, y[:, None], float("-inf")).max(dim=1).values
    return true - others


class _MarginTracker(nn.Module):
    """Wraps the attacked model; every forward pass records, per example, the input with the
    smallest true-class margin so far (the attack's own state is left untouched)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.y: torch.Tensor | None = None
        self.best_x: torch.Tensor | None = None
        self.best_margin: torch.Tensor | None = None

    def start(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Begin with the clean input as the first candidate, so no margin exceeds the clean one."""
        self.y = y
        with torch.no_grad():
            self.best_margin = true_class_margin(self.model(x), y)
        self.best_x = x.detach().clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        if self.y is not None and len(x) == len(self.y):
            with torch.no_grad():
                margin = true_class_margin(logits.detach(), self.y)
                better = margin < self.best_margin
                if better.any():
                    self.best_margin = torch.where(better, margin, self.best_margin)
                    self.best_x[better] = x.detach()[better]
        return logits

    def finish(self) -> tuple[torch.Tensor, torch.Tensor]:
        result = self.best_x, self.best_margin
        self.y = self.best_x = self.best_margin = None
        return result


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """APGD draws its random starts from the global CPU generator; seed it inside a forked RNG so
    the caller's random state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(int(seed))
        yield


class _MinMargin:
    """A package APGD on the model wrapped in a ``_MarginTracker``: ``perturb`` attacks every example and returns
    ``(x_adv, margin)``, per example the iterate with the smallest margin p_y - max_{i != y} p_i (App. D.2)."""

    def __init__(
        self, model: nn.Module, *, eps: float, norm: str = "linf", steps: int = 100, restarts: int = 1, **package
    ) -> None:
        if check_finite(eps, "eps") <= 0:
            raise AsmixError(f"eps must be positive for AutoAttack, got {eps}")
        if steps <= 0 or restarts <= 0:
            raise AsmixError("APGD steps and restarts must be positive")
        norm = threat_model_name(norm)
        super().__init__(_MarginTracker(model), n_iter=steps, norm=norm, n_restarts=restarts, eps=eps, **package)

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.device = x.device
        self.init_hyperparam(x)
        x, y = x.detach().float(), y.detach().long()
        self.model.start(x, y)
        targets = self._targets(x, y)
        with _seeded(self.seed):
            for target in targets:
                self.y_target = target
                for _ in range(self.n_restarts):
                    self.attack_single_run(x, y)
        return self.model.finish()

    def _targets(self, x: torch.Tensor, y: torch.Tensor) -> list:
        return [None]


class MinMarginAPGD(_MinMargin, APGDAttack):
    """APGD-CE (Croce & Hein) returning per example the smallest-margin iterate (App. D.2)."""


class MinMarginAPGDTargeted(_MinMargin, APGDAttack_targeted):
    """APGD-T (targeted DLR) returning per example the smallest-margin iterate over its targets: the
    ``target_classes`` most likely classes other than y on the clean input, so already-misclassified examples are
    attacked too. Needs at least 4 classes (the DLR loss)."""

    def __init__(self, model: nn.Module, *, target_classes: int = 9, **settings) -> None:
        super().__init__(model, n_target_classes=target_classes, **settings)

    def _targets(self, x: torch.Tensor, y: torch.Tensor) -> list:
        with torch.no_grad():
            logits = self.model.model(x)
        if logits.shape[1] < 4:
            raise AsmixError("APGD-T (targeted DLR) needs at least 4 classes")
        ranked = logits.scatter(1, y[:, None], float("-inf")).argsort(dim=1, descending=True)
        return [ranked[:, target] for target in range(min(self.n_target_classes, logits.shape[1] - 1))]


def min_margin_autoattack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    steps: int = 100,
    target_classes: int = 9,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """APGD-CE then APGD-T (skipped below 4 classes or with ``target_classes=0``); per example the
    perturbation with the smaller margin. Returns ``(x_adv, margin)``."""
    x_adv, margin = MinMarginAPGD(model, eps=eps, norm=norm, steps=steps, seed=seed).perturb(x, y)
    with torch.no_grad():
        classes = model(x[:1]).shape[1]
    if target_classes > 0 and classes >= 4:
        x_t, margin_t = MinMarginAPGDTargeted(
            model, eps=eps, norm=norm, steps=steps, seed=seed, target_classes=target_classes
        ).perturb(x, y)
        better = margin_t < margin
        x_adv = torch.where(better.view(-1, *([1] * (x.ndim - 1))), x_t, x_adv)
        margin = torch.where(better, margin_t, margin)
    return x_adv, margin


@dataclass(frozen=True)
class LipschitzEstimate:
    """Eq. C.1 per example: ``value`` = (drop + sum(rise)) / c. ``drop`` is the largest fall of p_y
    found in the ball divided by eps (the one-sided local constant Lip^x(p_y) of App. C.3),
    ``rise`` (N, K) the same for the rise of each other class listed in ``classes`` (N, K);
    ``num_classes`` is c."""

    value: torch.Tensor
    drop: torch.Tensor
    rise: torch.Tensor
    classes: torch.Tensor
    num_classes: int

    @property
    def worst_pair(self) -> torch.Tensor:
        """drop + max rise: the local L_y + max_i L_i, the worst pair in Thm 3.5's denominator."""
        return self.drop + self.rise.max(dim=1).values if self.rise.shape[1] else self.drop


def local_lipschitz(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    steps: int = 20,
    step_size: float | None = None,
    classes: int | None = None,
    generator: torch.Generator | None = None,
) -> LipschitzEstimate:
    """Local Lipschitz estimate of softmax(h) in the eps-ball around each x (eq. C.1):

        Lip(x) = 1/(c eps) [ max_d (p_y(x) - p_y(x+d)) + sum_{i != y} max_d (p_i(x+d) - p_i(x)) ]

    Each max is its own PGD (the classes are decoupled) and at least 0 (d = 0 is allowed); ``classes=K`` keeps the K
    most likely other classes on the clean input (a lower bound of the sum, still divided by c)."""
    if eps <= 0:
        raise AsmixError(f"eps must be positive for a Lipschitz estimate, got {eps}")
    with torch.no_grad():
        clean = torch.softmax(model(x).float(), dim=1)
    num_classes = clean.shape[1]
    others = num_classes - 1 if classes is None else min(int(classes), num_classes - 1)
    if others < 0 or (classes is not None and classes < 0):
        raise AsmixError(f"lipschitz classes must be >= 0, got {classes}")
    ranked = clean.scatter(1, y[:, None], float("-inf")).argsort(dim=1, descending=True)[:, :others]
    targets = torch.cat([y[:, None], ranked], dim=1)
    width = targets.shape[1]
    sign = torch.ones(width, device=x.device)
    sign[0] = -1.0
    rows_sign = sign.repeat(len(x))
    rows_x = x.repeat_interleave(width, dim=0)
    rows_class = targets.reshape(-1)

    def objective(net: nn.Module, x_adv: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # log p is monotone in p, so it has the same maximiser, and its gradient does not vanish
        # where softmax saturates
        logits = net(x_adv)
        log_probs = torch.log_softmax(logits.float(), dim=1)
        return rows_sign * log_probs.gather(1, target[:, None])[:, 0], logits

    # each row maximises a probability move, not a misclassification: every row runs all its steps
    pgd = PGD(eps=eps, steps=steps, step_size=step_size, norm=norm, stop_at_break=False)
    x_adv = pgd.perturb(model, rows_x, rows_class, generator=generator, objective=objective)
    with torch.no_grad():
        probs = torch.softmax(model(x_adv).float(), dim=1).gather(1, rows_class[:, None])[:, 0]
        moved = rows_sign * (probs - clean.repeat_interleave(width, dim=0).gather(1, rows_class[:, None])[:, 0])
    moved = moved.clamp_min(0).reshape(len(x), width) / eps
    drop, rise = moved[:, 0], moved[:, 1:]
    value = (drop + rise.sum(dim=1)) / num_classes
    return LipschitzEstimate(value=value, drop=drop, rise=rise, classes=ranked, num_classes=num_classes)
