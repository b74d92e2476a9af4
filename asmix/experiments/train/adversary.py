"""Training-time attacks on the mixed classifier (Section 4.2): PGD for settings A and B, the authors' APGD-CE and
APGD-T copies for C. Every draw is made for the whole global batch and sliced to this shard, so the rows do not
depend on how a batch is split across ranks."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from asmix.attacks.adaptive import AlphaAPGD, AlphaAPGDTargeted
from asmix.attacks.autoattack import restored_rng
from asmix.attacks.objectives import mixed_objective
from asmix.attacks.pgd import PGD
from asmix.experiments.train.config import TrainConfig
from asmix.mixing import MixedClassifier


@dataclass(frozen=True)
class ShardPGD(PGD):
    """PGD whose random start is drawn for the whole global batch and sliced to this shard."""

    offset: int = 0
    total: int | None = None

    def _random_start(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        if self.total is None:
            return super()._random_start(x, generator)
        full = super()._random_start(torch.empty((self.total, *x.shape[1:])), generator)
        return full[self.offset : self.offset + len(x)].to(x.device, x.dtype)


@dataclass(frozen=True)
class TrainingRows:
    """One batch's rows for the mixer: images, labels and whether each row is attacked."""

    x: torch.Tensor
    y: torch.Tensor
    attacked: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


def _uniform(generator: torch.Generator, shape=()) -> torch.Tensor:
    return torch.rand(shape, generator=generator, dtype=torch.float64)


def chi_square_steps(df: int, generator: torch.Generator) -> int:
    """Iterations ~ chi-square(df) (the authors' code), drawn as a sum of ``df`` squared normals; at least 1."""
    draw = torch.randn(df, generator=generator, dtype=torch.float64).pow(2).sum().item()
    return max(1, int(round(draw)))


def attack_rows(
    mixed: MixedClassifier,
    x: torch.Tensor,
    y: torch.Tensor,
    config: TrainConfig,
    generator: torch.Generator,
    *,
    offset: int = 0,
    total: int | None = None,
) -> torch.Tensor:
    """Attacked copies of this shard's images, copy-major: ``config.copies`` * len(x) rows. The mixer runs in
    eval mode with its training head (range (0, 1), bias 0); its train/eval mode is restored afterwards."""
    mixer = mixed.alpha_source
    was_training = mixer.training
    mixer.eval()
    try:
        with mixer.full_range():
            if config.setting == "C":
                return _apgd_copies(mixed, x, y, config, generator, offset, total or len(x))
            return _pgd_rows(mixed, x, y, config, generator, offset, total)
    finally:
        mixer.train(was_training)


def _pgd_rows(mixed, x, y, config: TrainConfig, generator, offset, total) -> torch.Tensor:
    low, high = config.eps_range
    eps = config.threat.eps * (low + (high - low) * _uniform(generator).item())
    steps = int(torch.randint(config.steps_range[0], config.steps_range[1] + 1, (), generator=generator))
    weight = config.attack_bce_max * _uniform(generator).item()
    pgd = ShardPGD(eps=eps, steps=steps, norm=config.threat.norm, offset=offset, total=total)
    return pgd.perturb(mixed, x, y, generator=generator, objective=mixed_objective(config.setting, weight))


def _random_start(
    x: torch.Tensor, eps: torch.Tensor, norm: str, generator: torch.Generator, offset: int, total: int
) -> torch.Tensor:
    """APGD's random start (a point on the sphere of radius eps in ``norm``), drawn for the global batch."""
    shape = (total, *x.shape[1:])
    noise = (
        2 * torch.rand(shape, generator=generator) - 1 if norm == "linf" else torch.randn(shape, generator=generator)
    )
    noise = noise[offset : offset + len(x)].to(x.device, x.dtype)
    flat = noise.flatten(1)
    size = flat.abs().amax(1) if norm == "linf" else flat.norm(dim=1)
    view = (-1,) + (1,) * (x.ndim - 1)
    return (x + eps.view(view) * noise / size.clamp_min(1e-12).view(view)).clamp(0, 1)


def _apgd_copies(
    mixed: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    config: TrainConfig,
    generator: torch.Generator,
    offset: int,
    total: int,
) -> torch.Tensor:
    shard = slice(offset, offset + len(x))
    with torch.no_grad():
        order = mixed(x).sort(dim=1)[1]
    n_classes = order.shape[1]
    rows = []
    for copy in range(config.copies):
        low, high = config.eps_range
        eps = (config.threat.eps * (low + (high - low) * _uniform(generator, (total,))))[shard].to(x.device, x.dtype)
        weight = (config.attack_bce_max * _uniform(generator, (total,)))[shard].to(x.device, x.dtype)
        steps = chi_square_steps(config.apgd_steps_df, generator)
        start = _random_start(x, eps, config.threat.norm, generator, offset, total)
        view = eps.view(-1, *([1] * (x.ndim - 1)))
        settings = dict(eps=view, norm=config.threat.norm, alpha_weight=weight, n_iter=steps, device=x.device)
        if copy == 0:
            attack = AlphaAPGD(mixed, loss="ce", **settings)
        else:
            attack = AlphaAPGDTargeted(mixed, n_target_classes=1, **settings)
            attack.y_target = order[:, -(1 + (copy - 1) % (n_classes - 1) + 1)]
        attack.init_hyperparam(x)
        with restored_rng(x.device):  # the package draws a random start even when given one; keep torch's state
            rows.append(attack.attack_single_run(x, y, x_init=start)[3].detach())
    return torch.cat(rows)


def training_rows(
    mixed: MixedClassifier,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    index: torch.Tensor,
    config: TrainConfig,
    generator: torch.Generator,
    device: torch.device,
    *,
    offset: int = 0,
    total: int | None = None,
) -> TrainingRows:
    """Clean images ``x_train[index]`` (this shard of the batch), their attacked copies and, where there are
    several copies, as many extra clean images drawn from the training set, so clean and attacked rows
    balance (the authors' code). Clean rows come first."""
    total = total or len(index)
    x, y = x_train[index].to(device), y_train[index].to(device)
    attacked = attack_rows(mixed, x, y, config, generator, offset=offset, total=total)
    extra = config.copies - 1
    clean_x, clean_y = [x], [y]
    if extra:
        draws = torch.randint(0, len(x_train), (extra, total), generator=generator)[:, offset : offset + len(index)]
        clean_x.append(x_train[draws.flatten()].to(device))
        clean_y.append(y_train[draws.flatten()].to(device))
    clean_x, clean_y = torch.cat(clean_x), torch.cat(clean_y)
    flags = torch.cat((torch.zeros(len(clean_y), dtype=torch.bool), torch.ones(len(attacked), dtype=torch.bool)))
    return TrainingRows(torch.cat((clean_x, attacked)), torch.cat((clean_y, y.repeat(config.copies))), flags.to(device))
