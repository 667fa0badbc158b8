"""Sentence-level tasks: NLI (sentence pairs) and topic classification (single sentences).

Both fine-tune a `PooledClassifier` ([CLS] or mean pooling, the same head for
every encoder) with cross-entropy and score accuracy (per-row counts
(correct, 1)).

- `nli`: trains on `<root>/nli/snli-train.tsv`, may select on
  `<root>/nli/snli-test.tsv` (English, never XNLI), tests on every
  `<root>/xnli/test-XX.tsv` or `dev-XX.tsv`.
- `topic`: trains on `<root>/sib200/train-en.tsv`, may select on
  `<root>/sib200/dev-en.tsv`, tests on every `<root>/sib200/test-XX.tsv`.
"""

import os

import numpy as np
import tensorflow as tf

from tf_mbalign.data.pair_packing import truncate_pair_lengths
from tf_mbalign.evaluation.sentence_embedding import encode_single, tokenize_sentences
from tf_mbalign.modeling.classifiers import PooledClassifier
from tf_mbalign.tasks import readers
from tf_mbalign.tasks.base import (EncodedRows, Task, TaskData, predict_batches, test_subset,
                                   training_subset)
from tf_mbalign.training.finetuning import classification_loss


class SentenceClassificationTask(Task):
    """What NLI and topic share: the model, the loss, the labels, the evaluation."""

    metric = "accuracy"
    uses_pooling = True

    def build_model(self, encoder, num_labels, pooling, dropout):
        return PooledClassifier(encoder, num_classes=num_labels, pooling=pooling,
                                dropout=dropout, name=f"{self.name}_classifier")

    def build_losses(self, labels, outputs):
        return classification_loss(labels, outputs)

    def batch_labels(self, encoded, index):
        return encoded.labels[index]

    def evaluate(self, tuner, encoded, labels, pad_id):
        predicted = np.zeros(len(encoded.rows), np.int64)
        for index, logits in predict_batches(tuner, encoded.rows, pad_id):
            predicted[index] = np.argmax(logits, axis=-1)
        correct = (predicted == encoded.labels).astype(np.int64)
        return np.stack([correct, np.ones_like(correct)], axis=1)

    def _label_ids(self, examples, labels, label_of):
        return np.array([labels.index(label_of(e)) for e in examples], np.int32)


class NliTask(SentenceClassificationTask):
    """Premise/hypothesis/label; labels entailment, neutral, contradiction."""

    name = "nli"

    def find_files(self, data_root):
        train = os.path.join(data_root, "nli", "snli-train.tsv")
        tests = readers.test_files(os.path.join(data_root, "xnli"))
        if not os.path.isfile(train) or not tests:
            return None
        select = os.path.join(data_root, "nli", "snli-test.tsv")
        return {"train": train, "select": select if os.path.isfile(select) else None,
                "tests": tests}

    def read_data(self, files, budget):
        train = training_subset(readers.read_pairs(files["train"]), budget.max_train_examples)
        tests = {language: test_subset(readers.read_pairs(path), budget.max_test_examples)
                 for language, path in files["tests"].items()}
        return TaskData(train, self.read_selection(files, budget), tests, readers.NLI_LABELS,
                        files)

    def read_selection(self, files, budget):
        """The English selection rows (`snli-test.tsv`), [] without that file."""
        if not files.get("select"):
            return []
        return test_subset(readers.read_pairs(files["select"]), budget.max_select_examples)

    def build_inputs(self, examples, labels, tokenizer, max_length):
        first = tokenize_sentences(tokenizer, [e.premise for e in examples])
        second = tokenize_sentences(tokenizer, [e.hypothesis for e in examples])
        keep_first, keep_second = truncate_pair_lengths(
            tf.constant([len(x) for x in first]), tf.constant([len(x) for x in second]),
            max_length - 3)
        rows = [[tokenizer.cls_id, *a[:i], tokenizer.sep_id, *b[:j], tokenizer.sep_id]
                for a, b, i, j in zip(first, second, keep_first.numpy(), keep_second.numpy())]
        return EncodedRows(rows, self._label_ids(examples, labels, lambda e: e.label))


class TopicTask(SentenceClassificationTask):
    """SIB-200: one sentence, one of the training file's categories."""

    name = "topic"

    def find_files(self, data_root):
        directory = os.path.join(data_root, "sib200")
        train = os.path.join(directory, "train-en.tsv")
        tests = readers.test_files(directory)
        if not os.path.isfile(train) or not tests:
            return None
        select = os.path.join(directory, "dev-en.tsv")
        return {"train": train, "select": select if os.path.isfile(select) else None,
                "tests": tests}

    def read_data(self, files, budget):
        train_all = readers.read_topics(files["train"])
        labels = tuple(sorted({e.category for e in train_all}))
        train = training_subset(train_all, budget.max_train_examples)
        select = (test_subset(readers.read_topics(files["select"]), budget.max_select_examples)
                  if files.get("select") else [])
        tests = {language: test_subset(readers.read_topics(path), budget.max_test_examples)
                 for language, path in files["tests"].items()}
        for examples in [select, *tests.values()]:
            readers.check_labels(examples, lambda e: [e.category], labels, files["train"])
        return TaskData(train, select, tests, labels, files)

    def build_inputs(self, examples, labels, tokenizer, max_length):
        rows = encode_single(tokenizer, [e.text for e in examples], max_length)
        return EncodedRows(rows, self._label_ids(examples, labels, lambda e: e.category))
