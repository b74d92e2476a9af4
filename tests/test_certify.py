"""Certified radii (Thm 3.5, Thm A.2), Lemma 3.2, Clopper-Pearson bounds and Gaussian smoothing."""

import math

import pytest
import torch
from scipy.stats import binomtest, norm
from torch import nn

from asmix.errors import AsmixError
from asmix.radii import (
    bounded_top_two,
    certified_accuracy,
    clopper_pearson,
    clopper_pearson_lower,
    clopper_pearson_upper,
    lemma32_threshold,
    lipschitz_radius,
    lipschitz_radius_per_class,
    satisfies_lemma32,
    smoothed_probabilities,
    smoothing_lipschitz,
    smoothing_radius,
)
from asmix.runtime import RunSettings


def test_lemma32_threshold_and_count():
    assert lemma32_threshold(0.8) == pytest.approx(0.25)
    assert lemma32_threshold(0.5) == pytest.approx(1.0)
    assert lemma32_threshold(1.0) == 0.0
    margins = torch.tensor([0.3, 0.25, 0.2, -0.1])
    assert satisfies_lemma32(margins, 0.8).tolist() == [True, True, False, False]
    assert not satisfies_lemma32(torch.tensor([1.0]), 0.4).any()


def test_lipschitz_radius_hand_computed():
    # alpha 0.8, p_y 0.9, p_y' 0.05, L 2: (0.8 * 0.85 - 0.2) / (2 * 0.8 * 2) = 0.48 / 3.2 = 0.15
    radius = lipschitz_radius(torch.tensor([0.9]), torch.tensor([0.05]), 0.8, 2.0)
    assert radius.item() == pytest.approx(0.15)


def test_lipschitz_radius_nonpositive_when_alpha_too_small():
    # threshold alpha = 1 / (1 + p_y - p_y') = 1 / 1.5: radius 0 there, negative below, positive above
    p_top, p_runner = torch.tensor([0.7]), torch.tensor([0.2])
    assert lipschitz_radius(p_top, p_runner, 1 / 1.5, 1.0).item() == pytest.approx(0.0, abs=1e-7)
    assert lipschitz_radius(p_top, p_runner, 0.6, 1.0).item() < 0
    assert lipschitz_radius(p_top, p_runner, 0.7, 1.0).item() > 0
    assert lipschitz_radius(torch.tensor([1.0]), torch.tensor([0.0]), 0.45, 1.0).item() < 0


def test_lipschitz_radius_alpha_one_is_standard_radius():
    p_top, p_runner = torch.tensor([0.6, 0.95]), torch.tensor([0.3, 0.01])
    expected = (p_top - p_runner) / (2 * 0.5)
    assert torch.allclose(lipschitz_radius(p_top, p_runner, 1.0, 0.5), expected)


def test_lipschitz_radius_per_class_takes_the_minimum():
    probs = torch.tensor([[0.6, 0.3, 0.1]])
    lipschitz = torch.tensor([1.0, 1.0, 4.0])
    # i=1: (0.9*0.3 - 0.1)/(0.9*2) = 0.17/1.8 = 0.09444; i=2: (0.9*0.5 - 0.1)/(0.9*5) = 0.35/4.5 = 0.07778
    radius = lipschitz_radius_per_class(probs, 0.9, lipschitz)
    assert radius.item() == pytest.approx(0.35 / 4.5)
    uniform = lipschitz_radius_per_class(probs, 0.9, torch.ones(3))
    assert uniform.item() == pytest.approx(lipschitz_radius(torch.tensor([0.6]), torch.tensor([0.3]), 0.9, 1.0).item())


def test_smoothing_lipschitz_constant():
    assert smoothing_lipschitz(0.5) == pytest.approx(math.sqrt(2 / math.pi) / 0.5)
    with pytest.raises(AsmixError):
        smoothing_lipschitz(0.0)


def test_smoothing_radius_hand_computed():
    # alpha 1: Salman et al. radius sigma/2 (PhiInv(0.9) - PhiInv(0.05))
    radius = smoothing_radius(torch.tensor([0.9]), torch.tensor([0.05]), 1.0, 0.5)
    assert radius.item() == pytest.approx(0.25 * (norm.ppf(0.9) - norm.ppf(0.05)), rel=1e-5)
    # alpha 0.8: sigma/2 (PhiInv(0.72) - PhiInv(0.04 + 0.2))
    radius = smoothing_radius(torch.tensor([0.9]), torch.tensor([0.05]), 0.8, 0.5)
    assert radius.item() == pytest.approx(0.25 * (norm.ppf(0.72) - norm.ppf(0.24)), rel=1e-5)
    # too small alpha: alpha p_y <= alpha p_y' + 1 - alpha -> radius <= 0
    assert smoothing_radius(torch.tensor([0.7]), torch.tensor([0.3]), 0.6, 0.5).item() < 0
    assert smoothing_radius(torch.tensor([0.7]), torch.tensor([0.3]), 0.0, 0.5).item() == float("-inf")


def test_smoothing_radius_beats_lipschitz_radius():
    p_top, p_runner = torch.tensor([0.8, 0.99]), torch.tensor([0.15, 0.005])
    for alpha in (0.7, 0.9, 1.0):
        rs = smoothing_radius(p_top, p_runner, alpha, 0.25)
        lip = lipschitz_radius(p_top, p_runner, alpha, smoothing_lipschitz(0.25))
        assert (rs >= lip - 1e-6).all()


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (10, 10), (97, 100), (500, 1000)])
def test_clopper_pearson_matches_scipy(k, n):
    lower, upper = clopper_pearson(torch.tensor([k]), n, 0.95)
    interval = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    assert lower.item() == pytest.approx(interval.low, abs=1e-9)
    assert upper.item() == pytest.approx(interval.high, abs=1e-9)


def test_clopper_pearson_one_sided_known_values():
    # k = n: lower bound error^(1/n); k = 0: upper bound 1 - error^(1/n)
    assert clopper_pearson_lower(torch.tensor([100]), 100, 0.001).item() == pytest.approx(0.001 ** (1 / 100))
    assert clopper_pearson_upper(torch.tensor([0]), 100, 0.001).item() == pytest.approx(1 - 0.001 ** (1 / 100))


def test_bounded_top_two_is_conservative():
    counts = torch.tensor([[90, 8, 2], [10, 45, 45]])
    top, lower, upper = bounded_top_two(counts, 100, 0.999)
    assert top[0].item() == 0
    assert lower[0].item() < 0.9 and upper[0].item() > 0.08
    assert upper[0].item() <= 1 - lower[0].item() + 1e-7
    expected_lower = clopper_pearson_lower(torch.tensor([90]), 100, 0.001 / 6).item()
    assert lower[0].item() == pytest.approx(expected_lower, rel=1e-6)
    # a tie gives no certificate
    assert smoothing_radius(lower[1:], upper[1:], 1.0, 0.5).item() < 0


def test_certified_accuracy_curve():
    radii = torch.tensor([0.5, -0.1, 0.2, 1.0])
    correct = torch.tensor([True, True, True, False])
    curve = certified_accuracy(radii, correct, [0.0, 0.2, 0.3, 2.0])
    assert curve.tolist() == pytest.approx([0.5, 0.5, 0.25, 0.0])


class _Constant(nn.Module):
    """Logits that depend on the sign of the first pixel: class 0 when positive, else class 1."""

    def forward(self, x):
        first = x.flatten(1)[:, :1]
        return torch.cat([10 * first, -10 * first, torch.full_like(first, -100)], dim=1)


def test_smoothed_probabilities_match_gaussian_cdf():
    # votes for class 0 = P(x0 + noise > 0) = Phi(x0 / sigma)
    x = torch.tensor([[0.25], [0.0]])
    generator = torch.Generator().manual_seed(0)
    probs, counts = smoothed_probabilities(
        _Constant(), x, 0.5, 4000, batch_size=1000, generator=generator, output="votes", draw_counts=True
    )
    assert probs[0, 0].item() == pytest.approx(norm.cdf(0.5), abs=0.03)
    assert probs[1, 0].item() == pytest.approx(0.5, abs=0.03)
    assert counts.sum(dim=1).tolist() == [4000, 4000]
    assert probs[:, 2].max().item() == 0.0


class _Fixed(nn.Module):
    def __init__(self, probs):
        super().__init__()
        self.register_buffer("logits", torch.as_tensor(probs).log())

    def forward(self, x):
        return self.logits.expand(len(x), -1) + 0 * x.flatten(1).sum(dim=1, keepdim=True)


def _entry(result, name):
    return next(entry for entry in result.entries if entry.name == name)


def _curve(entry, bound):
    return next(curve for curve in entry.curves if curve.bound == bound)


def test_certify_smoothing_radius_matches_distance_to_boundary():
    from asmix.experiments.certify import CertifyConfig, certify

    # sign classifier smoothed with votes: p_0 = Phi(x0 / sigma), so the Thm A.2 radius at alpha 1
    # is exactly the distance |x0| to the decision boundary
    x = torch.tensor([0.25, 0.1, -0.2]).reshape(3, 1, 1, 1)
    y = torch.tensor([0, 0, 0])
    std = _Fixed(torch.tensor([0.6, 0.3, 0.1]))
    config = CertifyConfig(
        sigma=0.5,
        n_samples=4000,
        alpha=0.9,
        smoothing_output="votes",
        radii=(0.0, 0.05, 0.2),
        run=RunSettings(batch_size=1000),
    )
    result = certify(std, _Constant(), x, y, config)
    rob = _entry(result, "rob")
    rs = _curve(rob, "rs")
    assert rs.radii[0] == pytest.approx(0.25, abs=0.03)
    assert rs.radii[1] == pytest.approx(0.1, abs=0.03)
    assert rs.correct == (True, True, False)
    assert rob.rob_accuracy == pytest.approx(2 / 3)
    lip = _curve(rob, "lipschitz")
    p0 = norm.cdf(0.5)
    assert lip.radii[0] == pytest.approx((2 * p0 - 1) / (2 * smoothing_lipschitz(0.5)), abs=0.03)
    assert lip.lipschitz == pytest.approx(smoothing_lipschitz(0.5))
    assert rs.certified == pytest.approx([2 / 3, 2 / 3, 1 / 3])
    mix = _entry(result, "mixed")
    assert mix.alpha == 0.9
    assert all(m <= r + 1e-6 for m, r in zip(_curve(mix, "rs").radii, rs.radii))
    assert result.to_dict()["guarantee"].startswith("Monte Carlo")


def test_certify_with_lipschitz_constant_is_exact():
    from asmix.experiments.certify import CertifyConfig, certify

    x, y = torch.rand(2, 1, 2, 2), torch.tensor([0, 1])
    result = certify(
        _Fixed(torch.tensor([0.1, 0.8, 0.1])),
        _Fixed(torch.tensor([0.7, 0.2, 0.1])),
        x,
        y,
        CertifyConfig(lipschitz_const=2.0, alpha=0.8, radii=(0.0, 0.1)),
    )
    rob, mix = _entry(result, "rob"), _entry(result, "mixed")
    assert [curve.bound for curve in rob.curves] == ["lipschitz"]
    assert rob.curves[0].radii == pytest.approx([0.125, 0.125])  # (0.7 - 0.2) / (2 * 2)
    assert mix.curves[0].radii == pytest.approx([0.0625, 0.0625])  # (0.8 * 0.5 - 0.2) / (2 * 0.8 * 2)
    assert mix.curves[0].certified == pytest.approx([0.5, 0.0])
    assert mix.clean_accuracy == 0.5  # 0.2 * (0.1, 0.8, 0.1) + 0.8 * (0.7, 0.2, 0.1) -> class 0
    assert result.to_dict()["guarantee"].startswith("exact")


def test_std_hardmax_and_match_alpha():
    from asmix.experiments.certify import match_alpha

    std_probs = torch.tensor([[0.45, 0.55], [0.9, 0.1]])
    rob_probs = torch.tensor([[0.9, 0.1], [0.3, 0.7]])
    y = torch.tensor([0, 0])
    # example 1 needs (1-a)*0.9 + a*0.3 >= (1-a)*0.1 + a*0.7, i.e. a <= 2/3; example 0 is right for a > 1/9
    assert match_alpha(std_probs, rob_probs, y, 1.0) == pytest.approx(0.666)
    assert match_alpha(std_probs, rob_probs, y, 0.5) == 1.0
    assert match_alpha(torch.tensor([[0.0, 1.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([0]), 1.0) == 0.0


def test_certify_confidence_mode_is_more_conservative():
    from asmix.experiments.certify import CertifyConfig, certify

    x = torch.tensor([0.4, 0.3]).reshape(2, 1, 1, 1)
    y = torch.tensor([0, 0])
    std = _Fixed(torch.tensor([0.2, 0.7, 0.1]))
    common = dict(sigma=0.5, n_samples=1000, alpha=1.0, run=RunSettings(batch_size=500), smoothing_output="votes")
    empirical = certify(std, _Constant(), x, y, CertifyConfig(**common))
    bounded = certify(std, _Constant(), x, y, CertifyConfig(confidence=0.999, **common))
    for bound in ("lipschitz", "rs"):
        low = _curve(_entry(bounded, "rob"), bound).radii
        high = _curve(_entry(empirical, "rob"), bound).radii
        assert all(a < b for a, b in zip(low, high))
    assert "0.999" in bounded.to_dict()["guarantee"]


def test_certify_hardmax_raises_mixed_clean_accuracy():
    from asmix.experiments.certify import CertifyConfig, certify

    # g right but unsure (0.4 vs 0.35), h wrong and unsure: softmax g loses at alpha 0.6, hard-max wins
    x, y = torch.rand(1, 1, 2, 2), torch.tensor([0])
    std, rob = _Fixed(torch.tensor([0.4, 0.35, 0.25])), _Fixed(torch.tensor([0.3, 0.4, 0.3]))
    soft = certify(std, rob, x, y, CertifyConfig(lipschitz_const=1.0, alpha=0.6))
    hard = certify(std, rob, x, y, CertifyConfig(lipschitz_const=1.0, alpha=0.6, std_hardmax=True))
    assert _entry(soft, "mixed").clean_accuracy == 0.0
    assert _entry(hard, "mixed").clean_accuracy == 1.0


def test_certify_config_rejects_bad_values():
    from asmix.experiments.certify import CertifyConfig

    for kwargs in (
        {"sigma": 0.0},
        {"n_samples": 0},
        {"confidence": 1.0},
        {"lipschitz_const": -1.0},
        {"lipschitz_const": 1.0, "confidence": 0.99},
        {"smoothing_output": "logits"},
        {"radii": (-1.0,)},
    ):
        with pytest.raises(AsmixError):
            CertifyConfig(**kwargs)
    for kwargs, message in (
        ({"sigma": float("inf")}, "sigma must be a finite number, got inf"),
        ({"baseline_sigma": float("nan")}, "baseline sigma must be a finite number, got nan"),
        ({"lipschitz_const": float("inf")}, "Lipschitz constant must be a finite number"),
        ({"radii": (0.0, float("inf"))}, "radius must be a finite number, got inf"),
    ):
        with pytest.raises(AsmixError, match=message):
            CertifyConfig(**kwargs)


def test_certify_report_renders(tmp_path):
    import json

    from rich.console import Console

    from asmix.experiments.certify import CertifyConfig, certify
    from asmix.report.certify import certify_table, write_certify_outputs

    x = torch.tensor([0.25, 0.1, -0.2]).reshape(3, 1, 1, 1)
    y = torch.tensor([0, 0, 0])
    config = CertifyConfig(sigma=0.5, n_samples=100, match_clean_acc=True, radii=(0.0, 0.1))
    result = certify(_Fixed(torch.tensor([0.6, 0.3, 0.1])), _Constant(), x, y, config)
    assert [entry.name for entry in result.entries] == ["mixed", "rob", "baseline"]
    assert _entry(result, "baseline").sigma == 0.25
    console = Console(record=True, width=150)
    console.print(certify_table(result))
    text = console.export_text()
    assert "base h s=0.25" in text and "A.2 RS" in text
    paths = write_certify_outputs(result, tmp_path)
    assert {path.name for path in paths} == {"certify.json", "certify.csv", "certify_curves.png"}
    data = json.loads((tmp_path / "certify.json").read_text())
    assert data["config"]["alpha_used"] == result.alpha
    assert len(data["models"][0]["curves"][1]["radii"]) == 3


@pytest.mark.slow
def test_certify_cli_on_demo_data(tmp_path):
    import json

    from typer.testing import CliRunner

    from asmix.cli import app

    result = CliRunner().invoke(
        app,
        [
            "certify",
            "--std",
            "demo-std",
            "--rob",
            "demo-std",
            "--n-examples",
            "5",
            "--n-samples",
            "50",
            "--confidence",
            "0.99",
            "--std-hardmax",
            "--device",
            "cpu",
            "--skip",
            "2",
            "--json",
            str(tmp_path / "c.json"),
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "c.json").read_text())
    assert data["config"]["confidence"] == 0.99 and data["config"]["std_hardmax"] is True
    assert "0.99" in data["guarantee"]
    assert data["config"]["skip"] == 2 and data["indices"] == [0, 2, 4]


def _certify_problem():
    """A 3-class linear h on 4 pixels, g a fixed output, and 7 examples labelled by h but for two."""
    from conftest import LinearImageModel

    rob = LinearImageModel(4, 3, seed=4)
    x = torch.rand(7, 1, 2, 2, generator=torch.Generator().manual_seed(6)) * 40
    with torch.no_grad():
        y = rob(x).argmax(1)
    y[::3] = (y[::3] + 1) % 3
    return _Fixed(torch.tensor([0.5, 0.3, 0.2])), rob, x, y


def _rows(path):
    import csv

    with open(path, newline="") as handle:
        return [{key: value for key, value in row.items() if key != "time"} for row in csv.DictReader(handle)]


@pytest.mark.parametrize("settings", [{}, {"match_clean_acc": True, "confidence": 0.9}])
def test_killed_certify_resumes_streams_its_rows_and_they_match_the_summary(tmp_path, monkeypatch, settings):
    from conftest import kill_after, record_computed_parts

    from asmix.experiments.certify import CertifyConfig, certify

    std, rob, x, y = _certify_problem()
    # 2 examples per part (60 // 30): parts of 2, 2, 2 and 1 examples
    config = CertifyConfig(sigma=0.5, n_samples=30, radii=(0.0, 0.2, 0.9), **settings, run=RunSettings(batch_size=60))
    reference = certify(std, rob, x, y, config, out=tmp_path / "reference")
    expected = _rows(tmp_path / "reference" / "examples.csv")
    assert [row["index"] for row in expected] == [str(i) for i in range(7)]

    with pytest.raises(KeyboardInterrupt):
        certify(std, rob, x, y, config, out=tmp_path / "run", progress=kill_after(2))
    streamed = _rows(tmp_path / "run" / "examples.csv")
    assert len(streamed) == 4  # the rows of the two finished parts were written as they finished
    for row, full in zip(streamed, expected):
        mix_known = not settings  # with --match-clean-acc alpha, so h_alpha's columns, wait for the end
        assert row == (full if mix_known else full | {key: "" for key in full if key.startswith("mixed_")})

    computed = record_computed_parts(monkeypatch)
    resumed = certify(std, rob, x, y, config, out=tmp_path / "run")
    assert computed == ["batch-000000004-000000006", "batch-000000006-000000007"]
    assert resumed.to_dict() == reference.to_dict()
    rows = _rows(tmp_path / "run" / "examples.csv")
    assert rows == expected and not (tmp_path / "run" / "parts").exists()

    for entry in resumed.entries:  # the summary is what the rows say
        correct = [row[f"{entry.name}_correct"] == "1" for row in rows]
        assert entry.rob_accuracy == pytest.approx(sum(correct) / 7)
        assert [int(row[f"{entry.name}_prediction"]) for row in rows] == list(entry.predictions)
        for curve in entry.curves:
            radii = [float(row[f"{entry.name}_radius_{curve.bound}"]) for row in rows]
            assert radii == pytest.approx(list(curve.radii))
            certified = [sum(ok and r >= 0 and r >= at for ok, r in zip(correct, radii)) / 7 for at in config.radii]
            assert certified == pytest.approx(list(curve.certified))
    rs = _curve(_entry(resumed, "rob"), "rs")
    assert 0 < rs.certified[0] < 1 and rs.certified[2] < rs.certified[0]  # numbers that could be wrong


def test_skip_certifies_every_kth_example_with_its_own_numbers(tmp_path):
    from asmix.experiments.certify import CertifyConfig, certify

    std, rob, x, y = _certify_problem()
    config = CertifyConfig(sigma=0.5, n_samples=30, run=RunSettings(batch_size=60))
    every = certify(std, rob, x, y, config)
    skipped = certify(
        std, rob, x, y, CertifyConfig(sigma=0.5, n_samples=30, skip=3, run=RunSettings(batch_size=60)), out=tmp_path
    )
    assert skipped.n_examples == 3 and skipped.indices == (0, 3, 6)
    assert [row["index"] for row in _rows(tmp_path / "examples.csv")] == ["0", "3", "6"]
    for full, part in zip(every.entries, skipped.entries):  # each example keeps the noise of its index
        for full_curve, curve in zip(full.curves, part.curves):
            assert curve.radii == full_curve.radii[::3]
    assert skipped.to_dict()["indices"] == [0, 3, 6] and skipped.to_dict()["config"]["skip"] == 3
    with pytest.raises(AsmixError, match="skip must be >= 1"):
        CertifyConfig(skip=0)
