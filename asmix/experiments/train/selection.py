"""Choosing the mixer's evaluation head, range (alpha_min, alpha_max) and logit bias, for a clean-accuracy
target on held-out examples, by a worst case over AutoAttack-lite examples (App. D.1 tunes it by hand)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from asmix.attacks.adaptive import LITE_BUDGET, AttackBudget, autoattack_lite
from asmix.errors import AsmixError
from asmix.mixing import MixedClassifier
from asmix.runtime import ProgressFn, batch_generator, batch_slices

WIDTHS = (0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5)
"""alpha_max - alpha_min candidates (the authors' ranges are 0.04 to 0.15 wide); ``max_width`` cuts them."""
BIASES = (-1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0)
"""Logit bias candidates (the authors' code evaluates at 1.05 to 1.3)."""


@dataclass(frozen=True)
class HeadSelection:
    """The chosen head with its held-out clean accuracy and its estimated robust accuracy: the share of
    examples it classifies right on the clean input and on every AutoAttack-lite example of the pool."""

    alpha_min: float
    alpha_max: float
    alpha_bias: float
    target_clean_acc: float
    met: bool
    clean_acc: float
    estimated_attacked_acc: float
    n_examples: int
    n_candidates: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class HeadCandidate:
    """One evaluation head scored from cached logits: its clean accuracy and the share of examples right on the
    clean input and on every pooled attack (fractions)."""

    alpha_min: float
    alpha_max: float
    alpha_bias: float
    clean_acc: float
    estimated_attacked_acc: float


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
    progress), each batch seeded by ``key`` and its start: yields each batch's run."""
    progress, device = settings.pop("progress", None), settings.pop("device")
    batch_size, seed = settings.pop("batch_size"), settings.pop("seed")
    for batch in batch_slices(len(x), batch_size):
        seeded = batch_generator(seed, *key, batch.start).initial_seed() % (2**31)
        yield autoattack_lite(mixed, x[batch].to(device), y[batch].to(device), seed=seeded, **settings)
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


def head_grid(min_alpha: float, max_width: float) -> list[tuple[float, float, float]]:
    """(alpha_min, alpha_max, bias) of every head the choice considers: alpha_min from ``min_alpha`` in steps of
    0.01, widths ``WIDTHS`` up to ``max_width``, biases ``BIASES`` (bias 0 only at width 0, where it has no effect)."""
    heads = []
    lows = [round(min_alpha + 0.01 * i, 6) for i in range(int(round((1 - min_alpha) / 0.01)) + 1)]
    for width in (w for w in WIDTHS if w <= max_width + 1e-9):
        for bias in BIASES if width > 0 else (0.0,):
            for low in lows:
                high = round(low + width, 6)
                if high > 1 + 1e-9:
                    break
                heads.append((low, high, bias))
    return heads


@torch.no_grad()
def score_heads(
    mixed: MixedClassifier,
    caches: list[PoolCache],
    y: torch.Tensor,
    heads: list[tuple[float, float, float]],
    chunk: int = 64,
) -> list[HeadCandidate]:
    """Each head's clean accuracy on ``caches[0]`` and the share right there and on every other cache, from
    the cached logits and mixer scores alone (no model runs); ``chunk`` heads are mixed in one call."""
    y = y.to(caches[0].score.device)
    clean, robust = [], []
    for first in range(0, len(heads), chunk):
        part = [(low, high - low, bias) for low, high, bias in heads[first : first + chunk]]  # as the mixer's head
        low, width, bias = torch.tensor(part, dtype=caches[0].score.dtype, device=y.device).unbind(1)
        right = []
        for cache in caches:
            alpha = low[:, None] + width[:, None] * torch.sigmoid(cache.score[None, :] + bias[:, None])  # (heads, N)
            count = len(part)
            logits = mixed.mix(cache.std_logits.repeat(count, 1), cache.rob_logits.repeat(count, 1), alpha.reshape(-1))
            right.append(logits.argmax(1).view(count, -1) == y)
        clean.append(right[0].float().mean(1))
        robust.append(torch.stack(right).all(0).float().mean(1))
    clean, robust = torch.cat(clean).tolist(), torch.cat(robust).tolist()
    return [HeadCandidate(*head, c, r) for head, c, r in zip(heads, clean, robust)]


def pick_head(candidates: list[HeadCandidate], target_clean_acc: float) -> tuple[HeadCandidate, bool]:
    """The most robust candidate meeting the target (ties: more accurate, higher alpha_min, narrower), else the
    most accurate one; and whether the target was met."""
    meeting = [c for c in candidates if c.clean_acc >= target_clean_acc - 1e-9]
    if meeting:
        return max(
            meeting, key=lambda c: (c.estimated_attacked_acc, c.clean_acc, c.alpha_min, c.alpha_min - c.alpha_max)
        ), True
    return max(candidates, key=lambda c: (c.clean_acc, c.estimated_attacked_acc)), False


def select_head(
    mixed: MixedClassifier,
    x: torch.Tensor,
    y: torch.Tensor,
    target_clean_acc: float,
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
) -> HeadSelection:
    """The head (alpha_min >= ``min_alpha``, width <= ``max_width``, bias on ``BIASES``) that meets ``target_clean_acc``
    on ``(x, y)`` with the most examples right on every pooled attack (``attack_pools``: AutoAttack-lite against two
    pivots), scored from cached logits without running a model; else the most accurate head, with ``met=False``. A head
    stronger than the pivots may fare worse against an attack aimed at it: the verdict tests that."""
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
    heads = head_grid(min_alpha, max_width)
    best, met = pick_head(score_heads(mixed, caches, y, heads), target_clean_acc)
    return HeadSelection(
        best.alpha_min,
        best.alpha_max,
        best.alpha_bias,
        target_clean_acc,
        met,
        best.clean_acc,
        best.estimated_attacked_acc,
        len(x),
        len(heads),
    )
