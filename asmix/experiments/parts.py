"""Resumable, shardable units of work of the long commands (evaluate, sweep-alpha, margins, certify): each unit is
saved atomically under a fingerprint of what its numbers depend on, and seeded by itself, so resumed and sharded
runs give the numbers of one uninterrupted run."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from asmix import distributed
from asmix.io import atomic_write
from asmix.runtime import ProgressFn

RESULTS_VERSION = 2
"""Bumped when an attack's numbers change for the same settings (2: PGD keeps the first misclassified iterate),
so saved parts of an older asmix are recomputed."""

Record = dict[str, torch.Tensor]
Unit = TypeVar("Unit")


def fingerprint(settings: object, *, modules: Iterable[nn.Module] = (), tensors: Iterable[torch.Tensor] = ()) -> str:
    """What a part's numbers depend on: JSON-able settings (config, model names...), every weight and buffer of
    ``modules``, the data ``tensors`` and ``RESULTS_VERSION``. Parts with another fingerprint are never mixed in."""
    digest = hashlib.sha256()
    digest.update(json.dumps([settings, RESULTS_VERSION], sort_keys=True, default=str).encode())
    for tensor in tensors:
        digest.update(_bytes(tensor))
    for module in modules:
        for name, tensor in module.state_dict().items():
            digest.update(name.encode())
            digest.update(_bytes(tensor))
    return digest.hexdigest()


def out_parts(out: str | Path | None, settings: object, **identity) -> "Parts | None":
    """The parts of a run writing to the folder ``out``: ``<out>/parts`` keyed by ``fingerprint(settings,
    **identity)``; None without ``out``."""
    return None if out is None else Parts(Path(out) / "parts", fingerprint(settings, **identity))


def _bytes(tensor: torch.Tensor) -> bytes:
    return tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()


def batch_key(part: slice) -> str:
    """The part name of the examples ``part`` (``batch-000000000-000000008``)."""
    return f"batch-{part.start:09d}-{part.stop:09d}"


class Parts:
    """Finished units saved atomically in ``folder``, one ``<key>.pt`` each, for resuming."""

    def __init__(self, folder: str | Path, fingerprint: str) -> None:
        self.folder = Path(folder)
        self.fingerprint = fingerprint

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}.pt"

    def load(self, key: str) -> Record | None:
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            saved = torch.load(path, weights_only=True)
        except Exception:  # a torn or incompatible part: recompute it
            return None
        return saved["record"] if saved.get("fingerprint") == self.fingerprint else None

    def save(self, key: str, record: Record) -> None:
        payload = {"fingerprint": self.fingerprint, "record": record}
        atomic_write(self._path(key), lambda temporary: torch.save(payload, temporary))

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def run_units(
    units: Sequence[Unit],
    compute: Callable[[Unit], Record],
    *,
    key: Callable[[Unit], str],
    parts: Parts | None = None,
    finished: Callable[[Unit, Record], None] | None = None,
) -> list[Record]:
    """Every unit's record, in the order of ``units``: this rank computes its contiguous share (or loads it
    from ``parts``), saves each new record at once and calls ``finished(unit, record)``; then all ranks'
    records are gathered."""
    records = []
    for unit in units[distributed.shard_slice(len(units))]:
        record = parts.load(key(unit)) if parts else None
        if record is None:
            record = compute(unit)
            if parts:
                parts.save(key(unit), record)
        records.append(record)
        if finished:
            finished(unit, record)
    return [record for rank_records in distributed.gather_objects(records) for record in rank_records]


def example_count(part: slice) -> int:
    return part.stop - part.start


class ShareProgress:
    """Progress over this rank's share of ``units``: after each unit, ``progress(task, done, total)`` with the
    units' ``size`` counted per task (``task`` a name or a function of the unit)."""

    def __init__(
        self,
        units: Sequence[Unit],
        task: str | Callable[[Unit], str],
        progress: ProgressFn | None,
        size: Callable[[Unit], int] = example_count,
    ) -> None:
        self.task = task if callable(task) else (lambda unit: task)
        self.progress, self.size = progress, size
        self.done: dict[str, int] = {}
        self.total: dict[str, int] = {}
        for unit in units[distributed.shard_slice(len(units))]:
            self.total[self.task(unit)] = self.total.get(self.task(unit), 0) + size(unit)

    def __call__(self, unit: Unit, record: Record | None = None) -> None:
        task = self.task(unit)
        self.done[task] = self.done.get(task, 0) + self.size(unit)
        if self.progress:
            self.progress(task, self.done[task], self.total[task])


def finish(parts: Parts | None) -> None:
    """After the merged result is complete: rank 0 removes the parts, and every rank waits for it."""
    if parts and distributed.is_main_process():
        parts.remove()
    distributed.barrier()
