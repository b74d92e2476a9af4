"""BiT-M (the paper's g): timm's ResNetV2 architecture, weights from a local file or from the
STD part of RobustBench's ``Bai2023Improving_edm`` checkpoint (Google's BiT layout, converted here)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from asmix.errors import AsmixError
from asmix.models.cache import find_checkpoint, tried_paths
from asmix.models.weights import read_state_dict

BIT_MEAN = (0.5, 0.5, 0.5)
BIT_STD = (0.5, 0.5, 0.5)
# The reference runs BiT on CIFAR images upsampled to 128x128 (Bai et al., App. D.1).
BIT_INPUT_SIZE = {"cifar10": 128, "cifar100": 128}
# RobustBench stores the mixed model of the paper as three files ``<name>.pt_m<i>.pt``; ``m0`` is the BiT STD model.
BAI2023_STD_FILE = "Bai2023Improving_edm.pt_m0.pt"
BAI2023_STD_FILE_OLD = "Bai2023Improving_edm_m0.pt"
"""The name asmix looked for before it followed RobustBench's; still accepted."""

_UNIT = re.compile(r"^body\.block(\d+)\.unit(\d+)\.(.+)$")
_UNIT_PARTS = {
    "gn1": "norm1",
    "gn2": "norm2",
    "gn3": "norm3",
    "conv1": "conv1",
    "conv2": "conv2",
    "conv3": "conv3",
    "downsample": "downsample.conv",
}
_FIXED = {
    "root.conv.weight": "stem.conv.weight",
    "head.gn.weight": "norm.weight",
    "head.gn.bias": "norm.bias",
    "head.conv.weight": "head.fc.weight",
    "head.conv.bias": "head.fc.bias",
}


def bit_to_timm_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename Google-BiT keys (``body.block1.unit01.gn1.weight``) to timm ResNetV2 keys
    (``stages.0.blocks.0.norm1.weight``); a state dict already in timm's layout passes unchanged."""
    if not any(key.startswith("body.") for key in state):
        return dict(state)
    converted = {}
    for key, value in state.items():
        if key in _FIXED:
            converted[_FIXED[key]] = value
            continue
        match = _UNIT.match(key)
        part = match.group(3).partition(".")[0] if match else None
        if part not in _UNIT_PARTS:
            raise AsmixError(f"unexpected key in a BiT checkpoint: {key}")
        block, unit, rest = match.groups()
        part, _, leaf = rest.partition(".")
        converted[f"stages.{int(block) - 1}.blocks.{int(unit) - 1}.{_UNIT_PARTS[part]}.{leaf}"] = value
    return converted


def bit_weights_path(explicit: str | Path | None, model_dirs: tuple[Path, ...], dataset: str) -> Path:
    """The weights file to use: ``explicit`` if given, else RobustBench's Bai2023 STD file in the first
    model folder that holds it (under either name)."""
    if explicit is not None:
        return Path(explicit)
    found, tried = find_checkpoint(model_dirs, dataset, "Linf", [[BAI2023_STD_FILE], [BAI2023_STD_FILE_OLD]])
    if found is None:
        raise AsmixError(
            f"BiT weights not found (tried {tried_paths(tried)}): put {BAI2023_STD_FILE} (the STD part of "
            f"RobustBench's Bai2023Improving_edm) in {tried[0].parent}, or pass a fine-tuned state dict with "
            f"--std-weights"
        )
    return found[0]


def load_bit_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a BiT weights file in either layout, as a timm state dict."""
    return bit_to_timm_state_dict(read_state_dict(path))
