"""Deprecated name of ``asmix.radii`` (the certified-radius formulas), kept importable for one release; the
certify experiment is ``asmix.experiments.certify``."""

import warnings

from asmix.radii import *  # noqa: F403

warnings.warn(
    "asmix.certify is deprecated: import the certified-radius formulas from asmix.radii "
    "(the certify experiment is asmix.experiments.certify)",
    DeprecationWarning,
    stacklevel=2,
)
