"""Tests for tf_mbalign/modeling/encoders.py and bert_encoder.py.

A tiny Hugging Face BERT checkpoint (config.json, vocab.txt, model.safetensors)
is written with numpy only (no network, no torch) and the loaded Keras
encoder is compared with an independent numpy forward pass of BERT.
"""

import json
import os
import shutil

from tf_mbalign import runtime  # noqa: E402

runtime.set_tensorflow_environment_defaults()  # before TensorFlow loads

import numpy as np
import pytest

from numpy_reference import gelu_exact, gelu_tanh, layer_norm, linear, transformer_layers

HIDDEN = 16
LAYERS = 2
HEADS = 2
INTERMEDIATE = 32
MAX_POSITIONS = 64
LN_EPS = 1e-12
TOLERANCE = 1e-4

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ["the", "cat", "dog", "sat", "on", "mat", "Hallo", "Welt", "chat", "un",
         "le", "run", "play", ",", ".", "!"]
PIECES = ["##s", "##ing", "##ed", "##er", "##t", "##a"]
VOCAB = SPECIALS + WORDS + PIECES


# --- the tiny checkpoint ----------------------------------------------------------------


def _hf_weights(seed=0):
    """Random float32 tensors under the standard HF BertForMaskedLM names.

    Scales are chosen so the attention logits and GELU inputs are O(1): then
    exact and tanh GELU give clearly different outputs (checked below).
    """
    rng = np.random.default_rng(seed)

    def normal(*shape, scale=0.3):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    def gamma(n):
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    v = len(VOCAB)
    w = {
        "bert.embeddings.word_embeddings.weight": normal(v, HIDDEN, scale=1.0),
        "bert.embeddings.position_embeddings.weight": normal(MAX_POSITIONS, HIDDEN, scale=0.5),
        "bert.embeddings.token_type_embeddings.weight": normal(2, HIDDEN, scale=0.5),
        "bert.embeddings.LayerNorm.weight": gamma(HIDDEN),
        "bert.embeddings.LayerNorm.bias": normal(HIDDEN, scale=0.1),
    }
    for i in range(LAYERS):
        p = f"bert.encoder.layer.{i}."
        for name in ("query", "key", "value"):
            w[f"{p}attention.self.{name}.weight"] = normal(HIDDEN, HIDDEN)  # [out, in]
            w[f"{p}attention.self.{name}.bias"] = normal(HIDDEN, scale=0.1)
        w[f"{p}attention.output.dense.weight"] = normal(HIDDEN, HIDDEN)
        w[f"{p}attention.output.dense.bias"] = normal(HIDDEN, scale=0.1)
        w[f"{p}attention.output.LayerNorm.weight"] = gamma(HIDDEN)
        w[f"{p}attention.output.LayerNorm.bias"] = normal(HIDDEN, scale=0.1)
        w[f"{p}intermediate.dense.weight"] = normal(INTERMEDIATE, HIDDEN, scale=0.4)
        w[f"{p}intermediate.dense.bias"] = normal(INTERMEDIATE, scale=0.1)
        w[f"{p}output.dense.weight"] = normal(HIDDEN, INTERMEDIATE)
        w[f"{p}output.dense.bias"] = normal(HIDDEN, scale=0.1)
        w[f"{p}output.LayerNorm.weight"] = gamma(HIDDEN)
        w[f"{p}output.LayerNorm.bias"] = normal(HIDDEN, scale=0.1)
    w["bert.pooler.dense.weight"] = normal(HIDDEN, HIDDEN)
    w["bert.pooler.dense.bias"] = normal(HIDDEN, scale=0.1)
    w["cls.predictions.transform.dense.weight"] = normal(HIDDEN, HIDDEN, scale=0.4)
    w["cls.predictions.transform.dense.bias"] = normal(HIDDEN, scale=0.1)
    w["cls.predictions.transform.LayerNorm.weight"] = gamma(HIDDEN)
    w["cls.predictions.transform.LayerNorm.bias"] = normal(HIDDEN, scale=0.1)
    w["cls.predictions.bias"] = normal(v, scale=0.1)
    return w


def _write_checkpoint(directory, weights, hidden_act="gelu"):
    from safetensors.numpy import save_file

    os.makedirs(directory, exist_ok=True)
    config = {
        "model_type": "bert",
        "architectures": ["BertForMaskedLM"],
        "vocab_size": len(VOCAB),
        "hidden_size": HIDDEN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "intermediate_size": INTERMEDIATE,
        "max_position_embeddings": MAX_POSITIONS,
        "type_vocab_size": 2,
        "hidden_act": hidden_act,
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "initializer_range": 0.02,
        "layer_norm_eps": LN_EPS,
        "pad_token_id": 0,
    }
    with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f)
    with open(os.path.join(directory, "vocab.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(VOCAB) + "\n")
    with open(os.path.join(directory, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump({"do_lower_case": False, "tokenizer_class": "BertTokenizer"}, f)
    save_file(weights, os.path.join(directory, "model.safetensors"))
    return str(directory)


@pytest.fixture(scope="module")
def hf_weights():
    return _hf_weights()


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory, hf_weights):
    return _write_checkpoint(str(tmp_path_factory.mktemp("tiny_bert")), hf_weights)


@pytest.fixture(scope="module")
def bundle(checkpoint_dir):
    from tf_mbalign.modeling import encoders

    return encoders.load_encoder(checkpoint_dir, dropout=0.0)


# --- an independent numpy BERT ------------------------------------------------------------


def _layer_norm(x, gamma, beta, eps=LN_EPS):
    return layer_norm(x, gamma, beta, eps)


def numpy_bert(w, token_ids, segment_ids, padding_mask, act=gelu_exact):
    """BERT forward pass in float64, following modeling_bert.py."""
    w = {k: v.astype(np.float64) for k, v in w.items()}
    batch, length = token_ids.shape
    x = (
        w["bert.embeddings.word_embeddings.weight"][token_ids]
        + w["bert.embeddings.position_embeddings.weight"][np.arange(length)][None]
        + w["bert.embeddings.token_type_embeddings.weight"][segment_ids]
    )
    x = _layer_norm(x, w["bert.embeddings.LayerNorm.weight"], w["bert.embeddings.LayerNorm.bias"])
    layers = transformer_layers(w, x, padding_mask, "bert.encoder.layer.", LAYERS, HEADS, act,
                                LN_EPS)
    x = layers[-1]
    pooled = np.tanh(linear(x[:, 0], w, "bert.pooler.dense"))
    return x, pooled, layers


def numpy_mlm_head(w, hidden, positions, act=gelu_exact, eps=LN_EPS):
    """HF BertOnlyMLMHead on the hidden states at `positions` (float64)."""
    w = {k: v.astype(np.float64) for k, v in w.items()}
    x = np.take_along_axis(hidden.astype(np.float64), positions[..., None], axis=1)
    x = act(linear(x, w, "cls.predictions.transform.dense"))
    x = _layer_norm(x, w["cls.predictions.transform.LayerNorm.weight"],
                    w["cls.predictions.transform.LayerNorm.bias"], eps=eps)
    return x @ w["bert.embeddings.word_embeddings.weight"].T + w["cls.predictions.bias"]


def _inputs():
    """Two rows: the second padded after 5 tokens; mixed segment ids."""
    v = len(VOCAB)
    rng = np.random.default_rng(1)
    token_ids = rng.integers(len(SPECIALS), v, size=(2, 9)).astype(np.int32)
    token_ids[:, 0] = VOCAB.index("[CLS]")
    token_ids[0, -1] = VOCAB.index("[SEP]")
    token_ids[1, 4] = VOCAB.index("[SEP]")
    token_ids[1, 5:] = VOCAB.index("[PAD]")
    segment_ids = np.zeros((2, 9), np.int32)
    segment_ids[0, 5:] = 1
    segment_ids[1, 3:5] = 1
    padding_mask = np.ones((2, 9), np.int32)
    padding_mask[1, 5:] = 0
    return token_ids, segment_ids, padding_mask


def _run(encoder, token_ids, segment_ids, padding_mask):
    out = encoder(
        {"token_ids": token_ids, "segment_ids": segment_ids, "padding_mask": padding_mask},
        training=False,
    )
    return (
        np.asarray(out["sequence_output"]),
        np.asarray(out["pooled_output"]),
        [np.asarray(t) for t in out["encoder_outputs"]],
    )


# --- loading a Hugging Face directory ----------------------------------------------------


# tolerance: float32 TF vs float64 numpy through 2 layers: O(1) activations, 1e-4 is ~1000 float32 ulps and 1/5 of the exact-vs-tanh GELU gap it must see.
@pytest.mark.numerics
def test_loaded_encoder_matches_numpy_bert(bundle, hf_weights):
    from tf_mbalign.modeling.bert_encoder import BertEncoder

    encoder = bundle.encoder
    assert isinstance(encoder, BertEncoder)
    assert (encoder.vocabulary_size, encoder.num_layers, encoder.num_heads,
            encoder.hidden_dim, encoder.intermediate_dim, encoder.max_sequence_length) == (
        len(VOCAB), LAYERS, HEADS, HIDDEN, INTERMEDIATE, MAX_POSITIONS)
    assert encoder.dropout == 0.0
    assert encoder.hidden_activation == "gelu"

    token_ids, segment_ids, padding_mask = _inputs()
    sequence, pooled, layers = _run(encoder, token_ids, segment_ids, padding_mask)
    ref_sequence, ref_pooled, ref_layers = numpy_bert(hf_weights, token_ids, segment_ids,
                                                      padding_mask)
    valid = padding_mask.astype(bool)
    assert sequence.shape == (2, 9, HIDDEN) and pooled.shape == (2, HIDDEN)
    assert np.max(np.abs(sequence[valid] - ref_sequence[valid])) <= TOLERANCE
    assert np.max(np.abs(pooled - ref_pooled)) <= TOLERANCE
    for layer, ref_layer in zip(layers, ref_layers):
        assert np.max(np.abs(layer[valid] - ref_layer[valid])) <= TOLERANCE

    # The comparison can tell exact from tanh GELU (the largest gap of the two
    # is 4.7e-4 at x = 2.7, so outputs differ by a few 1e-4), and sees the
    # padding mask.
    tanh_sequence, _, _ = numpy_bert(hf_weights, token_ids, segment_ids, padding_mask,
                                     act=gelu_tanh)
    assert np.max(np.abs(tanh_sequence[valid] - ref_sequence[valid])) > 3 * TOLERANCE
    unmasked, _, _ = numpy_bert(hf_weights, token_ids, segment_ids, np.ones_like(padding_mask))
    assert np.max(np.abs(unmasked[1, :5] - ref_sequence[1, :5])) > 3 * TOLERANCE


# tolerance: float32 TF vs float32 torch, O(1) activations and O(10) logits: 1e-4 (2e-4 for logits) is ~1000 ulps.
@pytest.mark.numerics
def test_loaded_encoder_matches_transformers(bundle, checkpoint_dir, hf_weights):
    """The same directory through Hugging Face `transformers` (torch): hidden
    states of every layer and the MLM logits."""
    torch = pytest.importorskip(
        "torch", reason="torch is not installed (several GB; kept out of the test extra)")
    transformers = pytest.importorskip("transformers")
    model = transformers.BertForMaskedLM.from_pretrained(checkpoint_dir).eval()
    token_ids, segment_ids, padding_mask = _inputs()
    with torch.no_grad():
        out = model(input_ids=torch.tensor(token_ids, dtype=torch.long),
                    token_type_ids=torch.tensor(segment_ids, dtype=torch.long),
                    attention_mask=torch.tensor(padding_mask), output_hidden_states=True)
    _, _, layers = _run(bundle.encoder, token_ids, segment_ids, padding_mask)
    valid = padding_mask.astype(bool)
    for layer, reference in zip(layers, out.hidden_states[1:]):
        np.testing.assert_allclose(layer[valid], reference.numpy()[valid],
                                   rtol=TOLERANCE, atol=TOLERANCE)
    head = _mlm_head(bundle, layer_norm_epsilon=LN_EPS)
    positions = np.tile(np.arange(token_ids.shape[1], dtype=np.int32), (2, 1))
    logits = np.asarray(head(layers[-1], positions))
    np.testing.assert_allclose(logits[valid], out.logits.numpy()[valid],
                               rtol=2 * TOLERANCE, atol=2 * TOLERANCE)


# tolerance: the same rows with and without padding: other matmul shapes, O(1) activations, 1e-4 as above.
@pytest.mark.numerics
def test_padding_does_not_change_unpadded_positions(bundle):
    token_ids, segment_ids, padding_mask = _inputs()
    sequence, pooled, _ = _run(bundle.encoder, token_ids, segment_ids, padding_mask)
    # The padded row alone, without its padding, gives the same outputs.
    short_sequence, short_pooled, _ = _run(
        bundle.encoder, token_ids[1:, :5], segment_ids[1:, :5], padding_mask[1:, :5])
    assert np.max(np.abs(sequence[1, :5] - short_sequence[0])) <= TOLERANCE
    assert np.max(np.abs(pooled[1] - short_pooled[0])) <= TOLERANCE


def test_bundle_tokenizer_and_source(bundle, checkpoint_dir):
    from tf_mbalign.data import tokenizers

    tokenizer = bundle.tokenizer
    assert isinstance(tokenizer, tokenizers.WordPieceTokenizer)
    assert tokenizer.lowercase is False
    assert tokenizer.vocabulary_size == len(VOCAB)
    assert (tokenizer.pad_id, tokenizer.unk_id, tokenizer.cls_id, tokenizer.sep_id,
            tokenizer.mask_id) == (0, 1, 2, 3, 4)
    assert bundle.source == f"hf:{os.path.abspath(checkpoint_dir)}"
    ids = tokenizer.tokenize(np.array(["the cats sat", "Hallo Welt!"]))
    assert ids.to_list() == [
        [VOCAB.index(t) for t in ("the", "cat", "##s", "sat")],
        [VOCAB.index(t) for t in ("Hallo", "Welt", "!")],
    ]


def test_tokenizer_lowercase_from_tokenizer_config(tmp_path):
    from tf_mbalign.modeling import encoders

    with open(tmp_path / "tokenizer_config.json", "w") as f:
        json.dump({"do_lower_case": True}, f)
    assert encoders._tokenizer_lowercase(str(tmp_path)) is True
    with open(tmp_path / "tokenizer_config.json", "w") as f:
        json.dump({"do_lower_case": False}, f)
    assert encoders._tokenizer_lowercase(str(tmp_path)) is False


# tolerance: float32 TF vs float64 numpy, O(1) activations: 1e-4 is ~1000 ulps and below the GELU gap it must see.
@pytest.mark.numerics
def test_gelu_new_maps_to_approximate_gelu(tmp_path, hf_weights):
    from tf_mbalign.modeling import encoders

    directory = _write_checkpoint(str(tmp_path / "gelu_new"), hf_weights, hidden_act="gelu_new")
    encoder = encoders.load_encoder(directory, dropout=0.0).encoder
    assert encoder.hidden_activation == "gelu_approximate"
    token_ids, segment_ids, padding_mask = _inputs()
    sequence, _, _ = _run(encoder, token_ids, segment_ids, padding_mask)
    valid = padding_mask.astype(bool)
    ref_tanh, _, _ = numpy_bert(hf_weights, token_ids, segment_ids, padding_mask, act=gelu_tanh)
    ref_exact, _, _ = numpy_bert(hf_weights, token_ids, segment_ids, padding_mask)
    assert np.max(np.abs(sequence[valid] - ref_tanh[valid])) <= TOLERANCE
    assert np.max(np.abs(sequence[valid] - ref_exact[valid])) > 3 * TOLERANCE


# tolerance: elementwise GELU of O(1) inputs in float32 vs float64: 1e-6 is ~10 ulps.
@pytest.mark.numerics
def test_bert_encoder_activations():
    import keras

    from tf_mbalign.modeling import bert_encoder

    x = np.linspace(-4, 4, 81).astype(np.float32)
    exact = np.asarray(bert_encoder._ACTIVATIONS["gelu"](x))
    approx = np.asarray(bert_encoder._ACTIVATIONS["gelu_approximate"](x))
    np.testing.assert_allclose(exact, gelu_exact(x.astype(np.float64)), atol=1e-6)
    np.testing.assert_allclose(approx, gelu_tanh(x.astype(np.float64)), atol=1e-6)
    assert np.max(np.abs(exact - approx)) > 1e-4
    # Keras's own "gelu" string is the exact (erf) GELU, like HF's "gelu".
    by_name = np.asarray(keras.activations.get("gelu")(x))
    np.testing.assert_allclose(by_name, gelu_exact(x.astype(np.float64)), atol=1e-6)
    with pytest.raises(ValueError, match="hidden_activation must be one of"):
        bert_encoder.BertEncoder(vocabulary_size=10, num_layers=1, num_heads=1, hidden_dim=4,
                                 intermediate_dim=8, hidden_activation="relu")


# --- the MLM head ----------------------------------------------------------------------------


def test_mlm_head_weights_shapes(bundle, hf_weights):
    head = bundle.mlm_head_weights
    assert head is not None
    assert set(head) == {"dense_kernel", "dense_bias", "ln_gamma", "ln_beta", "bias"}
    assert head["dense_kernel"].shape == (HIDDEN, HIDDEN)
    assert head["dense_bias"].shape == (HIDDEN,)
    assert head["ln_gamma"].shape == (HIDDEN,)
    assert head["ln_beta"].shape == (HIDDEN,)
    assert head["bias"].shape == (len(VOCAB),)
    # HF stores Linear weights [out, in]; the Keras kernel is [in, out].
    np.testing.assert_array_equal(
        head["dense_kernel"], hf_weights["cls.predictions.transform.dense.weight"].T)
    np.testing.assert_array_equal(head["bias"], hf_weights["cls.predictions.bias"])


def _mlm_head(bundle, weights=None, **kwargs):
    """A MaskedLMHead tied to the encoder's embedding, as aligner.py builds it."""
    import keras_hub

    from tf_mbalign.modeling import encoders

    head = keras_hub.layers.MaskedLMHead(
        vocabulary_size=bundle.encoder.vocabulary_size,
        token_embedding=bundle.encoder.token_embedding,
        intermediate_activation="gelu",
        **kwargs,
    )
    head.build((None, None, HIDDEN), (None, None))
    encoders.set_mlm_head_weights(head, weights or bundle.mlm_head_weights)
    return head


# tolerance: float32 TF vs float64 numpy head, O(10) logits: rtol+atol 1e-4.
@pytest.mark.numerics
def test_set_mlm_head_weights_matches_hf_head(bundle, hf_weights):
    # HF's head uses config.layer_norm_eps (1e-12) in its LayerNorm.
    head = _mlm_head(bundle, layer_norm_epsilon=LN_EPS)
    rng = np.random.default_rng(2)
    hidden = rng.standard_normal((2, 7, HIDDEN)).astype(np.float32)
    positions = np.array([[0, 3, 6], [1, 2, 5]], np.int32)
    logits = np.asarray(head(hidden, positions))
    expected = numpy_mlm_head(hf_weights, hidden, positions)
    assert logits.shape == (2, 3, len(VOCAB))
    # Logits are not normalized: relative + absolute, as assert_allclose does.
    np.testing.assert_allclose(logits, expected, rtol=TOLERANCE, atol=TOLERANCE)
    # The check can tell exact from tanh GELU in the head.
    tanh_expected = numpy_mlm_head(hf_weights, hidden, positions, act=gelu_tanh)
    assert np.max(np.abs(tanh_expected - expected)) > 3 * TOLERANCE


# tolerance: encoder + head vs numpy: two stages of 1e-4 each.
@pytest.mark.numerics
def test_mlm_head_on_encoder_output(bundle, hf_weights):
    """Encoder + head end to end equals HF BertForMaskedLM logits."""
    head = _mlm_head(bundle, layer_norm_epsilon=LN_EPS)
    token_ids, segment_ids, padding_mask = _inputs()
    sequence, _, _ = _run(bundle.encoder, token_ids, segment_ids, padding_mask)
    positions = np.array([[1, 4], [2, 3]], np.int32)
    logits = np.asarray(head(sequence, positions))
    ref_sequence, _, _ = numpy_bert(hf_weights, token_ids, segment_ids, padding_mask)
    expected = numpy_mlm_head(hf_weights, ref_sequence, positions)
    np.testing.assert_allclose(logits, expected, rtol=2 * TOLERANCE, atol=2 * TOLERANCE)


# tolerance: float32 TF vs float64 numpy head, O(10) logits: rtol+atol 1e-4.
@pytest.mark.numerics
def test_mlm_head_built_like_aligner_matches_hf_head(bundle, hf_weights):
    # Same arguments as tf_mbalign/modeling/aligner.py. The transform's output
    # is small here (dense weights at BERT's init scale), where the epsilon matters.
    small = dict(hf_weights)
    small["cls.predictions.transform.dense.weight"] = (
        hf_weights["cls.predictions.transform.dense.weight"] * 0.02).astype(np.float32)
    small["cls.predictions.transform.dense.bias"] = np.zeros(HIDDEN, np.float32)
    weights = dict(bundle.mlm_head_weights,
                   dense_kernel=small["cls.predictions.transform.dense.weight"].T,
                   dense_bias=small["cls.predictions.transform.dense.bias"])
    from tf_mbalign.modeling import encoders
    from tf_mbalign.modeling.aligner import Aligner

    head = Aligner(bundle.encoder, queue_size=4).mlm_head  # the head training uses
    encoders.set_mlm_head_weights(head, weights)
    hidden = np.random.default_rng(3).standard_normal((1, 4, HIDDEN)).astype(np.float32)
    positions = np.array([[0, 1, 2, 3]], np.int32)
    logits = np.asarray(head(hidden, positions))
    expected = numpy_mlm_head(small, hidden, positions)
    np.testing.assert_allclose(logits, expected, rtol=TOLERANCE, atol=TOLERANCE)


# --- errors --------------------------------------------------------------------------------


def test_pytorch_bin_only_is_refused_with_conversion_hint(tmp_path, checkpoint_dir):
    from tf_mbalign.modeling import encoders

    directory = tmp_path / "torch_only"
    directory.mkdir()
    for name in ("config.json", "vocab.txt", "tokenizer_config.json"):
        shutil.copy(os.path.join(checkpoint_dir, name), directory / name)
    # Not a real pickle: it must never be opened at all.
    (directory / "pytorch_model.bin").write_bytes(b"\x80\x04 not really a pickle")
    with pytest.raises(FileNotFoundError) as info:
        encoders.load_encoder(str(directory), dropout=0.0)
    message = str(info.value)
    assert "missing model.safetensors" in message
    assert "pytorch_model.bin" in message
    assert "pickle" in message and "never loaded" in message
    assert "save_pretrained" in message and "safe_serialization=True" in message
    assert str(directory) in message


def test_missing_safetensors_without_bin_has_no_pickle_hint(tmp_path, checkpoint_dir):
    from tf_mbalign.modeling import encoders

    for name in ("config.json", "vocab.txt"):
        shutil.copy(os.path.join(checkpoint_dir, name), tmp_path / name)
    with pytest.raises(FileNotFoundError) as info:
        encoders.load_encoder(str(tmp_path))
    assert "missing model.safetensors" in str(info.value)
    assert "pickle" not in str(info.value)


@pytest.mark.parametrize("missing", ["config.json", "vocab.txt"])
def test_missing_config_or_vocab(tmp_path, checkpoint_dir, missing):
    from tf_mbalign.modeling import encoders

    for name in ("config.json", "vocab.txt", "model.safetensors"):
        if name != missing:
            shutil.copy(os.path.join(checkpoint_dir, name), tmp_path / name)
    with pytest.raises(FileNotFoundError) as info:
        encoders.load_encoder(str(tmp_path))
    message = str(info.value)
    assert f"missing {missing}" in message
    assert str(tmp_path) in message


def test_unknown_encoder_spec_lists_accepted_forms():
    from tf_mbalign.modeling import encoders

    with pytest.raises(FileNotFoundError) as info:
        encoders.load_encoder("not-a-dir")
    message = str(info.value)
    assert "'not-a-dir'" in message
    for form in ("e5-small", "preset:NAME", "tiny:VOCAB_TXT", "directory"):
        assert form in message


# --- tiny encoder and BertEncoder ----------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    from tf_mbalign.data import vocabulary
    from tf_mbalign.modeling import encoders

    vocab_path = vocabulary.demo_vocab_path(str(tmp_path_factory.mktemp("demo_vocab")))
    return encoders.load_encoder(f"tiny:{vocab_path}", dropout=0.0)


def test_tiny_demo_tokenizer_has_no_unknown_tokens():
    from tf_mbalign.data import corpus as corpus_lib
    from tf_mbalign.data import tokenizers
    from tf_mbalign.modeling import encoders

    bundle = encoders.load_encoder("tiny:demo")
    assert isinstance(bundle.tokenizer, tokenizers.WordPieceTokenizer)
    assert bundle.encoder.vocabulary_size == bundle.tokenizer.vocabulary_size
    demo = corpus_lib.read_corpus("demo")
    sentences = np.array(demo.english + demo.other, dtype=object)
    ids = bundle.tokenizer.tokenize(sentences).flat_values.numpy()
    assert ids.size > len(sentences)
    assert not np.any(ids == bundle.tokenizer.unk_id)
    # ...while a character outside the demo corpus does give [UNK].
    unseen = bundle.tokenizer.tokenize(np.array(["\u16a0"], dtype=object)).flat_values.numpy()
    assert unseen.tolist() == [bundle.tokenizer.unk_id]


# tolerance: two encoders with the same weights: identical graphs, O(1) outputs, atol 1e-6 ~10 ulps.
@pytest.mark.numerics
def test_bert_encoder_config_round_trip(tiny_bundle):
    from tf_mbalign.modeling.bert_encoder import BertEncoder

    encoder = tiny_bundle.encoder
    config = encoder.get_config()
    assert config["num_layers"] == 2 and config["hidden_dim"] == 32
    clone = BertEncoder.from_config(config)
    assert clone.get_config() == config
    assert isinstance(clone, BertEncoder)
    custom = BertEncoder(vocabulary_size=50, num_layers=3, num_heads=2, hidden_dim=8,
                         intermediate_dim=16, dropout=0.25, max_sequence_length=20,
                         num_segments=3, hidden_activation="gelu_approximate",
                         layer_norm_epsilon=1e-6, name="custom")
    custom_config = custom.get_config()
    assert BertEncoder.from_config(custom_config).get_config() == custom_config
    assert custom_config["hidden_activation"] == "gelu_approximate"
    assert custom_config["layer_norm_epsilon"] == 1e-6
    # Same weight layout: weights move between the clones with set_weights.
    clone_of_custom = BertEncoder.from_config(custom_config)
    clone_of_custom.set_weights(custom.get_weights())
    inputs = {"token_ids": np.array([[2, 7, 9, 3]], np.int32),
              "segment_ids": np.array([[0, 0, 1, 1]], np.int32),
              "padding_mask": np.ones((1, 4), np.int32)}
    np.testing.assert_allclose(np.asarray(custom(inputs)["sequence_output"]),
                               np.asarray(clone_of_custom(inputs)["sequence_output"]),
                               atol=1e-6)


def test_encoder_outputs_has_every_layer(tiny_bundle):
    encoder = tiny_bundle.encoder
    token_ids = np.array([[2, 10, 11, 12, 3, 0], [2, 13, 3, 0, 0, 0]], np.int32)
    padding_mask = (token_ids != 0).astype(np.int32)
    out = encoder({"token_ids": token_ids, "segment_ids": np.zeros_like(token_ids),
                   "padding_mask": padding_mask})
    layers = out["encoder_outputs"]
    assert len(layers) == encoder.num_layers == 2
    for layer in layers:
        assert tuple(layer.shape) == (2, 6, 32)
    np.testing.assert_array_equal(np.asarray(layers[-1]), np.asarray(out["sequence_output"]))
    assert not np.allclose(np.asarray(layers[0]), np.asarray(layers[-1]))
    assert tuple(out["pooled_output"].shape) == (2, 32)


def test_load_tokenizer_gives_the_encoders_tokenizer_and_fingerprints_tell_them_apart(
        checkpoint_dir, bundle, tmp_path):
    """What `prepare` tokenizes with is what training's encoder tokenizes with."""
    from tf_mbalign.data import tokenizers
    from tf_mbalign.modeling import encoders

    assert encoders.load_tokenizer(checkpoint_dir).fingerprint() == bundle.tokenizer.fingerprint()
    assert (encoders.load_tokenizer("tiny:demo").fingerprint()
            == encoders.load_encoder("tiny:demo").tokenizer.fingerprint())
    vocab = os.path.join(checkpoint_dir, "vocab.txt")
    cased = tokenizers.WordPieceTokenizer(vocab, lowercase=False).fingerprint()
    assert tokenizers.WordPieceTokenizer(vocab, lowercase=True).fingerprint() != cased
    other = tmp_path / "vocab.txt"
    other.write_text("\n".join(VOCAB[:-1]) + "\n", encoding="utf-8")
    assert tokenizers.WordPieceTokenizer(str(other)).fingerprint() != cased
