"""The alignment model: TLM + MoCo losses of one multilingual encoder.

    loss = tlm_loss + contrastive_weight * moco_loss

- TLM (word level): the ordinary MLM head (tied to the token embeddings) on
  the packed, masked pair; mean cross-entropy over the masked tokens of the
  global batch.
- MoCo (sentence level): query = sentence representation of the trained
  encoder on one side of the pair; key = that of the momentum (EMA) encoder
  on the other side; InfoNCE over [positive key, queue of past keys]. Keys of
  all replicas are gathered before they are enqueued, so the queue is global.

Both losses are divided by global counts (masked tokens over all replicas,
examples over all replicas), so the replicas' gradients sum to the gradient of
the single-device loss of the same global batch.

The model holds the layers, the losses and MoCo's mechanics (momentum update,
enqueue); the optimization step that uses them (gradients, all-reduce,
clipping, the head-only warm-up, skipped steps) is
`tf_mbalign.training.alignment_step.AlignmentStep`.
"""

import keras
import tensorflow as tf

from tf_mbalign.modeling import momentum_contrast as moco
from tf_mbalign.modeling.bert_encoder import clone_encoder
from tf_mbalign.modeling.mlm_head import TiedMaskedLMHead
from tf_mbalign.modeling.pooling import l2_normalized, sentence_representation


@keras.saving.register_keras_serializable(package="tf_mbalign")
class Aligner(keras.Model):
    """Post-pretraining alignment of a multilingual BERT (Pan et al., 2021).

    Args:
        encoder: a `BertEncoder`, the model being aligned (query encoder).
        queue_size: int. Keys kept in the MoCo queue.
        momentum: float. EMA coefficient of the key encoder.
        temperature: float. InfoNCE temperature.
        contrastive_weight: float. Weight of the MoCo loss.
        representation_layer: int. Encoder layer whose output gives the
            sentence representation (-1 = last).
        pooling: `"cls"` or `"mean"`.
        projection_dim: int. Width of a linear projection head before the
            contrastive loss; 0 for none.
        mlm_head: optional `keras_hub.layers.MaskedLMHead` (e.g. loaded with a
            checkpoint); a new `TiedMaskedLMHead` (keras-hub's head, decoding
            without transposing the table) tied to the token embeddings otherwise.

    Example:
    ```python
    import tensorflow as tf
    from tf_mbalign.data import corpus, pipeline
    from tf_mbalign.modeling import encoders
    from tf_mbalign.modeling.aligner import Aligner

    bundle = encoders.load_encoder("tiny:demo")
    aligner = Aligner(bundle.encoder, queue_size=64)
    batch = next(iter(pipeline.build_dataset(corpus.read_corpus("demo"), bundle.tokenizer,
                                             pipeline.PipelineConfig(), global_batch_size=8)))
    keys = aligner.embed(batch["key_token_ids"], batch["key_padding_mask"],
                         momentum_branch=True)
    losses, partial_sums = aligner.compute_losses(batch, keys)
    float(losses["loss"])  # tlm_loss + moco_loss
    # Training steps: tf_mbalign.training.alignment_step.AlignmentStep.
    ```
    """

    def __init__(
        self,
        encoder,
        queue_size=65536,
        momentum=0.999,
        temperature=0.07,
        contrastive_weight=1.0,
        representation_layer=-1,
        pooling="cls",
        projection_dim=0,
        mlm_head=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        # === Layers ===
        self.encoder = encoder
        self.key_encoder = clone_encoder(encoder, name="key_encoder")
        self.key_encoder.trainable = False
        self.mlm_head = mlm_head or TiedMaskedLMHead(
            vocabulary_size=encoder.vocabulary_size,
            token_embedding=encoder.token_embedding,
            intermediate_activation="gelu",
            layer_norm_epsilon=encoder.layer_norm_epsilon,
            dtype=encoder.dtype_policy,
            name="mlm_head",
        )
        dim = projection_dim or encoder.hidden_dim
        self.projection = self.key_projection = None
        if projection_dim:
            self.projection = keras.layers.Dense(projection_dim, name="projection",
                                                 dtype=encoder.dtype_policy)
            self.key_projection = keras.layers.Dense(projection_dim, name="key_projection",
                                                     dtype=encoder.dtype_policy, trainable=False)
        self.key_queue = moco.KeyQueue(queue_size, dim, name="key_queue")

        # === Config ===
        self.queue_size = queue_size
        self.momentum = momentum
        self.temperature = temperature
        self.contrastive_weight = contrastive_weight
        self.representation_layer = representation_layer
        self.pooling = pooling
        self.projection_dim = projection_dim

        # === Metrics ===
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.tlm_loss_tracker = keras.metrics.Mean(name="tlm_loss")
        self.tlm_accuracy = keras.metrics.Mean(name="tlm_accuracy")
        self.moco_loss_tracker = keras.metrics.Mean(name="moco_loss")
        self.moco_accuracy = keras.metrics.Mean(name="moco_accuracy")
        self.gradient_norm = keras.metrics.Mean(name="gradient_norm")
        self._build_heads()

    def _build_heads(self):
        width = self.encoder.hidden_dim
        self.mlm_head.build((None, None, width), (None, None))
        if self.projection is not None:
            self.projection.build((None, width))
            self.key_projection.build((None, width))
            self.key_projection.set_weights(self.projection.get_weights())

    @property
    def metrics(self):
        return [
            self.loss_tracker,
            self.tlm_loss_tracker,
            self.tlm_accuracy,
            self.moco_loss_tracker,
            self.moco_accuracy,
            self.gradient_norm,
        ]

    # === Forward pieces ===

    def embed(self, token_ids, padding_mask, training=False, momentum_branch=False):
        """L2-normalized sentence representations (query or key branch)."""
        encoder = self.key_encoder if momentum_branch else self.encoder
        projection = self.key_projection if momentum_branch else self.projection
        outputs = encoder(
            {
                "token_ids": token_ids,
                "segment_ids": tf.zeros_like(token_ids),
                "padding_mask": padding_mask,
            },
            training=training,
        )
        x = sentence_representation(
            outputs["encoder_outputs"], padding_mask, self.representation_layer, self.pooling
        )
        if projection is not None:
            x = projection(x)
        return l2_normalized(x)

    def tlm_logits(self, batch, training=False):
        outputs = self.encoder(
            {
                "token_ids": batch["tlm_token_ids"],
                "segment_ids": tf.zeros_like(batch["tlm_token_ids"]),
                "padding_mask": batch["tlm_padding_mask"],
            },
            training=training,
        )
        logits = self.mlm_head(outputs["sequence_output"], mask_positions=batch["masked_positions"])
        return tf.cast(logits, tf.float32)

    def call(self, inputs, training=False):
        return self.embed(inputs["token_ids"], inputs["padding_mask"], training=training)

    # === Losses ===

    def compute_losses(self, batch, keys, training=True):
        """The loss terms of one replica's batch, each divided by its global count.

        Args:
            batch: a per-replica batch of the input pipeline.
            keys: the key branch's embeddings of `batch` (positives).
            training: dropout on or off.

        Returns:
            (losses, partial_sums): `losses` holds `loss`, `tlm_loss` and
            `moco_loss` (this replica's share of the global value);
            `partial_sums` the metrics' per-replica sums (`record_metrics`).
        """
        context = tf.distribute.get_replica_context()
        replicas = context.num_replicas_in_sync

        # Word level: TLM.
        logits = self.tlm_logits(batch, training=training)
        weights = tf.cast(batch["masked_weights"], tf.float32)
        token_losses = keras.losses.sparse_categorical_crossentropy(
            batch["masked_ids"], logits, from_logits=True
        )
        local_tokens = tf.reduce_sum(weights)
        global_tokens = context.all_reduce("sum", local_tokens) if replicas > 1 else local_tokens
        tlm_loss = tf.math.divide_no_nan(tf.reduce_sum(token_losses * weights), global_tokens)
        correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32),
                                   tf.cast(batch["masked_ids"], tf.int32)), tf.float32)

        # Sentence level: MoCo.
        queries = self.embed(batch["query_token_ids"], batch["query_padding_mask"], training=training)
        moco_logits = moco.contrastive_logits(
            queries, keys, tf.convert_to_tensor(self.key_queue.keys),
            self.key_queue.valid_mask(batch.get("pair_id")), self.temperature,
        )
        moco_losses = keras.losses.sparse_categorical_crossentropy(
            tf.zeros_like(moco_logits[:, 0], tf.int32), moco_logits, from_logits=True
        )
        local_examples = tf.cast(tf.shape(queries)[0], tf.float32)
        moco_loss = tf.reduce_sum(moco_losses) / (local_examples * replicas)
        moco_correct = tf.cast(tf.equal(tf.argmax(moco_logits, -1, output_type=tf.int32), 0),
                               tf.float32)
        losses = {
            "loss": tlm_loss + self.contrastive_weight * moco_loss,
            "tlm_loss": tlm_loss,
            "moco_loss": moco_loss,
        }
        partial_sums = {
            "local_tokens": local_tokens,
            "tlm_correct": tf.reduce_sum(correct * weights),
            "token_losses_sum": tf.reduce_sum(token_losses * weights),
            "moco_losses": moco_losses,
            "moco_correct": moco_correct,
        }
        return losses, partial_sums

    def record_metrics(self, loss, partial_sums, gradient_norm):
        """Adds one step to the metrics (replica context).

        Mean metrics sum over replicas on read, so each replica adds its share
        with a weight that makes the total the global value.
        """
        replicas = tf.distribute.get_replica_context().num_replicas_in_sync
        tokens = partial_sums["local_tokens"]
        self.loss_tracker.update_state(loss * replicas)
        self.tlm_loss_tracker.update_state(
            tf.math.divide_no_nan(partial_sums["token_losses_sum"], tokens), sample_weight=tokens)
        self.tlm_accuracy.update_state(
            tf.math.divide_no_nan(partial_sums["tlm_correct"], tokens), sample_weight=tokens)
        self.moco_loss_tracker.update_state(partial_sums["moco_losses"])
        self.moco_accuracy.update_state(partial_sums["moco_correct"])
        self.gradient_norm.update_state(gradient_norm)

    # === MoCo mechanics ===

    def momentum_variables(self):
        pairs = list(zip(self.key_encoder.weights, self.encoder.weights))
        if self.projection is not None:
            pairs += list(zip(self.key_projection.weights, self.projection.weights))
        return pairs

    def update_key_encoder(self, apply=None):
        """EMA of the key encoder toward the encoder; `apply` (bool tensor)
        keeps the old values where False."""
        keys, queries = zip(*self.momentum_variables())
        moco.momentum_update(keys, queries, self.momentum, apply=apply)

    def enqueue_keys(self, keys, pair_ids=None, apply=None):
        """Gathers every replica's keys (and pair ids) and enqueues them;
        returns the global batch's pair ids (int32; -1 without ids)."""
        replicas = tf.distribute.get_replica_context().num_replicas_in_sync
        # int32: MultiWorkerMirroredStrategy could not all-gather int64 here
        # ("destinations can not be empty").
        global_pair_ids = (moco.all_gather_keys(tf.cast(pair_ids, tf.int32))
                           if pair_ids is not None else
                           tf.fill([tf.shape(keys)[0] * replicas], tf.constant(-1, tf.int32)))
        self.key_queue.enqueue(moco.all_gather_keys(keys),
                               None if pair_ids is None else global_pair_ids, apply=apply)
        return global_pair_ids

    # === Variables trained ===

    def head_only_variables(self):
        """The MLM head's own variables (its tied token embedding excluded)."""
        tied = {id(v) for v in self.encoder.trainable_variables}
        return [v for v in self.mlm_head.trainable_variables if id(v) not in tied]

    def trained_variables(self, train_encoder):
        """Everything trainable, or only the MLM head's own variables (the
        head-only warm-up of a checkpoint without an MLM head)."""
        return self.trainable_variables if train_encoder else self.head_only_variables()

    def train_step(self, data):
        raise NotImplementedError(
            "Aligner has no Keras train_step: train it with "
            "tf_mbalign.training.alignment_step.AlignmentStep (one step, any strategy) or "
            "tf_mbalign.training.trainer.AlignmentRun (a whole run)."
        )

    def get_config(self):
        return {
            "encoder": keras.saving.serialize_keras_object(self.encoder),
            "queue_size": self.queue_size,
            "momentum": self.momentum,
            "temperature": self.temperature,
            "contrastive_weight": self.contrastive_weight,
            "representation_layer": self.representation_layer,
            "pooling": self.pooling,
            "projection_dim": self.projection_dim,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["encoder"] = keras.saving.deserialize_keras_object(config["encoder"])
        return cls(**config)
