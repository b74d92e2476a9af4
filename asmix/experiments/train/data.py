"""Which examples train the mixer, which are held out for choices, and which are left for evaluation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch

from asmix.checks import check_choice
from asmix.errors import AsmixError

ValSplit = Literal["test", "train"]
"""Where the held-out examples come from: the end of the test split (default) or of the train split."""
VAL_SPLITS: tuple[ValSplit, ...] = get_args(ValSplit)


@dataclass(frozen=True)
class TrainData:
    """Disjoint training, held-out (validation, alpha-range choice) and evaluation examples."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_train_data(source, n_train: int | None, n_val: int, val_split: ValSplit = "test") -> TrainData:
    """Training examples from the start of the train split; held-out examples from the END of
    ``val_split`` (``test`` by default: base models have usually been fit to their train split, so
    their accuracy there says little); evaluation examples are the rest of the test split.

    With a data file (``--data``) all three come from it: train first, held-out last, evaluation between."""
    from asmix.data import load_data

    check_choice(val_split, ValSplit, "val split")
    if n_val <= 0:
        raise AsmixError(f"n-val must be positive, got {n_val}")
    if n_train is not None and n_train <= 0:
        raise AsmixError(f"n-train must be positive, got {n_train}")
    options = dict(data_path=source.data, data_dir=source.data_dir)
    x, y = load_data(source.dataset, split="train", **options)
    if source.data is not None or val_split == "train":
        n_train = len(x) - n_val if n_train is None else n_train
        if n_train + n_val > len(x):
            raise AsmixError(f"{len(x)} examples cannot hold n-train {n_train} + n-val {n_val}")
        if source.data is not None:
            return _checked(
                source,
                TrainData(
                    x[:n_train],
                    y[:n_train],
                    x[len(x) - n_val :],
                    y[len(y) - n_val :],
                    x[n_train : len(x) - n_val],
                    y[n_train : len(y) - n_val],
                ),
            )
        x_test, y_test = load_data(source.dataset, split="test", **options)
        return _checked(
            source, TrainData(x[:n_train], y[:n_train], x[len(x) - n_val :], y[len(y) - n_val :], x_test, y_test)
        )
    x_test, y_test = load_data(source.dataset, split="test", **options)
    if n_val >= len(x_test):
        raise AsmixError(f"the test split has {len(x_test)} examples: n-val {n_val} leaves none for evaluation")
    n_train = len(x) if n_train is None else min(n_train, len(x))
    split = len(x_test) - n_val
    return _checked(
        source, TrainData(x[:n_train], y[:n_train], x_test[split:], y_test[split:], x_test[:split], y_test[:split])
    )


def _checked(source, data: TrainData) -> TrainData:
    """Every label of every part within the dataset's classes (before any training)."""
    from asmix.data import check_labels, dataset_info

    if source.data is None:
        classes = dataset_info(source.dataset).num_classes
        for name in ("train", "val", "test"):
            check_labels(getattr(data, f"y_{name}"), classes, source=f"{source.dataset} {name} examples")
    return data
