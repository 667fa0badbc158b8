"""Word-level tasks: named entities (`ner`, PAN-X) and part-of-speech tags (`pos`, UD).

Files are CoNLL style, `token<TAB>tag` a line and a blank line after each
sentence: `<root>/panx/train-en.tsv` + `<root>/panx/test-XX.tsv`,
`<root>/udpos/train-en.tsv` + `<root>/udpos/test-XX.tsv`.

Each word is tokenized on its own (so sub-tokens never cross words); the
sentence is `[CLS] sub-tokens [SEP]`; the first sub-token of each word
carries the word's tag (a SentencePiece word-start mark standing alone as a
word's first piece is dropped: tokenizing word by word puts one before every
word, and for words it does not merge with, as in Chinese, the label would
sit on that content-free piece, which running Chinese text, having no
spaces, never contains), every other position is ignored by the loss
(`masked_token_loss`) and by the evaluation, which reads the prediction of
each word at its first sub-token. Words cut off by `max_seq_length` are
predicted as `O` (NER) or as no tag (POS, counted wrong). Fixed schedule:
there is no English dev set to select on.
"""

import os

import numpy as np

from tf_mbalign.evaluation.sentence_embedding import tokenize_sentences
from tf_mbalign.modeling.classifiers import IGNORED, TokenClassifier, masked_token_loss
from tf_mbalign.tasks import readers, tagging_metrics
from tf_mbalign.tasks.base import (EncodedRows, Task, TaskData, padded_width, predict_batches,
                                   test_subset, training_subset)


def _without_lone_word_start(word_pieces, word_start_id):
    """A word's pieces without a leading lone word-start piece (when others follow)."""
    if word_start_id is not None and len(word_pieces) > 1 and word_pieces[0] == word_start_id:
        return word_pieces[1:]
    return word_pieces


def encode_words(sentences, labels, tokenizer, max_length):
    """Rows, per-position label ids and first-sub-token positions of tagged sentences."""
    pieces = tokenize_sentences(tokenizer, [w for s in sentences for w in s.words])
    index = {label: i for i, label in enumerate(labels)}
    rows, label_rows, first_positions, next_word = [], [], [], 0
    for sentence in sentences:
        ids, firsts = [tokenizer.cls_id], []
        for word_pieces in pieces[next_word: next_word + len(sentence.words)]:
            word_pieces = _without_lone_word_start(word_pieces, tokenizer.word_start_id)
            word_pieces = word_pieces or [tokenizer.unk_id]  # a word is never empty
            if len(ids) + len(word_pieces) >= max_length:  # no room for it and [SEP]
                break
            firsts.append(len(ids))
            ids.extend(word_pieces)
        next_word += len(sentence.words)
        ids.append(tokenizer.sep_id)
        label_row = np.full(len(ids), IGNORED, np.int32)
        for position, tag in zip(firsts, sentence.tags):
            label_row[position] = index.get(tag, IGNORED)
        rows.append(ids)
        label_rows.append(label_row)
        first_positions.append(np.array(firsts, np.int64))
    return EncodedRows(rows, label_rows, {"first_positions": first_positions,
                                          "gold": [s.tags for s in sentences]})


class TaggingTask(Task):
    """What NER and POS share; subclasses set the folder, tag check and metric."""

    folder = ""
    entity_tags = False
    cut_off_tag = ""  # what a word past max_seq_length is predicted as

    def find_files(self, data_root):
        directory = os.path.join(data_root, self.folder)
        train = os.path.join(directory, "train-en.tsv")
        tests = readers.test_files(directory)
        if not os.path.isfile(train) or not tests:
            return None
        return {"train": train, "select": None, "tests": tests}

    def read_data(self, files, budget):
        train_all = readers.read_tagged(files["train"], self.entity_tags)
        labels = tuple(sorted({tag for s in train_all for tag in s.tags}))
        train = training_subset(train_all, budget.max_train_examples)
        tests = {language: test_subset(readers.read_tagged(path, self.entity_tags),
                                       budget.max_test_examples)
                 for language, path in files["tests"].items()}
        return TaskData(train, [], tests, labels, files)

    def build_inputs(self, examples, labels, tokenizer, max_length):
        return encode_words(examples, labels, tokenizer, max_length)

    def build_model(self, encoder, num_labels, pooling, dropout):
        return TokenClassifier(encoder, num_classes=num_labels, dropout=dropout,
                               name=f"{self.name}_tagger")

    def build_losses(self, labels, outputs):
        return masked_token_loss(labels, outputs)

    def batch_labels(self, encoded, index):
        rows = [encoded.labels[i] for i in index]
        out = np.full((len(rows), padded_width(rows)), IGNORED, np.int32)
        for i, row in enumerate(rows):
            out[i, : len(row)] = row
        return out

    def predicted_tags(self, tuner, encoded, labels, pad_id):
        """The predicted tag of every word of every sentence."""
        predicted = [None] * len(encoded.rows)
        for index, logits in predict_batches(tuner, encoded.rows, pad_id):
            for j, i in enumerate(index):
                firsts = encoded.extra["first_positions"][i]
                tags = [labels[k] for k in np.argmax(logits[j, firsts], axis=-1)]
                missing = len(encoded.extra["gold"][i]) - len(tags)
                predicted[i] = tags + [self.cut_off_tag] * missing
        return predicted

    def evaluate(self, tuner, encoded, labels, pad_id):
        return self.count(encoded.extra["gold"],
                          self.predicted_tags(tuner, encoded, labels, pad_id))

    def count(self, gold, predicted):
        raise NotImplementedError


class NerTask(TaggingTask):
    """PAN-X named entities; entity-level F1 (seqeval)."""

    name = "ner"
    metric = "f1"
    folder = "panx"
    entity_tags = True
    cut_off_tag = "O"

    def count(self, gold, predicted):
        return tagging_metrics.entity_counts(gold, predicted)


class PosTask(TaggingTask):
    """UD part-of-speech tags; accuracy over words."""

    name = "pos"
    metric = "accuracy"
    folder = "udpos"

    def count(self, gold, predicted):
        return tagging_metrics.tag_counts(gold, predicted)
