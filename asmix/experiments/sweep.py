"""Fixed-alpha sweep (Figure 4) and the clean-vs-attacked trade-off curve (Figure 5).

Base-model logits on clean inputs, and on every iterate of the STD attack (crafted on g) and the ROB attack
(crafted on h), are computed once and mixed for every alpha without another forward pass; only the MIX attack
(crafted on h_alpha end to end) runs once per alpha. A point counts as broken for a classifier if any iterate
breaks it (the rule of APGD, and of the library's PGD for the attacked model itself).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import torch
from torch import nn

from asmix.attacks.pgd import PGD, AllIteratesCorrect
from asmix.checks import check_finite
from asmix.errors import AsmixError
from asmix.mixing import MixedClassifier, check_alpha
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

    def __post_init__(self) -> None:
        unknown = set(self.attacks) - set(ATTACKS)
        if unknown:
            raise AsmixError(f"unknown attack(s) {', '.join(sorted(unknown))}: choose from {', '.join(ATTACKS)}")
        for alpha in self.alphas:
            check_alpha(alpha)
        check_batch_size(self.batch_size)
        check_finite(self.std_scale, "std scale")
        check_finite(self.rob_scale, "rob scale")
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
                            std_scale=config.std_scale, rob_scale=config.rob_scale).to(device)
    std, rob = mixed.std, mixed.rob
    pgd = config.pgd()
    transfer = replace(pgd, stop_at_break=False)  # the path goes on; every judged classifier keeps its own count
    clean = (
        predict_logits(std, x, batch_size=config.batch_size, device=device, progress=progress, task="clean g"),
        predict_logits(rob, x, batch_size=config.batch_size, device=device, progress=progress, task="clean h"),
    )
    # per attack crafted on g or h: whether every iterate is classified right by g, h and h_alpha for each alpha
    robust: dict[str, torch.Tensor] = {}
    for name, source in (("std", std), ("rob", rob)):
        if name in config.attacks:
            robust[name] = _robust_flags(transfer, source, _base_judge(mixed, name, config.alphas), x, y, config,
                                         device, progress, task=f"{name.upper()} attack")

    def accuracy(correct: torch.Tensor) -> float:
        return correct.float().mean().item()

    def base_accuracy(index: int) -> BaseAccuracy:
        return BaseAccuracy(
            clean=accuracy(clean[index].argmax(1) == y),
            std_attack=accuracy(robust["std"][index]) if "std" in robust else None,
            rob_attack=accuracy(robust["rob"][index]) if "rob" in robust else None,
        )

    rows = []
    for position, alpha in enumerate(config.alphas):
        def mixed_accuracy(name: str) -> float | None:
            return accuracy(robust[name][2 + position]) if name in robust else None

        mix_attack = None
        if "mix" in config.attacks:
            reusable = _same_as_base_attack(alpha, config)
            if reusable in robust:
                mix_attack = mixed_accuracy(reusable)
                if progress:
                    progress("MIX attack", (position + 1) * len(x), len(config.alphas) * len(x))
            else:
                flags = _robust_flags(pgd, mixed.with_alpha(alpha), _own_logits, x, y, config, device, progress,
                                      task="MIX attack", offset=position * len(x), total=len(config.alphas) * len(x))
                mix_attack = accuracy(flags[0])
        rows.append(SweepRow(alpha, accuracy(mixed.mix(*clean, alpha).argmax(1) == y), mixed_accuracy("std"),
                             mixed_accuracy("rob"), mix_attack))
    return SweepResult(config, len(x), {"std": base_accuracy(0), "rob": base_accuracy(1)}, tuple(rows), models or {})


def _own_logits(x_t: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Judge only the attacked model, from its own logits (no extra forward pass)."""
    return logits.unsqueeze(0)


def _base_judge(mixed: MixedClassifier, source: str, alphas: tuple[float, ...]):
    """For an attack crafted on g ("std") or h ("rob"): g's, h's and every h_alpha's logits at an iterate, from
    the attacked model's logits there and one forward of the other base model."""

    def judge(x_t: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        std_logits, rob_logits = (logits, mixed.rob(x_t)) if source == "std" else (mixed.std(x_t), logits)
        mixes = [mixed.mix(std_logits, rob_logits, alpha) for alpha in alphas]
        return torch.stack([std_logits.float(), rob_logits.float(), *(mix.float() for mix in mixes)])

    return judge


def _same_as_base_attack(alpha: float, config: SweepConfig) -> str | None:
    """At alpha 0 (1) with unit logit scale, h_alpha's cross-entropy equals g's (h's), so the MIX
    attack is the STD (ROB) attack: all attacks share per-batch random starts, so reuse it."""
    if alpha == 0.0 and config.std_scale == 1.0:
        return "std"
    if alpha == 1.0 and config.rob_scale == 1.0:
        return "rob"
    return None


def _robust_flags(pgd: PGD, source: nn.Module, judge, x, y, config, device, progress, *, task, offset=0,
                  total=None) -> torch.Tensor:
    """PGD crafted on ``source`` batch by batch; per judged classifier and example, whether it classified every
    iterate correctly (a point counts as broken if any iterate breaks it): (J, N) bool on CPU."""
    flags = []
    total = total or len(x)
    for part in batch_slices(len(x), config.batch_size):
        x_batch, y_batch = x[part].to(device), y[part].to(device)
        tracker = AllIteratesCorrect(judge, y_batch)
        pgd.perturb(source, x_batch, y_batch, generator=batch_generator(config.seed, "pgd", part.start),
                    on_iterate=tracker)
        flags.append(tracker.correct.cpu())
        if progress:
            progress(task, offset + part.stop, total)
    return torch.cat(flags, dim=1)
