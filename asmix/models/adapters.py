"""Input adapters: every model takes images in [0, 1] and carries its own preprocessing and normalisation."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from asmix.preprocessing import Preprocessing


class InputAdapter(nn.Module):
    """Preprocess (``Preprocessing``: resize, center crop), normalise with ``mean``/``std``, run ``model``.

    Used for timm, BiT and RobustBench ImageNet models. The wrapped network stays reachable as
    ``wrapped`` and its input as ``prepare(x)``, so feature taps can read it in the same forward pass.
    """

    def __init__(
        self,
        model: nn.Module,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        preprocessing: Preprocessing | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.preprocessing = preprocessing
        self.normalize = mean is not None and std is not None
        if self.normalize:
            self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

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
            x = (x - self.mean) / self.std
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.prepare(x))
