"""Certified accuracy vs l_2 radius of the mixed classifier (Figures 6 and 7, Appendix A).

h is a Gaussian randomized-smoothing classifier built from the ``rob`` base model (noise sigma,
Monte Carlo with ``n_samples``); certified radii come from Thm 3.5 (Lipschitz constant
sqrt(2/pi)/sigma) and Thm A.2. Baselines are h alone (alpha = 1) and, with ``match_clean_acc``,
an RS model with a smaller sigma whose clean accuracy h_alpha is made to match (Figure 6). With
``lipschitz_const``, h is the rob model itself and only Thm 3.5 applies, with that constant.

Only the Clopper-Pearson mode (``confidence``) gives certificates that hold with a stated
probability; the default plugs the Monte Carlo mean into the formulas, as the paper does.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from asmix.certify import (SMOOTHING_OUTPUTS, bounded_top_two, certified_accuracy, lipschitz_radius,
                           smoothed_probabilities, smoothing_lipschitz, smoothing_radius, top_two)
from asmix.checks import check_finite, parse_number
from asmix.errors import AsmixError
from asmix.mixing import check_alpha, std_log_probs
from asmix.runtime import ProgressFn, batch_generator, check_batch_size, predict_logits

BOUNDS = ("lipschitz", "rs")


def parse_radii(text: str) -> tuple[float, ...]:
    """``0,0.25,0.5`` or ``0,36/255`` → sorted unique radii (checked by ``CertifyConfig``)."""
    values = sorted({parse_number(part, "each radius") for part in text.split(",") if part.strip()})
    if not values:
        raise AsmixError(f"no radii in {text!r}: use a list like 0,0.25,0.5")
    return tuple(values)


@dataclass(frozen=True)
class CertifyConfig:
    """Settings of ``asmix certify``; every CLI option is a field here (the paper uses
    ``n_samples=10000``; the default is small for the CPU demo)."""

    sigma: float = 0.25
    n_samples: int = 500
    alpha: float = 0.8
    match_clean_acc: bool = False
    baseline_sigma: float | None = None
    std_hardmax: bool = False
    confidence: float | None = None
    lipschitz_const: float | None = None
    smoothing_output: str = "probs"
    radii: tuple[float, ...] = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)
    batch_size: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        check_alpha(self.alpha)
        check_batch_size(self.batch_size)
        for name, value in (("sigma", self.sigma), ("baseline sigma", self.baseline_sigma),
                            ("the Lipschitz constant", self.lipschitz_const)):
            if value is not None:
                check_finite(value, name)
        for radius in self.radii:
            check_finite(radius, "radius")
        if not self.sigma > 0:
            raise AsmixError(f"sigma must be positive, got {self.sigma}")
        if self.n_samples <= 0:
            raise AsmixError(f"n-samples must be positive, got {self.n_samples}")
        if self.baseline_sigma is not None and not self.baseline_sigma > 0:
            raise AsmixError(f"baseline sigma must be positive, got {self.baseline_sigma}")
        if self.confidence is not None and not 0.0 < self.confidence < 1.0:
            raise AsmixError(f"confidence must be in (0, 1), got {self.confidence}")
        if self.lipschitz_const is not None:
            if not self.lipschitz_const > 0:
                raise AsmixError(f"the Lipschitz constant must be positive, got {self.lipschitz_const}")
            if self.confidence is not None or self.match_clean_acc:
                raise AsmixError("--lipschitz-const certifies h itself: --confidence and --match-clean-acc "
                                 "apply to randomized smoothing only")
        if self.smoothing_output not in SMOOTHING_OUTPUTS:
            raise AsmixError(f"smoothing output must be one of {', '.join(SMOOTHING_OUTPUTS)}")
        if any(radius < 0 for radius in self.radii):
            raise AsmixError("radii must be >= 0")

    @property
    def smoothing(self) -> bool:
        return self.lipschitz_const is None

    @property
    def resolved_baseline_sigma(self) -> float:
        return self.baseline_sigma if self.baseline_sigma is not None else self.sigma / 2


@dataclass(frozen=True)
class CertifiedCurve:
    """One classifier and one bound: certified accuracy at ``config.radii`` and per-example radii
    (an example counts at r when h's top class is right and its radius is >= r)."""

    bound: str
    lipschitz: float | None
    certified: tuple[float, ...]
    radii: tuple[float, ...] = field(repr=False, default=())
    correct: tuple[bool, ...] = field(repr=False, default=())


@dataclass(frozen=True)
class CertifiedModel:
    """h_alpha with h smoothed at ``sigma`` (``sigma`` None: h itself); alpha = 1 is h alone."""

    name: str
    alpha: float
    sigma: float | None
    clean_accuracy: float
    rob_accuracy: float
    curves: tuple[CertifiedCurve, ...]


@dataclass(frozen=True)
class CertifyResult:
    config: CertifyConfig
    n_examples: int
    entries: tuple[CertifiedModel, ...]
    alpha: float
    baseline_clean_accuracy: float | None = None
    models: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        config = asdict(self.config) | {"n_examples": self.n_examples, "models": self.models,
                                        "alpha_used": self.alpha, "baseline_sigma": self.config.resolved_baseline_sigma}
        return {
            "config": config,
            "guarantee": guarantee(self.config),
            "baseline_clean_accuracy": self.baseline_clean_accuracy,
            "models": [
                {"name": entry.name, "alpha": entry.alpha, "sigma": entry.sigma,
                 "clean_accuracy": entry.clean_accuracy, "rob_accuracy": entry.rob_accuracy,
                 "curves": [{"bound": curve.bound, "lipschitz": curve.lipschitz,
                             "certified": dict(zip((str(r) for r in self.config.radii), curve.certified)),
                             "radii": [_finite(r) for r in curve.radii]} for curve in entry.curves]}
                for entry in self.entries
            ],
        }


def _finite(value: float) -> float | None:
    """JSON has no infinities: a radius of -inf (nothing certified) becomes null."""
    return value if math.isfinite(value) else None


def guarantee(config: CertifyConfig) -> str:
    """What the radii mean under this configuration."""
    if not config.smoothing:
        return "exact, given that the Lipschitz constant is a true bound for softmax(h)"
    if config.confidence is not None:
        return f"each certificate holds with probability >= {config.confidence} (Clopper-Pearson)"
    return "Monte Carlo estimate (empirical mean, as in the paper): not a guarantee"


def certify(
    std: nn.Module,
    rob: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    config: CertifyConfig = CertifyConfig(),
    *,
    device: torch.device = torch.device("cpu"),
    progress: ProgressFn | None = None,
    models: dict[str, str] | None = None,
) -> CertifyResult:
    """Certified accuracy vs radius of h_alpha and of the baselines (Figures 6 and 7)."""
    if len(x) == 0:
        raise AsmixError("no examples to certify")
    std, rob = std.to(device).eval(), rob.to(device).eval()
    std_logits = predict_logits(std, x, batch_size=config.batch_size, device=device, progress=progress, task="clean g")
    std_probs = std_log_probs(std_logits, temperature=0.0 if config.std_hardmax else 1.0).exp()
    if not config.smoothing:
        rob_probs = torch.softmax(predict_logits(rob, x, batch_size=config.batch_size, device=device,
                                                 progress=progress, task="clean h"), dim=1)
        entry_alpha = config.alpha
        entries = [_entry("mix", entry_alpha, None, rob_probs, None, std_probs, y, config),
                   _entry("rob", 1.0, None, rob_probs, None, std_probs, y, config)]
        return CertifyResult(config, len(x), tuple(entries), entry_alpha, None, models or {})

    sigmas = [config.sigma] + ([config.resolved_baseline_sigma] if config.match_clean_acc else [])
    estimates = {}
    total = len(sigmas) * len(x) * config.n_samples
    for position, sigma in enumerate(sigmas):
        estimates[sigma] = _smooth(rob, x, sigma, config, device, progress, offset=position * len(x) * config.n_samples,
                                   total=total)
    probs, counts = estimates[config.sigma]
    alpha, baseline_accuracy = config.alpha, None
    entries = []
    if config.match_clean_acc:
        baseline_probs, baseline_counts = estimates[config.resolved_baseline_sigma]
        baseline_accuracy = _accuracy(baseline_probs, y)
        alpha = match_alpha(std_probs, probs, y, baseline_accuracy)
    entries.append(_entry("mix", alpha, config.sigma, probs, counts, std_probs, y, config))
    entries.append(_entry("rob", 1.0, config.sigma, probs, counts, std_probs, y, config))
    if config.match_clean_acc:
        entries.append(_entry("baseline", 1.0, config.resolved_baseline_sigma, baseline_probs, baseline_counts,
                              std_probs, y, config))
    return CertifyResult(config, len(x), tuple(entries), alpha, baseline_accuracy, models or {})


def match_alpha(std_probs: torch.Tensor, rob_probs: torch.Tensor, y: torch.Tensor, target: float,
                step: float = 0.001) -> float:
    """The largest alpha on a grid whose h_alpha clean accuracy is at least ``target`` (Figure 6:
    the mixed model keeps the baseline's clean accuracy and gets the largest certified radii);
    alpha 0 where none reaches it."""
    count = int(round(1 / step))
    for index in range(count, -1, -1):
        alpha = index / count
        mixed = (1 - alpha) * std_probs + alpha * rob_probs
        if _accuracy(mixed, y) >= target - 1e-12:
            return alpha
    return 0.0


def _accuracy(probs: torch.Tensor, y: torch.Tensor) -> float:
    return (probs.argmax(dim=1) == y).float().mean().item()


def _smooth(rob, x, sigma, config, device, progress, *, offset, total):
    """Per-example Monte Carlo with its own generator: results do not depend on batching."""
    means, counts = [], []
    for index in range(len(x)):
        generator = batch_generator(config.seed, "smoothing", sigma, index)
        mean, count = smoothed_probabilities(rob, x[index:index + 1].to(device), sigma, config.n_samples,
                                             batch_size=config.batch_size, generator=generator,
                                             output=config.smoothing_output,
                                             draw_counts=config.confidence is not None, progress=progress,
                                             task=f"smoothing sigma={sigma:g}",
                                             done=offset + index * config.n_samples, total=total)
        means.append(mean)
        if count is not None:
            counts.append(count.cpu())
    return torch.cat(means), (torch.cat(counts) if counts else None)


def _entry(name, alpha, sigma, rob_probs, counts, std_probs, y, config) -> CertifiedModel:
    """Clean accuracy of h_alpha and the certified curves of its Thm 3.5 / Thm A.2 radii."""
    mixed = (1 - alpha) * std_probs + alpha * rob_probs
    if counts is not None:
        top, p_top, p_runner_up = bounded_top_two(counts, config.n_samples, config.confidence)
    else:
        top, p_top, p_runner_up = top_two(rob_probs)
        if sigma is not None:
            # an n-sample mean cannot resolve probabilities closer than 1/(2n) to 0 or 1; without
            # this, p = 1 gives an infinite Thm A.2 radius at alpha = 1
            resolution = 1.0 / (2 * config.n_samples)
            p_top, p_runner_up = p_top.clamp(max=1 - resolution), p_runner_up.clamp(min=resolution)
    correct = top == y
    curves = []
    lipschitz = smoothing_lipschitz(sigma) if sigma is not None else config.lipschitz_const
    bounds = {"lipschitz": lipschitz_radius(p_top, p_runner_up, alpha, lipschitz)}
    if sigma is not None:
        bounds["rs"] = smoothing_radius(p_top, p_runner_up, alpha, sigma)
    for bound, radii in bounds.items():
        curve = certified_accuracy(radii, correct, list(config.radii))
        curves.append(CertifiedCurve(bound, lipschitz if bound == "lipschitz" else None, tuple(curve.tolist()),
                                     tuple(radii.tolist()), tuple(correct.tolist())))
    return CertifiedModel(name, alpha, sigma, _accuracy(mixed, y), correct.float().mean().item(), tuple(curves))
