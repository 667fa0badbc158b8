"""A classification head on the [CLS] state of an encoder (XNLI)."""

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="tf_mbalign")
class SentencePairClassifier(keras.Model):
    """Encoder -> [CLS] hidden state -> dropout -> dense -> float32 logits.

    The input is one packed pair `[CLS] premise [SEP] hypothesis [SEP]` with
    segment ids all 0, as in alignment training (TLM never used segments).

    Args:
        encoder: a `BertEncoder`.
        num_classes: int, number of labels.
        dropout: float, dropout before the classifier.

    Example:
    ```python
    model = SentencePairClassifier(encoder, num_classes=3)
    logits = model({"token_ids": ids, "padding_mask": mask, "segment_ids": 0 * ids})
    ```
    """

    def __init__(self, encoder, num_classes=3, dropout=0.1, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.num_classes = num_classes
        self.dropout = dropout
        self.head_dropout = keras.layers.Dropout(dropout, name="head_dropout")
        self.classifier = keras.layers.Dense(
            num_classes, kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
            name="classifier",
        )

    def call(self, inputs, training=False):
        hidden = self.encoder(inputs, training=training)["sequence_output"][:, 0, :]
        logits = self.classifier(self.head_dropout(hidden, training=training))
        return tf.cast(logits, tf.float32)

    def head_variables(self):
        """The new (randomly initialized) weights."""
        return self.classifier.trainable_variables

    def get_config(self):
        config = super().get_config()
        config.update({
            "encoder": keras.saving.serialize_keras_object(self.encoder),
            "num_classes": self.num_classes,
            "dropout": self.dropout,
        })
        return config

    @classmethod
    def from_config(cls, config):
        config["encoder"] = keras.saving.deserialize_keras_object(config["encoder"])
        return cls(**config)
