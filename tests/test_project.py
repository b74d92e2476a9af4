"""Project hygiene that CI depends on."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    commands = [block.strip() for block in re.findall(r"```bash\n(.*?)```", readme, re.S)]
    setup_and_demo = commands[0]  # the first command sets up and runs the demo, another sets up and tests
    assert "pip install" in setup_and_demo and "asmix sweep-alpha" in setup_and_demo
    tests = [command for command in commands if "pytest" in command]
    assert len(tests) == 1 and "pip install" in tests[0]
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert tests[0] in ci_lines


def test_changelog_has_an_unreleased_section():
    assert "## [Unreleased]" in (ROOT / "CHANGELOG.md").read_text()


def test_the_version_is_one_number_in_pyproject_the_package_the_citation_and_the_changelog():
    import asmix

    version = re.search(r'^version = "(.+)"$', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert asmix.__version__ == version
    assert f"\nversion: {version}\n" in (ROOT / "CITATION.cff").read_text()
    released = re.findall(r"^## \[(\d[^\]]*)\]", (ROOT / "CHANGELOG.md").read_text(), re.M)
    assert released[0] == version  # the newest released section


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


def test_every_module_imports():
    # a dependency missing from a fresh install fails here, not in a user's first run of the command that needs it
    import importlib
    import pkgutil

    import asmix

    names = [module.name for module in pkgutil.walk_packages(asmix.__path__, "asmix.")]
    assert "asmix.models.zoo" in names and "asmix.cli.config_file" in names
    for name in names:
        if name != "asmix.__main__":  # runs the CLI
            importlib.import_module(name)


def test_every_imported_distribution_is_declared():
    # lazy imports too (yaml, huggingface_hub): each third-party package asmix imports comes from a declared dependency
    import ast
    import sys
    from importlib.metadata import packages_distributions

    import pytest

    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {re.split(r"[<>=!~ ;\[]", requirement)[0] for requirement in project["dependencies"]}
    declared = {name.lower().replace("_", "-") for name in declared}
    imported = set()
    for path in (ROOT / "asmix").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = sorted(name for name in imported if name not in sys.stdlib_module_names and name != "asmix")
    distributions = packages_distributions()
    undeclared = [
        name
        for name in third_party
        if not {dist.lower().replace("_", "-") for dist in distributions.get(name, [name])} & declared
    ]
    assert "yaml" in third_party and "huggingface_hub" in third_party
    assert undeclared == []


def test_huggingface_hub_bound_is_the_one_asmix_names():
    from asmix.compat import HF_HUB_REQUIREMENT

    assert f'"{HF_HUB_REQUIREMENT}"' in (ROOT / "pyproject.toml").read_text()
