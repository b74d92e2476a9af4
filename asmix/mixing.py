"""The mixed classifier of eq. 3.4: logits = log((1 - alpha) * softmax(g(x)) + alpha * softmax(h(x)))."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from asmix.checks import check_choice, check_finite
from asmix.errors import AsmixError
from asmix.nuts import NutsMap

MixSpace = Literal["prob", "logit"]
"""prob: eq. 3.4, the mix of probabilities; logit: the logit-space ablation of Figure 1."""

# Where alpha is a tensor, log(1 - alpha) and log(alpha) are floored here so that alpha = 0 or 1
# still has a finite gradient (0 * inf would be NaN); exp(-69) is far below float32 resolution of 1.
_LOG_FLOOR = 1e-30


@dataclass(frozen=True)
class MixParts:
    """What one forward pass of h_alpha computes before mixing: g's and h's logits (None where a fixed
    alpha of 1 or 0 skips the model), alpha per example (N,) or a float, and, for a mixing network,
    its pre-range logit (N,) (the sigmoid input; attacks push it down, Section 4.2 setting D)."""

    std_logits: torch.Tensor | None
    rob_logits: torch.Tensor | None
    alpha: torch.Tensor | float
    alpha_logit: torch.Tensor | None = None


@runtime_checkable
class AlphaSource(Protocol):
    """A per-input source of alpha (the mixing network, Section 4) for ``MixedClassifier``: ``run`` does the one forward
    pass of each base model and returns ``MixParts`` with alpha (N,) in [0, 1] and its pre-range logit (what attacks
    read); ``features`` is that forward pass alone, ``alpha_from_logit`` the evaluation head, and ``architecture``
    identifies the source and its head (saved with it; part of a resumable run's fingerprint)."""

    def run(self, x: torch.Tensor, std: nn.Module, rob: nn.Module) -> MixParts: ...

    def features(self, x: torch.Tensor, std: nn.Module, rob: nn.Module) -> tuple: ...

    def alpha_from_logit(self, logit: torch.Tensor) -> torch.Tensor: ...

    def architecture(self) -> dict: ...


def freeze(model: nn.Module) -> nn.Module:
    """Put a base model in eval mode with no gradient to its weights (gradients still reach x)."""
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


TEMPERATURE_RANGE = (1e-3, 1e3)
"""g's temperature, where not 0 (hard-max): outside this range logits / T overflow or vanish."""


def check_temperature(value: object) -> float:
    """g's temperature: 0 (hard-max, App. A.2) or a number in ``TEMPERATURE_RANGE``."""
    low, high = TEMPERATURE_RANGE
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value == 0 or low <= value <= high):
        raise AsmixError(f"std temperature must be 0 (hard-max) or in [{low:g}, {high:g}], got {value!r}")
    return float(value)


def check_alpha(alpha: float) -> float:
    """Validate a fixed mixing weight."""
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0 or math.isnan(alpha):
        raise AsmixError(f"alpha must be in [0, 1], got {alpha}")
    return alpha


@dataclass(frozen=True)
class MixSettings:
    """How h_alpha mixes g's and h's logits (eq. 3.4): the space, the logit scales (App. D.1), g's temperature
    (0: hard-max, App. A.2) and MixedNUTS's map of h's logits; checked on construction."""

    mix_space: MixSpace = "prob"
    std_scale: float = 1.0
    rob_scale: float = 1.0
    std_temperature: float = 1.0
    rob_map: NutsMap | None = None

    def __post_init__(self) -> None:
        check_finite(self.std_scale, "std scale")
        check_finite(self.rob_scale, "rob scale")
        check_choice(self.mix_space, MixSpace, "mix space")
        check_temperature(self.std_temperature)
        if self.rob_map is not None and (self.mix_space != "prob" or float(self.rob_scale) != 1.0):
            raise AsmixError("the nuts rob map needs mix space prob and rob scale 1 (its layer norm cancels a scale)")

    def classifier(self, std: nn.Module, rob: nn.Module, alpha: "float | torch.Tensor | AlphaSource" = 0.5):
        """h_alpha of ``std`` (g) and ``rob`` (h) mixed with these settings."""
        return MixedClassifier(std, rob, alpha, **vars(self))


HEAD_KEYS = ("alpha_min", "alpha_max", "alpha_bias", "std_scale", "rob_scale")
"""The evaluation head's fields, as mixer.json's ``head`` block and calibration files name them."""


@dataclass(frozen=True)
class EvaluationHead:
    """A mixing network's evaluation head, the authors' whole one (App. D.1, their code): alpha = alpha_min +
    (alpha_max - alpha_min) * sigmoid(score + alpha_bias), with g's and h's logits multiplied by ``std_scale`` and
    ``rob_scale`` before the mix (their CIFAR-10 model: (0.96, 1.0), g 1.2, h 0.3). Training uses (0, 1), bias 0.
    Width 0 (alpha_min == alpha_max) is a fixed alpha with these scales: a "tempered" fixed alpha."""

    alpha_min: float = 0.0
    alpha_max: float = 1.0
    alpha_bias: float = 0.0
    std_scale: float = 1.0
    rob_scale: float = 1.0

    def __post_init__(self) -> None:
        for name in HEAD_KEYS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise AsmixError(f"head {name} must be a finite number, got {value!r}")
        if not 0.0 <= self.alpha_min <= self.alpha_max <= 1.0:
            raise AsmixError(
                f"head alpha range must satisfy 0 <= alpha_min <= alpha_max <= 1, got ({self.alpha_min}, "
                f"{self.alpha_max})"
            )
        if not (0 < self.std_scale <= 1e3 and 0 < self.rob_scale <= 1e3):
            raise AsmixError(f"head logit scales must be in (0, 1000], got {self.std_scale}, {self.rob_scale}")
        if abs(self.alpha_bias) > 100:  # the sigmoid saturates long before
            raise AsmixError(f"head alpha_bias must be within +-100, got {self.alpha_bias}")

    @property
    def alpha_range(self) -> tuple[float, float]:
        return self.alpha_min, self.alpha_max

    @property
    def is_training_head(self) -> bool:
        """Range (0, 1) and bias 0: the head the network was trained with, never a chosen one."""
        return (self.alpha_min, self.alpha_max, self.alpha_bias) == (0.0, 1.0, 0.0)

    @property
    def is_fixed(self) -> bool:
        """Width 0: the same alpha for every input."""
        return self.alpha_min == self.alpha_max

    def to_dict(self) -> dict[str, float]:
        return {name: float(getattr(self, name)) for name in HEAD_KEYS}

    @classmethod
    def from_dict(cls, data: object, defaults: "EvaluationHead | None" = None) -> "EvaluationHead":
        """A head from its ``to_dict`` form; a missing key takes ``defaults``' value (older files have no scales:
        1), an unknown key is refused."""
        if not isinstance(data, dict):
            raise AsmixError(f"head must be an object of {', '.join(HEAD_KEYS)}, got {data!r}")
        unknown = sorted(set(data) - set(HEAD_KEYS))
        if unknown:
            raise AsmixError(f"head has unknown keys {', '.join(map(str, unknown))} (known: {', '.join(HEAD_KEYS)})")
        base = (defaults or cls()).to_dict()
        return cls(**(base | data))


def std_log_probs(std_logits: torch.Tensor, *, scale: float = 1.0, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(scale * g / temperature); temperature 0 is the hard-max of g (App. A.2).

    The hard-max puts log 1 = 0 on g's top class and -inf elsewhere.
    """
    if temperature == 0:
        top = std_logits.argmax(dim=1, keepdim=True)
        log_probs = torch.full_like(std_logits, float("-inf"))
        return log_probs.scatter(1, top, 0.0)
    return F.log_softmax(std_logits * (scale / temperature), dim=1)


def mix_logits(
    std_logits: torch.Tensor | None,
    rob_logits: torch.Tensor | None,
    alpha: float | torch.Tensor,
    *,
    mix_space: MixSpace = "prob",
    std_scale: float = 1.0,
    rob_scale: float = 1.0,
    std_temperature: float = 1.0,
    rob_map: NutsMap | None = None,
) -> torch.Tensor:
    """Mix base logits into the output of h_alpha (eq. 3.4), stably. ``prob``: logsumexp of log(1-alpha) +
    log_softmax(g) and log(alpha) + log_softmax(h), the log of the mixed probabilities, exact at alpha 0 and 1 (where
    the unused logits may be None); ``logit``: (1-alpha) * g + alpha * h, the ablation of Figure 1. ``alpha`` is a float
    or a per-example tensor, (N,) or (N, 1). ``rob_map`` (MixedNUTS, ``asmix.nuts``) replaces ``rob_scale * h`` before
    the softmax."""
    rob_input = (lambda logits: rob_map(logits)) if rob_map is not None else (lambda logits: logits * rob_scale)
    if rob_map is not None and mix_space != "prob":
        raise AsmixError("the nuts rob map mixes probabilities: use mix space prob")
    if isinstance(alpha, torch.Tensor):
        alpha = alpha.reshape(-1, 1)
    if mix_space == "logit":
        return _mix_in_logit_space(std_logits, rob_logits, alpha, std_scale, rob_scale)
    check_choice(mix_space, MixSpace, "mix space")
    if not isinstance(alpha, torch.Tensor):
        if alpha == 0.0:
            return std_log_probs(std_logits, scale=std_scale, temperature=std_temperature)
        if alpha == 1.0:
            return F.log_softmax(rob_input(rob_logits), dim=1)
        log_std_weight, log_rob_weight = math.log1p(-alpha), math.log(alpha)
    else:
        log_std_weight = torch.log((1 - alpha).clamp_min(_LOG_FLOOR))
        log_rob_weight = torch.log(alpha.clamp_min(_LOG_FLOOR))
    std_part = log_std_weight + std_log_probs(std_logits, scale=std_scale, temperature=std_temperature)
    rob_part = log_rob_weight + F.log_softmax(rob_input(rob_logits), dim=1)
    return torch.logsumexp(torch.stack((std_part, rob_part)), dim=0)


def mix_probabilities(std_probs: torch.Tensor, rob_probs: torch.Tensor, alpha: float) -> torch.Tensor:
    """Eq. 3.4 on probabilities already computed: (1 - alpha) * g's + alpha * h's (``mix_logits`` is its log,
    from logits); for a randomized-smoothing h, whose output is a probability vector, not logits."""
    return (1 - alpha) * std_probs + alpha * rob_probs


def alpha_grid(start: float = 0.0, stop: float = 1.0, step: float = 0.05) -> tuple[float, ...]:
    """start, start + step, ..., stop (included), each rounded to 10 decimals so that 0.3 is 0.3."""
    if not step > 0:
        raise AsmixError(f"alpha range step must be positive, got {step}")
    count = int(round((stop - start) / step)) + 1
    return tuple(round(start + index * step, 10) for index in range(max(count, 0)))


def _mix_in_logit_space(std_logits, rob_logits, alpha, std_scale, rob_scale) -> torch.Tensor:
    if not isinstance(alpha, torch.Tensor) and alpha in (0.0, 1.0):
        return std_logits * std_scale if alpha == 0.0 else rob_logits * rob_scale
    return (1 - alpha) * std_logits * std_scale + alpha * rob_logits * rob_scale


class MixedClassifier(nn.Module):
    """h_alpha from eq. 3.4 as a drop-in ``nn.Module`` returning logits.

    ``std`` is g (accurate), ``rob`` is h (robust), both frozen in eval mode. ``alpha``: a float in [0, 1] (at 0 or 1
    only g or h runs), a per-example tensor, or an ``AlphaSource`` module (the mixing network, ``alpha_source``). The
    other keywords make its ``settings`` (``MixSettings``): g's hard-max at ``std_temperature=0`` (App. A.2), logit
    scales (App. D.1), MixedNUTS's ``rob_map`` (replaces ``rob_scale``; prob space only)."""

    def __init__(
        self,
        std: nn.Module,
        rob: nn.Module,
        alpha: float | torch.Tensor | AlphaSource = 0.5,
        *,
        mix_space: MixSpace = "prob",
        std_scale: float = 1.0,
        rob_scale: float = 1.0,
        std_temperature: float = 1.0,
        rob_map: NutsMap | None = None,
    ) -> None:
        super().__init__()
        self.settings = MixSettings(mix_space, float(std_scale), float(rob_scale), float(std_temperature), rob_map)
        self.std = freeze(std)
        self.rob = freeze(rob)
        self.alpha_source: nn.Module | None = None
        if isinstance(alpha, AlphaSource) and isinstance(alpha, nn.Module):
            self.alpha_source = alpha
            self._alpha = None
        else:
            self._alpha = alpha if isinstance(alpha, torch.Tensor) else check_alpha(alpha)

    def train(self, mode: bool = True) -> "MixedClassifier":
        """Base models stay in eval mode whatever the mode of the mix."""
        super().train(mode)
        self.std.eval()
        self.rob.eval()
        return self

    @property
    def adaptive(self) -> bool:
        return self.alpha_source is not None

    @property
    def alpha(self) -> float | torch.Tensor | None:
        """The fixed alpha (None with an ``alpha_source``); read-only: ``with_alpha`` builds another mix."""
        return self._alpha

    def with_alpha(self, alpha: "float | torch.Tensor | AlphaSource") -> "MixedClassifier":
        """The same g and h (shared, not copied) and settings, mixed with another ``alpha``."""
        return self.settings.classifier(self.std, self.rob, alpha)

    def parts(self, x: torch.Tensor) -> MixParts:
        """One forward of each base model that ``alpha`` needs, and alpha itself (see ``MixParts``)."""
        if self.alpha_source is not None:
            return self.alpha_source.run(x, self.std, self.rob)
        alpha = self.alpha
        return MixParts(
            None if _is_fixed(alpha, 1.0) else self.std(x), None if _is_fixed(alpha, 0.0) else self.rob(x), alpha
        )

    def forward(self, x: torch.Tensor, return_alpha: bool = False):
        """Logits of h_alpha; with ``return_alpha`` also the alpha used per example, shape (N,)."""
        parts = self.parts(x)
        logits = self.mix_parts(parts)
        if not return_alpha:
            return logits
        return logits, alpha_per_example(parts.alpha, len(x), logits)

    def base_logits(self, x: torch.Tensor, known: str, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """g's and h's logits at ``x`` when one of them is already computed (``known``: "std" or "rob", with its
        ``logits``): one forward of the other model only."""
        return (logits, self.rob(x)) if known == "std" else (self.std(x), logits)

    def mix_parts(self, parts: MixParts) -> torch.Tensor:
        """h_alpha's logits from ``parts`` (no forward pass)."""
        return self.mix(parts.std_logits, parts.rob_logits, parts.alpha)

    def mix(self, std_logits, rob_logits, alpha) -> torch.Tensor:
        """Mix precomputed base logits with this classifier's settings (no forward pass)."""
        return mix_logits(std_logits, rob_logits, alpha, **vars(self.settings))


def alpha_per_example(alpha: float | torch.Tensor, n: int, like: torch.Tensor) -> torch.Tensor:
    """``alpha`` as a tensor of shape (N,) on ``like``'s device and dtype."""
    if isinstance(alpha, torch.Tensor):
        return alpha.reshape(-1)
    return torch.full((n,), alpha, device=like.device, dtype=like.dtype)


def _is_fixed(alpha: float | torch.Tensor, value: float) -> bool:
    return not isinstance(alpha, torch.Tensor) and alpha == value
