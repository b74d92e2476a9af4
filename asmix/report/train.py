"""Rendering of ``TrainResult`` and ``Comparison``: epoch lines, tables, JSON. Reads results only."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from asmix.report import percent, write_json


def _alpha(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def epoch_line(record, epochs: int) -> str:
    """One line per epoch for the live display."""
    return (f"epoch {record.epoch}/{epochs}  loss {record.train_loss:.4f}  lr {record.lr:.2e}  "
            f"val clean {percent(record.clean_acc)}%  val PGD {percent(record.attacked_acc)}%  "
            f"alpha clean {_alpha(record.alpha_clean)} / attacked {_alpha(record.alpha_attacked)}  "
            f"({record.seconds:.1f}s)")


def history_table(result) -> Table:
    """Training history: loss and validation of the EMA mixer per epoch."""
    config = result.config
    table = Table(title=f"train-mixer · setting {config.setting} · {result.n_train} train / {result.n_val} val · "
                        f"val PGD-{config.val_steps} {config.norm} eps={config.resolved_val_eps:.4g}")
    for column in ("epoch", "loss", "val clean %", "val PGD %", "alpha clean", "alpha attacked",
                   "train alpha clean", "train alpha attacked"):
        table.add_column(column, justify="right")
    for r in result.history:
        table.add_row(str(r.epoch), f"{r.train_loss:.4f}", percent(r.clean_acc), percent(r.attacked_acc),
                      _alpha(r.alpha_clean), _alpha(r.alpha_attacked), _alpha(r.train_alpha_clean),
                      _alpha(r.train_alpha_attacked))
    return table


WEAK_FLOOR_GAP = 0.1
"""Warn when the chosen range's fixed-alpha floor is this far (a fraction) below its PGD accuracy."""


def selection_line(selection) -> str:
    """The alpha range chosen for ``--target-clean-acc``."""
    status = "target met" if selection.met else "target NOT met, most accurate range chosen"
    return (f"alpha range ({selection.alpha_min:.3f}, {selection.alpha_max:.3f}) for clean >= "
            f"{percent(selection.target_clean_acc)}% ({status}): held-out clean {percent(selection.clean_acc)}%, "
            f"PGD {percent(selection.attacked_acc)}% (estimate {percent(selection.estimated_attacked_acc)}%, "
            f"fixed alpha {selection.alpha_min:g} {percent(selection.floor_attacked_acc)}%)"
            + (f"\nwarning: an attack that steers alpha down to {selection.alpha_min:g} faces only "
               f"{percent(selection.floor_attacked_acc)}% robustness; check with `asmix evaluate --attack aa` "
               f"or choose a lower --target-clean-acc"
               if selection.floor_attacked_acc < selection.attacked_acc - WEAK_FLOOR_GAP else ""))


def comparison_table(comparison) -> Table:
    """Adaptive mixer vs the best fixed alpha at equal clean accuracy, same white-box PGD."""
    table = Table(title=f"Adaptive vs fixed alpha · {comparison.n_examples} test examples · white-box "
                        f"PGD-{comparison.steps} {comparison.norm} eps={comparison.eps:.4g}")
    for column in ("model", "clean %", "PGD %", "mean alpha clean", "mean alpha PGD"):
        table.add_column(column, justify="right")
    for row in comparison.rows:
        table.add_row(row.name, percent(row.clean_acc), percent(row.attacked_acc), _alpha(row.alpha_clean),
                      _alpha(row.alpha_attacked), style="bold" if row.alpha is None else None)
    return table


def comparison_markdown(comparison) -> str:
    """The comparison as a markdown table (for notes and the README)."""
    lines = ["| model | clean % | PGD % |", "|---|---:|---:|"]
    lines += [f"| {row.name} | {percent(row.clean_acc)} | {percent(row.attacked_acc)} |" for row in comparison.rows]
    return "\n".join(lines) + "\n"


def write_train_outputs(result, out_dir: str | Path, comparison=None) -> list[Path]:
    """``train_result.json`` (and ``comparison.json``) in ``out_dir``."""
    out_dir = Path(out_dir)
    paths = [write_json(result, out_dir / "train_result.json")]
    if comparison is not None:
        paths.append(write_json(comparison, out_dir / "comparison.json"))
    return paths
