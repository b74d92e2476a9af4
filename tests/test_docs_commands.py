"""Every fenced ``asmix`` command in README.md and docs/ runs, or says what it needs (issue 22, item 3).

A command that needs a GPU or downloaded weights ends with ``# needs: gpu``, ``# needs: weights`` or
``# needs: gpu, weights`` and is only parsed. Every other one runs in-process on the demo pair, in a temporary
folder per doc file (so ``train-mixer --out runs/mixer`` feeds a later ``evaluate --mixer runs/mixer``), with its
sizes shrunk by one rule, ``small_args``. docs/cli.md is skipped: a generated reference of usage lines.
"""

from __future__ import annotations

import re
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer
from conftest import run_cli

from asmix.cli import app

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = [ROOT / "README.md"] + sorted(p for p in (ROOT / "docs").rglob("*.md") if p != ROOT / "docs" / "cli.md")
SHELL_FENCES = {"", "bash", "sh", "shell", "console"}
KNOWN_NEEDS = {"gpu", "weights"}
SEPARATORS = {"&&", "||", ";", "|"}
NEEDS = re.compile(r"\s+#\s*(needs?\b.*)$")
MARKER = re.compile(r"needs: *([a-z]+(?:, *[a-z]+)*) *$")
READS = {"--mixer": "train-mixer", "--calibration": "calibrate"}
"""Options whose value is a folder that another command (which) writes with ``--out``."""
DEFAULT_OUT = {"train-mixer": "asmix-mixer", "calibrate": "asmix-calibration"}

CAPS = {
    "--n-examples": 8,
    "--n-train": 32,
    "--n-val": 16,
    "--batch-size": 16,
    "--epochs": 1,
    "--steps": 2,
    "--aa-steps": 2,
    "--val-steps": 2,
    "--apgd-steps-df": 2,
    "--target-classes": 1,
    "--square-queries": 10,
    "--lite-square-queries": 10,
    "--train-square-queries": 10,
    "--n-samples": 16,
    "--verify": 4,
}
"""The shrink rule: each of these options the command takes gets min(its value, the cap); absent, its default
counts (a default of "all" or "preset" counts as unbounded). Other sizes (--alphas, --grid-size) are kept."""


@dataclass(frozen=True)
class DocCommand:
    """One fenced command line: where it is, what it says, its asmix arguments, and what its marker says it needs."""

    path: str
    line: int
    text: str
    args: tuple[str, ...]
    needs: tuple[str, ...]
    launcher: str

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"

    @property
    def name(self) -> str:
        return self.args[0] if self.args else ""

    def values(self, option: str) -> list[str]:
        """The values given to ``option`` (``--opt VALUE`` or ``--opt=VALUE``)."""
        found = []
        for index, token in enumerate(self.args):
            if token == option and index + 1 < len(self.args):
                found.append(self.args[index + 1])
            elif token.startswith(option + "="):
                found.append(token.split("=", 1)[1])
        return found

    def writes(self) -> set[str]:
        outs = self.values("--out") or ([DEFAULT_OUT[self.name]] if self.name in DEFAULT_OUT else [])
        return {_folder(value) for value in outs}

    def reads(self) -> dict[str, str]:
        """Folder read -> the command that writes such folders."""
        return {_folder(value): writer for option, writer in READS.items() for value in self.values(option)}


def _folder(value: str) -> str:
    return str(Path(value))


def _logical_lines(lines: list[str]):
    """(first line number, text) per fenced shell line, ``\\`` continuations joined."""
    fence, pending, start = None, "", 0
    for number, raw in enumerate(lines, 1):
        stripped = raw.strip()
        if stripped.startswith("```"):
            fence = stripped[3:].strip().lower() if fence is None else None
            pending = ""
            continue
        if fence not in SHELL_FENCES:
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        yield start, pending + stripped
        pending = ""


def _asmix_args(tokens: list[str]) -> tuple[str, list[str]] | None:
    """(launcher, asmix arguments) for ``asmix ...``, ``python -m asmix ...`` or ``torchrun ... -m asmix ...``."""
    if not tokens:
        return None
    while tokens and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", tokens[0]):
        tokens = tokens[1:]  # environment assignments
    if tokens[:1] == ["asmix"]:
        return "asmix", tokens[1:]
    if tokens[:1] in (["python"], ["python3"], ["torchrun"]) and "-m" in tokens:
        index = tokens.index("-m")
        if tokens[index + 1 : index + 2] == ["asmix"]:
            return tokens[0], tokens[index + 2 :]
    return None


def _segments(tokens: list[str]):
    """The simple commands of a line, split at ``&&``, ``||``, ``;`` and ``|``."""
    segment = []
    for token in tokens:
        if token in SEPARATORS:
            yield segment
            segment = []
        else:
            segment.append(token)
    yield segment


def collect(path: Path, root: Path = ROOT) -> list[DocCommand]:
    """The fenced asmix commands of one markdown file, in order (also those chained after ``&&``); a line's
    ``# needs:`` marker applies to each."""
    commands = []
    for line, text in _logical_lines(path.read_text().splitlines()):
        command = text[2:] if text.startswith("$ ") else text
        comment = NEEDS.search(command)
        marker = MARKER.fullmatch(comment.group(1)) if comment else None
        needs = tuple(need.strip() for need in marker.group(1).split(",")) if marker else ()
        if comment and not marker:
            needs = (f"<malformed: {comment.group(1)!r}>",)
        for segment in _segments(shlex.split(command, comments=True)):
            found = _asmix_args(segment)
            if found is not None:
                launcher, args = found
                commands.append(DocCommand(str(path.relative_to(root)), line, text, tuple(args), needs, launcher))
    return commands


COMMANDS = [command for path in DOC_FILES for command in collect(path)]
RUNNABLE = [command for command in COMMANDS if not command.needs]


def small_args(command: DocCommand) -> list[str]:
    """``command``'s arguments with every size in ``CAPS`` capped and ``--device cpu``."""
    params = {opt: param for param in _click_command(command.name).params for opt in param.opts}
    args, given = list(command.args), {}
    for index, token in enumerate(args):
        option, _, inline = token.partition("=")
        if option in CAPS or option == "--device":
            given[option] = index
            if inline:
                args[index : index + 1] = [option, inline]
    for option, cap in CAPS.items():
        if option not in params:
            continue
        if option in given:
            index = given[option] + 1
            args[index] = str(min(int(args[index]), cap))
        else:
            default = params[option].default
            args += [option, str(cap if default is None else min(int(default), cap))]
    if "--device" in given:
        args[given["--device"] + 1] = "cpu"
    elif "--device" in params:
        args += ["--device", "cpu"]
    return args


def _click_command(name: str):
    group = typer.main.get_command(app)
    return group.commands.get(name) if hasattr(group, "commands") else None


def _writer(command: DocCommand, folder: str, runnable: list[DocCommand]) -> DocCommand | None:
    """The runnable command of the same file that writes ``folder`` for ``command``: the last one above it, else
    the first one below it (a results page may show the evaluation before the training)."""
    name = command.reads()[folder]
    writers = [
        other
        for other in runnable
        if other.path == command.path and other.name == name and folder in other.writes() and other != command
    ]
    above = [other for other in writers if other.line < command.line]
    below = [other for other in writers if other.line > command.line]
    return above[-1] if above else (below[0] if below else None)


def test_docs_have_commands():
    counts = {path: sum(command.path == path for command in RUNNABLE) for path in ("README.md", "docs/workflow.md")}
    assert all(counts.values()), counts
    assert all(command.path != "docs/cli.md" for command in COMMANDS)


def problems(command: DocCommand, runnable: list[DocCommand]) -> list[str]:
    """What is wrong with a doc command, found without running it: an unknown command or option, a missing or bad
    value, a marker naming an unknown need, an unmarked command that asks for CUDA or starts torchrun, or a folder
    it reads that no runnable command of its file writes."""
    click_command = _click_command(command.name)
    if click_command is None:
        return [f"unknown command {command.name!r}"]
    found = []
    try:
        click_command.make_context(command.name, list(command.args[1:]))
    except Exception as error:  # click's usage errors: an unknown option, a missing value, a bad value
        found.append(f"{type(error).__name__}: {error}")
    unknown = [need for need in command.needs if need not in KNOWN_NEEDS]
    if unknown:
        found.append(f"the marker needs {unknown}; known needs: {sorted(KNOWN_NEEDS)}")
    if command.needs:
        return found
    if command.launcher == "torchrun":
        found.append("torchrun starts several GPU processes: mark it # needs: gpu")
    if any(value.startswith("cuda") for value in command.values("--device")):
        found.append("--device cuda without # needs: gpu")
    for folder, writer in command.reads().items():
        if _writer(command, folder, runnable) is None:
            found.append(f"reads {folder}, which no unmarked {writer} of {command.path} writes with --out")
    return found


@pytest.mark.parametrize("command", COMMANDS, ids=[command.where for command in COMMANDS])
def test_doc_command_parses_and_says_what_it_needs(command):
    assert not problems(command, RUNNABLE), f"{command.where}: {command.text}\n" + "\n".join(
        problems(command, RUNNABLE)
    )


def test_problems_are_found_without_running(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text(
        "```bash\n"
        "asmix sweep-alpha --n-exmples 8\n"
        "asmix evaluate --steps many\n"
        "asmix evaluate --attack clean --device cuda\n"
        "asmix evaluate --mixer runs/mixer  # needs: gpus\n"
        "asmix evaluate --mixer runs/mixer\n"
        "asmix train-mixer --out runs/mixer  # needs: weights\n"
        "torchrun --nproc-per-node 2 -m asmix certify\n"
        "asmix certify  # need gpu\n"
        "```\n"
    )
    commands = collect(doc, tmp_path)
    runnable = [command for command in commands if not command.needs]
    found = [problems(command, runnable) for command in commands]
    assert "No such option: --n-exmples" in found[0][0]
    assert found[1][0].startswith("BadParameter:") and "integer" in found[1][0]
    assert found[2:] == [
        ["--device cuda without # needs: gpu"],
        ["the marker needs ['gpus']; known needs: ['gpu', 'weights']"],
        ["reads runs/mixer, which no unmarked train-mixer of doc.md writes with --out"],
        [],
        ["torchrun starts several GPU processes: mark it # needs: gpu"],
        ["the marker needs [\"<malformed: 'need gpu'>\"]; known needs: ['gpu', 'weights']"],
    ]


def test_collect_reads_fences_prompts_continuations_and_markers(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text(
        "asmix evaluate --alpha 0.5\n"  # outside a fence: prose
        "```python\nasmix = 1\n```\n"
        "```console\n$ asmix evaluate \\\n  --alpha 0.5  # a comment\n"
        "python -m asmix certify --device cuda  # needs: gpu\n"
        "pip install . && asmix sweep-alpha\n"
        "torchrun --nproc-per-node 2 -m asmix evaluate  # needs: gpus\n"
        "asmix margins  # need: gpu\n```\n"
    )
    found = [(c.line, c.launcher, c.args, c.needs) for c in collect(doc, tmp_path)]
    assert found == [
        (6, "asmix", ("evaluate", "--alpha", "0.5"), ()),
        (8, "python", ("certify", "--device", "cuda"), ("gpu",)),
        (9, "asmix", ("sweep-alpha",), ()),
        (10, "torchrun", ("evaluate",), ("gpus",)),
        (11, "asmix", ("margins",), ("<malformed: 'need: gpu'>",)),
    ]


def test_small_args_caps_sizes_and_adds_the_missing_ones():
    command = DocCommand("x.md", 1, "", ("evaluate", "--n-examples", "1000", "--steps=40", "--device", "cuda"), (), "")
    args = small_args(command)
    assert args[:5] == ["evaluate", "--n-examples", "8", "--steps", "2"]
    assert args[args.index("--device") + 1] == "cpu" and args.count("--device") == 1
    assert args[args.index("--square-queries") + 1] == "10"  # absent: its default 5000, capped
    assert "--n-train" not in args  # evaluate takes no such option
    calibrate = small_args(DocCommand("x.md", 1, "", ("calibrate",), (), ""))
    assert calibrate[calibrate.index("--verify") + 1] == "0"  # default 0 stays 0


@pytest.fixture(scope="module")
def doc_runs(tmp_path_factory):
    """Per doc file: its working folder and the lines already run there."""
    return {}


def _run(command: DocCommand, doc_runs, tmp_path_factory, monkeypatch, capsys, chain: tuple = ()) -> None:
    folder, done = doc_runs.setdefault(command.path, (tmp_path_factory.mktemp("doc"), {}))
    if command in done:
        assert done[command] == 0, f"{command.where} failed earlier; {' <- '.join(chain)}"
        return
    for read in sorted(command.reads()):
        writer = _writer(command, read, RUNNABLE)
        assert writer is not None, f"{command.where}: no command of {command.path} writes {read}"
        _run(writer, doc_runs, tmp_path_factory, monkeypatch, capsys, (*chain, command.where))
    args = small_args(command)
    monkeypatch.chdir(folder)
    started = time.perf_counter()
    code, out, err = run_cli(monkeypatch, capsys, *args)
    done[command] = code or 0
    print(f"{command.where}: {time.perf_counter() - started:.1f} s: asmix {shlex.join(args)}")
    assert code in (0, None), (
        f"{command.where} exited {code}{' (needed by ' + chain[-1] + ')' if chain else ''}\n"
        f"  doc: {command.text}\n  ran: asmix {shlex.join(args)}\n{err[-3000:]}"
    )


@pytest.mark.slow
@pytest.mark.parametrize("command", RUNNABLE, ids=[command.where for command in RUNNABLE])
def test_doc_command_runs_on_the_demo_pair(command, doc_runs, tmp_path_factory, monkeypatch, capsys):
    _run(command, doc_runs, tmp_path_factory, monkeypatch, capsys)
