"""A run's loss and accuracy curves as a picture: `model_dir/training_curves.png`.

`RunSummary` draws it at every stop from `metrics.jsonl` (so a resumed run's
picture covers every session). Three panels share the step axis: the losses
(total, TLM, contrastive, English anchor), TLM accuracy on the masked tokens and the
contrastive accuracy (the positive key ranked first among the negatives:
MoCo's queue or the batch's other sentences, as the panel says; the metrics
keep the names `moco_loss` / `moco_accuracy` either way); the head warm-up is
shaded.
Raw per-step values are drawn faintly, their running mean over `window`
steps on top.
"""

import numpy as np

TRAINING_CURVES_PNG = "training_curves.png"
PANELS = (("losses", ("loss", "tlm_loss", "moco_loss", "anchor_loss")),
          ("TLM accuracy", ("tlm_accuracy",)),
          ("contrastive accuracy", ("moco_accuracy",)))
NEGATIVES_LABELS = {"queue": "MoCo accuracy\n(queue negatives)",
                    "in_batch": "contrastive accuracy\n(in-batch negatives)"}


def panel_headings(negatives=None):
    """The panels' y-axis labels; the contrastive one names `negatives`
    (`--contrastive_negatives`) when known."""
    headings = [heading for heading, _ in PANELS]
    headings[-1] = NEGATIVES_LABELS.get(negatives, headings[-1])
    return headings


def metric_series(records, name):
    """(steps, values) of one metric, skipping records without it."""
    pairs = [(r["step"], r[name]) for r in records
             if r.get(name) is not None and r.get("step") is not None]
    if not pairs:
        return np.zeros(0, np.int64), np.zeros(0)
    steps, values = zip(*pairs)
    return np.asarray(steps), np.asarray(values, np.float64)


def running_mean(values, window):
    """Mean of the last `window` values at each position (fewer at the start)."""
    if len(values) == 0:
        return values
    sums = np.cumsum(np.insert(values, 0, 0.0))
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(ends - window, 0)
    return (sums[ends] - sums[starts]) / (ends - starts)


def records_per_window(steps, window):
    """How many logged records span `window` steps (a run logs every
    `--steps_per_loop` steps): at least 1."""
    if len(steps) < 2:
        return 1
    spacing = float(np.median(np.diff(steps)))
    return max(1, int(round(window / max(spacing, 1.0))))


def warmup_end(records):
    """The last head warm-up step, or 0 without one."""
    return max((r["step"] for r in records if r.get("phase") == "head_warmup"), default=0)


def plot_training_curves(records, path, title="", window=20, negatives=None):
    """Draws the curves of `records` (metrics.jsonl) to `path`; False when
    there is nothing to draw. `negatives` (`queue` / `in_batch`) names the
    contrastive panel."""
    if not records:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(PANELS), 1, figsize=(8, 2.6 * len(PANELS)), sharex=True)
    last_warmup = warmup_end(records)
    for axis, heading, (_, names) in zip(axes, panel_headings(negatives), PANELS):
        for colour, name in enumerate(names):
            steps, values = metric_series(records, name)
            if len(steps):
                axis.plot(steps, values, color=f"C{colour}", alpha=0.2, lw=0.8)
                smooth = running_mean(values, records_per_window(steps, window))
                axis.plot(steps, smooth, color=f"C{colour}", label=name)
        if last_warmup:
            axis.axvspan(0, last_warmup, color="grey", alpha=0.12, label="head warm-up")
        axis.set_ylabel(heading)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8, loc="best")
    axes[-1].set_xlabel(f"step (lines: running mean over {window} steps)")
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True
