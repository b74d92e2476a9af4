"""Atomic file writes: a crash mid-write leaves the old file, never a torn one. Output paths are checked
before the work that fills them, and a failed write is one ``AsmixError`` naming the path. Files asmix reads back
(resume parts, checkpoints) are sealed with the sha256 of their payload."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from asmix.errors import AsmixError, RunFailed, first_line

SEALED_FORMAT = "asmix-sealed"


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


def write_error(path: str | Path, error: OSError) -> RunFailed:
    """An ``OSError`` raised while writing ``path`` (disk full, folder gone) as the one-line error a user sees."""
    return RunFailed(f"cannot write {path}: {error.strerror or error}")


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


def save_sealed(path: str | Path, payload: Any) -> Path:
    """Write ``payload`` (tensors, numbers and strings in dicts and lists) atomically with the sha256 of its serialized
    bytes, so that ``load_sealed`` tells an edited or damaged file from the one asmix wrote."""
    import torch

    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    sealed = {"format": SEALED_FORMAT, "sha256": hashlib.sha256(data).hexdigest(), "payload": data}
    return atomic_write(path, lambda temporary: torch.save(sealed, temporary))


def load_sealed(path: str | Path) -> Any:
    """The payload ``save_sealed`` wrote (read with ``weights_only``), or an ``AsmixError`` saying what is wrong: the
    file is unreadable, not sealed by asmix, or its bytes no longer match their sha256. The checksum finds edits and
    damage; it is no signature: whoever can write the file can recompute it."""
    import torch

    try:
        sealed = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torn, garbage, or holding objects weights_only refuses
        raise AsmixError(f"unreadable ({first_line(error)})") from error
    if not (
        isinstance(sealed, dict)
        and sealed.get("format") == SEALED_FORMAT
        and isinstance(sealed.get("payload"), bytes)
        and isinstance(sealed.get("sha256"), str)
    ):
        raise AsmixError("not a checksummed asmix file (an older asmix wrote it, or it was edited)")
    if hashlib.sha256(sealed["payload"]).hexdigest() != sealed["sha256"]:
        raise AsmixError("its payload does not match its checksum (edited or damaged)")
    try:
        return torch.load(io.BytesIO(sealed["payload"]), map_location="cpu", weights_only=True)
    except Exception as error:
        raise AsmixError(f"unreadable payload ({first_line(error)})") from error
