"""Shared test helpers: tiny models built in the tests, run on CPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn


class FixedLogits(nn.Module):
    """A 'model' returning given logits whatever the input (one row per example)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("logits", logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[: len(x)] + 0 * x.flatten(1).sum(1, keepdim=True)


class LinearImageModel(nn.Module):
    """Flatten then linear: a small differentiable classifier for images."""

    def __init__(self, in_features: int, num_classes: int = 10, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.linear = nn.Linear(in_features, num_classes)
        with torch.no_grad():
            self.linear.weight.copy_(torch.randn(num_classes, in_features, generator=generator) * 0.1)
            self.linear.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


class Exploding(nn.Module):
    """Fails if called: proves a model is skipped."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise AssertionError("this model must not run")


@pytest.fixture(autouse=True)
def _deterministic_single_thread():
    """Seeded, and one intra-op thread: tiny models run far faster so, above all on a shared CPU."""
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
