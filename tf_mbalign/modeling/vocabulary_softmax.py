"""Softmax cross-entropy over a wide vocabulary, with its top-1 hit, from one softmax.

The word-level loss of alignment training is a softmax over e5-small's
250,002 rows at every masked token: 320 x 250,002 float32 logits a step at
batch 16. TensorFlow's `SparseSoftmaxCrossEntropyWithLogits` (what
`keras.losses.sparse_categorical_crossentropy` runs) and the `ArgMax` of the
accuracy took ~350 ms a step in a serialized profile of the mixed-bf16 step
on an AMX CPU (BENCHMARKS.md, "The vocabulary softmax"). Here the probabilities come from
`tf.nn.softmax` (oneDNN's softmax where oneDNN is on), and everything else
is read off them and two row maxima:

- the loss of row i is logsumexp(z_i) - z_i[label], and logsumexp(z_i) =
  max(z_i) - log(max(p_i)): the largest probability is 1 / sum(exp(z_i -
  max z_i)) and at least 1 / vocabulary, so its log is well conditioned
  (no probability that can underflow is logged);
- the gradient is p_i - onehot(label), one scatter into the probabilities;
- the top-1 hit is z_i[label] == max(z_i). A tie at the top counts as a hit
  (`argmax` would count it only when the label is the first of the tied
  ids); ties among float32 logits are rare, and the figure is a training
  monitor.

Same loss and gradient as TensorFlow's op within float32 rounding
(`tests/test_vocabulary_softmax.py`); 0.37x the time of the op and the
`ArgMax` on e5-small's TLM logits, 0.90x the default step's
(BENCHMARKS.md).
"""

import tensorflow as tf

_REDUCED_PRECISIONS = (tf.bfloat16, tf.float16)


def softmax_cross_entropy(logits, labels):
    """(losses, hits) of a softmax over the last axis of `logits`.

    Args:
        logits: float tensor [..., classes]; bf16 and float16 logits are
            computed in float32.
        labels: int tensor [...] of class ids in [0, classes).

    Returns:
        losses: float tensor [...] (float32, or `logits`' wider dtype),
            -log softmax(logits)[label]; differentiable in `logits`.
        hits: float tensor [...], 1.0 where the label's logit is the row's
            largest (ties count), else 0.0; no gradient.
    """
    logits = tf.convert_to_tensor(logits)
    if logits.dtype in _REDUCED_PRECISIONS:
        logits = tf.cast(logits, tf.float32)
    outer_shape = tf.shape(labels)
    rows = tf.reshape(logits, [-1, tf.shape(logits)[-1]])
    losses, hits = _row_cross_entropy(rows, tf.reshape(tf.cast(labels, tf.int32), [-1]))
    return tf.reshape(losses, outer_shape), tf.reshape(hits, outer_shape)


def top_one_hits(logits, labels):
    """1.0 where the label's logit is the largest of its row (ties count, as
    in `softmax_cross_entropy`), else 0.0: float32 [...]."""
    label_logits = tf.gather(logits, tf.cast(labels, tf.int32), batch_dims=len(labels.shape))
    return _hits(label_logits, tf.reduce_max(logits, axis=-1))


def _hits(label_logits, row_max):
    return tf.cast(label_logits >= row_max, tf.float32)


@tf.custom_gradient
def _row_cross_entropy(rows, labels):
    """`softmax_cross_entropy` of 2-D `rows` [n, classes] and `labels` [n]."""
    probabilities = tf.nn.softmax(rows)
    row_max = tf.reduce_max(rows, axis=-1)
    label_logits = tf.gather(rows, labels, batch_dims=1)
    log_normalizer = row_max - tf.math.log(tf.reduce_max(probabilities, axis=-1))
    losses = log_normalizer - label_logits
    hits = _hits(label_logits, row_max)

    def gradient(upstream_losses, upstream_hits):
        del upstream_hits  # the hits are counts: no gradient
        label_cells = tf.stack([tf.range(tf.shape(labels)[0]), labels], axis=1)
        gradients = tf.tensor_scatter_nd_sub(probabilities, label_cells,
                                             tf.ones_like(label_logits))
        return gradients * upstream_losses[:, None], None

    return (losses, tf.stop_gradient(hits)), gradient
