"""The Typer application object that every command module registers on."""

from __future__ import annotations

from typing import Annotated

import typer

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
) -> None:
    """Adaptive smoothing: mix an accurate classifier g with a robust classifier h (eq. 3.4)."""
