"""The training loop of the mixing network (Section 4.4, App. D.1): ``train_mixer`` calls one function per phase.
Only the mixer learns (eq. 4.2); every draw is keyed by seed, epoch and step, so a resumed run computes what one
uninterrupted run does."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from asmix import distributed
from asmix.errors import AsmixError
from asmix.experiments.train.adversary import TrainingRows, attack_rows, training_rows
from asmix.experiments.train.checkpoint import (
    LOG,
    TRAIN_DIR,
    Ema,
    adopt_train_dir,
    checkpoint_path,
    data_fingerprint,
    find_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from asmix.experiments.train.comparison import Verdict, judge
from asmix.experiments.train.config import TrainConfig
from asmix.experiments.train.loss import composite_loss, pseudo_labels
from asmix.experiments.train.selection import HeadSelection, select_head
from asmix.experiments.train.validation import validate
from asmix.identity import base_weights
from asmix.io import atomic_write_text
from asmix.mixer import MixingNetwork, save_mixer
from asmix.mixing import EvaluationHead, MixedClassifier, MixSettings
from asmix.runtime import ProgressFn, batch_generator, batch_slices


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
class TrainResult:
    """A finished run: its settings, per-epoch history, the evaluation head (range, bias and logit scales), the head
    choice and the verdict against the fixed alphas (when asked for), and the trained mixer itself."""

    config: TrainConfig
    history: tuple[EpochRecord, ...]
    head: EvaluationHead
    n_train: int
    n_val: int
    selection: HeadSelection | None = None
    verdict: Verdict | None = None
    models: dict[str, str] = field(default_factory=dict)
    out_dir: str | None = None
    mixer: MixingNetwork | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict() | {"n_train": self.n_train, "n_val": self.n_val, "models": self.models},
            "alpha_range": list(self.head.alpha_range),
            "alpha_bias": self.head.alpha_bias,
            "head": self.head.to_dict(),
            "history": [asdict(record) for record in self.history],
            "selection": self.selection.to_dict() if self.selection else None,
            "verdict": self.verdict.to_dict() if self.verdict else None,
            "out_dir": self.out_dir,
        }

    def mixed_classifier(self, std: nn.Module, rob: nn.Module) -> MixedClassifier:
        """h_alpha with the trained mixer and its whole evaluation head (range, bias, logit scales)."""
        return head_classifier(std, rob, self.mixer, self.head)


@dataclass
class _Totals:
    """Running sums of one epoch's training steps."""

    loss: float = 0.0
    steps: int = 0
    alpha_clean: float = 0.0
    clean: int = 0
    alpha_attacked: float = 0.0
    attacked: int = 0

    def __add__(self, other: "_Totals") -> "_Totals":
        return _Totals(*(a + b for a, b in zip(asdict(self).values(), asdict(other).values())))


def _cosine(total_steps: int) -> Callable[[int], float]:
    return lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))


def _autocast(device: torch.device, enabled: bool):
    """bf16 autocast for the frozen base models' work (training attacks and features) where asked."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else nullcontext()


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
    judge_mixer: bool = True,
    device: torch.device = torch.device("cpu"),
    progress: ProgressFn | None = None,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    on_step: Callable[[int, int], None] | None = None,
    models: dict[str, str] | None = None,
    dataset: str | None = None,
) -> TrainResult:
    """Train alpha_theta for the frozen pair (g, h), choose its evaluation head (by its gain over the tempered fixed
    alpha, or for ``target_clean_acc``; ``config.choose_head``) and judge it against the fixed alphas of equal clean
    accuracy; return the EMA mixer with its history. ``models`` (g's and h's specs) and ``dataset`` name them in
    mixer.json.

    Held-out examples serve validation (all of them), the head choice (the first half) and the verdict (the rest, or
    all without a head choice). Under torchrun the mixer is wrapped in DistributedDataParallel and each global
    batch split across ranks; rank 0 writes ``train/checkpoint.pt`` (every epoch) and ``train/train_log.jsonl`` in
    ``out_dir``, and the mixer at its top. ``resume`` continues from the checkpoint (an older run's at the top too);
    ``on_step(epoch, step)`` runs after each batch."""
    n_train, n_val = len(x_train), len(x_val)
    world = distributed.world_size()
    if n_train < config.run.batch_size:
        raise AsmixError(
            f"need at least one full batch: {n_train} training examples < batch size {config.run.batch_size}"
        )
    if config.run.batch_size % world:
        raise AsmixError(f"batch size {config.run.batch_size} must be divisible by the number of processes ({world})")
    if n_val < (2 if config.choose_head and judge_mixer else 1):
        raise AsmixError(f"too few held-out examples ({n_val})")
    out_dir = Path(out_dir) if out_dir is not None else None
    writer = out_dir is not None and distributed.is_main_process()
    models = models or {}

    mixed, mixer = _build(std, rob, x_train, config, device)
    ema = Ema(mixer, config.ema_decay)
    ema_mixed = mixed.with_alpha(ema.model).eval()
    optimizer = torch.optim.AdamW(mixer.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = n_train // config.run.batch_size
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _cosine(steps_per_epoch * config.copies * config.epochs))
    fingerprint = data_fingerprint(x_train, y_train)
    weights = base_weights(mixed.std, mixed.rob)
    identity = {
        "config": config.to_dict(),
        "n_train": n_train,
        "n_val": n_val,
        "data_fingerprint": fingerprint,
        "models": models,
        "base_weights": weights,
    }
    checkpoint = checkpoint_path(out_dir) if out_dir is not None else None
    found = find_checkpoint(out_dir) if out_dir is not None else None
    history: list[EpochRecord] = []
    start_epoch = 0
    if not resume and writer and found is not None and not (out_dir / "mixer.json").is_file():
        raise AsmixError(
            f"{out_dir} holds the checkpoint of an unfinished run: pass --resume to continue it, "
            f"or choose another --out"
        )
    if resume:
        if found is None:
            raise AsmixError(f"--resume: no checkpoint at {checkpoint}")
        start_epoch, history = load_checkpoint(found, identity, mixer, ema, optimizer, scheduler, EpochRecord)
        distributed.barrier()  # every rank has read it before rank 0 moves an older layout's into train/
        if writer and found != checkpoint:
            adopt_train_dir(out_dir)

    trained = mixer
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        trained = DistributedDataParallel(mixer, device_ids=[device.index] if device.type == "cuda" else None)

    part = distributed.shard_slice(config.run.batch_size)
    settings = dict(  # of validation, the head choice and the verdict
        eps=config.validation_threat.eps,
        norm=config.threat.norm,
        batch_size=config.run.batch_size,
        seed=config.run.seed,
        device=device,
        progress=progress,
    )
    for epoch in range(start_epoch, config.epochs):
        started = time.perf_counter()
        order = torch.randperm(n_train, generator=batch_generator(config.run.seed, "shuffle", epoch))
        totals = _Totals()
        mixer.train()
        for step in range(steps_per_epoch):
            index = order[step * config.run.batch_size : (step + 1) * config.run.batch_size][part]
            generator = batch_generator(config.run.seed, "train", epoch, step)
            with _autocast(device, config.bf16):
                rows = training_rows(
                    mixed,
                    x_train,
                    y_train,
                    index,
                    config,
                    generator,
                    device,
                    offset=part.start,
                    total=config.run.batch_size,
                )
            totals += _learn(trained, mixer, mixed, rows, config, optimizer, scheduler, ema, generator, device)
            if progress:
                progress(f"epoch {epoch + 1}/{config.epochs}", step + 1, steps_per_epoch)
            if on_step:
                on_step(epoch, step)
        totals = sum(distributed.gather_objects(totals), _Totals())
        check = validate(ema_mixed, x_val, y_val, steps=config.validation_threat.steps, **settings)
        record = EpochRecord(
            epoch + 1,
            totals.loss / (totals.clean + totals.attacked),
            scheduler.get_last_lr()[0],
            check.clean_acc,
            check.attacked_acc,
            check.alpha_clean,
            check.alpha_attacked,
            totals.alpha_clean / totals.clean,
            totals.alpha_attacked / totals.attacked,
            time.perf_counter() - started,
        )
        history.append(record)
        if writer:
            save_checkpoint(checkpoint, identity, epoch + 1, mixer, ema, optimizer, scheduler, history)
            atomic_write_text(out_dir / TRAIN_DIR / LOG, "".join(json.dumps(asdict(r)) + "\n" for r in history))
        if on_epoch and distributed.is_main_process():
            on_epoch(record)
        distributed.barrier()

    final = ema.model.eval()
    head = EvaluationHead(*config.alpha_range, config.alpha_bias, config.mix.std_scale, config.mix.rob_scale)
    choose, check = _held_out_halves(n_val, config.choose_head and judge_mixer)
    selection = verdict = None
    baseline_scales = (1.0, 1.0)
    if config.choose_head:
        selection = select_head(
            ema_mixed,
            x_val[choose],
            y_val[choose],
            config.target_clean_acc,
            min_alpha=config.range_min_alpha,
            max_width=config.range_max_width,
            budget=config.lite_budget,
            **settings,
        )
        head = selection.head
        baseline_scales = (selection.baseline.head.std_scale, selection.baseline.head.rob_scale)
    final.set_head(head)
    if judge_mixer:
        training_attack = _training_attack_points(mixed.with_alpha(final), x_val[check], y_val[check], config, device)
        verdict = judge(
            head_classifier(mixed.std, mixed.rob, final, head),
            x_val[check],
            y_val[check],
            baseline_scales=baseline_scales,
            budget=config.lite_budget,
            profile_points={TRAINING_ATTACK_POINTS: training_attack},
            **settings,
        )
    if writer:
        save_mixer(
            final,
            out_dir,
            config={
                "models": models,
                "dataset": dataset,
                "training": config.to_dict(),
                "n_train": n_train,
                "n_val": n_val,
                "data_fingerprint": fingerprint,
                "selection": selection.to_dict() if selection else None,
                "verdict": verdict.to_dict() if verdict else None,
                "history": [asdict(r) for r in history],
                "base_weights": weights,  # hashed once, for the checkpoint identity above
            },
            scales=(head.std_scale, head.rob_scale),
        )
    distributed.barrier()
    return TrainResult(
        config,
        tuple(history),
        head,
        n_train,
        n_val,
        selection,
        verdict,
        models,
        str(out_dir) if out_dir is not None else None,
        final,
    )


def head_classifier(std: nn.Module, rob: nn.Module, mixer: MixingNetwork, head: EvaluationHead) -> MixedClassifier:
    """h_alpha of ``mixer`` with ``head`` set: its range and bias on the network, its logit scales on the mix."""
    mixer.set_head(head)
    return MixSettings(std_scale=head.std_scale, rob_scale=head.rob_scale).classifier(std, rob, mixer).eval()


TRAINING_ATTACK_POINTS = "training attack"
"""The detector profile's row of the training attack's own rows."""


def _training_attack_points(
    mixed: MixedClassifier, x: torch.Tensor, y: torch.Tensor, config: TrainConfig, device: torch.device
) -> torch.Tensor:
    """The training attack's attacked rows (``attack_rows``, the training head) for the held-out ``(x, y)``, batch
    by batch, each keyed by the seed and its start: the points the mixer learnt to flag, for the detector profile."""
    rows = []
    for part in batch_slices(len(x), config.run.batch_size):
        generator = batch_generator(config.run.seed, "profile", part.start)
        rows.append(attack_rows(mixed, x[part].to(device), y[part].to(device), config, generator).cpu())
    return torch.cat(rows)


def _held_out_halves(n: int, split: bool) -> tuple[slice, slice]:
    """The held-out examples that choose the head and those that judge it (all of them for both without a split)."""
    if not split:
        return slice(0, n), slice(0, n)
    half = (n + 1) // 2
    return slice(0, half), slice(half, n)


def _build(
    std: nn.Module, rob: nn.Module, x_train: torch.Tensor, config: TrainConfig, device: torch.device
) -> tuple[MixedClassifier, MixingNetwork]:
    """The mixing network for this pair (seeded) and the mixed classifier that trains with it."""
    pair = config.mix.classifier(std, rob).to(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.run.seed)
        mixer = MixingNetwork.build(
            pair.std,
            pair.rob,
            x_train[:1].to(device),
            std_layers=config.std_layers,
            rob_layers=config.rob_layers,
            width=config.width,
            blocks=config.blocks,
            stages=config.stages,
            scale=config.scale,
            clamp_std=config.clamp_std,
            bn_momentum=config.bn_momentum,
            inputs=config.mixer_inputs,
        )
    mixer = mixer.to(device)
    return pair.with_alpha(mixer), mixer


def _learn(
    trained: nn.Module,
    mixer: MixingNetwork,
    mixed: MixedClassifier,
    rows: TrainingRows,
    config: TrainConfig,
    optimizer,
    scheduler,
    ema: Ema,
    generator: torch.Generator,
    device: torch.device,
) -> _Totals:
    """Optimiser steps on one batch's rows: with several attacked copies the rows are shuffled into
    ``copies`` chunks of one clean and one attacked image per clean image on average (the authors' code);
    each chunk is one step, split into ``accum_steps`` micro-batches whose gradients add up."""
    n = len(rows)
    chunk = n // config.copies
    order = torch.arange(n) if config.copies == 1 else torch.randperm(n, generator=generator)
    totals = _Totals()
    for start in range(0, n, chunk):
        optimizer.zero_grad(set_to_none=True)
        picked = order[start : start + chunk].to(device)
        micro = [part for part in picked.chunk(config.accum_steps) if len(part)]
        for part in micro:
            loss, step_totals = _chunk_loss(trained, mixer, mixed, rows, part.to(rows.x.device), config, device)
            (loss * len(part) / len(picked)).backward()
            totals += step_totals
        totals.steps += 1
        torch.nn.utils.clip_grad_norm_(mixer.parameters(), config.grad_clip)
        optimizer.step()
        scheduler.step()
        ema.update(mixer)
    return totals


def _chunk_loss(
    trained: nn.Module,
    mixer: MixingNetwork,
    mixed: MixedClassifier,
    rows: TrainingRows,
    index: torch.Tensor,
    config: TrainConfig,
    device: torch.device,
) -> tuple[torch.Tensor, _Totals]:
    """Composite loss (eq. 4.2) of some rows; base logits and features without gradient (bf16 if asked)."""
    x, y, attacked = rows.x[index], rows.y[index], rows.attacked[index]
    with torch.no_grad(), _autocast(device, config.bf16):
        std_logits, rob_logits, std_features, rob_features = mixer.features(x, mixed.std, mixed.rob)
    std_logits, rob_logits = std_logits.float(), rob_logits.float()
    std_features = tuple(feature.float() for feature in std_features)
    rob_features = tuple(feature.float() for feature in rob_features)
    logit = trained(std_features, rob_features) + config.train_bias
    alpha = torch.sigmoid(logit)
    pseudo = pseudo_labels(std_logits, rob_logits, y, attacked, config.pseudo_labels)
    loss = composite_loss(
        mixed.mix(std_logits, rob_logits, alpha),
        logit,
        y,
        pseudo,
        c_ce=config.c_ce,
        c_bce=config.c_bce,
        c_prod=config.c_prod,
    ).mean()
    alpha = alpha.detach()
    return loss, _Totals(
        loss.item() * len(index),
        0,
        alpha[~attacked].sum().item(),
        int((~attacked).sum()),
        alpha[attacked].sum().item(),
        int(attacked.sum()),
    )
