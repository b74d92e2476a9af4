"""Per-epoch validation of the mixer: clean and white-box PGD accuracy and the mean alpha of each."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from asmix import distributed
from asmix.experiments.train.adversary import ShardPGD
from asmix.mixing import MixedClassifier
from asmix.runtime import ProgressFn, batch_generator, batch_slices


@dataclass(frozen=True)
class Validation:
    """Accuracy (fractions) and mean alpha on clean inputs and, with PGD steps > 0, under white-box PGD."""

    clean_acc: float
    attacked_acc: float | None
    alpha_clean: float
    alpha_attacked: float | None


def validate(
    mixed: MixedClassifier,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    steps: int,
    norm: str,
    batch_size: int,
    seed: int,
    device: torch.device,
    progress: ProgressFn | None = None,
) -> Validation:
    """Clean and white-box PGD (end to end through alpha) accuracy of ``mixed`` in eval mode; each global
    batch is split across ranks and the sums gathered."""
    mixed.eval()
    sums = torch.zeros(5, dtype=torch.float64)  # clean right, attacked right, alpha clean, alpha attacked, count
    for batch in batch_slices(len(x), batch_size):
        part = distributed.shard_slice(batch.stop - batch.start)
        index = slice(batch.start + part.start, batch.start + part.stop)
        xb, yb = x[index].to(device), y[index].to(device)
        if len(xb) == 0:
            continue
        with torch.no_grad():
            logits, alpha = mixed(xb, return_alpha=True)
        sums += torch.tensor(
            [(logits.argmax(1) == yb).sum().item(), 0, alpha.sum().item(), 0, len(xb)], dtype=torch.float64
        )
        if steps > 0:
            attack = ShardPGD(eps=eps, steps=steps, norm=norm, offset=part.start, total=batch.stop - batch.start)
            x_adv = attack.perturb(mixed, xb, yb, generator=batch_generator(seed, "validate", batch.start))
            with torch.no_grad():
                logits, alpha = mixed(x_adv, return_alpha=True)
            sums[1] += (logits.argmax(1) == yb).sum().item()
            sums[3] += alpha.sum().item()
        if progress:
            progress("validate", batch.stop, len(x))
    sums = sum(distributed.gather_objects(sums))
    count = sums[4].item()
    if steps == 0:
        return Validation(sums[0].item() / count, None, sums[2].item() / count, None)
    return Validation(sums[0].item() / count, sums[1].item() / count, sums[2].item() / count, sums[3].item() / count)
