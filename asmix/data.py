"""Evaluation and training data as tensors: images in [0, 1] (N, C, H, W) float32, labels int64."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from asmix.checks import check_norm
from asmix.errors import AsmixError, RunFailed, first_line
from asmix.preprocessing import Preprocessing, from_torchvision


@dataclass(frozen=True)
class DatasetInfo:
    """What asmix needs to know about a named dataset; ``standard_eps`` maps each threat model that has
    a standard radius (RobustBench's leaderboards; AutoAttack's for MNIST) to that radius."""

    num_classes: int
    standard_eps: Mapping[str, float]
    default_norm: str = "linf"
    default_n_examples: int | None = None  # None: all examples


DATASETS = {
    "demo": DatasetInfo(10, {"linf": 0.3}, default_n_examples=500),  # keeps no-argument runs to minutes on a CPU
    "mnist": DatasetInfo(10, {"linf": 0.3}),
    "cifar10": DatasetInfo(10, {"linf": 8 / 255, "l2": 0.5}),
    "cifar100": DatasetInfo(100, {"linf": 8 / 255}),
    "imagenet": DatasetInfo(1000, {"linf": 4 / 255}),
}

DEMO_DATA_FILE = "mnist_demo.npz"


def dataset_info(name: str) -> DatasetInfo:
    """Facts about dataset ``name``, with a clear error for an unknown name."""
    if name not in DATASETS:
        raise AsmixError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


def standard_eps(dataset: str, norm: str) -> float:
    """The standard attack radius of ``dataset`` under ``norm``; where there is none, the user must say."""
    info, norm = dataset_info(dataset), check_norm(norm)
    if norm not in info.standard_eps:
        raise AsmixError(
            f"{dataset} has no standard {norm} radius (none on RobustBench's or AutoAttack's leaderboards): give --eps"
        )
    return info.standard_eps[norm]


def load_data(
    dataset: str = "demo",
    *,
    data_path: str | Path | None = None,
    data_dir: str | Path = "./data",
    n_examples: int | None = None,
    split: str = "test",
    preprocessing: Preprocessing | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n_examples`` of a named dataset's split, or of the arrays in ``data_path``; asking
    for more examples than there are is an error, not a silent cut.

    ImageNet images come in the common input space of ``preprocessing`` (``Preprocessing.input_space``:
    h's, so that h sees exactly its leaderboard input); without it, RobustBench's default
    ``Res256Crop224``. Other datasets ignore it (their images share one size)."""
    check_n_examples(n_examples)
    if split not in ("train", "test"):
        raise AsmixError(f"split must be 'train' or 'test', got {split!r}")
    if data_path is not None:
        x, y = load_array_file(data_path)
        where = str(data_path)
    else:
        dataset_info(dataset)
        x, y = _NAMED_LOADERS[dataset](Path(data_dir), split, n_examples, preprocessing)
        where = f"the {dataset} {split} split"
    if n_examples is not None and n_examples > len(x):
        raise AsmixError(f"n-examples {n_examples} is more than the {len(x)} examples in {where}")
    return x[:n_examples], y[:n_examples]


def check_n_examples(n_examples: int | None) -> int | None:
    """A requested number of examples: positive, or ``None`` for all (or a command's default)."""
    if n_examples is not None and n_examples <= 0:
        raise AsmixError(f"n-examples must be positive, got {n_examples}")
    return n_examples


def load_array_file(path: str | Path, x_key: str = "x", y_key: str = "y") -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels from an ``.npz`` or ``.pt`` file with arrays ``x`` and ``y``.

    ``x`` may be (N, C, H, W), (N, H, W) or (N, H, W, C), uint8 in 0..255 or float in [0, 1].
    """
    path = Path(path)
    if not path.is_file():
        raise AsmixError(f"data file not found: {path}")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as arrays:
                x, y = arrays[x_key], arrays[y_key]
        elif path.suffix == ".pt":
            arrays = torch.load(path, map_location="cpu", weights_only=True)
            x, y = arrays[x_key], arrays[y_key]
        else:
            raise AsmixError(f"data file must be .npz or .pt, got {path.name}")
    except KeyError as error:
        raise AsmixError(f"data file {path} must contain arrays {x_key!r} and {y_key!r}") from error
    except AsmixError:
        raise
    except Exception as error:
        raise AsmixError(f"cannot read data file {path}: {first_line(error)}") from error
    return to_image_tensor(x, source=str(path)), to_label_tensor(y, len(x), source=str(path))


def to_image_tensor(x: np.ndarray | torch.Tensor, *, source: str = "data") -> torch.Tensor:
    """Images as float32 (N, C, H, W) in [0, 1], from uint8 or float and any usual layout."""
    x = _numeric(x, "images", source)
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    elif x.is_floating_point():
        x = x.float()
        check_finite_pixels(x, source=source)
        if x.numel() and (x.min() < 0 or x.max() > 1):
            raise AsmixError(f"{source}: float images must lie in [0, 1]")
    else:
        raise AsmixError(f"{source}: images must be uint8 or float, got {x.dtype}")
    if x.ndim == 3:
        x = x.unsqueeze(1)
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.permute(0, 3, 1, 2)
    if x.ndim != 4:
        raise AsmixError(f"{source}: images must have 3 or 4 dimensions, got shape {tuple(x.shape)}")
    return x.contiguous()


def check_finite_pixels(x: torch.Tensor, *, source: str = "data") -> None:
    """Refuse NaN or infinite pixels (they would pass the [0, 1] check or poison every attack)."""
    bad = ~torch.isfinite(x)
    if bad.any():
        first = int(bad.reshape(len(x), -1).any(dim=1).nonzero()[0]) if x.ndim > 1 else int(bad.nonzero()[0])
        raise AsmixError(f"{source}: {int(bad.sum())} pixels are NaN or infinite, the first in example {first}")


def check_labels(y: torch.Tensor, num_classes: int, *, source: str = "data") -> torch.Tensor:
    """Refuse labels outside [0, num_classes): they would crash cross-entropy or count as wrong silently."""
    bad = (y < 0) | (y >= num_classes)
    if bad.any():
        first = int(bad.nonzero()[0])
        raise AsmixError(
            f"{source}: label {int(y[first])} at index {first} is outside [0, {num_classes}) "
            f"({int(bad.sum())} such labels; the models have {num_classes} classes)"
        )
    return y


def to_label_tensor(y: np.ndarray | torch.Tensor, n: int, *, source: str = "data") -> torch.Tensor:
    """Labels as int64 of length ``n``."""
    y = _numeric(y, "labels", source)
    if y.ndim != 1 or len(y) != n or y.is_floating_point():
        raise AsmixError(f"{source}: labels must be {n} integers, got shape {tuple(y.shape)} {y.dtype}")
    return y.long()


def _numeric(values: object, what: str, source: str) -> torch.Tensor:
    """``values`` (an array, a tensor) as a tensor; strings, bytes and objects are refused, not a traceback."""
    if isinstance(values, torch.Tensor):
        return values
    array = np.asarray(values)
    if array.dtype.kind not in "biuf":
        raise AsmixError(f"{source}: {what} must be numbers, got an array of {array.dtype}")
    return torch.as_tensor(array)


def demo_data_file() -> Path:
    """The MNIST subset shipped in the package (first 2,000 test and 10,000 train images)."""
    return Path(str(resources.files("asmix") / "assets" / DEMO_DATA_FILE))


def _load_demo(data_dir: Path, split: str, n_examples: int | None, preprocessing: Preprocessing | None):
    return load_array_file(demo_data_file(), f"x_{split}", f"y_{split}")


def _load_mnist(data_dir: Path, split: str, n_examples: int | None, preprocessing: Preprocessing | None):
    from torchvision.datasets import MNIST

    try:
        data = MNIST(str(data_dir), train=split == "train", download=True)
    except Exception as error:
        raise RunFailed(
            f"MNIST not found in {data_dir / 'MNIST'} and the download failed; put the raw files there"
        ) from error
    return to_image_tensor(data.data), data.targets.long()


def _load_cifar(name: str):
    def load(data_dir: Path, split: str, n_examples: int | None, preprocessing: Preprocessing | None):
        from torchvision import datasets

        dataset_class = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
        try:
            data = dataset_class(str(data_dir), train=split == "train", download=True)
        except Exception as error:
            folder = "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python"
            raise RunFailed(
                f"{name} not found in {data_dir / folder} and the download failed; put the extracted dataset there"
            ) from error
        return to_image_tensor(data.data[:n_examples]), torch.as_tensor(data.targets[:n_examples]).long()

    return load


IMAGENET_VAL_EXAMPLES = 5000
IMAGENET_VAL_LAYOUT = "val/<wnid>/ILSVRC2012_val_<id>.JPEG (RobustBench's 5,000-image list)"


def imagenet_default_preprocessing() -> Preprocessing:
    """RobustBench's default ImageNet pipeline (``Res256Crop224``), read from its own table."""
    from asmix.compat import import_robustbench

    import_robustbench()
    from robustbench.data import PREPROCESSINGS

    return from_torchvision(PREPROCESSINGS["Res256Crop224"], source="RobustBench Res256Crop224")


def _load_imagenet(data_dir: Path, split: str, n_examples: int | None, preprocessing: Preprocessing | None):
    from asmix.compat import import_robustbench

    import_robustbench()
    from robustbench.data import load_imagenet

    if split != "test":
        raise AsmixError("only the ImageNet validation split (split 'test') is supported")
    if n_examples is not None and n_examples > IMAGENET_VAL_EXAMPLES:
        raise AsmixError(
            f"n-examples {n_examples} is more than the {IMAGENET_VAL_EXAMPLES} ImageNet validation "
            f"images RobustBench evaluates on"
        )
    space = preprocessing.input_space() if preprocessing is not None else imagenet_default_preprocessing()
    folder = data_dir / "val"
    try:
        x, y = load_imagenet(
            n_examples=n_examples or IMAGENET_VAL_EXAMPLES,
            data_dir=str(data_dir),
            transforms_test=space.to_torchvision(),
        )
    except Exception as error:
        raise AsmixError(
            f"cannot read ImageNet validation images under {folder}: put the ILSVRC2012 validation set "
            f"there as {IMAGENET_VAL_LAYOUT}, or pass --data-dir ({first_line(error)})"
        ) from error
    return to_image_tensor(x, source=str(folder)), to_label_tensor(y, len(x), source=str(folder))


_NAMED_LOADERS = {
    "demo": _load_demo,
    "mnist": _load_mnist,
    "cifar10": _load_cifar("cifar10"),
    "cifar100": _load_cifar("cifar100"),
    "imagenet": _load_imagenet,
}
