"""The Typer application object that every command module registers on."""

from __future__ import annotations

import os
from typing import Annotated

import typer
from typer.core import TyperCommand, TyperGroup

from asmix.cli.options import ATTACK, DATA, HEAD, MIX_PANEL, MODELS, OUTPUT, RUN, THREAT, TRAINING

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

WORKFLOW = ("sweep-alpha", "calibrate", "train-mixer", "evaluate", "margins", "certify")
"""The commands in the order ``asmix --help`` lists them: the order a study runs them in."""


PANELS = (MODELS, DATA, THREAT, TRAINING, ATTACK, MIX_PANEL, HEAD, None, RUN, OUTPUT)
"""The order of the ``--help`` panels (``asmix.cli.options`` names them); a command's own panels take None's place."""


def _flags_without_type(params: list) -> list:
    """``params`` with each on/off flag shown as ``--x/--no-x`` alone: Typer's rich help would print ``<bool>``
    after it, as if the flag took a value (an empty metavar shows nothing)."""
    for param in params:
        if getattr(param, "is_bool_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


def _panel_rank(param) -> int:
    panel = getattr(param, "rich_help_panel", None)
    return PANELS.index(panel if panel in PANELS else None)


class AsmixCommand(TyperCommand):
    """An asmix command: its options in ``--help`` panels in ``PANELS`` order (``--help`` itself under Run), flags
    without a value type, and its docstring's first paragraph as the one line that lists it."""

    def __init__(self, *args, **settings) -> None:
        super().__init__(*args, **settings)
        self.params.sort(key=_panel_rank)  # stable: within a panel, declaration order
        if self.short_help is None and self.help:  # the docstring's first paragraph, whole (Click cuts it at 45)
            self.short_help = " ".join(self.help.split("\n\n")[0].split())

    def get_help_option(self, ctx):
        option = super().get_help_option(ctx)
        if option is not None:
            option.rich_help_panel = RUN
        return option

    def get_params(self, ctx):
        return _flags_without_type(super().get_params(ctx))


class AsmixGroup(TyperGroup):
    """The ``asmix`` group: commands in workflow order (``WORKFLOW``, then any other), flags without a type."""

    def list_commands(self, ctx) -> list[str]:
        names = super().list_commands(ctx)
        return [name for name in WORKFLOW if name in names] + [name for name in names if name not in WORKFLOW]

    def get_params(self, ctx):
        return _flags_without_type(super().get_params(ctx))


app = typer.Typer(
    name="asmix",
    cls=AsmixGroup,
    help="Adaptive smoothing: mix an accurate classifier g with a robust classifier h.",
    epilog=EXIT_CODES_HELP,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
    add_completion=False,
)


def command(name: str, **settings):
    """Register a command on ``app`` (``app.command`` with ``AsmixCommand``)."""
    return app.command(name, cls=AsmixCommand, **settings)


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
