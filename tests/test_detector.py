"""The detector profile: the exact AUC, a hand-built mixer that sees only PGD, extra point sets, bad inputs."""

from __future__ import annotations

import pytest
import torch
from conftest import StandInMixer
from torch import nn

from asmix.attacks.adaptive import AttackBudget
from asmix.attacks.pgd import PGD
from asmix.errors import AsmixError
from asmix.experiments.detector import PROFILE_POINTS, MixerScores, auc, detector_profile, profile_from_scores
from asmix.mixing import MixedClassifier
from asmix.report.evaluate import detector_table

CPU = torch.device("cpu")
QUICK = AttackBudget(apgd_steps=5, target_classes=2, square_queries=20)


def test_auc_counts_pairs_and_half_ties_exactly():
    clean = torch.tensor([0.2, 0.4, 0.5])
    # 0.1 beats no clean logit, 0.4 beats 0.2 and ties 0.4 (1.5), 0.9 and 1.0 beat all three: 7.5 of 12 pairs
    assert auc(torch.tensor([0.1, 0.4, 0.9, 1.0]), clean) == 7.5 / 12
    assert auc(clean, clean) == 0.5
    assert auc(clean + 1, clean) == 1.0 and auc(clean - 1, clean) == 0.0
    generator = torch.Generator().manual_seed(0)
    left, right = torch.randint(0, 5, (37,), generator=generator), torch.randint(0, 5, (23,), generator=generator)
    pairs = (left[:, None] > right[None]).double() + 0.5 * (left[:, None] == right[None]).double()
    assert auc(left.float(), right.float()) == pairs.mean().item()
    assert auc(left.float(), right.float()) + auc(right.float(), left.float()) == 1.0


def test_auc_refuses_no_points_and_nan():
    with pytest.raises(AsmixError, match="at least one"):
        auc(torch.tensor([]), torch.tensor([1.0]))
    with pytest.raises(AsmixError, match="NaN"):
        auc(torch.tensor([float("nan")]), torch.tensor([1.0]))


def test_profile_rows_count_mean_alpha_and_auc():
    clean = MixerScores(torch.tensor([0.0, 1.0]), torch.tensor([0.2, 0.4]))
    attacked = MixerScores(torch.tensor([2.0, 0.5, -1.0]), torch.tensor([0.9, 0.5, 0.1]))
    profile = profile_from_scores({"clean": clean, "pgd": attacked})
    assert profile.to_dict() == [
        {"points": "clean", "n": 2, "mean_alpha": pytest.approx(0.3), "auc": 0.5},
        {"points": "pgd", "n": 3, "mean_alpha": pytest.approx(0.5), "auc": 3 / 6},
    ]
    assert profile.row("pgd").n == 3
    assert detector_table(profile, "lite").row_count == 2 and detector_table(None) is None


SIDE, EPS = 16, 0.1
CHECKERBOARD = ((torch.arange(SIDE)[:, None] + torch.arange(SIDE)[None]) % 2 * 2 - 1).float().view(1, 1, SIDE, SIDE)
"""PGD's direction on ``CheckerboardModel``: every pixel, signs alternating; Square's stripes and squares are
constant over columns and patches, so they barely move along it."""


class CheckerboardModel(nn.Module):
    """Class 0 with a margin no eps-perturbation overturns, its logit rising along the checkerboard: PGD runs all its
    steps and ends at x - eps * checkerboard."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        along = (x * CHECKERBOARD).flatten(1).mean(1, keepdim=True)
        return torch.cat((3 + 10 * along, torch.zeros(len(x), 9)), 1)


class PGDShapeDetector(StandInMixer):
    """A mixer that sees only PGD-shaped perturbations: its logit is a spread per clean image plus 3 times the share
    of the eps-ball's checkerboard direction in x - (the nearest clean image, which it keeps)."""

    def __init__(self, clean: torch.Tensor, spread: torch.Tensor) -> None:
        super().__init__()
        self.clean, self.spread = clean, spread

    def logit(self, x: torch.Tensor) -> torch.Tensor:
        nearest = (x[:, None] - self.clean[None]).abs().flatten(2).amax(2).argmin(1)
        along = ((x - self.clean[nearest]) * CHECKERBOARD).flatten(1).mean(1).abs() / EPS
        return self.spread[nearest] + 3 * along


def test_a_mixer_that_detects_only_pgd_shapes_shows_it():
    generator = torch.Generator().manual_seed(0)
    x = 0.2 + 0.6 * torch.rand(40, 1, SIDE, SIDE, generator=generator)  # no pixel clipped at the ball's edge
    model = CheckerboardModel()
    mixed = MixedClassifier(model, model, PGDShapeDetector(x, torch.randn(40, generator=generator))).eval()
    y = torch.zeros(40, dtype=torch.long)
    profile = detector_profile(
        mixed, x, y, eps=EPS, norm="linf", batch_size=20, seed=0, device=CPU, budget=QUICK, pgd=PGD(EPS, steps=10)
    )
    assert [row.points for row in profile.rows] == list(PROFILE_POINTS)
    assert all(row.n == 40 for row in profile.rows)
    assert profile.row("clean").auc == 0.5
    assert profile.row("pgd").auc > 0.9
    assert profile.row("square-alpha").auc == pytest.approx(0.5, abs=0.15)
    assert profile.row("uniform").auc == pytest.approx(0.5, abs=0.15)
    assert profile.row("pgd").mean_alpha > profile.row("clean").mean_alpha + 0.3


class MeanPixel(StandInMixer):
    """A mixer logit that rises with the mean pixel: differentiable, so every attack can move it."""

    def logit(self, x: torch.Tensor) -> torch.Tensor:
        return 8 * x.mean(dim=(1, 2, 3)) - 3


def tiny_problem(n: int = 12):
    generator = torch.Generator().manual_seed(1)
    std, rob = nn.Sequential(nn.Flatten(), nn.Linear(36, 10)), nn.Sequential(nn.Flatten(), nn.Linear(36, 10))
    x = torch.rand(n, 1, 6, 6, generator=generator)
    y = torch.randint(0, 10, (n,), generator=generator)
    return std, rob, x, y


def test_extra_point_sets_follow_the_uniform_start_with_their_own_count():
    std, rob, x, y = tiny_problem()
    mixed = MixedClassifier(std, rob, MeanPixel()).eval()
    rows = torch.rand(30, 1, 6, 6, generator=torch.Generator().manual_seed(5))
    progress = []
    profile = detector_profile(
        mixed,
        x,
        y,
        eps=0.05,
        norm="linf",
        batch_size=8,
        seed=0,
        device=CPU,
        budget=QUICK,
        extra_points={"training-attack": rows},
        progress=lambda task, done, total: progress.append((done, total)),
    )
    assert [row.points for row in profile.rows][:4] == ["clean", "uniform", "training-attack", "pgd"]
    extra = profile.row("training-attack")
    assert extra.n == 30 and extra.mean_alpha == pytest.approx(torch.sigmoid(8 * rows.mean((1, 2, 3)) - 3).mean())
    assert progress[-1] == (6, 6)  # two batches of x, four of the extra rows


def test_a_fixed_alpha_or_a_clashing_name_is_refused():
    std, rob, x, y = tiny_problem()
    settings = dict(eps=0.05, norm="linf", batch_size=8, seed=0, device=CPU, budget=QUICK)
    with pytest.raises(AsmixError, match="mixing network"):
        detector_profile(MixedClassifier(std, rob, 0.5), x, y, **settings)
    with pytest.raises(AsmixError, match="may not reuse"):
        detector_profile(MixedClassifier(std, rob, MeanPixel()), x, y, **settings, extra_points={"pgd": x})
