"""The MLM head tied to the token embeddings: one matmul by the table, in the
compute dtype.

keras-hub's `MaskedLMHead` decodes with `token_embedding(x, reverse=True)`,
which is `ops.matmul(x, ops.transpose(embeddings))`. Two costs follow, both
largest for the 250k x 384 (e5) / 120k x 768 (mBERT) tables:

- the whole table is transposed every call (one pass over it), and its
  gradient, [width, vocabulary], is transposed back (another pass);
- under a mixed policy the product runs in float32: the `Embedding` layer
  does not autocast its variable, and `ops.matmul` promotes bf16 x float32 to
  float32. The decoder is the largest matmul of the alignment step (e5-small,
  `benchmarks/_common.py`'s count: 3 x 61 GFLOP of ~640 a step), so a mixed
  bf16 run computed ~30% of its FLOPs at float32 speed.

`TiedMaskedLMHead` is the same layer (weights, names, config, checkpoints)
with the masked positions' states taken by one batched gather and the
decoder as `tf.matmul(x, table, transpose_b=True)`: no transpose in
either direction (the table's gradient comes out [vocabulary, width]), and
`table` cast to the compute dtype, so mixed bf16 multiplies in bf16 (one cast
of the table a step instead of the float32 transpose). The logits come out
float32 (the bias is added in float32), as keras-hub's head gives them under
mixed precision, so the cross-entropy over the vocabulary stays float32. In
float32 the results are those of keras-hub's head (tested).

With `candidate_ids` (sampled TLM negatives, `Aligner.candidate_tlm_terms`)
the head decodes over those ids only: the table's rows and the bias'
entries at the ids, gathered, so the decoder's gradient of the table is a
`tf.IndexedSlices` of those rows and no [vocabulary, width] pass is made.
"""

import keras
import keras_hub
import tensorflow as tf
from keras import ops

from tf_mbalign.modeling.bert_encoder import copy_weights


@keras.saving.register_keras_serializable(package="tf_mbalign")
class TiedMaskedLMHead(keras_hub.layers.MaskedLMHead):
    """keras-hub's `MaskedLMHead`, decoding with the tied table untransposed.

    Arguments are `keras_hub.layers.MaskedLMHead`'s. Without a
    `token_embedding`, or with a LoRA / quantized one, it is keras-hub's head.

    Example:
    ```python
    head = TiedMaskedLMHead(token_embedding=encoder.token_embedding,
                            intermediate_activation="gelu")
    logits = head(sequence_output, mask_positions=positions)  # float32 [b, n, vocab]
    ```
    """

    def decodes_with_table(self):
        """Does `call` decode with the plain tied table (not keras-hub's path)?"""
        embedding = self.token_embedding
        return (embedding is not None and getattr(embedding, "tie_weights", True)
                and not getattr(embedding, "lora_enabled", False)
                and getattr(embedding, "quantization_mode", None) is None)

    def call(self, inputs, mask_positions, decoder_table=None, candidate_ids=None):
        """Logits at `mask_positions`, float32: over the whole vocabulary
        ([batch, masked, vocabulary]), or over `candidate_ids` only.

        Args:
            inputs: the encoder's sequence output [batch, length, width].
            mask_positions: [batch, masked] positions to decode.
            decoder_table: optional tensor to decode with instead of reading
                the tied table (`AlignmentStep.decoder_table`: the step
                takes its gradient apart from the lookups').
            candidate_ids: optional 1-D int tensor of vocabulary ids: the
                logits are then [batch, masked, len(candidate_ids)], column
                j that of id `candidate_ids[j]` (`candidate_decoder`: the
                table's and bias' rows are gathered first, so their
                gradients are `tf.IndexedSlices` of those rows).

        Both only where `decodes_with_table`.
        """
        if not self.decodes_with_table():
            if decoder_table is not None or candidate_ids is not None:
                raise ValueError("decoder_table and candidate_ids need a head that decodes "
                                 "with the plain tied table (decodes_with_table())")
            return super().call(inputs, mask_positions)
        # The masked positions' states: a batched gather (keras-hub's
        # `take_along_axis` transposes the states and its gradient to gather).
        x = tf.gather(inputs, tf.cast(mask_positions, tf.int32), batch_dims=1)
        x = self._intermediate_layer_norm(self._intermediate_dense(x))
        if candidate_ids is None:
            table = self.token_embedding.embeddings if decoder_table is None else decoder_table
            bias = self._bias
        else:
            table, bias = self.candidate_decoder(candidate_ids, decoder_table)
        logits = tied_decoder_logits(x, table, self.compute_dtype)
        logits = logits + ops.cast(bias, "float32")
        if self.activation is not None:
            logits = self.activation(logits)
        return logits

    def candidate_decoder(self, candidate_ids, decoder_table=None):
        """(rows, bias): the tied table's and the decoder bias' entries at
        `candidate_ids`, gathered (their gradients are `tf.IndexedSlices`).

        The rows are the token embedding's own lookup of the ids: the
        `Embedding` layer reads its float32 table without autocasting and
        casts only the rows, where reading the table here, under this
        head's mixed-precision autocast, would cast all of it. From
        `decoder_table`, a tensor, they are gathered directly.
        """
        candidate_ids = tf.cast(candidate_ids, tf.int32)
        rows = (self.token_embedding(candidate_ids) if decoder_table is None
                else tf.gather(decoder_table, candidate_ids))
        return rows, tf.gather(ops.convert_to_tensor(self._bias), candidate_ids)


def tied_decoder_logits(hidden, table, compute_dtype):
    """float32 `hidden @ table^T` ([..., width] x [vocabulary, width]),
    multiplied in `compute_dtype` without transposing `table`."""
    hidden = tf.cast(hidden, compute_dtype)
    table = tf.cast(ops.convert_to_tensor(table), compute_dtype)
    width = tf.shape(hidden)[-1]
    product = tf.matmul(tf.reshape(hidden, [-1, width]), table, transpose_b=True)
    logits = tf.reshape(product, tf.concat([tf.shape(hidden)[:-1], tf.shape(table)[:1]], 0))
    logits.set_shape(hidden.shape[:-1].concatenate(table.shape[:1]))
    return tf.cast(logits, tf.float32)


def tied_head_like(head, token_embedding, policy):
    """A `TiedMaskedLMHead` with `head`'s settings and weights, tied to
    `token_embedding` (e.g. that of `encoder_at_precision`'s copy) and
    computing under `policy`; `head` itself when it is one already."""
    if (isinstance(head, TiedMaskedLMHead) and head.token_embedding is token_embedding
            and head.dtype_policy.name == policy):
        return head
    config = dict(head.get_config(), token_embedding=token_embedding, dtype=policy)
    copy = TiedMaskedLMHead(**config)
    copy.build((None, None, token_embedding.output_dim), (None, None))
    own = [w for w in head.weights if all(w is not t for t in token_embedding_weights(head))]
    copy_own = [w for w in copy.weights
                if all(w is not t for t in token_embedding_weights(copy))]
    copy_weights(own, copy_own)
    return copy


def token_embedding_weights(head):
    return head.token_embedding.weights if head.token_embedding is not None else []
