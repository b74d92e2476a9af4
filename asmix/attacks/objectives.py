"""PGD objectives on a ``MixedClassifier`` whose alpha comes from a mixing network (Section 4.2, 5.2).

One place for the gray-box objective (setting A: alpha detached) and the white-box one (setting B:
gradients through alpha, optionally with a term that pushes alpha down), shared by ``train-mixer``'s
training attacks and range selection and by ``evaluate``'s ``pgd-graybox``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

Objective = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def graybox_objective(mixed: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Setting A: per-example cross-entropy of h_alpha with alpha detached (gradients of g and h only)."""
    std_logits, rob_logits, alpha = mixed.alpha_source.run(x, mixed.std, mixed.rob)
    return F.cross_entropy(mixed.mix(std_logits, rob_logits, alpha.detach()), y, reduction="none")


def whitebox_objective(alpha_down_weight: float = 0.0) -> Objective:
    """Setting B: cross-entropy of h_alpha end to end, plus ``alpha_down_weight`` * BCE(alpha, 1)
    (= -log alpha, computed from the mixer's sigmoid input), which rewards pushing alpha toward g."""

    def objective(mixed: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        mixer = mixed.alpha_source
        std_logits, rob_logits, std_features, rob_features = mixer.features(x, mixed.std, mixed.rob)
        logit = mixer(std_features, rob_features)
        loss = F.cross_entropy(mixed.mix(std_logits, rob_logits, mixer.alpha_from_logit(logit)), y, reduction="none")
        if alpha_down_weight > 0:
            loss = loss + alpha_down_weight * F.binary_cross_entropy_with_logits(
                logit, torch.ones_like(logit), reduction="none")
        return loss

    return objective


def mixed_objective(setting: str, alpha_down_weight: float = 0.0) -> Objective:
    """The objective of ``setting`` "A" (gray-box; the weight is ignored) or "B" (white-box)."""
    return graybox_objective if setting == "A" else whitebox_objective(alpha_down_weight)
