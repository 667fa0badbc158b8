"""The table of the add-a-language grid, from the rows `lowres_grid.sh` committed.

Reads `<grid_dir>/<row>/training/` (flags.json, summary.json,
alignment_check.json) and `<grid_dir>/compare_<row>/lowres.json` (the row's
export against the unaligned encoder on the low-resource track, one half of
the test rows) and writes `<grid_dir>/grid.md`, `grid.json` and `grid.png`
(each row's paired difference per headline table, with its 95% interval),
and each row's loss curves to `<grid_dir>/<row>/training/training_curves.png`.

    python benchmarks/lowres_grid_table.py --grid_dir=docs/results/lowres_choose

The choice, fixed in `benchmarks/lowres_grid.sh` before any row was scored:
a row *passes* when no weak language's Tatoeba difference (mean pooling)
has its interval entirely below 0 in either direction and no group average
is below 0 beyond its interval (weak topic; the controls' Tatoeba both ways
and topic). Among passing rows the chosen one has the highest
min(weak Tatoeba XX→en, weak Tatoeba en→XX average difference); a row
within 0.5 points of the best goes before it if it trained in less wall
time. If no row passes, the rows with the fewest failures compete by the
same rule.
"""

import json
import os
import sys

from absl import app, flags

from tf_mbalign.tasks.suite_report import interval_cell
from tf_mbalign.training.metrics_sinks import read_metrics
from tf_mbalign.training.training_curves import TRAINING_CURVES_PNG, plot_training_curves

_GRID_DIR = flags.DEFINE_string("grid_dir", "docs/results/lowres_choose", "The grid's results.")
_ROWS = flags.DEFINE_list("rows", ["recipe", "contrastive", "anchor_contrastive", "anchor_only",
                                   "anchor_contrastive_mixed"],
                          "Rows in table order (missing ones skipped).")

# (group, track table, heading) of the columns, in order.
COLUMNS = (
    ("weak", "tatoeba_mean_xx_to_en", "weak Tatoeba XX→en"),
    ("weak", "tatoeba_mean_en_to_xx", "weak Tatoeba en→XX"),
    ("weak", "flores_mean_xx_to_en", "weak FLORES XX→en"),
    ("weak", "flores_mean_en_to_xx", "weak FLORES en→XX"),
    ("weak", "topic", "weak topic"),
    ("control", "tatoeba_mean_xx_to_en", "control Tatoeba XX→en"),
    ("control", "tatoeba_mean_en_to_xx", "control Tatoeba en→XX"),
    ("control", "topic", "control topic"),
)
# The criterion's two tables; the per-language guard runs on them too.
CRITERION = (("weak", "tatoeba_mean_xx_to_en"), ("weak", "tatoeba_mean_en_to_xx"))
# Group averages that must not fall below 0 beyond their interval.
GUARDED_AVERAGES = (("weak", "topic"), ("control", "tatoeba_mean_xx_to_en"),
                    ("control", "tatoeba_mean_en_to_xx"), ("control", "topic"))
CHEAPER_WITHIN = 0.5  # points
# Flags that name where a run went, not what it did.
_NOT_SETTINGS = {"model_dir", "quiet", "checkpoint_default_sources"}


def read_row(grid_dir, row):
    """Everything the table needs of one row, or None when not finished."""
    training = os.path.join(grid_dir, row, "training")
    compare = os.path.join(grid_dir, f"compare_{row}", "lowres.json")
    if not (os.path.exists(compare) and os.path.exists(os.path.join(training, "summary.json"))):
        return None
    with open(compare) as f:
        track = json.load(f)
    return {"row": row, "flags": _read_json(training, "flags.json"),
            "summary": _read_json(training, "summary.json"), "track": track}


def _read_json(directory, name):
    path = os.path.join(directory, name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def column_cells(track, group, table_name):
    """The group's averages (unaligned, aligned), their difference, and the
    languages whose difference interval lies below / above 0."""
    table = track["groups"][group][table_name]
    unaligned, aligned = (encoder["non_english_average"] for encoder in table["encoders"])
    difference = table["difference"]
    return {"unaligned": unaligned, "aligned": aligned,
            "difference": difference["non_english_average"],
            "worse": difference["worse"], "up": difference["up"],
            "compared": difference["compared"]}


def failures(columns):
    """The choice rule's failures of one row: weak languages worse on the
    criterion's tables, guarded averages below 0 beyond their interval."""
    found = [f"{group} {table}: {language}" for group, table in CRITERION
             for language in columns[(group, table)]["worse"]]
    found += [f"{group} {table} average" for group, table in GUARDED_AVERAGES
              if columns[(group, table)]["difference"]["high"] < 0]
    return found


def criterion(columns):
    """min over the criterion's tables of the average difference, in points."""
    return round(min(100 * columns[key]["difference"]["mean"] for key in CRITERION), 2)


def choose(records):
    """The chosen record by the grid's rule (module docstring)."""
    fewest = min(len(r["failures"]) for r in records)
    candidates = [r for r in records if len(r["failures"]) == fewest]
    best = max(r["criterion"] for r in candidates)
    close = [r for r in candidates if r["criterion"] >= best - CHEAPER_WITHIN]
    return min(close, key=lambda r: r["wall_seconds"])


def row_record(row, reference_flags):
    """One row of grid.json."""
    summary = row["summary"]
    steps = summary["steps"]
    columns = {(group, table): column_cells(row["track"], group, table)
               for group, table, _ in COLUMNS}
    return {
        "row": row["row"],
        "flags": flag_difference(row["flags"], reference_flags),
        "head_warmup_steps": steps["head_warmup"]["done"],
        "encoder_steps": steps["encoder"]["done"],
        "wall_seconds": summary["wall_seconds"],
        "columns": {f"{group}/{table}": cells for (group, table), cells in columns.items()},
        "failures": failures(columns),
        "criterion": criterion(columns),
        "track_wall_seconds": row["track"]["wall_seconds"],
    }


def flag_difference(flags_used, reference):
    """`--name=value` for every setting that differs from the first row."""
    return [f"--{name}={_flag_value(value)}" for name, value in sorted(flags_used.items())
            if name not in _NOT_SETTINGS and reference.get(name) != value]


def _flag_value(value):
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def markdown(records, chosen):
    """The grid as a Markdown table: the unaligned model's levels first, then
    one line per row (differences, points)."""
    heads = ["row", "flags (vs the first row)", "steps (warm-up + encoder)", "training wall time"]
    heads += [f"{title} Δ [95%]" for _, _, title in COLUMNS]
    heads += ["min Δ Tatoeba (the choice)", "failures of the rule"]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    first = records[0]
    levels = [interval_cell(first["columns"][f"{group}/{table}"]["unaligned"])
              for group, table, _ in COLUMNS]
    lines.append("| unaligned | e5-small as published | 0 | 0 | "
                 + " | ".join(f"{cell} (level)" for cell in levels) + " | 0 | — |")
    for record in records:
        cells = []
        for group, table, _ in COLUMNS:
            column = record["columns"][f"{group}/{table}"]
            cell = interval_cell(column["difference"], signed=True)
            if column["worse"]:
                cell += f" (worse: {', '.join(column['worse'])})"
            cells.append(cell)
        name = f"**{record['row']}** (chosen)" if record is chosen else record["row"]
        lines.append(
            f"| {name} | {' '.join(record['flags']) or '—'} | "
            f"{record['head_warmup_steps']} + {record['encoder_steps']} | "
            f"{record['wall_seconds'] / 60:.1f} min | " + " | ".join(cells) + " | "
            + f"{record['criterion']:+.2f} | " + ("; ".join(record["failures"]) or "none") + " |")
    return "\n".join(lines) + "\n"


def plot(records, path):
    """Each row's difference from the unaligned model per column, with intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 4, figsize=(16, 0.5 * len(records) + 5), sharey=True)
    for axis, (group, table, title) in zip(axes.flat, COLUMNS):
        for position, record in enumerate(records):
            d = record["columns"][f"{group}/{table}"]["difference"]
            axis.errorbar(100 * d["mean"], position, fmt="o", color="C0",
                          xerr=[[100 * (d["mean"] - d["low"])], [100 * (d["high"] - d["mean"])]])
        axis.axvline(0, color="grey", lw=1)
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("aligned − unaligned (points)")
    for axis in axes[:, 0]:
        axis.set_yticks(range(len(records)), [r["row"] for r in records])
    axes[0, 0].invert_yaxis()
    figure.suptitle("The add-a-language grid: averages vs unaligned e5-small "
                    "(mean pooling, 95% intervals)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv):
    del argv
    rows = [row for row in (read_row(_GRID_DIR.value, name) for name in _ROWS.value) if row]
    if not rows:
        print(f"no finished rows in {_GRID_DIR.value}", file=sys.stderr)
        return 1
    records = [row_record(row, rows[0]["flags"]) for row in rows]
    chosen = choose(records)
    for row in rows:
        training = os.path.join(_GRID_DIR.value, row["row"], "training")
        plot_training_curves(read_metrics(training), os.path.join(training, TRAINING_CURVES_PNG),
                             title=f"grid row {row['row']}",
                             negatives=(row["flags"] or {}).get("contrastive_negatives"))
    with open(os.path.join(_GRID_DIR.value, "grid.json"), "w") as f:
        json.dump({"rows": records, "chosen": chosen["row"]}, f, indent=1)
    table = markdown(records, chosen)
    with open(os.path.join(_GRID_DIR.value, "grid.md"), "w") as f:
        f.write(table)
    plot(records, os.path.join(_GRID_DIR.value, "grid.png"))
    print(table)
    print(f"chosen on this half: {chosen['row']} (min Δ Tatoeba {chosen['criterion']:+.2f} points, "
          f"{len(chosen['failures'])} failures of the rule)")
    return 0


if __name__ == "__main__":
    app.run(main)
