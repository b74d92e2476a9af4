"""Training the mixing network alpha_theta (Section 4.4, 5.2, App. C.2, D.1) and choosing its range.

Base models are frozen; only the mixing network learns, from clean and attacked images with the
composite loss of eq. 4.2 against pseudo-labels alpha~. Attack settings (Section 4.2): A gray-box PGD
(alpha detached), B white-box PGD (end to end), C APGD-CE + APGD-T from the AutoAttack package.
Attack radius and steps are drawn per batch, and the attack objective gets a randomly weighted BCE
term pushing alpha down. Every random draw comes from ``batch_generator(seed, ...)`` keyed by epoch
and step, so a resumed or torchrun-sharded run computes what one uninterrupted process computes.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from asmix import distributed
from asmix.attacks.objectives import mixed_objective
from asmix.attacks.pgd import PGD
from asmix.errors import AsmixError
from asmix.io import atomic_write, atomic_write_text
from asmix.mixer import MixingNetwork, save_mixer
from asmix.mixing import MixedClassifier, check_alpha
from asmix.runtime import ProgressFn, batch_generator, batch_slices, check_batch_size

SETTINGS = ("A", "B", "C")
CHECKPOINT = "checkpoint.pt"
LOG = "train_log.jsonl"
RANGE_WIDTHS = (0.02, 0.04, 0.06, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0)
"""alpha_max - alpha_min candidates for ``--target-clean-acc`` (App. D.1 uses 0.04 to 0.15)."""


@dataclass(frozen=True)
class TrainConfig:
    """Settings of ``train-mixer``; every CLI option is a field (paper defaults from Table 6/7, App. D.1)."""

    setting: str = "B"
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-2
    ema_decay: float = 0.8
    c_ce: float = 0.0
    c_bce: float = 1.5
    c_prod: float = 0.2
    norm: str = "linf"
    eps_max: float = 0.3
    eps_min_fraction: float = 0.25
    steps_range: tuple[int, int] = (5, 20)
    attack_bce_max: float = 2.0
    val_eps: float | None = None
    val_steps: int = 20
    seed: int = 0
    scale: float = 2.0
    width: int | None = None
    blocks: int = 2
    stages: int = 2
    std_layers: tuple[str, str] | None = None
    rob_layers: tuple[str, str] | None = None
    std_scale: float = 1.0
    rob_scale: float = 1.0
    alpha_range: tuple[float, float] = (0.0, 1.0)
    target_clean_acc: float | None = None
    floor_weight: float = 0.5

    def __post_init__(self) -> None:
        if self.setting not in SETTINGS:
            raise AsmixError(f"setting must be one of {', '.join(SETTINGS)}, got {self.setting!r}")
        check_batch_size(self.batch_size)
        if self.epochs < 1:
            raise AsmixError(f"epochs must be >= 1, got {self.epochs}")
        if self.lr <= 0 or self.weight_decay < 0:
            raise AsmixError(f"lr must be positive and weight decay >= 0, got {self.lr}, {self.weight_decay}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise AsmixError(f"EMA decay must be in [0, 1), got {self.ema_decay}")
        if min(self.c_ce, self.c_bce, self.c_prod) < 0 or self.c_ce + self.c_bce + self.c_prod == 0:
            raise AsmixError("loss weights c_CE, c_BCE, c_prod must be >= 0 and not all 0")
        if self.eps_max <= 0 or not 0.0 <= self.eps_min_fraction <= 1.0:
            raise AsmixError(f"eps-max must be positive and eps-min-fraction in [0, 1], got {self.eps_max}, {self.eps_min_fraction}")
        low, high = self.steps_range
        if not 1 <= low <= high:
            raise AsmixError(f"steps range must be LOW:HIGH with 1 <= LOW <= HIGH, got {low}:{high}")
        if self.attack_bce_max < 0 or self.val_steps < 0:
            raise AsmixError("attack-bce-max and val-steps must be >= 0")
        if self.scale <= 0:
            raise AsmixError(f"sigmoid scale must be positive, got {self.scale}")
        check_alpha(self.alpha_range[0]), check_alpha(self.alpha_range[1])
        if self.alpha_range[0] > self.alpha_range[1]:
            raise AsmixError(f"alpha range must be MIN:MAX with MIN <= MAX, got {self.alpha_range}")
        if self.target_clean_acc is not None and not 0.0 < self.target_clean_acc <= 1.0:
            raise AsmixError(f"target clean accuracy must be a fraction in (0, 1], got {self.target_clean_acc}")
        if not 0.0 <= self.floor_weight <= 1.0:
            raise AsmixError(f"floor weight must be in [0, 1], got {self.floor_weight}")
        PGD(eps=self.eps_max, steps=high, norm=self.norm)

    @property
    def resolved_val_eps(self) -> float:
        return self.eps_max if self.val_eps is None else self.val_eps

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))


def parse_range(text: str, *, kind: type = float, name: str = "range") -> tuple:
    """``LOW:HIGH`` -> (LOW, HIGH) of ``kind``."""
    parts = text.split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        return kind(parts[0]), kind(parts[1])
    except ValueError as error:
        raise AsmixError(f"{name} must look like LOW:HIGH, got {text!r}") from error


@dataclass(frozen=True)
class EpochRecord:
    """One line of the training log: training loss and validation of the EMA mixer (eval mode)."""

    epoch: int
    train_loss: float
    lr: float
    clean_acc: float
    attacked_acc: float | None
    alpha_clean: float
    alpha_attacked: float | None
    train_alpha_clean: float
    train_alpha_attacked: float
    seconds: float


@dataclass(frozen=True)
class RangeSelection:
    """The (alpha_min, alpha_max) chosen on the held-out split for a clean-accuracy target.

    ``estimated_attacked_acc`` uses attacks crafted once on the full-range mixer; ``floor_attacked_acc``
    is the PGD accuracy of the fixed alpha ``alpha_min`` (the mix if an attack could steer alpha
    anywhere in the range); ``attacked_acc`` re-attacks the chosen range end to end (setting B PGD)."""

    alpha_min: float
    alpha_max: float
    target_clean_acc: float
    met: bool
    clean_acc: float
    estimated_attacked_acc: float
    floor_attacked_acc: float
    attacked_acc: float


@dataclass(frozen=True)
class TrainResult:
    config: TrainConfig
    history: tuple[EpochRecord, ...]
    alpha_range: tuple[float, float]
    n_train: int
    n_val: int
    selection: RangeSelection | None = None
    models: dict[str, str] = field(default_factory=dict)
    out_dir: str | None = None
    mixer: MixingNetwork | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict() | {"n_train": self.n_train, "n_val": self.n_val, "models": self.models},
            "alpha_range": list(self.alpha_range),
            "history": [asdict(record) for record in self.history],
            "selection": asdict(self.selection) if self.selection else None,
            "out_dir": self.out_dir,
        }


def pseudo_labels(std_logits: torch.Tensor, rob_logits: torch.Tensor, y: torch.Tensor,
                  attacked: torch.Tensor) -> torch.Tensor:
    """alpha~ in {0, 1} (Section 4.4): 1 where h should be trusted, 0 where g should.

    Attacked inputs get 1 unless g is right and h wrong; clean inputs get 0 unless g is wrong and
    h right."""
    std_right = std_logits.argmax(1) == y
    rob_right = rob_logits.argmax(1) == y
    label = torch.where(attacked, ~(std_right & ~rob_right), ~std_right & rob_right)
    return label.to(std_logits.dtype)


def composite_loss(mixed_logits: torch.Tensor, alpha_logit: torch.Tensor, y: torch.Tensor, pseudo: torch.Tensor,
                   *, c_ce: float = 0.0, c_bce: float = 1.5, c_prod: float = 0.2) -> torch.Tensor:
    """Per-example eq. 4.2: c_CE * CE(h_alpha(x'), y) + c_BCE * BCE(alpha(x'), alpha~) + c_prod * CE * BCE.

    ``mixed_logits`` are the log mixed probabilities (eq. 3.4) and ``alpha_logit`` the sigmoid input
    of alpha (BCE computed from it, stably)."""
    ce = F.cross_entropy(mixed_logits, y, reduction="none")
    bce = F.binary_cross_entropy_with_logits(alpha_logit, pseudo, reduction="none")
    return c_ce * ce + c_bce * bce + c_prod * ce * bce


@dataclass(frozen=True)
class _ShardPGD(PGD):
    """PGD whose random start is drawn for the whole global batch and sliced to this shard, so the
    adversarial examples do not depend on how the batch is split across ranks."""

    offset: int = 0
    total: int | None = None

    def _random_start(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        if self.total is None:
            return super()._random_start(x, generator)
        full = super()._random_start(torch.empty((self.total, *x.shape[1:])), generator)
        return full[self.offset:self.offset + len(x)].to(x.device, x.dtype)


def _uniform(generator: torch.Generator) -> float:
    return torch.rand((), generator=generator).item()


def attack_batch(mixed: MixedClassifier, x: torch.Tensor, y: torch.Tensor, config: TrainConfig, generator: torch.Generator,
                 *, offset: int = 0, total: int | None = None) -> torch.Tensor:
    """Training-time adversarial examples for one (shard of a) batch: radius, steps and the weight of
    the alpha-down term drawn from ``generator``; the mixer in eval mode with its (0, 1) range."""
    eps = config.eps_max * (config.eps_min_fraction + (1 - config.eps_min_fraction) * _uniform(generator))
    low, high = config.steps_range
    steps = int(torch.randint(low, high + 1, (), generator=generator))
    bce_weight = config.attack_bce_max * _uniform(generator)
    mixer = mixed.alpha_source
    was_training = mixer.training
    mixer.eval()
    try:
        with mixer.full_range():
            if config.setting == "C":
                return _apgd_batch(mixed, x, y, eps, steps, config, generator, bce_weight)
            pgd = _ShardPGD(eps=eps, steps=steps, norm=config.norm, offset=offset, total=total)
            return pgd.perturb(mixed, x, y, generator=generator, objective=mixed_objective(config.setting, bce_weight))
    finally:
        mixer.train(was_training)


def _apgd_batch(mixed: MixedClassifier, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int,
                config: TrainConfig, generator: torch.Generator, alpha_down_weight: float) -> torch.Tensor:
    """Setting C: APGD-CE or APGD-T (targeted DLR, one target class), chosen per batch: the AutoAttack
    package's attacks with ``alpha_down_weight`` * BCE(alpha, 1) added to their loss."""
    from asmix.attacks.autoattack import AlphaAPGD, AlphaAPGDTargeted

    seed = int(torch.randint(0, 2**31 - 1, (), generator=generator))
    settings = dict(eps=eps, norm=config.norm, n_iter=steps, seed=seed, alpha_weight=alpha_down_weight,
                    device=x.device)
    targeted = _uniform(generator) < 0.5
    attack = AlphaAPGDTargeted(mixed, n_target_classes=1, **settings) if targeted else AlphaAPGD(mixed, **settings)
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):  # APGD reseeds torch
        x_adv = attack.perturb(x, y)
    return x_adv.detach()


class _Ema:
    """Exponential moving average of all float parameters and buffers (App. D.1, decay 0.8)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.model = copy.deepcopy(model).eval()
        self.decay = decay
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        source = model.state_dict()
        for name, value in self.model.state_dict().items():
            if value.is_floating_point():
                value.mul_(self.decay).add_(source[name].detach(), alpha=1 - self.decay)
            else:
                value.copy_(source[name])


def data_fingerprint(x: torch.Tensor, y: torch.Tensor) -> str:
    """sha256 of the training images and labels (stored in mixer.json)."""
    digest = hashlib.sha256()
    digest.update(x.detach().cpu().contiguous().numpy().tobytes())
    digest.update(y.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _cosine(total_steps: int) -> Callable[[int], float]:
    return lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))


def train_mixer(
    std: nn.Module,
    rob: nn.Module,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    config: TrainConfig = TrainConfig(),
    *,
    out_dir: str | Path | None = None,
    resume: bool = False,
    device: torch.device = torch.device("cpu"),
    progress: ProgressFn | None = None,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    on_step: Callable[[int, int], None] | None = None,
    models: dict[str, str] | None = None,
) -> TrainResult:
    """Train alpha_theta for the frozen pair (g, h) and return the EMA mixer with its history.

    Under torchrun (a process group is initialised) the mixing network is wrapped in
    DistributedDataParallel, every global batch is split across ranks, and only rank 0 writes.
    ``out_dir`` gets ``checkpoint.pt`` (every epoch), ``train_log.jsonl`` and the final mixer
    (``mixer.safetensors`` + ``mixer.json``); ``resume`` continues from its checkpoint.
    ``on_step(epoch, step)`` runs after each optimiser step (tests use it to interrupt a run).
    """
    n_train, n_val = len(x_train), len(x_val)
    world = distributed.world_size()
    if n_train < config.batch_size:
        raise AsmixError(f"need at least one full batch: {n_train} training examples < batch size {config.batch_size}")
    if config.batch_size % world:
        raise AsmixError(f"batch size {config.batch_size} must be divisible by the number of processes ({world})")
    if n_val == 0:
        raise AsmixError("no validation examples")
    out_dir = Path(out_dir) if out_dir is not None else None
    writer = out_dir is not None and distributed.is_main_process()
    models = models or {}

    mixed = MixedClassifier(std, rob, 0.5, std_scale=config.std_scale, rob_scale=config.rob_scale).to(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        mixer = MixingNetwork.build(mixed.std, mixed.rob, x_train[:1].to(device), std_layers=config.std_layers,
                                    rob_layers=config.rob_layers, width=config.width, blocks=config.blocks,
                                    stages=config.stages, scale=config.scale, alpha_range=config.alpha_range)
    mixer = mixer.to(device)
    mixed.alpha_source, mixed.alpha = mixer, None
    ema = _Ema(mixer, config.ema_decay)
    ema_mixed = MixedClassifier(mixed.std, mixed.rob, alpha=ema.model, std_scale=config.std_scale,
                                rob_scale=config.rob_scale).eval()
    optimizer = torch.optim.AdamW(mixer.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = n_train // config.batch_size
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _cosine(steps_per_epoch * config.epochs))
    fingerprint = data_fingerprint(x_train, y_train)
    identity = {"config": config.to_dict(), "n_train": n_train, "n_val": n_val, "data_fingerprint": fingerprint,
                "models": models}
    history: list[EpochRecord] = []
    start_epoch = 0
    checkpoint_path = out_dir / CHECKPOINT if out_dir is not None else None
    if not resume and writer and checkpoint_path.is_file() and not (out_dir / "mixer.json").is_file():
        raise AsmixError(f"{out_dir} holds the checkpoint of an unfinished run: pass --resume to continue it, "
                         f"or choose another --out")
    if resume:
        if checkpoint_path is None or not checkpoint_path.is_file():
            raise AsmixError(f"--resume: no checkpoint at {checkpoint_path}")
        start_epoch, history = _load_checkpoint(checkpoint_path, identity, mixer, ema, optimizer, scheduler)

    trained = mixer
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        trained = DistributedDataParallel(mixer, device_ids=[device.index] if device.type == "cuda" else None)

    part = distributed.shard_slice(config.batch_size)
    for epoch in range(start_epoch, config.epochs):
        started = time.perf_counter()
        order = torch.randperm(n_train, generator=batch_generator(config.seed, "shuffle", epoch))
        totals = torch.zeros(5, dtype=torch.float64)  # loss sum, alpha clean sum, alpha attacked sum, count, steps
        mixer.train()
        for step in range(steps_per_epoch):
            index = order[step * config.batch_size:(step + 1) * config.batch_size][part]
            x, y = x_train[index].to(device), y_train[index].to(device)
            generator = batch_generator(config.seed, "train", epoch, step)
            x_adv = attack_batch(mixed, x, y, config, generator, offset=part.start, total=config.batch_size)
            loss, alpha_clean, alpha_attacked = _train_step(trained, mixer, mixed, x, x_adv, y, config)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            ema.update(mixer)
            totals += torch.tensor([loss.item(), alpha_clean, alpha_attacked, len(x), 1], dtype=torch.float64)
            if progress:
                progress(f"epoch {epoch + 1}/{config.epochs}", step + 1, steps_per_epoch)
            if on_step:
                on_step(epoch, step)
        totals = sum(distributed.gather_objects(totals))
        clean_acc, attacked_acc, alpha_val_clean, alpha_val_attacked = validate(
            ema_mixed, x_val, y_val, eps=config.resolved_val_eps, steps=config.val_steps, norm=config.norm,
            batch_size=config.batch_size, seed=config.seed, device=device, progress=progress)
        count = totals[3].item()
        record = EpochRecord(epoch + 1, totals[0].item() / totals[4].item(), scheduler.get_last_lr()[0], clean_acc,
                             attacked_acc, alpha_val_clean, alpha_val_attacked, totals[1].item() / count,
                             totals[2].item() / count, time.perf_counter() - started)
        history.append(record)
        if writer:
            _save_checkpoint(checkpoint_path, identity, epoch + 1, mixer, ema, optimizer, scheduler, history)
            atomic_write_text(out_dir / LOG, "".join(json.dumps(asdict(r)) + "\n" for r in history))
        if on_epoch and distributed.is_main_process():
            on_epoch(record)
        distributed.barrier()

    final = ema.model.eval()
    selection = None
    if config.target_clean_acc is not None:
        selection = select_alpha_range(ema_mixed, x_val, y_val, config.target_clean_acc, eps=config.resolved_val_eps,
                                       steps=config.val_steps, norm=config.norm, batch_size=config.batch_size,
                                       seed=config.seed, floor_weight=config.floor_weight, device=device,
                                       progress=progress)
        final.set_alpha_range(selection.alpha_min, selection.alpha_max)
    if writer:
        save_mixer(final, out_dir, config={
            "models": models, "training": config.to_dict(), "n_train": n_train, "n_val": n_val,
            "data_fingerprint": fingerprint, "selection": asdict(selection) if selection else None,
            "history": [asdict(r) for r in history]})
    distributed.barrier()
    return TrainResult(config, tuple(history), (final.alpha_min, final.alpha_max), n_train, n_val, selection, models,
                       str(out_dir) if out_dir is not None else None, final)


def _train_step(trained: nn.Module, mixer: MixingNetwork, mixed: MixedClassifier, x: torch.Tensor, x_adv: torch.Tensor,
                y: torch.Tensor, config: TrainConfig) -> tuple[torch.Tensor, float, float]:
    """Composite loss (eq. 4.2) on clean + attacked inputs; base features computed without gradient.

    The loss is this rank's mean; DDP averages gradients over ranks, giving the global-batch mean."""
    x_all = torch.cat((x, x_adv))
    y_all = torch.cat((y, y))
    attacked = torch.cat((torch.zeros_like(y, dtype=torch.bool), torch.ones_like(y, dtype=torch.bool)))
    with torch.no_grad():
        std_logits, rob_logits, std_features, rob_features = mixer.features(x_all, mixed.std, mixed.rob)
    logit = trained(std_features, rob_features)
    alpha = torch.sigmoid(logit)
    mixed_logits = mixed.mix(std_logits, rob_logits, alpha)
    pseudo = pseudo_labels(std_logits, rob_logits, y_all, attacked)
    loss = composite_loss(mixed_logits, logit, y_all, pseudo, c_ce=config.c_ce, c_bce=config.c_bce,
                          c_prod=config.c_prod).mean()
    n = len(y)
    return loss, alpha[:n].sum().item(), alpha[n:].sum().item()


@torch.no_grad()
def _alpha_and_logits(mixed: MixedClassifier, x: torch.Tensor):
    mixer = mixed.alpha_source
    std_logits, rob_logits, std_features, rob_features = mixer.features(x, mixed.std, mixed.rob)
    return std_logits, rob_logits, torch.sigmoid(mixer(std_features, rob_features))


def validate(mixed: MixedClassifier, x: torch.Tensor, y: torch.Tensor, *, eps: float, steps: int, norm: str,
             batch_size: int, seed: int, device: torch.device, progress: ProgressFn | None = None,
             ) -> tuple[float, float | None, float, float | None]:
    """Clean and white-box PGD (setting B) accuracy of the adaptive mixed model in eval mode, with
    the mean alpha on clean and attacked inputs; each global batch is split across ranks."""
    mixed.eval()
    pgd = None if steps == 0 else (eps, steps)
    sums = torch.zeros(5, dtype=torch.float64)  # clean right, attacked right, alpha clean, alpha attacked, count
    for batch in batch_slices(len(x), batch_size):
        part = distributed.shard_slice(batch.stop - batch.start)
        index = slice(batch.start + part.start, batch.start + part.stop)
        xb, yb = x[index].to(device), y[index].to(device)
        if len(xb) == 0:
            continue
        with torch.no_grad():
            logits, alpha = mixed(xb, return_alpha=True)
        sums[0] += (logits.argmax(1) == yb).sum().item()
        sums[2] += alpha.sum().item()
        sums[4] += len(xb)
        if pgd is not None:
            attack = _ShardPGD(eps=eps, steps=steps, norm=norm, offset=part.start, total=batch.stop - batch.start)
            x_adv = attack.perturb(mixed, xb, yb, generator=batch_generator(seed, "validate", batch.start))
            with torch.no_grad():
                logits, alpha = mixed(x_adv, return_alpha=True)
            sums[1] += (logits.argmax(1) == yb).sum().item()
            sums[3] += alpha.sum().item()
        if progress:
            progress("validate", batch.stop, len(x))
    sums = sum(distributed.gather_objects(sums))
    count = sums[4].item()
    attacked = (sums[1].item() / count, sums[3].item() / count) if pgd is not None else (None, None)
    return sums[0].item() / count, attacked[0], sums[2].item() / count, attacked[1]


def select_alpha_range(
    mixed: MixedClassifier,
    x: torch.Tensor,
    y: torch.Tensor,
    target_clean_acc: float,
    *,
    eps: float,
    steps: int = 20,
    norm: str = "linf",
    batch_size: int = 256,
    seed: int = 0,
    widths: tuple[float, ...] = RANGE_WIDTHS,
    grid: float = 0.01,
    floor_grid: float = 0.05,
    floor_weight: float = 0.5,
    device: torch.device = torch.device("cpu"),
    progress: ProgressFn | None = None,
) -> RangeSelection:
    """(alpha_min, alpha_max) meeting ``target_clean_acc`` on held-out data with the most robustness.

    The paper tunes the range by hand (App. D.1). Here: white-box PGD examples are crafted once on
    the full-range mixer; every candidate range (width in ``widths``, alpha_min on a ``grid``) is
    scored from cached base logits and sigmoid outputs. PGD through the mixing network can overrate
    it (on the demo pair AutoAttack's black-box Square attack steered alpha down where PGD could not),
    while the floor, the white-box PGD accuracy of the fixed alpha at alpha_min (on a ``floor_grid``,
    rounded down), is what an attack that fully controls alpha would face. A range scores
    ``(1 - floor_weight) * estimate + floor_weight * floor``: 0 trusts PGD through the mixer, 1 assumes
    the worst case (and then the best range is close to a fixed alpha). The best range is re-attacked
    end to end. If no range meets the target, the most accurate one is returned with ``met=False``."""
    mixer = mixed.alpha_source
    mixed.eval()
    floor_alphas = [round(i * floor_grid, 6) for i in range(int(round(1 / floor_grid)) + 1)]
    floors: dict[float, float] = {}

    def floor(low: float) -> float:
        """PGD accuracy of the grid alpha at or below ``low``, attacked only when first needed."""
        alpha = max(a for a in floor_alphas if a <= low + 1e-9)
        if alpha not in floors:
            floors.update(fixed_alpha_robustness(mixed, x, y, [alpha], eps=eps, steps=steps, norm=norm,
                                                 batch_size=batch_size, seed=seed, device=device))
            if progress:
                progress("fixed-alpha floors", len(floors), len(floor_alphas))
        return floors[alpha]

    clean_parts, attacked_parts = [], []
    with mixer.full_range():
        for batch in batch_slices(len(x), batch_size):
            xb, yb = x[batch].to(device), y[batch].to(device)
            clean_parts.append(_alpha_and_logits(mixed, xb))
            x_adv = PGD(eps=eps, steps=steps, norm=norm).perturb(
                mixed, xb, yb, generator=batch_generator(seed, "select", batch.start), objective=mixed_objective("B"))
            attacked_parts.append(_alpha_and_logits(mixed, x_adv))
            if progress:
                progress("choose alpha range", batch.stop, len(x))
    y = y.to(device)
    clean = [torch.cat(parts) for parts in zip(*clean_parts)]
    attacked = [torch.cat(parts) for parts in zip(*attacked_parts)]

    def accuracy(cached, low: float, high: float) -> float:
        std_logits, rob_logits, sigmoid = cached
        logits = mixed.mix(std_logits, rob_logits, low + (high - low) * sigmoid)
        return (logits.argmax(1) == y).float().mean().item()

    candidates = []
    count = int(round(1 / grid))
    for width in widths:
        for i in range(count + 1):
            low = round(i * grid, 6)
            high = round(low + width, 6)
            if high > 1.0 + 1e-9:
                break
            candidates.append((accuracy(clean, low, high), accuracy(attacked, low, high), low, high))
    meeting = [c for c in candidates if c[0] >= target_clean_acc]

    def score(candidate) -> float:
        if floor_weight == 0:
            return candidate[1]  # no floor is attacked but the chosen range's
        return (1 - floor_weight) * candidate[1] + floor_weight * floor(candidate[2])

    if meeting:
        clean_acc, estimate, low, high = max(meeting, key=lambda c: (score(c), c[1], c[0], -c[2]))
    else:
        clean_acc, estimate, low, high = max(candidates, key=lambda c: (c[0], score(c)))
    previous = (mixer.alpha_min, mixer.alpha_max)
    mixer.set_alpha_range(low, high)
    try:
        _, attacked_acc, _, _ = validate(mixed, x, y.cpu(), eps=eps, steps=max(steps, 1), norm=norm,
                                         batch_size=batch_size, seed=seed, device=device)
    finally:
        mixer.set_alpha_range(*previous)
    return RangeSelection(low, high, target_clean_acc, bool(meeting), clean_acc, estimate, floor(low), attacked_acc)


def fixed_alpha_robustness(mixed: MixedClassifier, x: torch.Tensor, y: torch.Tensor, alphas: list[float], *,
                           eps: float, steps: int, norm: str, batch_size: int, seed: int, device: torch.device,
                           progress: ProgressFn | None = None) -> dict[float, float]:
    """White-box PGD accuracy of the mix at each fixed alpha (same base models, scales and space)."""
    robustness = {}
    for done, alpha in enumerate(alphas, 1):
        fixed = mixed.with_alpha(alpha)
        robustness[alpha] = validate(fixed, x, y, eps=eps, steps=max(steps, 1), norm=norm, batch_size=batch_size,
                                     seed=seed, device=device)[1]
        if progress:
            progress("fixed-alpha floors", done, len(alphas))
    return robustness


@dataclass(frozen=True)
class ComparisonRow:
    """Accuracy of one classifier, clean and under white-box PGD (setting B), with its mean alpha."""

    name: str
    alpha: float | None
    clean_acc: float
    attacked_acc: float
    alpha_clean: float | None = None
    alpha_attacked: float | None = None


@dataclass(frozen=True)
class Comparison:
    """The trained mixer against the best fixed alpha at equal (or higher) clean accuracy (Section 5.2)."""

    eps: float
    steps: int
    norm: str
    n_examples: int
    rows: tuple[ComparisonRow, ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare_fixed_alpha(
    mixed: MixedClassifier,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    steps: int = 20,
    norm: str = "linf",
    batch_size: int = 256,
    seed: int = 0,
    grid: float = 0.01,
    device: torch.device = torch.device("cpu"),
    progress: ProgressFn | None = None,
) -> Comparison:
    """g, h, the adaptive mix and the fixed alpha with the most robustness whose clean accuracy is
    at least the adaptive mix's, all under the same white-box PGD (end to end through alpha).

    The fixed alpha is the largest on a ``grid`` whose clean accuracy (from cached base logits)
    reaches the adaptive model's; robustness grows with alpha (Figure 4), so it is the best fixed
    alpha at equal clean accuracy."""
    if steps < 1:
        raise AsmixError("the comparison needs PGD steps >= 1")
    settings = dict(eps=eps, steps=steps, norm=norm, batch_size=batch_size, seed=seed, device=device)
    mixed.eval()
    clean, attacked, alpha_clean, alpha_attacked = validate(mixed, x, y, **settings)
    adaptive = ComparisonRow("adaptive (mixing network)", None, clean, attacked, alpha_clean, alpha_attacked)
    with torch.no_grad():
        std_logits = torch.cat([mixed.std(x[b].to(device)) for b in batch_slices(len(x), batch_size)])
        rob_logits = torch.cat([mixed.rob(x[b].to(device)) for b in batch_slices(len(x), batch_size)])
    y_device = y.to(device)
    alphas = [round(i * grid, 6) for i in range(int(round(1 / grid)) + 1)]
    clean_by_alpha = {a: (mixed.mix(std_logits, rob_logits, a).argmax(1) == y_device).float().mean().item()
                      for a in alphas}
    feasible = [a for a in alphas if clean_by_alpha[a] >= clean - 0.5 / len(x)]  # same count of correct examples
    best = max(feasible) if feasible else max(alphas, key=lambda a: (clean_by_alpha[a], a))  # else the most accurate
    rows = []
    for name, alpha in (("g (std)", 0.0), ("h (rob)", 1.0), (f"fixed alpha = {best:g}", best)):
        fixed = mixed.with_alpha(alpha)
        clean_acc, attacked_acc, _, _ = validate(fixed, x, y, **settings)
        rows.append(ComparisonRow(name, alpha, clean_acc, attacked_acc))
        if progress:
            progress("compare", len(rows), 3)
    return Comparison(eps, steps, norm, len(x), tuple(rows) + (adaptive,))


def _save_checkpoint(path: Path, identity: dict, epoch: int, mixer: nn.Module, ema: _Ema, optimizer, scheduler,
                     history: list[EpochRecord]) -> None:
    state = {
        "identity": json.dumps(identity, sort_keys=True),
        "epoch": epoch,
        "mixer": mixer.state_dict(),
        "ema": ema.model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "history": json.dumps([asdict(record) for record in history]),
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    atomic_write(path, lambda temporary: torch.save(state, temporary))


def _load_checkpoint(path: Path, identity: dict, mixer: nn.Module, ema: _Ema, optimizer, scheduler):
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        stored = json.loads(state["identity"])
    except Exception as error:
        raise AsmixError(f"cannot read checkpoint {path}: {str(error).splitlines()[0] if str(error) else type(error).__name__}") from error
    current = json.loads(json.dumps(identity, sort_keys=True))
    if stored != current:
        changed = sorted(_differences(stored, current))
        raise AsmixError(f"checkpoint {path} was written with other settings ({', '.join(changed[:6])}): "
                         f"rerun with the same options or without --resume")
    mixer.load_state_dict(state["mixer"])
    ema.model.load_state_dict(state["ema"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng_cpu"])
    if state["rng_cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng_cuda"])
    history = [EpochRecord(**record) for record in json.loads(state["history"])]
    return int(state["epoch"]), history


def _differences(stored: Any, current: Any, prefix: str = "") -> list[str]:
    if isinstance(stored, dict) and isinstance(current, dict):
        out = []
        for key in sorted(set(stored) | set(current)):
            out += _differences(stored.get(key), current.get(key), f"{prefix}{key}.")
        return out
    return [] if stored == current else [prefix.rstrip(".")]


VAL_SPLITS = ("test", "train")


@dataclass(frozen=True)
class TrainData:
    """Disjoint training, held-out (validation, alpha-range choice) and evaluation examples."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_train_data(source, n_train: int | None, n_val: int, val_split: str = "test") -> TrainData:
    """Training examples from the start of the train split; held-out examples from the END of
    ``val_split`` (``test`` by default: base models have usually been fit to their train split, so
    their accuracy there says little); evaluation examples are the rest of the test split.

    With a data file (``--data``) all three come from it: train first, held-out last, evaluation between."""
    from asmix.data import load_data

    if val_split not in VAL_SPLITS:
        raise AsmixError(f"val split must be one of {', '.join(VAL_SPLITS)}, got {val_split!r}")
    if n_val <= 0:
        raise AsmixError(f"n-val must be positive, got {n_val}")
    if n_train is not None and n_train <= 0:
        raise AsmixError(f"n-train must be positive, got {n_train}")
    options = dict(data_path=source.data, data_dir=source.data_dir)
    x, y = load_data(source.dataset, split="train", **options)
    if source.data is not None or val_split == "train":
        n_train = len(x) - n_val if n_train is None else n_train
        if n_train + n_val > len(x):
            raise AsmixError(f"{len(x)} examples cannot hold n-train {n_train} + n-val {n_val}")
        if source.data is not None:
            return TrainData(x[:n_train], y[:n_train], x[len(x) - n_val:], y[len(y) - n_val:],
                             x[n_train:len(x) - n_val], y[n_train:len(y) - n_val])
        x_test, y_test = load_data(source.dataset, split="test", **options)
        return TrainData(x[:n_train], y[:n_train], x[len(x) - n_val:], y[len(y) - n_val:], x_test, y_test)
    x_test, y_test = load_data(source.dataset, split="test", **options)
    if n_val >= len(x_test):
        raise AsmixError(f"the test split has {len(x_test)} examples: n-val {n_val} leaves none for evaluation")
    n_train = len(x) if n_train is None else min(n_train, len(x))
    split = len(x_test) - n_val
    return TrainData(x[:n_train], y[:n_train], x_test[split:], y_test[split:], x_test[:split], y_test[:split])


@dataclass(frozen=True)
class RunSize:
    """How much data and work a run gets by default: smaller on the demo data (about 3 CPU minutes)."""

    n_train: int | None
    n_val: int
    epochs: int
    batch_size: int
    steps_range: tuple[int, int]
    val_steps: int
    n_compare: int


def default_run_size(dataset: str) -> RunSize:
    """Defaults per dataset; every value can be overridden from the CLI."""
    if dataset == "demo":
        return RunSize(n_train=4096, n_val=500, epochs=8, batch_size=64, steps_range=(5, 10), val_steps=10, n_compare=1000)
    return RunSize(n_train=None, n_val=1000, epochs=10, batch_size=128, steps_range=(5, 20), val_steps=20,
                   n_compare=1000)


__all__ = ["Comparison", "ComparisonRow", "EpochRecord", "compare_fixed_alpha", "default_run_size", "RangeSelection", "SETTINGS", "TrainConfig", "TrainResult", "attack_batch", "composite_loss",
           "TrainData", "load_train_data", "mixed_objective", "parse_range", "pseudo_labels", "select_alpha_range",
           "train_mixer", "validate"]
