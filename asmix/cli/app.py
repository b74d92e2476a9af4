"""The Typer application object that every command module registers on."""

from __future__ import annotations

import os
from typing import Annotated

import typer

DEBUG_ENV = "ASMIX_DEBUG"
_debug = {"on": False}

app = typer.Typer(
    name="asmix",
    help="Adaptive smoothing: mix an accurate classifier g with a robust classifier h.",
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
    add_completion=False,
)


def examples(*commands: str) -> str:
    """A command's ``--help`` epilog: two or three example command lines (markdown code)."""
    return "Examples:\n\n" + "\n\n".join(f"`{command}`" for command in commands)


def debug_enabled() -> bool:
    """Whether an error also prints its traceback: ``asmix --debug`` or ``$ASMIX_DEBUG=1`` (for bug reports)."""
    return _debug["on"] or os.environ.get(DEBUG_ENV, "").strip() == "1"


def set_debug(value: bool) -> None:
    _debug["on"] = bool(value)


def _print_version(value: bool) -> None:
    if value:
        from asmix.provenance import version_line

        typer.echo(version_line())
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the versions of asmix, torch, timm, robustbench and pyautoattack, and exit.",
        ),
    ] = False,
    debug: Annotated[
        bool,
        typer.Option(
            "--debug",
            help=f"On an error, print the traceback before its one-line message, for bug reports (or {DEBUG_ENV}=1).",
        ),
    ] = False,
) -> None:
    """Adaptive smoothing: mix an accurate classifier g with a robust classifier h (eq. 3.4)."""
    set_debug(debug)
