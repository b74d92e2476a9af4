"""The ``asmix`` command line: each command parses options, calls one library function, renders.

Command modules register themselves on ``app`` when imported here.
"""

from __future__ import annotations

import sys

from asmix.cli.app import app
from asmix.cli import sweep  # noqa: F401  (registers sweep-alpha)
from asmix.errors import AsmixError

__all__ = ["app", "main"]


def main() -> None:
    """Console entry point: user errors become one line on stderr and exit code 2, never a traceback."""
    import click

    from asmix.compat import silence_dependency_warnings

    silence_dependency_warnings()
    try:
        app(standalone_mode=False)
    except AsmixError as error:
        print(f"asmix: error: {error}", file=sys.stderr)
        sys.exit(2)
    except click.exceptions.Abort:
        print("asmix: aborted", file=sys.stderr)
        sys.exit(130)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        print("asmix: interrupted", file=sys.stderr)
        sys.exit(130)
