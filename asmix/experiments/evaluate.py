"""Robustness of the mixed classifier (Tables 2/3): clean, PGD white-box (B) and gray-box (A), transfer from g or h
(Section 5.1.1), AutoAttack (C) and adaptive AutoAttack (D), with g and h alone as baseline rows, and a mixing
network's detector profile. Each batch is seeded by (seed, attack, model, batch start) and is a unit of
``asmix.experiments.parts`` (resume, torchrun)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch
from torch import nn

from asmix import distributed
from asmix.attacks.adaptive import (
    ADAPTIVE_STAGES,
    DEFAULT_ALPHA_WEIGHT,
    LITE_BUDGET,
    AttackBudget,
    adaptive_autoattack,
    lite_budget,
)
from asmix.attacks.autoattack import (
    SQUARE_QUERIES,
    STANDARD_ATTACKS,
    AutoAttackRun,
    accuracy_trail,
    potentially_unreliable,
    standard_autoattack,
)
from asmix.attacks.margin import true_class_margin
from asmix.attacks.objectives import graybox_objective
from asmix.attacks.pgd import AllIteratesCorrect, ThreatModel, cross_entropy_objective
from asmix.checks import check_choice, check_choices, check_finite
from asmix.errors import AsmixError
from asmix.experiments.detector import (
    CLEAN,
    PGD_POINTS,
    DetectorProfile,
    MixerScores,
    batch_scores,
    profile_from_record,
    scores_record,
)
from asmix.experiments.parts import Parts, ShareProgress, batch_key, fingerprint, finish, run_units
from asmix.experiments.settings import config_dict
from asmix.io import atomic_write, check_writable_file
from asmix.mixing import AlphaSource, MixedClassifier, MixSettings, alpha_per_example, check_alpha
from asmix.runtime import (
    ProgressFn,
    RunSettings,
    StageFn,
    batch_generator,
    batch_slices,
    fraction,
    no_stage,
    stage_reporter,
    top_class_correct,
)

EvalAttack = Literal["clean", "pgd", "pgd-graybox", "transfer-std", "transfer-rob", "aa", "aa-adaptive"]
"""Evaluation columns: clean, B (white-box PGD), A (gray-box PGD), transfer from g / h, C, D."""
ATTACKS: tuple[EvalAttack, ...] = get_args(EvalAttack)

DetectorBudget = Literal["lite", "full", "off"]
"""The detector profile's own attacks (APGD-CE, APGD-T, alpha-first, Square, alpha term included): the lite budget,
adaptive AutoAttack's, or no profile."""

AUTOATTACKS = ("aa", "aa-adaptive")
MODELS = ("mixed", "std", "rob")
"""Row keys: the mixed classifier h_alpha, then g and h alone (with ``bases``)."""

EXAMPLE_SUFFIXES = (".npz", ".pt")


def parse_attacks(text: str) -> tuple[str, ...]:
    """``clean,pgd,aa`` → the attacks in that order, checked against ``ATTACKS``."""
    attacks = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    if not attacks:
        raise AsmixError(f"no attacks in {text!r}: choose from {', '.join(ATTACKS)}")
    return check_choices(attacks, EvalAttack, "attack")


@dataclass(frozen=True)
class EvalConfig:
    """Settings of ``asmix evaluate``; every CLI option that changes the numbers is a field here or in a block.

    ``alpha`` is the fixed mixing weight used when no mixing network is given; ``threat`` holds the PGD attacks'
    steps and step size (PGD-20 in the paper); ``alpha_weight`` is the w of the adaptive attacks' loss
    (1 - w) * loss + w * BCE(alpha logit, 1) (setting D); ``square_queries`` below the standard 5000 gives a
    quicker, weaker AutoAttack; ``detector_budget`` is the budget of a mixing network's detector profile.
    """

    attacks: tuple[EvalAttack, ...] = ATTACKS
    bases: bool = False
    alpha: float = 0.5
    threat: ThreatModel = ThreatModel()
    mix: MixSettings = MixSettings()
    run: RunSettings = RunSettings(batch_size=100)
    alpha_weight: float = DEFAULT_ALPHA_WEIGHT
    square_queries: int = SQUARE_QUERIES
    save_adv: bool = False
    detector_budget: DetectorBudget = "lite"

    def __post_init__(self) -> None:
        check_choices(self.attacks, EvalAttack, "attack")
        check_choice(self.detector_budget, DetectorBudget, "detector budget")
        if not self.attacks:
            raise AsmixError(f"no attacks given: choose from {', '.join(ATTACKS)}")
        check_alpha(self.alpha)
        if not 0.0 <= check_finite(self.alpha_weight, "alpha weight") <= 1.0:
            raise AsmixError(f"alpha weight must be in [0, 1], got {self.alpha_weight}")
        if self.square_queries <= 0:
            raise AsmixError(f"square queries must be positive, got {self.square_queries}")

    @property
    def adaptive_budget(self) -> AttackBudget:
        """Adaptive AutoAttack's budget: AutoAttack's iterations, ``square_queries`` and ``alpha_weight``."""
        return AttackBudget(square_queries=self.square_queries, alpha_weight=self.alpha_weight)

    @property
    def detector_attack_budget(self) -> AttackBudget | None:
        """The detector profile's attacks: ``lite`` is the mixer-choosing budget (25 APGD steps, 3 targets) with
        Square's queries capped at ``square_queries``, ``full`` is ``adaptive_budget``; None for ``off``."""
        if self.detector_budget == "off":
            return None
        if self.detector_budget == "full":
            return self.adaptive_budget
        queries = min(LITE_BUDGET.square_queries, self.square_queries)
        return replace(lite_budget(queries), alpha_weight=self.alpha_weight)


@dataclass(frozen=True)
class AttackAccuracy:
    """One cell of the table: accuracy under one attack (fraction) and the mean alpha on the attacked
    inputs; for AutoAttack also the accuracy after each of its attacks, the mean alpha at the points each
    attack returned (``trail_alpha``) and the unreliable flag."""

    accuracy: float
    mean_alpha: float
    trail: dict[str, float] | None = None
    unreliable: bool | None = None
    trail_alpha: dict[str, float] | None = None


@dataclass(frozen=True)
class EvalResult:
    """Table 2/3 for one (g, h, alpha) setting: ``rows[model][attack]``; ``detector``, a mixing network's detector
    profile (None at a fixed alpha or with ``detector_budget`` off); ``examples`` holds the per-example arrays (see
    ``evaluate``), kept out of ``to_dict``."""

    config: EvalConfig
    n_examples: int
    rows: dict[str, dict[str, AttackAccuracy]]
    models: dict[str, str] = field(default_factory=dict)
    adaptive: bool = False
    examples: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    detector: DetectorProfile | None = None

    def to_dict(self) -> dict:
        config = config_dict(self.config) | {
            "n_examples": self.n_examples,
            "models": self.models,
            "adaptive": self.adaptive,
        }
        rows = {model: {attack: asdict(cell) for attack, cell in cells.items()} for model, cells in self.rows.items()}
        document = {"config": config, "rows": rows}
        if self.detector is not None:
            document["detector_profile"] = self.detector.to_dict()
        return document

    def accuracy(self, model: str, attack: str) -> float:
        return self.rows[model][attack].accuracy


def evaluate(
    std: nn.Module,
    rob: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    config: EvalConfig = EvalConfig(),
    *,
    mixer: AlphaSource | None = None,
    device: torch.device = torch.device("cpu"),
    progress: ProgressFn | None = None,
    models: dict[str, str] | None = None,
    out: str | Path | None = None,
) -> EvalResult:
    """Accuracy of h_alpha (and, with ``config.bases``, of g and h) clean and under each attack; ``mixer`` (an
    ``AlphaSource``) makes alpha adaptive, else ``config.alpha`` is used.

    ``result.examples`` holds per example, for each (model, attack), ``{model}/{attack}/correct``, ``/alpha``,
    ``/margin`` (true-class probability minus the largest other), ``/robust`` for AutoAttack (flags after each attack)
    and ``/x_adv`` with ``config.save_adv``; with a mixer, ``detector/{points}/alpha_logit`` and ``/alpha`` for each
    kind of point of the detector profile (``asmix.experiments.detector``; the clean and pgd columns' points and
    forward passes serve its clean and PGD rows). With ``out`` (``.npz`` or ``.pt``) the run is resumable and rank 0
    writes the arrays there."""
    if len(x) == 0:
        raise AsmixError("no examples to evaluate")
    if len(x) != len(y):
        raise AsmixError(f"{len(x)} inputs but {len(y)} labels")
    out_path = check_out_path(out) if out is not None else None
    mixed = config.mix.classifier(std, rob, mixer if mixer is not None else config.alpha).to(device).eval()
    parts = None
    if out_path:
        parts = Parts(out_path.with_name(out_path.name + ".parts"), _fingerprint(config, x, y, mixed, models or {}))
    batches = list(batch_slices(len(x), config.run.batch_size))
    count = ShareProgress(batches, "evaluate", progress)
    records = run_units(
        batches,
        lambda part: _evaluate_batch(
            mixed, x[part], y[part], part.start, config, device, _batch_stages(progress, part, batches)
        ),
        key=batch_key,
        parts=parts,
        finished=count,
    )
    examples = {key: torch.cat([record[key] for record in records]) for key in records[0]}
    examples["y"] = y.cpu().clone()
    result = _summarize(examples, config, len(x), models or {}, mixed.adaptive)
    if out_path and distributed.is_main_process():
        save_examples(result, out_path)
    finish(parts)
    return result


def check_out_path(out: str | Path) -> Path:
    """Per-example results go to a writable ``.npz`` or ``.pt`` file (with its ``.parts`` folder beside it)."""
    out = Path(out)
    if out.suffix not in EXAMPLE_SUFFIXES:
        raise AsmixError(f"--out must end in .npz or .pt (per-example results), got {str(out)!r}")
    if out.is_dir():
        raise AsmixError(f"--out {str(out)!r} is a folder; give a .npz or .pt file name")
    return check_writable_file(out)


def save_examples(result: EvalResult, path: str | Path) -> Path:
    """Write ``result.examples`` (plus the config as JSON) to ``.npz`` or ``.pt``, atomically."""
    path = check_out_path(path)
    meta = json.dumps(result.to_dict())
    if path.suffix == ".pt":
        payload = dict(result.examples) | {"result_json": meta}
        return atomic_write(path, lambda temporary: torch.save(payload, temporary))
    arrays = {key: value.numpy() for key, value in result.examples.items()} | {"result_json": np.array(meta)}

    def write(temporary: Path) -> None:
        with open(temporary, "wb") as handle:
            np.savez_compressed(handle, **arrays)

    return atomic_write(path, write)


def load_examples(path: str | Path) -> dict[str, torch.Tensor]:
    """Per-example arrays written by ``save_examples`` (``result_json`` left out)."""
    path = Path(path)
    if not path.is_file():
        raise AsmixError(f"no per-example results at {str(path)!r}")
    if path.suffix == ".pt":
        data = torch.load(path, weights_only=True)
        return {key: value for key, value in data.items() if key != "result_json"}
    with np.load(path, allow_pickle=False) as data:
        return {key: torch.from_numpy(data[key]) for key in data.files if key != "result_json"}


def _batch_stages(progress: ProgressFn | None, part: slice, batches: list[slice]) -> Callable[[str], StageFn]:
    """Per row and attack, the stage reporter of one batch: ``evaluate batch 2/3, mixed aa-adaptive: ...``."""
    where = f"evaluate batch {batches.index(part) + 1}/{len(batches)}"
    return lambda row: stage_reporter(progress, f"{where}, {row}")


def _evaluate_batch(
    mixed: MixedClassifier,
    x: torch.Tensor,
    y: torch.Tensor,
    start: int,
    config: EvalConfig,
    device: torch.device,
    stages: Callable[[str], StageFn] = lambda row: no_stage,
) -> dict[str, torch.Tensor]:
    """Every requested (model, attack) on one batch, then a mixer's detector profile points; every attack seeded by
    (seed, attack, model, start); ``stages(row)`` reports where AutoAttack is inside the batch."""
    x, y = x.to(device), y.to(device)
    targets = {"mixed": mixed} | ({"std": mixed.std, "rob": mixed.rob} if config.bases else {})
    pgd = config.threat.pgd()
    crafted: dict[str, torch.Tensor] = {}

    def craft(source: str) -> torch.Tensor:
        """PGD crafted on ``source`` (a row name, or ``mixed-graybox``); shared by every row that needs it."""
        if source == "mixed-graybox" and not mixed.adaptive:
            source = "mixed"
        if source not in crafted:
            if source == "mixed-graybox":
                model, objective = mixed, graybox_objective
            else:
                model, objective = {"mixed": mixed, "std": mixed.std, "rob": mixed.rob}[source], cross_entropy_objective
            crafted[source] = pgd.perturb(
                model, x, y, generator=batch_generator(config.run.seed, "pgd", source, start), objective=objective
            )
        return crafted[source]

    transferred: dict[str, dict[str, torch.Tensor]] = {}

    def transfer(source: str, row: str) -> torch.Tensor:
        """PGD crafted on g or h alone; for each row the first iterate that breaks it, else the last (a point is
        broken if any iterate breaks it). The path goes on past the source's own break."""
        if source not in transferred:
            model = mixed.std if source == "std" else mixed.rob
            names = list(targets)

            def judge(x_t: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
                """Every row's logits at an iterate: a fixed-alpha mix from g's and h's logits (the source's are
                known, so one forward of the other model); a mixer needs both models' features (one pass)."""
                if mixed.adaptive:
                    parts = mixed.parts(x_t)
                    rows = {"std": parts.std_logits, "rob": parts.rob_logits, "mixed": mixed.mix_parts(parts)}
                else:
                    std_logits, rob_logits = mixed.base_logits(x_t, source, logits)
                    rows = {
                        "std": std_logits,
                        "rob": rob_logits,
                        "mixed": mixed.mix(std_logits, rob_logits, mixed.alpha),
                    }
                return torch.stack([rows[row_name].float() for row_name in names])

            tracker = AllIteratesCorrect(judge, y)
            replace(pgd, stop_at_break=False).perturb(
                model, x, y, generator=batch_generator(config.run.seed, "pgd", source, start), on_iterate=tracker
            )
            transferred[source] = dict(zip(names, tracker.points))
        return transferred[source][row]

    record = {"index": torch.arange(start, start + len(x))}
    scored: dict[str, MixerScores] = {}  # the mixer at the clean and PGD points, for the detector profile
    for name, model in targets.items():
        runs: dict[str, AutoAttackRun] = {}
        for attack in config.attacks:
            robust = None
            if attack == "clean":
                x_adv = x
            elif attack == "pgd":
                x_adv = craft(name)
            elif attack == "pgd-graybox":
                x_adv = craft("mixed-graybox" if name == "mixed" else name)
            elif attack in ("transfer-std", "transfer-rob"):
                x_adv = transfer(attack.removeprefix("transfer-"), name)
            else:
                aa_seed = batch_generator(config.run.seed, "aa", name, start).initial_seed()
                threat = dict(eps=config.threat.eps, norm=config.threat.norm, seed=aa_seed)
                if "aa" not in runs:
                    runs["aa"] = standard_autoattack(
                        model, x, y, square_queries=config.square_queries, on_stage=stages(f"{name} aa"), **threat
                    )
                if attack == "aa-adaptive" and name == "mixed" and mixed.adaptive:
                    runs[attack] = adaptive_autoattack(
                        model,
                        x,
                        y,
                        budget=config.adaptive_budget,
                        standard=runs["aa"],
                        on_stage=stages(f"{name} aa-adaptive"),
                        **threat,
                    )
                elif attack == "aa-adaptive":
                    runs[attack] = _with_skipped_stages(runs["aa"])
                x_adv, robust = runs[attack].x_adv, runs[attack].robust
                record[f"{name}/{attack}/stage_alpha"] = runs[attack].alpha.float()
            with torch.no_grad():
                logits, alpha, alpha_logit = _logits_and_alpha(name, model, x_adv)
            if alpha_logit is not None and attack in (CLEAN, PGD_POINTS):
                scored[attack] = MixerScores(alpha_logit.float().cpu(), alpha.float().cpu())
            key = f"{name}/{attack}"
            correct = top_class_correct(logits, y)
            if robust is not None:
                record[f"{key}/robust"] = robust
                correct = robust[:, -1].to(device)
            record[f"{key}/correct"] = correct.cpu()
            record[f"{key}/alpha"] = alpha.float().cpu()
            record[f"{key}/margin"] = true_class_margin(logits, y).cpu()
            if config.save_adv and attack != "clean":
                record[f"{key}/x_adv"] = x_adv.detach().float().cpu()
    if mixed.adaptive and config.detector_attack_budget is not None:
        record |= _detector_record(mixed, x, y, start, config, scored)
    return record


def _detector_record(
    mixed: MixedClassifier,
    x: torch.Tensor,
    y: torch.Tensor,
    start: int,
    config: EvalConfig,
    scored: dict[str, MixerScores],
) -> dict[str, torch.Tensor]:
    """The mixer logit and alpha at each kind of detector-profile point of one batch; ``scored`` holds those the
    clean and pgd columns computed (the same points: ``craft_points`` seeds PGD as ``craft`` does)."""
    threat, budget, seed = config.threat, config.detector_attack_budget, config.run.seed
    settings = dict(eps=threat.eps, norm=threat.norm, budget=budget, seed=seed, start=start, pgd=threat.pgd())
    return scores_record(batch_scores(mixed, x, y, **settings, known=scored))


def _with_skipped_stages(run: AutoAttackRun) -> AutoAttackRun:
    """A standard run extended by adaptive stages that had nothing to attack (fixed alpha): same flags."""
    n, extra = len(run.robust), len(ADAPTIVE_STAGES)
    robust = torch.cat((run.robust, run.robust[:, -1:].expand(n, extra)), 1)
    alpha = torch.cat((run.alpha, torch.full((n, extra), float("nan"))), 1)
    return AutoAttackRun(run.x_adv, robust, (*run.stages, *ADAPTIVE_STAGES), alpha)


def _logits_and_alpha(
    name: str, model: nn.Module, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Logits, the alpha in effect (the mix's own, or 0 for g alone and 1 for h alone) and a mixing network's logit
    (None without one), from one forward pass."""
    if name == "mixed":
        parts = model.parts(x)
        logits = model.mix_parts(parts)
        return logits, alpha_per_example(parts.alpha, len(x), logits), parts.alpha_logit
    logits = model(x)
    return logits, torch.full((len(x),), 0.0 if name == "std" else 1.0, device=logits.device), None


def _summarize(
    examples: dict[str, torch.Tensor], config: EvalConfig, n: int, models: dict[str, str], adaptive: bool
) -> EvalResult:
    rows: dict[str, dict[str, AttackAccuracy]] = {}
    for name in MODELS:
        if f"{name}/{config.attacks[0]}/correct" not in examples:
            continue
        cells = {}
        for attack in config.attacks:
            key = f"{name}/{attack}"
            trail = unreliable = trail_alpha = None
            if attack in AUTOATTACKS:
                stages = ("clean", *STANDARD_ATTACKS) + (ADAPTIVE_STAGES if attack == "aa-adaptive" else ())
                trail = accuracy_trail(examples[f"{key}/robust"], stages)
                unreliable = potentially_unreliable(trail)
                run = AutoAttackRun(
                    examples[f"{key}/robust"], examples[f"{key}/robust"], stages, examples[f"{key}/stage_alpha"]
                )
                trail_alpha = run.mean_alpha
            cells[attack] = AttackAccuracy(
                fraction(examples[f"{key}/correct"]),
                examples[f"{key}/alpha"].mean().item(),
                trail,
                unreliable,
                trail_alpha,
            )
        rows[name] = cells
    return EvalResult(config, n, rows, models, adaptive, examples, profile_from_record(examples))


def _fingerprint(config: EvalConfig, x: torch.Tensor, y: torch.Tensor, mixed: nn.Module, models: dict[str, str]) -> str:
    """What a batch's numbers depend on: settings, model names, every weight (g, h and the mixer), the mixer's
    evaluation head (range, bias, scale: not weights, so not in the state dict) and the data."""
    head = mixed.alpha_source.architecture() if mixed.adaptive else None
    return fingerprint([asdict(config), models, head], modules=(mixed,), tensors=(x, y))
