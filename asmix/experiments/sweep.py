"""Fixed-alpha sweep (Figure 4) and the clean-vs-attacked trade-off curve (Figure 5). Base logits on clean inputs and
on every iterate of the STD and ROB attacks are mixed for every alpha without another forward pass; only the MIX
attack runs per alpha. Units of work are ``asmix.experiments.parts``'s: resumable and shared out under torchrun."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal, get_args

import torch
from torch import nn

from asmix.attacks.pgd import PGD, AllIteratesCorrect, ThreatModel
from asmix.checks import check_finite
from asmix.errors import AsmixError
from asmix.experiments.parts import ShareProgress, batch_key, example_count, finish, out_parts, run_units
from asmix.experiments.settings import config_dict
from asmix.mixing import MixedClassifier, MixSettings, alpha_grid, check_alpha
from asmix.runtime import ProgressFn, RunSettings, accuracy, batch_generator, batch_slices, fraction

SweepAttack = Literal["std", "rob", "mix"]
"""PGD crafted on g (STD), on h (ROB) or on h_alpha end to end (MIX)."""
ATTACKS: tuple[SweepAttack, ...] = get_args(SweepAttack)
ATTACK_NAMES: dict[str, SweepAttack] = {"transfer-std": "std", "transfer-rob": "rob", "pgd": "mix"}
"""The attacks as ``evaluate`` names them (shown in help and read everywhere); the short names stay the keys of
results (``std_attack`` ...) and are still read."""


def parse_alphas(text: str) -> tuple[float, ...]:
    """``0,0.5,1`` (a list) or ``0:1:0.05`` (start:stop:step, stop included) → sorted unique alphas."""
    text = text.strip()
    try:
        if ":" in text:
            start, stop, step = (check_finite(part, "alpha range bound") for part in text.split(":"))
            values = list(alpha_grid(start, stop, step))
        else:
            values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise AsmixError(f"cannot read alphas {text!r}: use a list like 0,0.5,1 or a range like 0:1:0.05") from error
    if not values:
        raise AsmixError(f"no alphas in {text!r}")
    return tuple(sorted({check_alpha(value) for value in values}))


@dataclass(frozen=True)
class SweepConfig:
    """Settings of a fixed-alpha sweep; every CLI option of ``sweep-alpha`` is a field here or in a block."""

    alphas: tuple[float, ...] = field(default_factory=lambda: alpha_grid(0.0, 1.0, 0.05))
    attacks: tuple[SweepAttack, ...] = ATTACKS
    threat: ThreatModel = ThreatModel()
    mix: MixSettings = MixSettings()
    run: RunSettings = RunSettings(batch_size=256)

    def __post_init__(self) -> None:
        unknown = [name for name in self.attacks if name not in ATTACK_NAMES and name not in ATTACKS]
        if unknown:
            raise AsmixError(f"unknown attack(s) {', '.join(unknown)}: choose from {', '.join(ATTACK_NAMES)}")
        object.__setattr__(self, "attacks", tuple(ATTACK_NAMES.get(name, name) for name in self.attacks))
        for alpha in self.alphas:
            check_alpha(alpha)


@dataclass(frozen=True)
class BaseAccuracy:
    """Accuracy of one base model alone (fractions); ``None`` where the attack was not run."""

    clean: float
    std_attack: float | None
    rob_attack: float | None


@dataclass(frozen=True)
class SweepRow:
    """Accuracy of h_alpha at one alpha: clean and under the STD, ROB and MIX attacks."""

    alpha: float
    clean: float
    std_attack: float | None
    rob_attack: float | None
    mix_attack: float | None


@dataclass(frozen=True)
class SweepResult:
    """A fixed-alpha sweep over ``n_examples``: g's and h's accuracy alone (``base``) and h_alpha's clean and
    under the STD, ROB and MIX attacks per alpha (``rows``), all fractions."""

    config: SweepConfig
    n_examples: int
    base: dict[str, BaseAccuracy]
    rows: tuple[SweepRow, ...]
    models: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        config = config_dict(self.config) | {"n_examples": self.n_examples, "models": self.models}
        return {
            "config": config,
            "base": {name: asdict(base) for name, base in self.base.items()},
            "rows": [asdict(row) for row in self.rows],
        }


def sweep_alpha(
    std: nn.Module,
    rob: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    config: SweepConfig = SweepConfig(),
    *,
    device: torch.device = torch.device("cpu"),
    progress: ProgressFn | None = None,
    models: dict[str, str] | None = None,
    out: str | Path | None = None,
) -> SweepResult:
    """Accuracy of g, h and h_alpha for each alpha, clean and under PGD crafted on g, h and h_alpha.

    The work is one base unit per batch (clean logits, STD and ROB attacks) and one MIX unit per (alpha, batch);
    with ``out`` (the command's folder) each finished unit is saved in ``<out>/parts/`` and reused by a rerun
    with the same settings; under torchrun the units are shared out across ranks.
    """
    if len(x) == 0:
        raise AsmixError("no examples to evaluate")
    mixed = config.mix.classifier(std, rob).to(device)
    parts = out_parts(out, ["sweep-alpha", asdict(config), models or {}], modules=(mixed,), tensors=(x, y))
    batches = list(batch_slices(len(x), config.run.batch_size))
    base_attacks = tuple(name for name in ("std", "rob") if name in config.attacks)
    mix_alphas = tuple(
        alpha
        for alpha in config.alphas
        if "mix" in config.attacks and _same_as_base_attack(alpha, config) not in base_attacks
    )
    units = [_Unit("base", part) for part in batches] + [
        _Unit("mix", part, alpha) for alpha in mix_alphas for part in batches
    ]

    def compute(unit: _Unit) -> dict[str, torch.Tensor]:
        x_batch, y_batch = x[unit.part].to(device), y[unit.part].to(device)
        if unit.kind == "mix":
            target = mixed.with_alpha(unit.alpha)
            return {
                "mix": _robust_flags(
                    config.threat.pgd(), target, _own_logits, x_batch, y_batch, unit.part.start, config
                )[0]
            }
        with torch.no_grad():
            record = {"clean/std": mixed.std(x_batch).float().cpu(), "clean/rob": mixed.rob(x_batch).float().cpu()}
        transfer = replace(config.threat.pgd(), stop_at_break=False)  # the path goes on; each judge keeps its own count
        for name in base_attacks:
            source = mixed.std if name == "std" else mixed.rob
            record[f"{name}/robust"] = _robust_flags(
                transfer, source, _base_judge(mixed, name, config.alphas), x_batch, y_batch, unit.part.start, config
            ).T.contiguous()  # (n, J): a part's rows are its examples
        return record

    shown = ShareProgress(
        units,
        lambda unit: "MIX attack" if unit.kind == "mix" else "base logits and attacks",
        progress,
        size=_Unit.size,
    )
    records = run_units(units, compute, key=_Unit.key, parts=parts, finished=shown, size=_Unit.size)
    n = len(batches)
    clean = tuple(torch.cat([record[f"clean/{model}"] for record in records[:n]]) for model in ("std", "rob"))
    # per base attack, (2 + len(alphas), N): g, h and each h_alpha classified every iterate correctly
    robust = {name: torch.cat([record[f"{name}/robust"] for record in records[:n]]).T for name in base_attacks}
    mix_robust = {
        alpha: torch.cat([record["mix"] for record in records[n * (1 + index) : n * (2 + index)]])
        for index, alpha in enumerate(mix_alphas)
    }
    finish(parts)

    def base_accuracy(index: int) -> BaseAccuracy:
        return BaseAccuracy(
            clean=accuracy(clean[index], y),
            std_attack=fraction(robust["std"][index]) if "std" in robust else None,
            rob_attack=fraction(robust["rob"][index]) if "rob" in robust else None,
        )

    rows = []
    for position, alpha in enumerate(config.alphas):

        def mixed_accuracy(name: str, position: int = position) -> float | None:
            return fraction(robust[name][2 + position]) if name in robust else None

        mix_attack = None
        if alpha in mix_robust:
            mix_attack = fraction(mix_robust[alpha])
        elif "mix" in config.attacks:
            mix_attack = mixed_accuracy(_same_as_base_attack(alpha, config))
        rows.append(
            SweepRow(
                alpha,
                accuracy(mixed.mix(*clean, alpha), y),
                mixed_accuracy("std"),
                mixed_accuracy("rob"),
                mix_attack,
            )
        )
    return SweepResult(config, len(x), {"std": base_accuracy(0), "rob": base_accuracy(1)}, tuple(rows), models or {})


@dataclass(frozen=True)
class _Unit:
    """One part of a sweep: the base logits and attacks of a batch, or the MIX attack at ``alpha`` on it."""

    kind: str
    part: slice
    alpha: float | None = None

    def key(self) -> str:
        return batch_key(self.part) if self.kind == "base" else f"mix-alpha{self.alpha!r}-{batch_key(self.part)}"

    def size(self) -> int:
        return example_count(self.part)


def _same_as_base_attack(alpha: float, config: SweepConfig) -> str | None:
    """At alpha 0 (1) with unit logit scale, h_alpha's cross-entropy equals g's (h's), so the MIX
    attack is the STD (ROB) attack: all attacks share per-batch random starts, so reuse it."""
    if alpha == 0.0 and config.mix.std_scale == 1.0 and config.mix.std_temperature == 1.0:
        return "std"
    if alpha == 1.0 and config.mix.rob_scale == 1.0 and config.mix.rob_map is None:
        return "rob"
    return None


def _robust_flags(
    pgd: PGD, source: nn.Module, judge, x: torch.Tensor, y: torch.Tensor, start: int, config: SweepConfig
) -> torch.Tensor:
    """PGD crafted on ``source`` for the batch at ``start``; per judged classifier and example, whether it
    classified every iterate correctly (a point counts as broken if any iterate breaks it): (J, n) bool on CPU."""
    tracker = AllIteratesCorrect(judge, y)
    pgd.perturb(source, x, y, generator=batch_generator(config.run.seed, "pgd", start), on_iterate=tracker)
    return tracker.correct.cpu()


def _own_logits(x_t: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Judge only the attacked model, from its own logits (no extra forward pass)."""
    return logits.unsqueeze(0)


def _base_judge(mixed: MixedClassifier, source: str, alphas: tuple[float, ...]):
    """For an attack crafted on g ("std") or h ("rob"): g's, h's and every h_alpha's logits at an iterate, from
    the attacked model's logits there and one forward of the other base model."""

    def judge(x_t: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        std_logits, rob_logits = mixed.base_logits(x_t, source, logits)
        mixes = [mixed.mix(std_logits, rob_logits, alpha) for alpha in alphas]
        return torch.stack([std_logits.float(), rob_logits.float(), *(mix.float() for mix in mixes)])

    return judge
