"""The ``asmix`` command line: each command parses options, calls one library function, renders.

Exit codes: 0 done; 2 bad usage or input (an unknown option, a bad value, a missing file), found before the work
where it can be; 1 a run that failed (a download, a write on a full disk, out of memory, an attack that crashed);
130 interrupted (Ctrl-C). Each error is one line on stderr (``--debug`` or ``$ASMIX_DEBUG=1`` adds the traceback).

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
from asmix.cli.app import DEBUG_ENV, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, app, debug_enabled, set_debug
from asmix.errors import AsmixError, AsmixWarning, RunFailed, first_line

__all__ = ["EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_USAGE", "app", "exit_code", "main"]


def main() -> None:
    """Console entry point: every error becomes one line on stderr and its exit code (``EXIT_USAGE``,
    ``EXIT_FAILED``, ``EXIT_INTERRUPTED``), never a traceback (unless ``--debug`` or ``$ASMIX_DEBUG=1`` asks for
    it); an ``AsmixWarning`` is one line too.

    Usage errors (unknown option, bad value type) are reported by Typer itself, also with exit code 2; Typer turns
    Ctrl-C into exit code 130, which gets its line here.
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
            _interrupted()
        except SystemExit as stop:
            if stop.code == EXIT_INTERRUPTED:
                _interrupted()
            raise
        except Exception as error:  # an AsmixError, a failed run, or a bug: one line either way
            if debug_enabled():
                traceback.print_exc()
            print(f"asmix: error: {error_line(error)}", file=sys.stderr)
            sys.exit(exit_code(error))


def _interrupted() -> None:
    print("asmix: interrupted", file=sys.stderr)
    sys.exit(EXIT_INTERRUPTED)


def exit_code(error: Exception) -> int:
    """``EXIT_USAGE`` for bad usage or input (an ``AsmixError``), ``EXIT_FAILED`` for anything else: a
    ``RunFailed``, running out of memory or disk, an attack or model that crashed."""
    if isinstance(error, AsmixError) and not isinstance(error, RunFailed):
        return EXIT_USAGE
    return EXIT_FAILED


def error_line(error: Exception) -> str:
    """An ``AsmixError``'s message; out of memory or an ``OSError`` as what to do about it; for any other
    exception its type and first line, and how to see more."""
    if isinstance(error, AsmixError):
        return str(error)
    if _out_of_memory(error):
        where = "on the GPU" if "cuda" in str(error).lower() else "in main memory"
        return f"out of memory {where}: rerun with a smaller --batch-size"
    if isinstance(error, OSError) and error.strerror:
        return f"{error.strerror}: {error.filename}" if error.filename else error.strerror
    hint = "" if debug_enabled() else f"; rerun with --debug (or {DEBUG_ENV}=1) for the traceback"
    return f"unexpected {type(error).__name__}: {first_line(error)}{hint}"


def _out_of_memory(error: Exception) -> bool:
    """torch's ``OutOfMemoryError`` (CUDA), Python's ``MemoryError``, or the CPU allocator's ``RuntimeError``."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(error, getattr(torch, "OutOfMemoryError", ())):
        return True
    return isinstance(error, MemoryError) or (
        isinstance(error, RuntimeError) and "DefaultCPUAllocator: can't allocate memory" in str(error)
    )


def _warning_line(show):
    """``warnings.showwarning`` that prints an ``AsmixWarning`` as ``asmix: warning: MESSAGE`` and hands others on."""

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, AsmixWarning):
            print(f"asmix: warning: {message}", file=sys.stderr)
        else:
            show(message, category, filename, lineno, file, line)

    return showwarning
