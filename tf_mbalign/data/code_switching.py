"""Sentence-level code-switching with English for downstream fine-tuning.

An example is a list of segments (XNLI: premise, hypothesis; MLQA: question,
context-with-answers) in one language. Each segment is replaced,
independently and with probability `probability`, by the same segment of the
same example in another language:

- a non-English example switches a segment to English;
- an English example switches a segment to one of the example's other
  languages, drawn uniformly.

Only translations of the same example are ever used (`translations` holds
that example's segments per language; a missing one is `None` and never
drawn). With probability 0 the example is returned unchanged; with 1 every
segment with an available translation is replaced.

Example:
```python
rng = np.random.RandomState(0)
segments, languages = code_switch(
    "de", ["Der Hund schläft.", "Ein Tier ruht."],
    {"en": ["The dog sleeps.", "An animal rests."]}, probability=0.5, rng=rng)
```
"""

PIVOT = "en"


def switch_candidates(language, translations, segment_index):
    """The languages a segment may switch to (see module docstring)."""
    available = sorted(
        lang for lang, segments in translations.items()
        if lang != language and segments is not None and segments[segment_index] is not None
    )
    if language != PIVOT:
        return [PIVOT] if PIVOT in available else []
    return available


def code_switch(language, segments, translations, probability, rng):
    """Returns (new segments, the language of each segment).

    Args:
        language: the example's language.
        segments: list of the example's segments.
        translations: {language: list of the same segments translated, or None
            per missing segment}; only this example's translations.
        probability: per-segment replacement probability in [0, 1].
        rng: a `numpy.random.RandomState` (the draws are reproducible).
    """
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"code-switching probability must be in [0, 1], got {probability}")
    out, languages = list(segments), [language] * len(segments)
    for i in range(len(segments)):
        draw = rng.random_sample()  # Drawn for every segment: stable streams.
        candidates = switch_candidates(language, translations, i)
        if draw >= probability or not candidates:
            continue
        target = candidates[rng.randint(len(candidates))]
        out[i], languages[i] = translations[target][i], target
    return out, languages
