"""A TF Serving model: raw sentences in, L2-normalized sentence embeddings out.

Signatures:
- `serving_default`: `sentences` tf.string [batch] -> `embeddings` float32
  [batch, width] (tokenized and packed in the graph, `[CLS] s [SEP]`, cut at
  `seq_length` tokens; a request is padded only to its longest sentence,
  which the padding mask makes invisible to the embeddings, so short
  sentences do not pay for `seq_length` positions).
- `embed_ids`: `input_word_ids`, `input_mask`, `input_type_ids` int32
  [batch, seq] -> `embeddings`, for clients that tokenize themselves.

The sentence representation is the one alignment trained: [CLS] or mean of
the chosen encoder layer, then L2-normalized.
"""

import tensorflow as tf

from tf_mbalign.export import hub_encoder
from tf_mbalign.export.preprocessor import pack_segments
from tf_mbalign.modeling.pooling import sentence_embedding
from tf_mbalign.modeling.bert_encoder import dropout_rng_states


class SentenceEmbeddingServer(tf.__internal__.tracking.AutoTrackable):
    """Args: encoder (`BertEncoder`), tokenizer, pooling, representation
    layer, and the packing length for raw sentences."""

    def __init__(self, encoder, tokenizer, pooling="cls", layer=-1, seq_length=128):
        super().__init__()
        self._encoder = encoder
        self._tokenizer = tokenizer
        self._rng_states = dropout_rng_states(encoder)
        self.pooling, self.layer, self.seq_length = pooling, layer, seq_length
        self.max_sequence_length = encoder.max_sequence_length

    def _embed(self, inputs):
        inputs = hub_encoder.check_inputs(inputs, self.max_sequence_length)
        outputs = self._encoder(hub_encoder.encoder_inputs(inputs), training=False)
        return {"embeddings": sentence_embedding(outputs["encoder_outputs"], inputs["input_mask"],
                                                 self.layer, self.pooling)}

    def signatures(self):
        t = self._tokenizer

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="sentences")])
        def serving_default(sentences):
            # Signatures do not check shapes at run time; EnsureShape does.
            sentences = tf.ensure_shape(sentences, [None], name="sentences_must_be_rank_1")
            checks = [
                tf.debugging.assert_positive(
                    tf.size(sentences), message="empty batch: send at least one sentence"),
            ]
            with tf.control_dependencies(checks):
                tokens = t.tokenize(sentences)
            longest = tf.cast(tf.reduce_max(tokens.row_lengths()), tf.int32) + 2
            length = tf.minimum(longest, self.seq_length)
            return self._embed(pack_segments([tokens], length, t.cls_id, t.sep_id, t.pad_id))

        specs = [tf.TensorSpec([None, None], tf.int32, name=n) for n in hub_encoder.INPUT_NAMES]

        @tf.function(input_signature=specs)
        def embed_ids(input_word_ids, input_mask, input_type_ids):
            return self._embed(dict(input_word_ids=input_word_ids, input_mask=input_mask,
                                    input_type_ids=input_type_ids))

        return {"serving_default": serving_default, "embed_ids": embed_ids}
