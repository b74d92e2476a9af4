"""Resumable, shardable units of work of the long commands (evaluate, sweep-alpha, margins, certify): each unit is
saved atomically under a fingerprint of what its numbers depend on, and seeded by itself, so resumed and sharded
runs give the numbers of one uninterrupted run."""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from asmix import distributed
from asmix.errors import AsmixError, AsmixWarning
from asmix.io import load_sealed, save_sealed
from asmix.runtime import ProgressFn

RESULTS_VERSION = 2
"""Bumped when an attack's numbers change for the same settings (2: PGD keeps the first misclassified iterate),
so saved parts of an older asmix are recomputed."""

Record = dict[str, torch.Tensor]
"""A unit's numbers: per-example tensors (the unit's examples along the first dimension) and per-unit scalars."""
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
    """Finished units saved atomically in ``folder``, one ``<key>.pt`` each (sealed with the sha256 of its payload:
    ``asmix.io.save_sealed``), for resuming."""

    def __init__(self, folder: str | Path, fingerprint: str) -> None:
        self.folder = Path(folder)
        self.fingerprint = fingerprint

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}.pt"

    def load(self, key: str, rows: int | None = None) -> Record | None:
        """The saved record of unit ``key``; None (recompute it) where there is none or it was saved under another
        fingerprint, and None with one ``AsmixWarning`` where it fails its checks: its checksum, its structure (tensors
        by name), and, given ``rows`` (the unit's examples), each tensor's first dimension. Never merged then."""
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            saved = load_sealed(path)
            if not isinstance(saved, dict) or not isinstance(saved.get("fingerprint"), str):
                raise AsmixError("not an asmix resume part")
            if saved["fingerprint"] != self.fingerprint:
                return None  # another run's (other settings, models or data): not this run's to use
            check_record(saved.get("record"), rows)
        except AsmixError as error:
            warnings.warn(f"resume part {path} is not used: {error}; recomputing it", AsmixWarning, stacklevel=2)
            return None
        return saved["record"]

    def save(self, key: str, record: Record) -> None:
        save_sealed(self._path(key), {"fingerprint": self.fingerprint, "record": record})

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def check_record(record: object, rows: int | None) -> Record:
    """``record`` if it is a ``Record``: tensors by name, each a scalar or, given ``rows``, ``rows`` long along its
    first dimension; else an ``AsmixError`` naming the first that is not."""
    if not isinstance(record, dict) or not record:
        raise AsmixError("its record is not a set of named tensors")
    for name, value in record.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise AsmixError(f"its entry {name!r} is not a tensor")
        if rows is not None and value.ndim > 0 and value.shape[0] != rows:
            raise AsmixError(f"its {name} has {value.shape[0]} rows, the unit has {rows} examples")
    return record


def run_units(
    units: Sequence[Unit],
    compute: Callable[[Unit], Record],
    *,
    key: Callable[[Unit], str],
    parts: Parts | None = None,
    finished: Callable[[Unit, Record], None] | None = None,
    size: Callable[[Unit], int] | None = None,
) -> list[Record]:
    """Every unit's record, in the order of ``units``: this rank computes its contiguous share (or loads it
    from ``parts``; a saved record must have ``size(unit)`` rows, by default ``example_count`` of a slice unit),
    saves each new record at once and calls ``finished(unit, record)``; then all ranks' records are gathered."""
    size = size or (lambda unit: example_count(unit) if isinstance(unit, slice) else None)
    records = []
    for unit in units[distributed.shard_slice(len(units))]:
        record = parts.load(key(unit), size(unit)) if parts else None
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
