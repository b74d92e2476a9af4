"""The JSON form of an experiment config composed of settings blocks (``ThreatModel``, ``MixSettings``...)."""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any

from asmix.attacks.pgd import ThreatModel


def config_dict(config: Any) -> dict[str, Any]:
    """An experiment config as JSON data, one mapping per block (``threat``, ``mix``, ``run``); the threat
    model's step size is the one PGD uses."""
    document = asdict(config)
    for field in fields(config):
        value = getattr(config, field.name)
        if isinstance(value, ThreatModel):
            document[field.name] = value.to_dict()
    return document
