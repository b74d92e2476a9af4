"""Min-margin APGD (App. D.2), Table-1 margins and the Lemma 3.2 count on toy models."""

import warnings

import pytest
import torch
from conftest import kill_after, record_computed_parts
from torch import nn

from asmix.attacks.margin import (
    MinMarginAPGD,
    MinMarginAPGDTargeted,
    min_margin_autoattack,
    probability_gap,
    true_class_margin,
)
from asmix.attacks.pgd import ThreatModel
from asmix.compat import register_autoattack
from asmix.errors import AsmixError
from asmix.experiments.margins import MarginsConfig, margins
from asmix.mixing import MixedClassifier, MixSettings
from asmix.runtime import RunSettings


class _Fixed(nn.Module):
    """Logits that do not depend on the input (but keep it in the graph): outputs known exactly."""

    def __init__(self, logits):
        super().__init__()
        self.register_buffer("logits", torch.as_tensor(logits, dtype=torch.float32))

    def forward(self, x):
        return self.logits.expand(len(x), -1) + 0 * x.flatten(1).sum(dim=1, keepdim=True)


def _small_net(seed=0, classes=5):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, classes)).eval()


def _data(n=12, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 4, 4, generator=generator), torch.randint(0, 5, (n,), generator=generator)


def test_gap_and_margin_values():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3]]))
    assert probability_gap(logits).tolist() == pytest.approx([0.5, 0.2])
    assert true_class_margin(logits, torch.tensor([0, 0])).tolist() == pytest.approx([0.5, -0.3])


@pytest.mark.parametrize("attack", [MinMarginAPGD, MinMarginAPGDTargeted])
def test_min_margin_apgd_never_exceeds_clean_margin(attack):
    model = _small_net()
    x, y = _data()
    clean = true_class_margin(model(x), y)
    x_adv, margin = attack(model, eps=0.1, steps=10, seed=0).perturb(x, y)
    assert (margin <= clean + 1e-6).all()
    assert torch.allclose(true_class_margin(model(x_adv), y), margin, atol=1e-5)
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_min_margin_apgd_keeps_unsuccessful_perturbations():
    # eps too small to flip anything: the package returns x unchanged, ours the lowest-margin point
    model = _small_net()
    x, y = _data()
    y = model(x).argmax(dim=1)
    clean = true_class_margin(model(x), y)
    register_autoattack()
    from autoattack.autopgd_base import APGDAttack

    standard = APGDAttack(model, n_iter=10, eps=0.002, norm="Linf", seed=0, device=x.device).perturb(x, y)
    assert torch.equal(standard, x)  # nothing flipped, so the package hands back the clean inputs
    x_adv, margin = MinMarginAPGD(model, eps=0.002, steps=10).perturb(x, y)
    assert (margin > 0).all()
    assert (margin < clean - 1e-5).all()
    assert 0 < (x_adv - x).abs().max() <= 0.002 + 1e-6  # ours moved every margin, inside the ball


def test_min_margin_autoattack_takes_the_smaller_margin():
    model = _small_net(1)
    x, y = _data(seed=1)
    _, margin_ce = MinMarginAPGD(model, eps=0.05, steps=8, seed=3).perturb(x, y)
    _, margin_t = MinMarginAPGDTargeted(model, eps=0.05, steps=8, seed=3, target_classes=2).perturb(x, y)
    _, margin = min_margin_autoattack(model, x, y, eps=0.05, steps=8, target_classes=2, seed=3)
    assert torch.allclose(margin, torch.minimum(margin_ce, margin_t))


def test_min_margin_attack_leaves_global_rng_alone():
    model, (x, y) = _small_net(), _data(4)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    MinMarginAPGD(model, eps=0.05, steps=3, seed=7).perturb(x, y)
    assert torch.equal(torch.rand(3), expected)


def test_targeted_needs_four_classes():
    model = _small_net(classes=3)
    x, y = _data(4)
    with pytest.raises(AsmixError):
        MinMarginAPGDTargeted(model, eps=0.05, steps=2).perturb(x, y % 3)
    _, margin = min_margin_autoattack(model, x, y % 3, eps=0.05, steps=2)  # APGD-T skipped
    assert margin.shape == (4,)


def test_margins_on_fixed_outputs():
    # g: probabilities (0.7, 0.2, 0.1, 0, ...); h: (0.5, 0.4, 0.1): attacks cannot move them
    std_probs = torch.tensor([0.7, 0.2, 0.1])
    rob_probs = torch.tensor([0.5, 0.4, 0.1])
    std, rob = _Fixed(std_probs.log()), _Fixed(rob_probs.log())
    x = torch.rand(4, 1, 2, 2)
    y = torch.tensor([0, 0, 0, 1])
    config = MarginsConfig(
        aa_steps=3, target_classes=0, alpha=0.6, threat=ThreatModel(eps=0.1, steps=3), run=RunSettings(batch_size=3)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = margins(std, rob, x, y, config)
    mix_probs = 0.4 * std_probs + 0.6 * rob_probs  # (0.58, 0.32, 0.10): gap 0.26
    for inputs in ("clean", "pgd", "autoattack"):
        std_stats, rob_stats, mix_stats = (result.stats[name][inputs] for name in ("std", "rob", "mixed"))
        assert std_stats.accuracy == 0.75 and std_stats.n_wrong == 1
        assert std_stats.mean_gap_correct == pytest.approx(0.5) and std_stats.median_gap_wrong == pytest.approx(0.5)
        assert rob_stats.mean_gap_correct == pytest.approx(0.1) and rob_stats.mean_gap_wrong == pytest.approx(0.1)
        assert mix_stats.mean_gap_correct == pytest.approx((mix_probs[0] - mix_probs[1]).item(), abs=1e-6)
        assert rob_stats.margins == pytest.approx([0.1, 0.1, 0.1, -0.1])
    # Lemma 3.2 at alpha 0.6 needs margin 2/3: h's 0.1 never does
    assert [row.n_satisfied for row in result.lemma32] == [0, 0, 0, 0]
    assert result.lemma32[-1].inputs == "worst"
    assert result.to_dict()["table"]["rob"]["clean"]["accuracy"] == 0.75


def test_lemma32_count_and_lipschitz_on_a_confident_model():
    rob = _Fixed(torch.tensor([0.9, 0.05, 0.05]).log())
    std = _Fixed(torch.tensor([0.1, 0.8, 0.1]).log())
    x = torch.rand(3, 1, 2, 2)
    y = torch.tensor([0, 0, 2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = margins(
            std,
            rob,
            x,
            y,
            MarginsConfig(attacks=("pgd",), alpha=0.6, lipschitz=True, threat=ThreatModel(eps=0.1, steps=2)),
        )
    # margin 0.85 >= 2/3 on the two correct examples; h_0.6 = (0.58, 0.35, 0.07) is right there too
    assert [(row.inputs, row.n_satisfied) for row in result.lemma32] == [("clean", 2), ("pgd", 2), ("worst", 2)]
    assert result.lemma32[0].mix_accuracy == pytest.approx(2 / 3)
    assert result.lipschitz.mean == 0.0 and result.lipschitz.classes_used == 2
    # Thm 3.5 with zero local constants certifies every correct example
    assert result.lipschitz.local_radius_at_eps == 2


def test_margins_config_rejects_bad_values():
    with pytest.raises(AsmixError):
        MarginsConfig(attacks=("fgsm",))
    with pytest.raises(AsmixError):
        MarginsConfig(alpha=1.5)
    with pytest.raises(AsmixError):
        MarginsConfig(lipschitz_classes=0)
    with pytest.raises(AsmixError, match="eps must be a finite number, got inf"):
        MarginsConfig(threat=ThreatModel(eps=float("inf")))
    with pytest.raises(AsmixError, match="step size must be a finite number, got nan"):
        MarginsConfig(threat=ThreatModel(step_size=float("nan")))
    with pytest.raises(AsmixError, match="rob scale must be a finite number"):
        MarginsConfig(mix=MixSettings(rob_scale=float("nan")))
    with pytest.raises(AsmixError, match="eps must be a finite number, got nan"):
        MinMarginAPGD(_small_net(), eps=float("nan"))


def test_margins_attacks_lower_accuracy_and_are_deterministic():
    std, rob = _small_net(2), _small_net(3)
    x, y = _data(10, seed=2)
    config = MarginsConfig(
        aa_steps=3, target_classes=1, threat=ThreatModel(eps=0.2, steps=3), run=RunSettings(batch_size=10)
    )
    one = margins(std, rob, x, y, config)
    again = margins(std, rob, x, y, config)
    mixed = MixedClassifier(std, rob, config.alpha)
    with torch.no_grad():
        clean_logits = {"std": std(x), "rob": rob(x), "mixed": mixed(x)}
    for name, logits in clean_logits.items():
        correct = logits.argmax(1) == y
        assert one.stats[name]["clean"].accuracy == correct.float().mean().item()
        assert one.stats[name]["clean"].correct == tuple(correct.tolist())
    rob_correct = clean_logits["rob"].argmax(1) == y
    assert 0 < rob_correct.sum() < len(y)  # both means below are over a non-empty set
    gaps = probability_gap(clean_logits["rob"])
    assert one.stats["rob"]["clean"].mean_gap_correct == pytest.approx(gaps[rob_correct].mean().item())
    assert one.stats["rob"]["clean"].mean_gap_wrong == pytest.approx(gaps[~rob_correct].mean().item())
    for name in ("std", "rob", "mixed"):
        stats = one.stats[name]
        assert stats["pgd"].accuracy <= stats["clean"].accuracy
        # the min-margin AutoAttack can only lower each example's margin below clean
        assert all(a <= c + 1e-6 for a, c in zip(stats["autoattack"].margins, stats["clean"].margins))
        assert again.stats[name]["pgd"].margins == stats["pgd"].margins
        assert again.stats[name]["autoattack"].margins == stats["autoattack"].margins


def test_margins_report_renders(tmp_path):
    from rich.console import Console

    from asmix.report.margins import lemma32_table, lipschitz_table, margins_table, write_margins_outputs

    std, rob = _small_net(2), _small_net(3)
    x, y = _data(8, seed=4)
    result = margins(
        std,
        rob,
        x,
        y,
        MarginsConfig(
            aa_steps=3, target_classes=1, lipschitz=True, lipschitz_classes=2, threat=ThreatModel(eps=0.2, steps=3)
        ),
        models={"std": "a", "rob": "b"},
    )
    console = Console(record=True, width=150)
    for table in (margins_table(result), lemma32_table(result), lipschitz_table(result)):
        console.print(table)
    text = " ".join(console.export_text().split())
    assert "AutoAttack" in text and "worst of all" in text and "2 most likely of 4" in text
    paths = write_margins_outputs(result, tmp_path)
    assert {path.name for path in paths} == {"margins.json", "margins.csv", "margins_hist.png", "margins_lipschitz.png"}
    import json

    data = json.loads((tmp_path / "margins.json").read_text())
    assert data["table"]["rob"]["clean"]["accuracy"] == result.stats["rob"]["clean"].accuracy
    assert len(data["examples"]["rob_gaps"]["autoattack"]) == 8
    assert result.lipschitz.local_radius_at_eps is None  # not all classes were used


@pytest.mark.slow
def test_margins_cli_on_demo_data(tmp_path):
    from typer.testing import CliRunner

    from asmix.cli import app

    result = CliRunner().invoke(
        app,
        [
            "margins",
            "--std",
            "demo-std",
            "--rob",
            "demo-std",
            "--n-examples",
            "6",
            "--steps",
            "2",
            "--aa-steps",
            "2",
            "--target-classes",
            "1",
            "--lipschitz",
            "--lipschitz-classes",
            "2",
            "--device",
            "cpu",
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "margins_hist.png").exists()
    import json

    data = json.loads((tmp_path / "margins.json").read_text())
    assert data["config"]["n_examples"] == 6 and data["config"]["threat"]["eps"] == 0.3
    assert data["lipschitz"]["classes_used"] == 2


def test_margins_of_h_alone():
    rob = _Fixed(torch.tensor([0.9, 0.05, 0.05]).log())
    x, y = torch.rand(2, 1, 2, 2), torch.tensor([0, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = margins(
            rob, rob, x, y, MarginsConfig(classifiers=("rob",), attacks=("pgd",), threat=ThreatModel(eps=0.1, steps=1))
        )
    assert set(result.stats) == {"rob"}
    assert result.stats["rob"]["pgd"].accuracy == 0.5
    assert [row.n_satisfied for row in result.lemma32] == [1, 1, 1]
    assert all(row.mix_accuracy is None for row in result.lemma32)
    with pytest.raises(AsmixError):
        MarginsConfig(classifiers=("std", "mixed"))


def test_min_margin_apgd_l2_stays_in_the_ball():
    model = _small_net(4)
    x, y = _data(6, seed=5)
    x_adv, margin = min_margin_autoattack(model, x, y, eps=0.5, norm="l2", steps=5, target_classes=1)
    assert (x_adv - x).flatten(1).norm(dim=1).max() <= 0.5 + 1e-5
    assert (margin <= true_class_margin(model(x), y) + 1e-6).all()
    with pytest.raises(AsmixError):
        MinMarginAPGD(model, eps=0.5, norm="l1")


def test_killed_margins_resume_with_the_numbers_of_one_run(tmp_path, monkeypatch):
    std, rob = _small_net(2), _small_net(3)
    x, _ = _data(12, seed=5)
    with torch.no_grad():
        y = rob(x).argmax(1)
    config = MarginsConfig(
        aa_steps=3,
        target_classes=1,
        lipschitz=True,
        threat=ThreatModel(eps=0.2, steps=3),
        run=RunSettings(batch_size=5),
    )
    reference = margins(std, rob, x, y, config)
    with pytest.raises(KeyboardInterrupt):
        margins(std, rob, x, y, config, out=tmp_path, progress=kill_after(2))
    assert len(list((tmp_path / "parts").iterdir())) == 2
    computed = record_computed_parts(monkeypatch)
    resumed = margins(std, rob, x, y, config, out=tmp_path)
    assert computed == ["batch-000000010-000000012"]
    assert resumed.to_dict() == reference.to_dict()
    assert resumed.lipschitz.values == reference.lipschitz.values
    assert resumed.lipschitz.local_radius_at_eps is not None  # all classes: the per-class constants were merged
    attacked, clean = resumed.stats["rob"]["autoattack"].margins, resumed.stats["rob"]["clean"].margins
    assert sum(attacked) < sum(clean) - 0.1  # the attacks moved the margins: resumed parts carry real work
    assert not (tmp_path / "parts").exists()
