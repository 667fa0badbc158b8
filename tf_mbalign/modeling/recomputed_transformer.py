"""A keras-hub transformer layer that can recompute its activations in the backward pass.

Training keeps every intermediate tensor of every layer for the backward pass:
for e5-small at batch 64 x 32 tokens, about 2 GB of a run's peak memory
(BENCHMARKS.md, "The lean step on a Zen 3"). With `recompute_activations` on,
a layer keeps only its input and runs its forward pass a second time while
the gradients are taken (`tf.recompute_grad`, Chen et al. 2016, arXiv
1604.06174): one more forward pass of compute for a layer's worth of
activations at a time.

Dropout is why this is not `keras.RematScope`: on TensorFlow, Keras' remat is
`tf.recompute_grad` around the layer's call, and every keras `Dropout` draws
its seed from its `SeedGenerator` state when it runs, so the recomputation
draws new masks and the gradients belong to another forward pass than the
loss. Here the layer draws each dropout's seed once, before the recomputed
function, advancing each generator exactly as a plain call does, and the
function (first run and recomputation alike) hands those seeds to its
dropouts. Masks, losses and the random stream are the same with the option
on or off (`tests/test_recomputed_transformer.py`).
"""

import contextlib

import keras
import keras_hub
import tensorflow as tf


class _DrawnSeed(keras.random.SeedGenerator):
    """Hands a dropout a seed drawn before the recomputed function, every time.

    `keras.random.dropout` takes a seed as an int or a `SeedGenerator` whose
    `next()` it calls; this one returns the same tensor each call and owns no
    state variable (the constructor of `SeedGenerator` is skipped on purpose:
    it would create one, inside a traced function).
    """

    def __init__(self, seed):  # pylint: disable=super-init-not-called
        self._drawn = seed

    def next(self, ordered=True):
        del ordered
        return self._drawn


@keras.saving.register_keras_serializable(package="tf_mbalign")
class TransformerEncoder(keras_hub.layers.TransformerEncoder):
    """`keras_hub.layers.TransformerEncoder` with optional activation recomputation.

    The class keeps keras-hub's name on purpose: a `.keras` file addresses
    the weights of a list's layers by their class name
    (`layers/transformer_encoder_3/...`), so another name would
    make every encoder exported before it unreadable.

    Same variables, names, config and outputs as the keras-hub layer. Set
    `recompute_activations = True` (a training setting, not part of the
    config: an export or a checkpoint does not record it) and a training call
    keeps only its input for the backward pass. Inference calls and calls
    with `training=False` are the keras-hub layer's.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.recompute_activations = False
        self._in_recomputed_call = False

    def call(self, inputs, padding_mask=None, attention_mask=None, training=None,
             return_attention_scores=False):
        if (not self.recompute_activations or not training or return_attention_scores
                or self._in_recomputed_call):
            return super().call(inputs, padding_mask=padding_mask,
                                attention_mask=attention_mask, training=training,
                                return_attention_scores=return_attention_scores)
        dropouts = self.active_dropouts()
        seeds = [dropout.seed_generator.next() for dropout in dropouts]

        def forward(x):
            # Through `__call__` again (autocast, input casting, the call
            # context), both on the first run and on the recomputation, which
            # runs outside this call.
            with self._recomputing(dropouts, seeds):
                return self(x, padding_mask=padding_mask, attention_mask=attention_mask,
                            training=True)

        return tf.recompute_grad(forward)(inputs)

    def active_dropouts(self):
        """Every keras `Dropout` of this layer that draws a mask (rate > 0), in a fixed order."""
        return [layer for layer in self._flatten_layers(include_self=False, recursive=True)
                if isinstance(layer, keras.layers.Dropout) and layer.rate > 0]

    @contextlib.contextmanager
    def _recomputing(self, dropouts, seeds):
        """Within: this layer's calls are plain, its dropouts draw `seeds`.

        The seed generators are swapped with `object.__setattr__`: Keras'
        attribute tracking would otherwise register the stand-ins as the
        layer's own generators (and checkpoint them)."""
        originals = [dropout.seed_generator for dropout in dropouts]
        self._in_recomputed_call = True
        try:
            for dropout, seed in zip(dropouts, seeds):
                object.__setattr__(dropout, "seed_generator", _DrawnSeed(seed))
            yield
        finally:
            for dropout, original in zip(dropouts, originals):
                object.__setattr__(dropout, "seed_generator", original)
            self._in_recomputed_call = False
