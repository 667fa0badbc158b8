"""The shared runner: fine-tune on English, test every language, repeat over seeds.

`run_finetuned_task` works for any `Task` (`tf_mbalign.tasks.base`);
`run_retrieval` scores Tatoeba-style retrieval with [CLS] and mean pooling on
one or more test sets (Tatoeba, FLORES).
Both return a job's `tables`: {table name: {"metric", "pooling",
"languages": {language: {"values": [per seed], "row_stats": [per seed:
[[count, ...] per test row]], "rows", "file"}}}}, the raw material of
`tf_mbalign.tasks.intervals`.
"""

import dataclasses
import os

import keras
import numpy as np

from tf_mbalign.data.dynamic_padding import pad_rows
from tf_mbalign.evaluation.retrieval import bitext_files, read_bitext_files
from tf_mbalign.evaluation.sentence_embedding import SentenceEmbedder
from tf_mbalign.modeling.pooling import POOLINGS
from tf_mbalign.tasks.base import test_subset
from tf_mbalign.tasks.intervals import metric_value
from tf_mbalign.training.finetuning import FinetuneConfig, FineTuner, loss_summary, start_seed


def finetune_config(task_budget, dropout):
    return FinetuneConfig(learning_rate=task_budget.learning_rate,
                          head_learning_rate=task_budget.head_learning_rate,
                          batch_size=task_budget.batch_size, epochs=task_budget.epochs,
                          dropout=dropout)


def _max_length(trained, task_budget):
    positions = trained.encoder.get_config().get("max_sequence_length") or 512
    return min(task_budget.max_seq_length, positions)


def _candidate_poolings(task, pooling, data):
    if not task.uses_pooling:
        return [None]
    if pooling != "select":
        return [pooling]
    if not data.select:
        raise ValueError(f"{task.name}: --budget asks to select the pooling on English "
                         "held-out rows, but the task has no selection file.")
    return list(POOLINGS)


def _fine_tune(task, trained, data, train, pooling, config, seed, initial_weights, progress):
    """One seed's fine-tuned `FineTuner` and its losses."""
    tokenizer, rng = start_seed(seed, trained.encoder, initial_weights, trained.tokenizer)
    trained.tokenizer = tokenizer
    model = task.build_model(trained.encoder, len(data.labels), pooling, config.dropout)
    steps = config.total_steps(len(train.rows))
    tuner = FineTuner(model, task.build_losses, config, steps,
                      pad_rows(train.rows[:2], tokenizer.pad_id))
    losses = tuner.fit(train.rows, lambda index: task.batch_labels(train, index),
                       tokenizer.pad_id, steps, rng, progress)
    return tuner, losses, steps


def read_task_data(task, files, task_budget, test_rows="all"):
    """`task.read_data`, its test rows limited to `test_rows` (`base.test_subset`) first."""
    if test_rows == "all":
        return task.read_data(files, task_budget)
    data = task.read_data(files, dataclasses.replace(task_budget, max_test_examples=0))
    data.tests = {language: test_subset(examples, task_budget.max_test_examples, test_rows)
                  for language, examples in data.tests.items()}
    return data


def run_finetuned_task(task, trained, files, budget, seeds, dropout=0.1, log=print,
                       progress=True, test_rows="all"):
    """Fine-tunes `trained.encoder` per seed on English and tests every language.

    Args:
        task: a `Task`.
        trained: a `TrainedEncoder` (`tf_mbalign.evaluation.trained_encoders`).
        files: the task's `find_files` result.
        budget: a `Budget` (`tf_mbalign.tasks.budgets`).
        seeds: fine-tuning seeds.
        dropout: encoder and head dropout while fine-tuning.
        log: callable taking a line of text.
        progress: show a progress bar while fine-tuning.
        test_rows: "all", "even" or "odd" rows of each test file (`base.test_subset`).

    Returns:
        {"tables": {task.name: ...}, "training": {...}, "pooling_selection": ...}
    """
    task_budget = budget.task(task.name)
    data = read_task_data(task, files, task_budget, test_rows)
    max_length = _max_length(trained, task_budget)

    def encode(examples):
        return task.build_inputs(examples, data.labels, trained.tokenizer, max_length)

    inputs = {"train": encode(data.train), "select": encode(data.select) if data.select else None,
              "tests": {lang: encode(examples) for lang, examples in data.tests.items()}}
    config = finetune_config(task_budget, dropout)
    initial_weights = trained.encoder.get_weights()
    try:
        runs = _run_seeds(task, trained, data, inputs, config, seeds, budget.pooling,
                          initial_weights, log, progress)
    finally:
        trained.encoder.set_weights(initial_weights)
    table = {"metric": task.metric, "pooling": runs["pooling"], "languages": {
        lang: _cell(counts, task.metric, files["tests"][lang])
        for lang, counts in runs["row_stats"].items()}}
    selection = runs["selection"]
    return {
        "tables": {task.name: table},
        "training": {"examples": len(inputs["train"].rows), "steps": runs["steps"],
                     "labels": list(data.labels), "loss": loss_summary(runs["losses"]),
                     "finetune": dataclasses.asdict(config), "max_seq_length": max_length},
        "pooling_selection": ({"on": files["select"], "rows": len(inputs["select"].rows),
                               "scores": selection} if selection else None),
    }


def _run_seeds(task, trained, data, inputs, config, seeds, pooling_rule, initial_weights,
               log, progress):
    """Every seed's per-row test counts; seed 0 also picks the pooling under "select"."""
    pad_id = trained.tokenizer.pad_id
    metric = task.build_metrics()
    candidates = _candidate_poolings(task, pooling_rule, data)
    row_stats = {lang: [] for lang in inputs["tests"]}
    losses, selection, chosen, steps = [], {}, candidates[0], 0
    for number, seed in enumerate(seeds):
        results = {}
        for pooling in (candidates if number == 0 else [chosen]):
            log(f"[{task.name}] seed {seed}" + (f", {pooling} pooling" if pooling else "")
                + f": fine-tuning on {len(inputs['train'].rows)} English examples")
            tuner, run_losses, steps = _fine_tune(task, trained, data, inputs["train"], pooling,
                                                  config, seed, initial_weights, progress)
            if len(candidates) > 1:
                selection[pooling] = metric(
                    task.evaluate(tuner, inputs["select"], data.labels, pad_id))
            results[pooling] = (run_losses, _test_every_language(
                task, tuner, inputs["tests"], data.labels, pad_id, progress))
        if number == 0 and len(candidates) > 1:
            chosen = max(candidates, key=lambda p: selection[p])
            log(f"[{task.name}] pooling chosen on English held-out rows: {chosen} {selection}")
        run_losses, stats = results[chosen]
        losses.append(run_losses)
        for lang, counts in stats.items():
            row_stats[lang].append(counts)
        log(f"[{task.name}] seed {seed}: " + " ".join(
            f"{lang}={metric(counts):.3f}" for lang, counts in stats.items()))
    return {"row_stats": row_stats, "losses": losses, "selection": selection,
            "pooling": chosen, "steps": steps}


def _test_every_language(task, tuner, tests, labels, pad_id, progress):
    """{language: per-row counts}, with a progress bar over the languages."""
    bar = keras.utils.Progbar(len(tests), verbose=int(progress), unit_name="language")
    counts = {}
    for lang, rows in tests.items():
        counts[lang] = task.evaluate(tuner, rows, labels, pad_id)
        bar.add(1)
    return counts


def _cell(counts_per_seed, metric, path):
    return {"values": [metric_value(metric, c) for c in counts_per_seed],
            "row_stats": [np.asarray(c).tolist() for c in counts_per_seed],
            "rows": len(counts_per_seed[0]), "file": path}


def retrieval_files(data_root):
    """The default track's retrieval files, {"tests": {language: XX-en.XX path}} of
    `<data_root>/tatoeba`; None when there are none."""
    try:
        return {"tests": bitext_files(os.path.join(data_root, "tatoeba"))}
    except FileNotFoundError:
        return None


def retrieval_table_name(test_set, pooling, direction):
    """A retrieval table's name, e.g. `retrieval_mean_xx_to_en`, `flores_cls_en_to_xx`."""
    return f"{test_set}_{pooling}_{direction}"


def retrieval_counts(foreign_vectors, english_vectors):
    """{"xx_to_en", "en_to_xx"}: per-row (correct, 1) of top-1 cosine retrieval."""
    similarity = foreign_vectors @ english_vectors.T
    gold = np.arange(len(foreign_vectors))
    counts = {}
    for direction, axis in (("xx_to_en", 1), ("en_to_xx", 0)):
        correct = (np.argmax(similarity, axis=axis) == gold).astype(np.int64)
        counts[direction] = np.stack([correct, np.ones_like(correct)], axis=1)
    return counts


def read_retrieval_pairs(files, budget, test_rows="all"):
    """{language: Bitext} of the pairs of `files` ({language: XX-en.XX path}) that the
    budget and `test_rows` keep."""
    data = read_bitext_files(files)
    for bitext in data.values():
        bitext.foreign, bitext.english = (
            test_subset(lines, budget.retrieval_max_pairs, test_rows)
            for lines in (bitext.foreign, bitext.english))
    return data


def _embed_each_pooling(embedder, sentences, known):
    """{pooling: [len(sentences), hidden]}; a sentence already in `known` ({sentence:
    {pooling: vector}}, filled here) is not embedded again (e.g. FLORES' English side,
    the same sentences for every language)."""
    new = [sentence for sentence in dict.fromkeys(sentences) if sentence not in known]
    if new:
        vectors = embedder.each_pooling(new)
        known.update({sentence: {pooling: vectors[pooling][i] for pooling in POOLINGS}
                      for i, sentence in enumerate(new)})
    return {pooling: np.stack([known[sentence][pooling] for sentence in sentences])
            for pooling in POOLINGS}


def run_retrieval(trained, test_sets, budget, log=print, progress=True, test_rows="all"):
    """Top-1 retrieval, XX->en and en->XX, with [CLS] and with mean pooling (last layer).

    Args:
        trained: a `TrainedEncoder`.
        test_sets: {name: {language: path of XX-en.XX}}, e.g. {"retrieval": Tatoeba's
            files}; a set's tables are `<name>_<pooling>_<direction>`.
        budget: a `Budget` (pairs a language, tokens a sentence).
        log, progress: as `run_finetuned_task`.
        test_rows: "all", "even" or "odd" pairs of each language (`base.test_subset`).

    Returns:
        {"tables": ..., "training": None, "pooling_selection": None}: both poolings come
        from one forward pass a batch.
    """
    embedder = SentenceEmbedder(trained.encoder, trained.tokenizer, layer=-1,
                                max_length=budget.retrieval_max_length)
    known, tables = {}, {}
    for name, files in test_sets.items():
        data = read_retrieval_pairs(files, budget, test_rows)
        bar = keras.utils.Progbar(len(data), verbose=int(progress), unit_name="language")
        for lang, bitext in data.items():
            vectors = _embed_each_pooling(embedder, [*bitext.foreign, *bitext.english], known)
            pairs = len(bitext.foreign)
            for pooling in POOLINGS:
                counts = retrieval_counts(vectors[pooling][:pairs], vectors[pooling][pairs:])
                for direction, rows in counts.items():
                    table = tables.setdefault(retrieval_table_name(name, pooling, direction), {
                        "metric": "accuracy", "pooling": pooling, "languages": {}})
                    table["languages"][lang] = _cell([rows], "accuracy", files[lang])
            bar.add(1)
        for pooling in POOLINGS:
            log(f"[{name}] {pooling}: " + " ".join(
                f"{lang}={cell['values'][0]:.3f}"
                for lang, cell in tables[retrieval_table_name(name, pooling, "xx_to_en")][
                    "languages"].items()))
    return {"tables": tables, "training": None, "pooling_selection": None}
