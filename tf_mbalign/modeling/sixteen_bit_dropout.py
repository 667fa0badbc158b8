"""Dropout whose keep-mask comes from 16 random bits per element instead of 32.

Keras' `Dropout` on TensorFlow calls `tf.nn.experimental.stateless_dropout`:
one 32-bit uniform draw per element, converted to a float, compared with the
rate. The draw is most of dropout's cost, and dropout is the largest
element-wise cost of the alignment step after the multiplications
(`StatelessRandomUniformV2` and `SelectV2`, BENCHMARKS.md; on a CPU whose
element-wise kernels run bf16 through float32, more so in mixed bf16).

Here each 32-bit word of one Philox draw (`StatelessRandomUniformFullIntV2`)
gives two 16-bit integers, each compared with `round(rate * 2**16)` in
integers: half the random bits and no float conversion. An element is
dropped with probability `round(rate * 65536) / 65536` (0.1000061 for 0.1,
within 1/131,072 of the rate for any rate up to 1 - 2**-17), kept elements are scaled by
`1 / (1 - rate)` as Keras does, in the input's dtype. Masks are independent
across elements and calls as Keras' are; they are not the same masks, so a
run with `dropout_mask_bits=16` draws another random stream than one with 32.

`set_dropout_mask_bits(model, 16)` switches every plain Keras `Dropout` of
`model` (keras-hub's transformer layers create theirs, and the attention's)
to `SixteenBitDropout` in place: the class changes, nothing else. The layer
keeps its `seed_generator` (its state variable, and so the checkpoints'
layout and the dropout RNG states a resumed run restores), its rate, name and
config; `set_dropout_mask_bits(model, 32)` switches back.
"""

import keras
import tensorflow as tf

MASK_BITS = (16, 32)
_INT32_SEED_RANGE = 2**31 - 2  # Keras' `floormod` of a generator's int64 seed


def sixteen_bit_threshold(rate):
    """The integer an element's 16 bits must reach to be kept (at most
    65,535: a rate above 1 - 2**-17 drops with probability 65,535 / 65,536)."""
    return min(int(round(rate * 2**16)), 2**16 - 1)


def sixteen_bit_keep_mask(shape, rate, seed):
    """A boolean mask of `shape`, each element True (kept) with probability
    `1 - sixteen_bit_threshold(rate) / 65536`, from 16 random bits each.
    `seed`: a shape-[2] integer tensor (a Keras `SeedGenerator`'s `next()`)."""
    size = tf.reduce_prod(shape)
    seed = tf.cast(tf.math.floormod(seed, _INT32_SEED_RANGE), tf.int32)
    words = tf.random.stateless_uniform([(size + 1) // 2], seed, minval=None, maxval=None,
                                        dtype=tf.int32)
    bits = tf.reshape(tf.bitcast(words, tf.uint16), [-1])[:size]
    keep = bits >= tf.constant(sixteen_bit_threshold(rate), tf.uint16)
    return tf.reshape(keep, shape)


def sixteen_bit_dropout(inputs, rate, seed):
    """`inputs` with each element zeroed with probability
    `sixteen_bit_threshold(rate) / 65536` and the rest scaled by
    `1 / (1 - rate)`, by selects as Keras applies its mask. `seed`: as
    `sixteen_bit_keep_mask`'s."""
    inputs = tf.convert_to_tensor(inputs)
    keep = sixteen_bit_keep_mask(tf.shape(inputs), rate, seed)
    scale = tf.constant(1.0 / (1.0 - rate), inputs.dtype)
    return tf.where(keep, inputs * scale, tf.zeros([], inputs.dtype))


class SixteenBitDropout(keras.layers.Dropout):
    """`keras.layers.Dropout` drawing 16 bits per element (`sixteen_bit_dropout`).

    Same constructor, config, seed generator and inference behaviour; a
    `noise_shape` (a mask shared along axes) falls back to Keras' draw."""

    def call(self, inputs, training=False):
        if training and 0 < self.rate < 1 and self.noise_shape is None:
            return sixteen_bit_dropout(inputs, self.rate, self.seed_generator.next())
        return super().call(inputs, training=training)


_CLASS_OF_BITS = {16: SixteenBitDropout, 32: keras.layers.Dropout}


def set_dropout_mask_bits(model, bits):
    """Switch every Keras `Dropout` in `model` to draw `bits` (16 or 32)
    random bits per element; returns how many layers it switched to or kept at
    that class. Subclasses of `Dropout` other than `SixteenBitDropout` are
    left alone."""
    if bits not in _CLASS_OF_BITS:
        raise ValueError(f"dropout_mask_bits={bits!r} is not one of {MASK_BITS}")
    target = _CLASS_OF_BITS[bits]
    switched = 0
    for layer in model._flatten_layers(include_self=True, recursive=True):
        if type(layer) in _CLASS_OF_BITS.values():
            layer.__class__ = target
            switched += 1
    return switched
