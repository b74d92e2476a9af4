"""Before/after: small sweep-alpha, evaluate, train-mixer, margins and certify runs on the demo pair give the numbers
stored in tests/golden/, so a change that moves a number fails here. ``ASMIX_UPDATE_GOLDEN=1`` rewrites the files
and ``recorded_with.json`` (only for a change meant to move the numbers).

Counts, labels, settings echoed back and accuracies (count / n) compare exactly. Every other float is named beside
its file's comparison with a ``Tolerance`` that says why it may move between machines; a float no rule names
compares exactly, so a new result field is exact until someone states its precision."""

import fnmatch
import json
import math
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import scipy
import torch

from asmix.cli import main
from asmix.data import demo_data_file

GOLDEN = Path(__file__).parent / "golden"
RECORDED_WITH = GOLDEN / "recorded_with.json"
NOT_NUMBERS = {"config", "provenance", "out_dir", "seconds"}
"""Settings, provenance, paths and timings: not results."""


@dataclass(frozen=True)
class Tolerance:
    """How far a recomputed float may be from its golden value (``math.isclose``), and why it may move at all."""

    why: str
    rel: float = 0.0
    abs: float = 0.0

    def allows(self, actual: float, expected: float) -> bool:
        return math.isclose(actual, expected, rel_tol=self.rel, abs_tol=self.abs)

    def __str__(self) -> str:
        return f"rel {self.rel:g}, abs {self.abs:g}: {self.why}"


# Measured spread, golden runs under ATEN_CPU_CAPABILITY=default/avx2/avx512 with one thread (torch 2.14.1):
# forward passes <= 4e-7 relative, Lipschitz estimates <= 6e-5, attacked gaps <= 2e-4 absolute, the detector
# profile's mean alpha at attack points <= 7e-6 absolute (default kernels, two threads). Each tolerance is
# about ten times its spread and far below what one more attack step or a moved alpha does (test below).
FORWARD = Tolerance("a float32 forward pass: the CPU's kernels choose the summation order", rel=1e-5)
TRAINED = Tolerance("float32 training steps: rounding from the kernels carries through the updates", rel=1e-4)
RADIUS = Tolerance("a radius from float32 probabilities (and a Lipschitz bound): forward-pass rounding", rel=1e-4)
ATTACKED_GAP = Tolerance(
    "a probability gap at an attack's end point: the attack follows gradient signs, so rounding moves its iterates",
    abs=2e-3,
)
ATTACKED_ALPHA = Tolerance(
    "a mean alpha at attacks' end points (the detector profile): rounding moves the iterates of sign-following attacks",
    abs=1e-4,
)
OPTIMISED = Tolerance(
    "a local Lipschitz estimate: float32 gradient ascent whose 5th digit depends on the kernels", rel=1e-3
)

TOLERANCES = {
    "sweep": {},  # accuracies and the alphas asked for: exact
    "evaluate": {"rows/*/*/mean_alpha": FORWARD},
    "evaluate-mixer": {"rows/*/*/mean_alpha": FORWARD, "detector_profile/mean_alpha": ATTACKED_ALPHA},
    "train": {"history/alpha_*": FORWARD, "history/train_*": TRAINED},
    "margins": {
        "examples/rob_gaps/clean": FORWARD,
        "table/*/clean/*_gap_*": FORWARD,
        "examples/rob_gaps/*": ATTACKED_GAP,
        "table/*/*/*_gap_*": ATTACKED_GAP,
        "examples/rob_lipschitz": OPTIMISED,
        "lipschitz/*": OPTIMISED,
    },
    "certify": {"models/curves/radii": RADIUS},
    "certify-lipschitz": {"models/curves/radii": RADIUS},
}
"""Per golden file: key path (list indices dropped, fnmatch patterns, first match wins) -> tolerance."""


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


def differences(actual, expected, tolerances: dict[str, Tolerance], key: str = "", where: str = "") -> list[str]:
    """Every place where ``actual`` leaves ``expected``: ``key`` is the path matched against ``tolerances``,
    ``where`` the same path with list indices, for the message."""
    if isinstance(expected, dict):
        if not isinstance(actual, dict) or sorted(actual) != sorted(expected):
            return [f"{where}: keys differ"]
        return [
            found
            for name in expected
            for found in differences(actual[name], expected[name], tolerances, f"{key}/{name}", f"{where}/{name}")
        ]
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) != len(expected):
            return [f"{where}: lengths differ"]
        return [
            found
            for index, (left, right) in enumerate(zip(actual, expected))
            for found in differences(left, right, tolerances, key, f"{where}[{index}]")
        ]
    if isinstance(expected, float) and not isinstance(actual, bool):
        if not isinstance(actual, (int, float)):
            return [f"{where}: {actual!r} is not a number"]
        rule = next((tol for pattern, tol in tolerances.items() if fnmatch.fnmatchcase(key.lstrip("/"), pattern)), None)
        if rule is None:
            return [] if actual == expected else [f"{where}: {actual!r} != {expected!r} (exact)"]
        return [] if rule.allows(actual, expected) else [f"{where}: {actual!r} != {expected!r} ({rule})"]
    return [] if actual == expected else [f"{where}: {actual!r} != {expected!r}"]


def this_machine() -> dict:
    """What decides the last digits: library versions and the CPU kernels torch picked."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
    }


def check_golden(name: str, actual: dict) -> None:
    path = GOLDEN / f"{name}.json"
    if os.environ.get("ASMIX_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(actual, indent=1, sort_keys=True) + "\n")
        RECORDED_WITH.write_text(json.dumps(this_machine(), indent=1, sort_keys=True) + "\n")
    found = differences(actual, json.loads(path.read_text()), TOLERANCES[name], where=name)
    assert not found, (
        f"{len(found)} golden numbers moved:\n"
        + "\n".join(found[:12])
        + f"\nrecorded with {RECORDED_WITH.read_text()}this run: {this_machine()}"
    )


EVALUATE_RUN = (
    *(
        "evaluate",
        "--n-examples",
        "24",
        "--alpha",
        "0.7",
        "--attack",
        "clean,pgd,pgd-graybox,transfer-std,transfer-rob",
    ),
    *("--bases", "--steps", "3", "--batch-size", "16", "--std-scale", "1.5"),
)


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

    evaluate = run_json(monkeypatch, capsys, tmp_path, "evaluate", *EVALUATE_RUN)
    check_golden("evaluate", evaluate)

    # the demo pair on demo images given as a data file: mnist's run sizes, no head choice (minutes of
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
        "--no-head-choice",
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


MARGINS_RUN = (
    *("margins", "--n-examples", "16", "--steps", "3", "--aa-steps", "3", "--target-classes", "1"),
    *("--lipschitz", "--batch-size", "8"),
)
CERTIFY_RUN = ("certify", "--n-examples", "12", "--n-samples", "24", "--match-clean-acc", "--batch-size", "48")
CERTIFY_LIPSCHITZ_RUN = (
    *("certify", "--n-examples", "12", "--lipschitz-const", "2", "--alpha", "0.7", "--std-hardmax"),
    *("--radii", "0,0.05"),
)


def with_option(run: tuple[str, ...], option: str, value: str) -> tuple[str, ...]:
    """``run`` with ``option``'s value replaced."""
    index = run.index(option) + 1
    return (*run[:index], value, *run[index + 1 :])


@pytest.mark.slow
def test_margins_and_certify_keep_their_numbers(monkeypatch, capsys, tmp_path):
    check_golden("margins", run_json(monkeypatch, capsys, tmp_path, "margins", *MARGINS_RUN))
    certify = run_json(monkeypatch, capsys, tmp_path, "certify", *CERTIFY_RUN, "--radii", "0,0.1,0.25")
    check_golden("certify", certify)
    check_golden("certify-lipschitz", run_json(monkeypatch, capsys, tmp_path, "lipschitz", *CERTIFY_LIPSCHITZ_RUN))


@pytest.mark.slow
def test_the_tolerances_still_catch_one_more_attack_step_and_a_moved_alpha(monkeypatch, capsys, tmp_path):
    """Each tolerance-covered quantity still fails its golden check when a setting that matters moves a little."""
    four_steps = run_json(monkeypatch, capsys, tmp_path, "steps", *with_option(MARGINS_RUN, "--steps", "4"))
    moved = differences(four_steps, json.loads((GOLDEN / "margins.json").read_text()), TOLERANCES["margins"])
    assert any("/rob_gaps/pgd[" in found and "probability gap at an attack" in found for found in moved), moved
    assert any("/rob_lipschitz[" in found and "local Lipschitz estimate" in found for found in moved), moved

    alpha = with_option(CERTIFY_LIPSCHITZ_RUN, "--alpha", "0.69")
    moved_alpha = run_json(monkeypatch, capsys, tmp_path, "alpha", *alpha)
    expected = json.loads((GOLDEN / "certify-lipschitz.json").read_text())
    moved = differences(moved_alpha, expected, TOLERANCES["certify-lipschitz"])
    assert any("/radii[" in found and "radius from float32" in found for found in moved), moved

    evaluate = run_json(monkeypatch, capsys, tmp_path, "evaluate", *with_option(EVALUATE_RUN, "--alpha", "0.69"))
    moved = differences(evaluate, json.loads((GOLDEN / "evaluate.json").read_text()), TOLERANCES["evaluate"])
    assert any("mixed/pgd/mean_alpha" in found and "forward pass" in found for found in moved), moved
