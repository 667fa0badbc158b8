"""Sentence embeddings of an encoder: [CLS] or mean pooling, L2-normalized.

The same representation alignment trains (`Aligner.embed`): one sentence as
`[CLS] tokens [SEP]`, a chosen layer, [CLS] or the mean over real tokens.

Example:
```python
vectors = SentenceEmbedder(encoder, tokenizer, pooling="mean")(["Hallo Welt", "Hello world"])
float(vectors[0] @ vectors[1])  # cosine similarity
both = SentenceEmbedder(encoder, tokenizer).each_pooling(["Hallo Welt"])  # {"cls": .., "mean": ..}
```
"""

import numpy as np
import tensorflow as tf

from tf_mbalign.data.dynamic_padding import length_grouped_batches, pad_rows
from tf_mbalign.modeling.pooling import POOLINGS, sentence_embedding

_TOKENIZE_CHUNK = 1024


def tokenize_sentences(tokenizer, sentences):
    """Token ids (Python lists) of each sentence, no special tokens."""
    ids = []
    for start in range(0, len(sentences), _TOKENIZE_CHUNK):
        chunk = tf.constant(list(sentences[start: start + _TOKENIZE_CHUNK]), tf.string)
        ids.extend(tokenizer.tokenize(chunk).to_list())
    return ids


def encode_single(tokenizer, sentences, max_length):
    """`[CLS] ids [SEP]` rows, truncated to `max_length` tokens."""
    return [[tokenizer.cls_id, *ids[: max_length - 2], tokenizer.sep_id]
            for ids in tokenize_sentences(tokenizer, sentences)]


class SentenceEmbedder:
    """Embeds sentences with one encoder; the compiled function is reused.

    Args:
        encoder: a `BertEncoder` (or anything returning `encoder_outputs`).
        tokenizer: its `SubwordTokenizer`.
        pooling: "cls" or "mean".
        layer: which layer's hidden states (-1 = last).
        max_length: tokens per sentence including [CLS] and [SEP].
        batch_size: sentences per forward pass.
    """

    def __init__(self, encoder, tokenizer, pooling="cls", layer=-1, max_length=128,
                 batch_size=64):
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.layer = layer
        self.max_length = max_length
        self.batch_size = batch_size
        spec = tf.TensorSpec([None, None], tf.int32)
        self._embed = tf.function(self._embed_batch, input_signature=[spec, spec],
                                  reduce_retracing=True)
        self._embed_each = tf.function(self._embed_batch_each_pooling,
                                       input_signature=[spec, spec], reduce_retracing=True)

    def _pooled(self, token_ids, padding_mask, poolings):
        outputs = self.encoder(
            {"token_ids": token_ids, "padding_mask": padding_mask,
             "segment_ids": tf.zeros_like(token_ids)},
            training=False,
        )
        return {pooling: sentence_embedding(outputs["encoder_outputs"], padding_mask, self.layer,
                                            pooling)
                for pooling in poolings}

    def _embed_batch(self, token_ids, padding_mask):
        return self._pooled(token_ids, padding_mask, (self.pooling,))

    def _embed_batch_each_pooling(self, token_ids, padding_mask):
        return self._pooled(token_ids, padding_mask, POOLINGS)

    def _embed_rows(self, sentences, embed_batch):
        """{pooling: float32 [len(sentences), hidden]}, rows in the input order."""
        rows = encode_single(self.tokenizer, sentences, self.max_length)
        out = {}
        for index in length_grouped_batches([len(r) for r in rows], self.batch_size):
            batch = pad_rows([rows[i] for i in index], self.tokenizer.pad_id)
            for pooling, vectors in embed_batch(batch["token_ids"], batch["padding_mask"]).items():
                if pooling not in out:
                    out[pooling] = np.zeros((len(rows), vectors.shape[1]), np.float32)
                out[pooling][index] = vectors.numpy()
        return out

    def __call__(self, sentences):
        """float32 [len(sentences), hidden], rows in the input order (None for no sentence)."""
        return self._embed_rows(sentences, self._embed).get(self.pooling)

    def each_pooling(self, sentences):
        """{pooling: float32 [len(sentences), hidden]} for every pooling of `POOLINGS`, from
        one forward pass a batch (`pooling` is not used)."""
        return self._embed_rows(sentences, self._embed_each)
