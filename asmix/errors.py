"""The one exception type a user sees: a message they can act on, shown by the CLI as one line."""


class AsmixError(Exception):
    """Bad input or an unavailable resource (model, weights, data, device)."""


class AsmixWarning(UserWarning):
    """Something asmix recovered from by itself (a resume part that failed its checks and was recomputed); the CLI
    shows it as one line."""


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type's name where it has none), for a one-line error."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
