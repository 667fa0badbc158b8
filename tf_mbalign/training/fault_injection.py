"""A test hook that injects a NaN/Inf fault into one training step.

`TF_MBALIGN_INJECT_FAULT=KIND@STEP` (KIND: `nan_loss`, `inf_gradient` or
`gradient_overflow`, the latter multiplying the gradients by 1e30, which
overflows float16 only) makes step STEP (1-based) go wrong, so tests can
check that training stops (or, with mixed float16, skips the step) and saves
nothing bad. The trainer installs it as the step's `loss_transform`; the
model and the step know nothing about it. A warning says when it is set.
"""

import os

import tensorflow as tf

FAULT_ENV = "TF_MBALIGN_INJECT_FAULT"
_FAULTS = {  # kind -> (what is multiplied, by what)
    "nan_loss": ("loss", float("nan")),
    "inf_gradient": ("gradient", float("inf")),
    "gradient_overflow": ("gradient", 1e30),
}


def parse_fault(value):
    """`KIND@STEP` -> (KIND, STEP); None for an empty value."""
    if not value:
        return None
    kind, _, step = value.partition("@")
    if kind not in _FAULTS or not step.isdigit() or int(step) < 1:
        raise ValueError(f"{FAULT_ENV}={value!r}: expected KIND@STEP with KIND one of "
                         f"{sorted(_FAULTS)} and STEP >= 1")
    return kind, int(step)


@tf.custom_gradient
def _scale_gradient(value, multiplier):
    """Identity whose gradient is multiplied by `multiplier`."""

    def gradient(upstream):
        return upstream * tf.cast(multiplier, upstream.dtype), tf.zeros_like(multiplier)

    return tf.identity(value), gradient


class FaultInjection:
    """The fault of `TF_MBALIGN_INJECT_FAULT`, as a loss transform.

    Args:
        kind: one of `nan_loss`, `inf_gradient`, `gradient_overflow`.
        at_step: the 1-based global step that goes wrong.
    """

    def __init__(self, kind, at_step):
        self.kind, self.at_step = kind, at_step

    @classmethod
    def from_environment(cls):
        """The fault set in the environment, or None."""
        fault = parse_fault(os.environ.get(FAULT_ENV, ""))
        return cls(*fault) if fault else None

    def warning(self):
        return (f"{FAULT_ENV}={self.kind}@{self.at_step} is set: a test hook injects a fault "
                f"into step {self.at_step}.")

    def __call__(self, loss, global_step):
        """`loss` with the fault applied at `at_step`: the value times NaN
        (`nan_loss`), or the same value whose gradient is multiplied all the
        way back through the (possibly float16) layers."""
        target, value = _FAULTS[self.kind]
        multiplier = tf.where(tf.equal(global_step, self.at_step), tf.constant(value, tf.float32),
                              tf.constant(1.0, tf.float32))
        if target == "loss":
            return loss * tf.cast(multiplier, loss.dtype)
        return _scale_gradient(loss, multiplier)
