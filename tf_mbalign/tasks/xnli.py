"""XNLI fine-tuning and zero-shot / translate-train / code-switched evaluation,
and the suite's optional `xnli_mini` task (`XnliMiniTask`).

Data (`read_xnli_dir`): a directory of `dev-XX.tsv` (or `train-XX.tsv` +
`test-XX.tsv`) files, `premise<TAB>hypothesis<TAB>label`, rows line-aligned
across languages (row i of every file is the same example translated). With
only `dev-XX.tsv`, the XNLI-mini protocol of ../shared/data/README.md
applies: rows with i % 3 != 2 train, rows with i % 3 == 2 test. `--data=tfds`
uses TFDS instead (online): MNLI (`multi_nli`) English training data, its
machine translations (`xtreme_xnli`) for translate-train, and the XNLI test
set (`xnli`).

Settings (`SETTINGS`):
- `zero_shot`: train on the English training rows only.
- `translate_train`: train on the training rows of every training language
  (English included), each row in each language an example.
- `code_switch`: translate-train where each example's premise and hypothesis
  are each replaced, with probability p, by the same row's segment in English
  (non-English examples) or in a random other training language (English
  examples): `tf_mbalign.data.code_switching`.
Test rows are never trained on; every language is evaluated on its test rows.

The suite task `xnli_mini` (`XnliMiniTask`, zero-shot only) reads
`<root>/xnli/dev-XX.tsv`: rows i % 3 != 2 of the English file train, rows
i % 3 == 2 of every language's file test; `<root>/nli/snli-test.tsv`, when
present, is its English selection file (as for `nli`; never XNLI rows).
"""

import dataclasses
import os
import re
import time

import numpy as np
import tensorflow as tf

from tf_mbalign.data.code_switching import code_switch
from tf_mbalign.data.dynamic_padding import length_grouped_batches, pad_rows
from tf_mbalign.data.language_files import FileLayout, find_language_files
from tf_mbalign.data.pair_packing import truncate_pair_lengths
from tf_mbalign.data.tsv_files import NLI_LABELS, nli_rows
from tf_mbalign.evaluation import reports
from tf_mbalign.evaluation.sentence_embedding import tokenize_sentences
from tf_mbalign.modeling.classifiers import PooledClassifier
from tf_mbalign.tasks import readers
from tf_mbalign.tasks.base import TaskData, test_subset, training_subset
from tf_mbalign.tasks.sentence_tasks import NliTask
from tf_mbalign.training.finetuning import (SeedRun, classification_loss, fine_tune,
                                            run_per_seed)

LABELS = NLI_LABELS
SETTINGS = ("zero_shot", "translate_train", "code_switch")
_FILES = FileLayout(re.compile(r"^(?P<split>dev|train|test)-(?P<language>[A-Za-z_-]+)\.tsv$"),
                    "dev-XX.tsv (or train-XX.tsv and test-XX.tsv)",
                    expected=lambda language: (f"dev-{language}.tsv (or train-{language}.tsv "
                                               f"and test-{language}.tsv)"),
                    example="../shared/data/xnli")


@dataclasses.dataclass
class NliData:
    """Line-aligned examples: `train[lang][i]` translates `train["en"][i]`.

    Each example is (premise, hypothesis, label id, "file:line").
    """

    train: dict
    test: dict


def _read_tsv(path):
    return [(premise, hypothesis, LABELS.index(label), source)
            for premise, hypothesis, label, source in nli_rows(path, LABELS)]


def read_xnli_dir(data_dir, languages=None):
    """`NliData` from a directory (module docstring); checks the row alignment."""
    files = find_language_files(data_dir, _FILES, languages)
    if "en" not in files:
        raise FileNotFoundError(f"{data_dir}: no English file (dev-en.tsv or train-en.tsv): "
                                "English training data is needed for every setting.")
    train, test = {}, {}
    for lang, paths in sorted(files.items()):
        if "train" in paths and "test" in paths:
            train[lang], test[lang] = _read_tsv(paths["train"]), _read_tsv(paths["test"])
        elif "dev" in paths:  # XNLI-mini
            train[lang], test[lang] = mini_split(_read_tsv(paths["dev"]))
        else:
            raise FileNotFoundError(f"{data_dir}: {lang} has {sorted(paths)} files; expected "
                                    f"dev-{lang}.tsv or both train-{lang}.tsv and test-{lang}.tsv.")
    for split in (train, test):
        for lang, rows in split.items():
            _check_aligned(split["en"], rows, lang)
    return NliData(train, test)


def mini_split(rows):
    """(training rows, test rows) of one XNLI-mini file: rows i % 3 != 2 train."""
    return ([r for i, r in enumerate(rows) if i % 3 != 2],
            [r for i, r in enumerate(rows) if i % 3 == 2])


def _check_aligned(english, rows, lang):
    if len(rows) != len(english):
        raise ValueError(f"{rows[0][3].rsplit(':', 1)[0] if rows else lang}: {len(rows)} rows "
                         f"but English has {len(english)}; rows must be translations line by line.")
    for (_, _, label_en, source_en), (_, _, label, source) in zip(english, rows):
        if label != label_en:
            raise ValueError(f"{source}: label {LABELS[label]} differs from {source_en} "
                             f"({LABELS[label_en]}); the files are not line-aligned.")


def read_xnli_tfds(languages, max_train_examples=0):
    """`NliData` from TFDS (needs internet the first time): MNLI + xtreme_xnli + xnli."""
    import tensorflow_datasets as tfds

    def take(name, split):
        limit = f"[:{max_train_examples}]" if max_train_examples and split == "train" else ""
        return tfds.as_numpy(tfds.load(name, split=split + limit))

    others = [lang for lang in languages if lang != "en"]
    if others:  # English from the same rows, so every language stays line-aligned.
        train = {lang: [] for lang in ["en", *others]}
        for i, x in enumerate(take("xtreme_xnli", "train")):
            for lang, row in zip(train, translated_rows(x, list(train), f"xtreme_xnli:{i}")):
                train[lang].append(row)
    else:
        train = {"en": [_decode_nli(x["premise"], x["hypothesis"], x["label"], f"multi_nli:{i}")
                        for i, x in enumerate(take("multi_nli", "train"))]}
    test = {lang: [] for lang in languages}
    for i, x in enumerate(take("xnli", "test")):
        for lang, row in zip(languages, translated_rows(x, languages, f"xnli:test:{i}")):
            test[lang].append(row)
    return NliData(train, test)


def translated_rows(example, languages, source):
    """One TFDS xnli / xtreme_xnli example -> a row per language.

    The premise is a `Translation` ({lang: text}); the hypothesis a
    `TranslationVariableLanguages` ({"language": [...], "translation": [...]}).
    """
    hypotheses = {(k.decode() if isinstance(k, bytes) else k): v for k, v in
                  zip(example["hypothesis"]["language"], example["hypothesis"]["translation"])}
    premises = {(k.decode() if isinstance(k, bytes) else k): v
                for k, v in example["premise"].items()}
    missing = [lang for lang in languages if lang not in premises or lang not in hypotheses]
    if missing:
        raise ValueError(f"{source}: no {', '.join(missing)} translation.")
    return [_decode_nli(premises[lang], hypotheses[lang], example["label"], source)
            for lang in languages]


def _decode_nli(premise, hypothesis, label, source):
    text = [s.decode("utf-8") if isinstance(s, bytes) else s for s in (premise, hypothesis)]
    return (text[0], text[1], int(label), source)


# === Training examples per setting ===

def training_examples(data, setting, train_languages, probability, rng):
    """[(premise, hypothesis, label)] for a setting (module docstring)."""
    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {SETTINGS}, got {setting!r}")
    if setting == "zero_shot":
        return [(p, h, y) for p, h, y, _ in data.train["en"]]
    languages = [lang for lang in train_languages if lang in data.train]
    examples = []
    for lang in languages:
        for i, (premise, hypothesis, label, _) in enumerate(data.train[lang]):
            if setting == "code_switch":
                translations = {other: data.train[other][i][:2] for other in languages}
                (premise, hypothesis), _ = code_switch(
                    lang, [premise, hypothesis], translations, probability, rng)
            examples.append((premise, hypothesis, label))
    return examples


# === Features ===

def encode_pairs(tokenizer, premises, hypotheses, max_length):
    """`[CLS] premise [SEP] hypothesis [SEP]` rows, fairly truncated."""
    first, second = tokenize_sentences(tokenizer, premises), tokenize_sentences(tokenizer, hypotheses)
    keep_first, keep_second = truncate_pair_lengths(
        tf.constant([len(x) for x in first]), tf.constant([len(x) for x in second]),
        max_length - 3)
    return [[tokenizer.cls_id, *a[:i], tokenizer.sep_id, *b[:j], tokenizer.sep_id]
            for a, b, i, j in zip(first, second, keep_first.numpy(), keep_second.numpy())]


def predict_labels(tuner, rows, pad_id, batch_size=64):
    """Argmax label of every row, in the rows' order (batches are length-sorted)."""
    predictions = np.zeros(len(rows), np.int64)
    for index in length_grouped_batches([len(r) for r in rows], batch_size):
        logits = tuner.predict(pad_rows([rows[i] for i in index], pad_id))
        predictions[index] = np.argmax(np.asarray(logits), axis=-1)
    return predictions


def accuracy(tuner, rows, gold, pad_id, batch_size=64):
    """Share of rows whose predicted label is the gold one."""
    return float(np.mean(predict_labels(tuner, rows, pad_id, batch_size) == np.asarray(gold)))


# === One run per seed, then the report ===

@dataclasses.dataclass(frozen=True)
class XnliConfig:
    setting: str = "zero_shot"
    train_languages: tuple = ()  # default: every language in the data
    eval_languages: tuple = ()  # default: every language in the data
    code_switch_probability: float = 0.5
    max_seq_length: int = 128
    max_train_examples: int = 0  # > 0: the first N examples after shuffling
    max_eval_examples: int = 0  # > 0: the first N test rows of each language
    seeds: tuple = (0,)


def run_xnli(trained, data, config, finetune, log=print, progress=True):
    """Fine-tunes `trained.encoder` per seed and evaluates every language.

    Returns a report dict (`tf_mbalign.evaluation.reports`).
    """
    started = time.time()
    eval_languages = list(config.eval_languages or sorted(data.test))
    test_rows = {lang: _test_set(trained.tokenizer, data.test[lang], config)
                 for lang in eval_languages}

    def run_seed(seed, tokenizer, rng):
        tuner, losses, train_examples = _fine_tune(trained.encoder, tokenizer, data, config,
                                                   finetune, rng, progress)
        scores = {"accuracy": {lang: accuracy(tuner, *test_rows[lang], tokenizer.pad_id)
                               for lang in eval_languages}}
        log(f"seed {seed}: " + " ".join(f"{lang}={value:.3f}"
                                        for lang, value in scores["accuracy"].items())
            + f" (training loss, last 20 steps: {np.mean(losses[-20:]):.3f})")
        return SeedRun(losses, scores, {"train_examples": train_examples, "steps": len(losses)})

    runs = run_per_seed(config.seeds, trained.encoder, trained.tokenizer, run_seed)
    test_examples = {lang: len(test_rows[lang][1]) for lang in eval_languages}
    return reports.fine_tuning_report("xnli", trained, runs, config, finetune,
                                      {"test_examples": test_examples}, started)


def _test_set(tokenizer, rows, config):
    """(encoded pairs, gold labels) of a language's first `max_eval_examples` test rows."""
    rows = rows[: config.max_eval_examples or None]
    return (encode_pairs(tokenizer, [r[0] for r in rows], [r[1] for r in rows],
                         config.max_seq_length), np.array([r[2] for r in rows]))


def _fine_tune(encoder, tokenizer, data, config, finetune, rng, progress):
    """One seed's classifier, trained on the setting's shuffled examples.

    Returns:
        (the `FineTuner`, the loss of every step, the number of training examples).
    """
    train_languages = list(config.train_languages or sorted(data.train))
    examples = training_examples(data, config.setting, train_languages,
                                 config.code_switch_probability, rng)
    order = rng.permutation(len(examples))
    if config.max_train_examples:
        order = order[: config.max_train_examples]
    examples = [examples[i] for i in order]
    rows = encode_pairs(tokenizer, [e[0] for e in examples], [e[1] for e in examples],
                        config.max_seq_length)
    labels = np.array([e[2] for e in examples], np.int32)
    model = PooledClassifier(encoder, num_classes=len(LABELS), pooling="cls",
                             dropout=finetune.dropout, name="xnli_classifier")
    tuner, losses = fine_tune(model, classification_loss, finetune, rows,
                              lambda index: labels[index], tokenizer.pad_id, rng, progress)
    return tuner, losses, len(rows)


# === The suite's `xnli_mini` task ===

class XnliMiniTask(NliTask):
    """XNLI-mini zero-shot: `NliTask`'s inputs, model and metric on the mini split
    of the line-aligned `xnli/dev-XX.tsv` files (module docstring)."""

    name = "xnli_mini"

    def find_files(self, data_root):
        try:
            files = find_language_files(os.path.join(data_root, "xnli"), _FILES)
        except FileNotFoundError:
            return None
        tests = {language: paths["dev"] for language, paths in files.items() if "dev" in paths}
        if "en" not in tests:
            return None
        select = os.path.join(data_root, "nli", "snli-test.tsv")
        return {"train": tests["en"], "select": select if os.path.isfile(select) else None,
                "tests": tests}

    def read_data(self, files, budget):
        english = _read_tsv(files["train"])
        tests = {}
        for language, path in files["tests"].items():
            rows = _read_tsv(path)
            _check_aligned(english, rows, language)
            tests[language] = _pair_examples(test_subset(mini_split(rows)[1],
                                                         budget.max_test_examples))
        train = _pair_examples(training_subset(mini_split(english)[0],
                                               budget.max_train_examples))
        return TaskData(train, self.read_selection(files, budget), tests, LABELS, files)


def _pair_examples(rows):
    """`readers.PairExample`s (what `NliTask.build_inputs` reads) of reader rows."""
    return [readers.PairExample(premise, hypothesis, LABELS[label], source)
            for premise, hypothesis, label, source in rows]
