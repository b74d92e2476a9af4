"""Input adapters: every model takes images in [0, 1] and carries its own resize and normalisation."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class InputAdapter(nn.Module):
    """Resize (bilinear) to ``input_size`` if given, normalise with ``mean``/``std``, run ``model``.

    Used for timm and BiT models, which expect normalised inputs (BiT-M at 128x128 for CIFAR).
    The wrapped network stays reachable as ``.model`` so feature taps can name its layers.
    """

    def __init__(
        self,
        model: nn.Module,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        input_size: int | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.input_size = input_size
        self.normalize = mean is not None and std is not None
        if self.normalize:
            self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_size is not None and tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        if self.normalize:
            x = (x - self.mean) / self.std
        return self.model(x)
