"""The suite's optional tasks, `xnli_mini` and `mlqa`: their data protocols, the
per-question `squad_f1` counts (by hand, and against `mlqa.score`), task
selection (the default suite leaves them out), and both end to end on a tiny
model through the suite.
"""

import dataclasses
import json
import os

import numpy as np
import pytest

from conftest import run_module
from test_mlqa import _squad
from test_tasks_suite import NLI, write_tiny_data
from tf_mbalign.tasks import budgets, intervals, mlqa, suite
from tf_mbalign.tasks.xnli import XnliMiniTask

LONG_CONTEXT = ("The river Rhine flows through Basel and then north along the plain. " * 6
                + "It is long.")


def write_mlqa(root):
    """mlqa/ with en-en (3 training, 2 test questions), de-de and a cross pair."""
    directory = os.path.join(str(root), "mlqa")
    os.makedirs(directory, exist_ok=True)
    # Even ids train, odd ids test (int(id, 16) % 2).
    english = [("a0", "Where does the Rhine flow?", LONG_CONTEXT, "through Basel"),
               ("a1", "How long is it?", LONG_CONTEXT, "long"),
               ("a2", "What flows north?", LONG_CONTEXT, "The river Rhine"),
               ("a3", "Where is the plain?", LONG_CONTEXT, "north"),
               ("a4", "Which river?", LONG_CONTEXT, "Rhine")]
    german = [(i, f"[de] {q}", "Der Rhein fließt durch Basel. Er ist lang.", "Basel")
              for i, q, _, _ in english]
    _squad(os.path.join(directory, "dev-context-en-question-en.json"), english)
    _squad(os.path.join(directory, "dev-context-de-question-de.json"), german)
    _squad(os.path.join(directory, "dev-context-de-question-en.json"), german)  # not a test
    return str(root)


# === squad_f1: per-question counts ===

def _example(qid, answers, language="en"):
    return mlqa.QaExample(qid, "?", "", [{"text": a, "answer_start": 0} for a in answers],
                          language, language, "")


def test_squad_f1_counts_by_hand():
    examples = [_example("q1", ["the cat"]),  # "Cat" -> "cat" == "cat": F1 1
                # "big red dog" vs "red dog" (P 2/3, R 1: F1 .8) or "dog" (F1 .5): best .8
                _example("q2", ["a red dog", "dog"]),
                _example("q3", ["Basel"])]  # no answer: 0
    counts = mlqa.question_counts(examples, {"q1": "Cat", "q2": "big red dog"})
    np.testing.assert_allclose(counts, [[1.0, 1], [0.8, 1], [0.0, 1]])
    assert intervals.metric_value("squad_f1", counts) == pytest.approx(1.8 / 3)
    assert mlqa.score(examples, {"q1": "Cat", "q2": "big red dog"}, "en")[0] == \
        pytest.approx(1.8 / 3, rel=1e-12)
    # Chinese: one token a character; 北 京 大 学 vs 北 京: P 1/2, R 1 -> 2/3.
    zh = mlqa.question_counts([_example("q", ["北京"], "zh")], {"q": "北京大学"})
    assert zh[0, 0] == pytest.approx(2 / 3)
    assert intervals.STATS_COLUMNS["squad_f1"] == ("f1", "questions")


class _SpanTuner:
    """Start logits = token ids, end logits = their negatives shifted: a fixed,
    input-dependent choice of spans (no training needed)."""

    def predict(self, inputs):
        import tensorflow as tf

        ids = np.asarray(inputs["token_ids"], np.float32)
        return tf.constant(ids), tf.constant(np.roll(ids, 1, axis=1) % 7)


def test_task_evaluate_agrees_with_mlqa_score(tmp_path):
    from test_mlqa import _tokenizer

    task = mlqa.MlqaTask()
    files = task.find_files(write_mlqa(tmp_path))
    data = task.read_data(files, budgets.TINY.task("mlqa"))
    tokenizer = _tokenizer()
    encoded = task.build_inputs(data.tests["en"], (), tokenizer, 64)
    assert len(encoded.rows) > len(data.tests["en"])  # several windows a question...
    counts = task.evaluate(_SpanTuner(), encoded, (), tokenizer.pad_id)
    assert counts.shape == (2, 2)  # ...one row of counts each
    starts, ends = mlqa.predict_spans(_SpanTuner(), encoded.extra["features"], tokenizer.pad_id)
    answers = mlqa.best_spans(encoded.extra["features"], starts, ends, data.tests["en"])
    assert intervals.metric_value("squad_f1", counts) == pytest.approx(
        mlqa.score(data.tests["en"], answers, "en")[0], rel=1e-12)


# === The data protocols ===

def test_mlqa_task_files_and_split(tmp_path):
    task = mlqa.MlqaTask()
    files = task.find_files(write_mlqa(tmp_path))
    assert files["train"].endswith("dev-context-en-question-en.json")
    assert list(files["tests"]) == ["de", "en"]  # same-language pairs only
    data = task.read_data(files, budgets.TINY.task("mlqa"))
    assert sorted(e.qid for e in data.train) == ["a0", "a2", "a4"]
    assert {lang: [e.qid for e in rows] for lang, rows in data.tests.items()} == {
        "de": ["a1", "a3"], "en": ["a1", "a3"]}
    assert data.tests["de"][0].context_language == "de"
    assert task.find_files(str(tmp_path / "absent")) is None


def test_xnli_mini_task_split_and_alignment(tmp_path):
    root = write_tiny_data(tmp_path, tasks=("nli",))  # xnli/dev-{en,de}.tsv, 12 rows each
    task = XnliMiniTask()
    files = task.find_files(root)
    assert list(files["tests"]) == ["de", "en"]
    assert files["select"].endswith(os.path.join("nli", "snli-test.tsv"))
    data = task.read_data(files, dataclasses.replace(budgets.TINY.task("xnli_mini"),
                                                     max_train_examples=0))
    # Row i is NLI[i % 4]: rows 0, 1, 3, 4, 6, 7, 9, 10 train; rows 2, 5, 8, 11 test.
    premises = [p for p, _, _ in NLI]
    assert [e.premise for e in data.train] == [premises[i % 4] for i in (0, 1, 3, 4, 6, 7, 9, 10)]
    assert [e.premise for e in data.tests["de"]] == [premises[i % 4] for i in (2, 5, 8, 11)]
    assert data.tests["de"][1].source.endswith("dev-de.tsv:6")
    german = os.path.join(root, "xnli", "dev-de.tsv")
    lines = open(german, encoding="utf-8").read().splitlines()
    lines[0], lines[1] = lines[1], lines[0]
    with open(german, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"dev-de.tsv:1: label neutral differs .*not line-aligned"):
        task.read_data(files, budgets.TINY.task("xnli_mini"))


# === Selection ===

def test_default_suite_leaves_the_optional_tasks_out(tmp_path):
    root = write_mlqa(write_tiny_data(tmp_path))
    config = suite.SuiteConfig(encoders=("tiny:demo",), data_root=root, budget="tiny")
    planned = [name for _, name, _, _ in suite.plan_jobs(config)]
    assert planned == ["nli", "ner", "pos", "topic", "retrieval"]
    chosen = [name for _, name, _, _ in suite.plan_jobs(
        dataclasses.replace(config, tasks=("mlqa", "xnli_mini", "nli")))]
    assert chosen == ["nli", "xnli_mini", "mlqa"]  # run order, whatever the order named


def test_unknown_task_is_an_error_listing_the_choices():
    with pytest.raises(ValueError, match=r"unknown task\(s\) squad; choose from nli, ner, pos, "
                                         r"topic, retrieval, xnli_mini, mlqa"):
        suite.select_tasks(["nli", "squad"])
    from tf_mbalign.tasks import registry

    assert set(registry.TASKS) | {suite.RETRIEVAL} == {*suite.DEFAULT_TASKS,
                                                       *suite.OPTIONAL_TASKS}


def test_command_line_refuses_an_unknown_task(tmp_path):
    done = run_module(["-m", "tf_mbalign.evaluate", "suite", "--encoder=tiny:demo",
                       f"--data_root={tmp_path}", "--tasks=nli,squad", "--quiet"])
    assert done.returncode == 2
    assert "unknown task(s) squad; choose from" in done.stderr and "mlqa" in done.stderr


# === End to end ===

def test_optional_tasks_run_through_the_suite(tmp_path):
    root = write_mlqa(write_tiny_data(tmp_path / "data", tasks=("nli",)))
    config = suite.SuiteConfig(encoders=("tiny:demo",), data_root=root,
                               tasks=("xnli_mini", "mlqa"), budget="tiny", seeds=1,
                               output_dir=str(tmp_path / "out"), job_processes=False,
                               replicates=100, progress=False)
    summary = suite.run_suite(config, log=print)
    assert list(summary["tables"]) == ["xnli_mini", "mlqa"]
    xnli_mini, qa = summary["tables"]["xnli_mini"], summary["tables"]["mlqa"]
    assert xnli_mini["rows"] == {"de": 4, "en": 4} and xnli_mini["pooling"] == ["mean"]
    assert qa["metric"] == "squad_f1" and qa["rows"] == {"de": 2, "en": 2}  # questions
    assert qa["encoders"][0]["transfer_gap"] is not None
    job = json.loads((tmp_path / "out" / "tiny_demo" / "mlqa.json").read_text(encoding="utf-8"))
    assert job["training"]["examples"] > 3  # windows of the 3 English training questions
    for cell in job["tables"]["mlqa"]["languages"].values():
        assert all(row[1] == 1 and 0 <= row[0] <= 1 for row in cell["row_stats"][0])
        assert cell["values"][0] == pytest.approx(
            intervals.metric_value("squad_f1", cell["row_stats"][0]))
    assert (tmp_path / "out" / "mlqa.png").is_file()
