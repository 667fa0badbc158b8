"""The shape of a task (after TF Model Garden's `Task`), and what tasks share.

A task turns files into examples (`find_files`, `read_data`), examples into
padded-batch-ready rows (`build_inputs`), builds its model and loss
(`build_model`, `build_losses`), names its metric (`build_metrics`), gives a
batch's labels (`batch_labels`) and evaluates a fine-tuned model as per-row
counts of that metric (`evaluate`, `tf_mbalign.tasks.intervals`). `tf_mbalign.tasks.runner` runs any task the
same way: fine-tune on English, test every language, repeat over seeds.
"""

import dataclasses
import functools

import numpy as np

from tf_mbalign.data.dynamic_padding import length_grouped_batches, pad_rows
from tf_mbalign.tasks import intervals


@dataclasses.dataclass
class TaskData:
    """English training rows, optional English selection rows, test rows per language."""

    train: list
    select: list
    tests: dict  # {language: [example]}
    labels: tuple  # label names; a label's id is its index
    files: dict  # {"train": path, "select": path or None, "tests": {language: path}}


@dataclasses.dataclass
class EncodedRows:
    """Token-id rows and their labels (an id per row, or an id array per row)."""

    rows: list
    labels: object
    extra: dict = dataclasses.field(default_factory=dict)


class Task:
    """Base class; subclasses set `name`, `metric`, `uses_pooling` and the methods."""

    name = ""
    metric = "accuracy"  # a key of tf_mbalign.tasks.intervals.METRICS
    uses_pooling = False

    def find_files(self, data_root):
        """{"train", "select", "tests"} paths, or None when the task's files are absent."""
        raise NotImplementedError

    def read_data(self, files, budget):
        """A `TaskData`, subsets taken as `budget` (a `TaskBudget`) says."""
        raise NotImplementedError

    def build_inputs(self, examples, labels, tokenizer, max_length):
        """An `EncodedRows` of `examples`; `labels` are the label names."""
        raise NotImplementedError

    def build_model(self, encoder, num_labels, pooling, dropout):
        raise NotImplementedError

    def build_losses(self, labels, outputs):
        raise NotImplementedError

    def build_metrics(self):
        """Per-row counts -> the task's metric over those rows (`intervals.METRICS`)."""
        return functools.partial(intervals.metric_value, self.metric)

    def batch_labels(self, encoded, index):
        raise NotImplementedError

    def evaluate(self, tuner, encoded, labels, pad_id):
        """[rows, k]: the metric's per-row counts (`intervals.STATS_COLUMNS`)."""
        raise NotImplementedError


def training_subset(examples, limit):
    """The first `limit` examples after a fixed shuffle (all when limit is 0)."""
    if not limit or limit >= len(examples):
        return list(examples)
    order = np.random.RandomState(0).permutation(len(examples))[:limit]
    return [examples[i] for i in sorted(order)]


TEST_ROWS = ("all", "even", "odd")


def test_subset(examples, limit, rows="all"):
    """The first `limit` examples of `rows` (line-aligned files stay aligned).

    `rows` is "all", or "even" / "odd": the rows at even / odd positions of
    the file, two disjoint halves interleaved through it (one half to choose
    a recipe on, the other to confirm it).
    """
    if rows not in TEST_ROWS:
        raise ValueError(f"test rows {rows!r}: choose from {', '.join(TEST_ROWS)}.")
    chosen = examples if rows == "all" else examples[TEST_ROWS.index(rows) - 1::2]
    return list(chosen[:limit or None])


def predict_batches(tuner, rows, pad_id, batch_size=64):
    """Yields (row indices, model outputs as numpy) over length-sorted batches."""
    for index in length_grouped_batches([len(r) for r in rows], batch_size):
        yield index, np.asarray(tuner.predict(pad_rows([rows[i] for i in index], pad_id)))


def padded_width(rows, multiple=8):
    """The width `pad_rows` gives these rows."""
    return -(-max(len(r) for r in rows) // multiple) * multiple
