"""Identity of a model's weights: a sha256 over its state dict, so a mixer, a training checkpoint or a resumed
evaluation can refuse base models other than the ones it was made with (a name says less than the weights)."""

from __future__ import annotations

import hashlib

import torch
from torch import nn

ROLES = {"std": "g (--std)", "rob": "h (--rob)"}


def weights_digest(model: nn.Module) -> str:
    """sha256 (hex) of every state-dict entry's name, dtype, shape and bytes, in order. The same weights give
    the same digest on any device; a changed value, shape or name changes it."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def base_weights(std: nn.Module, rob: nn.Module) -> dict[str, str]:
    """``{"std": digest of g, "rob": digest of h}``: what mixer.json and training checkpoints store."""
    return {"std": weights_digest(std), "rob": weights_digest(rob)}


def differing_models(stored: dict[str, str], current: dict[str, str]) -> list[str]:
    """The roles ("std", "rob") whose stored digest differs from the current one (missing counts as differing)."""
    return [role for role in ROLES if stored.get(role) != current.get(role)]


def describe_roles(roles: list[str]) -> str:
    """``["rob"]`` -> ``"h (--rob)"``; two roles joined with "and"."""
    return " and ".join(ROLES[role] for role in roles)
