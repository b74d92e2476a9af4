"""The embedded demo pair: small MNIST CNNs shipped as safetensors. ``demo-std`` is trained on clean data,
``demo-rob`` adversarially (PGD, l_inf eps 0.4; evaluated at 0.3); ``examples/train_demo_models.py`` rebuilds both."""

from __future__ import annotations

from importlib import resources

import torch
from torch import nn

from asmix.errors import AsmixError

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081

DEMO_WIDTHS = {"demo-std": 16, "demo-rob": 8}


class DemoCNN(nn.Module):
    """A four-stage CNN for 1x28x28 inputs in [0, 1]; stages are named for the mixer's feature taps.

    ``stem`` and ``layer1`` give the upstream features (width x 14 x 14), ``layer2`` the middle ones
    (2 width x 7 x 7), ``head`` the logits.
    """

    def __init__(self, width: int = 32, num_classes: int = 10) -> None:
        super().__init__()
        self.width = width
        self.register_buffer("mean", torch.tensor(MNIST_MEAN), persistent=False)
        self.register_buffer("std", torch.tensor(MNIST_STD), persistent=False)
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU())
        self.layer1 = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.layer2 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(2 * width * 7 * 7, 256), nn.ReLU(), nn.Linear(256, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        return self.head(self.layer2(self.layer1(self.stem(x))))


def demo_weights_file(name: str) -> str:
    """Path of the shipped safetensors file of demo model ``name`` (``demo-std`` or ``demo-rob``)."""
    return str(resources.files("asmix") / "assets" / f"{name.replace('-', '_')}.safetensors")


def build_demo_model(name: str, *, pretrained: bool = True) -> DemoCNN:
    """The demo architecture for ``name``, with the shipped weights unless ``pretrained`` is False."""
    from safetensors.torch import load_file

    model = DemoCNN(width=DEMO_WIDTHS[name])
    if pretrained:
        path = demo_weights_file(name)
        try:
            model.load_state_dict(load_file(path))
        except FileNotFoundError as error:
            raise AsmixError(f"the shipped weights of {name} are missing ({path}): reinstall asmix") from error
    return model.eval()
