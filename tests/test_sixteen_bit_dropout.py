"""`dropout_mask_bits=16`: dropout masks from 16 random bits per element.

The masks must have Keras' distribution (each element dropped independently
with the rate, kept ones scaled by 1 / (1 - rate)), the switch must leave a
model's variables, seed generators and inference alone, and the flag must
reach the encoder through the Aligner and the training config."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_mbalign.config import TrainConfig
from tf_mbalign.modeling import encoders
from tf_mbalign.modeling.aligner import Aligner
from tf_mbalign.modeling.bert_encoder import dropout_rng_states
from tf_mbalign.modeling.sixteen_bit_dropout import (
    SixteenBitDropout,
    set_dropout_mask_bits,
    sixteen_bit_dropout,
    sixteen_bit_threshold,
)

RATE = 0.1
# Every bound on a share below is 6 binomial standard deviations of that
# share: a correct draw falls outside with probability ~2e-9 per check, so
# the tests pass for every seed in practice; a wrong rate by 1/65,536 or a
# correlation between the two halves of a word of 1% would fail them.
SIGMAS = 6


def _bound(p, n):
    return SIGMAS * np.sqrt(p * (1 - p) / n)


def _dropped_share(rate):
    return sixteen_bit_threshold(rate) / 2**16


@pytest.mark.parametrize("seed", [(0, 1), (12345, 678), (2**40, 3)])
@pytest.mark.parametrize("rate", [RATE, 0.5])
def test_each_element_is_dropped_with_the_rate_and_kept_ones_are_scaled(seed, rate):
    assert abs(_dropped_share(rate) - rate) <= 2**-17  # the 16-bit rate is the rate, rounded
    x = tf.random.stateless_uniform([1000, 1001], (7, 7), 1.0, 2.0)  # odd size: a half-word
    y = sixteen_bit_dropout(x, rate, tf.constant(seed, tf.int64)).numpy()
    kept = y != 0
    n = kept.size
    assert abs((1 - kept.mean()) - _dropped_share(rate)) < _bound(_dropped_share(rate), n)
    # Kept elements are x * scale computed in x's dtype: one rounding, the same on every CPU.
    scale = np.float32(1.0 / (1.0 - rate))
    np.testing.assert_array_equal(y[kept], x.numpy()[kept] * scale)


def test_the_two_halves_of_a_random_word_are_independent():
    """Element 2i and 2i+1 share one 32-bit draw: both dropped should happen
    with the square of the rate, not more or less."""
    x = tf.ones([2_000_000])
    dropped = (sixteen_bit_dropout(x, RATE, tf.constant([3, 4], tf.int64)).numpy() == 0)
    pairs = dropped.reshape(-1, 2)
    p = _dropped_share(RATE)
    both = (pairs[:, 0] & pairs[:, 1]).mean()
    assert abs(both - p * p) < _bound(p * p, len(pairs))


def test_masks_follow_the_seed_and_the_dtype():
    x = tf.ones([3, 5, 7])
    first = sixteen_bit_dropout(x, RATE, tf.constant([1, 2], tf.int64))
    again = sixteen_bit_dropout(x, RATE, tf.constant([1, 2], tf.int64))
    other = sixteen_bit_dropout(tf.ones([64, 64]), RATE, tf.constant([1, 3], tf.int64))
    same_seed = sixteen_bit_dropout(tf.ones([64, 64]), RATE, tf.constant([1, 2], tf.int64))
    np.testing.assert_array_equal(first.numpy(), again.numpy())
    # 4,096 elements each dropped with p = 0.1: two seeds agreeing on every
    # mask bit has probability ~0.82**4096.
    assert (other.numpy() != same_seed.numpy()).any()
    assert first.shape == x.shape
    bf16 = sixteen_bit_dropout(tf.ones([4, 4], tf.bfloat16), RATE, tf.constant([1, 2], tf.int64))
    assert bf16.dtype == tf.bfloat16


def _tiny_encoder():
    keras.utils.set_random_seed(2)
    return encoders.load_encoder("tiny:demo", dropout=0.2).encoder


def test_switching_keeps_variables_seed_generators_and_inference():
    encoder = _tiny_encoder()
    names = [v.path for v in encoder.variables]
    states = dropout_rng_states(encoder)
    ids = tf.constant([[2, 5, 6, 7, 3]])
    inputs = {"token_ids": ids, "segment_ids": tf.zeros_like(ids), "padding_mask": tf.ones_like(ids)}
    before = encoder(inputs)["sequence_output"].numpy()

    switched = set_dropout_mask_bits(encoder, 16)
    dropouts = [layer for layer in encoder._flatten_layers()
                if isinstance(layer, keras.layers.Dropout)]
    # 1 embedding dropout + per layer: attention, after attention, after the feed-forward.
    assert switched == len(dropouts) == 1 + 3 * len(encoder.transformer_layers)
    assert all(type(layer) is SixteenBitDropout for layer in dropouts)
    assert [v.path for v in encoder.variables] == names
    assert all(a is b for a, b in zip(dropout_rng_states(encoder), states))
    # Inference draws nothing: the same outputs, bit for bit.
    np.testing.assert_array_equal(encoder(inputs)["sequence_output"].numpy(), before)
    # A training call draws from the same generators, advancing them.
    start = [s.numpy().copy() for s in states]
    training = encoder(inputs, training=True)["sequence_output"].numpy()
    assert not np.array_equal(training, before)
    assert all(not np.array_equal(s.numpy(), s0) for s, s0 in zip(states, start))

    set_dropout_mask_bits(encoder, 32)
    assert all(type(layer) is keras.layers.Dropout for layer in dropouts)
    with pytest.raises(ValueError, match="dropout_mask_bits=8"):
        set_dropout_mask_bits(encoder, 8)


def test_the_flag_reaches_the_encoder_through_the_aligner_and_the_config():
    aligner = Aligner(_tiny_encoder(), contrastive_negatives="in_batch", dropout_mask_bits=16)
    assert all(type(layer) is SixteenBitDropout for layer in aligner.encoder._flatten_layers()
               if isinstance(layer, keras.layers.Dropout))
    assert aligner.get_config()["dropout_mask_bits"] == 16
    assert TrainConfig(dropout_mask_bits=16).aligner_arguments()["dropout_mask_bits"] == 16
    assert TrainConfig().dropout_mask_bits == 32  # Keras' dropout stays the default
    with pytest.raises(ValueError, match="--dropout_mask_bits=8"):
        TrainConfig(dropout_mask_bits=8)


def test_a_rate_near_one_drops_nearly_everything_without_overflowing_16_bits():
    assert sixteen_bit_threshold(0.999999) == 2**16 - 1
    y = sixteen_bit_dropout(tf.ones([100_000]), 0.999999, tf.constant([5, 6], tf.int64))
    # P(kept) = 1 / 65,536: 1.5 expected of 100,000; more than 20 has probability < 1e-15.
    assert int(np.sum(y.numpy() != 0)) <= 20
