"""WordPiece (mBERT) and SentencePiece (XLM-R / e5) tokenizers, one interface.

Both run inside the TensorFlow graph (tensorflow-text ops), so they go into
`tf.data` pipelines and exported SavedModels alike. Each exposes the ids that
BERT-style packing and masking need:

    tokenizer.tokenize(strings)  # tf.string [batch] -> int32 RaggedTensor
    tokenizer.tokenize_with_offsets(strings)  # + UTF-8 byte start/end offsets
    tokenizer.cls_id, sep_id, pad_id, mask_id, unk_id, vocabulary_size
    tokenizer.special_ids         # never masked, never drawn as random tokens
    tokenizer.random_id_range     # [low, high) of ordinary tokens for 80/10/10

Example:
```python
tokenizer = WordPieceTokenizer("mbert/vocab.txt", lowercase=False)
ids = tokenizer.tokenize(tf.constant(["Hello world", "Hallo Welt"]))
```
"""

import hashlib
import json
import os
import re

import tensorflow as tf
import tensorflow_text as tf_text


class SubwordTokenizer(tf.Module):
    """Base class: subclasses set the ids and implement `tokenize`."""

    cls_id = sep_id = pad_id = mask_id = unk_id = None
    vocabulary_size = None
    random_id_range = None
    # SentencePiece's word-start mark as a piece of its own ("▁"), or None.
    word_start_id = None

    @property
    def special_ids(self):
        return sorted({self.cls_id, self.sep_id, self.pad_id, self.mask_id, self.unk_id})

    def tokenize(self, strings):
        raise NotImplementedError

    def after_reseed(self):
        """The tokenizer to use after `tf.random.set_seed` / `keras.utils.set_random_seed`.

        In eager mode setting the global seed clears TensorFlow's kernel
        cache, which frees the SentencePiece op's resource; a SentencePiece
        tokenizer must then be rebuilt. WordPiece has no such resource.
        """
        return self

    def tokenize_with_offsets(self, strings):
        """(ids, start, end): RaggedTensors; offsets are UTF-8 byte positions."""
        return self._tokenizer.tokenize_with_offsets(strings)

    def fingerprint(self):
        """A SHA-256 (hex) of everything that decides the ids: the tokenizer
        type, its vocabulary or model, its options and special ids. Two
        tokenizers with the same fingerprint give the same ids for any text."""
        digest = hashlib.sha256(json.dumps(self.describe(), sort_keys=True).encode("utf-8"))
        digest.update(self._vocabulary_bytes())
        return digest.hexdigest()

    def _vocabulary_bytes(self):
        raise NotImplementedError

    def describe(self):
        return {
            "type": type(self).__name__,
            "vocabulary_size": self.vocabulary_size,
            "cls_id": self.cls_id,
            "sep_id": self.sep_id,
            "pad_id": self.pad_id,
            "mask_id": self.mask_id,
            "unk_id": self.unk_id,
            "random_id_range": list(self.random_id_range),
        }


class WordPieceTokenizer(SubwordTokenizer):
    """BERT WordPiece from a `vocab.txt` (one token per line, id = line index).

    Args:
        vocab_path: path of vocab.txt.
        lowercase: lower-case and strip accents first (uncased models). mBERT
            `bert-base-multilingual-cased` needs False.
    """

    def __init__(self, vocab_path, lowercase=False, name=None):
        super().__init__(name=name)
        if not os.path.isfile(vocab_path):
            raise FileNotFoundError(f"WordPiece vocabulary not found: {vocab_path}")
        with open(vocab_path, encoding="utf-8") as f:
            vocab = [line.rstrip("\n").rstrip("\r") for line in f]
        index = {token: i for i, token in enumerate(vocab)}
        for token in ("[CLS]", "[SEP]", "[PAD]", "[MASK]", "[UNK]"):
            if token not in index:
                raise ValueError(f"{vocab_path}: the vocabulary has no {token} token.")
        self.vocab_path = vocab_path
        self.lowercase = lowercase
        self.vocabulary = vocab
        self.cls_id, self.sep_id = index["[CLS]"], index["[SEP]"]
        self.pad_id, self.mask_id, self.unk_id = index["[PAD]"], index["[MASK]"], index["[UNK]"]
        self.vocabulary_size = len(vocab)
        # Ordinary tokens start after the last bracketed ([unused7], [MASK]...) one.
        bracketed = [i for i, t in enumerate(vocab) if re.fullmatch(r"\[[^\]]+\]", t)]
        self.random_id_range = (max(bracketed) + 1, len(vocab))
        self._tokenizer = tf_text.FastBertTokenizer(
            vocab=vocab,
            token_out_type=tf.int32,
            lower_case_nfd_strip_accents=lowercase,
            unknown_token="[UNK]",
        )

    def tokenize(self, strings):
        return self._tokenizer.tokenize(strings)

    def describe(self):
        return dict(super().describe(), lowercase=self.lowercase)

    def _vocabulary_bytes(self):
        return "\n".join(self.vocabulary).encode("utf-8")


class SentencePieceTokenizer(SubwordTokenizer):
    """A SentencePiece model in the XLM-R id layout.

    `<s>` is [CLS], `</s>` is [SEP], `<pad>` padding, `<mask>` the mask token.

    Args:
        proto: the serialized SentencePiece model (bytes) or a path to it.
        vocabulary_size: rows of the model's embedding (may exceed the pieces).
    """

    def __init__(self, proto, vocabulary_size=None, name=None):
        super().__init__(name=name)
        if isinstance(proto, str):
            with open(proto, "rb") as f:
                proto = f.read()
        self.proto = proto
        self._tokenizer = tf_text.SentencepieceTokenizer(model=proto, out_type=tf.int32)
        pieces = int(self._tokenizer.vocab_size())

        def piece_id(piece):
            return int(self._tokenizer.string_to_id(piece))

        self.cls_id, self.sep_id = piece_id("<s>"), piece_id("</s>")
        self.pad_id, self.unk_id = piece_id("<pad>"), piece_id("<unk>")
        self.mask_id = piece_id("<mask>")
        if self.mask_id == self.unk_id:
            raise ValueError("The SentencePiece model has no <mask> piece.")
        word_start = piece_id("\u2581")
        self.word_start_id = None if word_start == self.unk_id else word_start
        self.vocabulary_size = vocabulary_size or pieces
        # Ordinary pieces: after the 4 specials, before <mask> (the last piece).
        self.random_id_range = (max(self.cls_id, self.sep_id, self.pad_id, self.unk_id) + 1,
                                self.mask_id)

    def tokenize(self, strings):
        return self._tokenizer.tokenize(strings)

    def after_reseed(self):
        return SentencePieceTokenizer(self.proto, self.vocabulary_size, name=self.name)

    def _vocabulary_bytes(self):
        return self.proto


# The fairseq id layout that XLM-R checkpoints (and their embedding rows) use.
XLM_ROBERTA_SPECIAL_PIECES = ("<s>", "<pad>", "</s>", "<unk>")


def xlm_roberta_sentencepiece_proto(raw_proto):
    """An XLM-R `sentencepiece.bpe.model` rewritten to the checkpoint's ids.

    The SentencePiece file that XLM-R / RoBERTa checkpoints ship numbers its
    pieces `<unk>`=0, `<s>`=1, `</s>`=2, then the ordinary pieces; the model
    (fairseq, Hugging Face's `XLMRobertaTokenizer`) uses `<s>`=0, `<pad>`=1,
    `</s>`=2, `<unk>`=3, every ordinary piece one id higher than in the file,
    and `<mask>` last. This returns the same model (pieces, scores,
    normalizer unchanged, so the same segmentation) with its pieces in that
    order, so the in-graph tokenizer emits the checkpoint's ids directly. A
    proto already in that layout (e.g. an export's `spm.model`) comes back
    unchanged.

    Args:
        raw_proto: bytes of the serialized SentencePiece model.

    Returns:
        bytes: the serialized, reordered model.

    Raises:
        ValueError: the file does not start with `<unk>`, `<s>`, `</s>`.
    """
    from sentencepiece import sentencepiece_model_pb2

    model = sentencepiece_model_pb2.ModelProto()
    model.ParseFromString(raw_proto)
    Piece = sentencepiece_model_pb2.ModelProto.SentencePiece
    pieces = [p.piece for p in model.pieces]
    if tuple(pieces[:4]) == XLM_ROBERTA_SPECIAL_PIECES and pieces[-1] == "<mask>":
        return raw_proto
    if tuple(pieces[:3]) != ("<unk>", "<s>", "</s>"):
        raise ValueError(
            f"not an XLM-R SentencePiece model: its first pieces are {pieces[:3]}, "
            "expected ['<unk>', '<s>', '</s>'] (the sentencepiece.bpe.model that "
            "XLM-R checkpoints ship)."
        )
    ordinary = list(model.pieces)[3:]
    del model.pieces[:]
    for piece, kind in zip(XLM_ROBERTA_SPECIAL_PIECES,
                           (Piece.CONTROL, Piece.CONTROL, Piece.CONTROL, Piece.UNKNOWN)):
        model.pieces.add(piece=piece, score=0.0, type=kind)
    model.pieces.extend(ordinary)
    model.pieces.add(piece="<mask>", score=0.0, type=Piece.CONTROL)
    spec = model.trainer_spec
    spec.vocab_size = len(model.pieces)
    spec.bos_id, spec.pad_id, spec.eos_id, spec.unk_id = 0, 1, 2, 3
    spec.bos_piece, spec.pad_piece, spec.eos_piece, spec.unk_piece = XLM_ROBERTA_SPECIAL_PIECES
    return model.SerializeToString()
