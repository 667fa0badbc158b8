"""AdamW with linear warm-up and linear decay (BERT's schedule)."""

import keras
import tensorflow as tf


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


def create_optimizer(learning_rate, total_steps, warmup_steps=0, weight_decay=0.01,
                     precision="float32", name="adamw"):
    """AdamW (no decay on biases and layer norms); loss scaling for float16.

    Gradient clipping is done by the model on the all-reduced gradients (see
    `Aligner`), so the optimizer is built without `clipnorm`.
    """
    optimizer = keras.optimizers.AdamW(
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


def last_learning_rate(optimizer):
    """The learning rate the optimizer's most recent step used."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    schedule = inner._learning_rate
    if callable(schedule):
        return float(schedule(max(int(inner.iterations.numpy()) - 1, 0)))
    return float(inner.learning_rate)
