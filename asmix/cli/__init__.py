"""The ``asmix`` command line: each command parses options, calls one library function, renders.

Command modules register themselves on ``app`` when imported here.
"""

from __future__ import annotations

import sys
import traceback
import warnings

from asmix.cli import (  # noqa: F401  (registers certify, margins)
    calibrate,  # noqa: F401  (registers calibrate)
    certify,
    evaluate,  # noqa: F401  (registers evaluate)
    margins,
    sweep,  # noqa: F401  (registers sweep-alpha)
    train,  # noqa: F401  (registers train-mixer)
)
from asmix.cli.app import DEBUG_ENV, app, debug_enabled, set_debug
from asmix.errors import AsmixError, AsmixWarning, first_line

__all__ = ["app", "main"]


def main() -> None:
    """Console entry point: every error becomes one line on stderr and exit code 2, never a traceback (unless
    ``--debug`` or ``$ASMIX_DEBUG=1`` asks for it); an ``AsmixWarning`` is one line too.

    Usage errors (unknown option, bad value type) are reported by Typer itself, also with exit code 2.
    """
    from asmix.compat import silence_dependency_warnings
    from asmix.provenance import mark_start

    mark_start()
    set_debug(False)
    with warnings.catch_warnings():
        silence_dependency_warnings()
        warnings.simplefilter("always", AsmixWarning)
        warnings.showwarning = _warning_line(warnings.showwarning)
        try:
            app()
        except KeyboardInterrupt:
            print("asmix: interrupted", file=sys.stderr)
            sys.exit(130)
        except Exception as error:  # an AsmixError, or a bug (or an input no check caught yet): one line either way
            if debug_enabled():
                traceback.print_exc()
            print(f"asmix: error: {error_line(error)}", file=sys.stderr)
            sys.exit(2)


def error_line(error: Exception) -> str:
    """An ``AsmixError``'s message; for any other exception its type and first line, and how to see more."""
    if isinstance(error, AsmixError):
        return str(error)
    hint = "" if debug_enabled() else f"; rerun with --debug (or {DEBUG_ENV}=1) for the traceback"
    return f"unexpected {type(error).__name__}: {first_line(error)}{hint}"


def _warning_line(show):
    """``warnings.showwarning`` that prints an ``AsmixWarning`` as ``asmix: warning: MESSAGE`` and hands others on."""

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, AsmixWarning):
            print(f"asmix: warning: {message}", file=sys.stderr)
        else:
            show(message, category, filename, lineno, file, line)

    return showwarning
