"""The detector profile (issue 24): for each kind of input point, how well the mixing network's pre-range logit tells
it from clean inputs (AUC), the mean alpha there and the count; the table that says whether a mixer detects attacks
or only the attack it was trained on."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from asmix.attacks.adaptive import ADAPTIVE_STAGES, AttackBudget, stage_points
from asmix.attacks.pgd import PGD
from asmix.errors import AsmixError
from asmix.mixing import alpha_per_example
from asmix.runtime import ProgressFn, batch_generator, batch_slices

CLEAN, UNIFORM, PGD_POINTS = "clean", "uniform", "pgd"
CRAFTED = (UNIFORM, PGD_POINTS, *ADAPTIVE_STAGES)
"""The point kinds ``craft_points`` makes: PGD's uniform random start, PGD, and each adaptive stage."""
PROFILE_POINTS = (CLEAN, *CRAFTED)
"""Row order of a profile; a caller's extra point sets (the training attack's rows) go after ``uniform``."""


@dataclass(frozen=True)
class DetectorRow:
    """One kind of point: how many (``n``), the mean alpha there, and the AUC of the mixer logit for telling these
    points from clean inputs (``auc``; 0.5 for the clean row itself, chance)."""

    points: str
    n: int
    mean_alpha: float
    auc: float


@dataclass(frozen=True)
class DetectorProfile:
    """The detector profile of a mixer: one ``DetectorRow`` per kind of point, clean first."""

    rows: tuple[DetectorRow, ...]

    def to_dict(self) -> list[dict]:
        """The JSON form, ``detector_profile``: a list of ``{"points", "n", "mean_alpha", "auc"}``."""
        return [asdict(row) for row in self.rows]

    def row(self, points: str) -> DetectorRow:
        """The row of the kind of point ``points``."""
        for row in self.rows:
            if row.points == points:
                return row
        raise KeyError(points)


@dataclass(frozen=True)
class MixerScores:
    """The mixing network at a set of points, from one forward pass: its pre-range logit and alpha, each (N,) on
    the CPU; ``+`` concatenates (batches add up)."""

    alpha_logit: torch.Tensor
    alpha: torch.Tensor

    def __add__(self, other: MixerScores) -> MixerScores:
        return MixerScores(torch.cat((self.alpha_logit, other.alpha_logit)), torch.cat((self.alpha, other.alpha)))


def auc(attacked: torch.Tensor, clean: torch.Tensor) -> float:
    """The probability that the mixer logit at an attacked point exceeds that at a clean point, ties counting 1/2
    (the Mann-Whitney U over n_attacked * n_clean pairs), counted exactly; ``auc(clean, clean)`` is 0.5."""
    attacked, clean = attacked.detach().flatten().double().cpu(), clean.detach().flatten().double().cpu()
    if not len(attacked) or not len(clean):
        raise AsmixError("an AUC needs at least one attacked and one clean point")
    if attacked.isnan().any() or clean.isnan().any():
        raise AsmixError("the mixer logit is NaN at some points: no AUC")
    clean = clean.sort().values
    below = torch.searchsorted(clean, attacked, right=False)  # clean logits < each attacked one
    at_or_below = torch.searchsorted(clean, attacked, right=True)  # clean logits <= each attacked one
    return (below + at_or_below).sum().item() / (2 * len(attacked) * len(clean))


@torch.no_grad()
def mixer_scores(mixed: nn.Module, x: torch.Tensor) -> MixerScores:
    """The mixer logit and alpha of ``mixed`` (a ``MixedClassifier`` with a mixing network) at ``x``: one forward."""
    parts = mixed.parts(x)
    if parts.alpha_logit is None:
        raise AsmixError("the detector profile needs a mixing network (--mixer), not a fixed alpha")
    alpha = alpha_per_example(parts.alpha, len(x), parts.alpha_logit)
    return MixerScores(parts.alpha_logit.detach().float().cpu(), alpha.detach().float().cpu())


def craft_points(
    mixed: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str,
    budget: AttackBudget,
    seed: int,
    start: int,
    pgd: PGD | None = None,
    skip: tuple[str, ...] = (),
) -> dict[str, torch.Tensor]:
    """Every kind of ``CRAFTED`` point but ``skip`` for the batch of ``x`` that starts at example ``start``, one
    point per example whether or not it fools ``mixed``: ``uniform`` is PGD's random start; ``pgd`` is ``pgd``
    (default PGD-20) white-box on cross-entropy, evaluate's ``pgd`` column with the same generator, at its first
    misclassified iterate, else its last; each adaptive stage (``budget``, alpha term included) gives its adversarial
    example, else its closest point (``stage_points``)."""
    pgd = pgd if pgd is not None else PGD(eps=eps, norm=norm)
    if (pgd.eps, pgd.norm) != (eps, norm):
        raise AsmixError(f"the profile's PGD attacks {pgd.norm} eps={pgd.eps}, not {norm} eps={eps}")
    points = {}
    if UNIFORM not in skip:
        start_only = PGD(eps=eps, steps=0, norm=norm)  # no step: the random start alone, no forward pass
        points[UNIFORM] = start_only.perturb(mixed, x, y, generator=batch_generator(seed, "detector", UNIFORM, start))
    if PGD_POINTS not in skip:
        points[PGD_POINTS] = pgd.perturb(mixed, x, y, generator=batch_generator(seed, "pgd", "mixed", start))
    stages = tuple(stage for stage in ADAPTIVE_STAGES if stage not in skip)
    if stages:
        stage_seed = batch_generator(seed, "detector", "stages", start).initial_seed()
        points |= stage_points(mixed, x, y, eps=eps, norm=norm, seed=stage_seed, budget=budget, stages=stages)
    return points


def batch_scores(
    mixed: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str,
    budget: AttackBudget,
    seed: int,
    start: int,
    pgd: PGD | None = None,
    known: dict[str, MixerScores] | None = None,
) -> dict[str, MixerScores]:
    """The mixer at every kind of ``PROFILE_POINTS`` point of one batch (``craft_points``), one forward pass per
    kind; ``known`` holds scores a caller already has at the same points (evaluate's clean and pgd columns)."""
    scores = dict(known or {})
    if CLEAN not in scores:
        scores[CLEAN] = mixer_scores(mixed, x)
    crafted = craft_points(
        mixed, x, y, eps=eps, norm=norm, budget=budget, seed=seed, start=start, pgd=pgd, skip=tuple(scores)
    )
    scores |= {points: mixer_scores(mixed, inputs) for points, inputs in crafted.items()}
    return {points: scores[points] for points in PROFILE_POINTS}


def profile_from_scores(scores: dict[str, MixerScores]) -> DetectorProfile:
    """The profile of the mixer scores at each kind of point (``clean`` among them), rows in ``scores``' order."""
    if CLEAN not in scores:
        raise AsmixError("a detector profile needs the mixer's scores at clean points")
    clean = scores[CLEAN].alpha_logit
    rows = []
    for points, at in scores.items():
        if not len(at.alpha):
            raise AsmixError(f"no {points} points for the detector profile")
        rows.append(DetectorRow(points, len(at.alpha), at.alpha.float().mean().item(), auc(at.alpha_logit, clean)))
    return DetectorProfile(tuple(rows))


def scores_record(scores: dict[str, MixerScores], prefix: str = "detector") -> dict[str, torch.Tensor]:
    """``scores`` as per-example arrays ``{prefix}/{points}/alpha_logit`` and ``/alpha`` (a resumable part's record,
    evaluate's examples file)."""
    return {
        f"{prefix}/{points}/{name}": getattr(at, name)
        for points, at in scores.items()
        for name in ("alpha_logit", "alpha")
    }


def profile_from_record(record: dict[str, torch.Tensor], prefix: str = "detector") -> DetectorProfile | None:
    """The profile over every example of a record of ``scores_record``'s arrays (None where it has none)."""
    if f"{prefix}/{CLEAN}/alpha_logit" not in record:
        return None
    names = dict.fromkeys(key.split("/")[1] for key in record if key.startswith(f"{prefix}/"))
    scores = {
        points: MixerScores(record[f"{prefix}/{points}/alpha_logit"], record[f"{prefix}/{points}/alpha"])
        for points in names
    }
    return profile_from_scores(ordered(scores))


def ordered(scores: dict[str, MixerScores]) -> dict[str, MixerScores]:
    """``scores`` in profile order: clean, uniform, any other point set (the training attack's rows), then PGD and
    the adaptive stages."""
    head = [name for name in (CLEAN, UNIFORM) if name in scores]
    tail = [name for name in CRAFTED[1:] if name in scores]
    middle = [name for name in scores if name not in head + tail]
    return {name: scores[name] for name in head + middle + tail}


def detector_profile(
    mixed: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str,
    batch_size: int,
    seed: int,
    device: torch.device,
    budget: AttackBudget,
    progress: ProgressFn | None = None,
    extra_points: dict[str, torch.Tensor] | None = None,
    pgd: PGD | None = None,
) -> DetectorProfile:
    """The detector profile of ``mixed`` (a ``MixedClassifier`` with a mixing network, in eval mode on ``device``) on
    the clean ``(x, y)``: rows clean, uniform, each of ``extra_points`` (name -> inputs, e.g. the training attack's
    own rows), pgd and the adaptive stages, crafted per batch as ``craft_points`` says, each batch seeded by
    ``(seed, start)``."""
    if len(x) != len(y) or not len(x):
        raise AsmixError(f"the detector profile needs clean inputs and their labels, got {len(x)} and {len(y)}")
    extra_points = extra_points or {}
    clashes = set(extra_points) & set(PROFILE_POINTS)
    if clashes:
        raise AsmixError(f"extra point sets may not reuse the names {', '.join(sorted(clashes))}")
    if not getattr(mixed, "adaptive", False):
        raise AsmixError("the detector profile needs a mixing network (--mixer), not a fixed alpha")
    sets = [(None, part) for part in batch_slices(len(x), batch_size)]
    sets += [(name, part) for name, points in extra_points.items() for part in batch_slices(len(points), batch_size)]
    scores: dict[str, MixerScores] = {}
    for done, (name, part) in enumerate(sets, 1):
        if name is None:
            x_batch, y_batch = x[part].to(device), y[part].to(device)
            found = batch_scores(
                mixed, x_batch, y_batch, eps=eps, norm=norm, budget=budget, seed=seed, start=part.start, pgd=pgd
            )
        else:
            found = {name: mixer_scores(mixed, extra_points[name][part].to(device))}
        for points, batch in found.items():
            scores[points] = scores[points] + batch if points in scores else batch
        if progress:
            progress("detector profile", done, len(sets))
    return profile_from_scores(ordered(scores))
