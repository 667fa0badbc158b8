"""The English anchor: the starting encoder, frozen, keeps English in place.

Multilingual knowledge distillation (Reimers & Gurevych 2020, "Making
Monolingual Sentence Embeddings Multilingual using Knowledge Distillation",
arXiv 2004.09813): a frozen teacher embeds the English sentence s of a pair
(s, t); the trained student embeds both s and t, and both are pulled to the
teacher's vector:

    anchor_loss = mean over the 2B student vectors of d(student, teacher(s))

Here the teacher is a copy of the encoder as the run loaded it (never
trained, no EMA), so the anchor keeps English where the starting model put
it while the other language moves to it. `d` is

- `"mse"`: the mean squared difference over the vector's coordinates, on
  the sentence representations before any projection or L2 normalization
  (Reimers & Gurevych's `MSELoss` over the concatenated student embeddings);
- `"cosine"`: 1 - cosine similarity (the direction only).

The teacher is held out of Keras' and TensorFlow's tracking (`Teacher`): it
is not in the aligner's weights, not trained, not checkpointed. A run
rebuilds it from `--encoder` before restoring, and the checkpoint keeps a
fingerprint of its weights (`weights_fingerprint`) so a resume from another
starting encoder is refused instead of silently anchoring to it.

Example:
```python
teacher = Teacher(encoder)
targets = teacher_targets(teacher.encoder, batch, sentence_vectors)  # [B, width]
distances = anchor_distances(students, targets, "mse")               # [B]
```
"""

import numpy as np
import tensorflow as tf

from tf_mbalign.modeling.bert_encoder import clone_encoder

ANCHOR_LOSSES = ("mse", "cosine")


class Teacher:
    """A frozen copy of `encoder` as it is now (dropout off).

    A plain object, not a Keras layer: an `Aligner` holding it does not
    track it, so the copy is in no optimizer, no EMA, no checkpoint and not
    in `Aligner.weights`.

    Attributes:
        encoder: the copy (`trainable` False).
        fingerprint: `weights_fingerprint` of its weights.
    """

    def __init__(self, encoder):
        self.encoder = clone_encoder(encoder, name="teacher", dropout=0.0)
        self.encoder.trainable = False
        self.fingerprint = weights_fingerprint(self.encoder.get_weights())


def weights_fingerprint(weights):
    """float64 [3]: the number of entries, their sum and their sum of
    squares (one pass over numpy arrays): equal for the same weights,
    different for other weights of the same shapes."""
    values = [np.asarray(w, np.float64).ravel() for w in weights]
    return np.array([sum(v.size for v in values), sum(float(np.sum(v)) for v in values),
                     sum(float(np.dot(v, v)) for v in values)], np.float64)


def english_side(batch):
    """(token ids, padding mask) of each pair's English sentence: the query
    where `query_is_english` (the input-shuffling coin), else the key."""
    english_first = tf.reshape(tf.cast(batch["query_is_english"], tf.bool), [-1, 1])
    return (tf.where(english_first, batch["query_token_ids"], batch["key_token_ids"]),
            tf.where(english_first, batch["query_padding_mask"], batch["key_padding_mask"]))


def teacher_targets(teacher_encoder, batch, sentence_vectors):
    """The teacher's sentence representations of the English sides, without
    gradient. `sentence_vectors(encoder, token_ids, padding_mask, training)`
    is the run's representation (pooling, layer)."""
    token_ids, padding_mask = english_side(batch)
    return tf.stop_gradient(sentence_vectors(teacher_encoder, token_ids, padding_mask, False))


def anchor_distances(students, targets, loss="mse"):
    """Per row, float32 [rows]: the mean squared difference (`"mse"`) or
    1 - cosine similarity (`"cosine"`) of a student vector and its target."""
    students = tf.cast(students, tf.float32)
    targets = tf.cast(targets, tf.float32)
    if loss == "mse":
        return tf.reduce_mean(tf.square(students - targets), axis=-1)
    if loss == "cosine":
        return 1.0 - tf.reduce_sum(tf.math.l2_normalize(students, axis=-1)
                                   * tf.math.l2_normalize(targets, axis=-1), axis=-1)
    raise ValueError(f"anchor_loss must be one of {ANCHOR_LOSSES}, got {loss!r}")
