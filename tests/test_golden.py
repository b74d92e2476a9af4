"""Before/after: small sweep-alpha, evaluate and train-mixer runs on the demo pair give the numbers stored in
tests/golden/ (recorded before the configs were refactored), so a refactor that changes a number fails here.
``ASMIX_UPDATE_GOLDEN=1`` rewrites the files (only for a change meant to move the numbers)."""

import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from asmix.cli import main
from asmix.data import demo_data_file

GOLDEN = Path(__file__).parent / "golden"
NOT_NUMBERS = {"config", "provenance", "out_dir", "seconds"}
"""Settings, provenance, paths and timings: not results."""


def run_json(monkeypatch, capsys, tmp_path: Path, name: str, *args: str) -> dict:
    path = tmp_path / f"{name}.json"
    monkeypatch.setattr(sys, "argv", ["asmix", *args, "--device", "cpu", "--json", str(path)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 0, capsys.readouterr().err
    return numbers(json.loads(path.read_text()))


def numbers(value):
    """``value`` without the keys in ``NOT_NUMBERS``, at any depth."""
    if isinstance(value, dict):
        return {key: numbers(item) for key, item in value.items() if key not in NOT_NUMBERS}
    if isinstance(value, list):
        return [numbers(item) for item in value]
    return value


def assert_same(actual, expected, where: str = "") -> None:
    """Same keys and values; floats to 1e-6 (summation order may differ by a rounding)."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and sorted(actual) == sorted(expected), f"{where}: keys differ"
        for key in expected:
            assert_same(actual[key], expected[key], f"{where}/{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), f"{where}: lengths differ"
        for index, (left, right) in enumerate(zip(actual, expected)):
            assert_same(left, right, f"{where}[{index}]")
    elif isinstance(expected, float) and not isinstance(actual, bool):
        assert isinstance(actual, (int, float)), f"{where}: {actual!r} is not a number"
        assert math.isclose(actual, expected, rel_tol=0, abs_tol=1e-6), f"{where}: {actual} != {expected}"
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"


def check_golden(name: str, actual: dict) -> None:
    path = GOLDEN / f"{name}.json"
    if os.environ.get("ASMIX_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(actual, indent=1, sort_keys=True) + "\n")
    assert_same(actual, json.loads(path.read_text()), name)


@pytest.mark.slow
def test_small_runs_keep_their_numbers(monkeypatch, capsys, tmp_path):
    sweep = run_json(
        monkeypatch,
        capsys,
        tmp_path,
        "sweep",
        "sweep-alpha",
        "--n-examples",
        "24",
        "--alphas",
        "0,0.5,0.8,1",
        "--steps",
        "3",
        "--batch-size",
        "16",
    )
    check_golden("sweep", sweep)

    evaluate = run_json(
        monkeypatch,
        capsys,
        tmp_path,
        "evaluate",
        "evaluate",
        "--n-examples",
        "24",
        "--alpha",
        "0.7",
        "--attack",
        "clean,pgd,pgd-graybox,transfer-std,transfer-rob",
        "--bases",
        "--steps",
        "3",
        "--batch-size",
        "16",
        "--std-scale",
        "1.5",
    )
    check_golden("evaluate", evaluate)

    # the demo pair on demo images given as a data file: mnist's run sizes, so no head choice (minutes of
    # AutoAttack-lite on a CPU); train first, held out last
    with np.load(demo_data_file()) as demo:
        np.savez(tmp_path / "demo.npz", x=demo["x_train"][:40], y=demo["y_train"][:40])
    mixer = tmp_path / "mixer"
    train = run_json(
        monkeypatch,
        capsys,
        tmp_path,
        "train",
        "train-mixer",
        "--dataset",
        "mnist",
        "--data",
        str(tmp_path / "demo.npz"),
        "--n-train",
        "24",
        "--n-val",
        "8",
        "--epochs",
        "1",
        "--batch-size",
        "12",
        "--target-classes",
        "1",
        "--apgd-steps-df",
        "2",
        "--val-steps",
        "2",
        "--no-verdict",
        "--out",
        str(mixer),
    )
    check_golden("train", train)

    adaptive = run_json(
        monkeypatch,
        capsys,
        tmp_path,
        "evaluate-mixer",
        "evaluate",
        "--mixer",
        str(mixer),
        "--n-examples",
        "16",
        "--attack",
        "clean,pgd,pgd-graybox,transfer-rob",
        "--steps",
        "3",
        "--batch-size",
        "16",
    )
    check_golden("evaluate-mixer", adaptive)


@pytest.mark.slow
def test_margins_and_certify_keep_their_numbers(monkeypatch, capsys, tmp_path):
    margins = run_json(
        monkeypatch,
        capsys,
        tmp_path,
        "margins",
        "margins",
        "--n-examples",
        "16",
        "--steps",
        "3",
        "--aa-steps",
        "3",
        "--target-classes",
        "1",
        "--lipschitz",
        "--batch-size",
        "8",
    )
    check_golden("margins", margins)

    certify = run_json(
        monkeypatch,
        capsys,
        tmp_path,
        "certify",
        "certify",
        "--n-examples",
        "12",
        "--n-samples",
        "24",
        "--match-clean-acc",
        "--batch-size",
        "48",
        "--radii",
        "0,0.1,0.25",
    )
    check_golden("certify", certify)

    lipschitz = run_json(
        monkeypatch,
        capsys,
        tmp_path,
        "certify-lipschitz",
        "certify",
        "--n-examples",
        "12",
        "--lipschitz-const",
        "2",
        "--alpha",
        "0.7",
        "--std-hardmax",
        "--radii",
        "0,0.05",
    )
    check_golden("certify-lipschitz", lipschitz)
