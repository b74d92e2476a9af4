"""Pseudo-labels alpha~ and the composite loss of eq. 4.2 that trains the mixing network."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from asmix.errors import AsmixError


def pseudo_labels(
    std_logits: torch.Tensor, rob_logits: torch.Tensor, y: torch.Tensor, attacked: torch.Tensor, rule: str = "paper"
) -> torch.Tensor:
    """alpha~ in {0, 1}: 1 where h should be trusted, 0 where g should.

    ``paper`` (the authors' code): attacked rows 1, clean rows 0. ``oracle`` (Section 4.4): attacked rows 1
    unless g is right and h wrong; clean rows 0 unless g is wrong and h right. ``rob-right``: 1 where h is right
    on the row's input, clean or attacked, so the logit learns how far h can be trusted there (its robust
    confidence) rather than whether the input was attacked; the head's bias then hands the least trusted
    inputs to g."""
    if rule == "paper":
        return attacked.to(std_logits.dtype)
    if rule == "rob-right":
        return (rob_logits.argmax(1) == y).to(std_logits.dtype)
    if rule != "oracle":
        raise AsmixError(f"unknown pseudo-label rule {rule!r}: use paper, oracle or rob-right")
    std_right = std_logits.argmax(1) == y
    rob_right = rob_logits.argmax(1) == y
    label = torch.where(attacked, ~(std_right & ~rob_right), ~std_right & rob_right)
    return label.to(std_logits.dtype)


def composite_loss(
    mixed_logits: torch.Tensor,
    alpha_logit: torch.Tensor,
    y: torch.Tensor,
    pseudo: torch.Tensor,
    *,
    c_ce: float = 0.0,
    c_bce: float = 1.5,
    c_prod: float = 0.2,
) -> torch.Tensor:
    """Per-example eq. 4.2: c_CE * CE(h_alpha(x'), y) + c_BCE * BCE(alpha(x'), alpha~) + c_prod * CE * BCE.

    ``mixed_logits`` are the log mixed probabilities (eq. 3.4) and ``alpha_logit`` the sigmoid input
    of alpha (BCE computed from it, stably)."""
    ce = F.cross_entropy(mixed_logits, y, reduction="none")
    bce = F.binary_cross_entropy_with_logits(alpha_logit, pseudo, reduction="none")
    return c_ce * ce + c_bce * bce + c_prod * ce * bce
