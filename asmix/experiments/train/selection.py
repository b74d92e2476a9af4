"""Choosing the mixer's evaluation head, the authors' whole one (range, logit bias and logit scales), on held-out
examples from a worst case over AutoAttack-lite examples (App. D.1 tunes it by hand): by its gain over the tempered
fixed alpha of equal clean accuracy, or for a clean-accuracy target. No model runs per candidate."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from asmix.attacks.adaptive import LITE_BUDGET, AttackBudget, autoattack_lite
from asmix.errors import AsmixError
from asmix.mixing import EvaluationHead, MixedClassifier, mix_logits
from asmix.runtime import ProgressFn, batch_generator, batch_slices, stage_reporter

WIDTHS = (0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5)
"""alpha_max - alpha_min candidates (the authors' ranges are 0.04 to 0.15 wide); ``max_width`` cuts them."""
BIASES = (-1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0)
"""Logit bias candidates (the authors' code evaluates at 1.05 to 1.3)."""
STD_SCALES = (1.0, 1.2, 2.0)
ROB_SCALES = (1.0, 0.5, 0.3, 0.2, 0.1)
SCALES: tuple[tuple[float, float], ...] = tuple(itertools.product(STD_SCALES, ROB_SCALES))
"""(g, h) logit scale pairs the head search and the tempered fixed alpha cover: 1/1, the authors' CIFAR-10 1.2/0.3
and CIFAR-100 2/1, and h's scale down to 0.1 (with h's logits scaled down, g decides only where h is unsure)."""
FIXED_STEP = 0.01
"""The alpha grid of the tempered fixed alphas, over all of [0, 1]."""

HeadRule = Literal["gain", "target"]
"""gain: the largest estimated gain over the tempered fixed alpha of equal clean accuracy (ties: more accurate);
target: the most robust head whose clean accuracy meets ``target_clean_acc``."""


@dataclass(frozen=True)
class HeadCandidate:
    """One evaluation head scored from cached logits: its clean accuracy and the share of examples right on the
    clean input and on every pooled attack (fractions)."""

    head: EvaluationHead
    clean_acc: float
    estimated_attacked_acc: float

    def to_dict(self) -> dict:
        return {
            **self.head.to_dict(),
            "clean_acc": self.clean_acc,
            "estimated_attacked_acc": self.estimated_attacked_acc,
        }


@dataclass(frozen=True)
class HeadSelection:
    """The chosen head with its held-out clean accuracy and estimated robust accuracy (right on the clean input and
    on every AutoAttack-lite example of the pool), the tempered fixed alpha it is measured against (the most robust
    fixed alpha, any grid scales, whose clean accuracy is at least the head's), and the frontiers of both families:
    the points no other of the family beats on both clean and estimated accuracy."""

    rule: HeadRule
    chosen: HeadCandidate
    baseline: HeadCandidate
    target_clean_acc: float | None
    met: bool
    n_examples: int
    n_candidates: int
    frontier: tuple[HeadCandidate, ...] = ()
    fixed_frontier: tuple[HeadCandidate, ...] = ()

    @property
    def head(self) -> EvaluationHead:
        return self.chosen.head

    @property
    def clean_acc(self) -> float:
        return self.chosen.clean_acc

    @property
    def estimated_attacked_acc(self) -> float:
        return self.chosen.estimated_attacked_acc

    @property
    def estimated_gain(self) -> float:
        """Estimated robust accuracy of the head minus the tempered fixed alpha's, in points."""
        return 100 * (self.chosen.estimated_attacked_acc - self.baseline.estimated_attacked_acc)

    def to_dict(self) -> dict:
        return {
            "rule": self.rule,
            "head": self.head.to_dict(),
            "clean_acc": self.clean_acc,
            "estimated_attacked_acc": self.estimated_attacked_acc,
            "tempered_fixed": self.baseline.to_dict(),
            "estimated_gain_points": self.estimated_gain,
            "target_clean_acc": self.target_clean_acc,
            "met": self.met,
            "n_examples": self.n_examples,
            "n_candidates": self.n_candidates,
            "frontier": {
                "mixer": [c.to_dict() for c in self.frontier],
                "tempered_fixed": [c.to_dict() for c in self.fixed_frontier],
            },
        }


@dataclass(frozen=True)
class PoolCache:
    """Base logits and the mixer's bias-free score at one set of inputs."""

    std_logits: torch.Tensor
    rob_logits: torch.Tensor
    score: torch.Tensor


@torch.no_grad()
def cache_pool(mixed: MixedClassifier, x: torch.Tensor, batch_size: int, device: torch.device) -> PoolCache:
    """One forward of g, h and the mixing network over ``x``: what every head candidate is scored from."""
    mixer = mixed.alpha_source
    parts = []
    for batch in batch_slices(len(x), batch_size):
        std_logits, rob_logits, std_features, rob_features = mixer.features(x[batch].to(device), mixed.std, mixed.rob)
        parts.append((std_logits, rob_logits, mixer(std_features, rob_features)))
    return PoolCache(*(torch.cat(column) for column in zip(*parts)))


def lite_runs(mixed: MixedClassifier, x: torch.Tensor, y: torch.Tensor, *, key: tuple, task: str, **settings):
    """``autoattack_lite`` on ``mixed`` batch by batch (``settings``: eps, norm, batch_size, seed, device, budget,
    progress), each batch seeded by ``key`` and its start: yields each batch's run; the stages inside a batch go to
    the progress display's ``stage``."""
    progress, device = settings.pop("progress", None), settings.pop("device")
    batch_size, seed = settings.pop("batch_size"), settings.pop("seed")
    batches = list(batch_slices(len(x), batch_size))
    for number, batch in enumerate(batches, 1):
        seeded = batch_generator(seed, *key, batch.start).initial_seed() % (2**31)
        on_stage = stage_reporter(progress, f"{task}, batch {number}/{len(batches)}")
        yield autoattack_lite(
            mixed, x[batch].to(device), y[batch].to(device), seed=seeded, on_stage=on_stage, **settings
        )
        if progress:
            progress(task, batch.stop, len(x))


def _pool(mixed: MixedClassifier, x: torch.Tensor, y: torch.Tensor, *, task: str, **settings) -> torch.Tensor:
    """AutoAttack-lite's examples against ``mixed`` (the clean input where it failed)."""
    runs = lite_runs(mixed, x, y, key=("select", task), task=f"choose head: {task}", **settings)
    return torch.cat([run.x_adv.detach().cpu() for run in runs])


def attack_pools(
    mixed: MixedClassifier,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    min_alpha: float = 0.5,
    max_width: float = 0.2,
    batch_size: int = 256,
    seed: int = 0,
    device: torch.device = torch.device("cpu"),
    budget: AttackBudget = LITE_BUDGET,
    progress: ProgressFn | None = None,
) -> list[torch.Tensor]:
    """``x`` and AutoAttack-lite's examples against two pivots: the mixer with the weakest head of the grid,
    (min_alpha, min_alpha + max_width) and bias 0, and the fixed alpha ``min_alpha``. The mixer's head is
    restored afterwards."""
    mixer = mixed.alpha_source
    if mixer is None:
        raise AsmixError("choosing a head needs a mixing network")
    mixed.eval()
    previous = (mixer.alpha_min, mixer.alpha_max, mixer.alpha_bias)
    settings = dict(
        eps=eps, norm=norm, batch_size=batch_size, seed=seed, device=device, budget=budget, progress=progress
    )
    try:
        mixer.set_alpha_range(min_alpha, min(1.0, min_alpha + max_width))
        mixer.set_alpha_bias(0.0)
        return [
            x,
            _pool(mixed, x, y, task="mixer", **settings),
            _pool(mixed.with_alpha(min_alpha), x, y, task=f"fixed alpha {min_alpha:g}", **settings),
        ]
    finally:
        mixer.set_alpha_range(previous[0], previous[1])
        mixer.set_alpha_bias(previous[2])


def head_grid(
    min_alpha: float, max_width: float, scales: tuple[tuple[float, float], ...] = SCALES
) -> list[EvaluationHead]:
    """Every head the choice considers: alpha_min from ``min_alpha`` in steps of 0.01, widths ``WIDTHS`` up to
    ``max_width``, biases ``BIASES`` (bias 0 only at width 0, where it has no effect), each with every pair of
    ``scales``."""
    heads = []
    lows = [round(min_alpha + 0.01 * i, 6) for i in range(int(round((1 - min_alpha) / 0.01)) + 1)]
    for std_scale, rob_scale in scales:
        for width in (w for w in WIDTHS if w <= max_width + 1e-9):
            for bias in BIASES if width > 0 else (0.0,):
                for low in lows:
                    high = round(low + width, 6)
                    if high > 1 + 1e-9:
                        break
                    heads.append(EvaluationHead(low, high, bias, std_scale, rob_scale))
    return heads


def fixed_grid(scales: tuple[tuple[float, float], ...] = SCALES, step: float = FIXED_STEP) -> list[EvaluationHead]:
    """The tempered fixed alphas: every alpha of [0, 1] in ``step``s with every pair of ``scales`` (width-0 heads)."""
    alphas = [round(i * step, 6) for i in range(int(round(1 / step)) + 1)]
    return [EvaluationHead(a, a, 0.0, std_scale, rob_scale) for std_scale, rob_scale in scales for a in alphas]


@torch.no_grad()
def score_heads(
    mixed: MixedClassifier,
    caches: list[PoolCache],
    y: torch.Tensor,
    heads: list[EvaluationHead],
    chunk: int = 64,
) -> list[HeadCandidate]:
    """Each head's clean accuracy on ``caches[0]`` and the share right there and on every other cache, from the
    cached logits and mixer scores alone (no model runs); ``chunk`` heads of the same scales are mixed in one call."""
    y = y.to(caches[0].score.device)
    settings = vars(mixed.settings)
    scored: dict[int, tuple[float, float]] = {}
    order = sorted(range(len(heads)), key=lambda i: (heads[i].std_scale, heads[i].rob_scale))
    for _, group in itertools.groupby(order, key=lambda i: (heads[i].std_scale, heads[i].rob_scale)):
        group = list(group)
        scales = {"std_scale": heads[group[0]].std_scale, "rob_scale": heads[group[0]].rob_scale}
        for first in range(0, len(group), chunk):
            part = group[first : first + chunk]
            rows = [(heads[i].alpha_min, heads[i].alpha_max - heads[i].alpha_min, heads[i].alpha_bias) for i in part]
            low, width, bias = torch.tensor(rows, dtype=caches[0].score.dtype, device=y.device).unbind(1)
            right = []
            for cache in caches:
                alpha = low[:, None] + width[:, None] * torch.sigmoid(cache.score[None, :] + bias[:, None])
                count = len(part)
                logits = mix_logits(
                    cache.std_logits.repeat(count, 1),
                    cache.rob_logits.repeat(count, 1),
                    alpha.reshape(-1),
                    **(settings | scales),
                )
                right.append(logits.argmax(1).view(count, -1) == y)
            clean, robust = right[0].float().mean(1).tolist(), torch.stack(right).all(0).float().mean(1).tolist()
            scored.update(zip(part, zip(clean, robust)))
    return [HeadCandidate(head, *scored[i]) for i, head in enumerate(heads)]


def _preference(candidate: HeadCandidate) -> tuple:
    """Ties between equally scored heads: more accurate, higher alpha_min, narrower, scales nearer 1."""
    head = candidate.head
    return (
        candidate.clean_acc,
        head.alpha_min,
        head.alpha_min - head.alpha_max,
        -abs(head.std_scale - 1) - abs(head.rob_scale - 1),
    )


def tempered_baseline(fixed: Sequence[HeadCandidate], clean_acc: float) -> HeadCandidate:
    """The most robust fixed alpha of ``fixed`` whose clean accuracy is at least ``clean_acc`` (ties: see
    ``_preference``); where none is, the most accurate one."""
    meeting = [c for c in fixed if c.clean_acc >= clean_acc - 1e-9]
    if meeting:
        return max(meeting, key=lambda c: (c.estimated_attacked_acc, *_preference(c)))
    return max(fixed, key=lambda c: (c.clean_acc, c.estimated_attacked_acc))


def frontier(candidates: list[HeadCandidate]) -> tuple[HeadCandidate, ...]:
    """The candidates no other beats on both clean accuracy and the estimate, by clean accuracy (ascending)."""
    points, best = [], -1.0
    for c in sorted(candidates, key=lambda c: (-c.clean_acc, -c.estimated_attacked_acc, *(-v for v in _preference(c)))):
        if c.estimated_attacked_acc > best:
            points.append(c)
            best = c.estimated_attacked_acc
    return tuple(reversed(points))


def pick_head(
    candidates: list[HeadCandidate], fixed: list[HeadCandidate], target_clean_acc: float | None = None
) -> tuple[HeadCandidate, HeadCandidate, bool]:
    """The chosen head, its tempered fixed baseline and whether the rule was met. Without a target: the largest
    estimated gain over the baseline of equal clean accuracy (ties: ``_preference``). With one: the most robust
    head meeting it (ties: ``_preference``), else the most accurate head, not met."""
    if target_clean_acc is None:
        frontier_fixed = frontier(fixed)

        def gain(c: HeadCandidate) -> float:
            return c.estimated_attacked_acc - tempered_baseline(frontier_fixed, c.clean_acc).estimated_attacked_acc

        best = max(frontier(candidates), key=lambda c: (round(gain(c), 12), *_preference(c)))
        return best, tempered_baseline(fixed, best.clean_acc), True
    meeting = [c for c in candidates if c.clean_acc >= target_clean_acc - 1e-9]
    if meeting:
        best = max(meeting, key=lambda c: (c.estimated_attacked_acc, *_preference(c)))
        return best, tempered_baseline(fixed, best.clean_acc), True
    best = max(candidates, key=lambda c: (c.clean_acc, c.estimated_attacked_acc))
    return best, tempered_baseline(fixed, best.clean_acc), False


def select_head(
    mixed: MixedClassifier,
    x: torch.Tensor,
    y: torch.Tensor,
    target_clean_acc: float | None = None,
    *,
    eps: float,
    norm: str = "linf",
    min_alpha: float = 0.5,
    max_width: float = 0.2,
    scales: tuple[tuple[float, float], ...] = SCALES,
    batch_size: int = 256,
    seed: int = 0,
    device: torch.device = torch.device("cpu"),
    budget: AttackBudget = LITE_BUDGET,
    progress: ProgressFn | None = None,
) -> HeadSelection:
    """The evaluation head (alpha_min >= ``min_alpha``, width <= ``max_width``, bias on ``BIASES``, logit scales on
    ``scales``) chosen on ``(x, y)`` by ``pick_head`` (its gain over the tempered fixed alpha, or
    ``target_clean_acc``), every candidate scored against the pooled attacks (``attack_pools``: AutoAttack-lite
    against two pivots) from cached logits without running a model. A head stronger than the pivots may fare worse
    against an attack aimed at it: the verdict tests that."""
    pools = attack_pools(
        mixed,
        x,
        y,
        eps=eps,
        norm=norm,
        min_alpha=min_alpha,
        max_width=max_width,
        batch_size=batch_size,
        seed=seed,
        device=device,
        budget=budget,
        progress=progress,
    )
    caches = [cache_pool(mixed, points, batch_size, device) for points in pools]
    return choose_from_caches(
        mixed, caches, y, target_clean_acc, min_alpha=min_alpha, max_width=max_width, scales=scales
    )


def choose_from_caches(
    mixed: MixedClassifier,
    caches: list[PoolCache],
    y: torch.Tensor,
    target_clean_acc: float | None,
    *,
    min_alpha: float,
    max_width: float,
    scales: tuple[tuple[float, float], ...] = SCALES,
) -> HeadSelection:
    """``select_head``'s choice from pools already cached (``cache_pool``): scores the head grid and the tempered
    fixed alphas, and picks."""
    heads = head_grid(min_alpha, max_width, scales)
    candidates = score_heads(mixed, caches, y, heads)
    fixed = score_heads(mixed, caches, y, fixed_grid(scales))
    best, baseline, met = pick_head(candidates, fixed, target_clean_acc)
    return HeadSelection(
        "gain" if target_clean_acc is None else "target",
        best,
        baseline,
        target_clean_acc,
        met,
        len(y),
        len(heads),
        frontier(candidates),
        frontier(fixed),
    )
