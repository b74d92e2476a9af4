"""The verdict on a trained mixer: against the fixed alpha of equal clean accuracy, under the same quick
worst-case attack (``autoattack_lite``: adaptive APGD-CE, APGD-T, alpha-first and Square, end to end)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from asmix.attacks.adaptive import LITE_BUDGET, AttackBudget
from asmix.errors import AsmixError
from asmix.experiments.train.selection import lite_runs
from asmix.mixing import MixedClassifier
from asmix.runtime import ProgressFn, batch_slices

NO_GAIN = "no gain: the mixer only detects the training attack"


@dataclass(frozen=True)
class JudgedModel:
    """One classifier under the verdict's attack: accuracies (fractions), correct counts and mean alpha."""

    name: str
    alpha: float | None
    clean_acc: float
    attacked_acc: float
    clean_correct: int
    attacked_correct: int
    alpha_clean: float
    alpha_attacked: float


@dataclass(frozen=True)
class Verdict:
    """The mixer against the most robust fixed alpha whose clean accuracy is at least the mixer's."""

    n_examples: int
    eps: float
    norm: str
    mixer: JudgedModel
    fixed: JudgedModel
    square_queries: int = LITE_BUDGET.square_queries

    @property
    def gain(self) -> float:
        """Robust accuracy of the mixer minus that of the fixed alpha, in points."""
        return 100 * (self.mixer.attacked_acc - self.fixed.attacked_acc)

    @property
    def line(self) -> str:
        """The one-line verdict the CLI prints."""
        counts = (
            f"{self.mixer.attacked_correct}/{self.n_examples} vs {self.fixed.attacked_correct}/{self.n_examples} "
            f"under adaptive AutoAttack-lite (Square {self.square_queries} queries), "
            f"clean {self.mixer.clean_correct} vs {self.fixed.clean_correct}"
        )
        if self.gain > 0:
            return (
                f"gain: {self.gain:+.2f} points over fixed alpha {self.fixed.alpha:g} ({counts}); "
                f"confirm it with asmix evaluate --attack aa,aa-adaptive"
            )
        return f"{NO_GAIN} ({self.gain:+.2f} points against fixed alpha {self.fixed.alpha:g}; {counts})"

    def to_dict(self) -> dict:
        return asdict(self) | {"gain_points": self.gain, "line": self.line}


def clean_logits(mixed: MixedClassifier, x: torch.Tensor, batch_size: int, device: torch.device):
    """g's and h's logits on ``x`` (one forward each), for scoring fixed alphas without forward passes."""
    std, rob = [], []
    with torch.no_grad():
        for batch in batch_slices(len(x), batch_size):
            xb = x[batch].to(device)
            std.append(mixed.std(xb))
            rob.append(mixed.rob(xb))
    return torch.cat(std), torch.cat(rob)


def equal_accuracy_alpha(
    mixed: MixedClassifier,
    std_logits: torch.Tensor,
    rob_logits: torch.Tensor,
    y: torch.Tensor,
    correct: int,
    grid: float = 0.01,
) -> float:
    """The largest alpha on ``grid`` whose clean count reaches ``correct`` (robustness grows with alpha,
    Figure 4, so it is the best fixed alpha at equal clean accuracy); else the most accurate alpha."""
    alphas = [round(i * grid, 6) for i in range(int(round(1 / grid)) + 1)]
    counts = {a: int((mixed.mix(std_logits, rob_logits, a).argmax(1) == y).sum()) for a in alphas}
    feasible = [a for a in alphas if counts[a] >= correct]
    return max(feasible) if feasible else max(alphas, key=lambda a: (counts[a], a))


def attack_accuracy(
    mixed: MixedClassifier, x: torch.Tensor, y: torch.Tensor, *, name: str = "", **settings
) -> JudgedModel:
    """Clean and ``autoattack_lite`` accuracy of ``mixed`` (batches seeded by their start), with mean alpha;
    ``settings`` as ``selection.lite_runs`` takes them."""
    mixed.eval()
    sums = torch.zeros(4, dtype=torch.float64)  # clean right, attacked right, alpha clean, alpha attacked
    for run in lite_runs(mixed, x, y, key=("judge",), task=f"AutoAttack-lite {name}".strip(), **settings):
        with torch.no_grad():
            _, alpha_adv = mixed(run.x_adv, return_alpha=True)
        sums += torch.tensor(
            [
                run.robust[:, 0].sum().item(),
                run.robust[:, -1].sum().item(),
                run.alpha[:, 0].sum().item(),
                alpha_adv.sum().item(),
            ],
            dtype=torch.float64,
        )
    n = len(x)
    alpha = None if mixed.adaptive else float(mixed.alpha)
    return JudgedModel(
        name,
        alpha,
        sums[0].item() / n,
        sums[1].item() / n,
        int(sums[0]),
        int(sums[1]),
        sums[2].item() / n,
        sums[3].item() / n,
    )


def judge(
    mixed: MixedClassifier,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    batch_size: int = 256,
    seed: int = 0,
    device: torch.device = torch.device("cpu"),
    budget: AttackBudget = LITE_BUDGET,
    progress: ProgressFn | None = None,
) -> Verdict:
    """The mixer and the fixed alpha of equal clean accuracy on ``(x, y)``, under the same adaptive
    AutoAttack-lite; the verdict says whether the mixer gains anything an adaptive attacker cannot undo."""
    if not mixed.adaptive:
        raise AsmixError("the verdict needs a mixing network")
    if len(x) == 0:
        raise AsmixError("no examples to judge the mixer on")
    settings = dict(
        eps=eps, norm=norm, batch_size=batch_size, seed=seed, device=device, budget=budget, progress=progress
    )
    adaptive = attack_accuracy(mixed, x, y, name="mixer", **settings)
    std_logits, rob_logits = clean_logits(mixed, x, batch_size, device)
    alpha = equal_accuracy_alpha(mixed, std_logits, rob_logits, y.to(device), adaptive.clean_correct)
    fixed = attack_accuracy(mixed.with_alpha(alpha), x, y, name=f"fixed alpha {alpha:g}", **settings)
    return Verdict(len(x), eps, norm, adaptive, fixed, budget.square_queries)
