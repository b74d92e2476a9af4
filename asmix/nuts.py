"""The MixedNUTS nonlinear map of h's logits (Bai, Zhou, Patel, Sojoudi, arXiv 2402.02263, Section 4).

    M(z) = s * sign(u) * |u|^p,   u = GELU(LN(z) + c),   LN(z) = (z - mean_k(z)) / sqrt(var_k(z) + 1e-8)

mean_k and var_k (unbiased) are taken over each row's top ``ln_k`` logits (all of them when there are
at most ``ln_k`` classes) and applied to every logit, as in the authors' ``LNClampPowerScaleMap``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from asmix.errors import AsmixError

DEFAULT_LN_K = 250
_LOGIT_BOUND = 1e15
_LN_EPS = 1e-8
SCALE_MAX, POWER_MAX, CLAMP_BIAS_MAX = 1e3, 16.0, 100.0
"""Bounds on (s, p, |c|), wide around the authors' grid (s 0.05 to 5, p 1 to 4, c -1.1 to 0): within them the map of
a thousand layer-normed logits stays finite in float32, beyond them it overflows and the mix reports chance."""


@dataclass(frozen=True)
class NutsMap:
    """MixedNUTS's map of h's logits with scale s > 0, power p >= 1 and clamp bias c (eq. above), each bounded
    (``SCALE_MAX``, ``POWER_MAX``, ``CLAMP_BIAS_MAX``).

    Where asmix differs from the authors' code: p is kept >= 1 (below 1, |u|^p has an infinite slope
    at u = 0 and attacks would get infinite gradients); the map runs in float64 like theirs but returns
    the input's dtype and device (theirs moves CPU/MPS tensors around); it has no ``alpha_diffable``
    surrogate: attacks differentiate the mixed model exactly as it predicts.
    """

    scale: float
    power: float
    clamp_bias: float
    ln_k: int = DEFAULT_LN_K

    def __post_init__(self) -> None:
        for name in ("scale", "power", "clamp_bias"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise AsmixError(f"nuts {name.replace('_', ' ')} must be a finite number, got {value!r}")
            object.__setattr__(self, name, float(value))
        if not 0 < self.scale <= SCALE_MAX:
            raise AsmixError(f"nuts scale must be in (0, {SCALE_MAX:g}], got {self.scale:g}")
        if not 1 <= self.power <= POWER_MAX:
            raise AsmixError(f"nuts power must be in [1, {POWER_MAX:g}], got {self.power:g}")
        if abs(self.clamp_bias) > CLAMP_BIAS_MAX:
            raise AsmixError(
                f"nuts clamp bias must be in [-{CLAMP_BIAS_MAX:g}, {CLAMP_BIAS_MAX:g}], got {self.clamp_bias:g}"
            )
        if isinstance(self.ln_k, bool) or not isinstance(self.ln_k, int) or self.ln_k < 2:
            raise AsmixError(f"nuts ln_k must be an integer >= 2, got {self.ln_k!r}")

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """Mapped logits, same shape, dtype and device as ``logits`` (N, C), C >= 2."""
        if logits.shape[1] < 2:
            raise AsmixError("the nuts map needs at least 2 classes")
        return self.from_normed(layer_norm(logits, self.ln_k)).to(logits.dtype)

    def from_normed(self, normed: torch.Tensor) -> torch.Tensor:
        """The map after the layer norm (``layer_norm``), which does not depend on s, p or c."""
        clamped = F.gelu(normed + self.clamp_bias)
        return self.scale * clamped.abs().pow(self.power) * clamped.sign()

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "NutsMap":
        if not isinstance(data, dict):
            raise AsmixError(f"a nuts map must be an object with scale, power, clamp_bias, got {data!r}")
        missing = {"scale", "power", "clamp_bias"} - set(data)
        if missing:
            raise AsmixError(f"nuts map lacks {', '.join(sorted(missing))}")
        return cls(data["scale"], data["power"], data["clamp_bias"], data.get("ln_k", DEFAULT_LN_K))

    @property
    def spec(self) -> str:
        """The ``--rob-map`` text that rebuilds this map."""
        tail = "" if self.ln_k == DEFAULT_LN_K else f",{self.ln_k}"
        return f"nuts:{self.scale:g},{self.power:g},{self.clamp_bias:g}{tail}"


def layer_norm(logits: torch.Tensor, ln_k: int = DEFAULT_LN_K) -> torch.Tensor:
    """Each row minus the mean of its top ``ln_k`` logits, over their unbiased std (+1e-8), in float64."""
    z = logits.double().clamp(-_LOGIT_BOUND, _LOGIT_BOUND)
    top = z if ln_k >= z.shape[1] else z.topk(ln_k, dim=1).values
    return (z - top.mean(dim=1, keepdim=True)) / (top.var(dim=1, keepdim=True) + _LN_EPS).sqrt()


def parse_rob_map(text: str | None) -> NutsMap | None:
    """``nuts:S,P,C`` (or ``nuts:S,P,C,K`` with the layer-norm top-k) → ``NutsMap``; ``none``/None → None."""
    if text is None or text.strip().lower() in ("", "none"):
        return None
    kind, _, args = text.strip().partition(":")
    if kind.lower() != "nuts" or not args:
        raise AsmixError(f"cannot read rob map {text!r}: use nuts:S,P,C (scale, power, clamp bias), e.g. nuts:2,3,-0.5")
    parts = [part.strip() for part in args.split(",")]
    if len(parts) not in (3, 4):
        raise AsmixError(f"rob map {text!r} needs 3 numbers S,P,C (and optionally the top-k K)")
    try:
        scale, power, bias = (float(part) for part in parts[:3])
        ln_k = int(parts[3]) if len(parts) == 4 else DEFAULT_LN_K
    except ValueError as error:
        raise AsmixError(f"cannot read rob map {text!r}: S,P,C must be numbers and K an integer") from error
    return NutsMap(scale, power, bias, ln_k)
