"""AdamW with linear warm-up and linear decay (BERT's schedule).

`FusedAdamW` is Keras' AdamW with the dense update done by TensorFlow's
fused Adam kernel: the same formula, one pass over memory per variable
instead of about twelve (BENCHMARKS.md, "What was changed because of it").
"""

import keras
import tensorflow as tf

from tf_mbalign.distribute import tf_variable


@keras.saving.register_keras_serializable(package="tf_mbalign")
class WarmupLinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """lr(step) = peak * step / warmup, then linearly down to 0 at total_steps.

    Args:
        peak_learning_rate: float. Rate reached at the end of warm-up.
        warmup_steps: int. Linear warm-up length (0 for none).
        total_steps: int. Step at which the rate reaches 0.

    Example:
    ```python
    schedule = WarmupLinearDecay(1e-4, warmup_steps=10, total_steps=100)
    float(schedule(4))   # 5e-05 (step 4 is the 5th of 10 warm-up steps)
    float(schedule(55))  # 5e-05
    ```
    """

    def __init__(self, peak_learning_rate, warmup_steps, total_steps):
        self.peak_learning_rate = peak_learning_rate
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        peak = tf.constant(self.peak_learning_rate, tf.float32)
        warmup = tf.constant(max(self.warmup_steps, 0), tf.float32)
        total = tf.constant(max(self.total_steps, 1), tf.float32)
        warming = peak * (step + 1.0) / tf.maximum(warmup, 1.0)
        decay_span = tf.maximum(total - warmup, 1.0)
        decaying = peak * tf.maximum(0.0, 1.0 - (step - warmup) / decay_span)
        return tf.where(step < warmup, warming, decaying)

    def get_config(self):
        return {
            "peak_learning_rate": self.peak_learning_rate,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
        }


@keras.saving.register_keras_serializable(package="tf_mbalign")
class FusedAdamW(keras.optimizers.AdamW):
    """`keras.optimizers.AdamW` whose dense updates run as one kernel.

    Keras computes Adam's update as separate elementwise ops (m, v, the
    square root, the division, ...), each a full pass over the variable: for
    e5-small's 117.6M parameters about 12 passes of 470 MB per step. This
    class hands dense gradients to `tf.raw_ops.ResourceApplyAdam`, which
    computes the same update (m <- b1 m + (1-b1) g; v <- b2 v + (1-b2) g^2;
    var <- var - lr sqrt(1-b2^t)/(1-b1^t) m / (sqrt(v) + eps)) in one
    multithreaded pass. Variables and checkpoints are Keras' own.

    The decoupled weight decay (var <- var - lr wd var, before the Adam
    update, as Keras does it) is one pass too: `var.assign(var * (1 - lr
    wd))`, whose product the variable adopts as its buffer, instead of Keras'
    `var.assign_sub(var * wd * lr)`, a product pass and then a subtraction
    pass that reads both (BENCHMARKS.md, "Non-matmul time on a Zen 3":
    the e5-small table's decay in one pass). The two differ by rounding only.

    Sparse gradients, `amsgrad` and TPUs (where the raw op would see packed
    variables) use Keras' update unchanged.

    Example:
    ```python
    optimizer = FusedAdamW(learning_rate=1e-4, weight_decay=0.01)
    optimizer.apply_gradients([(gradient, variable)])
    ```
    """

    def _apply_weight_decay(self, variables):
        if self.weight_decay is None or _on_tpu():
            return super()._apply_weight_decay(variables)

        def decay_all(strategy, variables):
            # lr wd once a step (the schedule is not evaluated per variable);
            # the weights are float32 under every policy (Keras keeps mixed
            # policies' variables float32).
            rate = tf.cast(self.learning_rate, tf.float32) * tf.cast(self.weight_decay, tf.float32)

            def decay(variable):
                variable.assign(variable * (1 - tf.cast(rate, variable.dtype)))

            for variable in variables:
                if self._use_weight_decay(variable):
                    strategy.extended.update(tf_variable(variable), decay, group=False)

        tf.__internal__.distribute.interim.maybe_merge_call(
            decay_all, self._distribution_strategy, variables)

    def update_step(self, gradient, variable, learning_rate):
        if self.amsgrad or isinstance(gradient, tf.IndexedSlices) or _on_tpu():
            return super().update_step(gradient, variable, learning_rate)
        variable = tf_variable(variable)
        index = self._get_variable_index(variable)
        dtype = variable.dtype
        step = tf.cast(self.iterations + 1, dtype)
        beta_1 = tf.cast(self.beta_1, dtype)
        beta_2 = tf.cast(self.beta_2, dtype)
        return tf.raw_ops.ResourceApplyAdam(
            var=variable.handle,
            m=tf_variable(self._momentums[index]).handle,
            v=tf_variable(self._velocities[index]).handle,
            beta1_power=tf.pow(beta_1, step),
            beta2_power=tf.pow(beta_2, step),
            lr=tf.cast(learning_rate, dtype),
            beta1=beta_1,
            beta2=beta_2,
            epsilon=tf.cast(self.epsilon, dtype),
            grad=tf.cast(gradient, dtype),
        )


def _on_tpu():
    return isinstance(tf.distribute.get_strategy(), tf.distribute.TPUStrategy)


def create_optimizer(learning_rate, total_steps, warmup_steps=0, weight_decay=0.01,
                     precision="float32", name="adamw"):
    """AdamW (no decay on biases and layer norms); loss scaling for float16.

    Gradient clipping is done on the all-reduced gradients
    (`reduce_and_clip_gradients`), so the optimizer is built without `clipnorm`.
    """
    optimizer = FusedAdamW(
        learning_rate=WarmupLinearDecay(learning_rate, warmup_steps, total_steps),
        weight_decay=weight_decay,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-6,
        name=name,
    )
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    if precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer, name=f"{name}_loss_scale")
    return optimizer


def add_lookup_gradient(dense_gradient, lookup_gradient):
    """`dense_gradient` + `lookup_gradient` (an embedding lookup's
    `tf.IndexedSlices`, or a tensor, or None): the lookup's rows are added
    into the dense gradient by one scatter (`TensorScatterAdd`: one copy of
    the table, 76 ms for e5-small's on a Zen 3) instead of making the rows
    dense tables and summing whole tables (~280 ms). Repeated rows add up."""
    if lookup_gradient is None:
        return dense_gradient
    if dense_gradient is None:
        return lookup_gradient
    if isinstance(lookup_gradient, tf.IndexedSlices):
        values = tf.cast(lookup_gradient.values, dense_gradient.dtype)
        return tf.tensor_scatter_nd_add(dense_gradient,
                                        tf.expand_dims(lookup_gradient.indices, -1), values)
    return dense_gradient + tf.cast(lookup_gradient, dense_gradient.dtype)


def reduce_and_clip_gradients(gradients, variables, optimizer, max_gradient_norm):
    """One replica's gradients -> what `optimizer.apply_gradients` expects.

    The gradient policy of alignment training, in one place (replica
    context):

    1. missing gradients become zeros;
    2. summed over all replicas (the losses are divided by global counts, so
       the sum is the single-device gradient of the global batch);
    3. unscaled by the loss scale (mixed float16);
    4. clipped by their *global* norm (Keras' own `clipnorm` would clip each
       replica's part before its all-reduce, which differs from one device);
    5. handed back in the optimizer's convention: scaled again and divided
       by the replica count, because the Keras optimizer unscales and sums
       over replicas once more.

    Steps 3-5 are one multiplication per gradient (each pass over the
    gradients is a pass over every parameter).

    Args:
        gradients: list from `tape.gradient` (None where unconnected).
        variables: the matching variables.
        optimizer: the Keras optimizer about to apply them (a
            `LossScaleOptimizer` with mixed float16).
        max_gradient_norm: clip threshold; 0 disables clipping.

    Returns:
        (gradients, global_norm): the gradients to apply and the global norm
        of the unscaled, all-reduced gradients (NaN/Inf if not finite; then
        every gradient is NaN and the loss-scale optimizer skips the step).
    """
    context = tf.distribute.get_replica_context()
    replicas = context.num_replicas_in_sync
    gradients = [tf.zeros_like(v) if g is None else tf.convert_to_tensor(g)
                 for g, v in zip(gradients, variables)]
    if replicas > 1:
        gradients = context.all_reduce("sum", gradients)
    scale = (tf.cast(optimizer.dynamic_scale, tf.float32)
             if isinstance(optimizer, keras.optimizers.LossScaleOptimizer) else None)
    if scale is not None:
        gradients = [g / scale for g in gradients]
    norm = tf.linalg.global_norm(gradients)
    factor = (scale if scale is not None else 1.0) / replicas
    if max_gradient_norm:
        clip = tf.constant(max_gradient_norm, tf.float32)
        # tf.clip_by_global_norm's factor; NaN when the norm is not finite.
        factor = factor * (clip / tf.maximum(norm, clip) + (norm - norm))
    if not (isinstance(factor, float) and factor == 1.0):
        gradients = [g * tf.cast(factor, g.dtype) for g in gradients]
    return gradients, norm


def last_learning_rate(optimizer):
    """The learning rate the optimizer's most recent step used."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    schedule = inner._learning_rate
    if callable(schedule):
        return float(schedule(max(int(inner.iterations.numpy()) - 1, 0)))
    return float(inner.learning_rate)
