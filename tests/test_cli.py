"""The CLI: bad input gives one line on stderr and a non-zero exit, never a traceback."""

import errno
import json
import sys

import numpy as np
import pytest
from conftest import booby_trapped_export, run_cli

from asmix.cli import main


def run_ok(monkeypatch, capsys, *args):
    code, out, err = run_cli(monkeypatch, capsys, *args)
    assert code == 0, err
    return out


@pytest.fixture
def wrong_classes_file(tmp_path):
    np.savez(tmp_path / "rgb.npz", x=np.zeros((4, 32, 32, 3), np.uint8), y=np.zeros(4, int))
    return tmp_path / "rgb.npz"


@pytest.mark.parametrize(
    "args, message",
    [
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
        (["--eps", "nan"], "eps must be a finite number, got nan"),
        (["--step-size", "inf"], "step size must be a finite number, got inf"),
        (["--eps", "8/0"], "--eps must be a number or a fraction like 8/255, got '8/0'"),
        (["--norm", "l2"], "demo has no standard l2 radius"),
        (["--norm", "L1", "--eps", "0.1"], "norm must be one of linf, l2, got 'l1'"),
        (["--rob-scale", "nan"], "rob scale must be a finite number"),
    ],
)
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
    out = run_ok(
        monkeypatch,
        capsys,
        "sweep-alpha",
        "--n-examples",
        "20",
        "--alphas",
        "0,0.5,1",
        "--steps",
        "3",
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "out"),
        "--json",
        str(tmp_path / "r.json"),
        "--report",
        str(tmp_path / "report.md"),
    )
    assert "Fixed-alpha sweep" in out
    report = (tmp_path / "report.md").read_text()
    # the printed table, whole, and links to both plots relative to the report
    assert "Fixed-alpha sweep" in report
    table_lines = [line for line in out.splitlines() if "│" in line]
    assert table_lines and all(line.rstrip() in report for line in table_lines)
    assert (
        "![sweep_accuracy](out/sweep_accuracy.png)" in report and "![sweep_tradeoff](out/sweep_tradeoff.png)" in report
    )
    data = json.loads((tmp_path / "r.json").read_text())
    assert [row["alpha"] for row in data["rows"]] == [0.0, 0.5, 1.0]
    assert data["config"]["models"] == {"std": "demo-std", "rob": "demo-rob"} and data["config"]["threat"]["eps"] == 0.3
    for name in ("sweep.json", "sweep.csv", "sweep_accuracy.png", "sweep_tradeoff.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    assert (tmp_path / "out" / "sweep.csv").read_text().splitlines()[
        0
    ] == "alpha,clean,std_attack,rob_attack,mix_attack"
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
@pytest.mark.parametrize(
    "n, message",
    [
        ("0", "n-examples must be positive, got 0"),
        ("2001", "n-examples 2001 is more than the 2000 examples in the demo test split"),
    ],
)
def test_n_examples_has_one_meaning_everywhere(monkeypatch, capsys, command, n, message):
    line = one_line_error(*run_cli(monkeypatch, capsys, command, "--n-examples", n))
    assert message in line


def test_robustbench_spellings_and_fractions_are_accepted(monkeypatch, capsys, tmp_path):
    args = ["sweep-alpha", "--n-examples", "4", "--alphas", "0,1", "--steps", "1", "--device", "cpu"]
    run_ok(
        monkeypatch,
        capsys,
        *args,
        "--norm",
        "Linf",
        "--eps",
        "8/255",
        "--step-size",
        "2/255",
        "--json",
        str(tmp_path / "linf.json"),
    )
    config = json.loads((tmp_path / "linf.json").read_text())["config"]
    assert config["threat"] == {"norm": "linf", "eps": 8 / 255, "steps": 1, "step_size": 2 / 255}
    run_ok(monkeypatch, capsys, *args, "--norm", "L2", "--eps", "3/2", "--json", str(tmp_path / "l2.json"))
    config = json.loads((tmp_path / "l2.json").read_text())["config"]
    assert (config["threat"]["norm"], config["threat"]["eps"]) == ("l2", 1.5)


@pytest.fixture
def no_work(monkeypatch):
    """Fails the test if a command gets as far as loading models and data."""
    import asmix.experiments.inputs

    monkeypatch.setattr(asmix.experiments.inputs, "load_pair", lambda *args, **kwargs: pytest.fail("work started"))


@pytest.mark.parametrize("command", COMMANDS)
def test_unwritable_outputs_stop_before_any_work(monkeypatch, capsys, tmp_path, no_work, command):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    line = one_line_error(*run_cli(monkeypatch, capsys, command, "--json", str(tmp_path / "adir")))
    assert f"cannot write {tmp_path / 'adir'}: it is a folder" in line
    line = one_line_error(*run_cli(monkeypatch, capsys, command, "--json", str(tmp_path / "afile" / "r.json")))
    assert f"{tmp_path / 'afile'} is a file, not a folder" in line
    out = tmp_path / "afile" / "out"  # --out is a folder in every command
    line = one_line_error(*run_cli(monkeypatch, capsys, command, "--out", str(out)))
    assert f"cannot write {out}: {tmp_path / 'afile'} is a file, not a folder" in line
    line = one_line_error(*run_cli(monkeypatch, capsys, command, "--out", str(tmp_path / "afile")))
    assert f"cannot write to {tmp_path / 'afile'}: it is a file, a folder is needed" in line


def last_line_error(code, out, err):
    """After the work, stderr also holds the progress display: the error is its one last line (a failed run)."""
    assert code == 1 and "Traceback" not in err + out and err.count("asmix: error: ") == 1
    return err.strip().splitlines()[-1]


def test_a_write_that_fails_after_the_work_is_one_line(monkeypatch, capsys, tmp_path):
    import asmix.experiments.sweep
    import asmix.report.sweep

    run = asmix.experiments.sweep.sweep_alpha

    def run_then_block_the_folder(*args, **kwargs):
        result = run(*args, **kwargs)
        (tmp_path / "later").write_text("a file where the --json folder was to be created")
        return result

    monkeypatch.setattr(asmix.experiments.sweep, "sweep_alpha", run_then_block_the_folder)
    args = ["sweep-alpha", "--n-examples", "4", "--alphas", "0,1", "--steps", "1", "--device", "cpu"]
    line = last_line_error(*run_cli(monkeypatch, capsys, *args, "--json", str(tmp_path / "later" / "r.json")))
    assert line.startswith(f"asmix: error: cannot write {tmp_path / 'later' / 'r.json'}: ")

    def disk_full(result, out):
        raise OSError(errno.ENOSPC, "No space left on device", str(out / "sweep.csv"))

    monkeypatch.setattr(asmix.report.sweep, "write_sweep_outputs", disk_full)
    line = last_line_error(*run_cli(monkeypatch, capsys, *args, "--out", str(tmp_path / "out")))
    assert line == f"asmix: error: cannot write {tmp_path / 'out' / 'sweep.csv'}: No space left on device"


def _help_of(command: str) -> str:
    from typer.testing import CliRunner

    from asmix.cli import app

    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "3000", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    return " ".join(result.output.replace("│", " ").split())


@pytest.mark.parametrize("command", ["sweep-alpha", "train-mixer", "evaluate", "margins", "certify", "calibrate"])
def test_help_reads_right(command):
    import typer.main

    from asmix.cli import app

    click_command = typer.main.get_command(app).commands[command]
    shown = _help_of(command)
    choices = {
        "--norm": "linf|l2",
        "--dataset": "demo|mnist|cifar10|cifar100|imagenet",
        "--device": "auto|cpu|cuda",
        "--setting": "C|B|A",
        "--mix-space": "prob|logit",
    }
    for parameter in click_command.params:
        if parameter.help:  # the whole help text, brackets, asterisks and all, survives the markup
            assert " ".join(parameter.help.split()) in shown, parameter.help
        if getattr(parameter, "is_flag", False) and parameter.secondary_opts == [] and parameter.name != "help":
            raise AssertionError(f"{parameter.opts[0]} has no --no- form")
        for option in parameter.opts:
            if option in choices:
                assert choices[option] in shown, option
    assert 2 <= shown.split("Examples:")[1].count(f"asmix {command} ") <= 3  # two or three examples
    options = {option for parameter in click_command.params for option in parameter.opts + parameter.secondary_opts}
    for token in shown.split("Examples:")[1].split():
        if token.startswith("--") and not token.startswith("--nproc"):
            assert token in options, f"example uses unknown option {token}"


def test_config_file_replays_a_result_and_options_override_it(monkeypatch, capsys, tmp_path):
    import json

    def sweep(*args):
        monkeypatch.setattr(sys, "argv", ["asmix", "sweep-alpha", *args])
        try:
            main()
        except SystemExit as done:
            assert done.code in (0, None), capsys.readouterr().err
        capsys.readouterr()

    sweep(
        "--alphas",
        "0,0.7",
        "--steps",
        "3",
        "--n-examples",
        "12",
        "--batch-size",
        "6",
        "--eps",
        "0.2",
        "--attacks",
        "std,mix",
        "--device",
        "cpu",
        "--json",
        str(tmp_path / "first.json"),
    )
    first = json.loads((tmp_path / "first.json").read_text())
    sweep("--config", str(tmp_path / "first.json"), "--json", str(tmp_path / "replay.json"))
    replay = json.loads((tmp_path / "replay.json").read_text())
    assert replay["config"] == first["config"] and replay["rows"] == first["rows"] and replay["base"] == first["base"]
    # a YAML of the same keys, with one option overridden on the command line
    (tmp_path / "settings.yaml").write_text(
        "alphas: [0.0, 0.7]\nsteps: 3\nn_examples: 12\nbatch_size: 6\neps: 0.2\nattacks: [std, mix]\n"
    )
    sweep(
        "--config",
        str(tmp_path / "settings.yaml"),
        "--steps",
        "1",
        "--device",
        "cpu",
        "--json",
        str(tmp_path / "yaml.json"),
    )
    from_yaml = json.loads((tmp_path / "yaml.json").read_text())["config"]
    assert from_yaml["threat"]["steps"] == 1 and from_yaml["threat"]["eps"] == 0.2 and from_yaml["alphas"] == [0.0, 0.7]
    assert from_yaml["n_examples"] == 12 and from_yaml["attacks"] == ["std", "mix"]
    assert from_yaml["run"] == {"batch_size": 6, "seed": 0}
    # the flat config block of an earlier asmix's output replays the same run
    flat = dict(first["config"])
    for block in ("threat", "mix", "run"):
        flat |= flat.pop(block)
    (tmp_path / "old.json").write_text(json.dumps({"config": flat, "rows": first["rows"]}))
    sweep("--config", str(tmp_path / "old.json"), "--json", str(tmp_path / "old-replay.json"))
    old_replay = json.loads((tmp_path / "old-replay.json").read_text())
    assert old_replay["config"] == first["config"] and old_replay["rows"] == first["rows"]


def test_config_blocks_spread_into_each_commands_options():
    from asmix.cli.config_file import config_defaults

    block = {"threat": {"norm": "linf", "eps": 0.1, "steps": 7, "step_size": 0.05}, "run": {"batch_size": 8, "seed": 3}}
    sweep = {"norm", "eps", "steps", "step_size", "batch_size", "seed"}
    assert config_defaults(block, sweep, "sweep-alpha") == {
        "norm": "linf",
        "eps": 0.1,
        "steps": 7,
        "step_size": 0.05,
        "batch_size": 8,
        "seed": 3,
    }
    train = {"norm", "eps_max", "val_steps", "batch_size", "seed"}
    assert config_defaults(block, train, "train-mixer") == {
        "norm": "linf",
        "eps_max": 0.1,
        "val_steps": 7,
        "batch_size": 8,
        "seed": 3,
    }
    assert config_defaults(block, {"eps", "aa_steps"}, "calibrate") == {"eps": 0.1, "aa_steps": 7}
    # an earlier asmix's flat block reads the same
    flat = {"norm": "linf", "eps_max": 0.1, "val_steps": 7, "batch_size": 8, "seed": 3}
    assert config_defaults(flat, train, "train-mixer") == config_defaults(block, train, "train-mixer")


def test_a_bad_config_file_is_one_line(monkeypatch, capsys, tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "list.json").write_text("[1, 2]")
    for path, message in (
        (tmp_path / "bad.json", "cannot read config"),
        (tmp_path / "list.json", "holds no mapping"),
        (tmp_path / "missing.json", "cannot read config"),
    ):
        monkeypatch.setattr(sys, "argv", ["asmix", "margins", "--config", str(path)])
        with pytest.raises(SystemExit) as exit_info:
            main()
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_html_report_and_bad_report_names(monkeypatch, capsys, tmp_path):
    run_ok(
        monkeypatch,
        capsys,
        "margins",
        "--n-examples",
        "4",
        "--steps",
        "1",
        "--aa-steps",
        "1",
        "--device",
        "cpu",
        "--report",
        str(tmp_path / "margins.html"),
    )
    page = (tmp_path / "margins.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<h1>asmix margins" in page and "clean" in page
    monkeypatch.setattr(sys, "argv", ["asmix", "margins", "--report", str(tmp_path / "report.txt")])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "must end in .md or .html" in err and len(err.strip().splitlines()) == 1


def test_a_robustbench_name_in_a_fresh_process_is_one_line():
    # nothing imported RobustBench before: the AutoAttack alias must be in place when the zoo is first read
    import subprocess

    done = subprocess.run(
        [sys.executable, "-m", "asmix", "sweep-alpha", "--rob", "Nonexistent2099"], capture_output=True, text=True
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr and "Nonexistent2099" in done.stderr


SWEEP = ["sweep-alpha", "--n-examples", "4", "--alphas", "0,1", "--steps", "1", "--device", "cpu"]


def failing_sweep(monkeypatch, error: BaseException) -> None:
    import asmix.experiments.sweep

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(asmix.experiments.sweep, "sweep_alpha", fail)


def only_line(code, out, err):
    assert "Traceback" not in err + out and len(err.strip().splitlines()) == 1, err
    return code, err.strip()


def test_a_bad_option_value_exits_2(monkeypatch, capsys):
    code, out, err = run_cli(monkeypatch, capsys, "sweep-alpha", "--batch-size", "many")
    assert code == 2 and "Invalid value" in err and "Traceback" not in err + out


def test_out_of_memory_exits_1_with_the_batch_size_hint(monkeypatch, capsys):
    import torch

    failing_sweep(monkeypatch, torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"))
    code, line = only_line(*run_cli(monkeypatch, capsys, *SWEEP))
    assert (code, line) == (1, "asmix: error: out of memory on the GPU: rerun with a smaller --batch-size")
    failing_sweep(
        monkeypatch,
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 GB"
        ),
    )
    code, line = only_line(*run_cli(monkeypatch, capsys, *SWEEP))
    assert (code, line) == (1, "asmix: error: out of memory in main memory: rerun with a smaller --batch-size")


def test_ctrl_c_exits_130(monkeypatch, capsys):
    failing_sweep(monkeypatch, KeyboardInterrupt())
    assert only_line(*run_cli(monkeypatch, capsys, *SWEEP)) == (130, "asmix: interrupted")


def test_a_crash_and_a_full_disk_mid_run_exit_1(monkeypatch, capsys, tmp_path):
    failing_sweep(monkeypatch, ValueError("attack exploded\nsecond line"))
    code, line = only_line(*run_cli(monkeypatch, capsys, *SWEEP))
    assert code == 1 and line.startswith("asmix: error: unexpected ValueError: attack exploded; rerun with --debug")
    failing_sweep(monkeypatch, OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x.parts")))
    code, line = only_line(*run_cli(monkeypatch, capsys, *SWEEP))
    assert (code, line) == (1, f"asmix: error: No space left on device: {tmp_path / 'x.parts'}")


def test_a_download_failure_exits_1(monkeypatch, capsys, tmp_path):
    import urllib.error

    import torchvision.datasets

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    args = ["--dataset", "mnist", "--data-dir", str(tmp_path)]
    code, line = only_line(*run_cli(monkeypatch, capsys, *SWEEP, *args))
    assert code == 1 and line == (
        f"asmix: error: MNIST not found in {tmp_path / 'MNIST'} and the download failed; put the raw files there"
    )


COMMANDS = ["sweep-alpha", "calibrate", "train-mixer", "evaluate", "margins", "certify"]


def test_help_lists_commands_in_workflow_order_with_one_line_each():
    from typer.testing import CliRunner

    from asmix.cli import app

    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "3000", "NO_COLOR": "1"})
    listed = [line.split()[1] for line in result.output.splitlines() if line.startswith("│ ") and len(line.split()) > 2]
    assert [name for name in listed if name in COMMANDS] == COMMANDS
    for line in result.output.splitlines():
        if line.split()[1:2] and line.split()[1] in COMMANDS:
            assert "(A)" not in line and "(B)" not in line and "(C)" not in line and "(D)" not in line


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_sits_in_a_named_panel_and_flags_show_no_type(command):
    import typer.main

    from asmix.cli import app

    click_command = typer.main.get_command(app).commands[command]
    unpanelled = [parameter.opts[0] for parameter in click_command.params if not parameter.rich_help_panel]
    assert unpanelled == []
    shown = _help_of(command)
    assert "<bool>" not in shown and "Options ─" not in shown  # no catch-all panel: --help sits under Run
    for parameter in click_command.params:
        if getattr(parameter, "is_bool_flag", False):
            assert f"{parameter.opts[0]} {parameter.secondary_opts[0]} " in shown  # --x --no-x, then the help


def test_root_help_shows_flags_without_a_type():
    from typer.testing import CliRunner

    from asmix.cli import app

    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "3000", "NO_COLOR": "1"})
    assert result.exit_code == 0 and "--debug" in result.output and "<bool>" not in result.output


def test_margins_reads_autoattack_as_aa_and_hides_it(monkeypatch, capsys, tmp_path):
    def margins_config(attack: str) -> dict:
        path = tmp_path / f"{attack}.json"
        run_ok(
            monkeypatch,
            capsys,
            *("margins", "--attacks", attack, "--classifiers", "rob", "--n-examples", "4", "--aa-steps", "1"),
            *("--target-classes", "0", "--device", "cpu", "--json", str(path)),
        )
        return json.loads(path.read_text())

    old, new = margins_config("autoattack"), margins_config("aa")
    assert old["config"]["attacks"] == new["config"]["attacks"] == ["aa"]
    assert old["table"] == new["table"] and "autoattack" in json.dumps(new["table"])  # the inputs keep their name
    shown = _help_of("margins")
    assert "pgd, aa " in shown and "autoattack" not in shown  # case-sensitive: "AutoAttack" is prose
    code, _, err = run_cli(monkeypatch, capsys, "margins", "--attacks", "cw", "--n-examples", "4")
    assert code == 2 and "choose from pgd, aa" in err and "autoattack" not in err
