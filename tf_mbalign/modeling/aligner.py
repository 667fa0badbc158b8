"""The alignment model: TLM + MoCo in one custom `train_step`.

    loss = tlm_loss + contrastive_weight * moco_loss

- TLM: the ordinary MLM head (tied to the token embeddings) on the packed,
  masked pair; mean cross-entropy over the masked tokens of the global batch.
- MoCo: query = sentence representation of the trained encoder on one side of
  the pair; key = that of the momentum (EMA) encoder on the other side;
  InfoNCE over [positive key, queue of past keys]. Keys of all replicas are
  gathered before they are enqueued, so the queue is global.

Both losses are divided by global counts (masked tokens over all replicas,
examples over all replicas) and the replicas' gradients are summed, so one
step under N replicas equals one step on one device with the same global
batch. Gradients are summed and clipped by their *global* norm here (Keras'
own clipping would clip each replica's part separately), then handed to the
optimizer divided by the replica count, because the Keras optimizer sums
gradients over replicas once more.

Non-finite steps: `train_step_with_status` reports whether the global loss
and the gradient norm are finite. A step whose update was not applied (with
mixed float16 the LossScaleOptimizer skips non-finite gradients) leaves the
whole model as it was: the key-encoder EMA and the queue write are
where-selected on the same flag. The EMA runs after the gradient update with
the updated encoder (MoCo runs it at the start of the next step with the
same weights; the two orders give the same key encoder at every step).
"""

import keras
import keras_hub
import tensorflow as tf

from tf_mbalign.modeling import momentum_contrast as moco
from tf_mbalign.modeling.bert_encoder import BertEncoder


def sentence_representation(encoder_outputs, padding_mask, layer=-1, pooling="cls"):
    """[CLS] or mean-pooled hidden states of one encoder layer."""
    hidden = encoder_outputs[layer]
    if pooling == "cls":
        return hidden[:, 0, :]
    if pooling == "mean":
        mask = tf.cast(padding_mask, hidden.dtype)[:, :, None]
        return tf.reduce_sum(hidden * mask, axis=1) / tf.maximum(
            tf.reduce_sum(mask, axis=1), tf.cast(1.0, hidden.dtype)
        )
    raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")


def clone_encoder(encoder, name):
    """A same-shaped encoder holding a copy of `encoder`'s weights."""
    config = encoder.get_config()
    config["name"] = name
    clone = BertEncoder.from_config(config)
    clone.set_weights(encoder.get_weights())
    return clone


@tf.custom_gradient
def _scale_gradient(value, multiplier):
    """Identity whose gradient is multiplied by `multiplier` (fault injection)."""

    def gradient(upstream):
        return upstream * tf.cast(multiplier, upstream.dtype), tf.zeros_like(multiplier)

    return tf.identity(value), gradient


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
            checkpoint); a new one tied to the token embeddings otherwise.
        max_gradient_norm: float. Clip the global gradient norm; 0 disables.

    Example:
    ```python
    aligner = Aligner(encoder, queue_size=1024)
    aligner.compile(optimizer=keras.optimizers.AdamW(1e-5))
    aligner.fit(dataset, steps_per_epoch=100)   # one device, or use
    # tf_mbalign.training.loop for MultiWorkerMirroredStrategy.
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
        max_gradient_norm=1.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        # === Layers ===
        self.encoder = encoder
        self.key_encoder = clone_encoder(encoder, name="key_encoder")
        self.key_encoder.trainable = False
        self.mlm_head = mlm_head or keras_hub.layers.MaskedLMHead(
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
        self.max_gradient_norm = max_gradient_norm
        # Head-only warm-up: set False to train only the MLM head, with
        # `head_optimizer` (set by the trainer).
        self.train_encoder = True
        self.head_optimizer = None

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
        return tf.math.l2_normalize(tf.cast(x, tf.float32), axis=-1)

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

    # === MoCo steps ===

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

    # === Training ===

    def _trained_variables(self):
        if self.train_encoder:
            return self.trainable_variables
        return self.head_only_variables()

    def head_only_variables(self):
        """The MLM head's own variables (its tied token embedding excluded)."""
        tied = {id(v) for v in self.encoder.trainable_variables}
        return [v for v in self.mlm_head.trainable_variables if id(v) not in tied]

    def compute_losses(self, batch, keys, training=True):
        """Per-replica loss terms, each divided by its global count."""
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
        return {
            "loss": tlm_loss + self.contrastive_weight * moco_loss,
            "tlm_loss": tlm_loss,
            "moco_loss": moco_loss,
            "local_tokens": local_tokens,
            "local_examples": local_examples,
            "tlm_correct": tf.reduce_sum(correct * weights),
            "moco_losses": moco_losses,
            "moco_correct": moco_correct,
            "token_losses_sum": tf.reduce_sum(token_losses * weights),
        }

    def _apply_gradients(self, optimizer, loss, tape, variables):
        context = tf.distribute.get_replica_context()
        replicas = context.num_replicas_in_sync
        grads = tape.gradient(loss, variables)
        grads = [tf.zeros_like(v) if g is None else tf.convert_to_tensor(g)
                 for g, v in zip(grads, variables)]
        if replicas > 1:
            grads = context.all_reduce("sum", grads)
        scale = (tf.cast(optimizer.dynamic_scale, tf.float32)
                 if isinstance(optimizer, keras.optimizers.LossScaleOptimizer) else None)
        if scale is not None:
            grads = [g / scale for g in grads]
        norm = tf.linalg.global_norm(grads)
        # Back to the optimizer's convention (scaled, summed over replicas) and
        # clipped, in one multiplication: each pass over the gradients is a
        # pass over every parameter.
        factor = (scale if scale is not None else 1.0) / replicas
        if self.max_gradient_norm:
            clip = tf.constant(self.max_gradient_norm, tf.float32)
            # tf.clip_by_global_norm's factor; NaN when the norm is not finite.
            factor = factor * (clip / tf.maximum(norm, clip) + (norm - norm))
        if not (isinstance(factor, float) and factor == 1.0):
            grads = [g * tf.cast(factor, g.dtype) for g in grads]
        optimizer.apply_gradients(list(zip(grads, variables)))
        return norm

    def train_step(self, data):
        self.train_step_with_status(data)
        return {m.name: m.result() for m in self.metrics}

    def train_step_with_status(self, batch, loss_multiplier=None, gradient_multiplier=None):
        """One training step (replica context); returns what the loop checks.

        Args:
            batch: a per-replica batch of the input pipeline.
            loss_multiplier, gradient_multiplier: optional float32 scalars
                that multiply the loss / the gradients; a fault-injection
                test hook (NaN, inf), None in normal training.

        Returns:
            A dict of tensors, identical on every replica: `loss` (global),
            `loss_finite`, `gradients_finite`, `applied` (the update and
            the EMA / queue writes happened) and `pair_ids` (int32, the
            global batch's pair ids in replica order; -1 without pair ids).
        """
        context = tf.distribute.get_replica_context()
        replicas = context.num_replicas_in_sync
        optimizer = self.optimizer if self.train_encoder else self.head_optimizer
        keys = tf.stop_gradient(
            self.embed(batch["key_token_ids"], batch["key_padding_mask"],
                       training=False, momentum_branch=True)
        )
        variables = self._trained_variables()
        with tf.GradientTape() as tape:
            losses = self.compute_losses(batch, keys, training=True)
            loss = losses["loss"]
            if loss_multiplier is not None:
                loss = loss * tf.cast(loss_multiplier, loss.dtype)
            scaled_loss = optimizer.scale_loss(loss)
            if gradient_multiplier is not None:
                # Same value, gradient times the multiplier all the way back
                # through the (possibly float16) layers.
                scaled_loss = _scale_gradient(scaled_loss, gradient_multiplier)
        norm = self._apply_gradients(optimizer, scaled_loss, tape, variables)
        global_loss = context.all_reduce("sum", loss) if replicas > 1 else loss
        loss_finite = tf.math.is_finite(global_loss)
        gradients_finite = tf.math.is_finite(norm)
        applied = loss_finite & gradients_finite
        self.update_key_encoder(apply=applied)
        pair_ids = batch.get("pair_id")
        # int32: MultiWorkerMirroredStrategy could not all-gather int64 here
        # ("destinations can not be empty").
        global_pair_ids = (moco.all_gather_keys(tf.cast(pair_ids, tf.int32))
                           if pair_ids is not None else
                           tf.fill([tf.shape(keys)[0] * replicas], tf.constant(-1, tf.int32)))
        self.key_queue.enqueue(moco.all_gather_keys(keys),
                               None if pair_ids is None else global_pair_ids, apply=applied)

        # Metrics: Mean metrics sum over replicas on read, so each replica
        # adds its share with a weight that makes the total the global value.
        self.loss_tracker.update_state(loss * replicas)
        self.tlm_loss_tracker.update_state(
            tf.math.divide_no_nan(losses["token_losses_sum"], losses["local_tokens"]),
            sample_weight=losses["local_tokens"],
        )
        self.tlm_accuracy.update_state(
            tf.math.divide_no_nan(losses["tlm_correct"], losses["local_tokens"]),
            sample_weight=losses["local_tokens"],
        )
        self.moco_loss_tracker.update_state(losses["moco_losses"])
        self.moco_accuracy.update_state(losses["moco_correct"])
        self.gradient_norm.update_state(norm)
        return {"loss": global_loss, "loss_finite": loss_finite,
                "gradients_finite": gradients_finite, "applied": applied,
                "pair_ids": global_pair_ids}

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
            "max_gradient_norm": self.max_gradient_norm,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["encoder"] = keras.saving.deserialize_keras_object(config["encoder"])
        return cls(**config)
