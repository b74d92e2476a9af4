"""Adaptive attacks on a mixed classifier with a mixing network (Section 4.2 setting D, strengthened): the AutoAttack
package's APGD-CE, APGD-T and Square, subclassed to blend their loss with the alpha term of ``objectives``, plus an
alpha-first stage, run in turn on the examples still robust (docs/DESIGN.md)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from asmix.attacks.autoattack import AutoAttackRun, reporting_queries, restored_rng, standard_autoattack
from asmix.attacks.objectives import alpha_down_term, blend
from asmix.checks import threat_model_name
from asmix.compat import autoattack_package
from asmix.errors import AsmixError
from asmix.mixing import MixParts
from asmix.runtime import StageEvent, StageFn, no_stage

_AA = autoattack_package()  # imported here, where the attacks that subclass it are defined

ADAPTIVE_STAGES = ("apgd-ce-alpha", "apgd-t-alpha", "alpha-first", "square-alpha")
"""The adaptive stages, in the order they run after (or instead of) standard AutoAttack."""

DEFAULT_ALPHA_WEIGHT = 0.5
"""w of the blended loss in evaluation (the paper's adaptive AutoAttack: 0.5 * CE + 0.5 * BCE)."""


class AlphaTap(nn.Module):
    """Calls a ``MixedClassifier`` and keeps the ``MixParts`` of its last forward pass (with their graph),
    so a loss can read the mixing network's logit of the same pass."""

    def __init__(self, mixed: nn.Module) -> None:
        super().__init__()
        self.mixed = mixed
        self.parts: MixParts | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.parts = self.mixed.parts(x)
        return self.mixed.mix_parts(self.parts)

    @property
    def adaptive(self) -> bool:
        return bool(getattr(self.mixed, "adaptive", False))


def _check_weight(weight: float | torch.Tensor) -> None:
    low, high = (
        (float(weight.min()), float(weight.max()))
        if isinstance(weight, torch.Tensor) and weight.numel()
        else (float(weight), float(weight))
    )
    if not 0.0 <= low <= high <= 1.0:
        raise AsmixError(f"the alpha weight w of (1-w)*loss + w*BCE must be in [0, 1], got {low}..{high}")


class _Tapped:
    """A package attack run on ``mixed`` through an ``AlphaTap``, its loss blended with ``alpha_weight`` (a float or a
    per-example tensor: training draws one per example); the other keywords are the package attack's."""

    def __init__(
        self,
        mixed: nn.Module,
        *,
        eps: float | torch.Tensor,
        norm: str = "linf",
        alpha_weight: float | torch.Tensor = DEFAULT_ALPHA_WEIGHT,
        seed: int = 0,
        **package,
    ) -> None:
        _check_weight(alpha_weight)
        self.tap, self.alpha_weight = AlphaTap(mixed), alpha_weight
        super().__init__(self.tap, eps=eps, norm=threat_model_name(norm), seed=int(seed), **package)


class AlphaAPGD(_Tapped, _AA.autopgd_base.APGDAttack):
    """The package's APGD with loss ``ce`` or ``dlr`` blended with the alpha term; ``alpha`` maximises minus the mixer's
    logit alone (the alpha-first stage) and ``ce-hinge`` blends CE with minus its positive part, which keeps pushing
    where BCE saturates (the class stage after alpha-first). The loss enters through the package's hook for a loss
    given as a method (``dlr_loss``)."""

    def __init__(self, mixed: nn.Module, *, loss: str = "ce", **settings) -> None:
        if loss not in ("ce", "dlr", "alpha", "ce-hinge"):
            raise AsmixError(f"adaptive APGD loss must be ce, dlr, alpha or ce-hinge, got {loss!r}")
        super().__init__(mixed, loss="dlr", **settings)
        if loss == "alpha" and not self.tap.adaptive:
            raise AsmixError("the alpha-first attack needs a mixing network")
        self.base_loss = loss

    def dlr_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-example loss to maximise; ``logits`` come from the tap's last forward pass."""
        if self.base_loss == "alpha":
            return -self.tap.parts.alpha_logit
        if self.base_loss == "ce-hinge":  # the logit is pushed down only while positive, and never saturates
            return (1 - self.alpha_weight) * F.cross_entropy(logits, y, reduction="none") - self.alpha_weight * F.relu(
                self.tap.parts.alpha_logit
            )
        base = F.cross_entropy(logits, y, reduction="none") if self.base_loss == "ce" else super().dlr_loss(logits, y)
        return blend(base, self.tap.parts, self.alpha_weight)


class AlphaAPGDTargeted(_Tapped, _AA.autopgd_base.APGDAttack_targeted):
    """The package's APGD-T (targeted DLR) with its loss blended with the alpha term."""

    def dlr_loss_targeted(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Targeted DLR toward ``self.y_target``, blended with the alpha term of the tap's last pass."""
        return blend(super().dlr_loss_targeted(logits, y), self.tap.parts, self.alpha_weight)


class AlphaSquare(_Tapped, _AA.square.SquareAttack):
    """The package's Square attack (gradient-free) minimising ``(1 - w) * margin - w * BCE(alpha logit, 1)``;
    success is still judged by the true margin."""

    def __init__(
        self,
        mixed: nn.Module,
        *,
        eps: float,
        n_queries: int = 5000,
        alpha_weight: float = DEFAULT_ALPHA_WEIGHT,
        **settings,
    ) -> None:
        super().__init__(
            mixed,
            eps=float(eps),
            n_queries=int(n_queries),
            alpha_weight=float(alpha_weight),
            p_init=0.8,
            n_restarts=1,
            loss="margin",
            **settings,
        )

    def margin_and_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.blended_margin(x, y, self.alpha_weight)

    def blended_margin(
        self, x: torch.Tensor, y: torch.Tensor, weight: float | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(margin, loss to minimise) of ``x``: the true margin, and it blended with the alpha term by ``weight``
        (a float, or one per example)."""
        logits = self.predict(x)
        u = torch.arange(len(x), device=logits.device)
        correct = logits[u, y].clone()
        others = logits.clone()
        others[u, y] = -float("inf")
        margin = correct - others.max(dim=-1)[0]
        fixed = not isinstance(weight, torch.Tensor) and weight == 0
        if fixed or self.predict.parts.alpha_logit is None:
            return margin, margin
        return margin, (1 - weight) * margin - weight * alpha_down_term(self.predict.parts)


@dataclass(frozen=True)
class AttackBudget:
    """Iterations and queries of one adaptive run: ``full`` is AutoAttack's (100 APGD iterations, 9 target
    classes, 5000 Square queries); ``lite`` is the quick one used to choose and judge mixers."""

    apgd_steps: int = 100
    target_classes: int = 9
    square_queries: int = 5000
    alpha_weight: float = DEFAULT_ALPHA_WEIGHT

    def __post_init__(self) -> None:
        if self.apgd_steps < 1 or self.target_classes < 1 or self.square_queries < 1:
            raise AsmixError("APGD steps, target classes and Square queries must be >= 1")
        _check_weight(self.alpha_weight)


def lite_budget(square_queries: int = 300) -> AttackBudget:
    """The quick budget that chooses and judges mixers (25 APGD iterations, 3 target classes), with Square's
    ``square_queries``."""
    return AttackBudget(apgd_steps=25, target_classes=3, square_queries=square_queries)


FULL_BUDGET = AttackBudget()
LITE_BUDGET = lite_budget()

StepFn = Callable[[int, int, int], None]
"""(steps done, total steps, examples still robust): a stage's report between its steps (APGD-T's target classes)."""

AttackStage = Callable[[torch.Tensor, torch.Tensor, int, StepFn], torch.Tensor]
"""(x, y, seed, on_step) -> the stage's final point per example (its adversarial example where it succeeded)."""


def _no_step(done: int, total: int, robust: int) -> None:
    """The ``StepFn`` of a caller that does not follow a stage's steps."""


def _apgd_point(
    attack, x: torch.Tensor, y: torch.Tensor, seed: int, x_init: torch.Tensor | None = None
) -> torch.Tensor:
    """One run of a package APGD on all of ``x``: per example the last misclassified iterate, else the
    iterate of highest loss (where the attack got closest)."""
    attack.init_hyperparam(x)
    torch.manual_seed(seed)
    x_best, robust, _, x_best_adv = attack.attack_single_run(x, y, x_init=x_init)
    return torch.where(robust.view(-1, *([1] * (x.ndim - 1))).bool(), x_best, x_best_adv).detach()


def alpha_first_point(
    mixed: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int, *, x_init: torch.Tensor | None = None, **settings
) -> torch.Tensor:
    """The alpha-first stage: APGD on minus the mixer's logit (from ``x_init``, else a random start), then APGD on CE
    blended with the hinge on the logit from the point it reached; ``settings`` are ``AlphaAPGD``'s (eps,
    norm, alpha_weight, n_iter: floats, or one per example). Per example its final point (``_apgd_point``)."""
    down = _apgd_point(AlphaAPGD(mixed, loss="alpha", seed=seed, device=x.device, **settings), x, y, seed, x_init)
    return _apgd_point(
        AlphaAPGD(mixed, loss="ce-hinge", seed=seed + 1, device=x.device, **settings), x, y, seed + 1, x_init=down
    )


def _stage_functions(mixed: nn.Module, eps: float, norm: str, budget: AttackBudget) -> dict[str, AttackStage]:
    settings = dict(eps=float(eps), norm=norm, alpha_weight=budget.alpha_weight, n_iter=budget.apgd_steps)

    def apgd_ce(x, y, seed, on_step):
        return _apgd_point(AlphaAPGD(mixed, loss="ce", seed=seed, device=x.device, **settings), x, y, seed)

    def apgd_t(x, y, seed, on_step):
        attack = AlphaAPGDTargeted(
            mixed, seed=seed, device=x.device, n_target_classes=budget.target_classes, **settings
        )
        with torch.no_grad():
            order = mixed(x).sort(dim=1)[1]
        point, fooled = x.clone(), torch.zeros(len(x), dtype=torch.bool, device=x.device)
        targets = min(budget.target_classes, order.shape[1] - 1)
        for rank in range(2, targets + 2):
            left = (~fooled).nonzero().flatten()
            if not len(left):
                break
            on_step(rank - 2, targets, len(left))
            attack.y_target = order[left, -rank]
            candidate = _apgd_point(attack, x[left], y[left], seed + rank)
            with torch.no_grad():
                now_fooled = mixed(candidate).argmax(1) != y[left]
            keep = now_fooled | (rank == 2)  # the first target's best point stands until a later one succeeds
            point[left[keep]] = candidate[keep]
            fooled[left[now_fooled]] = True
        return point

    def alpha_first(x, y, seed, on_step):
        return alpha_first_point(mixed, x, y, seed, **settings)

    def square(x, y, seed, on_step):
        attack = AlphaSquare(
            mixed,
            eps=eps,
            norm=norm,
            n_queries=budget.square_queries,
            alpha_weight=budget.alpha_weight,
            seed=seed,
            device=x.device,
        )
        attack.init_hyperparam(x)
        torch.manual_seed(seed)
        with reporting_queries(attack, on_step):
            return attack.attack_single_run(x, y)[1].detach()

    return {"apgd-ce-alpha": apgd_ce, "apgd-t-alpha": apgd_t, "alpha-first": alpha_first, "square-alpha": square}


def stage_points(
    mixed: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    seed: int = 0,
    budget: AttackBudget = FULL_BUDGET,
    stages: tuple[str, ...] = ADAPTIVE_STAGES,
) -> dict[str, torch.Tensor]:
    """Each of ``stages`` run on every example of ``x`` from the clean input (not on the survivors of the one before,
    as in ``adaptive_attack``), with the same seeds: per example the stage's point, its adversarial example where it
    succeeded, else its closest point (APGD's highest-loss iterate, Square's best query, APGD-T's first target's)."""
    unknown = set(stages) - set(ADAPTIVE_STAGES)
    if unknown:
        raise AsmixError(f"unknown adaptive stage(s) {', '.join(sorted(unknown))}: choose from {ADAPTIVE_STAGES}")
    functions = _stage_functions(mixed, eps, norm, budget)
    x, y = x.detach(), y.to(x.device)
    points = {}
    for name in stages:
        with restored_rng(x.device):
            points[name] = functions[name](x, y, seed + 1000 * (ADAPTIVE_STAGES.index(name) + 1), _no_step)
    return points


def adaptive_attack(
    mixed: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    seed: int = 0,
    budget: AttackBudget = FULL_BUDGET,
    start: AutoAttackRun | None = None,
    on_stage: StageFn = no_stage,
) -> AutoAttackRun:
    """The adaptive stages (``ADAPTIVE_STAGES``) on ``mixed``, each on the examples still robust after the ones
    before it, from ``start``'s survivors (e.g. a standard AutoAttack run on the same batch). At a fixed alpha the
    blended losses are the plain ones and alpha-first is skipped; the trail holds the accuracy after each stage
    and, per example, the alpha at the point it ended on. ``on_stage`` hears the robust count as each stage starts,
    between APGD-T's target classes, and after each stage."""
    adaptive = bool(getattr(mixed, "adaptive", False))
    functions = _stage_functions(mixed, eps, norm, budget)
    device = x.device
    x, y = x.detach(), y.to(device)
    if start is None:
        with torch.no_grad():
            start = _clean_run(mixed, x, y)
    robust = start.robust[:, -1].clone().to(device)
    x_adv = start.x_adv.clone().to(device)
    flags, alphas, names = [start.robust.cpu()], [start.alpha.cpu()], list(start.stages)
    for offset, name in enumerate(ADAPTIVE_STAGES):
        alpha = torch.full((len(x),), float("nan"))
        unit = {"apgd-t-alpha": "target", "square-alpha": "query"}.get(name, "step")

        def on_step(done: int, total: int, left: int, name=name, unit=unit) -> None:
            on_stage(StageEvent(name, done, total, left, len(x), unit))

        if name != "alpha-first" or adaptive:
            index = robust.nonzero().flatten()
            if len(index):
                if name not in ("apgd-t-alpha", "square-alpha"):  # these report each target class, each query
                    on_step(0, 1, len(index))
                with restored_rng(device):
                    point = functions[name](x[index], y[index], seed + 1000 * (offset + 1), on_step)
                with torch.no_grad():
                    logits, point_alpha = mixed(point, return_alpha=True)
                fooled = logits.argmax(1) != y[index]
                x_adv[index[fooled]] = point[fooled]
                robust[index[fooled]] = False
                alpha[index.cpu()] = point_alpha.float().cpu()
        flags.append(robust.cpu().unsqueeze(1))
        alphas.append(alpha.unsqueeze(1))
        names.append(name)
        on_step(1, 1, int(robust.sum()))
    return AutoAttackRun(x_adv, torch.cat(flags, 1), tuple(names), torch.cat(alphas, 1))


def _clean_run(mixed: nn.Module, x: torch.Tensor, y: torch.Tensor) -> AutoAttackRun:
    logits, alpha = mixed(x, return_alpha=True)
    robust = (logits.argmax(1) == y).cpu().unsqueeze(1)
    return AutoAttackRun(x.clone(), robust, ("clean",), alpha.float().cpu().unsqueeze(1))


def adaptive_autoattack(
    mixed: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    seed: int = 0,
    budget: AttackBudget = FULL_BUDGET,
    standard: AutoAttackRun | None = None,
    on_stage: StageFn = no_stage,
) -> AutoAttackRun:
    """Setting D, the strongest asmix knows: standard AutoAttack, then every adaptive stage on the examples
    it left robust; an example is robust only if it survives all of them. ``standard`` reuses a standard
    run on the same batch. Where alpha is fixed there is nothing adaptive to add: the result is ``standard``.
    ``on_stage`` hears every stage's progress (``standard_autoattack``, ``adaptive_attack``)."""
    if standard is None:
        standard = standard_autoattack(
            mixed, x, y, eps=eps, norm=norm, seed=seed, square_queries=budget.square_queries, on_stage=on_stage
        )
    if not getattr(mixed, "adaptive", False):
        return standard
    return adaptive_attack(mixed, x, y, eps=eps, norm=norm, seed=seed, budget=budget, start=standard, on_stage=on_stage)


def autoattack_lite(
    mixed: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    seed: int = 0,
    budget: AttackBudget = LITE_BUDGET,
    on_stage: StageFn = no_stage,
) -> AutoAttackRun:
    """A quick worst case used to choose and judge mixers: the adaptive APGD-CE, APGD-T (few targets),
    alpha-first and Square (few queries) stages, end to end through the mixing network."""
    return adaptive_attack(mixed, x, y, eps=eps, norm=norm, seed=seed, budget=budget, on_stage=on_stage)
