"""Per-model image preprocessing (resize, then center crop) as data: one record builds the torchvision transform the
ImageNet loader runs and the differentiable tensor operation a model's adapter runs, so attacks pass through it."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
import torch.nn.functional as F

from asmix.errors import AsmixError

Interpolation = Literal["bilinear", "bicubic"]
INTERPOLATIONS: tuple[str, ...] = ("bilinear", "bicubic")
TIMM_CROP_MODES: tuple[str, ...] = ("center", "squash")
"""timm's crop modes asmix reproduces (``border`` pads with the mean colour, which it does not)."""


@dataclass(frozen=True)
class Preprocessing:
    """Resize (``resize``: the short side as an int, or an exact (height, width)), then center-crop to
    ``crop`` (height, width); either may be None. ``source`` says where the record came from."""

    resize: int | tuple[int, int] | None = None
    crop: tuple[int, int] | None = None
    interpolation: Interpolation = "bilinear"
    source: str = ""

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise AsmixError(
                f"preprocessing interpolation must be one of {', '.join(INTERPOLATIONS)}, got {self.interpolation!r}"
            )
        if isinstance(self.resize, (list, tuple)):
            object.__setattr__(self, "resize", _pair(self.resize, "resize"))
        if self.crop is not None:
            object.__setattr__(self, "crop", _pair(self.crop, "crop"))

    def describe(self) -> str:
        """One phrase, e.g. ``resize short side to 256 (bicubic), center-crop 224x224 [RobustBench ...]``."""
        steps = []
        if isinstance(self.resize, int):
            steps.append(f"resize short side to {self.resize} ({self.interpolation})")
        elif self.resize is not None:
            steps.append(f"resize to {self.resize[0]}x{self.resize[1]} ({self.interpolation})")
        if self.crop is not None:
            steps.append(f"center-crop {self.crop[0]}x{self.crop[1]}")
        text = ", ".join(steps) or "none"
        return f"{text} [{self.source}]" if self.source else text

    @property
    def output_size(self) -> tuple[int, int] | None:
        """(height, width) of every output, or None where it depends on the input (short side only)."""
        if self.crop is not None:
            return self.crop
        return self.resize if isinstance(self.resize, tuple) else None

    def input_space(self) -> "Preprocessing":
        """The common input space this pipeline induces: a short-side resize keeps its square center
        (the crop then runs in the adapter, at the same offsets); other pipelines run whole."""
        if isinstance(self.resize, int):
            return replace(self, crop=(self.resize, self.resize))
        return self

    def same_space(self, other: "Preprocessing") -> bool:
        """True if both pipelines induce the same common input space (``source`` aside)."""
        mine, theirs = self.input_space(), other.input_space()
        return (mine.resize, mine.crop, mine.interpolation) == (theirs.resize, theirs.crop, theirs.interpolation)

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """The size after the resize step, computed as torchvision's ``Resize`` does."""
        if self.resize is None:
            return height, width
        if isinstance(self.resize, tuple):
            return self.resize
        short, long = min(height, width), max(height, width)
        if short == self.resize:
            return height, width
        new_long = int(self.resize * long / short)
        return (self.resize, new_long) if height <= width else (new_long, self.resize)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Apply to images (N, C, H, W) in [0, 1]: antialiased resize (as torchvision's on tensors;
        bicubic output clamped to [0, 1] as PIL's uint8 output is), then center crop (zero padding where
        the crop is larger, as torchvision's). A step whose output size equals its input is skipped."""
        height, width = x.shape[-2:]
        size = self.resized_size(height, width)
        if size != (height, width):
            x = F.interpolate(x, size=size, mode=self.interpolation, align_corners=False, antialias=True)
            if self.interpolation == "bicubic":
                x = x.clamp(0.0, 1.0)
        return center_crop(x, self.crop) if self.crop is not None else x

    def to_torchvision(self) -> Any:
        """The torchvision transform (PIL image -> tensor in [0, 1]) the dataset loader runs."""
        from torchvision import transforms

        steps: list[Any] = []
        if self.resize is not None:
            size = self.resize if isinstance(self.resize, int) else list(self.resize)
            steps.append(transforms.Resize(size, interpolation=transforms.InterpolationMode(self.interpolation)))
        if self.crop is not None:
            steps.append(transforms.CenterCrop(list(self.crop)))
        return transforms.Compose([*steps, transforms.ToTensor()])


def center_crop(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """torchvision's center crop on tensors: offsets ``int(round((H - h) / 2))``, zero padding first
    where the crop is larger than the image."""
    height, width = x.shape[-2:]
    crop_h, crop_w = size
    if crop_h > height or crop_w > width:
        pad_left, pad_top = max(crop_w - width, 0) // 2, max(crop_h - height, 0) // 2
        pad_right, pad_bottom = max(crop_w - width + 1, 0) // 2, max(crop_h - height + 1, 0) // 2
        x = F.pad(x, (pad_left, pad_right, pad_top, pad_bottom))
        height, width = x.shape[-2:]
    top, left = int(round((height - crop_h) / 2.0)), int(round((width - crop_w) / 2.0))
    return x[..., top : top + crop_h, left : left + crop_w]


def from_torchvision(transform: Any, *, source: str = "") -> Preprocessing:
    """Read a torchvision ``Compose`` of ``Resize``/``CenterCrop``/``ToTensor`` (RobustBench's
    ``PREPROCESSINGS`` entries) into a ``Preprocessing``; anything else is refused."""
    from torchvision import transforms

    resize, crop, interpolation = None, None, "bilinear"
    for step in getattr(transform, "transforms", [transform]):
        if isinstance(step, transforms.Resize):
            if step.max_size is not None or resize is not None or crop is not None:
                raise AsmixError(f"unsupported resize in preprocessing {source or transform}")
            size = step.size
            resize = size if isinstance(size, int) else (size[0] if len(size) == 1 else tuple(size))
            interpolation = step.interpolation.value
        elif isinstance(step, transforms.CenterCrop):
            crop = tuple(step.size)
        elif not isinstance(step, (transforms.ToTensor, transforms.PILToTensor)):
            raise AsmixError(f"unsupported step {type(step).__name__} in preprocessing {source or transform}")
    return Preprocessing(resize=resize, crop=crop, interpolation=interpolation, source=source)


def from_timm_config(config: Any, *, source: str = "timm data config") -> Preprocessing:
    """timm's evaluation pipeline from a data config (``timm.data.resolve_data_config``: ``input_size``,
    ``interpolation``, ``crop_pct``, ``crop_mode``): crop mode ``center`` resizes the short side to
    floor(size / crop_pct), ``squash`` resizes both sides to floor(side / crop_pct); then center-crop size."""
    get = config.get if isinstance(config, dict) else lambda key, default=None: getattr(config, key, default)
    _, height, width = get("input_size", (3, 224, 224))
    crop_pct = get("crop_pct", None) or 0.875
    interpolation = get("interpolation", None) or "bicubic"
    if interpolation not in INTERPOLATIONS:
        raise AsmixError(f"{source}: interpolation {interpolation!r} is not supported (only bilinear, bicubic)")
    crop_mode = get("crop_mode", None) or "center"
    if crop_mode not in TIMM_CROP_MODES:
        raise AsmixError(f"{source}: crop mode {crop_mode!r} is not supported (only {', '.join(TIMM_CROP_MODES)})")
    scaled = (math.floor(height / crop_pct), math.floor(width / crop_pct))
    scale = scaled[0] if crop_mode == "center" and height == width else scaled
    return Preprocessing(resize=scale, crop=(height, width), interpolation=interpolation, source=source)


def _pair(value: Any, what: str) -> tuple[int, int]:
    values = tuple(int(v) for v in value)
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) <= 0:
        raise AsmixError(f"preprocessing {what} must be one or two positive sizes, got {value!r}")
    return values
