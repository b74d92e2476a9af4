"""Standard AutoAttack on a (mixed) classifier, with its per-attack accuracy trail and "potentially
unreliable" flag (Section 5). The attacks are the AutoAttack package's (``pyautoattack``, imported as
``autoattack``); nothing here re-implements them. The adaptive version (setting D) is in ``adaptive``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from asmix.checks import threat_model_name
from asmix.compat import autoattack_package
from asmix.errors import AsmixError
from asmix.runtime import StageEvent, StageFn, no_stage

STANDARD_ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square")
"""The standard AutoAttack ensemble, in the package's order."""

SQUARE_QUERIES = 5000
"""Square's query budget in standard AutoAttack."""

UNRELIABLE_DROP = 0.002
"""AutoAttack's threshold: Square lowering accuracy by >= 0.2 points after the gradient attacks."""


def potentially_unreliable(trail: Mapping[str, float], *, drop: float = UNRELIABLE_DROP) -> bool:
    """AutoAttack's "potentially unreliable" flag (Section 5.2.2): Square, run last, lowered the
    accuracy by at least ``drop`` (0.2 points) below the best of the gradient attacks before it.

    ``trail`` maps ``clean`` and each attack to the accuracy after it (fractions). Without Square, or
    without any attack before it, there is nothing to flag.
    """
    names = list(trail)
    if "square" not in names:
        return False
    before = [trail[name] for name in names[: names.index("square")] if name != "clean"]
    if not before:
        return False
    return trail["square"] < min(before) - drop + 1e-12


def accuracy_trail(robust: torch.Tensor, stages: Sequence[str]) -> dict[str, float]:
    """Accuracy after each stage from per-example flags ``robust`` of shape (N, len(stages))."""
    if robust.ndim != 2 or robust.shape[1] != len(stages):
        raise ValueError(f"robust flags of shape {tuple(robust.shape)} do not match {len(stages)} stages")
    means = robust.float().mean(0) if len(robust) else torch.zeros(len(stages))
    return {stage: float(value) for stage, value in zip(stages, means)}


@dataclass(frozen=True)
class AutoAttackRun:
    """Outcome of AutoAttack on one batch: ``robust[:, k]``, whether each example was still classified correctly after
    stage k (``stages[0]`` is ``clean``); ``x_adv``, per example the perturbation that fooled the model (else the clean
    input); ``alpha[:, k]``, the mixing weight at the point stage k returned (NaN where it did not run; the package's
    attacks return the clean input where they fail, the adaptive stages their closest point)."""

    x_adv: torch.Tensor
    robust: torch.Tensor
    stages: tuple[str, ...]
    alpha: torch.Tensor | None = None

    @property
    def mean_alpha(self) -> dict[str, float | None]:
        """Mean alpha per stage over the examples it attacked (None where it attacked none, or for a plain model)."""
        if self.alpha is None:
            return {}
        return {
            stage: float(column[~column.isnan()].mean()) if (~column.isnan()).any() else None
            for stage, column in zip(self.stages, self.alpha.T)
        }

    @property
    def trail(self) -> dict[str, float]:
        return accuracy_trail(self.robust, self.stages)


def standard_autoattack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    seed: int = 0,
    attacks: Sequence[str] = STANDARD_ATTACKS,
    square_queries: int = SQUARE_QUERIES,
    on_stage: StageFn = no_stage,
) -> AutoAttackRun:
    """Standard AutoAttack (APGD-CE, APGD-T, FAB-T, Square; Croce & Hein 2020) on ``model``'s logits: the package's
    ``run_standard_evaluation`` once per attack on the examples still robust, so the accuracy after each is known.
    ``seed`` seeds every attack (a batch's outcome is the same in any run; torch's global generator is restored after);
    ``square_queries`` below the standard 5000 makes a quicker, weaker check. ``on_stage`` hears the robust count
    after the clean pass, at each restart or target class of an attack, and after each attack."""
    aa_module = autoattack_package()
    unknown = set(attacks) - set(STANDARD_ATTACKS)
    if unknown:
        raise AsmixError(f"unknown AutoAttack attack(s) {', '.join(sorted(unknown))}")
    device = x.device
    adversary = aa_module.AutoAttack(
        model, eps=float(eps), norm=threat_model_name(norm), version="standard", device=device, seed=int(seed)
    )
    adversary.verbose = False
    if square_queries <= 0:
        raise AsmixError(f"square queries must be positive, got {square_queries}")
    adversary.square.n_queries = int(square_queries)
    x, y = x.detach(), y.to(device)
    with torch.no_grad():
        logits, alpha = _logits_and_alpha(model, x)
    robust = logits.argmax(1) == y
    flags, alphas = [robust.clone()], [alpha]
    on_stage(StageEvent("clean", 1, 1, int(robust.sum()), len(x)))
    x_adv = x.clone()
    with restored_rng(device):
        for attack in attacks:
            index = robust.nonzero().flatten()
            alpha = torch.full((len(x),), float("nan"))
            if len(index):
                adversary.attacks_to_run = [attack]
                with reporting_runs(_package_attack(adversary, attack), attack, len(x), on_stage):
                    x_attack, _ = adversary.run_standard_evaluation(x[index], y[index], batch_size=len(index))
                with torch.no_grad():
                    logits, alpha[index.cpu()] = _logits_and_alpha(model, x_attack)
                fooled = logits.argmax(1) != y[index]
                x_adv[index[fooled]] = x_attack[fooled]
                robust[index[fooled]] = False
            flags.append(robust.clone())
            alphas.append(alpha)
            total, unit = _steps(_package_attack(adversary, attack))
            on_stage(StageEvent(attack, total, total, int(robust.sum()), len(x), unit))
    return AutoAttackRun(x_adv, torch.stack(flags, 1).cpu(), ("clean", *attacks), torch.stack(alphas, 1))


def _package_attack(adversary, attack: str):
    """The package's attack object that ``run_standard_evaluation`` runs for ``attack``."""
    return {"apgd-ce": adversary.apgd, "apgd-t": adversary.apgd_targeted, "fab-t": adversary.fab}.get(
        attack, adversary.square
    )


def _steps(package_attack) -> tuple[int, str]:
    """How many single runs a package attack makes at most, and what one is: target classes times restarts for a
    targeted attack (``run_standard_evaluation`` sets FAB-T to one restart), else restarts."""
    package = autoattack_package()
    targeted = getattr(package_attack, "targeted", False) or isinstance(
        package_attack, package.autopgd_base.APGDAttack_targeted
    )
    if targeted:
        return package_attack.n_target_classes * package_attack.n_restarts, "target"
    return package_attack.n_restarts, "restart"


@contextmanager
def reporting_runs(package_attack, stage: str, examples: int, on_stage: StageFn) -> Iterator[None]:
    """While inside, each single run of ``package_attack`` (a restart, or a target class) reports as it starts: the
    steps before it are finished and the examples it attacks are the batch's robust ones (the package attacks only
    those), so no forward pass is added; Square, one run of thousands of queries, also reports each query
    (``reporting_queries``). The attack's own methods are restored on the way out."""
    if on_stage is no_stage:
        yield
        return
    run, done = package_attack.attack_single_run, [0]

    def reported(x: torch.Tensor, *args, **kwargs):
        total, unit = _steps(package_attack)
        on_stage(StageEvent(stage, min(done[0], total - 1), total, len(x), examples, unit))
        done[0] += 1
        return run(x, *args, **kwargs)

    def query(made: int, budget: int, left: int) -> None:
        on_stage(StageEvent(stage, made, budget, left, examples, "query"))

    package_attack.attack_single_run = reported
    try:
        if hasattr(package_attack, "margin_and_loss"):  # Square
            with reporting_queries(package_attack, query):
                yield
        else:
            yield
    finally:
        del package_attack.attack_single_run


@contextmanager
def reporting_queries(square, report: Callable[[int, int, int], None]) -> Iterator[None]:
    """While inside, each query of ``square`` (the package's SquareAttack or a subclass) calls ``report(queries made,
    query budget, examples still unbroken)``: the examples are the rows the query scores (Square scores only those
    it has not broken yet), so no forward pass is added. Square's own method is restored on the way out."""
    score, made = square.margin_and_loss, [0]

    def counted(x: torch.Tensor, y: torch.Tensor):
        report(min(made[0], square.n_queries - 1), square.n_queries, len(x))
        made[0] += 1
        return score(x, y)

    square.margin_and_loss = counted
    try:
        yield
    finally:
        del square.margin_and_loss


def _logits_and_alpha(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and, for a mixed classifier, alpha per example (CPU float; NaN for a plain model)."""
    if hasattr(model, "parts"):
        logits, alpha = model(x, return_alpha=True)
        return logits, alpha.detach().float().cpu()
    return model(x), torch.full((len(x),), float("nan"))


def restored_rng(device: torch.device):
    """The attacks reseed torch's global generator; give it back as it was afterwards."""
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])
