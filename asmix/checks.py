"""Checks of user-given numbers, and the text forms they arrive in (``8/255``, ``Linf``)."""

from __future__ import annotations

import math

from asmix.errors import AsmixError

NORMS = ("linf", "l2")
"""Threat models, in asmix's spelling."""

THREAT_MODEL_NAMES = {"linf": "Linf", "l2": "L2"}
"""The same threat models as RobustBench and the AutoAttack package spell them."""


def threat_model_name(norm: str) -> str:
    """``linf`` -> ``Linf``, ``l2`` -> ``L2`` (RobustBench's and AutoAttack's spelling), any case accepted."""
    return THREAT_MODEL_NAMES[check_norm(norm)]


def check_finite(value: float, name: str) -> float:
    """``value`` as a float, refused when NaN or infinite (a radius, step, scale or sigma)."""
    value = float(value)
    if not math.isfinite(value):
        raise AsmixError(f"{name} must be a finite number, got {value}")
    return value


def parse_number(text: str, name: str = "value") -> float:
    """``0.5``, ``8/255`` or ``1e-3`` as a float (a fraction is how radii are usually written)."""
    text = str(text).strip()
    numerator, slash, denominator = text.partition("/")
    try:
        return float(numerator) / float(denominator) if slash else float(text)
    except (ValueError, ZeroDivisionError) as error:
        raise AsmixError(f"{name} must be a number or a fraction like 8/255, got {text!r}") from error


def canonical_norm(text: str) -> str:
    """A norm name in asmix's spelling: ``Linf``/``L2`` (RobustBench's) and any other case are lower-cased."""
    return str(text).strip().lower()


def check_norm(text: str) -> str:
    """``text`` as one of ``NORMS``, in any case."""
    norm = canonical_norm(text)
    if norm not in NORMS:
        raise AsmixError(f"norm must be one of {', '.join(NORMS)}, got {text!r}")
    return norm
