"""The lowres track's reports: `lowres.json`, `lowres.md` and `lowres.png`.

Groups. Every job table (`tasks.runner`: `tatoeba_<pooling>_<direction>`,
`flores_<pooling>_<direction>`, `topic`) is cut into its weak languages and
its controls (the job's `languages`, `tasks.lowres_track`); a group's table
keeps English where it was tested (topic) as the reference. Each cut goes
through `intervals.summarize_table`: per language and encoder the mean with
its 95% interval, the group's average (`non_english_average`: English never
enters an average) and, with English, the transfer gap; with two encoders the
paired difference B - A (the same bootstrap resamples for both encoders: a
language's resamples do not depend on its group). Added per group table:
`worse` and `up`, the group's languages whose difference interval lies
entirely below / above 0 (English counts as a control), out of `compared`.

Pooling rule (retrieval): `POOLING_RULE`. Nothing is chosen on the reported
rows; [CLS] is reported in full beside it, and `pooling_check` says per
encoder which pooling has the higher weak-language average on these rows
(descriptive: it chooses nothing).
"""

import json
import os

from tf_mbalign.atomic_files import write_text_atomic
from tf_mbalign.modeling.pooling import POOLINGS
from tf_mbalign.tasks import intervals, suite_report
from tf_mbalign.tasks.lowres_track import CONTROL, RETRIEVAL_SETS, TOPIC, WEAK
from tf_mbalign.tasks.runner import retrieval_table_name
from tf_mbalign.tasks.suite import LOWRES_TRACK

ENGLISH = "en"
HEADLINE_POOLING = "mean"
DIRECTIONS = (("xx_to_en", "XX→en"), ("en_to_xx", "en→XX"))
SET_TITLES = {"tatoeba": "Tatoeba", "flores": "FLORES", TOPIC: "topic (SIB-200)"}
POOLING_TITLES = {"cls": "[CLS]", "mean": "mean"}
GROUP_TITLES = {WEAK: "weak languages", CONTROL: "controls"}
POOLING_RULE = (
    "Retrieval's headline compares both encoders at mean pooling, fixed before any test row "
    "is seen: it is multilingual-e5-small's own pooling and its best (unaligned, developer "
    "Tatoeba: [CLS] 84.1 vs mean 92.5), and the alignment recipes train and are judged with "
    "it. Nothing is chosen on the reported rows; [CLS] is reported in full for both encoders, "
    "and the pooling check below says which pooling is higher for each encoder on these rows.")


# === Group tables ===

def group_table(table, languages):
    """A job table cut to `languages`, plus English (the reference) where it was tested."""
    keep = {*languages, ENGLISH}
    return {**table, "languages": {language: cell for language, cell in table["languages"].items()
                                   if language in keep}}


def group_summary(name, tables, languages, replicates=intervals.DEFAULT_REPLICATES):
    """`intervals.summarize_table` of the tables cut to a group, with per-language rows, and
    with two encoders the group's languages that got worse / moved up.

    Args:
        name: the job table's name (the bootstrap key of its languages).
        tables: the job table of each encoder, in encoder order.
        languages: the group's languages (English among them only when it counts).
        replicates: bootstrap replicates.
    """
    cut = [group_table(table, languages) for table in tables]
    summary = intervals.summarize_table(name, cut, replicates)
    summary["pooling"] = [table.get("pooling") for table in tables]
    summary["rows"] = {language: cell["rows"] for language, cell in cut[0]["languages"].items()}
    summary["group_languages"] = sorted(set(languages) & set(summary["rows"]))
    if "difference" in summary:
        cells = {language: summary["difference"]["languages"][language]
                 for language in summary["group_languages"]}
        summary["difference"]["compared"] = len(cells)
        summary["difference"]["worse"] = sorted(
            language for language, cell in cells.items() if cell["high"] < 0)
        summary["difference"]["up"] = sorted(
            language for language, cell in cells.items() if cell["low"] > 0)
    return summary


def retrieval_parts(name):
    """(test set, pooling, direction) of a retrieval table's name; None for another table."""
    for test_set in RETRIEVAL_SETS:
        for pooling in POOLINGS:
            for direction, _ in DIRECTIONS:
                if name == retrieval_table_name(test_set, pooling, direction):
                    return test_set, pooling, direction
    return None


def is_headline(name):
    """Topic, and retrieval at `HEADLINE_POOLING`."""
    parts = retrieval_parts(name)
    return parts is None or parts[1] == HEADLINE_POOLING


def table_title(name):
    """e.g. "Tatoeba XX→en, mean pooling" for `tatoeba_mean_xx_to_en`."""
    parts = retrieval_parts(name)
    if parts is None:
        return SET_TITLES.get(name, name)
    test_set, pooling, direction = parts
    return (f"{SET_TITLES[test_set]} {dict(DIRECTIONS)[direction]}, "
            f"{POOLING_TITLES[pooling]} pooling")


def group_summaries(results, labels, replicates):
    """{"weak": {table name: group summary}, "control": {...}}, headline tables first."""
    groups = {WEAK: {}, CONTROL: {}}
    for job, result in results[labels[0]].items():
        languages = result["job"]["settings"]["languages"]
        for name in result["tables"]:
            tables = [results[label][job]["tables"][name] for label in labels]
            for group, summaries in groups.items():
                if set(languages[group]) & set(tables[0]["languages"]):
                    summaries[name] = group_summary(name, tables, languages[group], replicates)
    return {group: dict(sorted(summaries.items(), key=lambda item: not is_headline(item[0])))
            for group, summaries in groups.items()}


def comparison_counts(summaries):
    """Over a group's headline tables: cells compared, worse, up, and chance passes."""
    differences = {name: s["difference"] for name, s in summaries.items()
                   if is_headline(name) and "difference" in s}
    cells = sum(d["compared"] for d in differences.values())
    expected, upper = intervals.chance_passes(cells)
    return {"cells": cells,
            "worse": [f"{name}/{lang}" for name, d in differences.items() for lang in d["worse"]],
            "up": [f"{name}/{lang}" for name, d in differences.items() for lang in d["up"]],
            "expected_by_chance": expected, "chance_upper_95": upper}


def _higher(averages):
    """The pooling with the higher average, "equal" for a tie."""
    best = max(averages, key=averages.get)
    return "equal" if list(averages.values()).count(averages[best]) > 1 else best


def pooling_check(weak, labels):
    """{label: {"<set>_<direction>": {"cls", "mean": weak average, "higher": pooling}}}."""
    check = {label: {} for label in labels}
    for test_set in RETRIEVAL_SETS:
        for direction, _ in DIRECTIONS:
            tables = {pooling: weak.get(retrieval_table_name(test_set, pooling, direction))
                      for pooling in POOLINGS}
            if not all(tables.values()):
                continue
            for index, label in enumerate(labels):
                averages = {pooling: table["encoders"][index]["non_english_average"]["mean"]
                            for pooling, table in tables.items()}
                check[label][f"{test_set}_{direction}"] = {**averages,
                                                           "higher": _higher(averages)}
    return check


# === Report ===

def write_track_report(results, labels, config, log=print):
    """Writes lowres.json, lowres.md and lowres.png of a finished track; returns the summary."""
    groups = group_summaries(results, labels, config.replicates)
    summary = {
        "track": LOWRES_TRACK, **suite_report.run_facts(results, labels, config),
        "first_seed": config.first_seed, "test_rows": config.test_rows,
        "headline_pooling": HEADLINE_POOLING, "pooling_rule": POOLING_RULE,
        "languages": {group: sorted({lang for result in results[labels[0]].values()
                                     for lang in result["job"]["settings"]["languages"][group]})
                      for group in groups},
        "groups": groups, "pooling_check": pooling_check(groups[WEAK], labels),
    }
    if len(labels) == 2:
        summary["comparison"] = {group: comparison_counts(s) for group, s in groups.items()}
    os.makedirs(config.output_dir, exist_ok=True)
    write_text_atomic(os.path.join(config.output_dir, "lowres.json"),
                      json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    write_text_atomic(os.path.join(config.output_dir, "lowres.md"), markdown(summary, labels))
    plot_track(groups, labels, os.path.join(config.output_dir, "lowres.png"))
    log(f"wrote {os.path.join(config.output_dir, 'lowres.md')} (+ lowres.json, lowres.png)")
    return summary


# === Markdown ===

def _aggregates(group):
    return (("non_english_average", f"{GROUP_TITLES[group]}: average"),
            ("transfer_gap", "transfer gap (en − average)"))


def overview_table(tables, labels):
    """Markdown lines: a table a row; each encoder's group average, and with two encoders
    the difference and the languages that got worse / moved up."""
    compared = len(labels) == 2
    header = ["", *(f"{label}: average" for label in labels)]
    if compared:
        header += [f"{labels[1]} − {labels[0]}", "worse", "up"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, table in tables.items():
        cells = [suite_report.interval_cell(e["non_english_average"]) for e in table["encoders"]]
        if compared:
            difference = table["difference"]
            cells += [suite_report.interval_cell(difference["non_english_average"], signed=True),
                      f"{len(difference['worse'])}/{difference['compared']}"
                      + (f" ({', '.join(difference['worse'])})" if difference["worse"] else ""),
                      f"{len(difference['up'])}/{difference['compared']}"]
        title = table_title(name)
        lines.append("| " + " | ".join([f"**{title}**" if is_headline(name) else title, *cells])
                     + " |")
    return lines + [""]


def _counts_line(counts):
    return (f"**Headline tables: of {counts['cells']} language cells compared, "
            f"{len(counts['worse'])} got worse and {len(counts['up'])} moved up** beyond their "
            f"95% interval (worse: {', '.join(counts['worse']) or 'none'}). If nothing had "
            f"changed, about {counts['expected_by_chance']:.1f} would pass by chance (up to "
            f"{counts['chance_upper_95']} with 95% probability).")


def _pooling_lines(check, labels):
    lines = ["## Pooling check (descriptive: chooses nothing)", "",
             "Weak-language averages, ×100, on these rows.", "",
             "| encoder | test set | [CLS] | mean | higher |", "|---|---|---|---|---|"]
    for label in labels:
        for test_set in RETRIEVAL_SETS:
            for direction, arrow in DIRECTIONS:
                row = check[label].get(f"{test_set}_{direction}")
                if row:
                    lines.append(f"| {label} | {SET_TITLES[test_set]} {arrow} | "
                                 f"{row['cls'] * suite_report.SCALE:.1f} | "
                                 f"{row['mean'] * suite_report.SCALE:.1f} | {row['higher']} |")
    other = [pooling for pooling in POOLINGS if pooling != HEADLINE_POOLING]
    notes = [label for label in labels
             if any(row["higher"] in other for row in check[label].values())]
    for label in notes:
        lines += ["", f"Note: {label}'s [CLS] average is above its {HEADLINE_POOLING}-pooled one "
                  f"on some test set here; the headline stays at {HEADLINE_POOLING} pooling "
                  "(the rule above), the [CLS] tables show the other."]
    return lines + [""]


def markdown(summary, labels):
    """The report: weak languages first, controls second, [CLS] tables, pooling check."""
    encoders = ", ".join(f"{e['label']} = `{e['encoder']}`" for e in summary["encoders"])
    compared = "comparison" in summary
    lines = [
        "# Low-resource track", "",
        f"{summary['date']}, tf_mbalign {summary['tf_mbalign_version']}, budget "
        f"`{summary['budget']}`, {summary['seeds']} seed(s) from {summary['first_seed']}, test "
        f"rows: {summary['test_rows']}, data `{summary['data_root']}`; {encoders}.", "",
        f"**Pooling.** {summary['pooling_rule']}",
        "",
        "Each cell: mean over seeds [95% interval: paired bootstrap over test rows "
        f"({summary['replicates']} replicates, the same resamples for every seed and encoder) "
        "plus the seed variance of the mean; see tf_mbalign/tasks/intervals.py], ×100. An "
        "average is over the group's languages (English never enters one; it is topic's "
        "reference and a control)."
        + (" worse / up: the group's languages whose difference interval lies entirely "
           "below / above 0." if compared else ""), ""]
    for group in (WEAK, CONTROL):
        tables = summary["groups"][group]
        if not tables:
            continue
        lines += [f"## {GROUP_TITLES[group].capitalize()}: "
                  f"{', '.join(summary['languages'][group])}", ""]
        if compared:
            lines += [_counts_line(summary["comparison"][group]), ""]
        lines += overview_table(tables, labels)
        if group == WEAK:
            lines += ["![weak languages, before and after](lowres.png)", ""]
        lines += [suite_report.markdown_table(table_title(name), table, labels,
                                              _aggregates(group))
                  for name, table in tables.items() if is_headline(name)]
    others = [(group, name, table) for group in (WEAK, CONTROL)
              for name, table in summary["groups"][group].items() if not is_headline(name)]
    if others:
        lines += ["## [CLS] pooling, per language", ""]
        lines += [suite_report.markdown_table(f"{GROUP_TITLES[group]}: {table_title(name)}",
                                              table, labels, _aggregates(group))
                  for group, name, table in others]
    lines += _pooling_lines(summary["pooling_check"], labels)
    lines += suite_report.wall_time_table(summary["wall_seconds"], labels)
    return "\n".join(lines) + "\n"


# === Plot ===

def _panel_cells(weak, control, languages, pick):
    """Intervals of `languages`, the weak average and, where there are controls, theirs."""
    return ([pick(weak)["languages"].get(language) for language in languages]
            + [pick(weak)["non_english_average"]]
            + ([pick(control)["non_english_average"]] if control else []))


def _plotted_measures(weak):
    """[(test set title, [(table name, direction title)])] of the headline tables."""
    measures = []
    for test_set in RETRIEVAL_SETS:
        names = [(retrieval_table_name(test_set, HEADLINE_POOLING, direction), arrow)
                 for direction, arrow in DIRECTIONS]
        names = [(name, arrow) for name, arrow in names if name in weak]
        if names:
            measures.append((f"{SET_TITLES[test_set]}, {HEADLINE_POOLING} pooling", names))
    if TOPIC in weak:
        measures.append((SET_TITLES[TOPIC], [(TOPIC, "accuracy")]))
    return measures


def _pair_colors(count):
    """Light / dark of one hue a pair of series (before, after), `count` pairs."""
    import matplotlib

    palette = matplotlib.colormaps["tab20"].colors
    return [palette[(2 * pair + (1 - shade)) % len(palette)]
            for pair in range(count) for shade in (0, 1)]


def plot_track(groups, labels, path):
    """Per weak language (and the weak and control averages): each encoder's XX→en and
    en→XX bars side by side (before → after), and with two encoders their differences."""
    plt = suite_report.pyplot()
    weak, control = groups[WEAK], groups[CONTROL]
    measures = _plotted_measures(weak)
    compared = len(labels) == 2
    rows = max(1, len(measures) * (2 if compared else 1))
    figure, axes = plt.subplots(rows, 1, figsize=(12, 3.6 * rows), squeeze=False)
    axes = iter(axes[:, 0])
    for title, names in measures:
        languages = weak[names[0][0]]["group_languages"]
        ticks = [*languages, "weak avg"] + (["control avg"] if names[0][0] in control else [])
        series, series_names = [], []
        for name, arrow in names:
            for index, label in enumerate(labels):
                series.append(_panel_cells(weak[name], control.get(name), languages,
                                           lambda s, i=index: s["encoders"][i]))
                series_names.append(f"{label} {arrow}")
        axis = next(axes)
        suite_report.interval_bars(axis, ticks, series, series_names,
                                   _pair_colors(len(names)) if compared else None)
        axis.set_title(f"{title}: weak languages (×{suite_report.SCALE:g}), 95% intervals")
        if compared:
            axis = next(axes)
            suite_report.interval_bars(
                axis, ticks, [_panel_cells(weak[name], control.get(name), languages,
                                           lambda s: s["difference"]) for name, _ in names],
                [f"{labels[1]} − {labels[0]} {arrow}" for _, arrow in names],
                _pair_colors(len(names))[1::2])
            axis.axhline(0.0, color="black", linewidth=0.8)
            axis.set_title(f"{title}: {labels[1]} − {labels[0]} (×{suite_report.SCALE:g}), "
                           "95% intervals")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
