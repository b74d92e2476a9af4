"""Device resolution, per-batch seeding and batched inference: shared by every experiment."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import torch
from torch import nn

from asmix.errors import AsmixError

ProgressFn = Callable[[str, int, int], None]
"""Progress callback: (task description, completed units, total units). A display may also have a
``stage(StageEvent)`` method, which receives where a long attack is inside a unit (``stage_reporter``)."""


@dataclass(frozen=True)
class StageEvent:
    """Where an attack is inside one batch, from what it already computed: ``stage`` (``apgd-t``...) has finished
    ``step`` of its ``total`` steps (restarts or target classes, ``unit``) and ``robust`` of the batch's ``examples``
    are still classified correctly; ``task`` names the work (set by the experiment)."""

    stage: str
    step: int
    total: int
    robust: int
    examples: int
    unit: str = "step"
    task: str = ""

    def line(self) -> str:
        """``task: stage 2/9 targets, 120/256 robust``."""
        units = "queries" if self.unit == "query" else f"{self.unit}s"
        steps = "done" if self.step >= self.total else f"{self.step}/{self.total} {units}"
        head = f"{self.task}: " if self.task else ""
        return f"{head}{self.stage} {steps}, {self.robust}/{self.examples} robust"


StageFn = Callable[[StageEvent], None]
"""Callback for ``StageEvent``s; attacks take one as ``on_stage`` (default ``no_stage``)."""


def no_stage(event: StageEvent) -> None:
    """The default ``StageFn``: attacks report to it and nothing happens."""


def stage_reporter(progress: ProgressFn | None, task: str) -> StageFn:
    """``progress.stage`` with ``task`` filled in where the display has one (asmix's CLI displays do); else
    ``no_stage``, so a plain progress function sees only finished units."""
    stage = getattr(progress, "stage", None)
    if stage is None:
        return no_stage
    return lambda event: stage(replace(event, task=task))


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` → the first CUDA device if there is one, else CPU; ``cuda[:N]`` must exist. The device is
    recorded in the run's provenance."""
    from asmix.provenance import record_device

    device = _resolve(name)
    record_device(device)
    return device


def _resolve(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise AsmixError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from error
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise AsmixError(f"device {name!r} is not available: no CUDA GPU found")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise AsmixError(f"device {name!r} is not available: {torch.cuda.device_count()} GPU(s) found")
    elif device.type != "cpu":
        raise AsmixError(f"unsupported device {name!r}: use auto, cpu, cuda or cuda:N")
    return device


def check_batch_size(batch_size: int) -> int:
    if batch_size <= 0:
        raise AsmixError(f"batch size must be positive, got {batch_size}")
    return batch_size


@dataclass(frozen=True)
class RunSettings:
    """How an experiment runs: examples per batch, and the seed that keys every batch's generator
    (``batch_generator``, so a batch's numbers do not depend on the batches before it)."""

    batch_size: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        check_batch_size(self.batch_size)


def top_class_correct(scores: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per example, whether the top class of ``scores`` (logits or probabilities, (N, C)) is the label."""
    return scores.argmax(dim=1) == y


def fraction(flags: torch.Tensor) -> float:
    """The share of true ``flags`` (an accuracy from per-example correctness), in float32 as every result."""
    return flags.float().mean().item()


def accuracy(scores: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy of ``scores`` (logits or probabilities) against the labels ``y``."""
    return fraction(top_class_correct(scores, y))


def batch_slices(n: int, batch_size: int) -> Iterator[slice]:
    """Consecutive slices covering ``range(n)``."""
    check_batch_size(batch_size)
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def batch_generator(seed: int, *keys: object) -> torch.Generator:
    """A CPU generator seeded from ``seed`` and ``keys`` (task name, batch start...): results of a
    batch do not depend on which batches ran before it, so runs can resume and shard."""
    digest = hashlib.sha256(repr((seed, *keys)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    x: torch.Tensor,
    *,
    batch_size: int,
    device: torch.device,
    progress: ProgressFn | None = None,
    task: str = "predict",
) -> torch.Tensor:
    """Logits of ``model`` on all of ``x``, computed in batches on ``device``, returned on CPU."""
    outputs = []
    for part in batch_slices(len(x), batch_size):
        outputs.append(model(x[part].to(device)).float().cpu())
        if progress:
            progress(task, part.stop, len(x))
    return torch.cat(outputs) if outputs else torch.empty(0)
