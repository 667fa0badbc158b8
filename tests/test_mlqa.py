"""MLQA: the split, windows and answer labels, span decoding, scoring, code-switching."""

import json
import os

import numpy as np
import pytest

from tf_mbalign.tasks import mlqa

# Ids: "a0" (int 160, even) trains, "a1" (161, odd) tests.
CONTEXT_EN = "The river Rhine flows through Basel. It is long."
CONTEXT_DE = "Der Rhein fließt durch Basel. Er ist lang."


def _squad(path, qas):
    paragraphs = [{"context": c, "qas": [{"id": i, "question": q,
                                          "answers": [{"text": a, "answer_start": c.index(a)}]}]}
                  for i, q, c, a in qas]
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"data": [{"title": "t", "paragraphs": paragraphs}]}, f, ensure_ascii=False)


def _write(directory):
    os.makedirs(directory, exist_ok=True)
    en = [("a0", "Where does the Rhine flow?", CONTEXT_EN, "through Basel"),
          ("a1", "How long is it?", CONTEXT_EN, "long")]
    de_q = [("a0", "Wo fließt der Rhein?", CONTEXT_EN, "through Basel"),
            ("a1", "Wie lang ist er?", CONTEXT_EN, "long")]
    de_c = [("a0", "Where does the Rhine flow?", CONTEXT_DE, "durch Basel"),
            ("a1", "How long is it?", CONTEXT_DE, "lang")]
    _squad(os.path.join(directory, "dev-context-en-question-en.json"), en)
    _squad(os.path.join(directory, "dev-context-en-question-de.json"), de_q)
    _squad(os.path.join(directory, "dev-context-de-question-en.json"), de_c)
    return str(directory)


def _tokenizer():
    from tf_mbalign.modeling import encoders

    return encoders.load_encoder("tiny:demo", dropout=0.0).tokenizer


def test_split_by_question_id(tmp_path):
    data = mlqa.read_mlqa_dir(_write(tmp_path))
    assert sorted(data["train"]) == [("de", "en"), ("en", "de"), ("en", "en")]
    assert [e.qid for e in data["train"][("en", "en")]] == ["a0"]
    assert [e.qid for e in data["test"][("de", "en")]] == ["a1"]
    assert mlqa.is_train_question("a0") and not mlqa.is_train_question("a1")


def test_misplaced_answer_is_named(tmp_path):
    path = tmp_path / "dev-context-en-question-en.json"
    _squad(path, [("a0", "q", "abc def", "def")])
    data = json.loads(path.read_text())
    data["data"][0]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] = 1
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"question a0: answer 'def' is not at character 1"):
        mlqa.read_mlqa_dir(str(tmp_path))


def test_code_switching_takes_translations_of_the_same_question(tmp_path):
    data = mlqa.read_mlqa_dir(_write(tmp_path))
    rng = np.random.RandomState(0)
    assert mlqa.training_examples(data, "code_switch", 0.0, rng) == data["train"][("en", "en")]
    [switched] = mlqa.training_examples(data, "code_switch", 1.0, rng)
    assert switched.question == "Wo fließt der Rhein?" and switched.question_language == "de"
    assert switched.context == CONTEXT_DE and switched.context_language == "de"
    answer = switched.answers[0]
    assert switched.context[answer["answer_start"]:][: len(answer["text"])] == "durch Basel"


@pytest.mark.parametrize("max_seq_length,stride", [(64, 8), (24, 4)])
def test_window_labels_point_at_the_answer(max_seq_length, stride):
    tokenizer = _tokenizer()
    example = mlqa.QaExample("a0", "Where?", CONTEXT_EN,
                             [{"text": "through Basel", "answer_start": CONTEXT_EN.index("through")}],
                             "en", "en", "test")
    features = mlqa.featurize(tokenizer, [example], max_seq_length, stride)
    labelled = 0
    for w, row in enumerate(features.rows):
        assert len(row) <= max_seq_length
        start, end = features.start_positions[w], features.end_positions[w]
        if start == 0:
            continue
        labelled += 1
        spans = features.char_spans[w]
        offset = features.context_start[w]
        text = CONTEXT_EN[spans[start - offset][0]: spans[end - offset][1]]
        assert text.strip() == "through Basel"
    assert labelled >= 1
    if max_seq_length == 24:
        assert len(features.rows) > 1  # the context needed several windows


def test_best_span_over_windows_by_hand():
    context = "alpha beta gamma delta"
    features = mlqa.QaFeatures(
        rows=[[0] * 6, [0] * 6], example_index=np.array([0, 0]), context_start=np.array([2, 2]),
        char_spans=[np.array([[0, 5], [6, 10], [11, 16]]), np.array([[11, 16], [17, 22]])],
        start_positions=None, end_positions=None)
    example = mlqa.QaExample("q", "?", context, [], "en", "en", "")
    # Window 0: best start "beta" (3.0) + best end "gamma" (2.0) = 5.0.
    # Window 1: start "gamma" (1.0) + end "delta" (5.0) = 6.0 -> wins: "gamma delta".
    start = [np.array([0, 0, 0.5, 3.0, 1.0, 0]), np.array([0, 0, 1.0, 0.2, 0, 0])]
    end = [np.array([0, 0, 0.1, 0.3, 2.0, 0]), np.array([0, 0, 0.0, 5.0, 0, 0])]
    assert mlqa.best_spans(features, start, end, [example]) == {"q": "gamma delta"}
    # max_answer_length=1 rules out "gamma delta" (2 tokens); the best 1-token
    # spans: window 0 "beta" 3.0 + 0.3 = 3.3, window 1 "delta" 0.2 + 5.0 = 5.2.
    assert mlqa.best_spans(features, start, end, [example], max_answer_length=1) == {"q": "delta"}
    # End before start is never chosen: only window 0, where the best end
    # ("gamma", index 2) follows the best start ("beta", index 1).
    one = mlqa.QaFeatures([[0] * 6], np.array([0]), np.array([2]), features.char_spans[:1],
                          None, None)
    assert mlqa.best_spans(one, start[:1], end[:1], [example]) == {"q": "beta gamma"}


def test_score_with_language_normalization():
    example = mlqa.QaExample("q", "?", "", [{"text": "the Rhine", "answer_start": 0},
                                            {"text": "Rhine river", "answer_start": 0}],
                             "en", "en", "")
    # "Rhine." -> "rhine" == normalized "the Rhine": EM 1, F1 1.
    assert mlqa.score([example], {"q": "Rhine."}, "en") == (1.0, 1.0)
    # "river" vs "rhine river": P=1, R=1/2 -> F1 2/3; EM 0.
    f1, em = mlqa.score([example], {"q": "river"}, "en")
    assert f1 == pytest.approx(2 / 3) and em == 0.0
    zh = mlqa.QaExample("q", "?", "", [{"text": "北京", "answer_start": 0}], "zh", "zh", "")
    # Characters 北 京 大 学 vs 北 京: P=2/4, R=1 -> F1 2/3.
    assert mlqa.score([zh], {"q": "北京大学"}, "zh")[0] == pytest.approx(2 / 3)
    # A pair without test questions scores nan (shown in the report), not an error.
    assert all(np.isnan(x) for x in mlqa.score([], {}, "en"))


def test_tiny_run_reports_every_pair(tmp_path):
    from tf_mbalign.evaluation.trained_encoders import load_trained_encoder
    from tf_mbalign.training.finetuning import FinetuneConfig

    data = mlqa.read_mlqa_dir(_write(tmp_path))
    trained = load_trained_encoder("tiny:demo", dropout=0.0)
    report = mlqa.run_mlqa(trained, data, mlqa.MlqaConfig(setting="code_switch",
                                                          max_seq_length=48, doc_stride=16),
                           FinetuneConfig(max_steps=2, batch_size=2), log=lambda *_: None,
                           progress=False)
    assert sorted(report["metrics"]["f1"]) == ["de-en", "en-de", "en-en"]
    assert report["test_questions"] == {"de-en": 1, "en-de": 1, "en-en": 1}
    for stats in report["metrics"]["exact_match"].values():
        assert stats["values"][0] in (0.0, 1.0)


def test_real_mlqa_mini(shared_data):
    data = mlqa.read_mlqa_dir(os.path.join(shared_data, "mlqa"))
    assert len(data["test"]) == 10
    assert len(data["train"][("en", "en")]) == 585 and len(data["test"][("en", "en")]) == 563
    train_ids = {e.qid for rows in data["train"].values() for e in rows}
    assert not train_ids & {e.qid for rows in data["test"].values() for e in rows}
