"""The compiled step loop: up to N steps in one `tf.function` call.

A custom loop of `strategy.run(step, ...)` instead of `Model.fit`, because
Keras 3 `fit` fails under MultiWorkerMirroredStrategy (keras-team/keras#20585);
the same loop serves every strategy. It stops right after the first
non-finite step and returns, per call, each step's batch fingerprint (a hash
of the global batch's pair ids, so repeated or skipped batches show), how
many steps ran and were skipped, whether it halted, and the last step's loss
and pair ids (the bad step's, after a halt).
"""

import keras
import tensorflow as tf

from tf_mbalign.data.pipeline import batch_fingerprint


class StepLoop:
    """Runs an `AlignmentStep` under a strategy, several steps per call.

    Args:
        strategy: the `tf.distribute.Strategy`.
        alignment_step: the `AlignmentStep`.
        global_batch_size: examples per step over all replicas.
        jit_compile: XLA-compile the step (the iterator stays outside: it has
            no XLA kernel).
    """

    def __init__(self, strategy, alignment_step, global_batch_size, jit_compile=False):
        self.strategy = strategy
        self.alignment_step = alignment_step
        self.global_batch_size = global_batch_size
        self.jit_compile = jit_compile
        self._functions = {}  # one traced loop per phase (head warm-up / encoder)

    def __call__(self, iterator, steps, first_step, train_encoder):
        """Runs up to `steps` steps after step `first_step`; returns tensors
        (see the module docstring)."""
        return self._loop_function(train_encoder)(
            iterator, tf.constant(steps), tf.constant(first_step, tf.int64))

    def _step_function(self, train_encoder):
        alignment_step = self.alignment_step

        def step_fn(batch, global_step):
            return alignment_step(batch, train_encoder, global_step)

        # The step has no data-dependent Python control flow (Keras layers use
        # ops.cond & co.): autograph would only spend start-up time converting
        # the ~100 functions it reaches. The loop below is converted.
        step_fn = tf.autograph.experimental.do_not_convert(step_fn)
        if self.jit_compile:
            step_fn = tf.function(step_fn, jit_compile=True)
        return step_fn

    def _loop_function(self, train_encoder):
        if train_encoder in self._functions:
            return self._functions[train_encoder]
        strategy, size = self.strategy, self.global_batch_size
        step_fn = self._step_function(train_encoder)
        # With a loss-scale optimizer, non-finite gradients skip the step
        # (its business); otherwise they stop training.
        halt_on_gradients = not isinstance(self.alignment_step.optimizer_for(train_encoder),
                                           keras.optimizers.LossScaleOptimizer)

        def first_replica(value):
            return strategy.experimental_local_results(value)[0]

        @tf.function
        def loop(iterator, steps, first_step):
            fingerprints = tf.TensorArray(tf.int64, size=steps)
            done = tf.constant(0)
            skipped = tf.constant(0)
            halted = tf.constant(False)
            status = {"loss": tf.constant(0.0), "pair_ids": tf.fill([size], -1)}
            for i in tf.range(steps):
                global_step = first_step + tf.cast(i, tf.int64) + 1
                outputs = strategy.run(step_fn, args=(next(iterator), global_step))
                outputs = {k: first_replica(v) for k, v in outputs.items()}
                # The all-gathered ids have no static length; the loop needs one.
                outputs["pair_ids"] = tf.reshape(outputs["pair_ids"], [size])
                fingerprints = fingerprints.write(i, batch_fingerprint(outputs["pair_ids"]))
                done += 1
                skipped += tf.cast(tf.logical_not(outputs["applied"]), tf.int32)
                status = {k: outputs[k] for k in status}
                bad = tf.logical_not(outputs["loss_finite"])
                if halt_on_gradients:
                    bad = tf.logical_or(bad, tf.logical_not(outputs["gradients_finite"]))
                if bad:
                    halted = True
                    break
            return {"fingerprints": fingerprints.stack()[:done], "done": done,
                    "skipped": skipped, "halted": halted, **status}

        self._functions[train_encoder] = loop
        return loop
