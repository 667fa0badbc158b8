"""Per-sentence counts of the word-level metrics: entity F1 (seqeval) and tag accuracy.

Entity F1 is the field's standard (CoNLL / XTREME): an entity is a maximal
span of `B-X`/`I-X` tags as `seqeval` reads it in its default (conlleval)
mode; it counts as found when the predicted entity has the same span and
type. `entity_counts` gives each sentence's (true positives, predicted
entities, gold entities), so `2 * sum(tp) / (sum(pred) + sum(gold))` is
seqeval's micro F1 and a bootstrap can resample sentences
(`tf_mbalign.tasks.intervals`).

Example:
```python
entity_counts([["B-PER", "I-PER", "O"]], [["B-PER", "O", "O"]])  # [[0, 1, 1]]
```
"""

import numpy as np
from seqeval.metrics.sequence_labeling import get_entities


def _sentence_pairs(gold_sentences, predicted_sentences):
    """(index, gold tags, predicted tags), checking that each pair has one tag a word."""
    for i, (gold, predicted) in enumerate(zip(gold_sentences, predicted_sentences)):
        if len(gold) != len(predicted):
            raise ValueError(f"sentence {i}: {len(gold)} gold tags but {len(predicted)} "
                             "predicted ones.")
        yield i, gold, predicted


def entity_counts(gold_sentences, predicted_sentences):
    """int [sentences, 3]: (true positives, predicted entities, gold entities)."""
    counts = np.zeros((len(gold_sentences), 3), np.int64)
    for i, gold, predicted in _sentence_pairs(gold_sentences, predicted_sentences):
        gold_entities = set(get_entities(list(gold)))
        predicted_entities = set(get_entities(list(predicted)))
        counts[i] = (len(gold_entities & predicted_entities), len(predicted_entities),
                     len(gold_entities))
    return counts


def tag_counts(gold_sentences, predicted_sentences):
    """int [sentences, 2]: (words tagged correctly, words) of each sentence."""
    counts = np.zeros((len(gold_sentences), 2), np.int64)
    for i, gold, predicted in _sentence_pairs(gold_sentences, predicted_sentences):
        counts[i] = (sum(g == p for g, p in zip(gold, predicted)), len(gold))
    return counts
