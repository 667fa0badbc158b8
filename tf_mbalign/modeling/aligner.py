"""The alignment model: TLM, contrastive and English-anchor losses of one encoder.

    loss = tlm_weight * tlm_loss + contrastive_weight * moco_loss
           + anchor_weight * anchor_loss

- TLM (word level): the ordinary MLM head (tied to the token embeddings) on
  the packed, masked pair; mean cross-entropy over the masked tokens of the
  global batch. The softmax runs over the whole vocabulary, or with
  `tlm_sampled_negatives=K` over a candidate set: the ids this replica's
  masked tokens must predict plus K ids drawn uniformly from the vocabulary
  (`tlm_candidates`; Jean et al. 2015's "targets of the batch + sampled
  negatives", without a correction term: biased, cheaper by the decoder's
  vocabulary-wide matmuls and softmax).
- Contrastive (sentence level), `contrastive_negatives`:
  - `"queue"` (MoCo, the paper's): query = sentence representation of the
    trained encoder on one side of the pair; key = that of the momentum
    (EMA) encoder on the other side; InfoNCE over [positive key, queue of
    past keys]. Keys of all replicas are gathered before they are enqueued,
    so the queue is global.
  - `"in_batch"`: both sides through the trained encoder; symmetric InfoNCE
    over the global batch (every query against every key, every key against
    every query), no queue, no momentum encoder (neither is built).
  `moco_loss` / `moco_accuracy` name the contrastive loss and top-1 accuracy
  in both modes.
- English anchor (sentence level, `english_anchor.py`; Reimers & Gurevych
  2020's multilingual distillation): a frozen copy of the starting encoder
  (the teacher) embeds each pair's English side; the trained encoder's
  representations of both sides are pulled to it (`anchor_loss`: mean
  squared error or 1 - cosine). Off by default (`anchor_weight=0`: no
  teacher is built). The trained encoder embeds each side once for both
  sentence-level losses (`trained_sentence_vectors`).

A weight of 0 switches its objective off: TLM with `tlm_weight=0` runs no MLM
head at all (MoCo only), the contrastive branch with `contrastive_weight=0`
embeds nothing for itself and leaves the key encoder and queue alone (TLM
only); their metrics are then not updated and their variables not trained.

Every loss is divided by global counts (masked tokens over all replicas,
examples over all replicas), so the replicas' gradients sum to the gradient of
the single-device loss of the same global batch.

The model holds the layers, the losses and MoCo's mechanics (momentum update,
enqueue); the optimization step that uses them (gradients, all-reduce,
clipping, the head-only warm-up, skipped steps) is
`tf_mbalign.training.alignment_step.AlignmentStep`.
"""

import keras
import numpy as np
import tensorflow as tf

from tf_mbalign.modeling import english_anchor
from tf_mbalign.modeling import momentum_contrast as moco
from tf_mbalign.modeling.bert_encoder import clone_encoder
from tf_mbalign.modeling.english_anchor import ANCHOR_LOSSES, Teacher
from tf_mbalign.modeling.mlm_head import TiedMaskedLMHead
from tf_mbalign.modeling.pooling import l2_normalized, sentence_representation
from tf_mbalign.modeling.sixteen_bit_dropout import set_dropout_mask_bits
from tf_mbalign.modeling.vocabulary_softmax import softmax_cross_entropy, top_one_hits

NEGATIVES = ("queue", "in_batch")


@keras.saving.register_keras_serializable(package="tf_mbalign")
class Aligner(keras.Model):
    """Post-pretraining alignment of a multilingual BERT (Pan et al., 2021).

    Args:
        encoder: a `BertEncoder`, the model being aligned (query encoder).
        queue_size: int. Keys kept in the MoCo queue.
        momentum: float. EMA coefficient of the key encoder.
        temperature: float. InfoNCE temperature.
        contrastive_weight: float. Weight of the contrastive loss (0: off).
        tlm_weight: float. Weight of the TLM loss (0: off, no MLM head run).
        contrastive_negatives: `"queue"` (MoCo) or `"in_batch"` (symmetric
            InfoNCE over the global batch; no key encoder, no queue).
        representation_layer: int. Encoder layer whose output gives the
            sentence representation (-1 = last).
        pooling: `"cls"` or `"mean"`.
        projection_dim: int. Width of a linear projection head before the
            contrastive loss; 0 for none.
        mlm_head: optional `keras_hub.layers.MaskedLMHead` (e.g. loaded with a
            checkpoint); a new `TiedMaskedLMHead` (keras-hub's head, decoding
            without transposing the table) tied to the token embeddings otherwise.
        anchor_weight: float. Weight of the English anchor (0: off, no
            teacher built). The teacher copies `encoder` as it is when the
            Aligner is built: build it before restoring trained weights.
        anchor_loss: `"mse"` (mean squared error of the representations
            before normalization, Reimers & Gurevych 2020) or `"cosine"`
            (1 - cosine similarity).
        train_token_embeddings: bool. False freezes `encoder`'s token table
            (`token_embedding.trainable = False`): it gets no gradient, no
            optimizer state and no weight decay, and the key encoder's copy
            is not updated (it equals the table and neither changes). The
            tied MLM decoder then decodes with the frozen table.
        tlm_sampled_negatives: int. 0: TLM's softmax over the whole
            vocabulary (exact). K > 0: over the ids the replica's masked
            tokens must predict plus K ids drawn uniformly at random each
            step (duplicates removed), without correction (a biased
            approximation, never above the exact loss; see
            `candidate_tlm_terms`). Needs a head that decodes with the tied
            table (`TiedMaskedLMHead.decodes_with_table`). The draws come
            from a `keras.random.SeedGenerator` seeded from Keras' global
            seed (`keras.utils.set_random_seed`) when the Aligner is built.
        recompute_activations: bool. True: `encoder`'s transformer layers
            keep only their inputs for the backward pass and run again there
            (`BertEncoder.set_recompute_activations`): less memory, one more
            forward pass; the same losses, gradients and dropout masks.
        dropout_mask_bits: int. Random bits per element of `encoder`'s
            dropout masks: 32 (Keras' `Dropout`) or 16 (`SixteenBitDropout`:
            half the random bits, no float conversion; the same distribution
            of masks to 6e-6 in the rate, another random stream).

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
    float(losses["loss"])  # tlm_weight * tlm_loss + contrastive_weight * moco_loss
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
        tlm_weight=1.0,
        contrastive_negatives="queue",
        representation_layer=-1,
        pooling="cls",
        projection_dim=0,
        mlm_head=None,
        anchor_weight=0.0,
        anchor_loss="mse",
        train_token_embeddings=True,
        tlm_sampled_negatives=0,
        recompute_activations=False,
        dropout_mask_bits=32,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if contrastive_negatives not in NEGATIVES:
            raise ValueError(f"contrastive_negatives={contrastive_negatives!r} is not one of "
                             f"{NEGATIVES}")
        if anchor_loss not in ANCHOR_LOSSES:
            raise ValueError(f"anchor_loss={anchor_loss!r} is not one of {ANCHOR_LOSSES}")
        if tlm_sampled_negatives < 0:
            raise ValueError(f"tlm_sampled_negatives={tlm_sampled_negatives} must be >= 0 "
                             "(0 = exact softmax over the vocabulary)")
        uses_queue = contrastive_negatives == "queue"
        # === Layers ===
        if not train_token_embeddings:
            encoder.token_embedding.trainable = False
        encoder.set_recompute_activations(recompute_activations)
        set_dropout_mask_bits(encoder, dropout_mask_bits)
        self.encoder = encoder
        # The momentum branch exists only for MoCo's queue.
        self.key_encoder = clone_encoder(encoder, name="key_encoder") if uses_queue else None
        if self.key_encoder is not None:
            self.key_encoder.trainable = False
        self.mlm_head = mlm_head or TiedMaskedLMHead(
            vocabulary_size=encoder.vocabulary_size,
            token_embedding=encoder.token_embedding,
            intermediate_activation="gelu",
            layer_norm_epsilon=encoder.layer_norm_epsilon,
            dtype=encoder.dtype_policy,
            name="mlm_head",
        )
        if tlm_sampled_negatives and not (isinstance(self.mlm_head, TiedMaskedLMHead)
                                          and self.mlm_head.decodes_with_table()):
            raise ValueError(
                f"tlm_sampled_negatives={tlm_sampled_negatives} needs an MLM head that "
                "decodes with the tied token table, to gather the candidates' rows; this one "
                f"({type(self.mlm_head).__name__}) decodes with keras-hub's path (not a "
                "TiedMaskedLMHead, or its embedding is untied, LoRA or quantized). Use "
                "tlm_sampled_negatives=0 (the exact softmax) with it.")
        # The negatives' random state: only with sampled negatives, so the
        # exact default has the variables (and checkpoints) it always had.
        # Not trainable; checkpointed with the dropout RNG states
        # (`dropout_rng_states`), so a resumed run draws what it would have.
        self.tlm_negative_seeds = (keras.random.SeedGenerator(name="tlm_negative_seeds")
                                   if tlm_sampled_negatives else None)
        dim = projection_dim or encoder.hidden_dim
        self.projection = self.key_projection = None
        if projection_dim:
            self.projection = keras.layers.Dense(projection_dim, name="projection",
                                                 dtype=encoder.dtype_policy)
            if uses_queue:
                self.key_projection = keras.layers.Dense(
                    projection_dim, name="key_projection", dtype=encoder.dtype_policy,
                    trainable=False)
        self.key_queue = moco.KeyQueue(queue_size, dim, name="key_queue") if uses_queue else None
        # The anchor's teacher: untracked (not trained, not checkpointed);
        # its fingerprint is checkpointed (`teacher_matches_checkpoint`).
        self._teacher = Teacher(encoder) if anchor_weight > 0 else None
        self.teacher_fingerprint = None
        if self._teacher is not None:
            self.teacher_fingerprint = self.add_weight(
                shape=(3,), dtype="float32", trainable=False, name="teacher_fingerprint",
                initializer=keras.initializers.Constant(self._teacher.fingerprint))

        # === Config ===
        self.queue_size = queue_size
        self.momentum = momentum
        self.temperature = temperature
        self.contrastive_weight = contrastive_weight
        self.tlm_weight = tlm_weight
        self.contrastive_negatives = contrastive_negatives
        self.representation_layer = representation_layer
        self.pooling = pooling
        self.projection_dim = projection_dim
        self.anchor_weight = anchor_weight
        self.anchor_loss = anchor_loss
        self.train_token_embeddings = train_token_embeddings
        self.tlm_sampled_negatives = tlm_sampled_negatives
        self.recompute_activations = recompute_activations
        self.dropout_mask_bits = dropout_mask_bits

        # === Metrics ===
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.tlm_loss_tracker = keras.metrics.Mean(name="tlm_loss")
        self.tlm_accuracy = keras.metrics.Mean(name="tlm_accuracy")
        self.moco_loss_tracker = keras.metrics.Mean(name="moco_loss")
        self.moco_accuracy = keras.metrics.Mean(name="moco_accuracy")
        self.anchor_loss_tracker = keras.metrics.Mean(name="anchor_loss")
        self.gradient_norm = keras.metrics.Mean(name="gradient_norm")
        self._build_heads()

    def _build_heads(self):
        width = self.encoder.hidden_dim
        self.mlm_head.build((None, None, width), (None, None))
        if self.projection is not None:
            self.projection.build((None, width))
        if self.key_projection is not None:
            self.key_projection.build((None, width))
            self.key_projection.set_weights(self.projection.get_weights())

    # === Which objectives run ===

    @property
    def uses_tlm(self):
        """TLM is computed (its weight is not 0)."""
        return self.tlm_weight > 0

    @property
    def samples_tlm_negatives(self):
        """TLM's softmax runs over a sampled candidate set, not the vocabulary."""
        return self.tlm_sampled_negatives > 0

    @property
    def uses_contrastive(self):
        """The contrastive loss is computed (its weight is not 0)."""
        return self.contrastive_weight > 0

    @property
    def uses_queue(self):
        """MoCo's queue and momentum encoder are in use."""
        return self.uses_contrastive and self.contrastive_negatives == "queue"

    @property
    def uses_anchor(self):
        """The English anchor is computed (its weight is not 0)."""
        return self.anchor_weight > 0

    @property
    def teacher(self):
        """The anchor's frozen teacher encoder; None when the anchor is off."""
        return None if self._teacher is None else self._teacher.encoder

    def teacher_matches_checkpoint(self):
        """Whether the teacher is the encoder the (restored) checkpoint's run
        started from: its weights' fingerprint equals the checkpointed one.
        True without an anchor."""
        if self._teacher is None:
            return True
        return np.array_equal(np.asarray(self.teacher_fingerprint.numpy()),
                              self._teacher.fingerprint.astype(np.float32))

    @property
    def metrics(self):
        return [
            self.loss_tracker,
            self.tlm_loss_tracker,
            self.tlm_accuracy,
            self.moco_loss_tracker,
            self.moco_accuracy,
            self.anchor_loss_tracker,
            self.gradient_norm,
        ]

    # === Forward pieces ===

    def sentence_vectors(self, encoder, token_ids, padding_mask, training=False):
        """The run's sentence representation (pooling, layer) by `encoder`,
        float32, before any projection or normalization."""
        outputs = encoder(
            {
                "token_ids": token_ids,
                "segment_ids": tf.zeros_like(token_ids),
                "padding_mask": padding_mask,
            },
            training=training,
        )
        return sentence_representation(
            outputs["encoder_outputs"], padding_mask, self.representation_layer, self.pooling
        )

    def contrastive_embedding(self, vectors, momentum_branch=False):
        """`vectors` through the branch's projection (if any), L2-normalized."""
        projection = self.key_projection if momentum_branch else self.projection
        if projection is not None:
            vectors = projection(vectors)
        return l2_normalized(vectors)

    def embed(self, token_ids, padding_mask, training=False, momentum_branch=False):
        """L2-normalized sentence representations (query or key branch)."""
        encoder = self.key_encoder if momentum_branch else self.encoder
        return self.contrastive_embedding(
            self.sentence_vectors(encoder, token_ids, padding_mask, training), momentum_branch)

    def trained_sentence_vectors(self, batch, training=True):
        """{"query": ..., "key": ...}: the trained encoder's
        `sentence_vectors` of the sides the objectives in use need, each
        computed once: the query for the contrastive loss, the key for
        in-batch negatives (MoCo's key comes from the momentum encoder), both
        for the anchor."""
        sides = set()
        if self.uses_contrastive:
            sides |= {"query"} if self.uses_queue else {"query", "key"}
        if self.uses_anchor:
            sides |= {"query", "key"}
        return {side: self.sentence_vectors(self.encoder, batch[f"{side}_token_ids"],
                                            batch[f"{side}_padding_mask"], training)
                for side in ("query", "key") if side in sides}

    def tlm_logits(self, batch, training=False, decoder_table=None, candidate_ids=None):
        """float32 logits of the MLM head at the masked positions: over the
        vocabulary, or over `candidate_ids` (`TiedMaskedLMHead.call`)."""
        outputs = self.encoder(
            {
                "token_ids": batch["tlm_token_ids"],
                "segment_ids": tf.zeros_like(batch["tlm_token_ids"]),
                "padding_mask": batch["tlm_padding_mask"],
            },
            training=training,
        )
        head_arguments = {name: value for name, value in (("decoder_table", decoder_table),
                                                          ("candidate_ids", candidate_ids))
                          if value is not None}
        logits = self.mlm_head(outputs["sequence_output"], mask_positions=batch["masked_positions"],
                               **head_arguments)
        return tf.cast(logits, tf.float32)

    def tied_table(self):
        """The token-embedding variable the MLM head decodes with, where the
        head takes it as a tensor (`TiedMaskedLMHead.decodes_with_table`),
        else None."""
        head = self.mlm_head
        if isinstance(head, TiedMaskedLMHead) and head.decodes_with_table():
            return head.token_embedding.embeddings
        return None

    def call(self, inputs, training=False):
        return self.embed(inputs["token_ids"], inputs["padding_mask"], training=training)

    # === Losses ===

    def compute_losses(self, batch, keys=None, training=True, decoder_table=None,
                       anchor_targets=None):
        """The loss terms of one replica's batch, each divided by its global count.

        Args:
            batch: a per-replica batch of the input pipeline.
            keys: the momentum branch's embeddings of `batch` (MoCo's
                positives; `momentum_keys`); None with in-batch negatives or
                when the contrastive loss is off.
            training: dropout on or off.
            decoder_table: optional tensor of `tied_table()`'s value for the
                MLM head to decode with (the alignment step's separate
                gradient of the decoder; `AlignmentStep`).
            anchor_targets: the teacher's vectors of `batch` (`anchor_targets`,
                taken outside the gradient tape by `AlignmentStep`); computed
                here when None and the anchor is on.

        Returns:
            (losses, partial_sums): `losses` holds `loss`, `tlm_loss`,
            `moco_loss` and `anchor_loss` (this replica's share of the global
            value; 0 for an objective that is off); `partial_sums` the
            metrics' per-replica sums (`record_metrics`).
        """
        zero = tf.constant(0.0, tf.float32)
        tlm_loss, tlm_sums = (self.tlm_terms(batch, training, decoder_table) if self.uses_tlm
                              else (zero, {}))
        vectors = self.trained_sentence_vectors(batch, training)
        moco_loss, moco_sums = (self.contrastive_terms(batch, keys, training, vectors)
                                if self.uses_contrastive else (zero, {}))
        anchor_loss, anchor_sums = (self.anchor_terms(batch, vectors, anchor_targets)
                                    if self.uses_anchor else (zero, {}))
        loss = self.tlm_weight * tlm_loss + self.contrastive_weight * moco_loss
        if self.uses_anchor:
            loss += self.anchor_weight * anchor_loss
        losses = {"loss": loss, "tlm_loss": tlm_loss, "moco_loss": moco_loss,
                  "anchor_loss": anchor_loss}
        return losses, {**tlm_sums, **moco_sums, **anchor_sums}

    def tlm_terms(self, batch, training=True, decoder_table=None):
        """(tlm_loss, partial sums): masked-token cross-entropy over the
        global batch's masked tokens (word level); over the whole vocabulary,
        or with sampled negatives over the batch's candidate set
        (`candidate_tlm_terms` with `sampled_negative_ids()`)."""
        if self.samples_tlm_negatives:
            return self.candidate_tlm_terms(batch, self.sampled_negative_ids(), training,
                                            decoder_table)
        logits = self.tlm_logits(batch, training=training, decoder_table=decoder_table)
        return self._tlm_loss_terms(logits, batch["masked_ids"], batch["masked_weights"])

    def candidate_tlm_terms(self, batch, negative_ids, training=True, decoder_table=None):
        """`tlm_terms` with the softmax over a candidate set: the ids of
        this replica's masked tokens (padding slots included) and
        `negative_ids`, duplicates removed (`tlm_candidates`).

        No correction for the sampling (Jean et al. 2015's "targets in the
        batch + K negatives"): each token's normalizer sums over the
        candidates only, so the loss is biased low (never above the exact
        loss: the candidates include the target). The accuracy it counts
        (`tlm_correct`, the `tlm_accuracy` metric) is then the argmax among
        the candidates, higher than over the vocabulary; `tlm_counts` (the
        head warm-up's measurement) stays exact. With
        `negative_ids` the whole vocabulary this is the exact loss.
        """
        candidate_ids, labels = tlm_candidates(batch["masked_ids"], negative_ids)
        logits = self.tlm_logits(batch, training=training, decoder_table=decoder_table,
                                 candidate_ids=candidate_ids)
        return self._tlm_loss_terms(logits, labels, batch["masked_weights"])

    def sampled_negative_ids(self):
        """`tlm_sampled_negatives` ids drawn uniformly from the vocabulary
        (int32; repeats and targets possible: `tlm_candidates` removes them),
        the next draw of the Aligner's seed generator."""
        return keras.random.randint((self.tlm_sampled_negatives,), 0,
                                    self.encoder.vocabulary_size, dtype="int32",
                                    seed=self.tlm_negative_seeds)

    def _tlm_loss_terms(self, logits, labels, masked_weights):
        """(tlm_loss, partial sums) of the logits' cross-entropy at `labels`
        (columns of `logits`), divided by the global masked-token count."""
        context = tf.distribute.get_replica_context()
        weights = tf.cast(masked_weights, tf.float32)
        token_losses, hits = softmax_cross_entropy(logits, labels)
        local_tokens = tf.reduce_sum(weights)
        global_tokens = (context.all_reduce("sum", local_tokens)
                         if context.num_replicas_in_sync > 1 else local_tokens)
        tlm_loss = tf.math.divide_no_nan(tf.reduce_sum(token_losses * weights), global_tokens)
        return tlm_loss, {
            "local_tokens": local_tokens,
            "tlm_correct": tf.reduce_sum(hits * weights),
            "token_losses_sum": tf.reduce_sum(token_losses * weights),
        }

    def tlm_counts(self, batch):
        """(correct, masked tokens) of the MLM head on `batch`, dropout off
        (the head warm-up's measurement); over the whole vocabulary, with
        sampled negatives too."""
        weights = tf.cast(batch["masked_weights"], tf.float32)
        correct = top_one_hits(self.tlm_logits(batch, training=False), batch["masked_ids"])
        return tf.reduce_sum(correct * weights), tf.reduce_sum(weights)

    def contrastive_terms(self, batch, keys=None, training=True, vectors=None):
        """(moco_loss, partial sums): InfoNCE of the queries against MoCo's
        queue, or symmetric in-batch InfoNCE (sentence level). `vectors`:
        `trained_sentence_vectors(batch)` when already computed."""
        replicas = tf.distribute.get_replica_context().num_replicas_in_sync
        logits, labels = self.contrastive_logits(batch, keys, training, vectors)
        row_losses = keras.losses.sparse_categorical_crossentropy(labels, logits,
                                                                  from_logits=True)
        rows = tf.cast(tf.shape(logits)[0], tf.float32)
        moco_loss = tf.reduce_sum(row_losses) / (rows * replicas)
        correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels),
                          tf.float32)
        return moco_loss, {"moco_losses": row_losses, "moco_correct": correct}

    def contrastive_logits(self, batch, keys=None, training=True, vectors=None):
        """(logits, labels) of the contrastive loss on this replica's batch:
        `queue_logits` against MoCo's queue, else `in_batch_logits`.
        `vectors`: `trained_sentence_vectors(batch)` when already computed."""
        if vectors is None:
            vectors = self.trained_sentence_vectors(batch, training)
        queries = self.contrastive_embedding(vectors["query"])
        if self.uses_queue:
            return self.queue_logits(queries, keys, batch.get("pair_id"))
        keys = self.contrastive_embedding(vectors["key"])
        return self.in_batch_logits(queries, keys, batch.get("pair_id"))

    def anchor_terms(self, batch, vectors, targets=None):
        """(anchor_loss, partial sums): the distance of the trained encoder's
        representations of both sides (`vectors["query"]`, `vectors["key"]`)
        to the teacher's representation of the English side (`targets`,
        `anchor_targets(batch)` when None), averaged over the global batch's
        2B sentences (sentence level)."""
        replicas = tf.distribute.get_replica_context().num_replicas_in_sync
        if targets is None:
            targets = self.anchor_targets(batch)
        distances = tf.concat([
            english_anchor.anchor_distances(vectors[side], targets, self.anchor_loss)
            for side in ("query", "key")], axis=0)
        sentences = tf.cast(tf.shape(distances)[0], tf.float32)
        anchor_loss = tf.reduce_sum(distances) / (sentences * replicas)
        return anchor_loss, {"anchor_distances": distances}

    def queue_logits(self, queries, keys, pair_ids=None):
        """MoCo: logits [b, 1 + K] against the positive key and the queue;
        labels (all 0: the positive is column 0)."""
        logits = moco.contrastive_logits(
            queries, keys, tf.convert_to_tensor(self.key_queue.keys),
            self.key_queue.valid_mask(pair_ids), self.temperature,
        )
        return logits, tf.zeros_like(logits[:, 0], tf.int32)

    def in_batch_logits(self, queries, keys, pair_ids=None):
        """Symmetric in-batch InfoNCE: logits [2b, B] (this replica's queries
        against every key of the global batch, then its keys against every
        query) and labels (each row's own pair in the global batch)."""
        local = tf.shape(queries)[0]
        first_row = moco.replica_first_row(local)
        # One collective for both sides; it carries the gradient back.
        gathered = moco.all_gather_keys(tf.concat([queries, keys], axis=1))
        all_queries, all_keys = tf.split(gathered, 2, axis=1)
        valid = None
        if pair_ids is not None:
            valid = moco.in_batch_valid_mask(
                pair_ids, moco.all_gather_keys(tf.cast(pair_ids, tf.int32)), first_row)
        query_rows = moco.in_batch_logits(queries, all_keys, valid, self.temperature)
        key_rows = moco.in_batch_logits(keys, all_queries, valid, self.temperature)
        labels = first_row + tf.range(local)
        return tf.concat([query_rows, key_rows], 0), tf.concat([labels, labels], 0)

    def record_metrics(self, loss, partial_sums, gradient_norm):
        """Adds one step to the metrics (replica context).

        Mean metrics sum over replicas on read, so each replica adds its share
        with a weight that makes the total the global value. An objective
        that is off leaves its metrics untouched.
        """
        replicas = tf.distribute.get_replica_context().num_replicas_in_sync
        self.loss_tracker.update_state(loss * replicas)
        if self.uses_tlm:
            tokens = partial_sums["local_tokens"]
            self.tlm_loss_tracker.update_state(
                tf.math.divide_no_nan(partial_sums["token_losses_sum"], tokens),
                sample_weight=tokens)
            self.tlm_accuracy.update_state(
                tf.math.divide_no_nan(partial_sums["tlm_correct"], tokens), sample_weight=tokens)
        if self.uses_contrastive:
            self.moco_loss_tracker.update_state(partial_sums["moco_losses"])
            self.moco_accuracy.update_state(partial_sums["moco_correct"])
        if self.uses_anchor:
            self.anchor_loss_tracker.update_state(partial_sums["anchor_distances"])
        self.gradient_norm.update_state(gradient_norm)

    def anchor_targets(self, batch):
        """The teacher's sentence representations of each pair's English
        side, without gradient; None when the anchor is off."""
        if not self.uses_anchor:
            return None
        return english_anchor.teacher_targets(self.teacher, batch, self.sentence_vectors)

    # === MoCo mechanics ===

    def momentum_keys(self, batch):
        """The key side embedded by the momentum encoder, without gradient
        (MoCo's positives); None when the queue is not in use."""
        if not self.uses_queue:
            return None
        return tf.stop_gradient(self.embed(batch["key_token_ids"], batch["key_padding_mask"],
                                           training=False, momentum_branch=True))

    def momentum_variables(self):
        """(key, query) variable pairs the EMA updates. A frozen query
        variable (the token table with `train_token_embeddings=False`) is
        left out: its key copy starts equal to it and neither changes."""
        if self.key_encoder is None:
            return []
        pairs = [(key, query) for key, query in zip(self.key_encoder.weights, self.encoder.weights)
                 if query.trainable]
        if self.projection is not None:
            pairs += list(zip(self.key_projection.weights, self.projection.weights))
        return pairs

    def update_key_encoder(self, apply=None):
        """EMA of the key encoder toward the encoder; `apply` (bool tensor)
        keeps the old values where False."""
        keys, queries = zip(*self.momentum_variables())
        moco.momentum_update(keys, queries, self.momentum, apply=apply)

    @staticmethod
    def global_pair_ids(pair_ids, local_count):
        """The global batch's pair ids in replica order (int32; -1 without
        ids)."""
        if pair_ids is None:
            replicas = tf.distribute.get_replica_context().num_replicas_in_sync
            return tf.fill([local_count * replicas], tf.constant(-1, tf.int32))
        # int32: MultiWorkerMirroredStrategy could not all-gather int64 here
        # ("destinations can not be empty").
        return moco.all_gather_keys(tf.cast(pair_ids, tf.int32))

    def enqueue_keys(self, keys, global_pair_ids=None, apply=None):
        """Gathers every replica's keys and enqueues them with the global
        batch's pair ids (`global_pair_ids`)."""
        self.key_queue.enqueue(moco.all_gather_keys(keys), global_pair_ids, apply=apply)

    # === Variables trained ===

    def head_only_variables(self):
        """The MLM head's own variables (its tied token embedding excluded)."""
        tied = {id(v) for v in self.encoder.trainable_variables}
        return [v for v in self.mlm_head.trainable_variables if id(v) not in tied]

    def trained_variables(self, train_encoder):
        """Everything trainable that an objective in use reaches, or only the
        MLM head's own variables (the head-only warm-up of a checkpoint
        without an MLM head). Unused: the MLM head's own variables when TLM
        is off, the projection when the contrastive loss is off."""
        head = self.head_only_variables() if self.uses_tlm else []
        if not train_encoder:
            return head
        unused = set()
        if not self.uses_tlm:
            unused |= {id(v) for v in self.head_only_variables()}
        if not self.uses_contrastive and self.projection is not None:
            unused |= {id(v) for v in self.projection.trainable_variables}
        return [v for v in self.trainable_variables if id(v) not in unused]

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
            "tlm_weight": self.tlm_weight,
            "contrastive_negatives": self.contrastive_negatives,
            "representation_layer": self.representation_layer,
            "pooling": self.pooling,
            "projection_dim": self.projection_dim,
            "anchor_weight": self.anchor_weight,
            "anchor_loss": self.anchor_loss,
            "train_token_embeddings": self.train_token_embeddings,
            "tlm_sampled_negatives": self.tlm_sampled_negatives,
            "recompute_activations": self.recompute_activations,
            "dropout_mask_bits": self.dropout_mask_bits,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["encoder"] = keras.saving.deserialize_keras_object(config["encoder"])
        return cls(**config)


def tlm_candidates(masked_ids, negative_ids):
    """(candidate_ids, labels) of a softmax over a candidate set.

    `candidate_ids`: the ids of `masked_ids` (every slot, padding included)
    then those of `negative_ids` not among them, each once (`tf.unique`, in
    order of first appearance); `labels`: for each masked slot, the column of
    its id in `candidate_ids` (`masked_ids`' shape), so that
    `tf.gather(candidate_ids, labels) == masked_ids`.
    """
    masked_ids = tf.cast(masked_ids, tf.int32)
    targets = tf.reshape(masked_ids, [-1])
    candidate_ids, index = tf.unique(tf.concat([targets, tf.cast(negative_ids, tf.int32)], 0))
    labels = tf.reshape(index[:tf.size(targets)], tf.shape(masked_ids))
    return candidate_ids, labels
