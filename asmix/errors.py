"""The one exception type a user sees: a message they can act on, shown by the CLI as one line."""


class AsmixError(Exception):
    """Bad input or an unavailable resource (model, weights, data, device)."""
