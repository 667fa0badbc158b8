"""Random input shuffling (Pan et al. 2021, Sec. 2.3).

Per pair, one coin decides both which sentence comes first in the TLM input
`[CLS] a [SEP] b [SEP]` and which one is the MoCo query (the other is the
key). The coin is stateless, keyed by the example's seed, so it depends only
on (run seed, example position).

Example:
```python
first, second, english_first = shuffle_pair_order(english_ids, other_ids, seed=[7, 42])
```
"""

import tensorflow as tf


def shuffle_pair_order(english_ids, other_ids, seed, enabled=True):
    """(first, second, english_first): the pair in the order a coin chose.

    Args:
        english_ids, other_ids: int32 [length] token ids of the two sides.
        seed: int32/int64 [2] stateless seed of this example.
        enabled: False keeps English first (and the query) for every pair.
    """
    if enabled:
        english_first = tf.random.stateless_uniform([], seed) < 0.5
    else:
        english_first = tf.constant(True)
    first = tf.cond(english_first, lambda: english_ids, lambda: other_ids)
    second = tf.cond(english_first, lambda: other_ids, lambda: english_ids)
    return first, second, english_first
