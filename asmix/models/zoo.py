"""RobustBench zoo names as users type them: exact names, unique prefixes and aliases resolve (and say what they
loaded and what else they could have meant, with the leaderboard's accuracies where its ``model_info`` files are
at hand); misspellings get the nearest names."""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from asmix.errors import AsmixError

MODEL_INFO_DIR = Path("model_info")
"""Where RobustBench reads its leaderboard files, relative to the working directory (a clone of its repository)."""

_PAPER = re.compile(r"[A-Za-z]+\d{4}")


@dataclass(frozen=True)
class LeaderboardEntry:
    """A zoo model's leaderboard accuracies in percent (RobustBench's ``model_info/<dataset>/<threat>/<name>.json``)."""

    clean: float
    autoattack: float

    def describe(self) -> str:
        return f"clean {self.clean:.2f}%, AutoAttack {self.autoattack:.2f}%"


def model_info_dirs() -> tuple[Path, ...]:
    """The folders that may hold RobustBench's ``model_info`` tree: ``./model_info`` (where RobustBench's own
    leaderboard code reads it) and, for a source checkout installed in place, the one beside the package. The
    1.1.1 wheel ships none, so accuracies show only where one of these exists."""
    folders = [MODEL_INFO_DIR]
    try:
        import robustbench

        package = Path(robustbench.__file__).parent
        folders += [package / "model_info", package.parent / "model_info"]
    except ImportError:
        pass
    return tuple(folders)


def leaderboard_entry(dataset: str, threat_model: str, name: str) -> LeaderboardEntry | None:
    """The leaderboard's clean and AutoAttack accuracy of a zoo model; None where no readable file lists them."""
    for folder in model_info_dirs():
        path = folder / dataset / threat_model / f"{name}.json"
        try:
            info = json.loads(path.read_text())
            return LeaderboardEntry(clean=float(info["clean_acc"]), autoattack=float(info["autoattack_acc"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def paper_key(name: str) -> str:
    """The author-and-year part of a zoo name (``Wang2023`` of ``Wang2023Better_WRN-70-16``); the name if none."""
    match = _PAPER.match(name)
    return match.group(0) if match else name


def resolve_zoo_name(name: str, names: list[str], describe=str) -> str:
    """An exact zoo name, or a unique prefix of one; otherwise an error listing the candidates (``describe``
    renders each, e.g. with its accuracies)."""
    if name in names:
        return name
    matches = [candidate for candidate in names if candidate.startswith(name)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        listed = ", ".join(describe(match) for match in sorted(matches)[:8])
        raise AsmixError(f"model name {name!r} is ambiguous: {listed}; name one of them")
    close = nearest_names(name, names)
    hint = f"; closest: {', '.join(describe(match) for match in close)}" if close else ""
    raise AsmixError(f"unknown model {name!r} (not an alias, a spec kind or a RobustBench name){hint}")


def same_paper(name: str, names: list[str]) -> list[str]:
    """The other zoo names from the paper of ``name`` (same author and year): what a short name could have meant."""
    key = paper_key(name)
    return sorted(other for other in names if other != name and paper_key(other) == key)


def nearest_names(text: str, names: list[str], limit: int = 8) -> list[str]:
    """The zoo names nearest to a misspelling: fewest edits (a swap of two neighbours counts one) to the whole name,
    its author-and-year part or its first ``len(text)`` characters, so ``Wang2032`` finds the ``Wang2023Better_*``
    models (case aside); difflib's closest where no name is within a quarter of the text's length."""
    lower = text.lower()
    distances = {
        name: min(_edits(lower, key.lower()) for key in (name, paper_key(name), name[: len(text)])) for name in names
    }
    best = min(distances.values(), default=None)
    if best is not None and best <= max(2, len(text) // 4):
        return sorted(name for name, distance in distances.items() if distance == best)[:limit]
    return difflib.get_close_matches(text, names, n=min(limit, 5), cutoff=0.4)


def _edits(a: str, b: str) -> int:
    """Optimal string alignment distance: insertions, deletions, substitutions and swaps of neighbours."""
    previous2: list[int] = []
    previous = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        current = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = a[i - 1] != b[j - 1]
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                current[j] = min(current[j], previous2[j - 2] + 1)
        previous2, previous = previous, current
    return previous[len(b)]
