"""Rendering of ``CalibrateResult``: the choice table, the verification table, the calibration JSON and
the trade-off plot (clean accuracy against the calibration-set robust estimate, one curve per family)."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from asmix.report import new_figure, percent, save_figure, write_json
from asmix.report.train import head_text

CALIBRATION_FILE = "calibration.json"
PLOT_FILE = "calibration_tradeoff.png"


def _map_text(family) -> str:
    choice = family.choice
    if choice.mixer is not None:
        return f"mixer {head_text(choice.mixer.head)}"
    rob = (
        "h"
        if choice.rob_map is None
        else (f"s={choice.rob_map.scale:.3g} p={choice.rob_map.power:.3g} c={choice.rob_map.clamp_bias:.3g}")
    )
    scales = "" if choice.scales == (1.0, 1.0) else f", scales g {choice.std_scale:g} / h {choice.rob_scale:g}"
    return ("hard-max g, " if choice.std_temperature == 0 else "") + rob + scales


def target_levels_table(choice) -> Table:
    """``calibrate``'s frontier without a target: per clean level, the tempered fixed alpha's and MixedNUTS's robust
    estimates and the gain, the chosen level marked."""
    table = Table(title="Target chosen by gain: MixedNUTS against the tempered fixed alpha of equal clean accuracy")
    for column in ("clean target", "tempered fixed", "MixedNUTS", "gain (points)", ""):
        table.add_column(column, justify="right")
    for level in choice.levels:
        mark = "chosen" if level.target == choice.target else ""
        table.add_row(
            percent(level.target), percent(level.tempered), percent(level.nuts), f"{100 * level.gain:+.2f}", mark
        )
    return table


def calibrate_table(result) -> Table:
    """Each family's choice with its clean accuracy and robust estimate on the calibration examples."""
    config = result.config
    table = Table(
        title=f"Calibration · {result.n_examples} examples · target clean {100 * config.target_clean_acc:.2f}% · "
        f"{config.threat.norm} eps={config.threat.eps:.4g} · h's min-margin APGD-{config.threat.steps}"
    )
    for column in ("family", "alpha", "map", "clean", "robust est.", "target met", "search s"):
        table.add_column(column, justify="right")
    base = result.base
    table.add_row("g alone", "0", "", percent(base["std_clean"]), "-", "", "", style="dim")
    table.add_row("h alone", "1", "", percent(base["rob_clean"]), percent(base["rob_attacked"]), "", "", style="dim")
    for name, family in result.families.items():
        table.add_row(
            name,
            f"{family.choice.alpha:.4f}",
            _map_text(family),
            percent(family.clean),
            percent(family.robust_estimate),
            "yes" if family.meets_target else "NO",
            f"{family.seconds:.2f}",
        )
    timing = result.timing
    table.caption = (
        f"forward pass of g and h: {timing['forward_g_h']:.2f} s · min-margin attack on h: "
        f"{timing['attack_h']:.1f} s · searches run no model · robust est.: Lemma 3.2 on h's worst case"
    )
    if "mixer" in result.families:
        table.caption += (
            f"; mixer: right on every AutoAttack-lite input through it (attack {timing['attack_mixer']:.0f} s, "
            f"one forward of g, h and the mixer over them {timing['forward_mixer']:.2f} s)"
        )
    return table


def verify_table(result) -> Table | None:
    """The estimate beside standard AutoAttack on examples not used for the choice."""
    if not result.verification:
        return None
    n = result.verification[0].n
    table = Table(
        title=f"Verification · AutoAttack (adaptive for the mixer) · {n} examples not used for the choice",
        caption="broken: examples each stage broke that the stages before it left",
    )
    for column in ("family", "clean est.", "clean", "robust est.", "AutoAttack", "broken", "seconds"):
        table.add_column(column, justify="right")
    for row in result.verification:
        table.add_row(
            row.family,
            percent(row.estimate_clean),
            percent(row.clean),
            percent(row.estimate_robust),
            percent(row.autoattack),
            broken_text(row),
            f"{row.seconds:.0f}",
        )
    return table


def broken_text(row) -> str:
    """``apgd-ce 3, apgd-t 1, square 1 of 30 clean-right``: the stages that broke any example, with counts."""
    clean = round(row.trail["clean"] * row.n)
    parts = [f"{stage} {count}" for stage, count in row.broken.items() if count]
    return f"{', '.join(parts) or 'none'} of {clean}"


def plot_calibration(result, path: str | Path) -> Path:
    """Clean accuracy vs robust estimate for each family (over alpha; for the mixer, the frontier of its
    candidate heads), the choices marked."""
    figure, axes = new_figure()
    labels = {
        "linear": "fixed alpha (eq. 3.4)",
        "tempered": "tempered fixed alpha (best logit scales)",
        "nuts": "MixedNUTS map",
        "mixer": "trained mixer, heads (AutoAttack-lite estimate)",
    }
    for name, curve in result.curves.items():
        (line,) = axes.plot(
            [100 * v for v in curve["clean"]],
            [100 * v for v in curve["robust_estimate"]],
            marker=".",
            markersize=2,
            linewidth=1,
            label=labels.get(name, name),
        )
        family = result.families[name]
        axes.plot(
            [100 * family.clean], [100 * family.robust_estimate], marker="*", markersize=12, color=line.get_color()
        )
    axes.axvline(100 * result.config.target_clean_acc, color="gray", linestyle="--", linewidth=1, label="target")
    low = min(min(c["clean"]) for c in result.curves.values())
    axes.set_xlim(100 * max(low, result.config.target_clean_acc - 0.05) - 0.5, None)
    axes.set_xlabel("clean accuracy (%), calibration examples")
    axes.set_ylabel(
        "robust estimate (%): Lemma 3.2 on h's worst case"
        + ("; mixer: AutoAttack-lite" if "mixer" in result.curves else "")
    )
    axes.grid(alpha=0.3)
    axes.legend()
    axes.set_title("Trade-off of each family over alpha (stars: the choices)")
    return save_figure(figure, path)


def write_calibration_outputs(result, out_dir: str | Path) -> list[Path]:
    """``calibration.json`` (read by ``--calibration``) and the trade-off plot into ``out_dir``."""
    out_dir = Path(out_dir)
    return [write_json(result, out_dir / CALIBRATION_FILE), plot_calibration(result, out_dir / PLOT_FILE)]
