"""Model loading: one resolver over spec kinds, plus the checks that a (g, h) pair fits the data."""

from __future__ import annotations

import torch
from torch import nn

from asmix.errors import AsmixError, first_line
from asmix.models.registry import (
    ALIASES,
    ModelSpec,
    architecture_name,
    canonical_spec,
    default_model_dir,
    hub_model_id,
    load_model,
    model_preprocessing,
    parse_spec,
    preprocessing_note,
)

__all__ = [
    "ALIASES",
    "ModelSpec",
    "architecture_name",
    "canonical_spec",
    "check_model_fits",
    "default_model_dir",
    "hub_model_id",
    "load_model",
    "model_preprocessing",
    "parse_spec",
    "preprocessing_note",
]


def check_model_fits(model: nn.Module, x_probe: torch.Tensor, num_classes: int, *, role: str) -> None:
    """Run one example through ``model`` and fail clearly if it rejects the input shape or
    returns the wrong number of classes or non-finite logits: caught before any long job starts."""
    try:
        with torch.no_grad():
            logits = model(x_probe[:1])
    except Exception as error:
        raise AsmixError(
            f"{role} model does not accept inputs of shape {tuple(x_probe.shape[1:])}: {first_line(error)}"
        ) from error
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        raise AsmixError(
            f"{role} model must return logits of shape (N, classes), got {getattr(logits, 'shape', type(logits))}"
        )
    if logits.shape[1] != num_classes:
        raise AsmixError(f"{role} model returns {logits.shape[1]} classes, the data has {num_classes}")
    if not torch.isfinite(logits).all():
        raise AsmixError(f"{role} model returns NaN or infinite logits on one input: check its weights")
