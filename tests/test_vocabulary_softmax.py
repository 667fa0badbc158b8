"""`softmax_cross_entropy`: the TLM loss, its gradient and its top-1 hits from
one softmax. Checked against a float64 log-softmax, against TensorFlow's own
op, and on logits whose top cannot be a near-tie."""

import numpy as np
import pytest
import tensorflow as tf

from tf_mbalign.modeling.vocabulary_softmax import softmax_cross_entropy, top_one_hits

ROUNDING = 2.0**-24  # float32's unit roundoff


def _float64_reference(logits, labels, upstream):
    z = logits.astype(np.float64)
    top = z.max(-1, keepdims=True)
    log_normalizer = top[:, 0] + np.log(np.exp(z - top).sum(-1))
    losses = log_normalizer - z[np.arange(len(labels)), labels]
    probabilities = np.exp(z - log_normalizer[:, None])
    gradient = probabilities.copy()
    gradient[np.arange(len(labels)), labels] -= 1
    return losses, gradient * upstream[:, None], probabilities


def _loss_and_gradient(logits, labels, upstream):
    logits = tf.constant(logits)
    with tf.GradientTape() as tape:
        tape.watch(logits)
        losses, _ = softmax_cross_entropy(logits, tf.constant(labels))
        weighted = tf.reduce_sum(losses * upstream)
    return losses.numpy(), tape.gradient(weighted, logits).numpy()


def _random_case(seed, rows=6, classes=1000):
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((rows, classes)) * 4).astype(np.float32)
    labels = rng.integers(0, classes, rows).astype(np.int32)
    upstream = rng.uniform(0.1, 2.0, rows).astype(np.float32)
    return logits, labels, upstream


# tolerance: float32 worst cases, derived. The normalizer sums `classes` exps:
# recursive summation's relative error is at most (classes + 4) u (u = 2^-24,
# exp and the division included), an absolute error of that size on its log;
# the max, the label's logit and the subtractions add one rounding each of
# their magnitudes (4 u (|max| + |normalizer| + |label logit|)). A probability
# carries the same relative (classes + 8) u, and one rounding of the -1.
@pytest.mark.numerics
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_losses_and_gradients_are_the_float64_softmax_cross_entropy(seed):
    logits, labels, upstream = _random_case(seed)
    losses, gradient = _loss_and_gradient(logits, labels, upstream)
    want_losses, want_gradient, probabilities = _float64_reference(logits, labels, upstream)
    classes = logits.shape[-1]
    magnitudes = (np.abs(logits.max(-1)) + np.abs(want_losses)
                  + 2 * np.abs(logits[np.arange(len(labels)), labels]))
    loss_bound = (classes + 4) * ROUNDING + 4 * ROUNDING * magnitudes
    assert np.all(np.abs(losses - want_losses) <= loss_bound), np.abs(losses - want_losses)
    gradient_bound = upstream[:, None] * ((classes + 8) * ROUNDING * probabilities + 2 * ROUNDING)
    assert np.all(np.abs(gradient - want_gradient) <= gradient_bound)
    # The bound can fail: the gradient without the -1 at the labels breaks it.
    wrong = want_gradient.copy()
    wrong[np.arange(len(labels)), labels] += upstream
    assert not np.all(np.abs(gradient - wrong) <= gradient_bound)


# tolerance: both sides are float32 softmax cross-entropies of the same
# logits; each is within the bound derived in the float64 test above of the
# exact value, so they are within twice that bound of each other.
@pytest.mark.numerics
def test_it_agrees_with_tensorflows_op():
    logits, labels, upstream = _random_case(3, rows=4, classes=5000)
    losses, gradient = _loss_and_gradient(logits, labels, upstream)
    x = tf.constant(logits)
    with tf.GradientTape() as tape:
        tape.watch(x)
        theirs = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=x)
        weighted = tf.reduce_sum(theirs * upstream)
    their_gradient = tape.gradient(weighted, x).numpy()
    _, _, probabilities = _float64_reference(logits, labels, upstream)
    magnitudes = np.abs(logits).max(-1) + np.abs(theirs.numpy())
    loss_bound = 2 * ((5000 + 4) * ROUNDING + 8 * ROUNDING * magnitudes)
    np.testing.assert_array_less(np.abs(losses - theirs.numpy()), loss_bound)
    gradient_bound = 2 * upstream[:, None] * ((5000 + 8) * ROUNDING * probabilities + 2 * ROUNDING)
    assert np.all(np.abs(gradient - their_gradient) <= gradient_bound)


def _untied_logits(seed, rows, classes):
    """Logits that are distinct integers in every row (a permutation): the top
    of a row is 1 above the next, so no rounding can change which is largest."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.permutation(classes) for _ in range(rows)]).astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hits_are_the_argmax_where_the_top_is_not_tied(seed):
    logits = _untied_logits(seed, rows=40, classes=300)
    rng = np.random.default_rng(seed + 10)
    labels = rng.integers(0, 300, 40).astype(np.int32)
    labels[::2] = logits[::2].argmax(-1)  # half the rows hit
    want = (logits.argmax(-1) == labels).astype(np.float32)
    _, hits = softmax_cross_entropy(tf.constant(logits), tf.constant(labels))
    np.testing.assert_array_equal(hits.numpy(), want)
    np.testing.assert_array_equal(top_one_hits(tf.constant(logits), tf.constant(labels)).numpy(),
                                  want)
    assert 0 < want.sum() < len(want)  # both outcomes occur


def test_a_label_tied_at_the_top_is_a_hit():
    logits = np.array([[1.0, 5.0, 5.0, 2.0]], np.float32)
    for label in (1, 2):
        _, hits = softmax_cross_entropy(tf.constant(logits), tf.constant([label]))
        assert hits.numpy().tolist() == [1.0]
    _, hits = softmax_cross_entropy(tf.constant(logits), tf.constant([3]))
    assert hits.numpy().tolist() == [0.0]


def test_leading_axes_are_kept_and_bfloat16_logits_are_computed_in_float32():
    logits = tf.constant(_untied_logits(4, rows=6, classes=50).reshape(2, 3, 50) / 8)
    labels = tf.constant([[0, 1, 2], [3, 4, 5]])
    losses, hits = softmax_cross_entropy(tf.cast(logits, tf.bfloat16), labels)
    assert losses.shape == (2, 3) and hits.shape == (2, 3)
    assert losses.dtype == tf.float32 and hits.dtype == tf.float32
    # The logits are multiples of 1/8 below 50: exact in bf16, so the bf16
    # call computes on the very float32 values of the float32 call.
    float32_losses, float32_hits = softmax_cross_entropy(logits, labels)
    np.testing.assert_array_equal(losses.numpy(), float32_losses.numpy())
    np.testing.assert_array_equal(hits.numpy(), float32_hits.numpy())


def test_the_hits_have_no_gradient_and_labels_out_of_range_are_an_error():
    logits = tf.constant(_untied_logits(5, rows=2, classes=10))
    with tf.GradientTape() as tape:
        tape.watch(logits)
        _, hits = softmax_cross_entropy(logits, tf.constant([1, 2]))
        total = tf.reduce_sum(hits)
    gradient = tape.gradient(total, logits)
    assert gradient is None or not np.any(gradient.numpy())
    with pytest.raises(tf.errors.InvalidArgumentError):
        softmax_cross_entropy(logits, tf.constant([1, 10]))
