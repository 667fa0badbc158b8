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

import os
import re

import tensorflow as tf
import tensorflow_text as tf_text


class SubwordTokenizer(tf.Module):
    """Base class: subclasses set the ids and implement `tokenize`."""

    cls_id = sep_id = pad_id = mask_id = unk_id = None
    vocabulary_size = None
    random_id_range = None

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
        self.vocabulary_size = vocabulary_size or pieces
        # Ordinary pieces: after the 4 specials, before <mask> (the last piece).
        self.random_id_range = (max(self.cls_id, self.sep_id, self.pad_id, self.unk_id) + 1,
                                self.mask_id)

    def tokenize(self, strings):
        return self._tokenizer.tokenize(strings)

    def after_reseed(self):
        return SentencePieceTokenizer(self.proto, self.vocabulary_size, name=self.name)
