"""``docs/cli.md``: every command and option, written by Typer's documentation generator from the CLI itself.

Regenerate with ``python -m asmix.cli.docs docs/cli.md`` (``REGENERATE``; the same text as
``typer --app app asmix.cli utils docs --name asmix`` under a header); ``tests/test_docs_cli.py`` fails when it is
stale.
"""

from __future__ import annotations

import sys
from pathlib import Path

REGENERATE = "python -m asmix.cli.docs docs/cli.md"
"""The command that writes ``docs/cli.md`` (run in the repository root)."""
HEADER = (
    f"<!-- Generated from the CLI by Typer's documentation generator; do not edit. Regenerate with: {REGENERATE} -->"
)


def cli_markdown() -> str:
    """The markdown of ``typer asmix.cli utils docs --name asmix``, under ``HEADER``: Typer's generator on the app
    object, which renders help records (plain text, no terminal width or colour)."""
    import typer.main
    from typer.cli import MARKUP_MODE_KEY, get_docs_for_click

    from asmix.cli import app

    command = typer.main.get_command(app)
    context = typer.Context(command, obj={MARKUP_MODE_KEY: app.rich_markup_mode})
    docs = get_docs_for_click(obj=command, ctx=context, name="asmix")
    return f"{HEADER}\n\n{docs.strip()}\n"


def main(argv: list[str]) -> None:
    target = Path(argv[0] if argv else "docs/cli.md")
    target.write_text(cli_markdown())
    print(f"wrote {target}")


if __name__ == "__main__":
    main(sys.argv[1:])
