"""Task heads on an encoder: one label per sentence (or pair), or per token.

Both are the same small head (dropout -> dense -> float32 logits) on
different features of the encoder's output, so the two encoders of a
comparison always get identical heads:

- `PooledClassifier`: the [CLS] state or the masked mean of the last layer
  (`modeling/pooling.py`) of one sentence or one packed pair
  `[CLS] a [SEP] b [SEP]` (NLI, topic classification);
- `TokenClassifier`: every token's last hidden state (NER, POS); which
  positions carry a label is the loss's business (`masked_token_loss`).

Inputs have segment ids all 0, as in alignment training (TLM never used
segments).
"""

import keras
import tensorflow as tf

from tf_mbalign.modeling.pooling import POOLINGS, sentence_representation

IGNORED = -1  # the label of positions that carry none ([CLS], [SEP], later sub-tokens, padding)


class EncoderClassifier(keras.Model):
    """Encoder -> `features` -> dropout -> dense -> float32 logits.

    Args:
        encoder: a `BertEncoder`.
        num_classes: int, number of labels.
        dropout: float, dropout before the classifier.
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

    def features(self, outputs, inputs):
        """What the head classifies, from the encoder's outputs."""
        raise NotImplementedError

    def call(self, inputs, training=False):
        features = self.features(self.encoder(inputs, training=training), inputs)
        logits = self.classifier(self.head_dropout(features, training=training))
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


@keras.saving.register_keras_serializable(package="tf_mbalign")
class PooledClassifier(EncoderClassifier):
    """One label per input, from its [CLS] state or the mean of its tokens.

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
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        super().__init__(encoder, num_classes, dropout, **kwargs)
        self.pooling = pooling

    def features(self, outputs, inputs):
        return sentence_representation(outputs["encoder_outputs"], inputs["padding_mask"],
                                       layer=-1, pooling=self.pooling)

    def get_config(self):
        return dict(super().get_config(), pooling=self.pooling)


@keras.saving.register_keras_serializable(package="tf_mbalign")
class TokenClassifier(EncoderClassifier):
    """One label per token, from its last hidden state.

    Example:
    ```python
    model = TokenClassifier(encoder, num_classes=7)
    logits = model({"token_ids": ids, "padding_mask": mask, "segment_ids": 0 * ids})
    logits.shape  # (batch, length, 7)
    ```
    """

    def features(self, outputs, inputs):
        return outputs["sequence_output"]


def masked_token_loss(labels, logits):
    """Mean cross-entropy over the positions whose label is not `IGNORED`."""
    labels = tf.cast(labels, tf.int32)
    mask = tf.cast(tf.not_equal(labels, IGNORED), tf.float32)
    per_token = keras.losses.sparse_categorical_crossentropy(
        tf.maximum(labels, 0), logits, from_logits=True)
    return tf.math.divide_no_nan(tf.reduce_sum(per_token * mask), tf.reduce_sum(mask))
