"""The Typer application object that every command module registers on."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="asmix",
    help="Adaptive smoothing: mix an accurate classifier g with a robust classifier h.",
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def root() -> None:
    """Adaptive smoothing: mix an accurate classifier g with a robust classifier h (eq. 3.4)."""
