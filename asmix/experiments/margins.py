"""Confidence margins of g, h and h_alpha (Table 1), the empirical check of Lemma 3.2 and local Lipschitz estimates of
softmax(h) (App. C.3); each model attacked on its own by PGD and the min-margin AutoAttack (App. D.2), batch by
batch as units of ``asmix.experiments.parts``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, get_args

import torch
from torch import nn

from asmix.attacks.margin import (
    LipschitzEstimate,
    local_lipschitz,
    min_margin_autoattack,
    probability_gap,
    true_class_margin,
)
from asmix.attacks.pgd import ThreatModel
from asmix.checks import check_choices
from asmix.errors import AsmixError
from asmix.experiments.parts import ShareProgress, batch_key, finish, out_parts, run_units
from asmix.experiments.settings import config_dict
from asmix.mixing import AlphaSource, MixedClassifier, MixSettings, check_alpha
from asmix.radii import lemma32_threshold, lipschitz_radius_per_class, satisfies_lemma32
from asmix.runtime import ProgressFn, RunSettings, batch_generator, batch_slices, fraction, top_class_correct

Classifier = Literal["std", "rob", "mixed"]
"""g, h and h_alpha."""
MODELS: tuple[Classifier, ...] = get_args(Classifier)
MarginAttack = Literal["pgd", "aa"]
"""PGD (cross-entropy) and the min-margin AutoAttack (APGD-CE + APGD-T, App. D.2), named as in evaluate."""
ATTACK_ALIASES = {"autoattack": "aa"}
"""Earlier names of an attack, still read (a config of an earlier result) but no longer shown."""
INPUT_NAMES: dict[str, str] = {"pgd": "pgd", "aa": "autoattack"}
"""The inputs each attack makes, as results name them."""
INPUTS = ("clean", *INPUT_NAMES.values())


@dataclass(frozen=True)
class MarginsConfig:
    """Settings of ``asmix margins``; every CLI option is a field here or in a block. The AutoAttack defaults are
    small for the CPU demo; the standard AutoAttack uses ``aa_steps=100, target_classes=9``."""

    attacks: tuple[MarginAttack, ...] = ("pgd", "aa")
    classifiers: tuple[Classifier, ...] = MODELS
    threat: ThreatModel = ThreatModel()
    aa_steps: int = 20
    target_classes: int = 2
    alpha: float = 0.6
    lipschitz: bool = False
    lipschitz_classes: int | None = None
    mix: MixSettings = MixSettings()
    run: RunSettings = RunSettings(batch_size=256)

    def __post_init__(self) -> None:
        object.__setattr__(self, "attacks", tuple(ATTACK_ALIASES.get(name, name) for name in self.attacks))
        check_choices(self.attacks, MarginAttack, "attack")
        if not set(self.classifiers) <= set(MODELS) or "rob" not in self.classifiers:
            raise AsmixError(
                f"classifiers must be among {', '.join(MODELS)} and include rob (h), got {', '.join(self.classifiers)}"
            )
        check_alpha(self.alpha)
        if self.aa_steps <= 0:
            raise AsmixError(f"AutoAttack steps must be positive, got {self.aa_steps}")
        if self.target_classes < 0:
            raise AsmixError(f"target classes must be >= 0, got {self.target_classes}")
        if self.lipschitz_classes is not None and self.lipschitz_classes < 1:
            raise AsmixError(f"lipschitz classes must be >= 1, got {self.lipschitz_classes}")
        if self.lipschitz and self.threat.eps <= 0:
            raise AsmixError("the Lipschitz estimate needs eps > 0")

    @property
    def inputs(self) -> tuple[str, ...]:
        return ("clean",) + tuple(inputs for attack, inputs in INPUT_NAMES.items() if attack in self.attacks)


def _mean(values: torch.Tensor) -> float | None:
    return values.mean().item() if len(values) else None


def _median(values: torch.Tensor) -> float | None:
    return values.median().item() if len(values) else None


@dataclass(frozen=True)
class MarginStats:
    """One model on one kind of input: accuracy and the Table-1 gaps (p_top - p_runner_up) over
    correctly (✓) and wrongly (✗) classified examples; ``None`` where there are none. ``gaps``,
    ``margins`` (p_y - max_{i != y} p_i) and ``correct`` are per example."""

    accuracy: float
    n_correct: int
    n_wrong: int
    mean_gap_correct: float | None
    median_gap_correct: float | None
    mean_gap_wrong: float | None
    median_gap_wrong: float | None
    gaps: tuple[float, ...] = field(repr=False, default=())
    margins: tuple[float, ...] = field(repr=False, default=())
    correct: tuple[bool, ...] = field(repr=False, default=())

    @classmethod
    def from_logits(cls, logits: torch.Tensor, y: torch.Tensor) -> "MarginStats":
        gaps = probability_gap(logits)
        correct = top_class_correct(logits, y)
        return cls(
            accuracy=fraction(correct),
            n_correct=int(correct.sum()),
            n_wrong=int((~correct).sum()),
            mean_gap_correct=_mean(gaps[correct]),
            median_gap_correct=_median(gaps[correct]),
            mean_gap_wrong=_mean(gaps[~correct]),
            median_gap_wrong=_median(gaps[~correct]),
            gaps=tuple(gaps.tolist()),
            margins=tuple(true_class_margin(logits, y).tolist()),
            correct=tuple(correct.tolist()),
        )

    def summary(self) -> dict:
        return {key: value for key, value in asdict(self).items() if key not in ("gaps", "margins", "correct")}


@dataclass(frozen=True)
class Lemma32Row:
    """Lemma 3.2 on one kind of input: examples where h is correct with margin >= (1-alpha)/alpha,
    next to the accuracy of h_alpha attacked on its own (the lemma predicts at least the former)."""

    inputs: str
    alpha: float
    threshold: float
    n_satisfied: int
    share_satisfied: float
    mix_accuracy: float | None


@dataclass(frozen=True)
class LipschitzStats:
    """Eq. C.1 estimates of softmax(h) over the examples (mean, quantiles, per example), with the
    number of other classes used (``classes_used`` of ``num_classes - 1``) and, when all classes
    were used, ``local_radius_at_eps``: examples where h is right and the local Thm 3.5 radius with
    the estimated one-sided constants is >= eps for ``alpha`` (App. C.3). PGD only finds lower
    bounds of the local constants, so this count is an optimistic estimate, not a certificate."""

    mean: float
    median: float
    p90: float
    max: float
    classes_used: int
    num_classes: int
    local_radius_at_eps: int | None
    values: tuple[float, ...] = field(repr=False, default=())

    def summary(self) -> dict:
        return {key: value for key, value in asdict(self).items() if key != "values"}


@dataclass(frozen=True)
class MarginsResult:
    """Table 1 over ``n_examples``: accuracy and confidence-gap statistics per classifier and input kind, the
    Lemma 3.2 count at ``config.alpha`` and, if asked for, the local Lipschitz estimates of softmax(h)."""

    config: MarginsConfig
    n_examples: int
    stats: dict[str, dict[str, MarginStats]]
    lemma32: tuple[Lemma32Row, ...]
    lipschitz: LipschitzStats | None = None
    models: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        config = config_dict(self.config) | {"n_examples": self.n_examples, "models": self.models}
        return {
            "config": config,
            "table": {
                model: {inputs: stats.summary() for inputs, stats in by_input.items()}
                for model, by_input in self.stats.items()
            },
            "lemma32": [asdict(row) for row in self.lemma32],
            "lipschitz": None if self.lipschitz is None else self.lipschitz.summary(),
            "examples": {
                "rob_gaps": {inputs: list(stats.gaps) for inputs, stats in self.stats["rob"].items()},
                "rob_correct": {inputs: list(stats.correct) for inputs, stats in self.stats["rob"].items()},
                "rob_lipschitz": None if self.lipschitz is None else list(self.lipschitz.values),
            },
        }


def margins(
    std: nn.Module,
    rob: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    config: MarginsConfig = MarginsConfig(),
    *,
    device: torch.device = torch.device("cpu"),
    progress: ProgressFn | None = None,
    models: dict[str, str] | None = None,
    out: str | Path | None = None,
    mixer: AlphaSource | None = None,
) -> MarginsResult:
    """Table 1 for g, h and h_alpha on clean, PGD and min-margin AutoAttack inputs, Lemma 3.2's count at
    ``config.alpha`` and (``config.lipschitz``) eq. C.1 estimates for h. With ``mixer`` (its head set) h_alpha takes its
    alpha from it, and ``config.alpha`` should be its alpha_min (Lemma 3.2 holds for every larger alpha). With ``out``
    each finished batch is saved in ``<out>/parts/`` for a rerun; under torchrun the batches are shared out across
    ranks."""
    if len(x) == 0:
        raise AsmixError("no examples to evaluate")
    mixed = config.mix.classifier(std, rob, config.alpha if mixer is None else mixer).to(device)
    head = [] if mixer is None else [mixer.architecture()]  # the mixer's head is not in its state dict
    parts = out_parts(out, ["margins", asdict(config), models or {}] + head, modules=(mixed,), tensors=(x, y))
    chosen = tuple(model for model in MODELS if model in config.classifiers)
    batches = list(batch_slices(len(x), config.run.batch_size))
    records = run_units(
        batches,
        lambda part: _margins_batch(mixed, chosen, x[part], y[part], part.start, config, device),
        key=batch_key,
        parts=parts,
        finished=ShareProgress(batches, "margins", progress),
    )
    finish(parts)
    merged = {
        model: {inputs: torch.cat([record[f"{model}/{inputs}"] for record in records]) for inputs in config.inputs}
        for model in chosen
    }
    stats = {
        model: {inputs: MarginStats.from_logits(value, y) for inputs, value in by_input.items()}
        for model, by_input in merged.items()
    }
    lipschitz = None
    if config.lipschitz:
        estimate = LipschitzEstimate(
            **{name: torch.cat([record[f"lipschitz/{name}"] for record in records]) for name in LIPSCHITZ_FIELDS},
            num_classes=int(records[0]["lipschitz/num_classes"]),
        )
        lipschitz = _lipschitz_stats(estimate, merged["rob"]["clean"], y, config)
    return MarginsResult(config, len(x), stats, _lemma32_rows(merged, y, config), lipschitz, models or {})


LIPSCHITZ_FIELDS = ("value", "drop", "rise", "classes")


def _margins_batch(
    mixed: MixedClassifier,
    chosen: tuple[str, ...],
    x: torch.Tensor,
    y: torch.Tensor,
    start: int,
    config: MarginsConfig,
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """Logits of each chosen model on the batch's clean and attacked inputs (``{model}/{inputs}``) and, with
    ``config.lipschitz``, h's eq. C.1 estimate (``lipschitz/...``); every attack seeded by (seed, attack, start)."""
    x, y = x.to(device), y.to(device)
    networks = {"std": mixed.std, "rob": mixed.rob, "mixed": mixed}
    pgd = config.threat.pgd()
    record = {}
    for model in chosen:
        network = networks[model]
        inputs = {"clean": x}
        if "pgd" in config.attacks:
            inputs["pgd"] = pgd.perturb(network, x, y, generator=batch_generator(config.run.seed, "pgd", start))
        if "aa" in config.attacks:
            seed = batch_generator(config.run.seed, "apgd", start).initial_seed()
            inputs["autoattack"], _ = min_margin_autoattack(
                network,
                x,
                y,
                eps=config.threat.eps,
                norm=config.threat.norm,
                steps=config.aa_steps,
                target_classes=config.target_classes,
                seed=seed,
            )
        with torch.no_grad():
            record |= {f"{model}/{name}": network(x_in).float().cpu() for name, x_in in inputs.items()}
    if config.lipschitz:
        estimate = local_lipschitz(
            mixed.rob,
            x,
            y,
            eps=config.threat.eps,
            norm=config.threat.norm,
            steps=config.threat.steps,
            step_size=config.threat.step_size,
            classes=config.lipschitz_classes,
            generator=batch_generator(config.run.seed, "lipschitz", start),
        )
        record |= {f"lipschitz/{name}": getattr(estimate, name).cpu() for name in LIPSCHITZ_FIELDS}
        record["lipschitz/num_classes"] = torch.tensor(estimate.num_classes)
    return record


def _lemma32_rows(logits: dict, y: torch.Tensor, config: MarginsConfig) -> tuple[Lemma32Row, ...]:
    """Lemma 3.2 per input kind, plus the per-example worst case over all inputs ("worst")."""
    if config.alpha == 0.0:
        return ()
    threshold = lemma32_threshold(config.alpha)
    rob_map = config.mix.rob_map if config.mix.rob_map is not None else (lambda value: value)
    rob_margins = {inputs: true_class_margin(rob_map(value), y) for inputs, value in logits["rob"].items()}
    mix_correct = {inputs: top_class_correct(value, y) for inputs, value in logits.get("mixed", {}).items()}
    if len(rob_margins) > 1:
        rob_margins["worst"] = torch.stack(list(rob_margins.values())).min(dim=0).values
        if mix_correct:
            mix_correct["worst"] = torch.stack(list(mix_correct.values())).all(dim=0)
    rows = []
    for inputs, margin in rob_margins.items():
        satisfied = satisfies_lemma32(margin, config.alpha) & (margin > 0)
        rows.append(
            Lemma32Row(
                inputs,
                config.alpha,
                threshold,
                int(satisfied.sum()),
                fraction(satisfied),
                fraction(mix_correct[inputs]) if mix_correct else None,
            )
        )
    return tuple(rows)


def _lipschitz_stats(
    estimate: LipschitzEstimate, rob_clean_logits: torch.Tensor, y: torch.Tensor, config: MarginsConfig
) -> LipschitzStats:
    values = estimate.value.cpu()
    num_classes, classes_used = estimate.num_classes, estimate.rise.shape[1]
    certified = None
    if classes_used == num_classes - 1 and config.alpha > 0:
        # App. C.3: local one-sided constants per class in the radius of Thm 3.5; certified at eps
        # where h is correct and the local radius is at least eps.
        rows = torch.arange(len(y))
        constants = torch.zeros(len(y), num_classes)
        constants[rows, y] = estimate.drop.cpu()
        constants[rows[:, None], estimate.classes.cpu()] = estimate.rise.cpu()
        probs = torch.softmax(rob_clean_logits, dim=1)
        radius = lipschitz_radius_per_class(probs, config.alpha, constants.clamp_min(1e-12))
        correct = top_class_correct(probs, y)
        certified = int((correct & (radius >= config.threat.eps)).sum())
    return LipschitzStats(
        mean=values.mean().item(),
        median=values.median().item(),
        p90=values.quantile(0.9).item(),
        max=values.max().item(),
        classes_used=classes_used,
        num_classes=num_classes,
        local_radius_at_eps=certified,
        values=tuple(values.tolist()),
    )
