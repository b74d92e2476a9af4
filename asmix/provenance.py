"""Where a result came from: package versions, device, command line, start and wall time and the git commit,
stamped into every JSON asmix writes so a result file says how to reproduce it."""

from __future__ import annotations

import shlex
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("asmix", "torch", "timm", "robustbench", "pyautoattack")

_started = time.time()
_device: str | None = None


def mark_start() -> None:
    """The run starts now (the CLI calls this first; otherwise it is when asmix was imported)."""
    global _started
    _started = time.time()


def record_device(device: Any) -> None:
    """The device the run computes on, with the GPU's name where there is one."""
    global _device
    text = str(device)
    if text.startswith("cuda"):
        import torch

        index = getattr(device, "index", None)
        text = f"{text} ({torch.cuda.get_device_name(index if index is not None else torch.cuda.current_device())})"
    _device = text


def versions() -> dict[str, str | None]:
    """Installed versions of asmix and the packages its numbers depend on (None where not installed)."""
    found = {}
    for package in PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


def git_commit(start: Path | None = None) -> str | None:
    """The commit checked out in the git repository holding asmix's source, read from ``.git`` without running
    git; None outside a checkout (an installed wheel)."""
    folder = (start or Path(__file__)).resolve().parent
    for candidate in (folder, *folder.parents):
        dot_git = candidate / ".git"
        if dot_git.is_file():  # a worktree: "gitdir: PATH"
            text = dot_git.read_text().strip()
            dot_git = Path(text.removeprefix("gitdir:").strip()) if text.startswith("gitdir:") else dot_git
        if dot_git.is_dir():
            return _read_head(dot_git)
    return None


def _read_head(git_dir: Path) -> str | None:
    try:
        head = (git_dir / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return head
        ref = head.removeprefix("ref:").strip()
        common = git_dir
        if (git_dir / "commondir").is_file():
            common = (git_dir / (git_dir / "commondir").read_text().strip()).resolve()
        for root in (git_dir, common):
            if (root / ref).is_file():
                return (root / ref).read_text().strip()
        packed = common / "packed-refs"
        if packed.is_file():
            for line in packed.read_text().splitlines():
                if line.endswith(" " + ref):
                    return line.split(" ", 1)[0]
    except OSError:
        return None
    return None


def provenance() -> dict[str, Any]:
    """The run's provenance now: versions, device, command line, start time (UTC), wall seconds, commit."""
    return {
        "versions": versions(),
        "device": _device,
        "command": shlex.join(["asmix", *sys.argv[1:]]) if Path(sys.argv[0]).name == "asmix" else shlex.join(sys.argv),
        "started": datetime.fromtimestamp(_started, timezone.utc).isoformat(timespec="seconds"),
        "wall_seconds": round(time.time() - _started, 3),
        "git_commit": git_commit(),
    }


def version_line() -> str:
    """``asmix --version``: asmix's version and those of the packages its numbers depend on."""
    found = versions()
    others = ", ".join(f"{name} {found[name] or 'not installed'}" for name in PACKAGES[1:])
    return f"asmix {found['asmix']} ({others})"
