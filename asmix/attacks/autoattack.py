"""AutoAttack on a (mixed) classifier: the standard version with its per-attack accuracy trail and
"potentially unreliable" flag (Section 5), and the adaptive version of setting D (Section 4.2).

The attacks themselves are the AutoAttack package's (``pyautoattack``, imported as ``autoattack``);
nothing here re-implements them. ``AlphaAPGD`` subclasses the package's APGD to add a loss term that
pushes the mixing network's alpha down (toward trusting the accurate g).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from asmix.attacks.pgd import NORMS
from asmix.compat import register_autoattack
from asmix.errors import AsmixError

STANDARD_ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square")
"""The standard AutoAttack ensemble, in the package's order."""

ALPHA_ATTACK = "apgd-alpha"
"""Name of the adaptive APGD (CE plus the alpha term) in accuracy trails."""

SQUARE_QUERIES = 5000
"""Square's query budget in standard AutoAttack."""

UNRELIABLE_DROP = 0.002
"""AutoAttack's threshold: Square lowering accuracy by >= 0.2 points after the gradient attacks."""

_PACKAGE_NORMS = {"linf": "Linf", "l2": "L2"}


def package_norm(norm: str) -> str:
    """asmix norm name (linf, l2) → the AutoAttack package's (Linf, L2)."""
    if norm not in NORMS:
        raise AsmixError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    return _PACKAGE_NORMS[norm]


def potentially_unreliable(trail: Mapping[str, float], *, drop: float = UNRELIABLE_DROP) -> bool:
    """AutoAttack's "potentially unreliable" flag (Section 5.2.2): Square, run last, lowered the
    accuracy by at least ``drop`` (0.2 points) below the best of the gradient attacks before it.

    ``trail`` maps ``clean`` and each attack to the accuracy after it (fractions). Without Square, or
    without any attack before it, there is nothing to flag.
    """
    if "square" not in trail:
        return False
    before = [value for name, value in trail.items() if name not in ("square", "clean", ALPHA_ATTACK)]
    if not before:
        return False
    return trail["square"] < min(before) - drop + 1e-12


def accuracy_trail(robust: torch.Tensor, stages: Sequence[str]) -> dict[str, float]:
    """Accuracy after each stage from per-example flags ``robust`` of shape (N, len(stages))."""
    if robust.ndim != 2 or robust.shape[1] != len(stages):
        raise ValueError(f"robust flags of shape {tuple(robust.shape)} do not match {len(stages)} stages")
    means = robust.float().mean(0) if len(robust) else torch.zeros(len(stages))
    return {stage: float(value) for stage, value in zip(stages, means)}


@dataclass(frozen=True)
class AutoAttackRun:
    """Outcome of AutoAttack on one batch.

    ``robust[:, k]`` says whether each example was still classified correctly after stage k
    (``stages[0]`` is ``clean``); ``x_adv`` holds, per example, the perturbation that fooled the model
    (the clean input where none did).
    """

    x_adv: torch.Tensor
    robust: torch.Tensor
    stages: tuple[str, ...]

    @property
    def trail(self) -> dict[str, float]:
        return accuracy_trail(self.robust, self.stages)


def standard_autoattack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    seed: int = 0,
    attacks: Sequence[str] = STANDARD_ATTACKS,
    square_queries: int = SQUARE_QUERIES,
) -> AutoAttackRun:
    """Standard AutoAttack (APGD-CE, APGD-T, FAB-T, Square; Croce & Hein 2020) on ``model``'s logits.

    The package's ``run_standard_evaluation`` runs once per attack on the examples still robust, with
    the package's standard settings, so the accuracy after each attack is known (the package keeps it
    internal). ``seed`` seeds every attack (they reseed torch's generator), so a batch's outcome is the
    same in any run; torch's global generator is restored afterwards. ``square_queries`` below the
    standard 5000 makes a quicker, weaker check (not the standard evaluation).
    """
    aa_module = register_autoattack()
    unknown = set(attacks) - set(STANDARD_ATTACKS)
    if unknown:
        raise AsmixError(f"unknown AutoAttack attack(s) {', '.join(sorted(unknown))}")
    device = x.device
    adversary = aa_module.AutoAttack(model, eps=float(eps), norm=package_norm(norm), version="standard",
                                     device=device, seed=int(seed))
    adversary.verbose = False
    if square_queries <= 0:
        raise AsmixError(f"square queries must be positive, got {square_queries}")
    adversary.square.n_queries = int(square_queries)
    x, y = x.detach(), y.to(device)
    with torch.no_grad():
        robust = model(x).argmax(1) == y
    flags = [robust.clone()]
    x_adv = x.clone()
    with _restored_rng(device):
        for attack in attacks:
            index = robust.nonzero().flatten()
            if len(index):
                adversary.attacks_to_run = [attack]
                x_attack, _ = adversary.run_standard_evaluation(x[index], y[index], batch_size=len(index))
                with torch.no_grad():
                    fooled = model(x_attack).argmax(1) != y[index]
                x_adv[index[fooled]] = x_attack[fooled]
                robust[index[fooled]] = False
            flags.append(robust.clone())
    return AutoAttackRun(x_adv, torch.stack(flags, 1).cpu(), ("clean", *attacks))


class _AlphaTap(nn.Module):
    """Calls a ``MixedClassifier`` and keeps the alpha of the last forward pass (with its graph), for
    the adaptive APGDs' ``alpha_weight`` * BCE(alpha, 1) term."""

    def __init__(self, mixed: nn.Module, alpha_weight: float) -> None:
        if alpha_weight < 0:
            raise AsmixError(f"alpha weight must be >= 0, got {alpha_weight}")
        super().__init__()
        self.mixed = mixed
        self.alpha_weight = float(alpha_weight)
        self.alpha: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits, self.alpha = self.mixed(x, return_alpha=True)
        return logits

    def alpha_term(self) -> torch.Tensor | float:
        """``alpha_weight`` * BCE(alpha, 1) of the last forward pass; exactly 0 where alpha is fixed, so
        the attack is then the package's own, bit for bit (a constant would only perturb its rounding)."""
        if self.alpha_weight == 0 or not getattr(self.mixed, "adaptive", False):
            return 0.0
        return self.alpha_weight * alpha_penalty(self.alpha)


def alpha_penalty(alpha: torch.Tensor) -> torch.Tensor:
    """BCE(alpha, 1) = -log(alpha) per example: grows as alpha falls toward 0 (trusting g)."""
    return -torch.log(alpha.clamp_min(1e-12))


_AUTOPGD = register_autoattack().autopgd_base  # the package's APGD module, under either import name


class AlphaAPGD(_AUTOPGD.APGDAttack):
    """APGD (the package's) whose loss is ``CE (or DLR) + alpha_weight * BCE(alpha(x), 1)``: the
    adaptive attack of setting D (Section 4.2) that also pushes the mixing network's alpha down.

    ``mixed`` is a ``MixedClassifier``; its alpha is read from ``mixed(x, return_alpha=True)``. With a
    fixed alpha the extra term is left out, so the attack follows plain APGD exactly. The composite
    loss is plugged in through the package's hook for a loss given as a method (``dlr_loss``, used for
    ``loss='dlr'``); the base loss is chosen by ``loss``.
    """

    def __init__(self, mixed: nn.Module, *, eps: float, norm: str = "linf", loss: str = "ce",
                 alpha_weight: float = 1.0, n_iter: int = 100, n_restarts: int = 1, seed: int = 0,
                 rho: float = 0.75, device: torch.device | None = None) -> None:
        if loss not in ("ce", "dlr"):
            raise AsmixError(f"adaptive APGD loss must be ce or dlr, got {loss!r}")
        self.tap = _AlphaTap(mixed, alpha_weight)
        super().__init__(self.tap, n_iter=n_iter, norm=package_norm(norm), n_restarts=n_restarts, eps=float(eps),
                         seed=int(seed), loss="dlr", rho=rho, device=device)
        self.base_loss = loss

    def dlr_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-example loss to maximise; ``logits`` come from the tap's last forward pass."""
        if self.base_loss == "ce":
            base = F.cross_entropy(logits, y, reduction="none")
        else:
            base = super().dlr_loss(logits, y)
        return base + self.tap.alpha_term()


class AlphaAPGDTargeted(_AUTOPGD.APGDAttack_targeted):
    """The package's APGD-T (targeted DLR) with ``alpha_weight`` * BCE(alpha(x), 1) added to its loss,
    as ``AlphaAPGD`` does for APGD-CE; ``train-mixer --setting C`` uses both."""

    def __init__(self, mixed: nn.Module, *, eps: float, norm: str = "linf", alpha_weight: float = 1.0,
                 n_iter: int = 100, n_restarts: int = 1, n_target_classes: int = 9, seed: int = 0,
                 rho: float = 0.75, device: torch.device | None = None) -> None:
        self.tap = _AlphaTap(mixed, alpha_weight)
        super().__init__(self.tap, n_iter=n_iter, norm=package_norm(norm), n_restarts=n_restarts, eps=float(eps),
                         seed=int(seed), rho=rho, n_target_classes=n_target_classes, device=device)

    def dlr_loss_targeted(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Targeted DLR toward ``self.y_target`` plus the alpha term of the tap's last forward pass."""
        return super().dlr_loss_targeted(logits, y) + self.tap.alpha_term()


def adaptive_autoattack(
    mixed: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    seed: int = 0,
    alpha_weight: float = 1.0,
    standard: AutoAttackRun | None = None,
    square_queries: int = SQUARE_QUERIES,
) -> AutoAttackRun:
    """Setting D: standard AutoAttack plus ``AlphaAPGD`` on the examples it left robust.

    ``standard`` reuses a standard run on the same batch. Where alpha is fixed (no mixing network)
    the alpha term has no gradient and the extra APGD would repeat APGD-CE, so it is skipped and the
    result equals standard AutoAttack.
    """
    if standard is None:
        standard = standard_autoattack(mixed, x, y, eps=eps, norm=norm, seed=seed, square_queries=square_queries)
    robust = standard.robust[:, -1].clone().to(x.device)
    x_adv = standard.x_adv.clone()
    if getattr(mixed, "adaptive", False) and robust.any():
        index = robust.nonzero().flatten()
        attack = AlphaAPGD(mixed, eps=eps, norm=norm, alpha_weight=alpha_weight, seed=seed, device=x.device)
        with _restored_rng(x.device), torch.no_grad():
            x_attack = attack.perturb(x[index].detach(), y[index].to(x.device))
            fooled = mixed(x_attack).argmax(1) != y[index].to(x.device)
        x_adv[index[fooled]] = x_attack[fooled]
        robust[index[fooled]] = False
    flags = torch.cat((standard.robust, robust.cpu().unsqueeze(1)), 1)
    return AutoAttackRun(x_adv, flags, (*standard.stages, ALPHA_ATTACK))


def _restored_rng(device: torch.device):
    """The attacks reseed torch's global generator; give it back as it was afterwards."""
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])
