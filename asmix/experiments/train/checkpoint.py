"""Checkpoints of a training run (written atomically every epoch, read with weights_only) and the EMA."""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from asmix.errors import AsmixError, first_line
from asmix.identity import describe_roles, differing_models
from asmix.io import atomic_write

CHECKPOINT = "checkpoint.pt"
LOG = "train_log.jsonl"


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


def save_checkpoint(
    path: Path, identity: dict, epoch: int, mixer: nn.Module, ema: Ema, optimizer, scheduler, history: list
) -> None:
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
    atomic_write(path, lambda temporary: torch.save(state, temporary))


def load_checkpoint(path: Path, identity: dict, mixer: nn.Module, ema: Ema, optimizer, scheduler):
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        stored = json.loads(state["identity"])
    except Exception as error:
        raise AsmixError(f"cannot read checkpoint {path}: {first_line(error)}") from error
    current = json.loads(json.dumps(identity, sort_keys=True))
    differing = differing_models(stored.get("base_weights") or {}, current.get("base_weights") or {})
    if differing:
        raise AsmixError(
            f"checkpoint {path} was made with other weights for {describe_roles(differing)}: "
            f"resume with the models it was made with, or start again without --resume"
        )
    if stored != current:
        changed = sorted(_differences(stored, current))
        raise AsmixError(
            f"checkpoint {path} was written with other settings ({', '.join(changed[:6])}): "
            f"rerun with the same options or without --resume"
        )
    mixer.load_state_dict(state["mixer"])
    ema.model.load_state_dict(state["ema"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng_cpu"])
    if state["rng_cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng_cuda"])
    return int(state["epoch"]), json.loads(state["history"])


def _differences(stored: Any, current: Any, prefix: str = "") -> list[str]:
    if isinstance(stored, dict) and isinstance(current, dict):
        out = []
        for key in sorted(set(stored) | set(current)):
            out += _differences(stored.get(key), current.get(key), f"{prefix}{key}.")
        return out
    return [] if stored == current else [prefix.rstrip(".")]
