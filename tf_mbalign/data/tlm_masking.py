"""Translation Language Modeling as a data transform (XLM's `mlm_step` idea).

TLM is ordinary BERT masking applied to a sentence pair packed as
`[CLS] a [SEP] b [SEP]`: no language embeddings, positions counted straight
through both sentences, segment ids all 0. The model side is the ordinary MLM
head; nothing here knows about models. Packing the pair (and its fair
truncation) is `pair_packing.py`, shared with the exports and fine-tuning.

All randomness is stateless and keyed by a per-example seed, so an example's
masks depend only on (run seed, example position), not on batching, replica
count or restarts.
"""

import tensorflow as tf


def tlm_masking(
    token_ids,
    seed,
    special_ids,
    mask_id,
    random_id_range,
    max_predictions,
    selection_rate=0.15,
    mask_token_rate=0.8,
    random_token_rate=0.1,
):
    """BERT-style masking of one packed sequence.

    Chooses round(selection_rate * n) of the n non-special tokens (at least
    one, at most `max_predictions`); of those, `mask_token_rate` become
    `mask_id`, `random_token_rate` a random ordinary token, the rest stay.

    Args:
        token_ids: int32 [length], unpadded.
        seed: int32/int64 [2] stateless seed, unique per example.
        special_ids: ids that are never selected ([CLS], [SEP], [PAD], ...).
        mask_id: the [MASK] id.
        random_id_range: (low, high) of ids drawn for random replacement.
        max_predictions: size of the fixed-length outputs.

    Returns:
        dict with `token_ids` (masked input), `masked_positions`, `masked_ids`
        (original tokens) and `masked_weights` (1.0 real, 0.0 padding), the
        last three of length `max_predictions`.
    """
    seeds = tf.random.experimental.stateless_split(seed, num=3)
    length = tf.size(token_ids)
    is_candidate = tf.reduce_all(
        tf.not_equal(token_ids[:, None], tf.constant(special_ids, tf.int32)[None, :]), axis=1
    )
    num_candidates = tf.reduce_sum(tf.cast(is_candidate, tf.int32))
    num_to_predict = tf.cast(
        tf.round(tf.cast(num_candidates, tf.float32) * selection_rate), tf.int32
    )
    num_to_predict = tf.minimum(tf.maximum(num_to_predict, 1), max_predictions)
    num_to_predict = tf.minimum(num_to_predict, num_candidates)

    # Random order of the candidates; the first `num_to_predict` are chosen.
    scores = tf.random.stateless_uniform([length], seeds[0])
    scores = tf.where(is_candidate, scores, 2.0)
    order = tf.argsort(scores)
    positions = tf.sort(order[:num_to_predict])
    original = tf.gather(token_ids, positions)

    # 80 / 10 / 10.
    action = tf.random.stateless_uniform([num_to_predict], seeds[1])
    random_tokens = tf.random.stateless_uniform(
        [num_to_predict], seeds[2], minval=random_id_range[0], maxval=random_id_range[1],
        dtype=tf.int32,
    )
    replacement = tf.where(
        action < mask_token_rate,
        mask_id,
        tf.where(action < mask_token_rate + random_token_rate, random_tokens, original),
    )
    masked = tf.tensor_scatter_nd_update(token_ids, positions[:, None], replacement)

    padding = max_predictions - num_to_predict
    return {
        "token_ids": masked,
        "masked_positions": tf.pad(positions, [[0, padding]]),
        "masked_ids": tf.pad(original, [[0, padding]]),
        "masked_weights": tf.pad(tf.ones([num_to_predict], tf.float32), [[0, padding]]),
    }
