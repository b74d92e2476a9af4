"""Certified accuracy vs l_2 radius of the mixed classifier with a randomized-smoothing h (Figures 6 and 7; Thm 3.5,
Thm A.2), in resumable parts that stream one row per example as Cohen et al.'s certify does. Only ``confidence``
(Clopper-Pearson) makes the radii certificates; see docs/DESIGN.md."""

from __future__ import annotations

import csv
import io
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from asmix import distributed
from asmix.calibration import largest_meeting
from asmix.checks import check_choice, check_finite, parse_number
from asmix.errors import AsmixError
from asmix.experiments.parts import ShareProgress, batch_key, finish, out_parts, run_units
from asmix.io import atomic_write_text, write_error
from asmix.mixing import alpha_grid, check_alpha, mix_probabilities, std_log_probs
from asmix.radii import (
    SmoothingOutput,
    bounded_top_two,
    certified_accuracy,
    lipschitz_radius,
    smoothed_probabilities,
    smoothing_lipschitz,
    smoothing_radius,
    top_two,
)
from asmix.runtime import ProgressFn, RunSettings, accuracy, batch_generator, batch_slices, fraction

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
    smoothing_output: SmoothingOutput = "probs"
    radii: tuple[float, ...] = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)
    run: RunSettings = RunSettings(batch_size=256)
    skip: int = 1

    def __post_init__(self) -> None:
        check_alpha(self.alpha)
        if self.skip < 1:
            raise AsmixError(f"skip must be >= 1 (every K-th example), got {self.skip}")
        for name, value in (
            ("sigma", self.sigma),
            ("baseline sigma", self.baseline_sigma),
            ("the Lipschitz constant", self.lipschitz_const),
        ):
            if value is not None and not check_finite(value, name) > 0:
                raise AsmixError(f"{name} must be positive, got {value}")
        for radius in self.radii:
            check_finite(radius, "radius")
        if self.n_samples <= 0:
            raise AsmixError(f"n-samples must be positive, got {self.n_samples}")
        if self.confidence is not None and not 0.0 < self.confidence < 1.0:
            raise AsmixError(f"confidence must be in (0, 1), got {self.confidence}")
        if self.lipschitz_const is not None and (self.confidence is not None or self.match_clean_acc):
            raise AsmixError(
                "--lipschitz-const certifies h itself: --confidence and --match-clean-acc apply to randomized "
                "smoothing only"
            )
        check_choice(self.smoothing_output, SmoothingOutput, "smoothing output")
        if any(radius < 0 for radius in self.radii):
            raise AsmixError("radii must be >= 0")

    @property
    def smoothing(self) -> bool:
        return self.lipschitz_const is None

    @property
    def resolved_baseline_sigma(self) -> float:
        return self.baseline_sigma if self.baseline_sigma is not None else self.sigma / 2

    @property
    def examples_per_part(self) -> int:
        """Examples per resumable part: as many as fill one batch of forward passes, at least one."""
        return max(1, self.run.batch_size // self.n_samples) if self.smoothing else self.run.batch_size

    @property
    def classifiers(self) -> tuple[str, ...]:
        return ("mixed", "rob") + (("baseline",) if self.match_clean_acc else ())

    @property
    def bounds(self) -> tuple[str, ...]:
        return BOUNDS if self.smoothing else BOUNDS[:1]


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
    """h_alpha with h smoothed at ``sigma`` (``sigma`` None: h itself); alpha = 1 is h alone. ``predictions`` are
    per example the class certified (h's top class)."""

    name: str
    alpha: float
    sigma: float | None
    clean_accuracy: float
    rob_accuracy: float
    curves: tuple[CertifiedCurve, ...]
    predictions: tuple[int, ...] = field(repr=False, default=())


@dataclass(frozen=True)
class CertifyResult:
    """Certified curves of h_alpha and the baselines over ``n_examples`` (every ``config.skip``-th example, with
    their positions in the data in ``indices``)."""

    config: CertifyConfig
    n_examples: int
    entries: tuple[CertifiedModel, ...]
    alpha: float
    baseline_clean_accuracy: float | None = None
    models: dict[str, str] = field(default_factory=dict)
    indices: tuple[int, ...] = field(repr=False, default=())

    def to_dict(self) -> dict:
        config = asdict(self.config) | {
            "n_examples": self.n_examples,
            "models": self.models,
            "alpha_used": self.alpha,
            "baseline_sigma": self.config.resolved_baseline_sigma,
        }
        return {
            "config": config,
            "guarantee": guarantee(self.config),
            "indices": list(self.indices),
            "baseline_clean_accuracy": self.baseline_clean_accuracy,
            "models": [
                {
                    "name": entry.name,
                    "alpha": entry.alpha,
                    "sigma": entry.sigma,
                    "clean_accuracy": entry.clean_accuracy,
                    "rob_accuracy": entry.rob_accuracy,
                    "curves": [
                        {
                            "bound": curve.bound,
                            "lipschitz": curve.lipschitz,
                            "certified": dict(zip((str(r) for r in self.config.radii), curve.certified)),
                            "radii": [_finite(r) for r in curve.radii],
                        }
                        for curve in entry.curves
                    ],
                }
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
    out: str | Path | None = None,
) -> CertifyResult:
    """Certified accuracy vs radius of h_alpha and of the baselines (Figures 6 and 7) on every ``config.skip``-th
    example. With ``out``, each finished part (``config.examples_per_part`` examples) is saved in ``<out>/parts/`` for a
    rerun and its rows appended to ``<out>/examples.csv`` (rewritten whole, in order, at the end); under torchrun the
    parts are shared out across ranks."""
    if len(x) == 0:
        raise AsmixError("no examples to certify")
    indices = torch.arange(0, len(x), config.skip)
    x, y = x[indices], y[indices]
    std, rob = std.to(device).eval(), rob.to(device).eval()
    parts = out_parts(out, ["certify", asdict(config), models or {}], modules=(std, rob), tensors=(x, y))
    stream = _RowStream(Path(out), example_columns(config)) if out is not None else None
    chunks = list(batch_slices(len(x), config.examples_per_part))
    shown = ShareProgress(chunks, "certify", progress)

    def finished(part: slice, record: dict[str, torch.Tensor]) -> None:
        if stream:
            alpha = None if config.match_clean_acc else config.alpha
            entries = _entries(record, y[part], alpha, config)
            stream.append(example_rows(entries, indices[part], y[part], record["time"]))
        shown(part)

    records = run_units(
        chunks,
        lambda part: _certify_part(std, rob, x[part], indices[part], config, device),
        key=batch_key,
        parts=parts,
        finished=finished,
    )
    merged = {key: torch.cat([record[key] for record in records]) for key in records[0]}
    alpha, baseline_accuracy = config.alpha, None
    if config.match_clean_acc:
        baseline_accuracy = accuracy(merged["baseline/probs"], y)
        alpha = match_alpha(_std_probs(merged["std_logits"], config), merged["probs"], y, baseline_accuracy)
    entries = _entries(merged, y, alpha, config)
    if stream:
        stream.close(example_rows(entries, indices, y, merged["time"]))
    finish(parts)
    return CertifyResult(
        config, len(x), tuple(entries), alpha, baseline_accuracy, models or {}, tuple(indices.tolist())
    )


def _certify_part(
    std: nn.Module, rob: nn.Module, x: torch.Tensor, indices: torch.Tensor, config: CertifyConfig, device: torch.device
) -> dict[str, torch.Tensor]:
    """g's logits and h's (smoothed) outputs on a few examples, each smoothed with its own generator keyed by
    its index in the data (so skipping, batching and sharding leave its numbers alone), and the seconds spent."""
    started = time.perf_counter()
    x_device = x.to(device)
    with torch.no_grad():
        record = {"std_logits": std(x_device).float().cpu()}
        if not config.smoothing:
            record["rob_logits"] = rob(x_device).float().cpu()
    sigmas = {"": config.sigma} | ({"baseline/": config.resolved_baseline_sigma} if config.match_clean_acc else {})
    for prefix, sigma in sigmas.items() if config.smoothing else ():
        means, counts = [], []
        for position, index in enumerate(indices.tolist()):
            mean, count = smoothed_probabilities(
                rob,
                x_device[position : position + 1],
                sigma,
                config.n_samples,
                batch_size=config.run.batch_size,
                generator=batch_generator(config.run.seed, "smoothing", sigma, index),
                output=config.smoothing_output,
                draw_counts=config.confidence is not None,
            )
            means.append(mean)
            if count is not None:
                counts.append(count.cpu())
        record[f"{prefix}probs"] = torch.cat(means)
        if counts:
            record[f"{prefix}counts"] = torch.cat(counts)
    record["time"] = torch.full((len(x),), (time.perf_counter() - started) / len(x), dtype=torch.float64)
    return record


def _std_probs(std_logits: torch.Tensor, config: CertifyConfig) -> torch.Tensor:
    return std_log_probs(std_logits, temperature=0.0 if config.std_hardmax else 1.0).exp()


def _entries(
    record: dict[str, torch.Tensor], y: torch.Tensor, alpha: float | None, config: CertifyConfig
) -> list[CertifiedModel]:
    """h_alpha (left out while ``alpha`` is unknown), h alone and, with ``match_clean_acc``, the baseline."""

    def rob(prefix: str) -> tuple:  # sigma, h's probabilities and counts: smoothed (prefix "" or "baseline/"), or h
        if not config.smoothing:
            return None, torch.softmax(record["rob_logits"], dim=1), None
        sigma = config.resolved_baseline_sigma if prefix else config.sigma
        return sigma, record[f"{prefix}probs"], record.get(f"{prefix}counts")

    std_probs = _std_probs(record["std_logits"], config)
    entries = [("mixed", alpha, ""), ("rob", 1.0, "")]
    if config.match_clean_acc:
        entries.append(("baseline", 1.0, "baseline/"))
    return [_entry(name, at, *rob(prefix), std_probs, y, config) for name, at, prefix in entries if at is not None]


def example_columns(config: CertifyConfig) -> list[str]:
    """Columns of the per-example rows: index and label, then per classifier the class certified, whether it
    is the label and its radius per bound (empty for a classifier not known yet), then seconds spent."""
    columns = ["index", "label"]
    for name in config.classifiers:
        columns += [f"{name}_prediction", f"{name}_correct"] + [f"{name}_radius_{bound}" for bound in config.bounds]
    return columns + ["time"]


def example_rows(
    entries: list[CertifiedModel], indices: torch.Tensor, y: torch.Tensor, seconds: torch.Tensor
) -> list[dict]:
    """One row per example, as randomized-smoothing tools write them (``example_columns``); a radius of -inf
    certifies nothing."""
    rows = [{"index": index, "label": label} for index, label in zip(indices.tolist(), y.tolist())]
    for entry in entries:
        for position, row in enumerate(rows):
            row[f"{entry.name}_prediction"] = entry.predictions[position]
            row[f"{entry.name}_correct"] = int(entry.curves[0].correct[position])
            for curve in entry.curves:
                row[f"{entry.name}_radius_{curve.bound}"] = curve.radii[position]
    for row, spent in zip(rows, seconds.tolist()):
        row["time"] = round(spent, 6)
    return rows


class _RowStream:
    """Per-example rows streamed to ``<folder>/examples.csv`` (each torchrun rank but 0 to
    ``examples.rank<N>.csv``) one part at a time; ``close`` writes the complete, ordered file atomically."""

    def __init__(self, folder: Path, columns: list[str]) -> None:
        self.path = folder / ROWS_FILE
        self.final = self.path
        if not distributed.is_main_process():
            self.path = folder / f"examples.rank{distributed.rank()}.csv"
        self.columns = columns
        atomic_write_text(self.path, _csv_text([], columns))

    def append(self, rows: list[dict]) -> None:
        """One write per part: a kill leaves whole parts (a rerun rewrites the file anyway)."""
        try:
            with open(self.path, "a", newline="") as handle:
                handle.write(_csv_text(rows, self.columns, header=False))
        except OSError as error:
            raise write_error(self.path, error) from error

    def close(self, rows: list[dict]) -> None:
        if distributed.is_main_process():
            atomic_write_text(self.final, _csv_text(rows, self.columns))
        else:
            self.path.unlink(missing_ok=True)


ROWS_FILE = "examples.csv"


def _csv_text(rows: list[dict], columns: list[str], header: bool = True) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def match_alpha(
    std_probs: torch.Tensor, rob_probs: torch.Tensor, y: torch.Tensor, target: float, step: float = 0.001
) -> float:
    """The largest alpha on a grid whose h_alpha clean accuracy is at least ``target`` (Figure 6:
    the mixed model keeps the baseline's clean accuracy and gets the largest certified radii);
    alpha 0 where none reaches it."""
    alphas = alpha_grid(0.0, 1.0, step)
    clean = [accuracy(mix_probabilities(std_probs, rob_probs, alpha), y) for alpha in alphas]
    index = largest_meeting(clean, target)
    return 0.0 if index is None else alphas[index]


def _entry(name, alpha, sigma, rob_probs, counts, std_probs, y, config) -> CertifiedModel:
    """Clean accuracy of h_alpha and the certified curves of its Thm 3.5 / Thm A.2 radii."""
    mixed = mix_probabilities(std_probs, rob_probs, alpha)
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
        curves.append(
            CertifiedCurve(
                bound,
                lipschitz if bound == "lipschitz" else None,
                tuple(curve.tolist()),
                tuple(radii.tolist()),
                tuple(correct.tolist()),
            )
        )
    return CertifiedModel(name, alpha, sigma, accuracy(mixed, y), fraction(correct), tuple(curves), tuple(top.tolist()))
