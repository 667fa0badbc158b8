"""The table of the recipe grid (ablations), from the rows `recipe_grid.sh` committed.

Reads `<grid_dir>/<row>/training/` (flags.json, summary.json,
alignment_check.json) and `<grid_dir>/compare_<row>/suite.json` (the row's
export against the unaligned encoder on one half of the test rows) and
writes `<grid_dir>/grid.md`, `grid.json` and `grid.png` (each row's paired
difference per task, with its 95% interval), and each row's loss and
accuracy curves to `<grid_dir>/<row>/training/training_curves.png`.

    python benchmarks/recipe_grid_table.py --grid_dir=docs/results/grid_choose

A row's flags are shown as their difference from the reference row
(`--reference`, the paper's TLM + MoCo); the reference row shows its own.

The choice: the row with the highest mean of the fine-tuned zero-shot tasks'
differences (non-English averages of NLI and POS, `CRITERION_TASKS`), the
transfer the method promises; retrieval improves in every row and is
reported, not chosen on. Fixed on 2026-12-02 at 05:27 UTC, after three rows
(tlm_moco, moco_only, in_batch) had been scored, before the others were.
"""

import json
import os
import sys

from absl import app, flags

from tf_mbalign.tasks.suite_report import interval_cell
from tf_mbalign.training.metrics_sinks import read_metrics
from tf_mbalign.training.training_curves import TRAINING_CURVES_PNG, plot_training_curves

_GRID_DIR = flags.DEFINE_string("grid_dir", "docs/results/grid_choose", "The grid's results.")
_REFERENCE = flags.DEFINE_string("reference", "tlm_moco", "The row other rows' flags are "
                                 "shown against.")
_ROWS = flags.DEFINE_list("rows", ["tlm_moco", "moco_only", "in_batch", "no_shuffle",
                                   "in_batch_only", "warmup200"],
                          "Rows in table order (missing ones skipped).")

# (suite table, heading) of the columns, in order.
TASKS = (("nli", "NLI"), ("pos", "POS"), ("retrieval_mean_xx_to_en", "retrieval XX→en (mean)"),
         ("retrieval_mean_en_to_xx", "retrieval en→XX (mean)"))
CRITERION_TASKS = ("nli", "pos")
# Flags that name where a run went, not what it did.
_NOT_SETTINGS = {"model_dir", "quiet", "checkpoint_default_sources"}


def read_row(grid_dir, row):
    """Everything the table needs of one row, or None when not finished."""
    training = os.path.join(grid_dir, row, "training")
    compare = os.path.join(grid_dir, f"compare_{row}", "suite.json")
    if not (os.path.exists(compare) and os.path.exists(os.path.join(training, "summary.json"))):
        return None
    with open(compare) as f:
        suite = json.load(f)
    return {"row": row, "flags": _read_json(training, "flags.json"),
            "summary": _read_json(training, "summary.json"),
            "check": _read_json(training, "alignment_check.json"), "suite": suite}


def _read_json(directory, name):
    path = os.path.join(directory, name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def flag_difference(flags_used, reference):
    """`--name=value` for every setting that differs from the reference row."""
    return [f"--{name}={_flag_value(value)}" for name, value in sorted(flags_used.items())
            if name not in _NOT_SETTINGS and reference.get(name) != value]


def _flag_value(value):
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def task_cells(suite, table_name):
    """A task's non-English averages (unaligned, aligned, difference), its
    English cells [unaligned, aligned] and the languages that got worse."""
    table = suite["tables"][table_name]
    unaligned, aligned = (encoder["non_english_average"] for encoder in table["encoders"])
    english = [encoder["languages"].get("en") for encoder in table["encoders"]]
    worse = [language for language, cell in table["difference"]["languages"].items()
             if cell["high"] < 0]
    return {"unaligned": unaligned, "aligned": aligned,
            "difference": table["difference"]["non_english_average"],
            "english": english, "worse": sorted(worse)}


def row_record(row, reference_flags):
    """One row of grid.json."""
    summary, check = row["summary"], row["check"] or {}
    steps = summary["steps"]
    return {
        "row": row["row"],
        "flags": flag_difference(row["flags"], reference_flags)
        if row["row"] != _REFERENCE.value else ["(reference)"],
        "head_warmup_steps": steps["head_warmup"]["done"],
        "encoder_steps": steps["encoder"]["done"],
        "wall_seconds": summary["wall_seconds"],
        "alignment_check_margin": [(check.get(half) or {}).get("all", {}).get("margin")
                                   for half in ("before", "after")],
        "head_warmup_tlm_accuracy": (summary.get("head_warmup_check") or {}).get("tlm_accuracy"),
        "tasks": {name: task_cells(row["suite"], name) for name, _ in TASKS
                  if name in row["suite"]["tables"]},
        "suite_wall_seconds": row["suite"]["wall_seconds"],
    }


def criterion(tasks):
    """Mean difference (points) over `CRITERION_TASKS`' non-English averages."""
    return round(100 * sum(tasks[name]["difference"]["mean"]
                           for name in CRITERION_TASKS) / len(CRITERION_TASKS), 2)


def markdown(records, reference="tlm_moco"):
    """The grid as a Markdown table: one line per row, unaligned first; flags
    shown against the `reference` row."""
    heads = ["row", f"flags (vs {reference})", "steps (warm-up + encoder)", "alignment wall time",
             "check margin before → after"]
    heads += [f"{title} Δ [95%]" for _, title in TASKS] + [
        "mean Δ NLI, POS (the choice)", "NLI en", "POS en", "languages worse (beyond interval)"]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    first = next(iter(records), None)
    if first:
        base = [first["tasks"][name]["unaligned"] for name, _ in TASKS if name in first["tasks"]]
        english = [first["tasks"][name]["english"][0] for name in ("nli", "pos")]
        lines.append("| unaligned | e5-small as published | 0 | 0 | — | "
                     + " | ".join(f"{interval_cell(cell)} (level)" for cell in base) + " | 0 | "
                     + " | ".join(f"{100 * e['mean']:.1f}" for e in english) + " | — |")
    for record in records:
        margin = record["alignment_check_margin"]
        cells = [interval_cell(record["tasks"][name]["difference"], signed=True)
                 for name, _ in TASKS if name in record["tasks"]]
        english = [record["tasks"][name]["english"][1] for name in ("nli", "pos")]
        worse = [f"{name}: {', '.join(cell['worse'])}" for name, cell in record["tasks"].items()
                 if cell["worse"]]
        lines.append(
            f"| {record['row']} | {' '.join(record['flags']) or '—'} | "
            f"{record['head_warmup_steps']} + {record['encoder_steps']} | "
            f"{record['wall_seconds'] / 60:.1f} min | "
            f"{_margin(margin[0])} → {_margin(margin[1])} | " + " | ".join(cells) + " | "
            + f"{record['criterion']:+.2f} | "
            + " | ".join(f"{100 * e['mean']:.1f}" for e in english) + " | "
            + ("; ".join(worse) or "none") + " |")
    return "\n".join(lines) + "\n"


def _margin(value):
    return "?" if value is None else f"{value:+.3f}"


def plot(records, path):
    """Each row's difference from the unaligned model per task, with intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(TASKS), figsize=(4 * len(TASKS), 0.6 * len(records) + 2),
                                sharey=True)
    for axis, (name, title) in zip(axes, TASKS):
        for position, record in enumerate(records):
            cell = record["tasks"].get(name)
            if cell is None:
                continue
            d = cell["difference"]
            axis.errorbar(100 * d["mean"], position, fmt="o", color="C0",
                          xerr=[[100 * (d["mean"] - d["low"])], [100 * (d["high"] - d["mean"])]])
        axis.axvline(0, color="grey", lw=1)
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("aligned − unaligned (points)")
    axes[0].set_yticks(range(len(records)), [r["row"] for r in records])
    axes[0].invert_yaxis()
    figure.suptitle("The recipe grid: non-English average vs unaligned e5-small (95% intervals)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv):
    del argv
    rows = [row for row in (read_row(_GRID_DIR.value, name) for name in _ROWS.value) if row]
    if not rows:
        print(f"no finished rows in {_GRID_DIR.value}", file=sys.stderr)
        return 1
    reference = next((r["flags"] for r in rows if r["row"] == _REFERENCE.value), rows[0]["flags"])
    records = [row_record(row, reference) for row in rows]
    for record in records:
        record["criterion"] = criterion(record["tasks"])
    for row in rows:
        training = os.path.join(_GRID_DIR.value, row["row"], "training")
        plot_training_curves(read_metrics(training), os.path.join(training, TRAINING_CURVES_PNG),
                             title=f"grid row {row['row']}",
                             negatives=(row["flags"] or {}).get("contrastive_negatives"))
    with open(os.path.join(_GRID_DIR.value, "grid.json"), "w") as f:
        json.dump(records, f, indent=1)
    table = markdown(records, _REFERENCE.value)
    with open(os.path.join(_GRID_DIR.value, "grid.md"), "w") as f:
        f.write(table)
    plot(records, os.path.join(_GRID_DIR.value, "grid.png"))
    chosen = max(records, key=lambda record: record["criterion"])
    print(table)
    print(f"chosen on this half: {chosen['row']} (mean Δ NLI, POS {chosen['criterion']:+.2f} "
          "points; the unaligned model is 0)")
    return 0


if __name__ == "__main__":
    app.run(main)
