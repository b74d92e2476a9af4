"""Rendering of result dataclasses: rich tables, JSON, CSV and PNG plots. Reads results only.

Shared writers live here; each experiment has its renderers in a module of its own.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from asmix.io import atomic_write, atomic_write_json, atomic_write_text


def percent(value: float | None) -> str:
    """A fraction as a percentage with two decimals, or a dash where it was not measured."""
    return "-" if value is None else f"{100 * value:.2f}"


def alpha_text(value: float | None) -> str:
    """A mean alpha with three decimals, or a dash where it was not measured."""
    return "-" if value is None else f"{value:.3f}"


def write_json(result: Any, path: str | Path) -> Path:
    """The result's ``to_dict()`` as JSON, written atomically."""
    return atomic_write_json(path, result.to_dict())


def write_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Rows of dicts (same keys) as CSV, written atomically."""
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return atomic_write_text(path, buffer.getvalue())


def save_figure(figure, path: str | Path) -> Path:
    """A matplotlib figure as PNG, written atomically, then closed."""
    import matplotlib.pyplot as plt

    try:
        return atomic_write(
            path, lambda temporary: figure.savefig(temporary, format="png", dpi=120, bbox_inches="tight")
        )
    finally:
        plt.close(figure)


def new_figure(width: float = 6.0, height: float = 4.0):
    """A figure on the non-interactive backend (works with no display)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height))
