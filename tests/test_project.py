"""Project hygiene that CI depends on."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    commands = [block.strip() for block in re.findall(r"```bash\n(.*?)```", readme, re.S)]
    quickstart = commands[:2]
    assert "asmix sweep-alpha" in quickstart[0] and "pytest" in quickstart[1]
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert quickstart[1] in ci_lines


def test_changelog_has_an_unreleased_section():
    assert "## [Unreleased]" in (ROOT / "CHANGELOG.md").read_text()


def test_import_asmix_has_no_side_effects():
    # importing asmix loads neither an experiment nor AutoAttack, and asmix's attacks never alias
    # ``autoattack`` in sys.modules (only import_robustbench does, for RobustBench's sake)
    import subprocess
    import sys

    script = (
        "import sys, asmix\n"
        "prefixes = ('asmix.', 'autoattack', 'pyautoattack', 'timm', 'robustbench')\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(prefixes))\n"
        "assert loaded == ['asmix.errors'], loaded\n"
        "from asmix import evaluate, PGD\n"
        "import asmix.attacks.margin, asmix.attacks.adaptive\n"
        "assert callable(evaluate) and 'autoattack' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
