"""The suite's reports: `suite.json`, `suite.md`, one PNG per table and `summary.png`.

A table is one task's metric (`nli`, `ner`, `pos`, `topic`) or one retrieval
variant (`retrieval_{cls,mean}_{xx_to_en,en_to_xx}`). For each it gives,
per encoder, every language's mean over seeds with its 95% interval, the
non-English average and the transfer gap (English minus that average), and
with two encoders the paired difference (second minus first) with the
languages whose difference interval excludes 0, next to how many of all the
compared cells would do so by chance (`tf_mbalign.tasks.intervals`).
"""

import datetime
import json
import os

import numpy as np

import tf_mbalign
from tf_mbalign.tasks import intervals
from tf_mbalign.atomic_files import write_text_atomic

SCALE = 100.0
AGGREGATES = (("non_english_average", "non-English average"), ("transfer_gap", "transfer gap"))


def table_summaries(results, labels, replicates):
    """{table name: summary} in run order (`intervals.summarize_table` + pooling, rows)."""
    summaries = {}
    for task_name, result in results[labels[0]].items():
        for name in result["tables"]:
            tables = [results[label][task_name]["tables"][name] for label in labels]
            summary = intervals.summarize_table(name, tables, replicates)
            summary["task"] = task_name
            summary["pooling"] = [t.get("pooling") for t in tables]
            summary["rows"] = {lang: cell["rows"] for lang, cell in tables[0]["languages"].items()}
            summaries[name] = summary
    return summaries


def comparison_summary(summaries):
    """How many compared language cells moved, and how many would by chance."""
    moved = [f"{name}/{lang}" for name, s in summaries.items()
             for lang in s.get("difference", {}).get("moved", [])]
    cells = sum(len(s["difference"]["languages"]) for s in summaries.values() if "difference" in s)
    expected, upper = intervals.chance_passes(cells)
    return {"cells": cells, "moved": moved, "expected_by_chance": expected,
            "chance_upper_95": upper}


def run_facts(results, labels, config):
    """What a report says of its run: date, version, encoders, budget, seeds, data,
    replicates, pooling selections and each job's wall time."""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "tf_mbalign_version": tf_mbalign.__version__,
        "encoders": [{"label": label,
                      "encoder": next(iter(results[label].values()))["job"]["encoder"]}
                     for label in labels],
        "budget": config.budget, "seeds": config.seeds, "data_root": config.data_root,
        "replicates": config.replicates,
        "pooling_selection": {label: {task: r["pooling_selection"] for task, r in jobs.items()
                                      if r.get("pooling_selection")}
                              for label, jobs in results.items()},
        "wall_seconds": {label: {task: r["wall_seconds"] for task, r in jobs.items()}
                         for label, jobs in results.items()},
    }


def write_suite_report(results, labels, config, log=print):
    """Writes the reports of a finished suite; returns the summary dict."""
    summaries = table_summaries(results, labels, config.replicates)
    summary = {**run_facts(results, labels, config), "tables": summaries}
    if len(labels) == 2:
        summary["comparison"] = comparison_summary(summaries)
    os.makedirs(config.output_dir, exist_ok=True)
    write_text_atomic(os.path.join(config.output_dir, "suite.json"),
                      json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    write_text_atomic(os.path.join(config.output_dir, "suite.md"), markdown(summary, labels))
    for name, table in summaries.items():
        plot_table(name, table, labels, os.path.join(config.output_dir, f"{name}.png"))
    plot_summary(summaries, labels, os.path.join(config.output_dir, "summary.png"))
    log(f"wrote {os.path.join(config.output_dir, 'suite.md')} (+ suite.json, PNGs)")
    return summary


# === Markdown ===

def interval_cell(interval, signed=False):
    """`mean [low, high]` ×100 (signed: with + on positives); – for None."""
    if interval is None:
        return "–"
    sign = "+" if signed else ""
    return (f"{interval['mean'] * SCALE:{sign}.1f} [{interval['low'] * SCALE:{sign}.1f}, "
            f"{interval['high'] * SCALE:{sign}.1f}]")


def markdown_table(name, table, labels, aggregates=AGGREGATES):
    """One table's languages, aggregates (`aggregates`: (key, title) pairs) and, with two
    encoders, differences, as a Markdown section headed `name`."""
    header = ["", *labels] + ([f"{labels[1]} − {labels[0]}"] if "difference" in table else [])
    pooling = ", ".join(f"{label}: {p}" for label, p in zip(labels, table["pooling"]) if p)
    lines = [f"### {name} ({table['metric']}, ×{SCALE:g}, mean [95% interval])", ""]
    if pooling:
        lines += [f"pooling: {pooling}", ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    languages = sorted(table["encoders"][0]["languages"], key=lambda x: (x != "en", x))
    for key in [*languages, *(k for k, _ in aggregates)]:
        title = dict(aggregates).get(key)
        if title is not None and table["encoders"][0][key] is None:
            continue
        cells = [interval_cell(e[key] if title else e["languages"].get(key))
                 for e in table["encoders"]]
        if "difference" in table:
            difference = table["difference"][key] if title else table["difference"][
                "languages"].get(key)
            moved = difference is not None and (difference["low"] > 0 or difference["high"] < 0)
            cells.append(interval_cell(difference, signed=True) + (" *" if moved else ""))
        lines.append("| " + " | ".join([f"**{title}**" if title else key, *cells]) + " |")
    if "difference" in table:
        lines += ["", "moved beyond the interval (*): "
                  + (", ".join(table["difference"]["moved"]) or "none")]
    return "\n".join(lines) + "\n"


def overview_table(tables, labels):
    """One row per table: non-English averages and transfer gaps (and their differences)."""
    header = ["", *(f"{label}: avg ≠en" for label in labels),
              *(f"{label}: gap" for label in labels)]
    if len(labels) == 2:
        header += ["Δ avg ≠en", "Δ gap"]
    lines = ["## Overview (×100, mean [95% interval])", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, table in tables.items():
        encoders = table["encoders"]
        cells = [interval_cell(e["non_english_average"]) for e in encoders]
        cells += [interval_cell(e["transfer_gap"]) for e in encoders]
        if "difference" in table:
            cells += [interval_cell(table["difference"][key], signed=True)
                      for key in ("non_english_average", "transfer_gap")]
        lines.append("| " + " | ".join([name, *cells]) + " |")
    return "\n".join(lines) + "\n"


def markdown(summary, labels):
    encoders = ", ".join(f"{e['label']} = `{e['encoder']}`" for e in summary["encoders"])
    lines = [
        "# Zero-shot transfer suite", "",
        f"{summary['date']}, tf_mbalign {summary['tf_mbalign_version']}, budget "
        f"`{summary['budget']}`, {summary['seeds']} seed(s), data `{summary['data_root']}`; "
        f"{encoders}.", "",
        "Each cell: mean over seeds [95% interval: paired bootstrap over test rows "
        f"({summary['replicates']} replicates, the same resamples for every seed and encoder) "
        "plus the seed variance of the mean; see tf_mbalign/tasks/intervals.py]. "
        "Transfer gap = English − non-English average.", ""]
    if "comparison" in summary:
        comparison = summary["comparison"]
        lines += [
            f"**{len(comparison['moved'])} of {comparison['cells']} compared language cells "
            f"moved beyond their 95% interval** ({', '.join(comparison['moved']) or 'none'}). "
            f"If nothing had changed, about {comparison['expected_by_chance']:.1f} would pass "
            f"by chance (up to {comparison['chance_upper_95']} with 95% probability).", ""]
    lines += [overview_table(summary["tables"], labels), "![summary](summary.png)", ""]
    for name, table in summary["tables"].items():
        lines += [markdown_table(name, table, labels), f"![{name}]({name}.png)", ""]
    lines += wall_time_table(summary["wall_seconds"], labels)
    return "\n".join(lines) + "\n"


def wall_time_table(wall_seconds, labels):
    """Markdown lines: a job a row, an encoder a column."""
    lines = ["## Wall time (s)", "", "| job | " + " | ".join(labels) + " |",
             "|" + "---|" * (len(labels) + 1)]
    for task in wall_seconds[labels[0]]:
        lines.append(f"| {task} | " + " | ".join(
            f"{wall_seconds[label][task]:.0f}" for label in labels) + " |")
    return lines


# === Plots ===

def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def interval_bars(axis, rows, series, names, colors=None):
    """Grouped bars with 95% interval error bars; `series` = [[interval or None per row]]
    (`colors`: one a series, None: matplotlib's cycle)."""
    x = np.arange(len(rows))
    width = 0.8 / len(series)
    for i, (cells, name) in enumerate(zip(series, names)):
        means = [c["mean"] * SCALE if c else np.nan for c in cells]
        errors = [c["half_width"] * SCALE if c else 0.0 for c in cells]
        axis.bar(x + (i - (len(series) - 1) / 2) * width, means, width, yerr=errors, capsize=2,
                 label=name, color=colors[i] if colors else None)
    axis.set_xticks(x)
    axis.set_xticklabels(rows, rotation=20, ha="right")
    axis.grid(axis="y", alpha=0.3)
    axis.legend(fontsize="small")


def plot_table(name, table, labels, path):
    """Per language (and the average): each encoder's bar; with two, a panel of differences."""
    plt = pyplot()
    rows = sorted(table["encoders"][0]["languages"], key=lambda x: (x != "en", x))
    has_average = table["encoders"][0]["non_english_average"] is not None
    keys = rows + (["non_english_average"] if has_average else [])
    names = rows + (["avg ≠en"] if has_average else [])

    def pick(source, key):
        return source[key] if key == "non_english_average" else source["languages"].get(key)

    panels = 2 if "difference" in table else 1
    figure, axes = plt.subplots(panels, 1, figsize=(10, 3.6 * panels), squeeze=False)
    interval_bars(axes[0, 0], names, [[pick(e, k) for k in keys] for e in table["encoders"]],
                  labels)
    axes[0, 0].set_title(f"{name}: {table['metric']} (×{SCALE:g}), 95% intervals")
    if panels == 2:
        interval_bars(axes[1, 0], names, [[pick(table["difference"], k) for k in keys]],
                      [f"{labels[1]} − {labels[0]}"])
        axes[1, 0].axhline(0.0, color="black", linewidth=0.8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_summary(summaries, labels, path):
    """Non-English averages and transfer gaps per table; with two encoders, their differences."""
    plt = pyplot()
    panels = [("non_english_average", "non-English average")]
    panels.append(("transfer_gap", "transfer gap (en − average)"))
    compared = len(labels) == 2
    figure, axes = plt.subplots(len(panels) * (2 if compared else 1), 1,
                                figsize=(11, 3.6 * len(panels) * (2 if compared else 1)),
                                squeeze=False)
    axes = iter(axes[:, 0])
    for key, title in panels:
        names = [n for n, s in summaries.items() if s["encoders"][0][key] is not None]
        axis = next(axes)
        interval_bars(axis, names, [[summaries[n]["encoders"][i][key] for n in names]
                                    for i in range(len(labels))], labels)
        axis.set_title(f"{title} (×{SCALE:g}), 95% intervals")
        if compared:
            axis = next(axes)
            interval_bars(axis, names, [[summaries[n]["difference"][key] for n in names]],
                          [f"{labels[1]} − {labels[0]}"])
            axis.axhline(0.0, color="black", linewidth=0.8)
            axis.set_title(f"difference of the {title} (×{SCALE:g}), 95% intervals")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
