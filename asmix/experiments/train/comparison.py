"""The verdict on a trained mixer: against the tempered fixed alpha of equal clean accuracy (the same freedom of logit
scales as the mixer's head) and the plain one (scales 1), under the same quick worst-case attack (``autoattack_lite``:
adaptive APGD-CE, APGD-T, alpha-first and Square, end to end)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch

from asmix.attacks.adaptive import LITE_BUDGET, AttackBudget
from asmix.errors import AsmixError
from asmix.experiments.detector import DetectorProfile, detector_profile
from asmix.experiments.train.selection import lite_runs
from asmix.mixing import MixedClassifier
from asmix.runtime import ProgressFn, batch_slices

NO_GAIN = "no gain: the mixer only detects the training attack"


@dataclass(frozen=True)
class JudgedModel:
    """One classifier under the verdict's attack: accuracies (fractions), correct counts and mean alpha."""

    name: str
    alpha: float | None
    std_scale: float
    rob_scale: float
    clean_acc: float
    attacked_acc: float
    clean_correct: int
    attacked_correct: int
    alpha_clean: float
    alpha_attacked: float


@dataclass(frozen=True)
class Verdict:
    """The mixer against the tempered fixed alpha (``fixed``: the most robust fixed alpha with the head search's
    logit scales whose clean accuracy is at least the mixer's; scales chosen on held-out examples) and the plain one
    (``plain``: scales 1). The gain is over the tempered one, the baseline with the mixer's freedoms."""

    n_examples: int
    eps: float
    norm: str
    mixer: JudgedModel
    fixed: JudgedModel
    plain: JudgedModel
    square_queries: int = LITE_BUDGET.square_queries
    detector_profile: DetectorProfile | None = None

    @property
    def gain(self) -> float:
        """Robust accuracy of the mixer minus that of the tempered fixed alpha, in points."""
        return 100 * (self.mixer.attacked_acc - self.fixed.attacked_acc)

    @property
    def line(self) -> str:
        """The one-line verdict the CLI prints."""
        counts = (
            f"{self.mixer.attacked_correct}/{self.n_examples} vs {self.fixed.attacked_correct}/{self.n_examples} "
            f"under adaptive AutoAttack-lite (Square {self.square_queries} queries), "
            f"clean {self.mixer.clean_correct} vs {self.fixed.clean_correct}; plain fixed alpha {self.plain.alpha:g}: "
            f"{self.plain.attacked_correct}/{self.n_examples}"
        )
        fixed = self.fixed
        baseline = f"tempered fixed alpha {fixed.alpha:g} (scales g {fixed.std_scale:g} / h {fixed.rob_scale:g})"
        if self.gain > 0:
            return (
                f"gain: {self.gain:+.2f} points over {baseline} ({counts}); "
                "confirm it with asmix evaluate --attack aa,aa-adaptive"
            )
        return f"{NO_GAIN} ({self.gain:+.2f} points against {baseline}; {counts})"

    def to_dict(self) -> dict:
        profile = None if self.detector_profile is None else self.detector_profile.to_dict()
        return asdict(self) | {"gain_points": self.gain, "line": self.line, "detector_profile": profile}


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
        mixed.settings.std_scale,
        mixed.settings.rob_scale,
        sums[0].item() / n,
        sums[1].item() / n,
        int(sums[0]),
        int(sums[1]),
        sums[2].item() / n,
        sums[3].item() / n,
    )


def with_scales(mixed: MixedClassifier, alpha: float, scales: tuple[float, float]) -> MixedClassifier:
    """The fixed alpha ``alpha`` on ``mixed``'s g and h with logit ``scales`` (g, h) and its other settings."""
    settings = replace(mixed.settings, std_scale=float(scales[0]), rob_scale=float(scales[1]))
    return settings.classifier(mixed.std, mixed.rob, alpha).eval()


def judge(
    mixed: MixedClassifier,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    baseline_scales: tuple[float, float] = (1.0, 1.0),
    eps: float,
    norm: str = "linf",
    batch_size: int = 256,
    seed: int = 0,
    device: torch.device = torch.device("cpu"),
    budget: AttackBudget = LITE_BUDGET,
    progress: ProgressFn | None = None,
    profile_points: dict[str, torch.Tensor] | None = None,
) -> Verdict:
    """The mixer against the fixed alphas of equal clean accuracy on ``(x, y)``, with ``baseline_scales`` (the
    tempered one, scales chosen on other held-out examples: ``HeadSelection.baseline``) and with scales 1 (plain),
    each the largest alpha whose clean count on ``x`` reaches the mixer's, all under the same adaptive
    AutoAttack-lite; the verdict says whether the mixer gains anything an adaptive attacker cannot undo. Its detector
    profile (``asmix.experiments.detector``, at ``budget``, with ``profile_points`` such as the training attack's
    rows) says what the mixer's logit sees."""
    if not mixed.adaptive:
        raise AsmixError("the verdict needs a mixing network")
    if len(x) == 0:
        raise AsmixError("no examples to judge the mixer on")
    settings = dict(
        eps=eps, norm=norm, batch_size=batch_size, seed=seed, device=device, budget=budget, progress=progress
    )
    adaptive = attack_accuracy(mixed, x, y, name="mixer", **settings)
    std_logits, rob_logits = clean_logits(mixed, x, batch_size, device)
    runs: dict[tuple, JudgedModel] = {}  # (alpha, g scale, h scale) -> its run: the same mix is attacked once
    rows = []
    for scales in ((*baseline_scales,), (1.0, 1.0)):
        probe = with_scales(mixed, 0.5, scales)
        alpha = equal_accuracy_alpha(probe, std_logits, rob_logits, y.to(device), adaptive.clean_correct)
        key = (alpha, *scales)
        if key not in runs:
            name = f"fixed alpha {alpha:g}" + ("" if scales == (1.0, 1.0) else f" (g {scales[0]:g} / h {scales[1]:g})")
            runs[key] = attack_accuracy(with_scales(mixed, alpha, scales), x, y, name=name, **settings)
        rows.append(runs[key])
    tempered, plain = rows
    profile = detector_profile(mixed, x, y, extra_points=profile_points, **settings)
    return Verdict(len(x), eps, norm, adaptive, tempered, plain, budget.square_queries, profile)
