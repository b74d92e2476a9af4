"""Choosing a mix for a target clean accuracy from cached logits, and the calibration file. No model runs per
candidate: clean accuracy and the Lemma 3.2 robust estimate are read exactly over alpha's breakpoints (the method
is in docs/DESIGN.md)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from asmix.errors import AsmixError
from asmix.mixing import EvaluationHead, check_alpha, check_temperature, std_log_probs
from asmix.nuts import DEFAULT_LN_K, NutsMap, layer_norm

FORMAT = "asmix-calibration"
VERSION = 1
FAMILIES = ("linear", "tempered", "nuts", "mixer")
"""linear: the plain fixed alpha (scales 1); tempered: the fixed alpha with the best logit scales of g and h (the
baseline with the freedoms of a mixer's head); nuts: MixedNUTS; mixer: a trained mixing network's head."""


@dataclass(frozen=True)
class MixerHead:
    """A trained mixing network's evaluation head chosen by calibrate (``EvaluationHead``: range, bias and logit
    scales), and which network: its folder and the sha256 of its weights (``asmix.identity.weights_digest``), so a
    command refuses another mixer."""

    folder: str
    weights: str
    head: EvaluationHead

    @property
    def alpha_range(self) -> tuple[float, float]:
        return self.head.alpha_range

    @property
    def alpha_bias(self) -> float:
        return self.head.alpha_bias

    def to_dict(self) -> dict:
        return {"folder": self.folder, "weights": self.weights, **self.head.to_dict()}

    @classmethod
    def from_dict(cls, data: object) -> "MixerHead":
        """Read back ``to_dict``'s form, or the older one: ``alpha_range`` as a list and no scales (1 and 1)."""
        if not isinstance(data, dict):
            raise AsmixError(f"mixer entry must be an object, got {data!r}")
        data = dict(data)
        missing = sorted({"folder", "weights"} - set(data))
        if missing:
            raise AsmixError(f"mixer entry lacks {', '.join(missing)}")
        folder, weights = data.pop("folder"), data.pop("weights")
        if not isinstance(folder, str) or not isinstance(weights, str):
            raise AsmixError(f"mixer folder and weights (its sha256) must be strings, got {folder!r}, {weights!r}")
        if "alpha_range" in data:
            rng = data.pop("alpha_range")
            if not (isinstance(rng, list) and len(rng) == 2):
                raise AsmixError(f"mixer alpha_range must be [alpha_min, alpha_max], got {rng!r}")
            data |= {"alpha_min": rng[0], "alpha_max": rng[1]}
        missing = sorted({"alpha_min", "alpha_max", "alpha_bias"} - set(data))
        if missing:
            raise AsmixError(f"mixer entry lacks {', '.join(missing)}")
        return cls(folder, weights, EvaluationHead.from_dict(data))


@dataclass(frozen=True)
class MixChoice:
    """One mix a command can build: alpha, g's temperature (0 = hard-max, App. A.2), h's map and the logit scales of
    g and h; or, with ``mixer``, a trained mixing network's head (its scales are the head's), where ``alpha`` is its
    alpha_min (the smallest alpha it gives, which Lemma 3.2 counts and Thm 3.5 / A.2 certify with)."""

    alpha: float
    std_temperature: float = 1.0
    rob_map: NutsMap | None = None
    mixer: MixerHead | None = None
    std_scale: float = 1.0
    rob_scale: float = 1.0

    def __post_init__(self) -> None:
        check_alpha(self.alpha)
        EvaluationHead(self.alpha, self.alpha, 0.0, self.std_scale, self.rob_scale)  # finite, positive scales
        if self.mixer is not None and self.alpha != self.mixer.alpha_range[0]:
            raise AsmixError(f"a mixer's alpha is its alpha_min {self.mixer.alpha_range[0]}, got {self.alpha}")
        check_temperature(self.std_temperature)

    def to_dict(self) -> dict:
        return {
            "alpha": self.alpha,
            "std_temperature": self.std_temperature,
            "rob_map": None if self.rob_map is None else self.rob_map.to_dict(),
            **({} if self.mixer is None else {"mixer": self.mixer.to_dict()}),
            **({} if self.mixer is not None else {"std_scale": self.std_scale, "rob_scale": self.rob_scale}),
        }

    @property
    def scales(self) -> tuple[float, float]:
        """The logit scales (g, h) this mix applies: the mixer head's, else its own."""
        head = self.mixer.head if self.mixer is not None else self
        return head.std_scale, head.rob_scale


@dataclass(frozen=True)
class CachedLogits:
    """Logits (float64, CPU) of one calibration pass: g and h on clean inputs, h on its min-margin inputs."""

    std_clean: torch.Tensor
    rob_clean: torch.Tensor
    rob_attacked: torch.Tensor
    y: torch.Tensor


@dataclass(frozen=True)
class Operating:
    """Clean accuracy and robust estimate of one mix on the calibration examples (fractions)."""

    alpha: float
    clean: float
    robust_estimate: float


def correct_intervals(
    std_probs: torch.Tensor, rob_probs: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example, (lo, hi) with argmax((1 - a) p_g + a p_h) == y iff lo < a < hi (ties excluded)."""
    d0 = std_probs.gather(1, y[:, None]) - std_probs  # value at alpha 0, per class
    d1 = rob_probs.gather(1, y[:, None]) - rob_probs  # value at alpha 1
    slope = d1 - d0
    other = torch.ones_like(d0, dtype=torch.bool).scatter(1, y[:, None], False)
    with torch.no_grad():
        root = -d0 / torch.where(slope == 0, torch.ones_like(slope), slope)
    inf = torch.full_like(d0, math.inf)
    lower = torch.where(other & (slope > 0), root, -inf)
    upper = torch.where(other & (slope < 0), root, inf)
    never = (other & (slope == 0) & (d0 <= 0)).any(dim=1)
    lo, hi = lower.max(dim=1).values, upper.min(dim=1).values
    lo = torch.where(never, torch.full_like(lo, math.inf), lo)
    return lo, hi


def attacked_margin(probs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """True-class margin p_y - max_{i != y} p_i per example (Lemma 3.2's margin)."""
    true = probs.gather(1, y[:, None])[:, 0]
    return true - probs.scatter(1, y[:, None], -1.0).max(dim=1).values


def robust_thresholds(margin: torch.Tensor) -> torch.Tensor:
    """Per example, the smallest alpha at which Lemma 3.2 holds, 1/(1 + m) for margin m > 0, else inf."""
    return torch.where(margin > 0, 1.0 / (1.0 + margin.clamp_min(1e-300)), torch.full_like(margin, math.inf))


def operating_points(
    lo: torch.Tensor, hi: torch.Tensor, thresholds: torch.Tensor
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every alpha where clean accuracy or the robust estimate can change (the interval ends and the
    robust thresholds in [0, 1], and 0 and 1) and the middle of each open cell between them, with both
    values there. Returns (alphas, clean, robust), sorted by alpha."""
    lo, hi, thresholds = (t.double().numpy() for t in (lo, hi, thresholds))
    breaks = np.concatenate([lo, hi, thresholds, [0.0, 1.0]])
    breaks = np.unique(breaks[(breaks >= 0) & (breaks <= 1)])
    alphas = np.unique(np.concatenate([breaks, (breaks[:-1] + breaks[1:]) / 2]))
    t_sorted = np.sort(thresholds[np.isfinite(thresholds)])
    valid = lo < hi
    lo_v, hi_v = np.sort(lo[valid]), np.sort(hi[valid])
    correct = np.searchsorted(lo_v, alphas, side="left") - np.searchsorted(hi_v, alphas, side="right")
    robust = np.searchsorted(t_sorted, alphas, side="right")
    n = len(lo)
    return alphas, correct / n, robust / n


def largest_meeting(clean, target: float) -> int | None:
    """The position of the largest alpha whose clean accuracy meets ``target`` on an ascending alpha grid
    (the most robust such mix: h's weight only grows), or None where none does; the one alpha search that
    calibration, ``certify --match-clean-acc`` and their grids share."""
    feasible = np.flatnonzero(np.asarray(clean) >= target - 1e-12)
    return int(feasible[-1]) if len(feasible) else None


def best_alpha(alphas: np.ndarray, clean: np.ndarray, robust: np.ndarray, target: float) -> tuple[Operating, bool]:
    """The most robust operating point with clean >= target (the largest such alpha); where none meets
    the target, the most accurate one. Returns it and whether it meets the target."""
    index = largest_meeting(clean, target)
    if index is not None:
        return Operating(float(alphas[index]), float(clean[index]), float(robust[index])), True
    index = int(np.flatnonzero(clean == clean.max())[-1])
    return Operating(float(alphas[index]), float(clean[index]), float(robust[index])), False


def family_curve(cached: CachedLogits, rob_map: NutsMap | None, std_temperature: float):
    """Operating points over alpha for one map of h and one g temperature (see ``operating_points``)."""
    return SearchCache(cached, std_temperature).curve(rob_map)[:3]


class SearchCache:
    """What every candidate map shares, computed once: g's probabilities and h's layer-normed logits
    (clean and attacked stacked), so that a candidate costs a few element-wise ops on N x C numbers."""

    def __init__(self, cached: CachedLogits, std_temperature: float, ln_k: int = DEFAULT_LN_K) -> None:
        self.cached, self.ln_k, self.n = cached, ln_k, len(cached.y)
        self.y = cached.y
        self.std_probs = std_log_probs(cached.std_clean.double(), temperature=std_temperature).exp()
        self.rob = torch.cat((cached.rob_clean, cached.rob_attacked)).double()
        self.normed = layer_norm(self.rob, ln_k)

    def curve(self, rob_map: NutsMap | None):
        """(alphas, clean, robust, attacked margins of the mapped h) for one map (None: h itself)."""
        mapped = self.rob if rob_map is None else rob_map.from_normed(self.normed)
        probs = torch.softmax(mapped, 1)
        clean_probs, attacked_probs = probs[: self.n], probs[self.n :]
        lo, hi = correct_intervals(self.std_probs, clean_probs, self.y)
        margin = attacked_margin(attacked_probs, self.y)
        return (*operating_points(lo, hi, robust_thresholds(margin)), margin)

    def score(self, rob_map: NutsMap, target: float) -> tuple[float, Operating, bool]:
        """The search objective of a map: the robust estimate at its best alpha (minus 1 where the target
        is missed), plus a tie-breaker worth under one example (the mean tanh of the attacked margins'
        excess over (1-alpha)/alpha), so that a continuous optimiser can move on the count's plateaus."""
        alphas, clean, robust, margin = self.curve(rob_map)
        point, meets = best_alpha(alphas, clean, robust, target)
        cutoff = (1 - point.alpha) / max(point.alpha, 1e-12)
        tie = torch.tanh(4 * (margin - cutoff)).mean().item()
        return point.robust_estimate + (0.0 if meets else -1.0) + 0.4 / self.n * tie, point, meets


def score(
    cached: CachedLogits, rob_map: NutsMap, std_temperature: float, target: float
) -> tuple[float, Operating, bool]:
    """``SearchCache.score`` for one map (builds the cache; searches build it once)."""
    return SearchCache(cached, std_temperature, rob_map.ln_k).score(rob_map, target)


@dataclass(frozen=True)
class FamilyChoice:
    """A family's chosen mix and where it lands on the calibration examples."""

    family: str
    choice: MixChoice
    clean: float
    robust_estimate: float
    meets_target: bool
    seconds: float
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "family": self.family,
            **self.choice.to_dict(),
            "clean": self.clean,
            "robust_estimate": self.robust_estimate,
            "meets_target": self.meets_target,
            "seconds": self.seconds,
            "details": self.details,
        }


@dataclass(frozen=True)
class Calibration:
    """A calibration file as read back: the base models it was made for and each family's choice."""

    models: dict[str, str]
    families: dict[str, MixChoice]
    target_clean_acc: float | None = None
    source: str = "the calibration"

    def choice(self, family: str) -> MixChoice:
        if family not in self.families:
            raise AsmixError(f"{self.source} has no {family!r} family (it has {', '.join(self.families)})")
        return self.families[family]

    def check_models(self, std: str, rob: str) -> None:
        made = (self.models.get("std"), self.models.get("rob"))
        if made != (std, rob):
            raise AsmixError(f"{self.source} was made for --std {made[0]} --rob {made[1]}, not {std} / {rob}")


def load_calibration(path: str | Path) -> Calibration:
    """Read a calibration JSON written by ``asmix calibrate`` (or the folder holding its
    ``calibration.json``); every problem is one ``AsmixError`` line."""
    path = Path(path)
    if path.is_dir() and (path / "calibration.json").is_file():
        path = path / "calibration.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as error:
        raise AsmixError(f"calibration {path}: no such file") from error
    except IsADirectoryError as error:
        raise AsmixError(f"calibration {path}: is a folder, not a calibration JSON") from error
    except (OSError, UnicodeDecodeError) as error:
        raise AsmixError(f"calibration {path}: cannot read: {getattr(error, 'strerror', None) or error}") from error
    except json.JSONDecodeError as error:
        raise AsmixError(f"calibration {path}: not JSON ({error.msg} at line {error.lineno})") from error
    try:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise AsmixError(f'not an asmix calibration (no "format": "{FORMAT}")')
        if data.get("version") != VERSION:
            raise AsmixError(f"calibration format version {data.get('version')!r}, this asmix reads {VERSION}")
        models, raw = data.get("models"), data.get("families")
        if not isinstance(models, dict) or not isinstance(raw, dict) or not raw:
            raise AsmixError('needs "models" and a non-empty "families" object')
        if not all(isinstance(spec, str) for spec in models.values()):
            raise AsmixError(f"models must name each base model by a string, got {models!r}")
        families = {}
        for name, entry in raw.items():
            if name not in FAMILIES:
                raise AsmixError(f"unknown family {name!r} (known: {', '.join(FAMILIES)})")
            if not isinstance(entry, dict) or "alpha" not in entry:
                raise AsmixError(f'family {name!r} needs an "alpha"')
            alpha = entry["alpha"]
            if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
                raise AsmixError(f"family {name!r}: alpha must be a number, got {alpha!r}")
            rob_map, mixer = entry.get("rob_map"), entry.get("mixer")
            if (name == "mixer") != (mixer is not None):
                raise AsmixError(f'family {name!r}: a "mixer" entry belongs to the mixer family only, and it needs one')
            families[name] = MixChoice(
                float(alpha),
                entry.get("std_temperature", 1.0),
                None if rob_map is None else NutsMap.from_dict(rob_map),
                None if mixer is None else MixerHead.from_dict(mixer),
                entry.get("std_scale", 1.0),
                entry.get("rob_scale", 1.0),
            )
        target = data.get("config", {}).get("target_clean_acc") if isinstance(data.get("config"), dict) else None
        return Calibration(dict(models), families, target, f"calibration {path}")
    except AsmixError as error:
        raise AsmixError(f"calibration {path}: {error}") from error


def calibration_dict(models: dict[str, str], config: dict, families: dict[str, FamilyChoice], extra: dict) -> dict:
    """The calibration file's content (``load_calibration`` reads it back)."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "models": models,
        "config": config,
        "families": {name: entry.to_dict() for name, entry in families.items()},
        **extra,
    }
