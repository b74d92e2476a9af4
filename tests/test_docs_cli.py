"""docs/cli.md is what Typer's documentation generator writes from the CLI today."""

import subprocess
import sys
from pathlib import Path

from asmix.cli.docs import HEADER, REGENERATE

ROOT = Path(__file__).resolve().parents[1]


def test_docs_cli_is_current(tmp_path):
    target = tmp_path / "cli.md"
    env = {"PATH": "/usr/bin:/bin", "COLUMNS": "40", "TERM": "dumb", "NO_COLOR": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "asmix.cli.docs", str(target)]
    subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True)
    fresh = target.read_text()
    assert fresh.startswith(HEADER) and REGENERATE in fresh.splitlines()[0]
    assert "## `asmix sweep-alpha`" in fresh and "* `--lipschitz / --no-lipschitz`" in fresh
    assert (ROOT / "docs" / "cli.md").read_text() == fresh, f"docs/cli.md is stale: regenerate with {REGENERATE}"
