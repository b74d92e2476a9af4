"""Input adapters: every model takes images in [0, 1] and carries its own preprocessing and normalisation."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from asmix.preprocessing import Preprocessing


class InputAdapter(nn.Module):
    """Preprocess (``Preprocessing``: resize, center crop), normalise with the per-channel ``pixel_mean`` and
    ``pixel_std``, run ``model``. (``std`` means g everywhere else in asmix, so pixel statistics say ``pixel_``.)

    Used for timm, BiT and RobustBench ImageNet models. The wrapped network stays reachable as
    ``wrapped`` and its input as ``prepare(x)``, so feature taps can read it in the same forward pass.
    """

    def __init__(
        self,
        model: nn.Module,
        pixel_mean: Sequence[float] | None = None,
        pixel_std: Sequence[float] | None = None,
        preprocessing: Preprocessing | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.preprocessing = preprocessing
        self.normalize = pixel_mean is not None and pixel_std is not None
        if self.normalize:
            self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(1, -1, 1, 1), persistent=False)
            self.register_buffer("pixel_std", torch.tensor(pixel_std).view(1, -1, 1, 1), persistent=False)

    @property
    def wrapped(self) -> nn.Module:
        """The network this adapter feeds (feature taps name its layers)."""
        return self.model

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """What the wrapped network receives for images ``x`` in the common input space; images already
        at the preprocessing's output size count as preprocessed (a data file of 224x224 crops)."""
        if self.preprocessing is not None and tuple(x.shape[-2:]) != self.preprocessing.output_size:
            x = self.preprocessing(x)
        if self.normalize:
            x = (x - self.pixel_mean) / self.pixel_std
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.prepare(x))
