"""The Typer application object that every command module registers on."""

from __future__ import annotations

import os
from typing import Annotated

import typer

DEBUG_ENV = "ASMIX_DEBUG"
EXIT_FAILED = 1
"""A run that started and failed: a download, a write (disk full), out of memory, an attack that crashed."""
EXIT_USAGE = 2
"""Bad usage or input: an unknown option, a value out of range, a missing or unreadable file."""
EXIT_INTERRUPTED = 130
"""Ctrl-C (SIGINT), as shells report it."""
EXIT_CODES_HELP = (
    f"Exit codes: 0 done; {EXIT_FAILED} the run failed (download, disk full, out of memory, a crash); "
    f"{EXIT_USAGE} bad usage or input; {EXIT_INTERRUPTED} interrupted (Ctrl-C). Errors are one line on stderr; "
    f"--debug adds the traceback."
)
_debug = {"on": False}

app = typer.Typer(
    name="asmix",
    help="Adaptive smoothing: mix an accurate classifier g with a robust classifier h.",
    epilog=EXIT_CODES_HELP,
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
