"""Attacks: each takes (model, x, y) and returns adversarial x in [0, 1]."""

from asmix.attacks.pgd import PGD, ThreatModel
from asmix.checks import NORMS

__all__ = ["NORMS", "PGD", "ThreatModel"]
