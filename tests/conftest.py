"""Shared test helpers: tiny models built in the tests, run on CPU."""

from __future__ import annotations

import io
import json
import os
import sys
import zipfile
from pathlib import Path

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


class StandInMixer(nn.Module):
    """A stand-in mixing network (an ``AlphaSource``): alpha = sigmoid(``logit(x)``), g and h run once each."""

    def logit(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def features(self, x: torch.Tensor, std: nn.Module, rob: nn.Module):
        return std(x), rob(x), x, x

    def alpha_from_logit(self, logit: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logit)

    def architecture(self) -> dict:
        return {"stand_in": type(self).__name__}

    def run(self, x: torch.Tensor, std: nn.Module, rob: nn.Module):
        from asmix.mixing import MixParts

        logit = self.logit(x)
        return MixParts(std(x), rob(x), self.alpha_from_logit(logit), logit)


class Exploding(nn.Module):
    """Fails if called: proves a model is skipped."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise AssertionError("this model must not run")


class CreatesFile:
    """A pickle payload: unpickling it opens (creates) ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


def booby_trapped_export(tmp_path: Path, marker: Path) -> Path:
    """A real torch.export archive whose bias entry is a pickle that creates ``marker`` when loaded."""
    model = torch.nn.Linear(4, 3)
    torch.export.save(torch.export.export(model, (torch.rand(2, 4),)), tmp_path / "clean.pt2")
    payload = io.BytesIO()
    torch.save(CreatesFile(marker), payload)
    with zipfile.ZipFile(tmp_path / "clean.pt2") as source, zipfile.ZipFile(tmp_path / "evil.pt2", "w") as target:
        config_name = next(name for name in source.namelist() if name.endswith("weights/model_weights_config.json"))
        config = json.loads(source.read(config_name))
        config["config"]["bias"]["use_pickle"] = True
        bias_name = str(Path(config_name).parent / config["config"]["bias"]["path_name"])
        for info in source.infolist():
            data = {config_name: json.dumps(config).encode(), bias_name: payload.getvalue()}.get(info.filename)
            target.writestr(info, source.read(info.filename) if data is None else data)
    return tmp_path / "evil.pt2"


@pytest.fixture(autouse=True)
def _deterministic_single_thread():
    """Seeded, and one intra-op thread: tiny models run far faster so, above all on a shared CPU.
    ``ASMIX_TEST_THREADS`` sets another count (CI reruns the golden tests with 2, another summation order)."""
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    torch.set_num_threads(int(os.environ.get("ASMIX_TEST_THREADS", "1")))
    yield
    torch.set_num_threads(threads)


def kill_after(units: int):
    """A progress callback that interrupts a run (as a kill would) once ``units`` units have finished."""
    calls = []

    def progress(task: str, done: int, total: int) -> None:
        calls.append(task)
        if len(calls) >= units:
            raise KeyboardInterrupt

    return progress


def record_computed_parts(monkeypatch) -> list[str]:
    """The keys of the parts computed (and saved) from now on, in order."""
    from asmix.experiments.parts import Parts

    computed, original = [], Parts.save

    def save(self, key, record):
        computed.append(key)
        original(self, key, record)

    monkeypatch.setattr(Parts, "save", save)
    return computed


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _gloo_process(rank: int, world_size: int, port: int, work, args) -> None:
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        work(rank, *args)
    finally:
        dist.destroy_process_group()


def run_in_gloo_processes(work, *args, nprocs: int = 2) -> None:
    """``work(rank, *args)`` in ``nprocs`` CPU processes joined by gloo, as torchrun starts them; ``work`` is a
    module-level function of a test module."""
    import sys

    import torch.multiprocessing as mp

    sys.path.insert(0, str(Path(__file__).parent))
    mp.spawn(_gloo_process, args=(nprocs, free_port(), work, args), nprocs=nprocs, join=True)


def run_cli(monkeypatch, capsys, *args):
    """``asmix ARGS`` in-process: (exit code, stdout, stderr)."""
    from asmix.cli import main

    monkeypatch.setattr(sys, "argv", ["asmix", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err
