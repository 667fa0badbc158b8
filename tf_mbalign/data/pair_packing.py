"""Packing token ids into BERT inputs, with fair truncation.

`[CLS] a [SEP] b [SEP]` for a pair (TLM inputs, NLI pairs, the exported
preprocessor) and `[CLS] s [SEP]` for one sentence (the MoCo branches). One
definition for training, fine-tuning and the exports, so they agree token for
token.

Example:
```python
pack_pair(tf.constant([5, 6, 7]), tf.constant([8, 9]), cls_id=1, sep_id=2, max_length=16)
# [1, 5, 6, 7, 2, 8, 9, 2]
```
"""

import tensorflow as tf


def truncate_pair_lengths(first_length, second_length, budget):
    """Lengths that fit a pair into `budget` tokens, trimming the longer side.

    Equals BERT's one-token-at-a-time trimming of the longer sentence: the
    shorter side keeps min(its length, budget // 2) tokens, the longer side
    gets the rest.
    """
    first_length = tf.cast(first_length, tf.int32)
    second_length = tf.cast(second_length, tf.int32)
    shorter = tf.minimum(first_length, second_length)
    keep_short = tf.minimum(shorter, budget // 2)
    fits = first_length + second_length <= budget
    first_is_shorter = first_length <= second_length
    first_keep = tf.where(
        fits, first_length, tf.where(first_is_shorter, keep_short, budget - keep_short)
    )
    second_keep = tf.where(fits, second_length, budget - first_keep)
    return first_keep, second_keep


def pack_pair(first, second, cls_id, sep_id, max_length):
    """`[CLS] first [SEP] second [SEP]`, fairly truncated to `max_length`."""
    budget = max_length - 3
    first_keep, second_keep = truncate_pair_lengths(tf.size(first), tf.size(second), budget)
    return tf.concat(
        [[cls_id], first[:first_keep], [sep_id], second[:second_keep], [sep_id]], axis=0
    )


def pack_single(ids, cls_id, sep_id, max_length):
    """`[CLS] ids [SEP]`, truncated to `max_length`."""
    return tf.concat([[cls_id], ids[: max_length - 2], [sep_id]], axis=0)


def pad_to_length(ids, length, pad_id):
    """(token_ids, padding_mask), each int32 [length], from unpadded `ids`."""
    size = tf.size(ids)
    token_ids = tf.pad(ids, [[0, length - size]], constant_values=pad_id)
    mask = tf.pad(tf.ones([size], tf.int32), [[0, length - size]])
    return tf.ensure_shape(token_ids, [length]), tf.ensure_shape(mask, [length])
