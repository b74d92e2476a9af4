"""The ``asmix`` command line: each command parses options, calls one library function, renders.

Command modules register themselves on ``app`` when imported here.
"""

from __future__ import annotations

import sys

from asmix.cli import (  # noqa: F401  (registers certify, margins)
    calibrate,  # noqa: F401  (registers calibrate)
    certify,
    evaluate,  # noqa: F401  (registers evaluate)
    margins,
    sweep,  # noqa: F401  (registers sweep-alpha)
    train,  # noqa: F401  (registers train-mixer)
)
from asmix.cli.app import app
from asmix.errors import AsmixError

__all__ = ["app", "main"]


def main() -> None:
    """Console entry point: user errors become one line on stderr and exit code 2, never a traceback.

    Usage errors (unknown option, bad value type) are reported by Typer itself, also with exit code 2.
    """
    from asmix.compat import silence_dependency_warnings
    from asmix.provenance import mark_start

    mark_start()
    silence_dependency_warnings()
    try:
        app()
    except AsmixError as error:
        print(f"asmix: error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("asmix: interrupted", file=sys.stderr)
        sys.exit(130)
