"""Attacks: each takes (model, x, y) and returns adversarial x in [0, 1]."""

from asmix.attacks.pgd import NORMS, PGD

__all__ = ["NORMS", "PGD"]
