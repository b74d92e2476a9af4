"""calibrate: the exact search over alpha, the MixedNUTS grid against brute force, the calibration file
round trip through every command that reads one, and one-line errors for bad files."""

import json
import math
import sys

import numpy as np
import pytest
import torch

from asmix import AsmixError
from asmix.calibration import CachedLogits, MixChoice, SearchCache, family_curve, load_calibration
from asmix.cli import main
from asmix.experiments.calibrate import CalibrateConfig, choose_linear, choose_nuts, grid
from asmix.mixing import mix_logits
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


def run_cli(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["asmix", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


@pytest.fixture(scope="module")
def calibration_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cal")
    argv = sys.argv
    sys.argv = [
        "asmix",
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
    ]
    try:
        with pytest.raises(SystemExit) as exit_info:
            main()
    finally:
        sys.argv = argv
    assert exit_info.value.code in (0, None)
    return out


def test_calibrate_writes_json_and_plot(calibration_dir):
    data = json.loads((calibration_dir / "calibration.json").read_text())
    assert (calibration_dir / "calibration_tradeoff.png").stat().st_size > 1000
    assert set(data["families"]) == {"linear", "nuts"} and data["models"] == {"std": "demo-std", "rob": "demo-rob"}
    nuts = data["families"]["nuts"]
    assert nuts["rob_map"]["scale"] > 0 and nuts["std_temperature"] == 0.0
    assert data["verification"] == []
    assert data["config"]["n_examples"] == 40
    loaded = load_calibration(calibration_dir)
    assert loaded.choice("nuts") == MixChoice(nuts["alpha"], 0.0, NutsMap.from_dict(nuts["rob_map"]))


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
    assert [(row["family"], row["n"]) for row in rows] == [("linear", 1), ("nuts", 1)]
    assert all(
        0 <= row["autoattack"] <= row["clean"] <= 1
        and set(row["trail"]) == {"clean", "apgd-ce", "apgd-t", "fab-t", "square"}
        for row in rows
    )
    assert "Verification" in out


@pytest.mark.parametrize(
    "command, extra",
    [
        ("sweep-alpha", ["--alphas", "0.5", "--attacks", "rob", "--steps", "1"]),
        ("evaluate", ["--attack", "clean,pgd", "--steps", "1"]),
        ("margins", ["--attacks", "pgd", "--steps", "1", "--classifiers", "rob,mix"]),
        ("certify", ["--n-samples", "8"]),
    ],
)
@pytest.mark.parametrize("family", ["nuts", "linear"])
def test_calibration_round_trip_through_every_command(
    monkeypatch, capsys, tmp_path, calibration_dir, command, extra, family
):
    data = json.loads((calibration_dir / "calibration.json").read_text())
    chosen = data["families"][family]
    family_args = [] if command == "certify" else ["--family", family]
    if command == "certify" and family == "nuts":
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
    assert config["std_temperature"] == chosen["std_temperature"]
    assert config["rob_map"] == chosen["rob_map"]


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
    assert config["rob_map"] == {"scale": 2.0, "power": 3.0, "clamp_bias": -0.5, "ln_k": 250}
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
            "nuts scale must be > 0",
        ),
        (GOOD | {"families": {"nuts": {"alpha": 0.9, "rob_map": {"scale": 1}}}}, "nuts map lacks clamp_bias, power"),
        (GOOD | {"families": {"mixer": {"alpha": 0.9}}}, "unknown family 'mixer'"),
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
