"""Provenance in every JSON, ``asmix --version``, and progress lines in batch logs."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata

import torch

from asmix.cli.progress import PlainProgress
from asmix.io import atomic_write_json
from asmix.provenance import git_commit, provenance, version_line


def test_every_json_carries_the_versions_device_command_and_commit(tmp_path, monkeypatch):
    from asmix.runtime import resolve_device

    resolve_device("cpu")
    monkeypatch.setattr(sys, "argv", ["/usr/bin/asmix", "sweep-alpha", "--alphas", "0,1"])
    path = atomic_write_json(tmp_path / "r.json", {"rows": [1]})
    document = json.loads(path.read_text())
    assert document["rows"] == [1]
    stamp = document["provenance"]
    assert (
        stamp["versions"]["torch"] == torch.__version__.split("+")[0] or stamp["versions"]["torch"] == torch.__version__
    )
    assert stamp["versions"]["asmix"] == metadata.version("asmix")
    assert stamp["device"] == "cpu" and stamp["command"] == "asmix sweep-alpha --alphas 0,1"
    assert stamp["wall_seconds"] >= 0 and stamp["started"].endswith("+00:00")
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
        cwd=str(__import__("pathlib").Path(__file__).parent),
    )
    if head.returncode == 0:  # in a checkout the commit is the one git reports
        assert stamp["git_commit"] == head.stdout.strip()
    assert "provenance" not in json.loads(atomic_write_json(tmp_path / "plain.json", {"a": 1}, stamp=False).read_text())


def test_git_commit_reads_a_packed_ref_and_a_detached_head(tmp_path):
    git = tmp_path / "repo" / ".git"
    (git / "refs" / "heads").mkdir(parents=True)
    source = tmp_path / "repo" / "pkg" / "mod.py"
    source.parent.mkdir()
    source.write_text("")
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    (git / "packed-refs").write_text("# pack-refs\n" + "a" * 40 + " refs/heads/main\n")
    assert git_commit(source) == "a" * 40
    (git / "refs" / "heads" / "main").write_text("b" * 40 + "\n")
    assert git_commit(source) == "b" * 40
    (git / "HEAD").write_text("c" * 40 + "\n")
    assert git_commit(source) == "c" * 40
    assert git_commit(tmp_path / "elsewhere" / "x.py") in (None, provenance()["git_commit"])


def test_version_option_prints_the_versions():
    done = subprocess.run([sys.executable, "-m", "asmix", "--version"], capture_output=True, text=True)
    if done.returncode != 0:  # no __main__ module: call the entry point
        done = subprocess.run(
            [sys.executable, "-c", "import sys; sys.argv=['asmix','--version']; from asmix.cli import main; main()"],
            capture_output=True,
            text=True,
        )
    assert done.returncode == 0 and done.stdout.strip() == version_line()
    assert version_line().startswith(f"asmix {metadata.version('asmix')} (torch ")


def test_plain_progress_writes_a_line_per_ten_percent_or_thirty_seconds():
    lines, now = [], [0.0]
    progress = PlainProgress(lines.append, clock=lambda: now[0])
    progress("PGD", 0, 100)  # the task starts at t = 0
    for done in range(1, 101):  # 100 units, one per second
        now[0] = float(done)
        progress("PGD", done, 100)
    # a line every 10 units (10%) and one at the end: 10 lines, none in between
    assert len(lines) == 10 and lines[0] == "PGD: 10/100 (10%), 1.0/s, 0:01:30 left"
    assert lines[-1] == "PGD: 100/100 (100%), 1.0/s, 0:01:40 elapsed"
    lines.clear()
    now[0] = 1000.0
    slow = PlainProgress(lines.append, clock=lambda: now[0])
    slow("AA", 0, 1000)
    for done in range(1, 1001):  # 1000 units, one every 0.5 s: 1% per 5 s, so the 30-second rule fires first
        now[0] = 1000.0 + done * 0.5
        slow("AA", done, 1000)
    # 500 s in all, 10% every 50 s: a line 30 s after the last one, and one at each new tenth
    assert [line.split(" ")[1] for line in lines[:4]] == ["60/1000", "100/1000", "160/1000", "200/1000"]
    assert len(lines) == 20 and lines[0] == "AA: 60/1000 (6%), 2.0/s, 0:07:50 left"
    assert all(line.startswith("AA: ") for line in lines) and lines[-1].startswith("AA: 1000/1000 (100%)")
    slow("AA", 150, 1000)  # the task starts again (a new alpha): it logs again from its first tenth
    assert lines[-1].startswith("AA: 150/1000")


def test_plain_progress_times_a_task_from_the_end_of_the_previous_one():
    # callers that report finished units only (a whole batch) give their first report after real work
    lines, now = [], [0.0]
    progress = PlainProgress(lines.append, clock=lambda: now[0])
    now[0] = 50.0
    progress("base", 250, 1000)
    now[0] = 200.0
    progress("base", 1000, 1000)
    now[0] = 260.0
    progress("MIX", 500, 1000)
    assert lines == [
        "base: 250/1000 (25%), 5.0/s, 0:02:30 left",
        "base: 1000/1000 (100%), 5.0/s, 0:03:20 elapsed",
        "MIX: 500/1000 (50%), 8.3/s, 0:01:00 left",
    ]


def test_batch_logs_get_plain_lines_and_terminals_get_bars():
    import io

    from rich.console import Console

    from asmix.cli.progress import progress_display

    log = io.StringIO()
    with progress_display(Console(file=log, force_terminal=False, width=200)) as progress:
        assert isinstance(progress, PlainProgress)
        progress("clean g", 100, 100)
    assert log.getvalue().startswith("clean g: 100/100 (100%), ")
    with progress_display(Console(file=io.StringIO(), force_terminal=True)) as progress:
        assert not isinstance(progress, PlainProgress)


def test_stage_lines_come_every_thirty_seconds_without_another_line():
    from asmix.runtime import StageEvent

    lines, now = [], [0.0]
    progress = PlainProgress(lines.append, clock=lambda: now[0])
    for second, robust in ((10, 90), (31, 80), (45, 70), (62, 60)):
        now[0] = float(second)
        progress.stage(StageEvent("apgd-t", second // 10, 9, robust, 100, "target", "evaluate batch 1/2, mixed aa"))
    assert lines == [
        "evaluate batch 1/2, mixed aa: apgd-t 3/9 targets, 80/100 robust",
        "evaluate batch 1/2, mixed aa: apgd-t 6/9 targets, 60/100 robust",
    ]
    now[0] = 70.0
    progress("evaluate", 100, 200)  # a task line counts as a line: the next stage line waits 30 s from it
    now[0] = 95.0
    progress.stage(StageEvent("square", 1, 1, 50, 100, task="evaluate batch 2/2, mixed aa"))
    assert len(lines) == 3


def test_a_terminal_shows_the_stage_as_one_bar():
    import io

    from rich.console import Console

    from asmix.cli.progress import progress_display
    from asmix.runtime import StageEvent

    with progress_display(Console(file=io.StringIO(), force_terminal=True)) as progress:
        progress.stage(StageEvent("apgd-ce", 0, 1, 9, 10, "restart", "evaluate batch 1/1, mixed aa"))
        progress.stage(StageEvent("apgd-t", 4, 9, 7, 10, "target", "evaluate batch 1/1, mixed aa"))
        bars = progress.progress.tasks
    assert [bar.description for bar in bars] == ["evaluate batch 1/1, mixed aa: apgd-t 4/9 targets, 7/10 robust"]
    assert (bars[0].completed, bars[0].total) == (4, 9)
