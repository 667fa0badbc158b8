"""Sentence-level code-switching: p=0 untouched, p=1 all replaced, same example only."""

import numpy as np
import pytest

from tf_mbalign.data.code_switching import code_switch

EXAMPLE = {
    "en": ["The dog sleeps.", "An animal rests."],
    "de": ["Der Hund schläft.", "Ein Tier ruht."],
    "fr": ["Le chien dort.", "Un animal se repose."],
}


def test_probability_zero_leaves_the_example_untouched():
    rng = np.random.RandomState(0)
    for language in EXAMPLE:
        segments, languages = code_switch(language, EXAMPLE[language], EXAMPLE, 0.0, rng)
        assert segments == EXAMPLE[language]
        assert languages == [language, language]


def test_probability_one_replaces_every_segment_by_the_same_example():
    rng = np.random.RandomState(0)
    for _ in range(20):
        segments, languages = code_switch("de", EXAMPLE["de"], EXAMPLE, 1.0, rng)
        assert segments == EXAMPLE["en"] and languages == ["en", "en"]  # non-English -> English
        segments, languages = code_switch("en", EXAMPLE["en"], EXAMPLE, 1.0, rng)
        assert all(lang in ("de", "fr") for lang in languages)  # English -> another language
        for i, (segment, lang) in enumerate(zip(segments, languages)):
            assert segment == EXAMPLE[lang][i]  # the same segment of the same example


def test_missing_translations_are_never_drawn():
    rng = np.random.RandomState(1)
    translations = {"en": ["q-en", "c-en"], "de": [None, "c-de"], "zh": ["q-zh", None]}
    seen = set()
    for _ in range(200):
        segments, languages = code_switch("en", ["q-en", "c-en"], translations, 1.0, rng)
        seen.add(tuple(segments))
        assert languages == ["zh", "de"]
    assert seen == {("q-zh", "c-de")}
    segments, languages = code_switch("de", [None, "c-de"], {"de": [None, "c-de"]}, 1.0, rng)
    assert languages == ["de", "de"]  # no English translation: nothing to switch to


def test_replacement_rate_follows_the_probability():
    rng = np.random.RandomState(2)
    switched = [code_switch("fr", EXAMPLE["fr"], EXAMPLE, 0.3, rng)[1] for _ in range(4000)]
    rate = np.mean([lang == "en" for languages in switched for lang in languages])
    assert abs(rate - 0.3) < 0.03


def test_probability_outside_zero_one_is_refused():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        code_switch("de", EXAMPLE["de"], EXAMPLE, 1.5, np.random.RandomState(0))
