"""calibrate: the exact search over alpha, the MixedNUTS grid against brute force, the calibration file
round trip through every command that reads one, and one-line errors for bad files."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli

from asmix import AsmixError
from asmix.calibration import CachedLogits, MixChoice, SearchCache, family_curve, load_calibration
from asmix.cli import main
from asmix.data import load_data
from asmix.experiments.calibrate import CalibrateConfig, choose_linear, choose_nuts, grid
from asmix.mixing import HEAD_KEYS, mix_logits
from asmix.nuts import NutsMap


def synthetic(n=60, classes=4, seed=0) -> CachedLogits:
    """g accurate and confident, h less accurate but with some margin left on its 'attacked' logits."""
    generator = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=generator)
    onehot = torch.nn.functional.one_hot(y, classes).double()
    std = torch.randn(n, classes, generator=generator, dtype=torch.float64) + 2.5 * onehot
    rob = torch.randn(n, classes, generator=generator, dtype=torch.float64) + 1.2 * onehot
    attacked = rob - 1.5 * torch.rand(n, 1, generator=generator, dtype=torch.float64) * onehot
    return CachedLogits(std, rob, attacked, y)


def brute(cached, rob_map, temperature, alpha):
    """Clean accuracy from the mixed model's own logits and the Lemma 3.2 estimate, at one alpha."""
    clean = (
        (
            mix_logits(cached.std_clean, cached.rob_clean, alpha, rob_map=rob_map, std_temperature=temperature).argmax(
                1
            )
            == cached.y
        )
        .double()
        .mean()
        .item()
    )
    mapped = cached.rob_attacked if rob_map is None else rob_map(cached.rob_attacked)
    probs = torch.softmax(mapped, 1)
    true = probs.gather(1, cached.y[:, None])[:, 0]
    margin = true - probs.scatter(1, cached.y[:, None], -1.0).max(1).values
    robust = ((margin > 0) & (margin >= (1 - alpha) / alpha - 1e-12)).double().mean().item() if alpha > 0 else 0.0
    return clean, robust


FINE = np.linspace(0.0005, 0.9995, 1000)


@pytest.mark.parametrize(
    "temperature, rob_map", [(1.0, None), (0.0, NutsMap(2.0, 2.0, -0.5)), (1.0, NutsMap(0.3, 3.0, 0.0))]
)
def test_exact_curve_matches_the_mixed_model_at_every_alpha(temperature, rob_map):
    cached = synthetic()
    alphas, clean, robust = family_curve(cached, rob_map, temperature)
    assert np.all(np.diff(robust) >= 0)  # the estimate never falls as alpha grows
    for alpha in FINE[::37]:
        index = np.searchsorted(alphas, alpha)
        if index < len(alphas) and math.isclose(alphas[index], alpha):
            continue
        # strictly inside a cell: the cell's middle point carries the same values
        middle = index - 1 if index % 2 == 0 else index
        assert brute(cached, rob_map, temperature, alpha) == pytest.approx((clean[middle], robust[middle]), abs=1e-12)


@pytest.mark.parametrize("target", [0.8, 0.9])
def test_linear_choice_beats_a_brute_force_alpha_grid(target):
    cached = synthetic()
    config = CalibrateConfig(target_clean_acc=target)
    choice, _ = choose_linear(cached, config)
    values = [brute(cached, None, 1.0, a) for a in FINE]
    best = max(r for c, r in values if c >= target)
    assert choice.meets_target
    assert choice.robust_estimate >= best
    assert brute(cached, None, 1.0, choice.choice.alpha) == pytest.approx((choice.clean, choice.robust_estimate))
    assert choice.clean >= target


def test_nuts_choice_beats_a_brute_force_grid_and_refinement_never_loses():
    cached, target = synthetic(), 0.85
    config = CalibrateConfig(target_clean_acc=target, grid_size=3, refine=False)
    chosen, _ = choose_nuts(cached, config)
    best = max(
        r
        for s, p, c in grid(config)
        for cl, r in (brute(cached, NutsMap(s, p, c), 0.0, a) for a in FINE[::4])
        if cl >= target
    )
    assert chosen.meets_target and chosen.robust_estimate >= best
    assert chosen.choice.std_temperature == 0.0  # hard-max g, as the authors' code
    measured = brute(cached, chosen.choice.rob_map, 0.0, chosen.choice.alpha)
    assert measured == pytest.approx((chosen.clean, chosen.robust_estimate))
    refined, _ = choose_nuts(cached, CalibrateConfig(target_clean_acc=target, grid_size=3, refine=True))
    assert refined.details["refined_score"] >= chosen.details["grid_best"]["score"]
    assert refined.robust_estimate >= chosen.robust_estimate and refined.meets_target
    assert brute(cached, refined.choice.rob_map, 0.0, refined.choice.alpha)[0] >= target


def test_unreachable_target_gives_the_most_accurate_mix_flagged():
    cached = synthetic()
    choice, _ = choose_linear(cached, CalibrateConfig(target_clean_acc=1.0))
    best_clean = max(brute(cached, None, 1.0, a)[0] for a in FINE)
    assert not choice.meets_target and choice.clean == pytest.approx(best_clean)


def test_search_cost_does_not_depend_on_models():
    # the search reads only cached logits; the score of a map is the same whether computed alone or in a search
    cached = synthetic()
    search = SearchCache(cached, 0.0)
    value, point, _ = search.score(NutsMap(1.0, 2.0, -0.3), 0.85)
    from asmix.calibration import score

    assert score(cached, NutsMap(1.0, 2.0, -0.3), 0.0, 0.85)[0] == value


# ---- the calibration file through the CLI ------------------------------------------------------------


def run_cli_for_fixture(*args):
    """``asmix ARGS`` from a module-scoped fixture (no monkeypatch there); it must succeed."""
    argv = sys.argv
    sys.argv = ["asmix", *args]
    try:
        with pytest.raises(SystemExit) as exit_info:
            main()
    finally:
        sys.argv = argv
    assert exit_info.value.code in (0, None)


@pytest.fixture(scope="module")
def calibration_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cal")
    run_cli_for_fixture(
        "calibrate",
        "--n-examples",
        "40",
        "--aa-steps",
        "2",
        "--target-classes",
        "0",
        "--grid-size",
        "2",
        "--no-refine",
        "--target-clean-acc",
        "97.5",
        "--device",
        "cpu",
        "--out",
        str(out),
    )
    return out


def test_calibrate_writes_json_and_plot(calibration_dir):
    data = json.loads((calibration_dir / "calibration.json").read_text())
    assert (calibration_dir / "calibration_tradeoff.png").stat().st_size > 1000
    families = {"linear", "tempered", "nuts"}
    assert set(data["families"]) == families and data["models"] == {"std": "demo-std", "rob": "demo-rob"}
    tempered, linear = data["families"]["tempered"], data["families"]["linear"]
    assert tempered["robust_estimate"] >= linear["robust_estimate"]  # scales 1 are among its candidates
    assert (linear["std_scale"], linear["rob_scale"]) == (1.0, 1.0)
    nuts = data["families"]["nuts"]
    assert nuts["rob_map"]["scale"] > 0 and nuts["std_temperature"] == 0.0
    assert data["verification"] == []
    assert data["config"]["n_examples"] == 40 and data["config"]["from_end"] is True
    loaded = load_calibration(calibration_dir)
    assert loaded.choice("nuts") == MixChoice(nuts["alpha"], 0.0, NutsMap.from_dict(nuts["rob_map"]))


@pytest.mark.parametrize("end, std_clean", [("--from-end", 1.0), ("--from-start", 1 / 3)])
def test_calibrate_reads_the_held_out_end_of_the_data_by_default(monkeypatch, capsys, tmp_path, end, std_clean):
    x, y = load_data("demo", n_examples=6)
    wrong = y.clone()
    wrong[:2] = (y[:2] + 1) % 10  # the first two labels are wrong, so g's accuracy tells which end was read
    np.savez(tmp_path / "six.npz", x=x.numpy(), y=wrong.numpy())
    args = ["calibrate", "--data", str(tmp_path / "six.npz"), "--n-examples", "3", "--aa-steps", "1"]
    args += ["--target-classes", "0", "--grid-size", "1", "--no-refine", "--out", str(tmp_path / "out")]
    code, _, err = run_cli(monkeypatch, capsys, *args, *([end] if end == "--from-start" else []))
    assert code in (0, None), err
    assert json.loads((tmp_path / "out" / "calibration.json").read_text())["base"]["std_clean"] == std_clean


@pytest.mark.slow
def test_verify_runs_standard_autoattack_on_unseen_examples(monkeypatch, capsys, tmp_path):
    code, out, err = run_cli(
        monkeypatch,
        capsys,
        "calibrate",
        "--n-examples",
        "20",
        "--aa-steps",
        "2",
        "--target-classes",
        "0",
        "--grid-size",
        "2",
        "--no-refine",
        "--device",
        "cpu",
        "--verify",
        "1",
        "--square-queries",
        "5",
        "--out",
        str(tmp_path),
    )
    assert code in (0, None), err
    rows = json.loads((tmp_path / "calibration.json").read_text())["verification"]
    assert [(row["family"], row["n"]) for row in rows] == [("linear", 1), ("tempered", 1), ("nuts", 1)]
    assert all(
        0 <= row["autoattack"] <= row["clean"] <= 1
        and set(row["trail"]) == {"clean", "apgd-ce", "apgd-t", "fab-t", "square"}
        for row in rows
    )
    assert "Verification" in out


@pytest.mark.parametrize(
    "command, extra",
    [
        ("sweep-alpha", ["--alphas", "0.5", "--attacks", "transfer-rob", "--steps", "1"]),
        ("evaluate", ["--attack", "clean,pgd", "--steps", "1"]),
        ("margins", ["--attacks", "pgd", "--steps", "1", "--classifiers", "rob,mix"]),
        ("certify", ["--n-samples", "8"]),
    ],
)
@pytest.mark.parametrize("family", ["nuts", "linear", "tempered"])
def test_calibration_round_trip_through_every_command(
    monkeypatch, capsys, tmp_path, calibration_dir, command, extra, family
):
    data = json.loads((calibration_dir / "calibration.json").read_text())
    chosen = data["families"][family]
    family_args = [] if command == "certify" else ["--family", family]
    if command == "certify" and family != "linear":
        pytest.skip("certify reads the linear family only")
    code, out, err = run_cli(
        monkeypatch,
        capsys,
        command,
        "--n-examples",
        "4",
        "--device",
        "cpu",
        "--calibration",
        str(calibration_dir / "calibration.json"),
        *family_args,
        *extra,
        "--json",
        str(tmp_path / "r.json"),
    )
    assert code in (0, None), err
    config = json.loads((tmp_path / "r.json").read_text())["config"]
    if command == "sweep-alpha":
        assert chosen["alpha"] in config["alphas"] and 0.5 in config["alphas"]
    elif command == "certify":
        assert config["alpha"] == chosen["alpha"]
        assert config["std_hardmax"] == (chosen["std_temperature"] == 0)
        return
    else:
        assert config["alpha"] == chosen["alpha"]
    assert config["mix"]["std_temperature"] == chosen["std_temperature"]
    assert config["mix"]["rob_map"] == chosen["rob_map"]
    assert (config["mix"]["std_scale"], config["mix"]["rob_scale"]) == (chosen["std_scale"], chosen["rob_scale"])


def test_rob_map_option_builds_the_same_mix(monkeypatch, capsys, tmp_path):
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "evaluate",
        "--n-examples",
        "4",
        "--device",
        "cpu",
        "--attack",
        "clean",
        "--alpha",
        "0.9",
        "--rob-map",
        "nuts:2,3,-0.5",
        "--json",
        str(tmp_path / "r.json"),
    )
    assert code in (0, None), err
    config = json.loads((tmp_path / "r.json").read_text())["config"]
    assert config["mix"]["rob_map"] == {"scale": 2.0, "power": 3.0, "clamp_bias": -0.5, "ln_k": 250}
    assert config["alpha"] == 0.9


def _write(path, data):
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


GOOD = {
    "format": "asmix-calibration",
    "version": 1,
    "models": {"std": "demo-std", "rob": "demo-rob"},
    "families": {
        "linear": {"alpha": 0.7},
        "nuts": {"alpha": 0.9, "std_temperature": 0.0, "rob_map": {"scale": 1, "power": 2, "clamp_bias": -0.5}},
    },
}


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no such file"),
        ("{not json", "not JSON"),
        ({"families": {}}, "not an asmix calibration"),
        (GOOD | {"version": 7}, "format version 7"),
        (GOOD | {"families": {"linear": {"alpha": 1.5}}}, "alpha must be in [0, 1], got 1.5"),
        (GOOD | {"families": {"linear": {"alpha": "high"}}}, "alpha must be a number"),
        (
            GOOD | {"families": {"nuts": {"alpha": 0.9, "rob_map": {"scale": -1, "power": 2, "clamp_bias": 0}}}},
            "nuts scale must be in (0, 1000], got -1",
        ),
        (GOOD | {"families": {"nuts": {"alpha": 0.9, "rob_map": {"scale": 1}}}}, "nuts map lacks clamp_bias, power"),
        (GOOD | {"families": {"cubic": {"alpha": 0.9}}}, "unknown family 'cubic'"),
        (GOOD | {"models": {"std": "demo-std", "rob": "other"}}, "made for --std demo-std --rob other"),
        (GOOD | {"families": {"linear": {"alpha": 0.7}}}, "has no 'nuts' family"),
    ],
)
@pytest.mark.parametrize("command", ["sweep-alpha", "evaluate", "margins", "certify"])
def test_bad_calibration_is_one_line(monkeypatch, capsys, tmp_path, content, message, command):
    path = tmp_path / "cal.json"
    if content is not None:
        _write(path, content)
    if command == "certify" and "nuts" in message:
        content = GOOD | {"families": {"nuts": GOOD["families"]["nuts"]}}
        _write(path, content)
        message = "has no 'linear' family"
    code, out, err = run_cli(
        monkeypatch, capsys, command, "--n-examples", "4", "--device", "cpu", "--calibration", str(path)
    )
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err + out
    assert message in err and str(path) in err


def test_conflicting_options_are_one_line(monkeypatch, capsys, tmp_path):
    path = _write(tmp_path / "cal.json", GOOD)
    for args, message in (
        (["evaluate", "--alpha", "0.5"], "either --alpha or --calibration"),
        (["evaluate", "--rob-map", "nuts:1,2,0"], "either --rob-map or --calibration"),
        (["certify", "--match-clean-acc"], "either --calibration or --alpha/--match-clean-acc"),
    ):
        code, _, err = run_cli(monkeypatch, capsys, args[0], "--n-examples", "4", "--calibration", str(path), *args[1:])
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_calibrate_checks_output_before_work(monkeypatch, capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run_cli(monkeypatch, capsys, "calibrate", "--out", str(blocker))
    assert code == 2 and "it is a file, a folder is needed" in err
    code, _, err = run_cli(monkeypatch, capsys, "calibrate", "--target-clean-acc", "0", "--out", str(tmp_path / "o"))
    assert code == 2 and "target clean accuracy must be in (0, 1]" in err
    assert not (tmp_path / "o").exists()


def test_calibration_validation_errors():
    with pytest.raises(AsmixError, match="power range"):
        CalibrateConfig(power_range=(0.5, 2.0))


# ---- the mixer family --------------------------------------------------------------------------------


def _tiny_pair_and_mixer(seed=1):
    from asmix.mixer import MixingNetwork
    from asmix.models.demo import DemoCNN

    torch.manual_seed(seed)
    std, rob = DemoCNN(width=2).eval(), DemoCNN(width=4).eval()
    x = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    mixer = MixingNetwork.build(std, rob, x, width=8, blocks=1, stages=0).eval()
    return std, rob, mixer, x


def test_mixer_choice_matches_a_brute_force_over_the_same_grid():
    from asmix.attacks.pgd import ThreatModel
    from asmix.experiments.calibrate import MixerInput, choose_mixer
    from asmix.experiments.train.selection import attack_pools, cache_pool, head_grid, score_heads
    from asmix.identity import weights_digest
    from asmix.mixing import EvaluationHead, MixedClassifier
    from asmix.runtime import RunSettings

    std, rob, mixer, x = _tiny_pair_and_mixer()
    with torch.no_grad():
        y = rob(x).argmax(1)  # h right on its own predictions, g on four more where they differ
        y[:4] = std(x[:4]).argmax(1)
    config = CalibrateConfig(
        target_clean_acc=0.6,
        threat=ThreatModel(eps=0.05),
        range_min_alpha=0.8,
        range_max_width=0.1,
        run=RunSettings(batch_size=8),
    )
    family, frontier, timing = choose_mixer(
        std, rob, x, y, MixerInput(mixer, "/somewhere/mixer"), config, device=torch.device("cpu")
    )
    head = family.choice.mixer
    assert head.weights == weights_digest(mixer) and head.folder == "/somewhere/mixer"
    assert family.choice.alpha == head.alpha_range[0] >= 0.8
    assert (mixer.alpha_min, mixer.alpha_max, mixer.alpha_bias) == (0.0, 1.0, 0.0)  # the head is restored
    assert set(timing) == {"attack_mixer", "forward_mixer", "search_mixer"}

    # brute force: the same attacked pools, every head of the grid (three of its scale pairs) and the chosen one run
    # end to end through the mixed model
    pools = attack_pools(
        MixedClassifier(std, rob, mixer).eval(), x, y, eps=0.05, min_alpha=0.8, max_width=0.1, batch_size=8
    )
    heads = head_grid(0.8, 0.1, scales=((1.0, 1.0), (1.2, 0.3), (2.0, 0.1)))
    results = {}
    with torch.no_grad():
        for candidate in [*heads, head.head]:
            mixed = MixedClassifier(std, rob, mixer, std_scale=candidate.std_scale, rob_scale=candidate.rob_scale)
            mixer.set_head(candidate)
            right = [mixed.eval()(points).argmax(1) == y for points in pools]
            results[candidate] = (right[0].float().mean().item(), torch.stack(right).all(0).float().mean().item())
    mixer.set_head(EvaluationHead())
    assert len(set(results.values())) > 3  # the heads differ on this set
    assert len({(h.std_scale, h.rob_scale) for h in heads if results[h][0] >= 0.6}) > 1  # and so do the scales
    # every head's numbers from the cache equal the model's own, and the choice is the brute-force best
    caches = [cache_pool(MixedClassifier(std, rob, mixer).eval(), points, 16, torch.device("cpu")) for points in pools]
    for candidate in score_heads(MixedClassifier(std, rob, mixer), caches, y, heads):
        assert (candidate.clean_acc, candidate.estimated_attacked_acc) == pytest.approx(results[candidate.head]), (
            candidate
        )
    best = max(robust for clean, robust in results.values() if clean >= 0.6)
    assert family.meets_target and family.clean >= 0.6
    assert results[head.head] == pytest.approx((family.clean, family.robust_estimate))
    assert family.robust_estimate == pytest.approx(best)
    # the frontier: no candidate beats a frontier point on both numbers
    for clean, robust in zip(frontier["clean"], frontier["robust_estimate"]):
        assert not any(c > clean + 1e-12 and r > robust + 1e-12 for c, r in results.values())


@pytest.fixture(scope="module")
def demo_mixer_dir(tmp_path_factory):
    """A (random) mixing network for the demo pair, saved as trained with demo-std and demo-rob."""
    from asmix.mixer import MixingNetwork, save_mixer
    from asmix.models import load_model

    std, rob = load_model("demo-std"), load_model("demo-rob")
    torch.manual_seed(0)
    mixer = MixingNetwork.build(std, rob, torch.rand(2, 1, 28, 28), width=8, blocks=1, stages=0)
    return save_mixer(
        mixer,
        tmp_path_factory.mktemp("mixer") / "mixer",
        config={"models": {"std": "demo-std", "rob": "demo-rob"}},
        std=std,
        rob=rob,
    )


@pytest.fixture(scope="module")
def mixer_calibration(tmp_path_factory, demo_mixer_dir):
    out = tmp_path_factory.mktemp("calmix")
    run_cli_for_fixture(
        "calibrate",
        "--n-examples",
        "8",
        "--aa-steps",
        "2",
        "--target-classes",
        "0",
        "--grid-size",
        "2",
        "--no-refine",
        "--target-clean-acc",
        "90",
        "--range-min-alpha",
        "0.7",
        "--range-max-width",
        "0.1",
        "--mixer",
        str(demo_mixer_dir),
        "--device",
        "cpu",
        "--out",
        str(out),
    )
    return out / "calibration.json"


def test_calibrate_with_a_mixer_writes_the_mixer_family(mixer_calibration, demo_mixer_dir):
    from asmix.identity import weights_digest
    from asmix.mixer import load_mixer

    data = json.loads(mixer_calibration.read_text())
    assert set(data["families"]) == {"linear", "tempered", "nuts", "mixer"}
    entry = data["families"]["mixer"]
    low, high = entry["mixer"]["alpha_min"], entry["mixer"]["alpha_max"]  # the whole head, scales included
    assert 0.7 <= low <= high <= min(1.0, low + 0.1 + 1e-9) and entry["alpha"] == low
    assert entry["mixer"]["std_scale"] > 0 and entry["mixer"]["rob_scale"] > 0
    assert entry["details"]["tempered_fixed"]["clean_acc"] >= entry["clean"]
    assert entry["mixer"]["folder"] == str(demo_mixer_dir.resolve())
    assert entry["mixer"]["weights"] == weights_digest(load_mixer(demo_mixer_dir)[0])
    assert set(data["curves"]) == {"linear", "tempered", "nuts", "mixer"} and data["curves"]["mixer"]["clean"]
    assert {"attack_mixer", "forward_mixer", "search_mixer"} <= set(data["timing"])
    assert (mixer_calibration.parent / "calibration_tradeoff.png").stat().st_size > 1000
    choice = load_calibration(mixer_calibration).choice("mixer")
    assert choice.mixer.head.to_dict() == {key: entry["mixer"][key] for key in HEAD_KEYS}


@pytest.mark.parametrize(
    "command, extra",
    [
        ("sweep-alpha", ["--alphas", "0.5", "--attacks", "transfer-rob", "--steps", "1"]),
        ("evaluate", ["--attack", "clean,pgd", "--steps", "1"]),
        ("margins", ["--attacks", "pgd", "--steps", "1", "--classifiers", "rob,mix"]),
        ("certify", ["--n-samples", "8"]),
    ],
)
def test_mixer_family_round_trip_through_every_command(
    monkeypatch, capsys, tmp_path, mixer_calibration, command, extra
):
    entry = json.loads(mixer_calibration.read_text())["families"]["mixer"]
    low, high = entry["mixer"]["alpha_min"], entry["mixer"]["alpha_max"]
    code, out, err = run_cli(
        monkeypatch,
        capsys,
        command,
        "--n-examples",
        "4",
        "--device",
        "cpu",
        "--calibration",
        str(mixer_calibration),
        "--family",
        "mixer",
        *extra,
        "--json",
        str(tmp_path / "r.json"),
    )
    assert code in (0, None), err
    result = json.loads((tmp_path / "r.json").read_text())
    config = result["config"]
    if command == "sweep-alpha":
        assert {low, high, 0.5} <= set(config["alphas"]) and "range ends" in err
    elif command == "certify":
        assert config["alpha"] == low and "alpha_min" in err
    elif command == "evaluate":
        assert config["models"]["mixer"] == entry["mixer"]["folder"] and config["adaptive"]
        assert low - 1e-6 <= result["rows"]["mixed"]["clean"]["mean_alpha"] <= high + 1e-6  # the chosen head
    else:
        assert config["alpha"] == low and config["models"]["mixer"] == entry["mixer"]["folder"]


def _edited(path, out, **mixer_entry):
    data = json.loads(path.read_text())
    data["families"]["mixer"]["mixer"] |= mixer_entry
    return _write(out, data)


@pytest.mark.parametrize("command", ["sweep-alpha", "evaluate", "margins", "certify"])
def test_mixer_family_bad_mixer_is_one_line(monkeypatch, capsys, tmp_path, mixer_calibration, command):
    from asmix.mixer import MIXER_CONFIG, MIXER_WEIGHTS

    folder = Path(json.loads(mixer_calibration.read_text())["families"]["mixer"]["mixer"]["folder"])
    foreign = tmp_path / "foreign"  # the same network, saved as trained for another h
    foreign.mkdir()
    (foreign / MIXER_WEIGHTS).write_bytes((folder / MIXER_WEIGHTS).read_bytes())
    mixer_json = json.loads((folder / MIXER_CONFIG).read_text())
    mixer_json["models"] = {"std": "demo-std", "rob": "demo-std"}
    (foreign / MIXER_CONFIG).write_text(json.dumps(mixer_json))
    for path, message in (
        (_edited(mixer_calibration, tmp_path / "a.json", folder=str(tmp_path / "gone")), "mixer directory not found"),
        (
            _edited(mixer_calibration, tmp_path / "b.json", weights="0" * 64),
            "has other weights than the one calibrated",
        ),
        (
            _edited(mixer_calibration, tmp_path / "c.json", folder=str(foreign)),
            "trained with --rob demo-std, not demo-rob",
        ),
    ):
        code, out, err = run_cli(
            monkeypatch,
            capsys,
            command,
            "--n-examples",
            "4",
            "--device",
            "cpu",
            "--calibration",
            str(path),
            "--family",
            "mixer",
        )
        assert code == 2, (path, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err + out
        assert message in err and str(path) in err


def test_calibrate_rejects_a_bad_mixer_before_work(monkeypatch, capsys, tmp_path, demo_mixer_dir):
    code, _, err = run_cli(
        monkeypatch, capsys, "calibrate", "--mixer", str(tmp_path / "none"), "--out", str(tmp_path / "o")
    )
    assert code == 2 and "mixer directory not found" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "calibrate",
        "--rob",
        "demo-std",
        "--mixer",
        str(demo_mixer_dir),
        "--out",
        str(tmp_path / "o"),
    )
    assert code == 2 and "was trained with --rob demo-rob, not demo-std" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_mixer_family_entries_are_checked(tmp_path):
    from asmix.calibration import FORMAT, VERSION

    mixer = {"folder": "/m", "weights": "ab", "alpha_range": [0.8, 0.9], "alpha_bias": 1.0}
    for family, message in (
        ({"linear": {"alpha": 0.8, "mixer": mixer}}, 'a "mixer" entry belongs to the mixer family only'),
        ({"mixer": {"alpha": 0.8}}, 'a "mixer" entry belongs to the mixer family only'),
        ({"mixer": {"alpha": 0.8, "mixer": mixer | {"alpha_range": [0.9, 0.8]}}}, "alpha_min <= alpha_max"),
        ({"mixer": {"alpha": 0.8, "mixer": {"folder": "/m"}}}, "mixer entry lacks weights"),
        (
            {"mixer": {"alpha": 0.8, "mixer": {"folder": "/m", "weights": "ab"}}},
            "lacks alpha_bias, alpha_max, alpha_min",
        ),
        ({"mixer": {"alpha": 0.8, "mixer": mixer | {"rob_scale": 0}}}, r"logit scales must be in \(0, 1000\]"),
        ({"mixer": {"alpha": 0.8, "mixer": mixer | {"gain": 1}}}, "head has unknown keys gain"),
        ({"tempered": {"alpha": 0.8, "rob_scale": "x"}}, "rob_scale must be a finite number"),
        ({"mixer": {"alpha": 0.7, "mixer": mixer}}, "a mixer's alpha is its alpha_min 0.8"),
    ):
        path = _write(tmp_path / "cal.json", {"format": FORMAT, "version": VERSION, "models": {}, "families": family})
        with pytest.raises(AsmixError, match=message):
            load_calibration(path)


def test_a_killed_verification_resumes_from_its_saved_batches(monkeypatch, tmp_path):
    """Each (family, batch) is saved as it finishes: a rerun attacks only what the killed run left, and gives the
    numbers of one uninterrupted run; the parts are removed once the verification is complete."""
    import asmix.experiments.calibrate as calibrate_module
    from asmix.calibration import FamilyChoice
    from asmix.experiments.calibrate import verify
    from asmix.models.demo import build_demo_model
    from asmix.runtime import RunSettings

    class Run:
        def __init__(self, x):
            ink = x.flatten(1).mean(1)  # every stage keeps the images with more ink than its threshold
            self.robust = torch.stack([ink > threshold for threshold in (0.0, 0.10, 0.12, 0.14, 0.16)], 1)

    attacked = []

    def fake_autoattack(mixed, x, y, *, seed, **kwargs):
        if len(attacked) == kill_after:
            raise KeyboardInterrupt
        attacked.append(seed)
        return Run(x)

    monkeypatch.setattr(calibrate_module, "adaptive_autoattack", fake_autoattack)
    x, y = load_data("demo", n_examples=12)
    families = {
        name: FamilyChoice(name, MixChoice(alpha), 0.99, 0.8, True, 0.0)
        for name, alpha in (("linear", 0.6), ("nuts", 0.8))
    }
    config = CalibrateConfig(run=RunSettings(batch_size=4, seed=0))
    std, rob = build_demo_model("demo-std"), build_demo_model("demo-rob")
    run = dict(device=torch.device("cpu"), parts_dir=tmp_path / "verify.parts")

    kill_after = None
    whole = verify(std, rob, x, y, families, config, device=torch.device("cpu"))
    assert len(attacked) == 6 and not (tmp_path / "verify.parts").exists()
    attacked.clear()
    kill_after = 4  # linear's 3 batches and nuts's first one are saved, then the run dies
    with pytest.raises(KeyboardInterrupt):
        verify(std, rob, x, y, families, config, **run)
    assert len(list((tmp_path / "verify.parts").glob("*.pt"))) == 4
    attacked.clear()
    kill_after = None
    resumed = verify(std, rob, x, y, families, config, **run)
    assert attacked == [4, 8]  # only nuts's last two batches (seeded by their first example) ran again
    assert [(r.family, r.autoattack, r.broken) for r in resumed] == [(r.family, r.autoattack, r.broken) for r in whole]
    assert 0 < whole[0].autoattack < whole[0].clean and sum(whole[0].broken.values()) > 0
    assert not (tmp_path / "verify.parts").exists()


def test_tempered_family_finds_the_logit_scales_the_plain_fixed_alpha_lacks(tmp_path):
    """Clean: g right but unsure (2, 0, 0), h wrong and sure (0, 3, 0); h's worst case right by a wide margin
    (10, 0, 0). With scales 1 no alpha keeps the clean example and Lemma 3.2's bound together; with h's logits scaled
    down an alpha does, and the tempered family finds it. Its scales reach every command through the file."""
    from asmix.experiments.calibrate import choose_tempered

    cached = CachedLogits(
        torch.tensor([[2.0, 0, 0]] * 4).double(),
        torch.tensor([[0, 3.0, 0]] * 4).double(),
        torch.tensor([[10.0, 0, 0]] * 4).double(),
        torch.zeros(4, dtype=torch.long),
    )
    config = CalibrateConfig(target_clean_acc=1.0)
    plain, _ = choose_linear(cached, config)
    tempered, curve = choose_tempered(cached, config)
    assert plain.meets_target and plain.robust_estimate == 0.0
    assert tempered.meets_target and tempered.clean == 1.0 and tempered.robust_estimate == 1.0
    assert tempered.choice.rob_scale < 1.0 and curve["clean"]
    assert tempered.details["scale_pairs"] == 15
    path = _write(
        tmp_path / "c.json",
        {
            "format": "asmix-calibration",
            "version": 1,
            "models": {"std": "demo-std", "rob": "demo-rob"},
            "families": {"tempered": tempered.to_dict()},
        },
    )
    choice = load_calibration(path).choice("tempered")
    assert (
        choice.scales == (tempered.choice.std_scale, tempered.choice.rob_scale)
        and choice.alpha == tempered.choice.alpha
    )


def test_certify_refuses_a_mixer_head_that_scales_h(monkeypatch, capsys, tmp_path, mixer_calibration):
    scaled = _edited(mixer_calibration, tmp_path / "scaled.json", rob_scale=0.3)
    code, _, err = run_cli(
        monkeypatch, capsys, "certify", "--n-examples", "4", "--calibration", str(scaled), "--family", "mixer"
    )
    assert code == 2 and "scales h's logits by 0.3" in err and len(err.strip().splitlines()) == 1


# ---- the target without --target-clean-acc: chosen by gain, dataset-free ------------------------------------


def test_the_target_is_the_level_where_nuts_gains_most_over_the_tempered_fixed_alpha():
    from asmix.experiments.calibrate import choose_nuts, choose_target, choose_tempered, target_levels

    cached = synthetic(n=80)
    config = CalibrateConfig(grid_size=3, refine=False)
    levels = target_levels(cached)
    std = (cached.std_clean.argmax(1) == cached.y).sum().item()
    rob = (cached.rob_clean.argmax(1) == cached.y).sum().item()
    assert rob / 80 not in levels and std / 80 in levels and len(levels) == len(set(levels)) > 1
    assert all(min(std, rob) / 80 <= level <= max(std, rob) / 80 for level in levels)
    choice = choose_target(cached, config)
    assert choice.rule == "nuts-gain" and [level.target for level in choice.levels] == levels
    gains = {}
    for level in levels:  # every level again, from the family searches themselves
        at_level = CalibrateConfig(target_clean_acc=level, grid_size=3, refine=False)
        gains[level] = (
            choose_nuts(cached, at_level)[0].robust_estimate - choose_tempered(cached, at_level)[0].robust_estimate
        )
    best = max(gains.values())
    assert choice.target == max(level for level, gain in gains.items() if abs(gain - best) < 1e-12)
    assert f"{100 * best:+.2f} points" in choice.why and "no --target-clean-acc" in choice.why
    assert choice.target != 0.985


def test_calibrate_without_a_target_prints_its_rule_and_never_uses_the_demo_target(monkeypatch, capsys, tmp_path):
    x, y = load_data("demo", n_examples=30)
    np.savez(tmp_path / "own.npz", x=x.numpy(), y=y.numpy())  # "another dataset": no demo default may apply
    args = ["calibrate", "--data", str(tmp_path / "own.npz"), "--n-examples", "30", "--aa-steps", "1"]
    code, out, err = run_cli(
        monkeypatch,
        capsys,
        *args,
        "--target-classes",
        "0",
        "--grid-size",
        "2",
        "--no-refine",
        "--out",
        str(tmp_path / "o"),
    )
    assert code in (0, None), err
    data = json.loads((tmp_path / "o" / "calibration.json").read_text())
    choice = data["target_choice"]
    assert choice["rule"] == "nuts-gain" and data["config"]["target_clean_acc"] == choice["target"]
    assert choice["target"] in [level["target"] for level in choice["levels"]]
    assert choice["target"] * 30 == round(choice["target"] * 30)  # a count of the 30 examples
    assert "target: no --target-clean-acc" in err and "Target chosen by gain" in out
    for family in ("linear", "tempered"):  # chosen at that target
        assert data["families"][family]["clean"] >= choice["target"] - 1e-12


def test_with_a_mixer_and_no_target_the_fixed_families_meet_the_mixer_head(
    monkeypatch, capsys, tmp_path, demo_mixer_dir
):
    args = ["calibrate", "--n-examples", "8", "--aa-steps", "2", "--target-classes", "0", "--grid-size", "2"]
    args += ["--no-refine", "--range-min-alpha", "0.7", "--range-max-width", "0.1", "--mixer", str(demo_mixer_dir)]
    code, _, err = run_cli(monkeypatch, capsys, *args, "--out", str(tmp_path / "o"))
    assert code in (0, None), err
    data = json.loads((tmp_path / "o" / "calibration.json").read_text())
    mixer = data["families"]["mixer"]
    assert data["target_choice"]["rule"] == "mixer-gain" and data["target_choice"]["target"] == mixer["clean"]
    assert data["config"]["target_clean_acc"] == mixer["clean"]
    assert data["families"]["tempered"]["clean"] >= mixer["clean"] and "largest estimated gain" in err
