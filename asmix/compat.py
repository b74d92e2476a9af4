"""Environment shims and dependency checks, in one place. Each says why it exists."""

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


HF_HUB_REQUIREMENT = "huggingface_hub>=0.34,<2"
"""The huggingface_hub versions timm 1.0.9 works with: 2.0 removed ``repo_type_and_id_from_hf_id``, which timm's hub
module imports (it then treats the hub as not installed); 0.34 brought the ``hf`` command. Also in pyproject.toml."""

TIMM_HUB_IMPORTS = (
    "create_repo",
    "get_hf_file_metadata",
    "hf_hub_download",
    "hf_hub_url",
    "repo_type_and_id_from_hf_id",
    "upload_folder",
)
"""What timm 1.0.9's ``timm/models/_hub.py`` imports from huggingface_hub."""


def timm_hub_problem() -> str | None:
    """Why timm cannot read the Hugging Face hub here (huggingface_hub missing, or a version whose names timm's
    hub module fails to import); None where it can."""
    from timm.models import _hub  # private: the flag timm sets when its import of huggingface_hub failed

    if getattr(_hub, "_has_hf_hub", True):
        return None
    try:
        import huggingface_hub
    except ImportError:
        return f"huggingface_hub is not installed: pip install '{HF_HUB_REQUIREMENT}'"
    missing = [name for name in TIMM_HUB_IMPORTS if not hasattr(huggingface_hub, name)]
    lacks = f" lacks {', '.join(missing)}, which timm imports" if missing else " does not import in timm"
    import timm

    return (
        f"huggingface_hub {huggingface_hub.__version__}{lacks}, so timm {timm.__version__} cannot use the hub: "
        f"pip install '{HF_HUB_REQUIREMENT}'"
    )


def hf_cache_dir() -> str:
    """The local Hugging Face hub cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ~/.cache/huggingface/hub)."""
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def hf_download_command(repo_id: str) -> str:
    """The command that puts a Hugging Face repository in the local cache (huggingface_hub's ``hf`` CLI)."""
    return f"hf download {repo_id}"
