"""Atomic file writes: a crash mid-write leaves the old file, never a torn one. Output paths are checked
before the work that fills them, and a failed write is one ``AsmixError`` naming the path."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from asmix.errors import AsmixError


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(temporary_path)`` then rename the temporary file onto ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise write_error(path, error) from error
    os.close(handle)
    try:
        write(Path(temporary))
        os.replace(temporary, path)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise write_error(path, error) from error
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda temporary: temporary.write_text(text))


def atomic_write_json(path: str | Path, data: Any, *, stamp: bool = True) -> Path:
    """``data`` as indented JSON; a dict gets the run's ``provenance`` (versions, device, command line, start
    and wall time, git commit) unless ``stamp`` is False."""
    if stamp and isinstance(data, dict):
        from asmix.provenance import provenance

        data = {**data, "provenance": provenance()}
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_error(path: str | Path, error: OSError) -> AsmixError:
    """An ``OSError`` raised while writing ``path`` as the one-line error a user sees."""
    return AsmixError(f"cannot write {path}: {error.strerror or error}")


def check_writable_file(path: str | Path) -> Path:
    """``path`` can be written as a file: it is not a folder, and its folder exists (or can be
    created) and is writable. Checked before the work, so that it is not lost at the end."""
    path = Path(path)
    if path.is_dir():
        raise AsmixError(f"cannot write {path}: it is a folder, a file name is needed")
    _check_creatable(path.parent, path)
    return path


def check_writable_dir(path: str | Path) -> Path:
    """``path`` is a writable folder or can be created as one."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise AsmixError(f"cannot write to {path}: it is a file, a folder is needed")
    _check_creatable(path, path)
    return path


def _check_creatable(folder: Path, target: Path) -> None:
    existing = folder.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise AsmixError(f"cannot write {target}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise AsmixError(f"cannot write {target}: {existing} is not writable")
