"""A classification head on a pooled sentence vector: [CLS] or the mean of the tokens."""

import keras
import tensorflow as tf

POOLINGS = ("cls", "mean")


@keras.saving.register_keras_serializable(package="tf_mbalign")
class PooledClassifier(keras.Model):
    """Encoder -> [CLS] state or masked mean of the last layer -> dropout -> dense.

    The same head for any encoder; only `pooling` differs, and the suite
    records which one a model used. The input is one sentence or one packed
    pair `[CLS] a [SEP] b [SEP]`, segment ids all 0.

    Args:
        encoder: a `BertEncoder`.
        num_classes: int, number of labels.
        pooling: "cls" or "mean" (mean over the positions of `padding_mask`).
        dropout: float, dropout before the classifier.

    Example:
    ```python
    model = PooledClassifier(encoder, num_classes=3, pooling="mean")
    logits = model({"token_ids": ids, "padding_mask": mask, "segment_ids": 0 * ids})
    ```
    """

    def __init__(self, encoder, num_classes, pooling="cls", dropout=0.1, **kwargs):
        super().__init__(**kwargs)
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.encoder = encoder
        self.num_classes = num_classes
        self.pooling = pooling
        self.dropout = dropout
        # === Layers ===
        self.head_dropout = keras.layers.Dropout(dropout, name="head_dropout")
        self.classifier = keras.layers.Dense(
            num_classes, kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
            name="classifier",
        )

    def call(self, inputs, training=False):
        hidden = self.encoder(inputs, training=training)["sequence_output"]
        if self.pooling == "cls":
            pooled = hidden[:, 0, :]
        else:
            mask = tf.cast(inputs["padding_mask"], hidden.dtype)[:, :, None]
            pooled = tf.reduce_sum(hidden * mask, axis=1) / tf.maximum(
                tf.reduce_sum(mask, axis=1), tf.cast(1.0, hidden.dtype))
        logits = self.classifier(self.head_dropout(pooled, training=training))
        return tf.cast(logits, tf.float32)

    def head_variables(self):
        """The new (randomly initialized) weights."""
        return self.classifier.trainable_variables

    def get_config(self):
        config = super().get_config()
        config.update({
            "encoder": keras.saving.serialize_keras_object(self.encoder),
            "num_classes": self.num_classes,
            "pooling": self.pooling,
            "dropout": self.dropout,
        })
        return config

    @classmethod
    def from_config(cls, config):
        config["encoder"] = keras.saving.deserialize_keras_object(config["encoder"])
        return cls(**config)
