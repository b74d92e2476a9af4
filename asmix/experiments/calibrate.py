"""``calibrate``: for a target clean accuracy, the fixed alpha (eq. 3.4), the MixedNUTS map and alpha (arXiv
2402.02263) and a trained mixer's evaluation head, from one pass of cached logits. Phases: ``cache_logits`` →
``choose_linear``, ``choose_nuts``, ``choose_mixer`` → ``verify`` (AutoAttack on examples the choice did not see)."""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from asmix.attacks.adaptive import ADAPTIVE_STAGES, LITE_BUDGET, AttackBudget, adaptive_autoattack, lite_budget
from asmix.attacks.autoattack import STANDARD_ATTACKS
from asmix.attacks.margin import min_margin_autoattack
from asmix.attacks.pgd import ThreatModel
from asmix.calibration import (
    CachedLogits,
    FamilyChoice,
    MixChoice,
    MixerHead,
    SearchCache,
    best_alpha,
    calibration_dict,
    family_curve,
)
from asmix.checks import check_finite
from asmix.errors import AsmixError
from asmix.experiments.parts import Parts, ShareProgress, batch_key, fingerprint, finish, run_units
from asmix.experiments.settings import config_dict
from asmix.experiments.train.selection import SCALES, attack_pools, cache_pool, choose_from_caches
from asmix.identity import weights_digest
from asmix.mixing import HEAD_KEYS, MixedClassifier, check_alpha, freeze
from asmix.nuts import CLAMP_BIAS_MAX, POWER_MAX, SCALE_MAX, NutsMap
from asmix.runtime import ProgressFn, RunSettings, batch_slices, predict_logits, stage_reporter

CURVE_POINTS = 200


@dataclass(frozen=True)
class CalibrateConfig:
    """Settings of ``calibrate``. ``target_clean_acc``: the clean accuracy to keep; None chooses it by gain
    (``choose_target``). ``threat.steps`` are the iterations of h's min-margin APGD. Ranges are
    (low, high) of the MixedNUTS grid: s log-spaced, p and c linear, ``grid_size`` values each (the authors'
    CIFAR-10 initial guess and 8 per axis by default). ``from_end``: the examples were the split's last ones, the
    verified ones just before them. ``lite_square_queries``: Square's queries in the mixer family's AutoAttack-lite
    pool (300, as ``train-mixer``'s head choice)."""

    target_clean_acc: float | None = None
    threat: ThreatModel = ThreatModel()
    target_classes: int = 2
    grid_size: int = 8
    scale_range: tuple[float, float] = (0.05, 5.0)
    power_range: tuple[float, float] = (1.0, 4.0)
    clamp_bias_range: tuple[float, float] = (-1.1, 0.0)
    refine: bool = True
    nuts_std_hardmax: bool = True
    range_min_alpha: float = 0.5
    range_max_width: float = 0.2
    lite_square_queries: int = LITE_BUDGET.square_queries
    verify: int = 0
    from_end: bool = False
    square_queries: int = 5000
    run: RunSettings = RunSettings(batch_size=250)

    def __post_init__(self) -> None:
        if (
            self.target_clean_acc is not None
            and not 0.0 < check_finite(self.target_clean_acc, "target clean accuracy") <= 1.0
        ):
            raise AsmixError(f"target clean accuracy must be in (0, 1] (a fraction), got {self.target_clean_acc}")
        if (
            self.grid_size < 1
            or self.threat.steps < 1
            or self.verify < 0
            or min(self.square_queries, self.lite_square_queries) < 1
        ):
            raise AsmixError("grid size, AutoAttack steps and Square queries must be positive, --verify >= 0")
        low, high = self.scale_range
        if not 0 < low <= high:
            raise AsmixError(f"scale range must satisfy 0 < low <= high, got {self.scale_range}")
        if not 1 <= self.power_range[0] <= self.power_range[1]:
            raise AsmixError(f"power range must satisfy 1 <= low <= high, got {self.power_range}")
        if not self.clamp_bias_range[0] <= self.clamp_bias_range[1]:
            raise AsmixError(f"clamp bias range must satisfy low <= high, got {self.clamp_bias_range}")
        check_alpha(self.range_min_alpha)
        if not 0.0 <= check_finite(self.range_max_width, "range max width") <= 1.0:
            raise AsmixError(f"range max width must be in [0, 1], got {self.range_max_width}")


@dataclass(frozen=True)
class MixerInput:
    """A trained mixing network for the mixer family: the network, the folder it was read from, and the logit
    scales of g and h it was trained with (its mixer.json ``training``), which its mix keeps."""

    network: nn.Module
    folder: str
    std_scale: float = 1.0
    rob_scale: float = 1.0

    @classmethod
    def from_card(cls, network: nn.Module, card, folder) -> "MixerInput":
        """The network with the logit scales its ``asmix.mixer.MixerCard`` records (1 and 1 where it has none), and
        its folder absolute, so other working folders find it (``hf:`` kept)."""
        text = str(folder)
        text = text if text.startswith("hf:") else str(Path(text).resolve())
        return cls(network, text, card.std_scale, card.rob_scale)


def load_calibrated_mixer(choice: MixChoice, *, std: str, rob: str, source: str):
    """The mixing network a calibration's mixer family names, with the chosen head set, and its ``MixerCard`` with
    that head (range, bias and logit scales): trained for ``std``/``rob`` and holding the weights (sha256) the
    calibration was made with, or one line."""
    from asmix.mixer import load_mixer
    from asmix.models import canonical_spec

    head = choice.mixer
    try:
        mixer, card = load_mixer(head.folder, std=std, rob=rob, canonical=canonical_spec)
    except AsmixError as error:
        raise AsmixError(f"{source}: {error}") from error
    digest = weights_digest(mixer)
    if digest != head.weights:
        raise AsmixError(
            f"{source}: the mixer in {head.folder} has other weights than the one calibrated (sha256 "
            f"{digest[:12]}..., calibrated {head.weights[:12]}...): calibrate it again"
        )
    mixer.set_head(head.head)
    return mixer, replace(card, head=head.head)


@dataclass(frozen=True)
class Verification:
    """One family's chosen mix measured with AutoAttack on ``n`` examples the choice did not see: standard for
    a fixed alpha, standard then the adaptive stages for a mixer (setting D). ``trail``: the accuracy after each
    stage, in order; ``broken``: how many examples each stage broke that the ones before it left."""

    family: str
    n: int
    clean: float
    autoattack: float
    estimate_clean: float
    estimate_robust: float
    trail: dict[str, float]
    broken: dict[str, int]
    seconds: float


TARGET_LEVELS = 8
"""Clean-accuracy levels, between h's and g's on the calibration examples, at which ``choose_target`` compares
MixedNUTS with the tempered fixed alpha when no mixer and no target are given."""


@dataclass(frozen=True)
class LevelGain:
    """One clean-accuracy level of ``choose_target``'s frontier: the tempered fixed alpha's and MixedNUTS's robust
    estimates there, and MixedNUTS's gain over the tempered one."""

    target: float
    tempered: float
    nuts: float

    @property
    def gain(self) -> float:
        return self.nuts - self.tempered


@dataclass(frozen=True)
class TargetChoice:
    """How the clean-accuracy target was set. ``rule``: "given" (``--target-clean-acc``), "mixer-gain" (the mixer
    head with the largest estimated gain over the tempered fixed alpha of equal clean accuracy, as train-mixer
    chooses; the fixed families are then chosen at its clean accuracy) or "nuts-gain" (the level of ``levels``
    where MixedNUTS gains most over the tempered fixed alpha; ties: the more accurate). ``why``: one sentence."""

    rule: str
    target: float
    why: str
    levels: tuple[LevelGain, ...] = ()

    def to_dict(self) -> dict:
        levels = [asdict(level) | {"gain": level.gain} for level in self.levels]
        return {"rule": self.rule, "target": self.target, "why": self.why, "levels": levels}


def target_levels(cached: CachedLogits, n: int = TARGET_LEVELS) -> list[float]:
    """Up to ``n`` clean accuracies evenly spaced from h's to g's on the cached examples, h's own left out (there
    alpha = 1 serves every family, so nothing can gain), each a multiple of 1/N so a family can meet it exactly."""
    total = len(cached.y)
    std = (cached.std_clean.argmax(1) == cached.y).sum().item()
    rob = (cached.rob_clean.argmax(1) == cached.y).sum().item()
    counts = np.unique(np.round(np.linspace(rob, std, n + 1)).astype(int))
    kept = [int(count) for count in counts if count != rob and count > 0] or [max(std, rob, 1)]
    return [count / total for count in kept]


def choose_target(cached: CachedLogits, config: CalibrateConfig) -> TargetChoice:
    """The target without a mixer, chosen by gain as train-mixer's head choice is: at each level of
    ``target_levels``, the tempered fixed alpha's and MixedNUTS's (grid only) robust estimates; the level where
    MixedNUTS gains most, ties to the more accurate. Dataset-free: the levels come from the pair itself."""
    levels = []
    for level in target_levels(cached):
        at_level = replace(config, target_clean_acc=level, refine=False)
        tempered, _ = choose_tempered(cached, at_level)
        nuts, _ = choose_nuts(cached, at_level)
        levels.append(LevelGain(level, tempered.robust_estimate, nuts.robust_estimate))
    best = max(levels, key=lambda level: (round(level.gain, 12), level.target))
    why = (
        f"no --target-clean-acc: of {len(levels)} clean levels from h's accuracy to g's on these examples, "
        f"MixedNUTS gains most over the tempered fixed alpha at {100 * best.target:.2f}% "
        f"({100 * best.gain:+.2f} points of robust estimate)"
    )
    return TargetChoice("nuts-gain", best.target, why, tuple(levels))


@dataclass(frozen=True)
class CalibrateResult:
    """The choices, their trade-off curves on the calibration examples, and the timing.

    ``timing``: seconds of one forward pass of g and h over the calibration examples, of the min-margin
    attack, of each family's search (which runs no model) and, for the mixer, of its attack pool and of the
    one forward pass of g, h and the mixer over the pool."""

    config: CalibrateConfig
    n_examples: int
    families: dict[str, FamilyChoice]
    curves: dict[str, dict[str, list[float]]]
    base: dict[str, float]
    timing: dict[str, float]
    verification: tuple[Verification, ...] = ()
    models: dict[str, str] = field(default_factory=dict)
    target_choice: TargetChoice | None = None

    def to_dict(self) -> dict:
        config = config_dict(self.config) | {"n_examples": self.n_examples}
        return calibration_dict(
            self.models,
            config,
            self.families,
            {
                "target_choice": None if self.target_choice is None else self.target_choice.to_dict(),
                "base": self.base,
                "timing": self.timing,
                "curves": self.curves,
                "verification": [asdict(v) for v in self.verification],
            },
        )


@contextmanager
def one_thread():
    """Run the search on one intra-op thread: its tensors are N x C, where spreading each op over
    threads costs more than it saves (20x slower on two busy cores, measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def cache_logits(
    std: nn.Module,
    rob: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    config: CalibrateConfig,
    *,
    device: torch.device,
    progress: ProgressFn | None = None,
) -> tuple[CachedLogits, dict[str, float]]:
    """One pass: g's and h's clean logits and h's logits on its min-margin APGD-CE/APGD-T inputs."""
    start = time.perf_counter()
    std_clean = predict_logits(
        std, x, batch_size=config.run.batch_size, device=device, progress=progress, task="clean g"
    )
    rob_clean = predict_logits(
        rob, x, batch_size=config.run.batch_size, device=device, progress=progress, task="clean h"
    )
    forward = time.perf_counter() - start
    attacked = []
    for part in batch_slices(len(x), config.run.batch_size):
        x_adv, _ = min_margin_autoattack(
            rob,
            x[part].to(device),
            y[part].to(device),
            eps=config.threat.eps,
            norm=config.threat.norm,
            steps=config.threat.steps,
            target_classes=config.target_classes,
            seed=config.run.seed + part.start,
        )
        with torch.no_grad():
            attacked.append(rob(x_adv).float().cpu())
        if progress:
            progress("min-margin attack on h", part.stop, len(x))
    attack = time.perf_counter() - start - forward
    cached = CachedLogits(std_clean.double(), rob_clean.double(), torch.cat(attacked).double(), y.cpu())
    return cached, {"forward_g_h": forward, "attack_h": attack}


def _curve(alphas: np.ndarray, clean: np.ndarray, robust: np.ndarray) -> dict[str, list[float]]:
    keep = np.unique(np.linspace(0, len(alphas) - 1, min(CURVE_POINTS, len(alphas))).round().astype(int))
    return {"alpha": alphas[keep].tolist(), "clean": clean[keep].tolist(), "robust_estimate": robust[keep].tolist()}


def choose_linear(cached: CachedLogits, config: CalibrateConfig) -> tuple[FamilyChoice, dict]:
    """The fixed alpha of eq. 3.4 (softmax g, raw h) with the best robust estimate at the target."""
    start = time.perf_counter()
    alphas, clean, robust = family_curve(cached, None, 1.0)
    point, meets = best_alpha(alphas, clean, robust, config.target_clean_acc)
    seconds = time.perf_counter() - start
    return FamilyChoice(
        "linear",
        MixChoice(point.alpha),
        point.clean,
        point.robust_estimate,
        meets,
        seconds,
        {"candidates": int(len(alphas))},
    ), _curve(alphas, clean, robust)


def choose_tempered(
    cached: CachedLogits, config: CalibrateConfig, scales: tuple[tuple[float, float], ...] = SCALES
) -> tuple[FamilyChoice, dict]:
    """The tempered fixed alpha: for each (g, h) logit scale pair of ``scales`` the best alpha at the target (exact,
    as ``choose_linear``), then the pair with the best robust estimate (ties: more accurate, scales nearer 1). The
    baseline with the same freedoms as a mixer's head."""
    start = time.perf_counter()
    results = {}
    for std_scale, rob_scale in scales:
        scaled = CachedLogits(
            cached.std_clean * std_scale, cached.rob_clean * rob_scale, cached.rob_attacked * rob_scale, cached.y
        )
        curve = family_curve(scaled, None, 1.0)
        results[(std_scale, rob_scale)] = (*best_alpha(*curve, config.target_clean_acc), curve)

    def rank(pair: tuple[float, float]) -> tuple:
        point, meets, _ = results[pair]
        return meets, point.robust_estimate if meets else point.clean, point.clean, -abs(pair[0] - 1) - abs(pair[1] - 1)

    (std_scale, rob_scale) = best = max(results, key=rank)
    point, meets, curve = results[best]
    seconds = time.perf_counter() - start
    return FamilyChoice(
        "tempered",
        MixChoice(point.alpha, std_scale=std_scale, rob_scale=rob_scale),
        point.clean,
        point.robust_estimate,
        meets,
        seconds,
        {"candidates": sum(len(alphas) for _, _, (alphas, *_) in results.values()), "scale_pairs": len(scales)},
    ), _curve(*curve)


def grid(config: CalibrateConfig) -> list[tuple[float, float, float]]:
    """The MixedNUTS code's grid: s log-spaced, c and p linear, ``grid_size`` values each."""
    n = config.grid_size
    scales = np.logspace(np.log10(config.scale_range[0]), np.log10(config.scale_range[1]), n)
    powers = np.linspace(*config.power_range, n)
    biases = np.linspace(*config.clamp_bias_range, n)
    return [(float(s), float(p), float(c)) for s in scales for p in powers for c in biases]


def choose_nuts(
    cached: CachedLogits, config: CalibrateConfig, *, progress: ProgressFn | None = None
) -> tuple[FamilyChoice, dict]:
    """MixedNUTS's (s, p, c, alpha): the best grid point, then Nelder-Mead over (log s, p, c) from it on
    the same objective (``asmix.calibration.score``); alpha is exact for each map. The refined point is
    kept only where it scores higher."""
    start = time.perf_counter()
    temperature = 0.0 if config.nuts_std_hardmax else 1.0
    search = SearchCache(cached, temperature)
    candidates = grid(config)
    best = None
    for position, (s, p, c) in enumerate(candidates):
        value, point, meets = search.score(NutsMap(s, p, c), config.target_clean_acc)
        if best is None or value > best[0]:
            best = (value, (s, p, c), point, meets)
        if progress and (position + 1) % 32 == 0 or progress and position + 1 == len(candidates):
            progress("nuts grid", position + 1, len(candidates))
    grid_value, grid_params, _, _ = best
    evaluations = len(candidates)
    if config.refine:
        best, used = _refine(search, config, best)
        evaluations += used
    value, (s, p, c), point, meets = best
    nuts = NutsMap(s, p, c)
    alphas, clean, robust, _ = search.curve(nuts)
    seconds = time.perf_counter() - start
    details = {
        "grid_best": dict(zip(("scale", "power", "clamp_bias"), grid_params)) | {"score": grid_value},
        "refined_score": value,
        "refined": config.refine and value > grid_value,
        "maps_evaluated": evaluations,
    }
    return (
        FamilyChoice(
            "nuts",
            MixChoice(point.alpha, temperature, nuts),
            point.clean,
            point.robust_estimate,
            meets,
            seconds,
            details,
        ),
        _curve(alphas, clean, robust),
    )


def _refine(search: SearchCache, config: CalibrateConfig, best):
    """Nelder-Mead (scipy) over (log s, p, c) from the best grid point; p is held >= 1 by reflection."""
    from scipy.optimize import minimize

    target = config.target_clean_acc
    found = {"best": best, "count": 0}

    def params(v):
        return float(math.exp(v[0])), float(1 + abs(v[1] - 1)), float(v[2])

    def objective(v):
        if not np.all(np.isfinite(v)) or abs(v[0]) > 20 or abs(v[1]) > 50 or abs(v[2]) > 50:
            return 10.0
        s, p, c = params(v)
        if s > SCALE_MAX or p > POWER_MAX or abs(c) > CLAMP_BIAS_MAX:  # a map a calibration file may not hold
            return 10.0
        value, point, meets = search.score(NutsMap(s, p, c), target)
        found["count"] += 1
        if value > found["best"][0]:
            found["best"] = (value, (s, p, c), point, meets)
        return -value

    s0, p0, c0 = best[1]
    n = max(config.grid_size - 1, 1)
    steps = (
        math.log(config.scale_range[1] / config.scale_range[0]) / n or 0.5,
        (config.power_range[1] - config.power_range[0]) / n or 0.25,
        (config.clamp_bias_range[1] - config.clamp_bias_range[0]) / n or 0.1,
    )
    x0 = np.array([math.log(s0), p0, c0])
    simplex = np.stack([x0] + [x0 + np.eye(3)[k] * steps[k] for k in range(3)])
    minimize(
        objective,
        x0,
        method="Nelder-Mead",
        options={"initial_simplex": simplex, "maxfev": 300, "xatol": 1e-3, "fatol": 1e-9},
    )
    return found["best"], found["count"]


def choose_mixer(
    std: nn.Module,
    rob: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    mixer: MixerInput,
    config: CalibrateConfig,
    *,
    device: torch.device,
    progress: ProgressFn | None = None,
) -> tuple[FamilyChoice, dict, dict[str, float]]:
    """The mixer's evaluation head (range and bias) for the target, as train-mixer chooses it
    (``asmix.experiments.train.selection``): AutoAttack-lite through the mixer and through the fixed alpha
    ``range_min_alpha`` pools the attacked inputs, one forward pass of g, h and the mixer caches them, and every
    head of the grid is scored from the cache. Its robust estimate is the share right on the clean input and
    on every pooled input. Returns the choice, the frontier of the candidates, and the seconds of each phase."""
    weights = weights_digest(mixer.network)
    mixed = MixedClassifier(std, rob, mixer.network, std_scale=mixer.std_scale, rob_scale=mixer.rob_scale)
    mixed = mixed.to(device).eval()
    settings = dict(batch_size=config.run.batch_size, device=device)
    start = time.perf_counter()
    pools = attack_pools(
        mixed,
        x,
        y,
        eps=config.threat.eps,
        norm=config.threat.norm,
        min_alpha=config.range_min_alpha,
        max_width=config.range_max_width,
        seed=config.run.seed,
        budget=lite_budget(config.lite_square_queries),
        progress=progress,
        **settings,
    )
    attack = time.perf_counter() - start
    caches = [cache_pool(mixed, points, **settings) for points in pools]
    forward = time.perf_counter() - start - attack
    with one_thread():
        selection = choose_from_caches(
            mixed,
            caches,
            y,
            config.target_clean_acc,
            min_alpha=config.range_min_alpha,
            max_width=config.range_max_width,
        )
    search = time.perf_counter() - start - attack - forward
    best = selection.chosen
    details = {
        "candidates": selection.n_candidates,
        "estimate": "adaptive AutoAttack-lite through the mixer and the fixed alpha range_min_alpha (pooled)",
        "inputs_cached": sum(len(points) for points in pools),
        "tempered_fixed": selection.baseline.to_dict(),
    }
    choice = FamilyChoice(
        "mixer",
        MixChoice(best.head.alpha_min, mixer=MixerHead(mixer.folder, weights, best.head)),
        best.clean_acc,
        best.estimated_attacked_acc,
        selection.met,
        search,
        details,
    )
    return (
        choice,
        _frontier(selection.frontier),
        {"attack_mixer": attack, "forward_mixer": forward, "search_mixer": search},
    )


def _frontier(points) -> dict[str, list[float]]:
    """A frontier of heads (``selection.frontier``) as columns, by clean accuracy."""
    columns = {name: [getattr(c.head, name) for c in points] for name in HEAD_KEYS}
    return columns | {
        "clean": [c.clean_acc for c in points],
        "robust_estimate": [c.estimated_attacked_acc for c in points],
    }


def verify(
    std: nn.Module,
    rob: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    families: dict[str, FamilyChoice],
    config: CalibrateConfig,
    *,
    mixer: MixerInput | None = None,
    device: torch.device,
    progress: ProgressFn | None = None,
    parts_dir: Path | None = None,
) -> tuple[Verification, ...]:
    """AutoAttack end to end on each family's mix, on examples the choice did not see: standard (APGD-CE,
    APGD-T, FAB-T, Square 5000 queries unless ``square_queries``) for a fixed alpha, and for the mixer family
    standard then the adaptive stages (setting D, ``adaptive_autoattack``), with ``mixer``'s network.

    With ``parts_dir`` every finished (family, batch) is saved there at once and reused by a rerun that makes the
    same choices on the same examples, so a killed verification resumes where it stopped."""
    budget = AttackBudget(square_queries=config.square_queries)
    classifiers = {
        name: _family_classifier(std, rob, family.choice, mixer).to(device).eval() for name, family in families.items()
    }
    parts = None
    if parts_dir is not None:
        settings = {"config": config_dict(config), "choices": {name: asdict(f.choice) for name, f in families.items()}}
        modules = [std, rob] + ([mixer.network] if mixer is not None else [])
        parts = Parts(parts_dir, fingerprint(settings, modules=modules, tensors=(x, y)))
    rows = []
    for name, family in families.items():
        mixed = classifiers[name]
        stages = ("clean", *STANDARD_ATTACKS) + (ADAPTIVE_STAGES if mixed.adaptive else ())

        batches = list(batch_slices(len(x), config.run.batch_size))

        def attack(part: slice, mixed=mixed, name=name, batches=batches) -> dict[str, torch.Tensor]:
            start = time.perf_counter()
            where = f"AutoAttack on {name}, batch {batches.index(part) + 1}/{len(batches)}"
            run = adaptive_autoattack(
                mixed,
                x[part].to(device),
                y[part].to(device),
                eps=config.threat.eps,
                norm=config.threat.norm,
                seed=config.run.seed + part.start,
                budget=budget,
                on_stage=stage_reporter(progress, where),
            )
            return {
                "robust": run.robust.cpu(),
                "seconds": torch.tensor(time.perf_counter() - start, dtype=torch.float64),
            }

        records = run_units(
            batches,
            attack,
            key=lambda part, name=name: f"{name}-{batch_key(part)}",
            parts=parts,
            finished=ShareProgress(batches, f"AutoAttack on {name}", progress),
        )
        robust = torch.cat([record["robust"] for record in records])
        counts = robust.sum(0)
        rows.append(
            Verification(
                name,
                len(x),
                robust[:, 0].float().mean().item(),
                robust[:, -1].float().mean().item(),
                family.clean,
                family.robust_estimate,
                {stage: robust[:, k].float().mean().item() for k, stage in enumerate(stages)},
                {stage: int(counts[k - 1] - counts[k]) for k, stage in enumerate(stages) if k > 0},
                sum(record["seconds"].item() for record in records),
            )
        )
    finish(parts)
    return tuple(rows)


def _family_classifier(std: nn.Module, rob: nn.Module, choice: MixChoice, mixer: MixerInput | None) -> MixedClassifier:
    """The mix a family's choice names: the mixer with the chosen head, or a fixed alpha with g's temperature and
    h's map."""
    if choice.mixer is None:
        std_scale, rob_scale = choice.scales
        return MixedClassifier(
            std,
            rob,
            choice.alpha,
            std_temperature=choice.std_temperature,
            rob_map=choice.rob_map,
            std_scale=std_scale,
            rob_scale=rob_scale,
        )
    if mixer is None:
        raise AsmixError("verifying the mixer family needs its mixing network")
    head = choice.mixer.head
    mixer.network.set_head(head)
    return MixedClassifier(std, rob, mixer.network, std_scale=head.std_scale, rob_scale=head.rob_scale)


def calibrate(
    std: nn.Module,
    rob: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    config: CalibrateConfig = CalibrateConfig(),
    *,
    x_verify: torch.Tensor | None = None,
    y_verify: torch.Tensor | None = None,
    mixer: MixerInput | None = None,
    device: torch.device = torch.device("cpu"),
    progress: ProgressFn | None = None,
    models: dict[str, str] | None = None,
    parts_dir: Path | None = None,
) -> CalibrateResult:
    """Choose each family's mix for ``config.target_clean_acc`` on (x, y) (the mixer family given ``mixer``);
    with ``x_verify`` (examples not in x), measure each choice with AutoAttack (resumable in ``parts_dir``)."""
    if len(x) == 0:
        raise AsmixError("no calibration examples")
    std, rob = freeze(std).to(device), freeze(rob).to(device)
    cached, timing = cache_logits(std, rob, x, y, config, device=device, progress=progress)
    families, curves = {}, {}
    if mixer is not None:  # first: without a target, the mixer's head sets it
        families["mixer"], curves["mixer"], mixer_timing = choose_mixer(
            std, rob, x, y, mixer, config, device=device, progress=progress
        )
        timing |= mixer_timing
    target_choice = _target_choice(cached, config, families.get("mixer"))
    config = replace(config, target_clean_acc=target_choice.target)
    with one_thread():
        linear, linear_curve = choose_linear(cached, config)
        tempered, tempered_curve = choose_tempered(cached, config)
        nuts, nuts_curve = choose_nuts(cached, config, progress=progress)
    timing |= {"search_linear": linear.seconds, "search_tempered": tempered.seconds, "search_nuts": nuts.seconds}
    y_cpu = cached.y
    h_attacked = (cached.rob_attacked.argmax(1) == y_cpu).double().mean().item()
    base = {
        "std_clean": (cached.std_clean.argmax(1) == y_cpu).double().mean().item(),
        "rob_clean": (cached.rob_clean.argmax(1) == y_cpu).double().mean().item(),
        "rob_attacked": h_attacked,
    }
    families = {"linear": linear, "tempered": tempered, "nuts": nuts} | families
    curves = {"linear": linear_curve, "tempered": tempered_curve, "nuts": nuts_curve} | curves
    verification = ()
    if x_verify is not None and len(x_verify):
        verification = verify(
            std,
            rob,
            x_verify,
            y_verify,
            families,
            config,
            mixer=mixer,
            device=device,
            progress=progress,
            parts_dir=parts_dir,
        )
    return CalibrateResult(config, len(x), families, curves, base, timing, verification, models or {}, target_choice)


def _target_choice(cached: CachedLogits, config: CalibrateConfig, mixer: FamilyChoice | None) -> TargetChoice:
    """The target as given, else the mixer's chosen clean accuracy (gain rule), else ``choose_target``'s."""
    if config.target_clean_acc is not None:
        return TargetChoice("given", config.target_clean_acc, "--target-clean-acc")
    if mixer is not None:
        gain = 100 * (mixer.robust_estimate - mixer.details["tempered_fixed"]["estimated_attacked_acc"])
        why = (
            f"no --target-clean-acc: the mixer head with the largest estimated gain over the tempered fixed alpha "
            f"of equal clean accuracy ({gain:+.2f} points) keeps {100 * mixer.clean:.2f}% clean; the fixed families "
            "are chosen at that accuracy"
        )
        return TargetChoice("mixer-gain", mixer.clean, why)
    with one_thread():
        return choose_target(cached, config)
