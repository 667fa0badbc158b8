"""Start/end logits over the context tokens of an encoder (extractive QA, MLQA)."""

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="tf_mbalign")
class SpanExtractor(keras.Model):
    """Encoder -> per-token dense(2) -> float32 start and end logits.

    Padding positions get -1e9 so they never win; which positions may hold an
    answer (the context's) is decided by the caller's post-processing.

    Args:
        encoder: a `BertEncoder`.

    Example:
    ```python
    model = SpanExtractor(encoder)
    start_logits, end_logits = model(inputs)  # each float32 [batch, length]
    ```
    """

    def __init__(self, encoder, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.span_logits = keras.layers.Dense(
            2, kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
            name="span_logits",
        )

    def call(self, inputs, training=False):
        hidden = self.encoder(inputs, training=training)["sequence_output"]
        logits = tf.cast(self.span_logits(hidden), tf.float32)
        padding = tf.cast(1 - inputs["padding_mask"], tf.float32) * -1e9
        return logits[:, :, 0] + padding, logits[:, :, 1] + padding

    def head_variables(self):
        return self.span_logits.trainable_variables

    def get_config(self):
        config = super().get_config()
        config["encoder"] = keras.saving.serialize_keras_object(self.encoder)
        return config

    @classmethod
    def from_config(cls, config):
        config["encoder"] = keras.saving.deserialize_keras_object(config["encoder"])
        return cls(**config)
