"""The one exception type a user sees: a message they can act on, shown by the CLI as one line.

``AsmixError`` is bad usage or input (exit 2); its subclass ``RunFailed`` is a run that started and could not
finish for a reason outside its input (exit 1)."""


class AsmixError(Exception):
    """Bad input or an unavailable resource (model, weights, data, device)."""


class RunFailed(AsmixError):
    """A run that failed on its way: a download, a write (disk full, folder gone), memory; the input was fine and
    the same command may succeed once the cause is fixed."""


class AsmixWarning(UserWarning):
    """Something asmix recovered from by itself (a resume part that failed its checks and was recomputed); the CLI
    shows it as one line."""


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type's name where it has none), for a one-line error."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
