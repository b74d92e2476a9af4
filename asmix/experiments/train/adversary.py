"""Training-time attacks on the mixed classifier (Section 4.2): PGD for settings A and B; for C the copies of
``train_attacks``: the authors' APGD-CE and APGD-T, the alpha-first stage and a short Square run. Every draw is
made for the whole global batch and sliced to this shard, so the rows do not depend on how a batch is split across
ranks."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property

import torch

from asmix.attacks.adaptive import AlphaAPGD, AlphaAPGDTargeted, AlphaSquare, alpha_first_point
from asmix.attacks.autoattack import restored_rng
from asmix.attacks.objectives import mixed_objective
from asmix.attacks.pgd import PGD
from asmix.experiments.train.config import TrainAttack, TrainConfig
from asmix.mixer import MixingNetwork
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
    eval mode with its training head (range (0, 1), bias ``train_bias``); its mode and head are restored
    afterwards."""
    mixer = mixed.alpha_source
    was_training = mixer.training
    mixer.eval()
    try:
        with _training_head(mixer, config.train_bias):
            if config.setting == "C":
                return _attack_copies(_Batch(mixed, x, y, config, generator, offset, total or len(x)))
            return _pgd_rows(mixed, x, y, config, generator, offset, total)
    finally:
        mixer.train(was_training)


@contextmanager
def _training_head(mixer: MixingNetwork, bias: float) -> Iterator[None]:
    """The training head in eval mode: range (0, 1) and the sigmoid input score + ``bias`` (exactly the score at
    bias 0); the evaluation range and bias are put back afterwards."""
    head = mixer.alpha_min, mixer.alpha_max, mixer.alpha_bias
    mixer.set_alpha_range(0.0, 1.0)
    mixer.set_alpha_bias(bias)
    try:
        yield
    finally:
        mixer.set_alpha_range(*head[:2])
        mixer.set_alpha_bias(head[2])


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


@dataclass(frozen=True)
class _Batch:
    """This shard of one global batch of ``total`` images, starting at ``offset``, and the batch's generator."""

    mixed: MixedClassifier
    x: torch.Tensor
    y: torch.Tensor
    config: TrainConfig
    generator: torch.Generator
    offset: int
    total: int

    def shard(self, values: torch.Tensor) -> torch.Tensor:
        """This shard's part of one value per image of the global batch."""
        return values[self.offset : self.offset + len(self.x)].to(self.x.device, self.x.dtype)

    def seed(self) -> int:
        """A seed for the AutoAttack package's own draws (on torch's global generator, restored afterwards)."""
        return int(torch.randint(0, 2**31 - 1, (), generator=self.generator))

    def apgd_settings(self, eps: torch.Tensor, weight: torch.Tensor) -> dict:
        """An APGD's radius and alpha weight per example, and ~ chi-square(``apgd_steps_df``) iterations."""
        steps = chi_square_steps(self.config.apgd_steps_df, self.generator)
        view = eps.view(-1, *([1] * (self.x.ndim - 1)))
        return dict(eps=view, norm=self.config.threat.norm, alpha_weight=weight, n_iter=steps)

    def random_start(self, eps: torch.Tensor) -> torch.Tensor:
        return _random_start(self.x, eps, self.config.threat.norm, self.generator, self.offset, self.total)

    @cached_property
    def class_order(self) -> torch.Tensor:
        """Per example, the classes from the least to the most likely under the mixed classifier (clean image)."""
        with torch.no_grad():
            return self.mixed(self.x).sort(dim=1)[1]


CopyFn = Callable[[_Batch, torch.Tensor, torch.Tensor, int], torch.Tensor]
"""(batch, radius per example, alpha weight per example, copy number of this attack) -> the copy's rows."""


def _apgd_ce(batch: _Batch, eps: torch.Tensor, weight: torch.Tensor, copy: int) -> torch.Tensor:
    settings = batch.apgd_settings(eps, weight)
    start = batch.random_start(eps)
    return _best_iterate(AlphaAPGD(batch.mixed, loss="ce", device=batch.x.device, **settings), batch, start)


def _apgd_t(batch: _Batch, eps: torch.Tensor, weight: torch.Tensor, copy: int) -> torch.Tensor:
    """Toward the class ranked ``copy + 2`` by the mixed classifier on the clean image (cycling past the last)."""
    settings = batch.apgd_settings(eps, weight)
    start = batch.random_start(eps)
    attack = AlphaAPGDTargeted(batch.mixed, n_target_classes=1, device=batch.x.device, **settings)
    order = batch.class_order
    attack.y_target = order[:, -(2 + copy % (order.shape[1] - 1))]
    return _best_iterate(attack, batch, start)


def _best_iterate(attack, batch: _Batch, start: torch.Tensor) -> torch.Tensor:
    """The package APGD's best iterate per example: its last misclassified point, else ``start``."""
    attack.init_hyperparam(batch.x)
    with restored_rng(batch.x.device):  # the package draws a random start even when given one; keep torch's state
        return attack.attack_single_run(batch.x, batch.y, x_init=start)[3].detach()


def _alpha_first(batch: _Batch, eps: torch.Tensor, weight: torch.Tensor, copy: int) -> torch.Tensor:
    """The adaptive alpha-first stage from a random start, each phase with the copy's iterations: per example its
    final point (the class phase's last misclassified iterate, else its point of highest loss)."""
    settings = batch.apgd_settings(eps, weight)
    start = batch.random_start(eps)
    seed = batch.seed()
    with restored_rng(batch.x.device):
        return alpha_first_point(batch.mixed, batch.x, batch.y, seed, x_init=start, **settings)


def _square(batch: _Batch, eps: torch.Tensor, weight: torch.Tensor, copy: int) -> torch.Tensor:
    """A Square run of ``train_square_queries`` queries at each example's radius (``_BallSquare``)."""
    attack = _BallSquare(batch, eps, weight)
    seed = batch.seed()
    with restored_rng(batch.x.device):
        torch.manual_seed(seed)
        return attack.rows()


class _BallSquare(AlphaSquare):
    """The package's Square (l_inf, loss blended with the alpha term) at radius eps_i per example, on the global
    batch so that its draws do not depend on the shard. Square's points are x +- eps per pixel; the package searches
    their signs as points u in {0, 1}^d (around 0.5 at radius 0.5) and ``margin_and_loss`` scores each u at its
    example's point clamp(x_i + eps_i * (2u - 1), 0, 1), exactly Square's at radius eps_i. The package's labels
    are row numbers in the global batch, so each row finds its image, label, radius and weight; other shards'
    rows count as broken and are never queried."""

    def __init__(self, batch: _Batch, eps: torch.Tensor, weight: torch.Tensor) -> None:
        super().__init__(
            batch.mixed,
            eps=0.5,
            n_queries=batch.config.train_square_queries,
            alpha_weight=0.0,
            device=batch.x.device,
        )
        self.batch, self.radii, self.weights = batch, eps, weight

    def image(self, u: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        view = (-1,) + (1,) * (u.ndim - 1)
        return (self.batch.x[rows] + self.radii[rows].view(view) * (2 * u - 1)).clamp(0, 1)

    def margin_and_loss(self, u: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = index - self.batch.offset
        mine = (rows >= 0) & (rows < len(self.batch.x))
        margin = torch.full((len(u),), -1.0, device=u.device)
        loss = torch.zeros(len(u), device=u.device)
        if mine.any():
            rows = rows[mine]
            mine_margin, mine_loss = self.blended_margin(
                self.image(u[mine], rows), self.batch.y[rows], self.weights[rows]
            )
            margin[mine], loss[mine] = mine_margin.float(), mine_loss.float()
        return margin, loss

    def rows(self) -> torch.Tensor:
        """This shard's rows: each example's point at the sign pattern Square ended on."""
        batch = self.batch
        u = torch.full((batch.total, *batch.x.shape[1:]), 0.5, device=batch.x.device)
        self.init_hyperparam(u)
        best = self.attack_single_run(u, torch.arange(batch.total, device=batch.x.device))[1]
        return self.image(best[batch.offset : batch.offset + len(batch.x)], torch.arange(len(batch.x))).detach()


COPY_FUNCTIONS: dict[TrainAttack, CopyFn] = {
    "apgd-ce": _apgd_ce,
    "apgd-t": _apgd_t,
    "alpha-first": _alpha_first,
    "square": _square,
}
"""Setting C's attacks: each makes ``config.attack_copies(attack)`` copies of the shard's images."""


def _attack_copies(batch: _Batch) -> torch.Tensor:
    """Setting C: per copy, a radius eps * U(``eps_range``) and an alpha weight U(0, ``attack_bce_max``) per example,
    then the attack's own draws; the copies of ``train_attacks`` in turn."""
    config, rows = batch.config, []
    low, high = config.eps_range
    for attack in config.train_attacks:
        for copy in range(config.attack_copies(attack)):
            eps = batch.shard(config.threat.eps * (low + (high - low) * _uniform(batch.generator, (batch.total,))))
            weight = batch.shard(config.attack_bce_max * _uniform(batch.generator, (batch.total,)))
            rows.append(COPY_FUNCTIONS[attack](batch, eps, weight, copy))
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
