"""Where checkpoints are looked for: RobustBench's layout ``<dir>/<dataset>/<threat_model>/<file>`` under each
of ``--model-dir``, ``$ASMIX_MODEL_DIR``, ``./models`` (RobustBench's default) and ``~/.cache/asmix/models``."""

from __future__ import annotations

import os
from pathlib import Path

MODEL_DIR_ENV = "ASMIX_MODEL_DIR"
ROBUSTBENCH_MODEL_DIR = Path("models")
"""RobustBench's ``load_model`` default, relative to the working directory."""


def model_dirs(model_dir: str | Path | None = None) -> tuple[Path, ...]:
    """The folders searched for checkpoints, in order, without duplicates; downloads go to the first."""
    candidates = [
        Path(model_dir) if model_dir is not None else None,
        Path(os.environ[MODEL_DIR_ENV]) if os.environ.get(MODEL_DIR_ENV) else None,
        ROBUSTBENCH_MODEL_DIR,
        Path.home() / ".cache" / "asmix" / "models",
    ]
    folders: list[Path] = []
    for folder in candidates:
        if folder is not None and folder.absolute() not in [seen.absolute() for seen in folders]:
            folders.append(folder)
    return tuple(folders)


def find_checkpoint(
    dirs: tuple[Path, ...], dataset: str, threat_model: str, layouts: list[list[str]]
) -> tuple[list[Path] | None, list[Path]]:
    """The files of the first layout (a list of file names) found whole in a folder ``<dir>/<dataset>/<threat_model>``,
    searching ``dirs`` in order, and every path tried, for the error when none is found."""
    tried: list[Path] = []
    for folder in dirs:
        sub = folder / dataset / threat_model
        for files in layouts:
            paths = [sub / file for file in files]
            if all(path.is_file() for path in paths):
                return paths, tried
            tried.extend(path for path in paths if path not in tried)
    return None, tried


def tried_paths(paths: list[Path]) -> str:
    """The paths tried, for a one-line message."""
    return ", ".join(str(path) for path in paths)
