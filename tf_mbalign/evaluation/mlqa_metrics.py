"""MLQA answer metrics: SQuAD v1.1 exact match and token F1 with MLQA's
language-specific answer normalization (Lewis et al., 2020).

Pure Python (no TensorFlow). The normalization follows the official
``mlqa_evaluation_v1.py``: lower-case -> remove punctuation -> remove
articles -> re-tokenize and join with single spaces. Chinese is tokenized by
"mixed segmentation" (one token per CJK character, other runs split on
whitespace); every other language is split on whitespace.

The language passed to these functions is the language of the *context*:
answers are spans of the context, so the context language decides how both
the prediction and the gold answers are normalized.
"""

import collections
import re
import string
import unicodedata

# ---------------------------------------------------------------------------
# Constants: per-language article patterns, applied to the lower-cased,
# punctuation-free text; a match is replaced by a space. ``None`` means the
# language has no articles to remove.
# ---------------------------------------------------------------------------
ARTICLE_PATTERNS = {
    "en": r"\b(a|an|the)\b",
    "es": r"\b(un|una|unos|unas|el|la|los|las)\b",
    "de": r"\b(ein|eine|einen|einem|eines|einer|der|die|das|den|dem|des)\b",
    "vi": r"\b(của|là|cái|chiếc|những)\b",
    # The official pattern: its first alternative can never match (``^`` after
    # characters), so in effect EVERY occurrence of "ال" is removed, also
    # inside words (e.g. "مال" -> "م"). Kept as is for parity with published
    # MLQA numbers.
    "ar": r"\sال^|ال",
    "hi": None,
    "zh": None,
}
SUPPORTED_LANGUAGES = tuple(sorted(ARTICLE_PATTERNS))
# Languages tokenized by mixed segmentation; all others split on whitespace.
MIXED_SEGMENTATION_LANGUAGES = frozenset({"zh"})
# The CJK range used by the official script's mixed segmentation
# (U+4E00..U+9FA5, the core CJK Unified Ideographs block as of Unicode 3.0).
CJK_CHARACTER = re.compile("[\u4e00-\u9fa5]")

_COMPILED_ARTICLES = {
    lang: (re.compile(pattern) if pattern else None)
    for lang, pattern in ARTICLE_PATTERNS.items()
}
_ASCII_PUNCTUATION = frozenset(string.punctuation)


def _check_language(language):
    if language not in ARTICLE_PATTERNS:
        raise ValueError(
            f"unknown MLQA language {language!r}; supported: "
            f"{', '.join(SUPPORTED_LANGUAGES)}"
        )


def _is_punctuation(char):
    """Unicode category P* (any punctuation), or ASCII ``string.punctuation``.

    The ASCII set adds symbols such as ``$ + < = > ^ ` | ~`` (category S*);
    other symbols (``€``, ``©``) are kept, as in the official script.
    """
    return char in _ASCII_PUNCTUATION or unicodedata.category(char).startswith("P")


def _mixed_segmentation(text):
    """One token per CJK (or punctuation) character; other runs split on spaces."""
    tokens = []
    run = []
    for char in text:
        if CJK_CHARACTER.match(char) or _is_punctuation(char):
            tokens.extend("".join(run).split())
            run = []
            tokens.append(char)
        else:
            run.append(char)
    tokens.extend("".join(run).split())
    return tokens


def _tokenize(text, language):
    if language in MIXED_SEGMENTATION_LANGUAGES:
        tokens = _mixed_segmentation(text)
    else:
        tokens = text.split()
    return [token for token in tokens if token.strip()]


def normalize_answer(text, language):
    """Normalizes an answer string the way MLQA's official evaluation does.

    Steps: lower-case, drop punctuation (Unicode ``P*`` and
    ``string.punctuation``), drop the language's articles, then tokenize
    (``zh``: mixed segmentation; others: whitespace) and join with one space.

    Args:
      text: the answer string.
      language: the context language code, one of ``SUPPORTED_LANGUAGES``.

    Returns:
      The normalized string (tokens joined by single spaces).

    Raises:
      ValueError: ``language`` is not an MLQA language.

    Example:
      >>> normalize_answer("The «Cat»!", "en")
      'cat'
      >>> normalize_answer("北京大学。", "zh")
      '北 京 大 学'
    """
    _check_language(language)
    text = text.lower()
    text = "".join(char for char in text if not _is_punctuation(char))
    articles = _COMPILED_ARTICLES[language]
    if articles is not None:
        text = articles.sub(" ", text)
    return " ".join(_tokenize(text, language))


def f1_score(prediction, ground_truth, language):
    """Token-level F1 between the normalized prediction and gold answer.

    Tokens are those of ``normalize_answer`` (``zh``: one per CJK character),
    compared as multisets. No common token (including either side empty)
    gives 0.0, as in SQuAD v1.1.

    Example:
      >>> f1_score("北京大学", "北京", "zh")  # P=2/4, R=2/2
      0.6666666666666666
    """
    prediction_tokens = normalize_answer(prediction, language).split()
    truth_tokens = normalize_answer(ground_truth, language).split()
    common = collections.Counter(prediction_tokens) & collections.Counter(truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(prediction_tokens)
    recall = num_same / len(truth_tokens)
    return 2 * precision * recall / (precision + recall)


def exact_match_score(prediction, ground_truth, language):
    """Whether the normalized prediction equals the normalized gold answer.

    Example:
      >>> exact_match_score("los gatos", "Gatos.", "es")
      True
    """
    return normalize_answer(prediction, language) == normalize_answer(ground_truth, language)


def metric_max_over_ground_truths(metric_fn, prediction, ground_truths, language):
    """The best ``metric_fn(prediction, truth, language)`` over the gold answers.

    Raises:
      ValueError: ``ground_truths`` is empty.

    Example:
      >>> metric_max_over_ground_truths(f1_score, "red dog", ["cat", "red dog"], "en")
      1.0
    """
    ground_truths = list(ground_truths)
    if not ground_truths:
        raise ValueError("no ground-truth answers to compare against")
    return max(metric_fn(prediction, truth, language) for truth in ground_truths)


def score_predictions(gold_answers, predictions, language):
    """MLQA exact match and F1 (fractions) of predicted answers: the one
    scoring loop (`tf_mbalign.tasks.mlqa.score` uses it).

    Each question scores its best metric over its gold answers; a question
    without a prediction scores 0 on both and is counted in ``missing``.

    Args:
      gold_answers: ``(question_id, [gold answer texts])`` pairs.
      predictions: ``{question_id: predicted answer text}``.
      language: the CONTEXT language of the questions (answers are context
        spans), e.g. ``"de"`` for MLQA's ``test-context-de-question-en.json``.

    Returns:
      ``{"exact_match": fraction, "f1": fraction, "count": n, "missing": m}``,
      averages over all ``n`` questions.

    Raises:
      ValueError: unknown language, no question, or a question with a
        prediction but without gold answers.

    Example:
      >>> score_predictions([("q1", ["the cat"]), ("q2", ["a dog"])], {"q1": "Cat"}, "en")
      {'exact_match': 0.5, 'f1': 0.5, 'count': 2, 'missing': 1}
    """
    _check_language(language)
    gold_answers = list(gold_answers)
    if not gold_answers:
        raise ValueError("no questions to evaluate")
    exact_match = f1 = 0.0
    missing = 0
    for qid, truths in gold_answers:
        if qid not in predictions:
            missing += 1
            continue
        if not truths:
            raise ValueError(f"question {qid!r} has no gold answers")
        question_exact_match, question_f1 = score_question(predictions[qid], truths, language)
        exact_match += question_exact_match
        f1 += question_f1
    count = len(gold_answers)
    return {"exact_match": exact_match / count, "f1": f1 / count, "count": count,
            "missing": missing}


def score_question(prediction, ground_truths, language):
    """(exact match, F1) of one question's prediction: each the best over its gold
    answers (what ``score_predictions`` adds up per question).

    Example:
      >>> score_question("red dog", ["cat", "the red dog"], "en")
      (True, 1.0)
    """
    return (metric_max_over_ground_truths(exact_match_score, prediction, ground_truths, language),
            metric_max_over_ground_truths(f1_score, prediction, ground_truths, language))
