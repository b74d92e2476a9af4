"""Attack objectives on a ``MixedClassifier`` (Section 4.2, 5.2): gray-box (setting A, alpha detached), white-box
(B), and the alpha term every adaptive attack blends in, BCE(alpha logit, 1), which rewards pushing alpha toward g."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from asmix.attacks.pgd import Objective
from asmix.mixing import MixParts


def alpha_down_term(parts: MixParts) -> torch.Tensor | float:
    """BCE(alpha logit, 1) = softplus(-logit) per example, grows as alpha falls toward g; 0 for a fixed alpha."""
    if parts.alpha_logit is None:
        return 0.0
    return F.softplus(-parts.alpha_logit)


def blend(base: torch.Tensor, parts: MixParts, weight: float | torch.Tensor) -> torch.Tensor:
    """(1 - w) * base + w * BCE(alpha logit, 1) per example (the paper's attack loss); exactly ``base``
    where alpha is fixed or ``weight`` is 0, so a non-adaptive attack is left untouched."""
    if parts.alpha_logit is None or (not isinstance(weight, torch.Tensor) and weight == 0):
        return base
    return (1 - weight) * base + weight * alpha_down_term(parts)


def graybox_objective(mixed: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Setting A: per-example cross-entropy of h_alpha with alpha detached (gradients of g and h only)."""
    parts = mixed.parts(x)
    logits = mixed.mix(parts.std_logits, parts.rob_logits, parts.alpha.detach())
    return F.cross_entropy(logits, y, reduction="none"), logits


def whitebox_objective(alpha_weight: float | torch.Tensor = 0.0) -> Objective:
    """Setting B: cross-entropy of h_alpha end to end, blended with ``alpha_weight`` of the alpha term."""

    def objective(mixed: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        parts = mixed.parts(x)
        logits = mixed.mix_parts(parts)
        return blend(F.cross_entropy(logits, y, reduction="none"), parts, alpha_weight), logits

    return objective


def mixed_objective(setting: str, alpha_weight: float | torch.Tensor = 0.0) -> Objective:
    """The objective of ``setting`` "A" (gray-box; the weight is ignored) or "B" (white-box)."""
    return graybox_objective if setting == "A" else whitebox_objective(alpha_weight)
