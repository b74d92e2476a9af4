"""Reading state dicts safely: safetensors, or ``torch.load(weights_only=True)``; never arbitrary pickles."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from asmix.checks import check_finite_tensors
from asmix.errors import AsmixError, first_line

_NESTED_KEYS = ("state_dict", "model_state_dict", "model", "net")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a weights file, every one finite (the first bad one named); unwraps ``{"state_dict": ...}`` and
    strips DataParallel's ``module.``."""
    path = Path(path)
    if not path.is_file():
        raise AsmixError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupt or unsafe files surface as many exception types
        raise AsmixError(f"cannot read weights {path}: {first_line(error)}") from error
    for key in _NESTED_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise AsmixError(f"{path} does not hold a state dict of tensors")
    check_finite_tensors(state, f"weights {path}")
    return {key.removeprefix("module."): value for key, value in state.items()}


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a weights file into ``model`` strictly, with a readable error on a mismatch."""
    state = read_state_dict(path)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shape mismatches raise even when strict is False
        raise AsmixError(f"weights {path} do not fit the model: {first_line(error)}") from error
    if result.missing_keys or result.unexpected_keys:
        raise AsmixError(
            f"weights {path} do not fit the model: missing {_few(result.missing_keys)}, "
            f"unexpected {_few(result.unexpected_keys)}"
        )
    return model


def _few(keys: list[str], n: int = 3) -> str:
    if not keys:
        return "none"
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more
