"""One alignment training step: the Aligner's losses, optimized.

The step of the paper's method, per replica:

1. keys: the momentum encoder embeds the key side (no gradient; MoCo's
   queue only: with in-batch negatives both sides are embedded under the
   tape by the trained encoder); with the English anchor, its frozen teacher
   embeds the English side (no gradient; outside the tape, so its
   activations are not kept for the backward pass);
2. `Aligner.compute_losses`: TLM + contrastive loss (+ the English anchor)
   on this replica's batch (an objective of weight 0 is not computed);
3. the gradients (with exact TLM, the tied token table's decoder part
   taken apart from its lookups', `AlignmentStep.decoder_table`);
   `optimization.reduce_and_clip_gradients`: all-reduce, unscale, global-norm
   clip; the optimizer applies them (the encoder's AdamW, or during the
   head-only warm-up the MLM head's own);
4. `Aligner.update_key_encoder`: EMA of the key encoder toward the updated
   encoder, and `Aligner.enqueue_keys`: this step's keys join the queue
   (MoCo's queue only).

A step whose loss or gradient norm is not finite is reported, and one whose
update was not applied (with mixed float16 the loss-scale optimizer skips
non-finite gradients) changes nothing but the loss scale: the EMA and the
queue write are where-selected on the same flag. The EMA runs after the
gradient update (MoCo runs it at the start of the next step with the same
weights; the two orders give the same key encoder at every step).

Example:
```python
step = build_alignment_step(config, bundle)       # inside strategy.scope()
status = strategy.run(step, args=(batch, True, global_step))   # in a tf.function
```
"""

import tensorflow as tf

from tf_mbalign.config import checkpoint_kind
from tf_mbalign.modeling import encoders
from tf_mbalign.modeling.aligner import Aligner
from tf_mbalign.training import optimization


class AlignmentStep:
    """Trains an `Aligner`, one batch per call (replica context).

    Args:
        aligner: the `Aligner`.
        optimizer: the encoder's optimizer (trains everything).
        head_optimizer: the head-only warm-up's optimizer (MLM head only).
        max_gradient_norm: clip the global gradient norm; 0 disables.
        loss_transform: optional `fn(loss, global_step) -> loss` applied
            before the gradients are taken (the trainer's fault-injection
            test hook); None in normal training.
        separate_decoder_gradient: take the tied MLM decoder's gradient of
            the token table apart from the embedding lookups' and scatter
            the lookups' rows into it (`decoder_table`); False: the tape
            adds them (the same values, slower; kept for tests).
    """

    def __init__(self, aligner, optimizer, head_optimizer, max_gradient_norm=1.0,
                 loss_transform=None, separate_decoder_gradient=True):
        self.aligner = aligner
        self.optimizer = optimizer
        self.head_optimizer = head_optimizer
        self.max_gradient_norm = max_gradient_norm
        self.loss_transform = loss_transform
        self.separate_decoder_gradient = separate_decoder_gradient

    def optimizer_for(self, train_encoder):
        return self.optimizer if train_encoder else self.head_optimizer

    def __call__(self, batch, train_encoder=True, global_step=None):
        """One step; returns what the loop checks.

        Args:
            batch: a per-replica batch of the input pipeline.
            train_encoder: Python bool. False: the head-only warm-up (only the
                MLM head's own variables train, with `head_optimizer`).
            global_step: the 1-based step (a scalar tensor), for
                `loss_transform`.

        Returns:
            A dict of tensors, identical on every replica: `loss` (global),
            `loss_finite`, `gradients_finite`, `applied` (the update and the
            EMA / queue writes happened) and `pair_ids` (int32, the global
            batch's pair ids in replica order; -1 without pair ids).
        """
        aligner = self.aligner
        context = tf.distribute.get_replica_context()
        replicas = context.num_replicas_in_sync
        optimizer = self.optimizer_for(train_encoder)
        keys = aligner.momentum_keys(batch)
        anchor_targets = aligner.anchor_targets(batch)
        variables = aligner.trained_variables(train_encoder)
        decoder_table, table_index = self.decoder_table(variables)
        with tf.GradientTape() as tape:
            if decoder_table is not None:
                tape.watch(decoder_table)
            losses, partial_sums = aligner.compute_losses(batch, keys, training=True,
                                                          decoder_table=decoder_table,
                                                          anchor_targets=anchor_targets)
            loss = losses["loss"]
            if self.loss_transform is not None:
                loss = self.loss_transform(loss, global_step)
            scaled_loss = optimizer.scale_loss(loss)
        if decoder_table is None:
            gradients = tape.gradient(scaled_loss, variables)
        else:
            gradients = tape.gradient(scaled_loss, variables + [decoder_table])
            decoder_gradient = gradients.pop()
            gradients[table_index] = optimization.add_lookup_gradient(decoder_gradient,
                                                                      gradients[table_index])
        gradients, norm = optimization.reduce_and_clip_gradients(
            gradients, variables, optimizer, self.max_gradient_norm)
        optimizer.apply_gradients(list(zip(gradients, variables)))

        global_loss = context.all_reduce("sum", loss) if replicas > 1 else loss
        loss_finite = tf.math.is_finite(global_loss)
        gradients_finite = tf.math.is_finite(norm)
        applied = loss_finite & gradients_finite
        pair_ids = aligner.global_pair_ids(batch.get("pair_id"),
                                           tf.shape(batch["query_token_ids"])[0])
        if aligner.uses_queue:
            aligner.update_key_encoder(apply=applied)
            aligner.enqueue_keys(keys, pair_ids, apply=applied)
        aligner.record_metrics(loss, partial_sums, norm)
        return {"loss": global_loss, "loss_finite": loss_finite,
                "gradients_finite": gradients_finite, "applied": applied,
                "pair_ids": pair_ids}

    def decoder_table(self, variables):
        """(tensor, index): the tied token table read outside the tape, for
        the MLM decoder, and the table's index in `variables`; (None, None)
        where the table is not trained with the decoder, or where the decoder
        reads only the candidates' rows (sampled TLM negatives).

        The table is used three times a step: looked up by the TLM and the
        sentence passes (sparse gradients, a few thousand rows) and
        multiplied by the decoder (a dense [vocabulary, width] gradient).
        Left to the tape, the lookups' gradients are each made dense and the
        three added: for e5-small's 250k x 384 table six full passes, ~280 ms
        of a ~9.4 s float32 step on a 2-vCPU Zen 3 (BENCHMARKS.md, "Non-matmul time").
        Decoding with this separate read gives the decoder's gradient alone;
        `optimization.add_lookup_gradient` scatters the lookups' rows into it
        (~80 ms).
        """
        # With sampled TLM negatives the decoder gathers the candidates' rows
        # of the table: its gradient is a `tf.IndexedSlices` like the
        # lookups', the tape adds the three by concatenating their rows, and
        # there is no dense decoder gradient to take apart.
        sampled = self.aligner.samples_tlm_negatives
        table = (self.aligner.tied_table() if self.separate_decoder_gradient and not sampled
                 else None)
        if table is None:
            return None, None
        index = next((i for i, v in enumerate(variables) if v is table), None)
        if index is None:
            return None, None
        return tf.convert_to_tensor(table), index


def build_aligner(config, bundle, teacher=True):
    """The `Aligner` of a `TrainConfig` around `bundle.encoder` (and the
    checkpoint's MLM head weights, when it has them). Defaults left to the
    checkpoint are resolved for `bundle` first. The English anchor's teacher
    copies `bundle.encoder` now (call before restoring a checkpoint);
    `teacher=False` leaves the anchor off (reading a trained encoder back)."""
    config, _ = config.with_checkpoint_defaults(checkpoint_kind(bundle))
    arguments = config.aligner_arguments()
    if not teacher:
        arguments["anchor_weight"] = 0.0
    aligner = Aligner(bundle.encoder, name="aligner", **arguments)
    if bundle.mlm_head_weights is not None:
        encoders.set_mlm_head_weights(aligner.mlm_head, bundle.mlm_head_weights)
    return aligner


def build_alignment_step(config, bundle, loss_transform=None):
    """The Aligner, its two optimizers and the step (call inside
    `strategy.scope()`)."""
    config, _ = config.with_checkpoint_defaults(checkpoint_kind(bundle))
    aligner = build_aligner(config, bundle)
    optimizer = optimization.create_optimizer(
        config.learning_rate, config.train_steps, config.warmup_steps,
        config.weight_decay, config.precision, name="adamw",
    )
    head_optimizer = optimization.create_optimizer(
        config.head_learning_rate, max(config.head_warmup_steps, 1), 0, 0.0,
        config.precision, name="head_adamw",
    )
    optimizer.build(aligner.trainable_variables)
    head_optimizer.build(aligner.head_only_variables())
    return AlignmentStep(aligner, optimizer, head_optimizer, config.max_gradient_norm,
                         loss_transform)
