"""Environment shims, in one place. Each says why it exists."""

from __future__ import annotations

import importlib
import os
import sys
import types
import warnings

from asmix.errors import AsmixError


def autoattack_package() -> types.ModuleType:
    """The AutoAttack package, imported on first use under whichever name is installed (``autoattack`` from
    GitHub, ``pyautoattack`` from the registry), without aliasing anything in ``sys.modules``."""
    for name in ("autoattack", "pyautoattack"):
        if name in sys.modules:
            return sys.modules[name]
    for name in ("autoattack", "pyautoattack"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise AsmixError("AutoAttack is not installed: pip install pyautoattack")


def register_autoattack() -> types.ModuleType:
    """Make ``import autoattack`` work and return the module: only for RobustBench.

    RobustBench 1.1.1 imports ``autoattack`` but the registry package that provides AutoAttack,
    ``pyautoattack``, installs it under that other name. ``import_robustbench`` aliases it (and the
    submodules RobustBench imports) right before RobustBench is imported; asmix's own attacks use
    ``autoattack_package`` and leave ``sys.modules`` alone.
    """
    package = autoattack_package()
    if "autoattack" in sys.modules:
        return sys.modules["autoattack"]
    sys.modules["autoattack"] = package
    for submodule in ("autoattack", "autopgd_base", "fab_pt", "square", "state", "checks", "other_utils"):
        try:
            sys.modules[f"autoattack.{submodule}"] = importlib.import_module(f"pyautoattack.{submodule}")
        except ImportError:
            continue
    return package


def import_robustbench() -> types.ModuleType:
    """Import RobustBench after the AutoAttack alias is in place (it needs ``pkg_resources`` too,
    hence ``setuptools<81`` in the dependencies)."""
    register_autoattack()
    try:
        with warnings.catch_warnings():  # robustbench's own pkg_resources deprecation notice
            warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
            warnings.filterwarnings("ignore", message=".*torch.jit.interface.* is deprecated", category=FutureWarning)
            return importlib.import_module("robustbench")
    except ImportError as error:
        raise AsmixError(
            f"RobustBench cannot be imported ({error}); pip install robustbench 'setuptools<81'"
        ) from error


def torch_load_unpickles() -> str | None:
    """Why ``torch.load`` without ``weights_only``, as RobustBench 1.1.1 calls it, would unpickle arbitrary objects
    here (torch before 2.6, or ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` set); None where it reads only tensors."""
    import torch

    if torch.__version__ < "2.6":
        return f"torch {torch.__version__} unpickles by default (weights_only is the default from torch 2.6)"
    if os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "").strip().lower() in ("1", "y", "yes", "true"):
        return "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is set, so torch.load unpickles by default"
    return None


def silence_dependency_warnings() -> None:
    """Hide deprecation notices that dependencies raise on import (timm and RobustBench touch
    ``torch.jit.interface`` and ``pkg_resources``); users cannot act on them. Called by the CLI only."""
    warnings.filterwarnings("ignore", message=".*torch.jit.interface.* is deprecated", category=FutureWarning)
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
