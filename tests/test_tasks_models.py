"""The task heads: the token classifier's masked loss, mean pooling, config round trips."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_mbalign.modeling.encoders import tiny_encoder
from tf_mbalign.modeling.classifiers import PooledClassifier
from tf_mbalign.modeling.classifiers import IGNORED, TokenClassifier, masked_token_loss


def test_masked_token_loss_reads_only_labelled_positions():
    # Uniform logits over 4 tags: -log(1/4) at every position. Position 1 has
    # a confident wrong logit but is ignored.
    logits = np.zeros((1, 3, 4), np.float32)
    logits[0, 1, 0] = 50.0
    labels = np.array([[2, IGNORED, 3]])
    assert float(masked_token_loss(labels, logits)) == pytest.approx(math.log(4), rel=1e-5)
    assert float(masked_token_loss(np.full((1, 3), IGNORED), logits)) == 0.0


def _inputs(ids, mask):
    ids = tf.constant(ids, tf.int32)
    return {"token_ids": ids, "padding_mask": tf.constant(mask, tf.int32),
            "segment_ids": tf.zeros_like(ids)}


@pytest.fixture(scope="module")
def encoder():
    keras.utils.set_random_seed(0)
    return tiny_encoder("demo").encoder


# tolerance: the same rows with and without padding, O(1) values: rtol 1e-4 + atol 1e-5.
@pytest.mark.numerics
def test_mean_pooling_ignores_padding(encoder):
    model = PooledClassifier(encoder, num_classes=3, pooling="mean", dropout=0.0)
    short = model(_inputs([[2, 10, 3]], [[1, 1, 1]]))
    padded = model(_inputs([[2, 10, 3, 0, 0]], [[1, 1, 1, 0, 0]]))
    np.testing.assert_allclose(short.numpy(), padded.numpy(), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="pooling must be one of"):
        PooledClassifier(encoder, num_classes=3, pooling="max")


def test_heads_round_trip_their_config(encoder):
    for model in (PooledClassifier(encoder, num_classes=3, pooling="cls", dropout=0.2),
                  TokenClassifier(encoder, num_classes=5, dropout=0.2)):
        clone = type(model).from_config(model.get_config())
        assert clone.num_classes == model.num_classes and clone.dropout == 0.2
        outputs = model(_inputs([[2, 10, 11, 3]], [[1, 1, 1, 1]]))
        assert outputs.dtype == tf.float32
        assert len(model.head_variables()) == 2  # kernel and bias: the only new weights
    assert TokenClassifier(encoder, num_classes=5)(_inputs([[2, 10, 3]], [[1, 1, 1]])).shape \
        == (1, 3, 5)
