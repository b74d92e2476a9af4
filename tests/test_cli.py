"""The CLI: bad input gives one line on stderr and a non-zero exit, never a traceback."""

import json
import sys

import numpy as np
import pytest

from asmix.cli import main
from conftest import booby_trapped_export


def run_cli(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["asmix", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def run_ok(monkeypatch, capsys, *args):
    code, out, err = run_cli(monkeypatch, capsys, *args)
    assert code == 0, err
    return out


@pytest.fixture
def wrong_classes_file(tmp_path):
    np.savez(tmp_path / "rgb.npz", x=np.zeros((4, 32, 32, 3), np.uint8), y=np.zeros(4, int))
    return tmp_path / "rgb.npz"


@pytest.mark.parametrize("args, message", [
    (["--std", "Nonexistent2099"], "unknown model 'Nonexistent2099'"),
    (["--alphas", "0,1.5"], "alpha must be in [0, 1], got 1.5"),
    (["--eps", "-0.1"], "eps must be >= 0"),
    (["--batch-size", "0"], "batch size must be positive"),
    (["--data", "/nonexistent/data.npz"], "data file not found"),
    (["--device", "cuda:99"], "is not available"),
    (["--std-weights", "/nonexistent/w.safetensors"], "weights file not found"),
    (["--attacks", "std,cw"], "unknown attack(s) cw"),
    (["--norm", "l1"], "norm must be one of linf, l2"),
    (["--dataset", "svhn"], "unknown dataset 'svhn'"),
])
def test_bad_input_is_one_line_and_nonzero(monkeypatch, capsys, args, message):
    code, out, err = run_cli(monkeypatch, capsys, "sweep-alpha", "--n-examples", "4", *args)
    assert code == 2
    assert err.strip().splitlines() == [f"asmix: error: {err.split('asmix: error: ', 1)[1].strip()}"]
    assert message in err and "Traceback" not in err + out


def test_input_shape_mismatch_is_caught_before_work(monkeypatch, capsys, wrong_classes_file):
    code, _, err = run_cli(monkeypatch, capsys, "sweep-alpha", "--data", str(wrong_classes_file))
    assert code == 2 and "does not accept inputs of shape (3, 32, 32)" in err


def test_unknown_option_is_a_usage_error(monkeypatch, capsys):
    code, out, err = run_cli(monkeypatch, capsys, "sweep-alpha", "--alpha-grid", "3")
    assert code == 2 and "No such option" in err and "Traceback" not in err


def test_sweep_writes_json_csv_and_plots(monkeypatch, capsys, tmp_path):
    out = run_ok(monkeypatch, capsys, "sweep-alpha", "--n-examples", "20", "--alphas", "0,0.5,1",
                      "--steps", "3", "--device", "cpu", "--out", str(tmp_path / "out"),
                      "--json", str(tmp_path / "r.json"))
    assert "Fixed-alpha sweep" in out
    data = json.loads((tmp_path / "r.json").read_text())
    assert [row["alpha"] for row in data["rows"]] == [0.0, 0.5, 1.0]
    assert data["config"]["models"] == {"std": "demo-std", "rob": "demo-rob"} and data["config"]["eps"] == 0.3
    for name in ("sweep.json", "sweep.csv", "sweep_accuracy.png", "sweep_tradeoff.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    assert (tmp_path / "out" / "sweep.csv").read_text().splitlines()[0] == "alpha,clean,std_attack,rob_attack,mix_attack"
    assert not list((tmp_path / "out").glob(".*.tmp"))


@pytest.mark.parametrize("command", ["sweep-alpha", "evaluate", "margins", "certify"])
def test_file_model_needs_trust_code_before_anything_is_opened(monkeypatch, capsys, tmp_path, command):
    monkeypatch.delenv("ASMIX_TRUST_CODE", raising=False)
    marker = tmp_path / "pwned"
    archive = booby_trapped_export(tmp_path, marker)
    code, out, err = run_cli(monkeypatch, capsys, command, "--std", f"file:{archive}", "--data", "/nonexistent.npz")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err + out
    assert f"refusing file:{archive}" in err and "--trust-code" in err
    assert not marker.exists()
    code, _, err = run_cli(monkeypatch, capsys, command, "--std", f"file:{archive}", "--trust-code")
    assert code == 2 and "cannot load model file" in err and marker.exists()


def test_trust_code_from_the_environment(monkeypatch, capsys, tmp_path):
    marker = tmp_path / "pwned"
    archive = booby_trapped_export(tmp_path, marker)
    monkeypatch.setenv("ASMIX_TRUST_CODE", "1")
    code, _, err = run_cli(monkeypatch, capsys, "sweep-alpha", "--rob", f"file:{archive}")
    assert code == 2 and "cannot load model file" in err and marker.exists()


COMMANDS = ["sweep-alpha", "evaluate", "margins", "certify"]


def one_line_error(code, out, err):
    assert code == 2 and "Traceback" not in err + out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("asmix: error: ")
    return lines[0]


@pytest.mark.parametrize("command", COMMANDS)
def test_labels_outside_the_classes_stop_every_command(monkeypatch, capsys, tmp_path, command):
    np.savez(tmp_path / "labels.npz", x=np.zeros((4, 28, 28), np.uint8), y=np.array([3, 10, 2, -1]))
    line = one_line_error(*run_cli(monkeypatch, capsys, command, "--data", str(tmp_path / "labels.npz")))
    assert "label 10 at index 1 is outside [0, 10) (2 such labels" in line


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("n, message", [("0", "n-examples must be positive, got 0"),
                                        ("2001", "n-examples 2001 is more than the 2000 examples in the demo test split")])
def test_n_examples_has_one_meaning_everywhere(monkeypatch, capsys, command, n, message):
    line = one_line_error(*run_cli(monkeypatch, capsys, command, "--n-examples", n))
    assert message in line
