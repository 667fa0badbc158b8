"""What a run did, written to `model_dir/summary.json` and `summary.md` at every stop.

`RunSummary` is a `TrainingCallback` the training binary plugs in last; its
`on_run_stop` runs when the run finished (after the export), was preempted
(after the save) or failed (e.g. a `NonFiniteError`), on the chief only. The
summary holds:

- the outcome (and the error's first line), the encoder, the steps done of
  the head warm-up and of the encoder phase;
- the objectives (weights, negatives), the settings that depend on the
  checkpoint with where each came from, and the head warm-up's measured TLM
  accuracy at its end (`head_warmup.py`);
- loss, TLM and MoCo figures at the start and the end of each phase, each the
  mean of a window of logged records (read from `metrics.jsonl`, so a resumed
  run's summary covers its earlier sessions too; MoCo records logged as None,
  before the queue held negatives, are left out of the means);
- the corpus: pairs per language, skipped and truncated lines, files;
- this session's wall time, the checkpoints' size on disk;
- the loss and accuracy curves drawn to `training_curves.png`
  (`training_curves.py`; a drawing that fails is reported, never fatal);
- the export's paths relative to `model_dir` (when this session exported) and
  the three lines of code that load the sentence-embedding model;
- the before -> after alignment check of this session (read from
  `alignment_check.json`, which `evaluation/alignment_check.py` writes): per
  checked language the mean rank, margin and top-1 accuracy before and
  after, and the export's embedding against the unaligned model at its best
  pooling, marked when the export is worse.

Both files are written atomically. `summary_block` is the short text the
binary prints at its end.

Example:
```python
summary = RunSummary()
AlignmentRun(config, callbacks=[..., summary]).run()
print(summary_block(summary.summary))
```
"""

import json
import os
import time

from tf_mbalign.atomic_files import write_json_atomic, write_text_atomic
from tf_mbalign.training import checkpointing
from tf_mbalign.training.callbacks import TrainingCallback
from tf_mbalign.training.metrics_sinks import read_metrics
from tf_mbalign.training.training_curves import TRAINING_CURVES_PNG, plot_training_curves

SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
EXPORT_FOLDER = "export"
EXPORT_INFO = "export_info.json"
ALIGNMENT_CHECK_JSON = "alignment_check.json"
# The figures averaged over the start and end windows of each phase.
WINDOW_METRICS = ("loss", "tlm_loss", "tlm_accuracy", "moco_loss", "moco_accuracy",
                  "anchor_loss")
# Off by default: left out of the text where not logged (others say n/a).
OPTIONAL_METRICS = ("anchor_loss",)
MAX_WINDOW = 10
PHASES = ("head_warmup", "encoder")


class RunSummary(TrainingCallback):
    """Writes summary.json / summary.md at every stop of a run (chief only).

    Create it before the run is built: its wall time starts then, so model
    loading and tracing count.

    Attributes:
        summary: the summary dict of the last stop (None before one).
    """

    def __init__(self):
        self.created = time.time()
        self.start_step = None
        self.summary = None

    def on_run_start(self, run, start_step):
        self.start_step = start_step

    def on_run_stop(self, run, outcome, error=None):
        if not run.chief:
            return
        records = read_metrics(run.config.model_dir)
        self.summary = build_summary(run, outcome, error, self.start_step,
                                     since=self.created, records=records)
        self.summary["curves"] = draw_curves(run.config.model_dir, run.bundle.source, records,
                                             run.config.contrastive_negatives)
        write_summary(run.config.model_dir, self.summary)


def build_summary(run, outcome, error, start_step, since, records=None):
    """The summary dict of `run` (an `AlignmentRun`) at a stop.

    Args:
        outcome: "finished", "preempted" or "failed".
        error: the exception of a failed run, else None.
        start_step: the step this session started at (None: it failed
            before starting).
        since: the session's start (`time.time()`); exports older than it
            are not this session's.
        records: model_dir's metrics.jsonl records (read here when None).
    """
    config = run.config
    step = int(run.step.numpy())
    records = read_metrics(config.model_dir) if records is None else records
    export = export_paths(config.model_dir, since) if outcome == "finished" else {}
    return {
        "outcome": outcome,
        "error": _first_line(error),
        "model_dir": config.model_dir,
        "encoder": run.bundle.source,
        "precision": {"policy": config.precision, "reason": run.precision_reason},
        "steps": step_counts(config, step, start_step),
        "objectives": objectives(config),
        "checkpoint_defaults": checkpoint_defaults(run),
        "head_warmup_check": head_warmup_check(records),
        "metrics": phase_windows(records),
        "corpus": corpus_counts(config.corpus, run.corpus),
        "wall_seconds": round(time.time() - since, 1),
        "checkpoints": checkpoint_sizes(run.state.directory, config.model_dir),
        "export": export,
        "load_export": load_lines(config.model_dir, export),
        "alignment_check": alignment_check_summary(config.model_dir, since),
    }


def draw_curves(model_dir, encoder, records, negatives=None):
    """`training_curves.png` in model_dir from its metrics.jsonl `records`
    (`negatives`: the run's `--contrastive_negatives`): the file's name, or
    None (nothing logged yet, or the drawing failed: said why)."""
    try:
        drawn = plot_training_curves(records,
                                     os.path.join(model_dir, TRAINING_CURVES_PNG),
                                     title=f"{model_dir} ({encoder})", negatives=negatives)
    except Exception as error:  # noqa: BLE001 - a picture never fails a run
        print(f"warning: {TRAINING_CURVES_PNG} not drawn: {error}", flush=True)
        return None
    return TRAINING_CURVES_PNG if drawn else None


def _first_line(error):
    """`TypeName: first line of the message` of an exception, or None."""
    if error is None:
        return None
    lines = str(error).splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def step_counts(config, step, start_step):
    """Steps done and planned per phase, and where this session started."""
    warmup = config.head_warmup_steps
    return {
        "head_warmup": {"done": min(step, warmup), "planned": warmup},
        "encoder": {"done": max(step - warmup, 0), "planned": config.train_steps},
        "last_step": step,
        "session_started_at_step": start_step,
    }


def checkpoint_defaults(run):
    """{flag: {"value", "source"}} of the settings that depend on the
    checkpoint (`config.CHECKPOINT_DEFAULTS`), as the run resolved them."""
    sources = getattr(run, "default_sources", None) or {}
    return {name: {"value": getattr(run.config, name), "source": source}
            for name, source in sources.items()}


def head_warmup_check(records):
    """The head warm-up's measurement at its end (the record that holds it),
    or None (no warm-up, or it has not ended)."""
    for record in reversed(records):
        if record.get("head_warmup_tlm_accuracy") is not None:
            return {"tlm_accuracy": record["head_warmup_tlm_accuracy"],
                    "masked_tokens": record.get("head_warmup_check_tokens"),
                    "batches": record.get("head_warmup_check_batches"),
                    "step": record["step"]}
    return None


def objectives(config):
    """The objectives' weights and kinds (the anchor's distance only when it
    is on)."""
    chosen = {"tlm_weight": config.tlm_weight,
              "contrastive_weight": config.contrastive_weight,
              "contrastive_negatives": config.contrastive_negatives,
              "anchor_weight": config.anchor_weight}
    if config.anchor_weight:
        chosen["anchor_loss"] = config.anchor_loss
    return chosen


def phase_windows(records):
    """Per phase with records: `start` and `end` window means of
    `WINDOW_METRICS`, each with the steps it covers."""
    windows = {}
    for phase in PHASES:
        logged = [r for r in records if r.get("phase") == phase]
        if logged:
            size = max(1, min(MAX_WINDOW, len(logged) // 3))
            windows[phase] = {"start": window_mean(logged[:size]),
                              "end": window_mean(logged[-size:])}
    return windows


def window_mean(records):
    """Means of `WINDOW_METRICS` over `records` (None values left out; None
    when all are), the steps they cover and the queue fill at the window's
    end (MoCo's loss grows with the negatives it meets)."""
    first_step = records[0]["step"] - _steps_in(records[0]) + 1
    means = {"steps": f"{first_step}-{records[-1]['step']}"}
    for name in WINDOW_METRICS:
        values = [r[name] for r in records if r.get(name) is not None]
        means[name] = round(sum(values) / len(values), 4) if values else None
    means["queue_fill"] = records[-1].get("queue_fill")
    return means


def _steps_in(record):
    return max(1, len(record.get("batch_fingerprints", [])))


def corpus_counts(spec, corpus):
    """Pairs per language, skipped and truncated lines, files of a corpus."""
    stats = corpus.stats
    return {"spec": spec, "pairs": stats.pairs, "languages": corpus.language_counts(),
            "skipped_empty": stats.skipped_empty, "truncated": stats.truncated,
            "held_out": stats.held_out, "files": list(stats.files)}


def checkpoint_sizes(directory, model_dir):
    """The committed checkpoints' steps and bytes on disk (the latest one's
    and all kept ones together)."""
    steps = checkpointing.committed_steps(directory) if os.path.isdir(directory) else []
    sizes = {step: _checkpoint_bytes(directory, step) for step in steps}
    latest = steps[0] if steps else None
    return {
        "folder": os.path.relpath(directory, model_dir),
        "kept_steps": sorted(steps),
        "latest": f"ckpt-{latest}" if latest is not None else None,
        "latest_bytes": sizes.get(latest, 0),
        "all_bytes": sum(sizes.values()),
    }


def _checkpoint_bytes(directory, step):
    prefix = f"ckpt-{step}."
    return sum(os.path.getsize(os.path.join(directory, name))
               for name in os.listdir(directory) if name.startswith(prefix))


def export_paths(model_dir, since):
    """{name: path relative to model_dir} of the export written since
    `since`, from its `export_info.json` ({} when there is none)."""
    export_dir = os.path.join(model_dir, EXPORT_FOLDER)
    info_path = os.path.join(export_dir, EXPORT_INFO)
    if not os.path.isfile(info_path) or os.path.getmtime(info_path) < since - 1:
        return {}
    with open(info_path, encoding="utf-8") as f:
        info = json.load(f)
    paths = {}
    for name, value in info.items():
        path = _path_inside(value, export_dir) if isinstance(value, str) and value else None
        if path:
            paths[name] = os.path.relpath(path, model_dir)
    return paths


def _path_inside(value, export_dir):
    """`value` (relative to the export folder or to the working directory,
    or absolute) as an existing absolute path inside `export_dir`; else None
    (not a path of the export, e.g. the encoder's source)."""
    export_dir = os.path.abspath(export_dir)
    for candidate in (os.path.join(export_dir, value), value):
        path = os.path.abspath(candidate)
        if path.startswith(export_dir + os.sep) and os.path.exists(path):
            return path
    return None


def load_lines(model_dir, export):
    """Three lines of Python that embed sentences with the exported serving
    model ([] without an export)."""
    if "serving" not in export:
        return []
    serving = os.path.join(model_dir, export["serving"])
    return [
        "import tensorflow as tf, tensorflow_text  # tensorflow_text registers the tokenizer ops",
        f"model = tf.saved_model.load({serving!r})",
        'embeddings = model.signatures["serving_default"](sentences=tf.constant(["Hello world", '
        '"Hallo Welt"]))["embeddings"]  # L2-normalized, one row per sentence',
    ]


def check_languages(scores):
    """The languages of an alignment check's scores (not "all", "step",
    "candidates")."""
    return [key for key in scores if key not in ("all", "step", "candidates")]


def alignment_check_summary(model_dir, since):
    """The alignment check this session finished (its `alignment_check.json`
    written since `since`, with its "after" half), per checked language: the
    figures before and after and the export against the unaligned model at
    its best pooling; None without one."""
    path = os.path.join(model_dir, ALIGNMENT_CHECK_JSON)
    if not os.path.isfile(path) or os.path.getmtime(path) < since - 1:
        return None
    with open(path, encoding="utf-8") as f:
        report = json.load(f)
    after = report.get("after")
    if not after:
        return None
    before = report.get("before") or {}
    comparison = report.get("export_against_unaligned", {})
    languages = {}
    for language in check_languages(after):
        against = comparison.get(language, {})
        languages[language] = {
            "pairs": after[language]["pairs"], "before": before.get(language),
            "after": after[language], "unaligned_best": against.get("unaligned_best"),
            "export_worse": against.get("worse")}
    return {"pooling": report["pooling"], "layer": report["layer"],
            "held_out": report.get("held_out"), "candidates": after["candidates"],
            "steps": [before.get("step"), after["step"]], "languages": languages}


# === Writing and showing ===

def write_summary(model_dir, summary):
    """summary.json and summary.md in model_dir, each atomically."""
    write_json_atomic(os.path.join(model_dir, SUMMARY_JSON), summary, indent=2)
    write_text_atomic(os.path.join(model_dir, SUMMARY_MD), summary_markdown(summary))


def summary_block(summary):
    """The short text block the binary prints at its end."""
    steps, corpus, checkpoints = summary["steps"], summary["corpus"], summary["checkpoints"]
    languages = ", ".join(f"{k} {v}" for k, v in corpus["languages"].items())
    lines = [
        f"run summary ({summary['outcome']}): {summary['model_dir']}/{SUMMARY_MD}",
        f"  steps: head warm-up {steps['head_warmup']['done']}/{steps['head_warmup']['planned']}, "
        f"encoder {steps['encoder']['done']}/{steps['encoder']['planned']}",
        f"  precision: {summary['precision']['policy']} ({summary['precision']['reason']})",
    ]
    if summary.get("objectives"):
        lines.append("  objectives: " + ", ".join(
            f"{k} {v}" for k, v in summary["objectives"].items()))
    if summary.get("checkpoint_defaults"):
        lines.append("  by checkpoint: " + ", ".join(
            f"{k} {v['value']}" for k, v in summary["checkpoint_defaults"].items()))
    check = summary.get("head_warmup_check")
    if check:
        lines.append(f"  head warm-up check (step {check['step']}): TLM accuracy "
                     f"{check['tlm_accuracy']:.3f} on its last {check['batches']} batches "
                     f"({check['masked_tokens']} masked tokens, dropout off)")
    for phase, window in summary["metrics"].items():
        lines.append(f"  {phase:<11}  {_window_text(window['start'])}")
        lines.append(f"  {'':<11}→ {_window_text(window['end'])}")
    lines += [
        f"  corpus: {corpus['pairs']} pairs ({languages}); {corpus['skipped_empty']} skipped "
        f"empty, {corpus['truncated']} truncated"
        + (f", {corpus['held_out']} held out of training" if corpus.get("held_out") else ""),
        f"  wall time: {_duration(summary['wall_seconds'])}; checkpoint "
        f"{checkpoints['latest'] or 'none'}: {_size(checkpoints['latest_bytes'])} "
        f"({_size(checkpoints['all_bytes'])} for the {len(checkpoints['kept_steps'])} kept)",
    ]
    if summary.get("curves"):
        lines.append(f"  curves: {summary['model_dir']}/{summary['curves']}")
    if summary["error"]:
        lines.append(f"  error: {summary['error']}")
    lines += _check_lines(summary.get("alignment_check"))
    if summary["export"]:
        lines.append("  export (in model_dir): " + ", ".join(
            f"{k} {v}" for k, v in summary["export"].items()))
    if summary["load_export"]:
        lines.append("  load it:")
        lines += [f"    {line}" for line in summary["load_export"]]
    return "\n".join(lines)


def summary_markdown(summary):
    """summary.md: the block as Markdown, the load lines as a code block."""
    body = summary_block(dict(summary, load_export=[])).splitlines()
    text = [f"# Run summary: {summary['outcome']}", "", "```", *body[1:], "```", ""]
    if summary["load_export"]:
        text += ["Load the sentence-embedding model:", "", "```python",
                 *summary["load_export"], "```", ""]
    if summary.get("curves"):
        text += [f"![loss and accuracy curves]({summary['curves']})", ""]
    text.append(f"Every figure: `{SUMMARY_JSON}` (same folder).")
    return "\n".join(text) + "\n"


def _check_lines(check):
    """Per checked language: the export's embedding against the unaligned
    model at its best pooling (higher top-1 accuracy, then lower mean rank)."""
    if not check:
        return []
    lines = [f"  export ({check['pooling']} pooling) vs the unaligned model at its best "
             f"pooling, xx -> en among {check['candidates']} held-out English sentences "
             f"({ALIGNMENT_CHECK_JSON}):"]
    for language, row in check["languages"].items():
        best, now = row["unaligned_best"], row["after"]
        if best is None:
            lines.append(f"    {language:<9}accuracy {now['accuracy']:.3f}, mean rank "
                         f"{now['mean_rank']:.2f} (unaligned: not known)")
            continue
        lines.append(
            f"    {language:<9}accuracy {now['accuracy']:.3f} vs {best['accuracy']:.3f} "
            f"({best['pooling']}), mean rank {now['mean_rank']:.2f} vs {best['mean_rank']:.2f}"
            + ("   << WORSE than the unaligned model" if row["export_worse"] else ""))
    return lines


def _window_text(window):
    parts = [f"steps {window['steps']}:"]
    for name in WINDOW_METRICS:
        value = window[name]
        if value is None and name in OPTIONAL_METRICS:
            continue
        parts.append(f"{name} {'n/a' if value is None else f'{value:.3f}'}")
    if window["queue_fill"] is not None:
        parts.append(f"queue {window['queue_fill']}")
    return " ".join(parts)


def _duration(seconds):
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"


def _size(count):
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.2f} {unit}"
    return f"{count} B"
