"""``evaluate``: the table's numbers, per-example outputs, resume, sharding, and bad inputs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import StandInMixer, kill_after, run_cli, run_in_gloo_processes
from torch import nn

from asmix.attacks.adaptive import AttackBudget
from asmix.attacks.pgd import PGD, ThreatModel
from asmix.errors import AsmixError
from asmix.experiments import evaluate as evaluate_module
from asmix.experiments.detector import PROFILE_POINTS, detector_profile
from asmix.experiments.evaluate import EvalConfig, evaluate, load_examples, parse_attacks
from asmix.mixing import MixedClassifier, MixSettings
from asmix.models import load_model
from asmix.report.evaluate import evaluate_table, trail_table
from asmix.runtime import RunSettings

FAST_AA = {"square_queries": 20}


class TinyNet(nn.Module):
    """Flatten then linear, seeded: a small differentiable 10-class image classifier."""

    def __init__(self, seed: int, scale: float = 1.0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.linear = nn.Linear(36, 10)
        with torch.no_grad():
            self.linear.weight.copy_(torch.randn(10, 36, generator=generator) * scale)
            self.linear.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


class TinyAlpha(StandInMixer):
    """A stand-in mixing network: alpha = sigmoid(w * mean pixel + b), differentiable in x."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(1, 1)
        with torch.no_grad():
            self.linear.weight.fill_(8.0)
            self.linear.bias.fill_(-3.0)

    def logit(self, x):
        return self.linear(x.mean(dim=(1, 2, 3)).unsqueeze(1)).squeeze(1)


def tiny_problem(n: int = 30, adaptive: bool = False):
    """g, h, a mixer (or None) and data labelled so the mix is right on about 80% of clean inputs."""
    std, rob = TinyNet(0), TinyNet(1, scale=0.3)
    mixer = TinyAlpha() if adaptive else None
    x = torch.rand(n, 1, 6, 6, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = MixedClassifier(std, rob, mixer if adaptive else 0.5)(x).argmax(1)
    y[::5] = (y[::5] + 1) % 10
    return std, rob, mixer, x, y


def test_parse_attacks_and_unknown_names():
    assert parse_attacks("aa, clean,aa") == ("aa", "clean")
    with pytest.raises(AsmixError, match="unknown attack\\(s\\) cw"):
        parse_attacks("clean,cw")
    with pytest.raises(AsmixError, match="unknown attack"):
        EvalConfig(attacks=("pgd", "fgsm"))
    with pytest.raises(AsmixError, match="no attacks"):
        parse_attacks(" , ")


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: EvalConfig(alpha=1.5), "alpha must be in"),
        (lambda: EvalConfig(run=RunSettings(batch_size=0)), "batch size must be positive"),
        (lambda: EvalConfig(threat=ThreatModel(eps=-1.0)), "eps must be >= 0"),
        (lambda: EvalConfig(square_queries=0), "square queries"),
        (lambda: EvalConfig(alpha_weight=-1.0), "alpha weight"),
        (lambda: EvalConfig(threat=ThreatModel(eps=float("nan"))), "eps must be a finite number, got nan"),
        (lambda: EvalConfig(threat=ThreatModel(step_size=float("inf"))), "step size must be a finite number, got inf"),
        (lambda: EvalConfig(alpha_weight=float("inf")), "alpha weight must be a finite number, got inf"),
        (lambda: EvalConfig(mix=MixSettings(std_scale=float("nan"))), "std scale must be a finite number"),
        (lambda: EvalConfig(alpha=float("nan")), "alpha must be in"),
        (lambda: EvalConfig(mix=MixSettings(mix_space="sum")), "mix space must be one of prob, logit"),
        (lambda: EvalConfig(threat=ThreatModel(norm="l1")), "norm must be one of linf, l2"),
    ],
)
def test_bad_config(make, message):
    with pytest.raises(AsmixError, match=message):
        make()


def test_clean_and_pgd_numbers():
    std, rob, _, x, y = tiny_problem()
    config = EvalConfig(
        attacks=("clean", "pgd", "pgd-graybox", "transfer-std", "transfer-rob"),
        bases=True,
        save_adv=True,
        threat=ThreatModel(eps=0.05, steps=10),
        run=RunSettings(batch_size=8),
    )
    result = evaluate(std, rob, x, y, config)
    mixed = MixedClassifier(std, rob, 0.5)
    with torch.no_grad():
        logits = mixed(x)
        expected_clean = (logits.argmax(1) == y).float().mean().item()
        assert result.accuracy("mixed", "clean") == pytest.approx(expected_clean)
        assert result.accuracy("std", "clean") == pytest.approx((std(x).argmax(1) == y).float().mean().item())
        examples = result.examples
        # the saved adversarial examples are what the accuracy was measured on, within eps
        x_adv = examples["mixed/pgd/x_adv"]
        assert (x_adv - x).abs().max() <= 0.05 + 1e-6
        assert torch.equal(mixed(x_adv).argmax(1) == y, examples["mixed/pgd/correct"])
        transfer = examples["mixed/transfer-std/x_adv"]
        assert torch.equal(mixed(transfer).argmax(1) == y, examples["mixed/transfer-std/correct"])
    assert 0 < result.accuracy("mixed", "pgd") < result.accuracy("mixed", "clean")
    # PGD on g is the transfer-from-g attack evaluated on g; fixed alpha: gray-box is white-box
    assert torch.equal(examples["std/transfer-std/x_adv"], examples["std/pgd/x_adv"])
    assert torch.equal(examples["mixed/pgd-graybox/x_adv"], examples["mixed/pgd/x_adv"])
    assert torch.all(examples["mixed/clean/alpha"] == 0.5)
    assert torch.all(examples["std/pgd/alpha"] == 0.0) and torch.all(examples["rob/pgd/alpha"] == 1.0)
    margin = examples["mixed/clean/margin"]
    assert torch.equal(margin > 0, examples["mixed/clean/correct"])
    probs = F.softmax(logits, 1)
    top2 = probs.topk(2, dim=1).values
    correct = examples["mixed/clean/correct"]
    torch.testing.assert_close(margin[correct], (top2[:, 0] - top2[:, 1])[correct])
    assert set(result.rows) == {"mixed", "std", "rob"}
    assert result.to_dict()["rows"]["mixed"]["clean"]["accuracy"] == pytest.approx(expected_clean)


def test_graybox_detaches_alpha_with_a_mixer():
    std, rob, mixer, x, y = tiny_problem(adaptive=True)
    config = EvalConfig(
        attacks=("clean", "pgd", "pgd-graybox"),
        save_adv=True,
        threat=ThreatModel(eps=0.05, steps=10),
        run=RunSettings(batch_size=30),
    )
    result = evaluate(std, rob, x, y, config, mixer=mixer)
    assert result.adaptive
    white, gray = result.examples["mixed/pgd/x_adv"], result.examples["mixed/pgd-graybox/x_adv"]
    assert not torch.equal(white, gray)
    alpha = result.examples["mixed/clean/alpha"]
    assert alpha.min() > 0 and alpha.max() < 1 and alpha.std() > 0


@pytest.mark.slow
def test_autoattack_columns_trail_and_adaptive():
    std, rob, mixer, x, y = tiny_problem(n=20, adaptive=True)
    config = EvalConfig(
        attacks=("clean", "pgd", "aa", "aa-adaptive"),
        **FAST_AA,
        threat=ThreatModel(eps=0.04, steps=20),
        run=RunSettings(batch_size=10),
    )
    result = evaluate(std, rob, x, y, config, mixer=mixer)
    aa, adaptive = result.rows["mixed"]["aa"], result.rows["mixed"]["aa-adaptive"]
    assert list(aa.trail) == ["clean", "apgd-ce", "apgd-t", "fab-t", "square"]
    assert aa.trail["clean"] == pytest.approx(result.accuracy("mixed", "clean"))
    assert aa.accuracy == pytest.approx(aa.trail["square"])
    assert adaptive.accuracy <= aa.accuracy
    assert aa.unreliable is False
    assert 0 < aa.accuracy <= result.accuracy("mixed", "pgd")
    assert list(adaptive.trail) == list(aa.trail) + ["apgd-ce-alpha", "apgd-t-alpha", "alpha-first", "square-alpha"]
    assert set(adaptive.trail_alpha) == set(adaptive.trail) and 0 < adaptive.trail_alpha["clean"] < 1
    # one row per AutoAttack run, each followed by the mean alpha of its stages
    assert evaluate_table(result).row_count == 1 and trail_table(result).row_count == 4


def run_until_killed(std, rob, mixer, x, y, config, out, batches):
    """Run ``evaluate`` and interrupt it (as a kill would) after ``batches`` batches."""
    with pytest.raises(KeyboardInterrupt):
        evaluate(std, rob, x, y, config, mixer=mixer, progress=kill_after(batches), out=out)


@pytest.mark.parametrize(
    "suffix, attacks",
    [
        (".npz", ("clean", "pgd", "aa", "aa-adaptive")),
        (".pt", ("clean", "pgd", "pgd-graybox", "transfer-std", "transfer-rob")),
    ],
)
def test_resume_after_a_kill_gives_the_same_numbers(tmp_path, monkeypatch, suffix, attacks):
    std, rob, mixer, x, y = tiny_problem(n=24, adaptive=True)
    # at eps 0.1 APGD-CE leaves a few examples to APGD-T: both attacks' seeding is exercised, quickly
    config = EvalConfig(
        attacks=attacks,
        bases=suffix == ".pt",
        **FAST_AA,
        threat=ThreatModel(eps=0.1, steps=5),
        run=RunSettings(batch_size=8),
    )
    reference = evaluate(std, rob, x, y, config, mixer=mixer, out=tmp_path / f"reference{suffix}")

    out = tmp_path / f"resumed{suffix}"
    run_until_killed(std, rob, mixer, x, y, config, out, batches=2)
    parts = sorted((tmp_path / f"resumed{suffix}.parts").iterdir())
    assert [part.name for part in parts] == ["batch-000000000-000000008.pt", "batch-000000008-000000016.pt"]
    assert not out.exists()

    computed = []
    original = evaluate_module._evaluate_batch

    def counting(mixed, x_batch, *args):
        computed.append(len(x_batch))
        return original(mixed, x_batch, *args)

    monkeypatch.setattr(evaluate_module, "_evaluate_batch", counting)
    resumed = evaluate(std, rob, x, y, config, mixer=mixer, out=out)
    assert computed == [8]  # only the batch the kill interrupted
    assert resumed.to_dict() == reference.to_dict()
    saved, expected = load_examples(out), load_examples(tmp_path / f"reference{suffix}")
    assert saved.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(saved[key], expected[key], rtol=0, atol=0, equal_nan=True, msg=key)
    assert not (tmp_path / f"resumed{suffix}.parts").exists()


def test_parts_of_another_run_are_not_reused(tmp_path):
    std, rob, _, x, y = tiny_problem(n=16)
    config = EvalConfig(attacks=("clean", "pgd"), threat=ThreatModel(eps=0.05, steps=5), run=RunSettings(batch_size=8))
    out = tmp_path / "run.npz"
    run_until_killed(std, rob, None, x, y, config, out, batches=1)
    other = EvalConfig(attacks=("clean", "pgd"), threat=ThreatModel(eps=0.1, steps=5), run=RunSettings(batch_size=8))
    result = evaluate(std, rob, x, y, other, out=out)
    fresh = evaluate(std, rob, x, y, other)
    assert result.to_dict() == fresh.to_dict()


def test_out_must_be_npz_or_pt(tmp_path):
    std, rob, _, x, y = tiny_problem(n=4)
    with pytest.raises(AsmixError, match=r"\.npz or \.pt"):
        evaluate(std, rob, x, y, EvalConfig(attacks=("clean",)), out=tmp_path / "results.json")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(AsmixError, match=f"cannot write {tmp_path / 'afile' / 'r.npz'}: .* is a file, not a folder"):
        evaluate(std, rob, x, y, EvalConfig(attacks=("clean",)), out=tmp_path / "afile" / "r.npz")
    with pytest.raises(AsmixError, match="no examples"):
        evaluate(std, rob, x[:0], y[:0], EvalConfig(attacks=("clean",)))


SHARD_CONFIG = dict(
    attacks=("clean", "pgd", "pgd-graybox", "aa", "aa-adaptive"),
    threat=ThreatModel(eps=0.1, steps=5),
    run=RunSettings(batch_size=5),
    square_queries=20,
)


def _shard_worker(rank: int, out: str) -> None:
    std, rob, mixer, x, y = tiny_problem(n=23, adaptive=True)
    totals = []
    evaluate(
        std,
        rob,
        x,
        y,
        EvalConfig(**SHARD_CONFIG),
        mixer=mixer,
        out=out,
        progress=lambda task, done, total: totals.append(total),
    )
    Path(f"{out}.rank{rank}").write_text(str(totals[-1]))


@pytest.mark.slow
def test_two_gloo_processes_give_the_same_numbers_as_one(tmp_path):
    std, rob, mixer, x, y = tiny_problem(n=23, adaptive=True)
    single = evaluate(std, rob, x, y, EvalConfig(**SHARD_CONFIG), mixer=mixer, out=tmp_path / "single.npz")
    run_in_gloo_processes(_shard_worker, str(tmp_path / "sharded.npz"))
    # 23 examples in batches of 5: rank 0 takes batches 0-2 (15 examples), rank 1 batches 3-4 (8)
    assert [(tmp_path / f"sharded.npz.rank{rank}").read_text() for rank in (0, 1)] == ["15", "8"]
    sharded, expected = load_examples(tmp_path / "sharded.npz"), load_examples(tmp_path / "single.npz")
    assert sharded.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(sharded[key], expected[key], rtol=0, atol=0, equal_nan=True, msg=key)
    trail = single.rows["mixed"]["aa"].trail
    assert trail["apgd-ce"] > trail["apgd-t"]  # APGD-T had work to do in some shard


@pytest.fixture
def saved_mixer(tmp_path):
    """A (random) mixing network for the demo CNNs, saved as trained with demo-std and demo-rob."""
    from asmix.mixer import MixingNetwork, save_mixer

    mixer = MixingNetwork([16, 16], [32, 64], width=8, blocks=1, stages=0)
    return save_mixer(
        mixer,
        tmp_path / "mixer",
        config={"models": {"std": "demo-std", "rob": "demo-rob"}},
        std=load_model("demo-std"),
        rob=load_model("demo-rob"),
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--attack", "clean,cw"], "unknown attack(s) cw"),
        (["--mixer", "/nonexistent/mixer"], "mixer directory not found"),
        (["--alpha", "0.5", "--mixer", "/nonexistent/mixer"], "either --alpha"),
        (["--out", "results.csv"], ".npz or .pt"),
        (["--alpha", "2"], "alpha must be in [0, 1]"),
    ],
)
def test_cli_bad_input_is_one_line(monkeypatch, capsys, args, message):
    code, out, err = run_cli(monkeypatch, capsys, "evaluate", *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_cli_rejects_a_mixer_trained_for_other_base_models(monkeypatch, capsys, saved_mixer):
    code, _, err = run_cli(
        monkeypatch, capsys, "evaluate", "--std", "demo-std", "--rob", "demo-std", "--mixer", str(saved_mixer)
    )
    assert code == 2 and "was trained with --rob demo-rob, not demo-std" in err


def test_cli_rejects_a_mixer_trained_with_other_weights(monkeypatch, capsys, saved_mixer, tmp_path):
    from safetensors.torch import save_file

    # same spec, other weights: h's state dict with one value moved
    state = {name: value.clone() for name, value in load_model("demo-rob").state_dict().items()}
    first = next(iter(state))
    state[first].view(-1)[0] += 0.01
    save_file(state, str(tmp_path / "rob.safetensors"))
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "evaluate",
        "--mixer",
        str(saved_mixer),
        "--rob-weights",
        str(tmp_path / "rob.safetensors"),
        "--attack",
        "clean",
        "--n-examples",
        "2",
    )
    assert code == 2 and "other weights for h (--rob)" in err and len(err.strip().splitlines()) == 1


def test_resume_fingerprint_covers_the_mixer_head():
    from asmix.experiments.evaluate import _fingerprint
    from asmix.mixer import MixingNetwork

    std, rob = load_model("demo-std"), load_model("demo-rob")
    mixer = MixingNetwork([16, 16], [32, 64], width=8, blocks=1, stages=0).eval()
    x, y = torch.rand(2, 1, 28, 28), torch.tensor([0, 1])
    config = EvalConfig(attacks=("clean",))

    def fingerprint():
        return _fingerprint(config, x, y, MixedClassifier(std, rob, mixer), {})

    first = fingerprint()
    assert fingerprint() == first
    mixer.set_alpha_range(0.5, 0.7)  # a changed range must not reuse batches computed with the old one
    ranged = fingerprint()
    mixer.set_alpha_bias(-1.0)
    biased = fingerprint()
    mixer.scale = 3.0
    assert len({first, ranged, biased, fingerprint()}) == 4


def test_real_mixing_network_adaptive_attacks():
    from asmix.mixer import MixingNetwork
    from asmix.models.demo import DemoCNN

    torch.manual_seed(0)
    std, rob = DemoCNN(width=4).eval(), DemoCNN(width=6).eval()
    x = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    mixer = MixingNetwork.build(std, rob, x, width=8, blocks=1, stages=0).eval()
    with torch.no_grad():
        y = MixedClassifier(std, rob, mixer)(x).argmax(1)
    config = EvalConfig(
        attacks=("clean", "pgd", "pgd-graybox", "aa", "aa-adaptive"),
        square_queries=10,
        save_adv=True,
        threat=ThreatModel(eps=0.05, steps=5),
        run=RunSettings(batch_size=6),
    )
    result = evaluate(std, rob, x, y, config, mixer=mixer)
    assert result.adaptive and result.accuracy("mixed", "clean") == 1.0
    assert not torch.equal(result.examples["mixed/pgd/x_adv"], result.examples["mixed/pgd-graybox/x_adv"])
    assert result.accuracy("mixed", "aa-adaptive") <= result.accuracy("mixed", "aa")
    assert result.examples["mixed/clean/alpha"].std() > 0


@pytest.mark.slow
def test_cli_with_a_mixer_writes_table_json_and_examples(monkeypatch, capsys, tmp_path):
    import json

    from asmix.cli import main

    mixer_dir = _mixer_for_demo_std_twice(tmp_path)
    out, json_path = tmp_path / "examples.npz", tmp_path / "result.json"
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "asmix",
            "evaluate",
            "--rob",
            "demo-std",
            "--mixer",
            str(mixer_dir),
            "--n-examples",
            "6",
            "--batch-size",
            "3",
            "--attack",
            "clean,pgd,pgd-graybox,aa-adaptive",
            "--steps",
            "3",
            "--square-queries",
            "10",
            "--bases",
            "--device",
            "cpu",
            "--out",
            str(out),
            "--json",
            str(json_path),
            "--save-adv",
        ],
    )
    try:
        main()
    except SystemExit as done:  # the entry point may exit like a console script
        assert done.code in (0, None)
    printed = capsys.readouterr().out
    assert "Robust accuracy" in printed and "h_alpha" in printed and "AutoAttack accuracy after each" in printed
    document = json.loads(json_path.read_text())
    assert document["config"]["adaptive"] and document["config"]["models"]["mixer"] == str(mixer_dir)
    assert set(document["rows"]) == {"mixed", "std", "rob"}
    examples = load_examples(out)
    assert examples["mixed/aa-adaptive/x_adv"].shape == (6, 1, 28, 28)
    assert examples["mixed/clean/correct"].float().mean().item() == document["rows"]["mixed"]["clean"]["accuracy"]


def test_robustbench_writes_the_leaderboard_model_info_and_a_claim(monkeypatch, capsys, tmp_path):
    import json

    from asmix.data import load_data

    # g alone (alpha 0) falls to APGD-CE at once, so the protocol's AutoAttack is quick here
    rerun = (
        "evaluate",
        "--alpha",
        "0",
        "--robustbench",
        str(tmp_path / "rb"),
        "--model-name",
        "Demo2026Mixed",
        "--n-examples",
        "6",
        "--square-queries",
        "10",
        "--batch-size",
        "6",
        "--device",
        "cpu",
    )
    code, out, err = run_cli(monkeypatch, capsys, *rerun)
    assert code in (0, None), err
    info = json.loads((tmp_path / "rb" / "Demo2026Mixed.json").read_text())
    x, y = load_data("demo", n_examples=6)
    with torch.no_grad():
        clean = (load_model("demo-std")(x).argmax(1) == y).float().mean().item()
    assert info["clean_acc"] == f"{100 * clean:.2f}" and info["autoattack_acc"] == "0.00"
    assert info["reported"] is None  # the paper's claim: asmix's AutoAttack number is not it
    assert info["eps"] == "0.3" and info["dataset"] == "demo" and info["number_forward_passes"] == 1
    assert info["architecture"] == "DemoCNN-16 + DemoCNN-8" and info["unreliable"] is False
    assert info["link"] is None and info["additional_data"] is None and "provenance" not in info
    assert "external" not in info and info["footnote"] is None  # no mixing network, nothing adaptive
    claim = (tmp_path / "rb" / "Demo2026Mixed.md").read_text()
    assert "## NOT the leaderboard protocol" in claim and "Square with 10 queries, not 5000" in claim
    assert "demo has no RobustBench leaderboard" in claim and f"({round(clean * 6)}/6)" in claim
    assert "note: not the leaderboard protocol: Square with 10 queries, not 5000" in err

    # the user fills in what asmix cannot know; a stale number is overwritten by the rerun, the rest is kept
    user = {"link": "https://arxiv.org/abs/2301.12554", "name": "Mixed", "venue": "SIMODS 2024", "reported": "68.06"}
    user |= {"footnote": "Uses 50M synthetic images.", "clean_acc": "99.99", "leaderboard_note": "kept"}
    (tmp_path / "rb" / "Demo2026Mixed.json").write_text(json.dumps(info | user))
    code, _, err = run_cli(monkeypatch, capsys, *rerun)
    assert code in (0, None), err
    merged = json.loads((tmp_path / "rb" / "Demo2026Mixed.json").read_text())
    assert merged == info | user | {"clean_acc": info["clean_acc"]}
    assert list(merged)[:3] == ["link", "name", "authors"]  # RobustBench's field order
    claim = (tmp_path / "rb" / "Demo2026Mixed.md").read_text()
    assert "| reported (the paper's claim) | 68.06% |" in claim and "`name`" not in claim and "`authors`" in claim
    # --reported is the user's claim: it replaces the one in the file
    code, _, err = run_cli(monkeypatch, capsys, *rerun, "--reported", "55.5")
    assert code in (0, None), err
    assert json.loads((tmp_path / "rb" / "Demo2026Mixed.json").read_text())["reported"] == "55.50"
    code, _, err = run_cli(monkeypatch, capsys, *rerun, "--reported", "555")
    assert code == 2 and "--reported 555 must be a percentage between 0 and 100" in err
    (tmp_path / "rb" / "Demo2026Mixed.json").write_text("[1, 2]")
    code, _, err = run_cli(monkeypatch, capsys, *rerun)
    assert code == 2 and "holds a list, not a model_info object" in err


def _leaderboard_result(adaptive: bool, aa: float = 0.6, aa_adaptive: float = 0.55):
    from asmix.experiments.evaluate import AttackAccuracy, EvalResult

    config = EvalConfig(attacks=("clean", "aa", "aa-adaptive"), threat=ThreatModel(eps=8 / 255))
    rows = {"clean": AttackAccuracy(0.9, 0.4), "aa": AttackAccuracy(aa, 0.5, unreliable=False)}
    rows["aa-adaptive"] = AttackAccuracy(aa_adaptive, 0.3, unreliable=False)
    models = {"std": "bit-r152", "rob": "Wang2023", "mixer": "runs/mixer"}
    return EvalResult(config, 10000, {"mixed": rows}, models, adaptive)


def test_robustbench_external_is_the_adaptive_worst_case_and_the_footnote_names_its_attack():
    from asmix.report.robustbench import ADAPTIVE_NOTE, merge_model_info, model_info

    names = {"std": "BiT-R152x2", "rob": "WideResNet-70-16"}
    info = model_info(_leaderboard_result(True), "cifar10", architectures=names, reported=68.06)
    assert info["architecture"] == "BiT-R152x2 + WideResNet-70-16 + mixing network"
    assert (info["clean_acc"], info["autoattack_acc"], info["external"], info["reported"]) == (
        "90.00",
        "60.00",
        "55.00",
        "68.06",
    )
    assert info["footnote"] == ADAPTIVE_NOTE and "aa-adaptive" in ADAPTIVE_NOTE and info["number_forward_passes"] == 2
    assert info["eps"] == "8/255" and list(info).index("external") == list(info).index("autoattack_acc") + 1
    # at a fixed alpha aa-adaptive is standard AutoAttack: no external, and specs stand in for unknown architectures
    fixed = model_info(_leaderboard_result(False), "cifar10")
    assert "external" not in fixed and fixed["footnote"] is None and fixed["reported"] is None
    assert fixed["architecture"] == "bit-r152 + Wang2023"
    # the user's footnote keeps its text, gains the note once, and loses it when external goes
    user = {"footnote": "Uses 50M synthetic images.", "external": "12.00"}
    merged = merge_model_info(info | user, info)
    assert merged["footnote"] == f"Uses 50M synthetic images.<br>{ADAPTIVE_NOTE}" and merged["external"] == "55.00"
    assert merge_model_info(merged, info)["footnote"] == merged["footnote"]
    assert merge_model_info(merged, fixed)["footnote"] == "Uses 50M synthetic images."
    assert "external" not in merge_model_info(merged, fixed)


def test_robustbench_radius_is_written_as_robustbench_does():
    from asmix.report.robustbench import radius_text

    assert radius_text(8 / 255) == "8/255" and radius_text(4 / 255) == "4/255" and radius_text(0.5) == "0.5"
    assert radius_text(0.3) == "0.3"


def test_out_is_a_folder_and_the_old_file_form_still_works(monkeypatch, capsys, tmp_path):
    import json

    clean_on_four = ["evaluate", "--attack", "clean", "--n-examples", "4", "--device", "cpu", "--out"]
    code, _, err = run_cli(monkeypatch, capsys, *clean_on_four, str(tmp_path / "run"))
    assert code in (0, None), err
    saved = load_examples(tmp_path / "run" / "examples.npz")
    document = json.loads((tmp_path / "run" / "evaluate.json").read_text())
    assert saved["mixed/clean/correct"].float().mean().item() == document["rows"]["mixed"]["clean"]["accuracy"]
    code, _, err = run_cli(monkeypatch, capsys, *clean_on_four, str(tmp_path / "old.npz"))
    assert code in (0, None) and (tmp_path / "old.npz").is_file()
    assert "--out" in err and "as a file is deprecated: give a folder" in err


def test_the_detector_profile_is_the_library_s_and_reuses_the_pgd_column(monkeypatch):
    std, rob, mixer, x, y = tiny_problem(n=12, adaptive=True)
    threat = ThreatModel(eps=0.05, steps=4)
    config = EvalConfig(attacks=("clean", "pgd"), threat=threat, run=RunSettings(batch_size=8), square_queries=20)
    pgd_runs, perturb = [], PGD.perturb

    def counting(self, *args, **kwargs):
        pgd_runs.append(self.steps)
        return perturb(self, *args, **kwargs)

    monkeypatch.setattr(PGD, "perturb", counting)
    result = evaluate(std, rob, x, y, config, mixer=mixer)
    assert sorted(pgd_runs) == [0, 0, 4, 4]  # per batch the uniform start and the pgd column: no second PGD
    assert config.detector_attack_budget == AttackBudget(apgd_steps=25, target_classes=3, square_queries=20)
    alone = detector_profile(
        MixedClassifier(std, rob, mixer).eval(),
        x,
        y,
        eps=0.05,
        norm="linf",
        batch_size=8,
        seed=0,
        device=torch.device("cpu"),
        budget=config.detector_attack_budget,
        pgd=threat.pgd(),
    )
    assert result.detector == alone and result.to_dict()["detector_profile"] == alone.to_dict()
    assert [row.points for row in alone.rows] == list(PROFILE_POINTS) and alone.row("pgd").n == 12
    assert alone.row("pgd").mean_alpha == pytest.approx(result.rows["mixed"]["pgd"].mean_alpha)
    assert torch.equal(result.examples["detector/clean/alpha"], result.examples["mixed/clean/alpha"])


def test_no_detector_profile_at_a_fixed_alpha_or_when_off():
    std, rob, mixer, x, y = tiny_problem(n=4, adaptive=True)
    fixed = evaluate(std, rob, x, y, EvalConfig(attacks=("clean",)))
    off = evaluate(std, rob, x, y, EvalConfig(attacks=("clean",), detector_budget="off"), mixer=mixer)
    for result in (fixed, off):
        assert result.detector is None and "detector_profile" not in result.to_dict()
        assert not any(key.startswith("detector/") for key in result.examples)
    with pytest.raises(AsmixError, match="detector budget"):
        EvalConfig(detector_budget="huge")


@pytest.mark.slow
def test_cli_with_a_mixer_writes_the_detector_profile(monkeypatch, capsys, tmp_path):
    import json

    mixer_dir = _mixer_for_demo_std_twice(tmp_path)
    code, out, err = run_cli(
        monkeypatch,
        capsys,
        "evaluate",
        *("--rob", "demo-std", "--mixer", str(mixer_dir), "--n-examples", "6", "--batch-size", "3"),
        *("--attack", "clean,pgd", "--steps", "2", "--square-queries", "5", "--device", "cpu"),
        *("--out", str(tmp_path / "run")),
    )
    assert code in (0, None), err
    assert "Detector profile (lite budget)" in out and "APGD-T" in out
    document = json.loads((tmp_path / "run" / "evaluate.json").read_text())
    rows = document["detector_profile"]
    assert [row["points"] for row in rows] == list(PROFILE_POINTS)
    assert all(set(row) == {"points", "n", "mean_alpha", "auc"} and row["n"] == 6 for row in rows)
    assert rows[0]["auc"] == 0.5 and all(0 <= row["auc"] <= 1 and 0 < row["mean_alpha"] < 1 for row in rows)
    assert document["config"]["detector_budget"] == "lite"
    examples = load_examples(tmp_path / "run" / "examples.npz")
    assert examples["detector/square-alpha/alpha_logit"].shape == (6,)


def test_the_mixer_head_scales_apply_and_an_explicit_scale_overrides_them_saying_so(monkeypatch, capsys, tmp_path):
    from asmix.mixer import MixingNetwork, save_mixer

    std, rob = load_model("demo-std"), load_model("demo-rob")
    x = torch.rand(2, 1, 28, 28)
    mixer = MixingNetwork.build(std, rob, x, width=8, blocks=1, stages=0, alpha_range=(0.9, 0.95)).eval()
    folder = save_mixer(
        mixer,
        tmp_path / "mixer",
        config={"models": {"std": "demo-std", "rob": "demo-rob"}},
        std=std,
        rob=rob,
        scales=(1.2, 0.3),
    )
    args = ("evaluate", "--mixer", str(folder), "--attack", "clean", "--n-examples", "4", "--device", "cpu")
    code, _, err = run_cli(monkeypatch, capsys, *args, "--json", str(tmp_path / "head.json"))
    mix = json.loads((tmp_path / "head.json").read_text())["config"]["mix"]
    assert code in (0, None) and (mix["std_scale"], mix["rob_scale"]) == (1.2, 0.3) and "overrides" not in err
    code, _, err = run_cli(monkeypatch, capsys, *args, "--rob-scale", "0.5", "--json", str(tmp_path / "given.json"))
    mix = json.loads((tmp_path / "given.json").read_text())["config"]["mix"]
    assert code in (0, None) and (mix["std_scale"], mix["rob_scale"]) == (1.2, 0.5)
    assert "note: --rob-scale 0.5 overrides the rob_scale 0.3 of the head chosen" in err


def _mixer_for_demo_std_twice(tmp_path):
    """A (random) mixing network saved as trained with demo-std as both g and h (taps of the same width)."""
    from asmix.mixer import MixingNetwork, save_mixer

    return save_mixer(
        MixingNetwork([16, 32], [16, 32], width=8, blocks=1, stages=0),
        tmp_path / "mixer",
        config={"models": {"std": "demo-std", "rob": "demo-std"}},
        std=load_model("demo-std"),
        rob=load_model("demo-std"),
    )


def test_robustbench_with_a_mixer_runs_aa_adaptive_for_external(monkeypatch, capsys, tmp_path):
    from asmix.report.robustbench import ADAPTIVE_NOTE

    mixer_dir = _mixer_for_demo_std_twice(tmp_path)
    args = ["evaluate", "--rob", "demo-std", "--mixer", str(mixer_dir), "--robustbench", str(tmp_path / "rb")]
    args += ["--n-examples", "4", "--batch-size", "4", "--square-queries", "5", "--device", "cpu"]
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert code in (0, None), err
    info = json.loads((tmp_path / "rb" / "asmix_mixed.json").read_text())
    assert info["architecture"] == "DemoCNN-16 + DemoCNN-16 + mixing network" and info["footnote"] == ADAPTIVE_NOTE
    assert float(info["external"]) <= float(info["autoattack_acc"]) and info["number_forward_passes"] == 2
    claim = (tmp_path / "rb" / "asmix_mixed.md").read_text()
    assert f"| adaptive AutoAttack (aa-adaptive, `external`) accuracy | {info['external']}% |" in claim


def test_a_batch_log_shows_autoattack_stages_inside_a_batch(monkeypatch, capsys):
    import functools

    import asmix.cli.progress

    now = [0.0]

    def clock() -> float:  # every look at the clock is 31 seconds later: each report is due
        now[0] += 31.0
        return now[0]

    plain = functools.partial(asmix.cli.progress.PlainProgress, clock=clock)
    monkeypatch.setattr(asmix.cli.progress, "PlainProgress", plain)
    args = ["--attack", "aa", "--n-examples", "3", "--square-queries", "5", "--eps", "0.3", "--device", "cpu"]
    code, _, err = run_cli(monkeypatch, capsys, "evaluate", *args)
    assert code == 0, err
    lines = err.strip().splitlines()
    stages = [line for line in lines if line.startswith("evaluate batch 1/1, mixed aa: ")]
    assert stages[0].startswith("evaluate batch 1/1, mixed aa: clean done, ") and stages[0].endswith("/3 robust")
    assert "evaluate batch 1/1, mixed aa: apgd-ce 0/1 restarts, " in "\n".join(stages)
    assert stages[-1].startswith("evaluate batch 1/1, mixed aa: square done, ")
    assert lines.index(stages[-1]) < next(k for k, line in enumerate(lines) if line.startswith("evaluate: 3/3"))
