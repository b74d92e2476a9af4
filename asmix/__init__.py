"""asmix: adaptive smoothing of an accurate classifier g and a robust classifier h (Bai et al.).

The names below load on first use, so ``import asmix`` imports no experiment, no attack package and changes
nothing in ``sys.modules`` beyond asmix itself. The certify experiment is ``asmix.experiments.certify.certify``;
the certified-radius formulas are ``asmix.radii``.
"""

from __future__ import annotations

import importlib
from typing import Any

from asmix.errors import AsmixError

_EXPORTS = {
    "MixedClassifier": "asmix.mixing",
    "mix_logits": "asmix.mixing",
    "load_model": "asmix.models",
    "load_data": "asmix.data",
    "PGD": "asmix.attacks.pgd",
    "ThreatModel": "asmix.attacks.pgd",
    "MixSettings": "asmix.mixing",
    "RunSettings": "asmix.runtime",
    "MixingNetwork": "asmix.mixer",
    "load_mixer": "asmix.mixer",
    "save_mixer": "asmix.mixer",
    "SweepConfig": "asmix.experiments.sweep",
    "SweepResult": "asmix.experiments.sweep",
    "sweep_alpha": "asmix.experiments.sweep",
    "TrainConfig": "asmix.experiments.train",
    "TrainResult": "asmix.experiments.train",
    "judge": "asmix.experiments.train",
    "select_head": "asmix.experiments.train",
    "train_mixer": "asmix.experiments.train",
    "EvalConfig": "asmix.experiments.evaluate",
    "EvalResult": "asmix.experiments.evaluate",
    "evaluate": "asmix.experiments.evaluate",
    "DetectorProfile": "asmix.experiments.detector",
    "detector_profile": "asmix.experiments.detector",
    "MarginsConfig": "asmix.experiments.margins",
    "MarginsResult": "asmix.experiments.margins",
    "margins": "asmix.experiments.margins",
    "CertifyConfig": "asmix.experiments.certify",
    "CertifyResult": "asmix.experiments.certify",
}

__all__ = ["AsmixError", *sorted(_EXPORTS)]
__version__ = "0.2.0"


def __getattr__(name: str) -> Any:
    """Import the module that defines ``name`` when it is first asked for (PEP 562)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'asmix' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
