"""Evaluation reports: a JSON of every figure, a Markdown table, a PNG plot.

A report is a dict:

    {"task": "xnli", "model": "aligned", "encoder": "...", "setting": "zero_shot",
     "metrics": {"accuracy": {"de": {"mean": .., "std": .., "values": [per seed]}, ...}},
     "average": {"accuracy": {"mean": .., "std": .., "values": [per seed]}},
     "config": {...}, "wall_seconds": ..}

`summarize(per_seed)` builds `metrics` and `average` from per-seed results;
`write_report(reports, path_prefix)` writes `<prefix>.json`, `.md` and `.png`
for one report, or for several side by side (e.g. unaligned vs aligned).
"""

import dataclasses
import io
import json
import os
import time

import numpy as np

from tf_mbalign.atomic_files import write_bytes_atomic, write_text_atomic


def summarize(per_seed):
    """{metric: {row: [value per seed]}} -> (metrics, average) of a report.

    The average over rows is taken per seed first, so its spread is the spread
    of the average, not of the rows.
    """
    metrics, average = {}, {}
    for metric, rows in per_seed.items():
        metrics[metric] = {row: _stats(values) for row, values in rows.items()}
        per_seed_average = np.mean([values for values in rows.values()], axis=0)
        average[metric] = _stats(per_seed_average.tolist())
    return metrics, average


def _stats(values):
    values = [float(v) for v in values]
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "values": values}


def _cell(stats, scale):
    if len(stats["values"]) > 1:
        return f"{stats['mean'] * scale:.1f} ± {stats['std'] * scale:.1f}"
    return f"{stats['mean'] * scale:.1f}"


def markdown_table(reports, scale=100.0):
    """One table per metric: a row per language, a column per report."""
    reports = list(reports)
    labels = [r["model"] for r in reports]
    lines = []
    for metric in reports[0]["metrics"]:
        rows = list(reports[0]["metrics"][metric])
        header = ["", *labels] + (["Δ (last − first)"] if len(reports) > 1 else [])
        lines += [f"**{reports[0]['task']} {metric}** ({reports[0].get('setting', '')}, "
                  f"×{scale:g}; mean ± std over seeds where several)", "",
                  "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in [*rows, "average"]:
            cells = []
            for report in reports:
                stats = (report["average"][metric] if row == "average"
                         else report["metrics"][metric].get(row))
                cells.append(_cell(stats, scale) if stats else "–")
            if len(reports) > 1:
                first, last = (
                    (r["average"][metric] if row == "average" else r["metrics"][metric].get(row))
                    for r in (reports[0], reports[-1]))
                cells.append(f"{(last['mean'] - first['mean']) * scale:+.1f}"
                             if first and last else "–")
            name = f"**{row}**" if row == "average" else row
            lines.append("| " + " | ".join([name, *cells]) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(reports, path, scale=100.0):
    """Grouped bars per language (one bar per report), one panel per metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reports = list(reports)
    metrics = list(reports[0]["metrics"])
    figure, axes = plt.subplots(len(metrics), 1, figsize=(10, 3.6 * len(metrics)), squeeze=False)
    width = 0.8 / len(reports)
    for axis, metric in zip(axes[:, 0], metrics):
        rows = [*reports[0]["metrics"][metric], "average"]
        x = np.arange(len(rows))
        for i, report in enumerate(reports):
            stats = [report["average"][metric] if row == "average"
                     else report["metrics"][metric].get(row, {"mean": np.nan, "std": 0.0})
                     for row in rows]
            spread = [s["std"] * scale for s in stats]
            axis.bar(x + (i - (len(reports) - 1) / 2) * width,
                     [s["mean"] * scale for s in stats], width,
                     yerr=spread if any(spread) else None, capsize=2, label=report["model"])
        axis.set_xticks(x)
        axis.set_xticklabels(rows, rotation=30 if max(len(r) for r in rows) > 4 else 0)
        axis.set_ylabel(f"{metric} (×{scale:g})")
        axis.set_title(f"{reports[0]['task']} — {metric} ({reports[0].get('setting', '')})")
        axis.grid(axis="y", alpha=0.3)
        axis.legend(fontsize="small")
    figure.tight_layout()
    image = io.BytesIO()
    figure.savefig(image, format="png", dpi=110)
    plt.close(figure)
    write_bytes_atomic(path, image.getvalue())


def write_report(reports, path_prefix):
    """Writes `<prefix>.json`, `<prefix>.md`, `<prefix>.png`; returns their paths."""
    if isinstance(reports, dict):
        reports = [reports]
    os.makedirs(os.path.dirname(os.path.abspath(path_prefix)), exist_ok=True)
    paths = {ext: f"{path_prefix}.{ext}" for ext in ("json", "md", "png")}
    write_text_atomic(paths["json"], json.dumps(reports if len(reports) > 1 else reports[0],
                                            indent=2, ensure_ascii=False) + "\n")
    write_text_atomic(paths["md"], markdown_table(reports) + "\n")
    plot(reports, paths["png"])
    return paths


def read_report(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def fine_tuning_report(task, trained, runs, config, finetune, test_sizes, started):
    """The report of a fine-tuning task (XNLI, MLQA) over all its seeds.

    Args:
        task: the task's name, e.g. "xnli".
        trained: the `TrainedEncoder` fine-tuned (its `source` is reported).
        runs: the `training.finetuning.SeedRuns` of the seeds.
        config: the task's config dataclass (with a `setting`).
        finetune: the `FinetuneConfig`.
        test_sizes: the test set's sizes, e.g. {"test_examples": {"de": 830}}.
        started: `time.time()` when the task started.

    Returns:
        the report dict (module docstring), with the training loss and the
        last seed's training sizes.
    """
    metrics, average = summarize(runs.scores)
    return {
        "task": task, "setting": config.setting, "encoder": trained.source,
        "metrics": metrics, "average": average,
        "training_loss": runs.training_loss, **runs.sizes, **test_sizes,
        "config": {**dataclasses.asdict(config), **dataclasses.asdict(finetune)},
        "wall_seconds": round(time.time() - started, 1),
    }
