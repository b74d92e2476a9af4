"""Checkpoints of a training run (written atomically every epoch, read with weights_only) and the EMA."""

from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from asmix.checks import check_finite_tensors
from asmix.errors import AsmixError, first_line
from asmix.identity import describe_roles, differing_models
from asmix.io import load_sealed, save_sealed

TRAIN_DIR = "train"
"""The subfolder of a mixer folder that holds its training state (checkpoint, log), apart from what is published."""
CHECKPOINT = "checkpoint.pt"
LOG = "train_log.jsonl"
START_AGAIN = "delete it to train from the start in this --out, or pass another --out"
"""What a user can do instead of ``--resume`` when the checkpoint cannot be used."""


class Ema:
    """Exponential moving average of all float parameters and buffers (App. D.1, decay 0.8)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.model = copy.deepcopy(model).eval()
        self.decay = decay
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        source = model.state_dict()
        for name, value in self.model.state_dict().items():
            if value.is_floating_point():
                value.mul_(self.decay).add_(source[name].detach(), alpha=1 - self.decay)
            else:
                value.copy_(source[name])


def data_fingerprint(x: torch.Tensor, y: torch.Tensor) -> str:
    """sha256 of the training images and labels (stored in mixer.json)."""
    digest = hashlib.sha256()
    digest.update(x.detach().cpu().contiguous().numpy().tobytes())
    digest.update(y.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def checkpoint_path(out_dir: Path) -> Path:
    """Where a run in ``out_dir`` writes its checkpoint: ``out_dir/train/checkpoint.pt``."""
    return out_dir / TRAIN_DIR / CHECKPOINT


def find_checkpoint(out_dir: Path) -> Path | None:
    """The checkpoint of a run in ``out_dir``: ``train/checkpoint.pt``, else where asmix wrote it before the training
    state moved to ``train/`` (``out_dir/checkpoint.pt``); None where there is none."""
    for path in (checkpoint_path(out_dir), out_dir / CHECKPOINT):
        if path.is_file():
            return path
    return None


def adopt_train_dir(out_dir: Path) -> None:
    """Move an older run's checkpoint and log from the top of ``out_dir`` into ``train/``, where this asmix keeps
    them (the top holds only what is published)."""
    for name in (CHECKPOINT, LOG):
        if (out_dir / name).is_file():
            (out_dir / TRAIN_DIR).mkdir(exist_ok=True)
            os.replace(out_dir / name, out_dir / TRAIN_DIR / name)


def save_checkpoint(
    path: Path, identity: dict, epoch: int, mixer: nn.Module, ema: Ema, optimizer, scheduler, history: list
) -> None:
    """The run's state after ``epoch`` epochs, sealed with the sha256 of its payload (``asmix.io.save_sealed``)."""
    state = {
        "identity": json.dumps(identity, sort_keys=True),
        "epoch": epoch,
        "mixer": mixer.state_dict(),
        "ema": ema.model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "history": json.dumps([asdict(record) for record in history]),
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    save_sealed(path, state)


def load_checkpoint(path: Path, identity: dict, mixer: nn.Module, ema: Ema, optimizer, scheduler, record_type):
    """Restore the run saved in ``path`` into ``mixer``, ``ema``, ``optimizer``, ``scheduler`` and the random
    generators; return its epoch and history (``record_type`` per epoch). A checkpoint that is unreadable, edited (its
    checksum), malformed or does not fit this run is one ``AsmixError`` naming the file and ``START_AGAIN``; one
    written with other settings or base-model weights names what differs."""
    try:
        state = load_sealed(path)
        stored, epoch, history = _checked(state, mixer, record_type)
    except AsmixError as error:
        raise AsmixError(f"checkpoint {path} cannot be resumed: {error}; {START_AGAIN}") from error
    current = json.loads(json.dumps(identity, sort_keys=True))
    stored_weights = stored.get("base_weights") if isinstance(stored.get("base_weights"), dict) else {}
    differing = differing_models(stored_weights, current.get("base_weights") or {})
    if differing:
        raise AsmixError(
            f"checkpoint {path} was made with other weights for {describe_roles(differing)}: "
            f"resume with the models it was made with, or {START_AGAIN}"
        )
    if stored != current:
        changed = sorted(_differences(stored, current))
        raise AsmixError(
            f"checkpoint {path} was written with other settings ({', '.join(changed[:6])}): "
            f"rerun with the same options, or {START_AGAIN}"
        )
    try:
        mixer.load_state_dict(state["mixer"])
        ema.model.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng_cpu"])
        if state["rng_cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])
    except Exception as error:  # an optimizer or generator state of another shape: torch raises several kinds
        raise AsmixError(
            f"checkpoint {path} cannot be resumed: it does not fit this run ({first_line(error)}); {START_AGAIN}"
        ) from error
    return epoch, history


CHECKPOINT_KEYS = ("identity", "epoch", "mixer", "ema", "optimizer", "scheduler", "history", "rng_cpu", "rng_cuda")


def _checked(state: Any, mixer: nn.Module, record_type) -> tuple[dict, int, list]:
    """A checkpoint's identity, epoch and history, once its structure is the one ``save_checkpoint`` writes: every
    key, an identity object, an epoch count with one history record (``record_type``'s fields, numbers) per epoch,
    and mixer and EMA weights with ``mixer``'s names and shapes, all finite."""
    if not isinstance(state, dict) or any(key not in state for key in CHECKPOINT_KEYS):
        raise AsmixError(f"it is not a train-mixer checkpoint (keys {', '.join(CHECKPOINT_KEYS)})")
    try:
        stored, history = json.loads(state["identity"]), json.loads(state["history"])
    except (TypeError, ValueError, RecursionError) as error:
        raise AsmixError(f"its identity or history is not JSON ({first_line(error)})") from error
    if not isinstance(stored, dict):
        raise AsmixError(f"its identity is not an object: {type(stored).__name__}")
    epoch = state["epoch"]
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise AsmixError(f"its epoch is not a count: {epoch!r}")
    names = {field.name for field in fields(record_type)}
    number = (int, float, type(None))
    if not (
        isinstance(history, list)
        and len(history) == epoch
        and all(isinstance(record, dict) and set(record) == names for record in history)
        and all(isinstance(v, number) and not isinstance(v, bool) for record in history for v in record.values())
    ):
        raise AsmixError(f"its history is not one {record_type.__name__} of numbers per epoch ({epoch})")
    expected = {name: tuple(value.shape) for name, value in mixer.state_dict().items()}
    for part in ("mixer", "ema"):
        weights = state[part]
        if (
            not isinstance(weights, dict)
            or not all(isinstance(value, torch.Tensor) for value in weights.values())
            or {name: tuple(value.shape) for name, value in weights.items()} != expected
        ):
            raise AsmixError(f"its {part} weights are not those of this run's mixer (names or shapes)")
        check_finite_tensors(weights, f"its {part} weights")
    return stored, epoch, [record_type(**record) for record in history]


def _differences(stored: Any, current: Any, prefix: str = "") -> list[str]:
    if isinstance(stored, dict) and isinstance(current, dict):
        out = []
        for key in sorted(set(stored) | set(current)):
            out += _differences(stored.get(key), current.get(key), f"{prefix}{key}.")
        return out
    return [] if stored == current else [prefix.rstrip(".")]
