"""Fixed-alpha sweep (Figure 4) and the clean-vs-attacked trade-off curve (Figure 5).

Base-model logits on clean, STD-attacked (crafted on g) and ROB-attacked (crafted on h) inputs are
computed once and mixed for every alpha without another forward pass; only the MIX attack (crafted
on h_alpha end to end) runs once per alpha.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from asmix.attacks.pgd import PGD
from asmix.checks import check_finite
from asmix.errors import AsmixError
from asmix.mixing import MixedClassifier, check_alpha, check_mix_settings
from asmix.nuts import NutsMap
from asmix.runtime import ProgressFn, batch_generator, batch_slices, check_batch_size, predict_logits

ATTACKS = ("std", "rob", "mix")


def default_alphas() -> tuple[float, ...]:
    return parse_alphas("0:1:0.05")


def parse_alphas(text: str) -> tuple[float, ...]:
    """``0,0.5,1`` (a list) or ``0:1:0.05`` (start:stop:step, stop included) → sorted unique alphas."""
    text = text.strip()
    try:
        if ":" in text:
            start, stop, step = (check_finite(part, "alpha range bound") for part in text.split(":"))
            if step <= 0:
                raise AsmixError(f"alpha range step must be positive, got {step}")
            count = int(round((stop - start) / step)) + 1
            values = [round(start + i * step, 10) for i in range(max(count, 0))]
        else:
            values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise AsmixError(f"cannot read alphas {text!r}: use a list like 0,0.5,1 or a range like 0:1:0.05") from error
    if not values:
        raise AsmixError(f"no alphas in {text!r}")
    return tuple(sorted({check_alpha(value) for value in values}))


@dataclass(frozen=True)
class SweepConfig:
    """Settings of a fixed-alpha sweep; every CLI option of ``sweep-alpha`` is a field here."""

    alphas: tuple[float, ...] = field(default_factory=default_alphas)
    attacks: tuple[str, ...] = ATTACKS
    norm: str = "linf"
    eps: float = 0.3
    steps: int = 20
    step_size: float | None = None
    batch_size: int = 256
    seed: int = 0
    mix_space: str = "prob"
    std_scale: float = 1.0
    rob_scale: float = 1.0
    std_temperature: float = 1.0
    rob_map: NutsMap | None = None

    def __post_init__(self) -> None:
        unknown = set(self.attacks) - set(ATTACKS)
        if unknown:
            raise AsmixError(f"unknown attack(s) {', '.join(sorted(unknown))}: choose from {', '.join(ATTACKS)}")
        for alpha in self.alphas:
            check_alpha(alpha)
        check_batch_size(self.batch_size)
        check_finite(self.std_scale, "std scale")
        check_finite(self.rob_scale, "rob scale")
        check_mix_settings(mix_space=self.mix_space, rob_scale=self.rob_scale, std_temperature=self.std_temperature,
                           rob_map=self.rob_map)
        self.pgd()

    def pgd(self) -> PGD:
        return PGD(eps=self.eps, steps=self.steps, step_size=self.step_size, norm=self.norm)


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
    config: SweepConfig
    n_examples: int
    base: dict[str, BaseAccuracy]
    rows: tuple[SweepRow, ...]
    models: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        config = asdict(self.config) | {"n_examples": self.n_examples, "models": self.models,
                                        "step_size": self.config.pgd().resolved_step_size}
        return {
            "config": config,
            "base": {name: asdict(accuracy) for name, accuracy in self.base.items()},
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
) -> SweepResult:
    """Accuracy of g, h and h_alpha for each alpha, clean and under PGD crafted on g, h and h_alpha."""
    if len(x) == 0:
        raise AsmixError("no examples to evaluate")
    mixed = MixedClassifier(std, rob, 0.5, mix_space=config.mix_space,
                            std_scale=config.std_scale, rob_scale=config.rob_scale,
                            std_temperature=config.std_temperature, rob_map=config.rob_map).to(device)
    std, rob = mixed.std, mixed.rob
    pgd = config.pgd()
    cached = {"clean": (
        predict_logits(std, x, batch_size=config.batch_size, device=device, progress=progress, task="clean g"),
        predict_logits(rob, x, batch_size=config.batch_size, device=device, progress=progress, task="clean h"),
    )}
    for name, source in (("std", std), ("rob", rob)):
        if name in config.attacks:
            cached[name] = _attack_and_predict(pgd, source, (std, rob), x, y, config, device, progress,
                                               task=f"{name.upper()} attack")

    def accuracy(logits: torch.Tensor) -> float:
        return (logits.argmax(1) == y).float().mean().item()

    def base_accuracy(index: int) -> BaseAccuracy:
        return BaseAccuracy(
            clean=accuracy(cached["clean"][index]),
            std_attack=accuracy(cached["std"][index]) if "std" in cached else None,
            rob_attack=accuracy(cached["rob"][index]) if "rob" in cached else None,
        )

    rows = []
    for position, alpha in enumerate(config.alphas):
        def mixed_accuracy(name: str) -> float | None:
            return accuracy(mixed.mix(*cached[name], alpha)) if name in cached else None

        mix_attack = None
        if "mix" in config.attacks:
            reusable = _same_as_base_attack(alpha, config)
            if reusable in cached:
                mix_attack = mixed_accuracy(reusable)
                if progress:
                    progress("MIX attack", (position + 1) * len(x), len(config.alphas) * len(x))
            else:
                mixed.alpha = alpha
                (mix_logits_,) = _attack_and_predict(pgd, mixed, (mixed,), x, y, config, device, progress,
                                                     task="MIX attack", offset=position * len(x),
                                                     total=len(config.alphas) * len(x))
                mix_attack = accuracy(mix_logits_)
        rows.append(SweepRow(alpha, mixed_accuracy("clean"), mixed_accuracy("std"), mixed_accuracy("rob"), mix_attack))
    return SweepResult(config, len(x), {"std": base_accuracy(0), "rob": base_accuracy(1)}, tuple(rows), models or {})


def _same_as_base_attack(alpha: float, config: SweepConfig) -> str | None:
    """At alpha 0 (1) with unit logit scale, h_alpha's cross-entropy equals g's (h's), so the MIX
    attack is the STD (ROB) attack: all attacks share per-batch random starts, so reuse it."""
    if alpha == 0.0 and config.std_scale == 1.0 and config.std_temperature == 1.0:
        return "std"
    if alpha == 1.0 and config.rob_scale == 1.0 and config.rob_map is None:
        return "rob"
    return None


def _attack_and_predict(pgd, source, targets, x, y, config, device, progress, *, task, offset=0, total=None):
    """Craft PGD examples on ``source`` batch by batch and return each target's logits on them."""
    outputs = [[] for _ in targets]
    total = total or len(x)
    for part in batch_slices(len(x), config.batch_size):
        x_batch, y_batch = x[part].to(device), y[part].to(device)
        x_adv = pgd.perturb(source, x_batch, y_batch, generator=batch_generator(config.seed, "pgd", part.start))
        with torch.no_grad():
            for output, target in zip(outputs, targets):
                output.append(target(x_adv).float().cpu())
        if progress:
            progress(task, offset + part.stop, total)
    return tuple(torch.cat(output) for output in outputs)
