"""MLQA metrics: normalization, F1/EM and the scoring of a SQuAD-format
dataset (`evaluate` below, over `score_predictions`), on hand-computed cases."""

import os
import subprocess
import sys

import pytest

from tf_mbalign.evaluation import mlqa_metrics as mm
from tf_mbalign.evaluation.mlqa_metrics import (
    exact_match_score,
    f1_score,
    metric_max_over_ground_truths,
    normalize_answer,
    score_predictions,
)


def evaluate(dataset, predictions, language, question_ids=None):
    """MLQA exact match and F1 (in %) over a SQuAD-v1.1-format dataset, as the
    official ``mlqa_evaluation_v1.py`` computes them.

    Every question of ``dataset`` (or only those in ``question_ids``, each of
    which must be in it) is scored by ``score_predictions``; predictions for
    questions that are not evaluated are ignored.

    Returns:
      ``{"exact_match": %, "f1": %, "count": n, "missing": m}``.

    Raises:
      ValueError: unknown language, an id of ``question_ids`` not in
        ``dataset``, no question to evaluate, or a question without answers.
    """
    wanted = None if question_ids is None else set(question_ids)
    gold_answers = [
        (qa["id"], [answer["text"] for answer in qa.get("answers", [])])
        for article in dataset for paragraph in article["paragraphs"] for qa in paragraph["qas"]
        if wanted is None or qa["id"] in wanted
    ]
    unknown = sorted((wanted or set()) - {qid for qid, _ in gold_answers})
    if unknown:
        raise ValueError(f"{len(unknown)} question_ids not in the dataset, e.g. {unknown[:5]}")
    scores = score_predictions(gold_answers, predictions, language)
    return {**scores, "exact_match": 100.0 * scores["exact_match"], "f1": 100.0 * scores["f1"]}


# --- punctuation -------------------------------------------------------------

@pytest.mark.parametrize(
    "text,language,expected",
    [
        ("«Hallo»", "de", "hallo"),        # « » are Unicode Pi/Pf
        ("¿Qué?", "es", "qué"),            # ¿ is Po; the accent is kept
        ("北京。", "zh", "北 京"),          # 。 is Po
        ("，", "zh", ""),                  # fullwidth comma (Po) alone -> empty
        ("「东京」、大阪", "zh", "东 京 大 阪"),  # 「」 Ps/Pe, 、 Po
        ("भारत।", "hi", "भारत"),           # Devanagari danda U+0964 is Po
        ("wait…—go", "en", "waitgo"),      # … Po, — Pd: removed, no space left
        ("e-mail", "en", "email"),         # hyphen removed without a space
        ("$5+3", "en", "53"),              # $ and + are category S but in string.punctuation
        ("€5 ©", "en", "€5 ©"),            # Sc / So symbols not in string.punctuation: kept
    ],
)
def test_punctuation_is_removed(text, language, expected):
    assert normalize_answer(text, language) == expected


def test_accents_are_not_stripped():
    assert not exact_match_score("Qué", "Que", "es")


# --- articles ----------------------------------------------------------------

@pytest.mark.parametrize(
    "prediction,truth,language",
    [
        ("The cat", "cat", "en"),
        ("an apple", "Apple", "en"),
        ("los gatos", "gatos", "es"),
        ("El Niño", "niño", "es"),
        ("der Hund", "Hund", "de"),
        ("einem Haus", "Haus", "de"),
        ("của tôi", "tôi", "vi"),
        ("الكتاب", "كتاب", "ar"),
    ],
)
def test_articles_are_removed(prediction, truth, language):
    assert exact_match_score(prediction, truth, language)


@pytest.mark.parametrize(
    "text,language,expected",
    [
        ("theatre", "en", "theatre"),         # \b: "the" inside a word stays
        ("Dieser Hund", "de", "dieser hund"),  # "die" inside "dieser" stays
        ("los gatos", "en", "los gatos"),     # Spanish articles are not English ones
        ("the cat", "hi", "the cat"),         # hi: no articles
        ("the cat", "zh", "the cat"),         # zh: no articles
        ("THE CAT", "en", "cat"),             # lower-cased before article removal
        ("the-cat", "en", "thecat"),          # punctuation goes first, so "the" is glued
        ("مال", "ar", "م"),                   # official quirk: every "ال" goes, even mid-word
    ],
)
def test_article_edge_cases(text, language, expected):
    assert normalize_answer(text, language) == expected


# --- whitespace and CJK mixed segmentation -----------------------------------

def test_whitespace_is_collapsed():
    assert normalize_answer("  New\tYork\n  City ", "en") == "new york city"
    # U+3000 ideographic space separates like any whitespace.
    assert normalize_answer("北京\u3000大学", "zh") == "北 京 大 学"


@pytest.mark.parametrize(
    "text,expected",
    [
        ("北京大学", "北 京 大 学"),
        ("iPhone 手机", "iphone 手 机"),
        ("苹果iPhone12手机", "苹 果 iphone12 手 机"),  # Latin+digit run is one token
    ],
)
def test_mixed_segmentation(text, expected):
    assert normalize_answer(text, "zh") == expected


def test_whitespace_languages_do_not_split_cjk():
    assert normalize_answer("北京大学", "en") == "北京大学"


def test_cjk_character_f1():
    # [北 京 大 学] vs [北 京]: 2 common; P = 2/4, R = 2/2; F1 = 2*.5*1/1.5 = 2/3.
    assert f1_score("北京大学", "北京", "zh") == pytest.approx(2 / 3)
    # Same strings as whitespace tokens: one token each, different -> 0.
    assert f1_score("北京大学", "北京", "en") == 0.0


def test_mixed_latin_cjk_f1():
    # [iphone 手 机] vs [iphone12 手 机]: 2 common; P = R = 2/3; F1 = 2/3.
    assert f1_score("iPhone 手机", "iPhone12 手机", "zh") == pytest.approx(2 / 3)
    # [买 iphone 手 机] vs [iphone]: 1 common; P = 1/4, R = 1; F1 = 2*(1/4)/(5/4) = 2/5.
    assert f1_score("买iPhone手机", "iPhone", "zh") == pytest.approx(0.4)
    assert exact_match_score("iPhone 手机", "iphone手机", "zh")


# --- F1 ------------------------------------------------------------------------

def test_partial_overlap_f1():
    # [big red dog] vs [red dog barks]: 2 common; P = R = 2/3; F1 = 2/3.
    assert f1_score("the big red dog", "red dog barks", "en") == pytest.approx(2 / 3)
    # [big red dog] vs [dog]: 1 common; P = 1/3, R = 1; F1 = 2*(1/3)/(4/3) = 1/2.
    assert f1_score("big red dog", "dog", "en") == pytest.approx(0.5)


def test_f1_counts_tokens_as_a_multiset():
    # [dog dog dog] vs [dog]: common min(3,1) = 1; P = 1/3, R = 1; F1 = 1/2.
    assert f1_score("dog dog dog", "dog", "en") == pytest.approx(0.5)
    # [dog dog dog] vs [dog dog]: common 2; P = 2/3, R = 1; F1 = 2*(2/3)/(5/3) = 4/5.
    assert f1_score("dog dog dog", "dog dog", "en") == pytest.approx(0.8)


def test_no_overlap_is_zero():
    assert f1_score("cat", "dog", "en") == 0.0
    assert f1_score("", "cat", "en") == 0.0
    # Both normalize to "": EM is 1 but F1 is 0 (no common token), as in SQuAD v1.1.
    assert f1_score("the", "a", "en") == 0.0
    assert exact_match_score("the", "a", "en")


def test_exact_and_f1_agree_on_identical_answers():
    assert f1_score("New York!", "new york", "en") == 1.0
    assert exact_match_score("New York!", "new york", "en")
    assert not exact_match_score("New York City", "new york", "en")


# --- max over ground truths ----------------------------------------------------

def test_max_over_ground_truths():
    truths = ["a blue cat", "the red dog barks", "dog"]
    # vs [blue cat]: 0; vs [red dog barks]: P = 1, R = 2/3, F1 = 2*(2/3)/(5/3) = 4/5;
    # vs [dog]: P = 1/2, R = 1, F1 = 2/3. Max = 4/5.
    assert metric_max_over_ground_truths(f1_score, "red dog", truths, "en") == pytest.approx(0.8)
    assert not metric_max_over_ground_truths(exact_match_score, "red dog", truths, "en")
    truths.append("Red dog!")
    assert metric_max_over_ground_truths(exact_match_score, "red dog", truths, "en")
    assert metric_max_over_ground_truths(f1_score, "red dog", truths, "en") == 1.0


def test_max_over_no_ground_truths_raises():
    with pytest.raises(ValueError, match="no ground-truth"):
        metric_max_over_ground_truths(f1_score, "x", [], "en")


# --- evaluate ------------------------------------------------------------------

def _qa(qid, *answers):
    return {"id": qid, "question": "?",
            "answers": [{"text": text, "answer_start": 0} for text in answers]}


DATASET = [
    {"title": "A", "paragraphs": [
        {"context": "...", "qas": [_qa("q1", "the cat", "cat"), _qa("q2", "red dog barks")]},
    ]},
    {"title": "B", "paragraphs": [
        {"context": "...", "qas": [_qa("q3", "blue bird")]},
    ]},
]
# q1: EM 1, F1 1. q2: [big red dog] vs [red dog barks] -> EM 0, F1 2/3.
# q3: no prediction -> 0, 0. "q99" is not in the dataset: ignored.
PREDICTIONS = {"q1": "Cat.", "q2": "the big red dog", "q99": "blue bird"}


def test_score_predictions_example():
    # q1 exact (normalized), q2 without a prediction: 0 on both, counted missing.
    assert score_predictions([("q1", ["the cat"]), ("q2", ["a dog"])], {"q1": "Cat"}, "en") == {
        "exact_match": 0.5, "f1": 0.5, "count": 2, "missing": 1}
    with pytest.raises(ValueError, match="'q1' has no gold answers"):
        score_predictions([("q1", [])], {"q1": "x"}, "en")


def test_evaluate_counts_missing_predictions_as_zero():
    result = evaluate(DATASET, PREDICTIONS, "en")
    # EM = 100 * (1 + 0 + 0) / 3; F1 = 100 * (1 + 2/3 + 0) / 3 = 100 * 5/9.
    assert result["exact_match"] == pytest.approx(100 / 3)
    assert result["f1"] == pytest.approx(500 / 9)
    assert result["count"] == 3
    assert result["missing"] == 1


def test_evaluate_question_ids_filter():
    result = evaluate(DATASET, PREDICTIONS, "en", question_ids=["q1", "q2"])
    # EM = 100 * 1/2; F1 = 100 * (1 + 2/3) / 2 = 250/3.
    assert result == pytest.approx(
        {"exact_match": 50.0, "f1": 250 / 3, "count": 2, "missing": 0})
    only_missing = evaluate(DATASET, PREDICTIONS, "en", question_ids=["q3"])
    assert only_missing == {"exact_match": 0.0, "f1": 0.0, "count": 1, "missing": 1}


def test_evaluate_rejects_unknown_or_empty_question_ids():
    with pytest.raises(ValueError, match="nope"):
        evaluate(DATASET, PREDICTIONS, "en", question_ids=["q1", "nope"])
    with pytest.raises(ValueError, match="no questions"):
        evaluate(DATASET, PREDICTIONS, "en", question_ids=[])


def test_evaluate_uses_the_given_context_language():
    data = [{"paragraphs": [{"context": "北京大学在北京", "qas": [_qa("z1", "北京")]}]}]
    # zh: character tokens, F1 = 2/3 (see test_cjk_character_f1); en: one token each, 0.
    assert evaluate(data, {"z1": "北京大学"}, "zh")["f1"] == pytest.approx(200 / 3)
    assert evaluate(data, {"z1": "北京大学"}, "en")["f1"] == 0.0


# --- languages -----------------------------------------------------------------

@pytest.mark.parametrize(
    "call",
    [
        lambda: normalize_answer("x", "fr"),
        lambda: f1_score("x", "x", "fr"),
        lambda: exact_match_score("x", "x", "fr"),
        lambda: evaluate([], {}, "fr"),  # checked before the (empty) data
    ],
)
def test_unknown_language_raises(call):
    with pytest.raises(ValueError, match="unknown MLQA language 'fr'") as info:
        call()
    for code in ("ar", "de", "en", "es", "hi", "vi", "zh"):
        assert code in str(info.value)


def test_supported_languages():
    assert mm.SUPPORTED_LANGUAGES == ("ar", "de", "en", "es", "hi", "vi", "zh")


def test_module_does_not_import_tensorflow():
    code = ("import sys, tf_mbalign.evaluation.mlqa_metrics; "
            "sys.exit('tensorflow' in sys.modules)")
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    assert subprocess.run([sys.executable, "-c", code], cwd=repo_root).returncode == 0
