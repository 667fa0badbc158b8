"""Sentence representations: [CLS] or mean pooling of one encoder layer.

One definition for every user: the MoCo branches of alignment
(`Aligner.embed`), evaluation (`SentenceEmbedder`) and the serving export
(`SentenceEmbeddingServer`), so a sentence gets the same vector in all three.

Example:
```python
outputs = encoder({"token_ids": ids, "segment_ids": 0 * ids, "padding_mask": mask})
vectors = sentence_embedding(outputs["encoder_outputs"], mask, layer=-1, pooling="mean")
```
"""

import tensorflow as tf

POOLINGS = ("cls", "mean")


def sentence_representation(encoder_outputs, padding_mask, layer=-1, pooling="cls"):
    """[CLS] or mean-pooled hidden states of one encoder layer (not
    normalized), float32: under mixed precision the mean is summed in float32
    (a bf16 sum over a sentence's tokens keeps 8 bits of mantissa).

    Args:
        encoder_outputs: list of [batch, seq, hidden] tensors, one per layer.
        padding_mask: [batch, seq], 1 for real tokens.
        layer: index into `encoder_outputs` (-1 = last).
        pooling: "cls" (position 0) or "mean" (over real tokens).
    """
    hidden = encoder_outputs[layer]
    if pooling == "cls":
        return tf.cast(hidden[:, 0, :], tf.float32)
    if pooling == "mean":
        hidden = tf.cast(hidden, tf.float32)
        mask = tf.cast(padding_mask, tf.float32)[:, :, None]
        return tf.reduce_sum(hidden * mask, axis=1) / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)
    raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")


def l2_normalized(vectors):
    """float32, unit-length rows (cosine similarity = dot product)."""
    return tf.math.l2_normalize(tf.cast(vectors, tf.float32), axis=-1)


def sentence_embedding(encoder_outputs, padding_mask, layer=-1, pooling="cls"):
    """L2-normalized `sentence_representation`, float32."""
    return l2_normalized(sentence_representation(encoder_outputs, padding_mask, layer, pooling))
