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
class _Cached:
    """Base logits and the mixer's bias-free score at one set of inputs."""

    std_logits: torch.Tensor
    rob_logits: torch.Tensor
    score: torch.Tensor


@torch.no_grad()
def _cache(mixed: MixedClassifier, x: torch.Tensor, batch_size: int, device: torch.device) -> _Cached:
    mixer = mixed.alpha_source
    parts = []
    for batch in batch_slices(len(x), batch_size):
        std_logits, rob_logits, std_features, rob_features = mixer.features(x[batch].to(device), mixed.std, mixed.rob)
        parts.append((std_logits, rob_logits, mixer(std_features, rob_features)))
    return _Cached(*(torch.cat(column) for column in zip(*parts)))


def _pool(
    mixed: MixedClassifier,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str,
    batch_size: int,
    seed: int,
    device: torch.device,
    budget: AttackBudget,
    progress: ProgressFn | None,
    task: str,
) -> torch.Tensor:
    """AutoAttack-lite's examples against ``mixed`` (the clean input where it failed)."""
    points = []
    for batch in batch_slices(len(x), batch_size):
        run = autoattack_lite(
            mixed,
            x[batch].to(device),
            y[batch].to(device),
            eps=eps,
            norm=norm,
            budget=budget,
            seed=batch_generator(seed, "select", task, batch.start).initial_seed() % (2**31),
        )
        points.append(run.x_adv.detach().cpu())
        if progress:
            progress(f"choose head: {task}", batch.stop, len(x))
    return torch.cat(points)


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
    """The head (alpha_min >= ``min_alpha``, width <= ``max_width``, bias on ``BIASES``) that meets
    ``target_clean_acc`` on ``(x, y)`` with the most examples right on every pooled attack.

    The pool holds AutoAttack-lite's examples against two pivots: the mixer with the weakest head of the
    grid, (min_alpha, min_alpha + max_width) and bias 0, and the fixed alpha ``min_alpha``. Every candidate
    is scored from cached logits and mixer scores at those inputs, so the search runs no model; a head
    stronger than the pivots may fare worse against an attack aimed at it, which the verdict measures on
    examples this choice did not see. If no head meets the target, the most accurate one is returned with
    ``met=False``."""
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
        pools = [
            x,
            _pool(mixed, x, y, task="mixer", **settings),
            _pool(mixed.with_alpha(min_alpha), x, y, task=f"fixed alpha {min_alpha:g}", **settings),
        ]
    finally:
        mixer.set_alpha_range(previous[0], previous[1])
        mixer.set_alpha_bias(previous[2])
    cached = [_cache(mixed, points, batch_size, device) for points in pools]
    y = y.to(device)

    def correct(cache: _Cached, low: float, high: float, bias: float) -> torch.Tensor:
        alpha = low + (high - low) * torch.sigmoid(cache.score + bias)
        return mixed.mix(cache.std_logits, cache.rob_logits, alpha).argmax(1) == y

    candidates = []
    lows = [round(min_alpha + 0.01 * i, 6) for i in range(int(round((1 - min_alpha) / 0.01)) + 1)]
    for width in (w for w in WIDTHS if w <= max_width + 1e-9):
        for bias in BIASES if width > 0 else (0.0,):
            for low in lows:
                high = round(low + width, 6)
                if high > 1 + 1e-9:
                    break
                clean = correct(cached[0], low, high, bias)
                robust = clean.clone()
                for cache in cached[1:]:
                    robust &= correct(cache, low, high, bias)
                candidates.append((clean.float().mean().item(), robust.float().mean().item(), low, high, bias))
    meeting = [c for c in candidates if c[0] >= target_clean_acc - 1e-9]
    if meeting:
        clean_acc, robust_acc, low, high, bias = max(meeting, key=lambda c: (c[1], c[0], c[2], -(c[3] - c[2])))
    else:
        clean_acc, robust_acc, low, high, bias = max(candidates, key=lambda c: (c[0], c[1]))
    return HeadSelection(
        low, high, bias, target_clean_acc, bool(meeting), clean_acc, robust_acc, len(x), len(candidates)
    )
