"""Where a run's per-loop metrics go: metrics.jsonl, TensorBoard, the console.

Each sink takes the same `(step, logs)` records; the trainer writes every
record to all of its sinks in order and closes them at the end (also after a
failure, so TensorBoard files are flushed).
"""

import json
import os
import sys
import time

import keras
import tensorflow as tf

from tf_mbalign.atomic_files import write_text_atomic

METRICS_FILE = "metrics.jsonl"
# Shown on the progress bar / log lines.
SHOWN = ("loss", "tlm_loss", "tlm_accuracy", "moco_loss", "moco_accuracy", "anchor_loss",
         "queue_fill")


class MetricsSink:
    """Interface: `write(step, logs)` per loop call, `close()` once."""

    def write(self, step, logs):
        raise NotImplementedError

    def close(self):
        pass


class MetricsFile(MetricsSink):
    """`metrics.jsonl`: one JSON line per loop call, appended.

    Opening it trims the lines of steps after `restored_step` (a resumed run
    logs each step once) and a half-written last line from a killed run.
    """

    def __init__(self, model_dir, restored_step):
        self.path = os.path.join(model_dir, METRICS_FILE)
        self._trim(restored_step)

    def _trim(self, last_step):
        if not os.path.exists(self.path):
            return
        kept = []
        with open(self.path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:  # A killed run may leave a half-written last line.
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and record.get("step", last_step + 1) <= last_step:
                    kept.append(json.dumps(record) + "\n")
        write_text_atomic(self.path, "".join(kept))

    def write(self, step, logs):
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(logs) + "\n")


def read_metrics(model_dir):
    """The records of `model_dir/metrics.jsonl` in order ([] without one; a
    half-written line is skipped)."""
    path = os.path.join(model_dir, METRICS_FILE)
    if not os.path.exists(path):
        return []
    records = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


class TensorBoardScalars(MetricsSink):
    """Every numeric entry as a scalar under `model_dir/tensorboard` (except
    `step`, `first_example`, and `retrieval/*`, which its callback writes)."""

    def __init__(self, model_dir):
        self.writer = tf.summary.create_file_writer(os.path.join(model_dir, "tensorboard"))

    def write(self, step, logs):
        with self.writer.as_default(step=step):
            for key, value in logs.items():
                if isinstance(value, (int, float)) and key not in (
                        "step", "first_example") and not key.startswith("retrieval/"):
                    tf.summary.scalar(key, value)

    def close(self):
        self.writer.flush()


class ProgressDisplay(MetricsSink):
    """A Keras progress bar, or plain log lines with `quiet`."""

    def __init__(self, total_steps, start_step, quiet):
        self.start_time = time.time()
        self.bar = None
        if not quiet:
            # Stateful: the bar shows each logged value, not a running mean.
            self.bar = keras.utils.Progbar(total_steps, stateful_metrics=list(SHOWN),
                                           unit_name="step")
            if start_step:
                self.bar.update(start_step)

    def write(self, step, logs):
        # None (an objective off; MoCo with an empty queue: no negatives) is not shown.
        shown = [(k, logs[k]) for k in SHOWN if logs.get(k) is not None]
        if self.bar is not None:
            self.bar.update(step, values=shown, finalize=False)
            return
        text = " ".join(f"{k}={v}" if isinstance(v, int) else f"{k}={v:.4f}" for k, v in shown)
        print(f"step {step} {text} ({time.time() - self.start_time:.0f}s)", flush=True)

    def close(self):
        if self.bar is not None:
            sys.stdout.write("\n")


class MetricsSinks(MetricsSink):
    """Several sinks as one, written in order."""

    def __init__(self, sinks):
        self.sinks = list(sinks)

    def write(self, step, logs):
        for sink in self.sinks:
            sink.write(step, logs)

    def close(self):
        for sink in self.sinks:
            sink.close()


def chief_sinks(model_dir, restored_step, total_steps, quiet):
    """metrics.jsonl, TensorBoard and the progress display of the chief."""
    os.makedirs(model_dir, exist_ok=True)
    return MetricsSinks([MetricsFile(model_dir, restored_step), TensorBoardScalars(model_dir),
                         ProgressDisplay(total_steps, restored_step, quiet)])
