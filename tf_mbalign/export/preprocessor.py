"""The TF-Hub BERT preprocessor contract: strings in, encoder inputs out.

The reloaded object offers

    preprocessor(sentences)            # tf.string [batch] -> dict of int32
                                       # input_word_ids / input_mask /
                                       # input_type_ids [batch, 128]
    preprocessor.tokenize(sentences)   # int32 RaggedTensor [batch, (tokens)]
    preprocessor.tokenize.get_special_tokens_dict()
        # vocab_size, padding_id, start_of_sequence_id, end_of_segment_id,
        # mask_id (int32 scalars)
    preprocessor.bert_pack_inputs([tokens_a], seq_length=128)
    preprocessor.bert_pack_inputs([tokens_a, tokens_b], seq_length=128)

Packing is the training pipeline's: `[CLS] a [SEP]` or `[CLS] a [SEP] b [SEP]`
with the same fair truncation (`pair_packing.truncate_pair_lengths`), so ids
match training token for token; `input_type_ids` are 0 for the first segment
and 1 for the second, as TF-Hub encoders expect. The tokenizer's model
(WordPiece vocabulary or SentencePiece proto) is a constant of the graph: no
file is read at serving time.
"""

import tensorflow as tf

from tf_mbalign.data import pair_packing

DEFAULT_SEQ_LENGTH = 128


def _trim(ragged, keep):
    positions = tf.ragged.range(ragged.row_lengths())
    return tf.ragged.boolean_mask(ragged, positions < tf.cast(keep, tf.int64)[:, None])


def pack_segments(segments, seq_length, cls_id, sep_id, pad_id):
    """[batch, (tokens)] ragged segments (1 or 2) -> the three int32 tensors."""
    if len(segments) not in (1, 2):
        raise ValueError(f"bert_pack_inputs takes 1 or 2 segments, got {len(segments)}")
    segments = [tf.cast(s, tf.int32) for s in segments]
    batch = segments[0].nrows()
    cls = tf.RaggedTensor.from_tensor(tf.fill([batch, 1], cls_id))
    sep = tf.RaggedTensor.from_tensor(tf.fill([batch, 1], sep_id))
    if len(segments) == 1:
        first = _trim(segments[0], tf.fill([batch], seq_length - 2))
        pieces = [cls, first, sep]
        types = [tf.zeros_like(cls), tf.zeros_like(first), tf.zeros_like(sep)]
    else:
        first_keep, second_keep = pair_packing.truncate_pair_lengths(
            segments[0].row_lengths(), segments[1].row_lengths(), seq_length - 3
        )
        first, second = _trim(segments[0], first_keep), _trim(segments[1], second_keep)
        pieces = [cls, first, sep, second, sep]
        types = [tf.zeros_like(cls), tf.zeros_like(first), tf.zeros_like(sep),
                 tf.ones_like(second), tf.ones_like(sep)]
    ids = tf.concat(pieces, axis=1)
    type_ids = tf.concat(types, axis=1)
    shape = [None, seq_length] if isinstance(seq_length, int) else tf.stack(
        [tf.cast(batch, tf.int64), tf.cast(seq_length, tf.int64)])
    return {
        "input_word_ids": ids.to_tensor(pad_id, shape=shape),
        "input_mask": tf.ones_like(ids).to_tensor(0, shape=shape),
        "input_type_ids": type_ids.to_tensor(0, shape=shape),
    }


class _Tokenize(tf.__internal__.tracking.AutoTrackable):
    def __init__(self, tokenizer):
        super().__init__()
        self._tokenizer = tokenizer
        self.__call__ = tf.function(
            lambda sentences: tokenizer.tokenize(sentences),
            input_signature=[tf.TensorSpec([None], tf.string)],
        )
        special = {
            "vocab_size": tokenizer.vocabulary_size,
            "padding_id": tokenizer.pad_id,
            "start_of_sequence_id": tokenizer.cls_id,
            "end_of_segment_id": tokenizer.sep_id,
            "mask_id": tokenizer.mask_id,
        }
        self.get_special_tokens_dict = tf.function(
            lambda: {k: tf.constant(v, tf.int32) for k, v in special.items()},
            input_signature=[],
        )


class _PackInputs(tf.__internal__.tracking.AutoTrackable):
    def __init__(self, tokenizer):
        super().__init__()
        ragged = tf.RaggedTensorSpec([None, None], tf.int32)
        seq = tf.TensorSpec([], tf.int32)
        self._tokenizer = tokenizer
        self.__call__ = tf.function(self._pack)
        for count in (1, 2):
            self.__call__.get_concrete_function([ragged] * count, seq_length=seq)

    def _pack(self, segments, seq_length=DEFAULT_SEQ_LENGTH):
        t = self._tokenizer
        return pack_segments(list(segments), seq_length, t.cls_id, t.sep_id, t.pad_id)


class Preprocessor(tf.__internal__.tracking.AutoTrackable):
    """A saveable preprocessor for a `SubwordTokenizer`; see module docstring.

    Example:
    ```python
    preprocessor = Preprocessor(bundle.tokenizer)
    tf.saved_model.save(preprocessor, path, signatures=preprocessor.signatures())
    inputs = tf.saved_model.load(path)(tf.constant(["Hallo Welt"]))
    ```
    """

    def __init__(self, tokenizer, seq_length=DEFAULT_SEQ_LENGTH):
        super().__init__()
        self.seq_length = seq_length
        self.tokenize = _Tokenize(tokenizer)
        self.bert_pack_inputs = _PackInputs(tokenizer)
        self._tokenizer = tokenizer
        self.__call__ = tf.function(self._call, input_signature=[tf.TensorSpec([None], tf.string)])

    def _call(self, sentences):
        tokens = self._tokenizer.tokenize(sentences)
        t = self._tokenizer
        return pack_segments([tokens], self.seq_length, t.cls_id, t.sep_id, t.pad_id)

    def signatures(self):
        return {"serving_default": self.__call__.get_concrete_function()}
