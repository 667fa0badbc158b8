"""The training step with the feed-forward's dense layers on 2-D rows.

`benchmarks/feedforward_fusion.py` found that oneDNN fuses the feed-forward's
matmul, bias and GELU when the matmul is 2-D, in the forward pass only. This
runs `benchmarks/train_step.py` with Keras' `Dense.call` patched, for the
layers named `feedforward_*` on 3-D inputs, to reshape the input to rows
[batch x length, width] and back, so each variant of the encoder can be timed
in the whole step before one is built into the encoder:

- `base`: the encoder as it is (no patch);
- `rows`: both feed-forward denses on 2-D rows, the encoder's GELU (in
  float32 under mixed precision);
- `rows_fused_inference`: as `rows`, and in calls with training off (the
  key encoder's pass) Keras' GELU right after the matmul and bias, the
  pattern oneDNN fuses.

    FEEDFORWARD_VARIANT=rows python benchmarks/two_dimensional_feedforward_step.py -- \\
        --shapes e5-small --precisions mixed_bfloat16 --xla off --pairs 5 --no_torch \\
        --dropout_mask_bits 16 --json OUT.json

Everything after `--` goes to `train_step.py`. Run the variants in
alternating processes (the VM drifts between runs).
"""

import os
import sys

import keras
import tensorflow as tf
from keras.src.layers.core import dense as dense_module

import train_step

VARIANT = os.environ.get("FEEDFORWARD_VARIANT", "base")
_DENSE_CALL = dense_module.Dense.call


def _rows_call(self, inputs, training=None):
    if not (self.name.startswith("feedforward_") and len(inputs.shape) == 3):
        return _DENSE_CALL(self, inputs)
    rows = tf.reshape(inputs, [-1, inputs.shape[-1]])
    if (VARIANT == "rows_fused_inference" and not training
            and "intermediate" in self.name):
        outputs = keras.activations.gelu(
            keras.ops.add(keras.ops.matmul(rows, self.kernel), self.bias), approximate=False)
    else:
        outputs = _DENSE_CALL(self, rows)
    return tf.reshape(outputs, tf.concat([tf.shape(inputs)[:-1], [self.units]], 0))


if __name__ == "__main__":
    if VARIANT not in ("base", "rows", "rows_fused_inference"):
        sys.exit(f"FEEDFORWARD_VARIANT must be base, rows or rows_fused_inference, not {VARIANT!r}")
    if VARIANT != "base":
        dense_module.Dense.call = _rows_call
    arguments = sys.argv[1:]
    train_step.main(arguments[1:] if arguments[:1] == ["--"] else arguments)
