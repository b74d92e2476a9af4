"""``--config FILE``: rerun an experiment from the ``config`` block of any asmix JSON output (or a YAML file with
the same keys); options given on the command line override it. A file replays settings, never consent or output
paths."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import click
import typer

from asmix.errors import AsmixError, first_line

ALIASES = {"attacks": "attack", "width": "mixer_width", "blocks": "mixer_blocks", "stages": "mixer_stages"}
"""Config keys whose command-line option has another name."""

BLOCKS = ("threat", "mix", "run")
"""The settings blocks of a config (``ThreatModel``, ``MixSettings``, ``RunSettings``), spread into options."""

BLOCK_ALIASES = {
    "calibrate": {"threat.steps": "aa_steps"},
    "train-mixer": {"threat.eps": "eps_max", "threat.steps": "val_steps"},
}
"""Per command, block settings whose command-line option has another name."""

NOT_REPLAYED = ("trust_code", "out", "json", "json_path", "report", "robustbench")
"""Keys a config file never sets: consent to run code (only the person at the keyboard gives it) and output paths
(a file must not choose what gets written or overwritten)."""


def read_config_block(path: Path) -> dict[str, Any]:
    """The settings in ``path``: the ``config`` block of an asmix result, or the whole mapping of a YAML or JSON
    file of settings."""
    try:
        text = path.read_text()
    except OSError as error:
        raise AsmixError(f"cannot read config {path}: {error.strerror or error}") from error
    except UnicodeDecodeError as error:
        raise AsmixError(f"cannot read config {path}: not UTF-8 text ({first_line(error)})") from error
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            document = yaml.safe_load(text)
        else:
            document = json.loads(text)
    except Exception as error:  # json.JSONDecodeError, yaml.YAMLError
        raise AsmixError(f"cannot read config {path}: {first_line(error)}") from error
    block = document.get("config", document) if isinstance(document, dict) else None
    if not isinstance(block, dict):
        raise AsmixError(f"config {path} holds no mapping of settings (an asmix JSON output or a YAML of its keys)")
    return block


def as_option_value(name: str, value: Any) -> Any:
    """A config value as the command line would spell it: ranges ``LOW:HIGH``, lists comma-separated."""
    if isinstance(value, (list, tuple)):
        return ":".join(map(str, value)) if name.endswith("_range") else ",".join(map(str, value))
    return value


def _flat_settings(block: dict[str, Any], command: str | None) -> dict[str, Any]:
    """The block's settings by option name: the settings blocks (``threat``, ``mix``, ``run``) spread, as are the
    flat settings of earlier asmix outputs."""
    flat = {key: value for key, value in block.items() if key not in BLOCKS or not isinstance(value, dict)}
    renames = BLOCK_ALIASES.get(command or "", {})
    for group in BLOCKS:
        settings = block.get(group)
        if isinstance(settings, dict):
            for key, value in settings.items():
                flat[renames.get(f"{group}.{key}", key)] = value
    return flat


def ignored_settings(block: dict[str, Any], command: str | None = None) -> list[str]:
    """The keys of ``NOT_REPLAYED`` that the block sets, which ``config_defaults`` leaves out."""
    flat = _flat_settings(block, command)
    return [key for key in NOT_REPLAYED if flat.get(key) is not None]


def config_defaults(block: dict[str, Any], parameters: set[str], command: str | None = None) -> dict[str, Any]:
    """The block's settings that name an option of this command: the settings blocks (``threat``, ``mix``,
    ``run``) spread into their options, as are the flat settings of earlier asmix outputs, and base-model specs
    from ``models``; keys the command does not take (computed values, another command's settings) are left
    out, as are consent and output paths (``NOT_REPLAYED``)."""
    flat = _flat_settings(block, command)
    models = flat.pop("models", None)
    if isinstance(models, dict):
        for role in ("std", "rob", "mixer"):
            if models.get(role) is not None:
                flat.setdefault(role, models[role])
    defaults = {}
    for key, value in flat.items():
        name = ALIASES.get(key, key) if ALIASES.get(key) in parameters else key
        if name in parameters and name not in (*NOT_REPLAYED, "config_file") and value is not None:
            defaults[name] = as_option_value(name, value)
    return defaults


def _load(ctx: click.Context, parameter: click.Parameter, value: Optional[Path]) -> Optional[Path]:
    if value is None:
        return None
    block = read_config_block(Path(value))
    names = {param.name for param in ctx.command.params}
    ctx.default_map = {**(ctx.default_map or {}), **config_defaults(block, names, ctx.command.name)}
    ignored = ignored_settings(block, ctx.command.name)
    if ignored:
        from asmix.cli.options import console
        from asmix.distributed import is_main_process

        if is_main_process():
            console.print(
                f"note: --config {value}: ignored {', '.join(ignored)} (consent and output paths come only from the "
                "command line: --trust-code, --out, --json, --report, --robustbench)",
                highlight=False,
                soft_wrap=True,
            )
    return value


ConfigOption = Annotated[
    Optional[Path],
    typer.Option(
        "--config",
        rich_help_panel="Run",
        callback=_load,
        is_eager=True,
        help="Take every setting from this file: the config block of an asmix JSON output, or a YAML of the same keys. "
        "Options given on the command line override it. Consent (--trust-code) and output paths (--out, --json, "
        "--report, --robustbench) are never taken from it.",
    ),
]
