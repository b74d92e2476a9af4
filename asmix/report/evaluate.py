"""Rendering of ``EvalResult``: the Table-2-style accuracy table, the AutoAttack trail, the detector profile, JSON."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from asmix.report import alpha_text, percent

ATTACK_LABELS = {
    "clean": "clean",
    "pgd": "PGD B",
    "pgd-graybox": "gray PGD A",
    "transfer-std": "from g",
    "transfer-rob": "from h",
    "aa": "AA C",
    "aa-adaptive": "adapt. AA D",
}
"""Column titles, with the paper's attack settings A-D (Section 4.2)."""

POINT_LABELS = {
    "clean": "clean",
    "uniform": "uniform start",
    "pgd": "PGD",
    "apgd-ce-alpha": "APGD-CE",
    "apgd-t-alpha": "APGD-T",
    "alpha-first": "alpha-first",
    "square-alpha": "Square",
}
"""Row titles of the detector profile; other point sets (the training attack's rows) keep their own names."""

SHORT_MODEL_LABELS = {"mixed": "h_alpha", "std": "g", "rob": "h"}

UNRELIABLE_MARK = " †"


def model_label(result, name: str) -> str:
    """Row title: h_alpha with its alpha (or mixing network), g and h with their specs."""
    models = result.models
    if name == "mixed":
        if result.adaptive:
            return f"h_alpha ({Path(models['mixer']).name})" if "mixer" in models else "h_alpha (mixer)"
        return f"h_alpha ({result.config.alpha:g})"
    label = "g" if name == "std" else "h"
    return f"{label} ({models[name]})" if name in models else label


def evaluate_table(result) -> Table:
    """One row per model, one column per attack (accuracy in %); † marks AutoAttack's
    "potentially unreliable" flag."""
    config = result.config
    table = Table(
        title=f"Robust accuracy (%) · {result.n_examples} examples · {config.threat.norm} "
        f"eps={config.threat.eps:.4g} · PGD-{config.threat.steps}"
    )
    table.add_column("model")
    for attack in config.attacks:
        table.add_column(ATTACK_LABELS[attack], justify="right")
    for name, cells in result.rows.items():
        values = []
        for attack in config.attacks:
            cell = cells[attack]
            values.append(percent(cell.accuracy) + (UNRELIABLE_MARK if cell.unreliable else ""))
        table.add_row(model_label(result, name), *values, style=None if name == "mixed" else "dim")
    if any(cell.unreliable for cells in result.rows.values() for cell in cells.values()):
        table.caption = "† AutoAttack flags this as potentially unreliable: Square lowered accuracy by >= 0.2 points"
    return table


def trail_table(result) -> Table | None:
    """Accuracy (%) after each AutoAttack stage, one row per (model, AutoAttack column); None without AA."""
    rows = [
        (name, attack, cell)
        for name, cells in result.rows.items()
        for attack, cell in cells.items()
        if cell.trail is not None
    ]
    if not rows:
        return None
    stages = max((tuple(cell.trail) for _, _, cell in rows), key=len)
    table = Table(title="AutoAttack accuracy after each attack (%)")
    table.add_column("model")
    table.add_column("run")
    for stage in stages:
        table.add_column(stage, justify="right")
    table.add_column("flag")
    for name, attack, cell in rows:
        table.add_row(
            SHORT_MODEL_LABELS[name],
            attack,
            *(percent(cell.trail.get(stage)) for stage in stages),
            "unreliable" if cell.unreliable else "ok",
        )
        if name == "mixed" and result.adaptive and cell.trail_alpha:
            table.add_row(
                "", "mean alpha", *(_alpha_text(cell.trail_alpha.get(stage)) for stage in stages), "", style="dim"
            )
    return table


def _alpha_text(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def detector_table(profile, budget: str | None = None) -> Table | None:
    """The detector profile (a ``DetectorProfile``): per kind of point the count, the mean alpha and the AUC of the
    mixer logit against clean inputs; None without one. ``budget`` names its adaptive attacks' budget in the title."""
    if profile is None:
        return None
    table = Table(title="Detector profile" + (f" ({budget} budget)" if budget else ""))
    for name in ("points", "n", "mean alpha", "AUC"):
        table.add_column(name, justify="left" if name == "points" else "right")
    for row in profile.rows:
        table.add_row(
            POINT_LABELS.get(row.points, row.points), str(row.n), alpha_text(row.mean_alpha), f"{row.auc:.3f}"
        )
    table.caption = "AUC: P(mixer logit there > at a clean input); 0.5 is chance"
    return table
