"""MLQA (extractive QA, SQuAD v1.1 format): fine-tuning and evaluation, and the
suite's optional `mlqa` task (`MlqaTask`).

Data (`read_mlqa_dir`): a directory of `dev-context-C-question-Q.json` files
(or `train-…` + `test-…`), SQuAD v1.1 JSON, question ids shared across
languages (the same QA instance translated). With only `dev-…` files the
MLQA-mini protocol of ../shared/data/README.md applies: a question trains
when int(id, 16) % 2 == 0, else it is a test question.

Settings:
- `zero_shot`: fine-tune on the training questions of context-en-question-en.
- `code_switch`: the same questions, each one's question and context
  replaced, independently with probability p, by a translation of the same
  QA instance in another language when the data has one (a question text
  from any file whose question language is that language; a context with
  its answers from any file whose context language is it):
  `tf_mbalign.data.code_switching`.
Evaluation: every context–question pair's test questions, SQuAD F1/EM with
MLQA's normalization for the context language (`mlqa_metrics`).

The suite task `mlqa` (`MlqaTask`, zero-shot only) trains on the English
training questions of `dev-context-en-question-en.json` and tests, per
language XX, the test questions of `dev-context-XX-question-XX.json`; its
metric is `squad_f1`, one row of counts per question (`question_counts`), so
its intervals resample questions, not windows.

Long contexts are split into windows of `max_seq_length` tokens with
`doc_stride` tokens between window starts; a window's label is the answer's
token span when the answer lies inside, else [CLS] (position 0). At test time
the best-scoring span of at most `max_answer_length` tokens over all windows
of a question is the answer.
"""

import dataclasses
import json
import os
import re
import time

import numpy as np
import tensorflow as tf

from tf_mbalign.data.code_switching import code_switch
from tf_mbalign.data.dynamic_padding import length_grouped_batches, pad_rows
from tf_mbalign.data.language_files import FileLayout, find_language_files
from tf_mbalign.evaluation import mlqa_metrics, reports
from tf_mbalign.evaluation.sentence_embedding import tokenize_sentences
from tf_mbalign.modeling.span_extractor import SpanExtractor
from tf_mbalign.tasks.base import EncodedRows, Task, TaskData, test_subset, training_subset
from tf_mbalign.training.finetuning import SeedRun, fine_tune, run_per_seed, span_loss

SETTINGS = ("zero_shot", "code_switch")
_FILES = FileLayout(
    re.compile(r"^(?P<split>dev|train|test)-context-(?P<context>[A-Za-z_-]+)"
               r"-question-(?P<question>[A-Za-z_-]+)\.json$"),
    "dev-context-C-question-Q.json (or train-… and test-…)",
    expected=lambda pair: f"dev-context-{pair[0]}-question-{pair[1]}.json",
    example="../shared/data/mlqa", what="context-question pair")
_CHUNK = 256


@dataclasses.dataclass
class QaExample:
    qid: str
    question: str
    context: str
    answers: list  # [{"text", "answer_start"}]
    context_language: str
    question_language: str
    source: str  # "file#id"


def read_squad_file(path, context_language, question_language):
    """QaExamples of one SQuAD v1.1 file; answer spans are checked."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)["data"]
    except (json.JSONDecodeError, KeyError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not a SQuAD v1.1 JSON file ({error}).") from error
    examples = []
    for article in data:
        for paragraph in article["paragraphs"]:
            context = paragraph["context"]
            for qa in paragraph["qas"]:
                for answer in qa["answers"]:
                    start = answer["answer_start"]
                    if context[start: start + len(answer["text"])] != answer["text"]:
                        raise ValueError(
                            f"{path}: question {qa['id']}: answer {answer['text']!r} is not at "
                            f"character {start} of its context.")
                examples.append(QaExample(qa["id"], qa["question"], context, qa["answers"],
                                          context_language, question_language,
                                          f"{path}#{qa['id']}"))
    return examples


def is_train_question(qid):
    """MLQA-mini split: int(id, 16) % 2 == 0 trains."""
    return int(qid, 16) % 2 == 0


def mini_split(examples):
    """(training questions, test questions) of one file, by `is_train_question`."""
    return ([e for e in examples if is_train_question(e.qid)],
            [e for e in examples if not is_train_question(e.qid)])


def read_mlqa_dir(data_dir, pairs=None):
    """{"train"|"test": {(context_lang, question_lang): [QaExample]}}."""
    files = find_language_files(data_dir, _FILES, pairs)
    if ("en", "en") not in files:
        raise FileNotFoundError(f"{data_dir}: no dev-context-en-question-en.json: English "
                                "training questions are needed.")
    out = {"train": {}, "test": {}}
    for pair, paths in files.items():
        if "train" in paths and "test" in paths:
            out["train"][pair] = read_squad_file(paths["train"], *pair)
            out["test"][pair] = read_squad_file(paths["test"], *pair)
        elif "dev" in paths:
            out["train"][pair], out["test"][pair] = mini_split(
                read_squad_file(paths["dev"], *pair))
        else:
            raise FileNotFoundError(f"{data_dir}: context-{pair[0]}-question-{pair[1]} needs a "
                                    "dev- file or both train- and test- files.")
    return out


def training_examples(data, setting, probability, rng):
    """The English training questions, code-switched for `code_switch`."""
    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {SETTINGS}, got {setting!r}")
    english = data["train"][("en", "en")]
    if setting == "zero_shot":
        return english
    questions, contexts = {}, {}  # language -> qid -> segment
    for (context_lang, question_lang), examples in data["train"].items():
        for e in examples:
            questions.setdefault(question_lang, {})[e.qid] = e.question
            contexts.setdefault(context_lang, {})[e.qid] = (e.context, e.answers)
    languages = sorted(set(questions) | set(contexts))
    switched = []
    for e in english:
        translations = {lang: [questions.get(lang, {}).get(e.qid),
                               contexts.get(lang, {}).get(e.qid)] for lang in languages}
        (question, (context, answers)), langs = code_switch(
            "en", [e.question, (e.context, e.answers)], translations, probability, rng)
        switched.append(QaExample(e.qid, question, context, answers, langs[1], langs[0],
                                  e.source))
    return switched


# === Features: windows over the context ===

@dataclasses.dataclass
class QaFeatures:
    rows: list  # token ids per window
    example_index: np.ndarray  # window -> example
    context_start: np.ndarray  # first context token's position in the row
    char_spans: list  # per window: [n_context_tokens, 2] char offsets in the context
    start_positions: np.ndarray  # training labels (0 = [CLS]: answer not in window)
    end_positions: np.ndarray


def _char_offsets(text, byte_starts, byte_ends):
    """UTF-8 byte offsets -> character offsets in `text`."""
    char_byte = np.cumsum([0] + [len(c.encode("utf-8")) for c in text])
    return (np.searchsorted(char_byte, byte_starts, side="right") - 1,
            np.searchsorted(char_byte, byte_ends, side="left"))


def tokenize_contexts(tokenizer, contexts):
    """Per context: (ids, [n, 2] char spans)."""
    out = []
    for start in range(0, len(contexts), _CHUNK):
        chunk = contexts[start: start + _CHUNK]
        ids, starts, ends = tokenizer.tokenize_with_offsets(tf.constant(chunk))
        for text, i, s, e in zip(chunk, ids.to_list(), starts.to_list(), ends.to_list()):
            char_start, char_end = _char_offsets(text, s, e)
            out.append((i, np.stack([char_start, char_end], axis=1).reshape(-1, 2)))
    return out


def featurize(tokenizer, examples, max_seq_length=256, doc_stride=128, max_query_length=64):
    """Windows `[CLS] question [SEP] context window [SEP]` of every example."""
    questions = tokenize_sentences(tokenizer, [e.question for e in examples])
    unique = {}
    for e in examples:
        unique.setdefault(e.context, len(unique))
    context_tokens = tokenize_contexts(tokenizer, list(unique))
    features = QaFeatures([], [], [], [], [], [])
    for n, (e, question) in enumerate(zip(examples, questions)):
        question = question[:max_query_length]
        ids, spans = context_tokens[unique[e.context]]
        budget = max_seq_length - len(question) - 3
        answer = e.answers[0] if e.answers else None
        if answer is not None and len(spans):
            a_start, a_end = answer["answer_start"], answer["answer_start"] + len(answer["text"])
            inside = np.nonzero((spans[:, 1] > a_start) & (spans[:, 0] < a_end))[0]
            token_span = (inside[0], inside[-1]) if len(inside) else None
        else:
            token_span = None
        offset = len(question) + 2
        window_start = 0
        while True:
            window = slice(window_start, window_start + budget)
            features.rows.append([tokenizer.cls_id, *question, tokenizer.sep_id, *ids[window],
                                  tokenizer.sep_id])
            features.example_index.append(n)
            features.context_start.append(offset)
            features.char_spans.append(spans[window])
            label = (0, 0)
            if token_span and token_span[0] >= window_start and \
                    token_span[1] < window_start + budget:
                label = (token_span[0] - window_start + offset,
                         token_span[1] - window_start + offset)
            features.start_positions.append(label[0])
            features.end_positions.append(label[1])
            if window_start + budget >= len(ids):
                break
            window_start += doc_stride
    for name in ("example_index", "context_start", "start_positions", "end_positions"):
        setattr(features, name, np.asarray(getattr(features, name), np.int32))
    return features


def best_spans(features, start_logits, end_logits, examples, n_best=20, max_answer_length=30):
    """{qid: answer text}: the best span over all windows of each question."""
    best = {}
    for w in range(len(features.rows)):
        spans = features.char_spans[w]
        if not len(spans):
            continue
        offset = features.context_start[w]
        starts = start_logits[w][offset: offset + len(spans)]
        ends = end_logits[w][offset: offset + len(spans)]
        top_starts = np.argsort(-starts)[:n_best]
        top_ends = np.argsort(-ends)[:n_best]
        n = features.example_index[w]
        for s in top_starts:
            for e in top_ends:
                if e < s or e - s + 1 > max_answer_length:
                    continue
                score = starts[s] + ends[e]
                if n not in best or score > best[n][0]:
                    best[n] = (score, spans[s][0], spans[e][1])
    answers = {}
    for n, example in enumerate(examples):
        if n in best:
            _, char_start, char_end = best[n]
            answers[example.qid] = example.context[char_start:char_end].strip()
        else:
            answers[example.qid] = ""
    return answers


def metric_language(language):
    """MLQA's normalization for `language`; others: no articles, whitespace tokens."""
    return language if language in mlqa_metrics.SUPPORTED_LANGUAGES else "hi"


def score(examples, answers, language):
    """SQuAD v1.1 F1 / EM (fractions) with MLQA's normalization
    (`mlqa_metrics.score_predictions`); (nan, nan) without test questions."""
    if not examples:
        return float("nan"), float("nan")
    scores = mlqa_metrics.score_predictions(
        [(e.qid, [a["text"] for a in e.answers]) for e in examples], answers,
        metric_language(language))
    return scores["f1"], scores["exact_match"]


def question_counts(examples, answers):
    """float [questions, 2]: (F1 of the question, 1), the `squad_f1` counts.

    Each question is scored with its context language's normalization, as
    `score` scores them, so the first column's sum over the second's is
    `score`'s F1; a question without an answer scores 0.
    """
    counts = np.zeros((len(examples), 2))
    counts[:, 1] = 1.0
    for row, example in enumerate(examples):
        if example.qid in answers:
            counts[row, 0] = mlqa_metrics.score_question(
                answers[example.qid], [a["text"] for a in example.answers],
                metric_language(example.context_language))[1]
    return counts


# === One run per seed, then the report ===

@dataclasses.dataclass(frozen=True)
class MlqaConfig:
    setting: str = "zero_shot"
    code_switch_probability: float = 0.5
    max_seq_length: int = 256
    doc_stride: int = 128
    max_query_length: int = 64
    max_answer_length: int = 30
    max_train_examples: int = 0
    max_eval_examples: int = 0  # > 0: the first N test questions of each pair
    seeds: tuple = (0,)


def predict_spans(tuner, features, pad_id, batch_size=32):
    start_logits, end_logits = [None] * len(features.rows), [None] * len(features.rows)
    for index in length_grouped_batches([len(r) for r in features.rows], batch_size):
        starts, ends = tuner.predict(pad_rows([features.rows[i] for i in index], pad_id))
        for j, i in enumerate(index):
            start_logits[i] = starts[j].numpy()
            end_logits[i] = ends[j].numpy()
    return start_logits, end_logits


def run_mlqa(trained, data, config, finetune, log=print, progress=True):
    """Fine-tunes per seed, evaluates every context–question pair; a report."""
    started = time.time()
    test = {pair: examples[: config.max_eval_examples or None]
            for pair, examples in sorted(data["test"].items())}
    test_features = {pair: featurize(trained.tokenizer, examples, config.max_seq_length,
                                     config.doc_stride, config.max_query_length)
                     for pair, examples in test.items()}

    def run_seed(seed, tokenizer, rng):
        tuner, losses, sizes = _fine_tune(trained.encoder, tokenizer, data, config, finetune,
                                          rng, progress)
        scores = {"f1": {}, "exact_match": {}}
        for (c, q), examples in test.items():
            starts, ends = predict_spans(tuner, test_features[(c, q)], tokenizer.pad_id)
            answers = best_spans(test_features[(c, q)], starts, ends, examples,
                                 max_answer_length=config.max_answer_length)
            scores["f1"][f"{c}-{q}"], scores["exact_match"][f"{c}-{q}"] = score(
                examples, answers, c)
        log(f"seed {seed}: F1 " + " ".join(f"{k}={v * 100:.1f}"
                                           for k, v in scores["f1"].items()))
        return SeedRun(losses, scores, {**sizes, "steps": len(losses)})

    runs = run_per_seed(config.seeds, trained.encoder, trained.tokenizer, run_seed)
    test_questions = {f"{c}-{q}": len(e) for (c, q), e in test.items()}
    return reports.fine_tuning_report("mlqa", trained, runs, config, finetune,
                                      {"test_questions": test_questions}, started)


def _fine_tune(encoder, tokenizer, data, config, finetune, rng, progress):
    """One seed's span extractor, trained on the setting's questions.

    Returns:
        (the `FineTuner`, the loss of every step, {"train_questions": n,
        "train_windows": m}).
    """
    examples = training_examples(data, config.setting, config.code_switch_probability, rng)
    if config.max_train_examples:
        examples = [examples[i] for i in rng.permutation(len(examples))
                    [: config.max_train_examples]]
    features = featurize(tokenizer, examples, config.max_seq_length, config.doc_stride,
                         config.max_query_length)

    def labels_at(index):
        return {"start_positions": features.start_positions[index],
                "end_positions": features.end_positions[index]}

    model = SpanExtractor(encoder, name="mlqa_span_extractor")
    tuner, losses = fine_tune(model, span_loss, finetune, features.rows, labels_at,
                              tokenizer.pad_id, rng, progress)
    return tuner, losses, {"train_questions": len(examples),
                           "train_windows": len(features.rows)}


# === The suite's `mlqa` task ===

class MlqaTask(Task):
    """MLQA-mini zero-shot: English training questions, each language's
    same-language context/question pair tested (module docstring).

    Rows are context windows (`featurize`, `max_seq_length` from the budget,
    windows starting every max_seq_length // 2 tokens, questions cut to
    max_seq_length // 4 tokens, at most 64); labels are each window's
    (start, end) answer positions; `evaluate` gives one row per question.
    """

    name = "mlqa"
    metric = "squad_f1"
    max_answer_length = 30

    def find_files(self, data_root):
        try:
            files = find_language_files(os.path.join(data_root, "mlqa"), _FILES)
        except FileNotFoundError:
            return None
        tests = {context: paths["dev"] for (context, question), paths in files.items()
                 if context == question and "dev" in paths}
        if "en" not in tests:
            return None
        return {"train": tests["en"], "select": None, "tests": tests}

    def read_data(self, files, budget):
        train, _ = mini_split(read_squad_file(files["train"], "en", "en"))
        tests = {language: test_subset(mini_split(read_squad_file(path, language, language))[1],
                                       budget.max_test_examples)
                 for language, path in files["tests"].items()}
        return TaskData(training_subset(train, budget.max_train_examples), [], tests, (), files)

    def build_inputs(self, examples, labels, tokenizer, max_length):
        features = featurize(tokenizer, examples, max_length, doc_stride=max_length // 2,
                             max_query_length=min(64, max_length // 4))
        positions = np.stack([features.start_positions, features.end_positions], axis=1)
        return EncodedRows(features.rows, positions,
                           {"features": features, "examples": examples})

    def build_model(self, encoder, num_labels, pooling, dropout):
        return SpanExtractor(encoder, name=f"{self.name}_span_extractor")

    def build_losses(self, labels, outputs):
        return span_loss(labels, outputs)

    def batch_labels(self, encoded, index):
        return {"start_positions": encoded.labels[index, 0],
                "end_positions": encoded.labels[index, 1]}

    def evaluate(self, tuner, encoded, labels, pad_id):
        features, examples = encoded.extra["features"], encoded.extra["examples"]
        starts, ends = predict_spans(tuner, features, pad_id)
        answers = best_spans(features, starts, ends, examples,
                             max_answer_length=self.max_answer_length)
        return question_counts(examples, answers)
