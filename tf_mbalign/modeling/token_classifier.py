"""A tagging head on every token of an encoder (NER, POS)."""

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="tf_mbalign")
class TokenClassifier(keras.Model):
    """Encoder -> every token's hidden state -> dropout -> dense -> float32 logits.

    The input is one sentence `[CLS] sub-tokens [SEP]`, segment ids all 0.
    Which positions carry a label (the first sub-token of each word) is the
    loss's business (`masked_token_loss`), not the model's.

    Args:
        encoder: a `BertEncoder`.
        num_classes: int, number of tags.
        dropout: float, dropout before the classifier.

    Example:
    ```python
    model = TokenClassifier(encoder, num_classes=7)
    logits = model({"token_ids": ids, "padding_mask": mask, "segment_ids": 0 * ids})
    logits.shape  # (batch, length, 7)
    ```
    """

    def __init__(self, encoder, num_classes, dropout=0.1, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.num_classes = num_classes
        self.dropout = dropout
        # === Layers ===
        self.head_dropout = keras.layers.Dropout(dropout, name="head_dropout")
        self.classifier = keras.layers.Dense(
            num_classes, kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
            name="classifier",
        )

    def call(self, inputs, training=False):
        hidden = self.encoder(inputs, training=training)["sequence_output"]
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


IGNORED = -1  # the label of positions that carry none ([CLS], [SEP], later sub-tokens, padding)


def masked_token_loss(labels, logits):
    """Mean cross-entropy over the positions whose label is not `IGNORED`."""
    labels = tf.cast(labels, tf.int32)
    mask = tf.cast(tf.not_equal(labels, IGNORED), tf.float32)
    per_token = keras.losses.sparse_categorical_crossentropy(
        tf.maximum(labels, 0), logits, from_logits=True)
    return tf.math.divide_no_nan(tf.reduce_sum(per_token * mask), tf.reduce_sum(mask))
