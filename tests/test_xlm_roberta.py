"""XLM-R-family encoders: Hugging Face directories, keras-hub presets, training,
exports, and the core-ops serving model.

A tiny XLM-R checkpoint is written by the test itself: a SentencePiece model
trained on the demo corpus in the layout XLM-R ships (`<unk>`=0, `<s>`=1,
`</s>`=2), random weights under Hugging Face's `XLMRobertaForMaskedLM` names
(`safetensors.numpy`), and a `config.json`. References share no code with the
package: a numpy forward pass written from the published architecture
(fairseq / Hugging Face `modeling_xlm_roberta.py`), and `transformers` with
torch where installed.
"""

import glob
import io
import json
import os
import shutil
import subprocess
import sys

from tf_mbalign import runtime  # noqa: E402

runtime.set_tensorflow_environment_defaults()  # before TensorFlow loads

import numpy as np
import pytest

from numpy_reference import gelu_exact, gelu_tanh, layer_norm, linear, transformer_layers

from conftest import REPO_ROOT

HIDDEN, LAYERS, HEADS, INTERMEDIATE = 16, 2, 2, 32
MAX_POSITIONS = 66  # 64 usable: Hugging Face RoBERTa starts real tokens at row 2
LN_EPS = 1e-5
PAD = 1
RTOL = ATOL = 1e-4
NO_TORCH = "torch is not installed (several GB; kept out of the test extra on purpose)"


# --- the tiny checkpoint -------------------------------------------------------------------


def demo_sentences():
    sentences = []
    for path in sorted(glob.glob(os.path.join(REPO_ROOT, "tf_mbalign", "data", "demo_corpus",
                                              "*.tsv"))):
        with open(path, encoding="utf-8") as f:
            for line in f:
                sentences.extend(line.rstrip("\n").split("\t"))
    return sentences


def xlm_roberta_sentencepiece_model():
    """A unigram SentencePiece model in the file layout XLM-R ships."""
    import sentencepiece as spm

    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(demo_sentences()), model_writer=buffer, vocab_size=1200,
        model_type="unigram", unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        character_coverage=1.0, hard_vocab_limit=False, minloglevel=2, num_threads=1)
    return buffer.getvalue()


def xlm_roberta_weights(vocabulary_size, seed=0, scale=1.0):
    """Random tensors under `XLMRobertaForMaskedLM`'s names ([out, in] kernels)."""
    rng = np.random.default_rng(seed)

    def normal(*shape, s=0.3):
        return (rng.standard_normal(shape) * s * scale).astype(np.float32)

    def gamma(n):
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    w = {
        "roberta.embeddings.word_embeddings.weight": normal(vocabulary_size, HIDDEN, s=1.0),
        "roberta.embeddings.position_embeddings.weight": normal(MAX_POSITIONS, HIDDEN, s=0.5),
        "roberta.embeddings.token_type_embeddings.weight": normal(1, HIDDEN, s=0.5),
        "roberta.embeddings.LayerNorm.weight": gamma(HIDDEN),
        "roberta.embeddings.LayerNorm.bias": normal(HIDDEN, s=0.1),
    }
    for i in range(LAYERS):
        p = f"roberta.encoder.layer.{i}."
        for name in ("query", "key", "value"):
            w[f"{p}attention.self.{name}.weight"] = normal(HIDDEN, HIDDEN)
            w[f"{p}attention.self.{name}.bias"] = normal(HIDDEN, s=0.1)
        w[f"{p}attention.output.dense.weight"] = normal(HIDDEN, HIDDEN)
        w[f"{p}attention.output.dense.bias"] = normal(HIDDEN, s=0.1)
        w[f"{p}attention.output.LayerNorm.weight"] = gamma(HIDDEN)
        w[f"{p}attention.output.LayerNorm.bias"] = normal(HIDDEN, s=0.1)
        w[f"{p}intermediate.dense.weight"] = normal(INTERMEDIATE, HIDDEN, s=0.4)
        w[f"{p}intermediate.dense.bias"] = normal(INTERMEDIATE, s=0.1)
        w[f"{p}output.dense.weight"] = normal(HIDDEN, INTERMEDIATE)
        w[f"{p}output.dense.bias"] = normal(HIDDEN, s=0.1)
        w[f"{p}output.LayerNorm.weight"] = gamma(HIDDEN)
        w[f"{p}output.LayerNorm.bias"] = normal(HIDDEN, s=0.1)
    w["lm_head.dense.weight"] = normal(HIDDEN, HIDDEN, s=0.4)
    w["lm_head.dense.bias"] = normal(HIDDEN, s=0.1)
    w["lm_head.layer_norm.weight"] = gamma(HIDDEN)
    w["lm_head.layer_norm.bias"] = normal(HIDDEN, s=0.1)
    w["lm_head.bias"] = normal(vocabulary_size, s=0.1)
    return w


def write_xlm_roberta_dir(directory, weights, spm_model, model_type="xlm-roberta"):
    """config.json + model.safetensors + sentencepiece.bpe.model."""
    from safetensors.numpy import save_file

    os.makedirs(directory, exist_ok=True)
    config = {
        "model_type": model_type,
        "architectures": ["XLMRobertaForMaskedLM" if model_type == "xlm-roberta"
                          else "RobertaForMaskedLM"],
        "vocab_size": int(weights["roberta.embeddings.word_embeddings.weight"].shape[0]),
        "hidden_size": HIDDEN, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
        "intermediate_size": INTERMEDIATE, "max_position_embeddings": MAX_POSITIONS,
        "type_vocab_size": 1, "hidden_act": "gelu", "layer_norm_eps": LN_EPS,
        "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
        "initializer_range": 0.02, "pad_token_id": PAD, "bos_token_id": 0, "eos_token_id": 2,
        "position_embedding_type": "absolute",
    }
    with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f)
    with open(os.path.join(directory, "sentencepiece.bpe.model"), "wb") as f:
        f.write(spm_model)
    save_file(weights, os.path.join(directory, "model.safetensors"))
    return str(directory)


def vocabulary_size_of(spm_model):
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_proto=spm_model).get_piece_size() + 2  # <pad>, <mask>


@pytest.fixture(scope="session")  # session: `trained_run` (session) uses it
def spm_model():
    return xlm_roberta_sentencepiece_model()


@pytest.fixture(scope="module")
def hf_weights(spm_model):
    return xlm_roberta_weights(vocabulary_size_of(spm_model))


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory, hf_weights, spm_model):
    return write_xlm_roberta_dir(str(tmp_path_factory.mktemp("tiny_xlmr")), hf_weights, spm_model)


@pytest.fixture(scope="module")
def bundle(checkpoint_dir):
    from tf_mbalign.modeling import encoders

    return encoders.load_encoder(checkpoint_dir, dropout=0.0)


# --- an independent numpy XLM-R ------------------------------------------------------------


def _layer_norm(x, gamma, beta, eps=LN_EPS):
    return layer_norm(x, gamma, beta, eps)


def roberta_position_ids(token_ids, padding_id=PAD):
    """fairseq `make_positions`: real tokens count from padding_id + 1, padding gets padding_id."""
    real = (token_ids != padding_id).astype(np.int64)
    return np.cumsum(real, axis=1) * real + padding_id


def numpy_xlm_roberta(w, token_ids, padding_mask, act=gelu_exact):
    """XLM-R forward pass in float64: every layer's hidden states."""
    w = {k: v.astype(np.float64) for k, v in w.items()}
    batch, length = token_ids.shape
    e = "roberta.embeddings."
    x = (w[f"{e}word_embeddings.weight"][token_ids]
         + w[f"{e}position_embeddings.weight"][roberta_position_ids(token_ids)]
         + w[f"{e}token_type_embeddings.weight"][np.zeros_like(token_ids)])
    x = _layer_norm(x, w[f"{e}LayerNorm.weight"], w[f"{e}LayerNorm.bias"])
    return transformer_layers(w, x, padding_mask, "roberta.encoder.layer.", LAYERS, HEADS, act,
                              LN_EPS)


def numpy_lm_head(w, hidden, act=gelu_exact):
    """`RobertaLMHead`: dense, GELU, layer norm, decoder tied to the word embeddings."""
    w = {k: v.astype(np.float64) for k, v in w.items()}
    x = act(linear(hidden.astype(np.float64), w, "lm_head.dense"))
    x = _layer_norm(x, w["lm_head.layer_norm.weight"], w["lm_head.layer_norm.bias"])
    return x @ w["roberta.embeddings.word_embeddings.weight"].T + w["lm_head.bias"]


def _inputs(vocabulary_size):
    """Two rows `<s> ... </s>`, the second right-padded with `<pad>` = 1."""
    rng = np.random.default_rng(1)
    token_ids = rng.integers(4, vocabulary_size - 1, size=(2, 9)).astype(np.int32)
    token_ids[:, 0] = 0
    token_ids[0, -1] = 2
    token_ids[1, 4] = 2
    token_ids[1, 5:] = PAD
    padding_mask = (token_ids != PAD).astype(np.int32)
    return token_ids, padding_mask


def _project_outputs(bundle, token_ids, padding_mask):
    """Every layer's hidden states and the MLM logits at every position,
    through the encoder and the MLM head training uses."""
    from tf_mbalign.modeling import encoders
    from tf_mbalign.modeling.aligner import Aligner

    out = bundle.encoder({"token_ids": token_ids, "segment_ids": np.zeros_like(token_ids),
                          "padding_mask": padding_mask}, training=False)
    layers = [np.asarray(t) for t in out["encoder_outputs"]]
    head = Aligner(bundle.encoder, queue_size=4).mlm_head
    encoders.set_mlm_head_weights(head, bundle.mlm_head_weights)
    positions = np.tile(np.arange(token_ids.shape[1], dtype=np.int32), (token_ids.shape[0], 1))
    logits = np.asarray(head(out["sequence_output"], positions))
    return layers, logits


# tolerance: float32 TF vs float64 numpy through 2 layers: see RTOL / ATOL (1e-4, ~1000 ulps of O(1) values).
@pytest.mark.numerics
def test_xlm_roberta_dir_matches_numpy_reference(bundle, hf_weights):
    from tf_mbalign.data import tokenizers
    from tf_mbalign.modeling.bert_encoder import BertEncoder

    encoder = bundle.encoder
    assert isinstance(encoder, BertEncoder) and isinstance(bundle.tokenizer,
                                                           tokenizers.SentencePieceTokenizer)
    assert encoder.max_sequence_length == MAX_POSITIONS - 2
    assert (encoder.hidden_activation, encoder.layer_norm_epsilon) == ("gelu", LN_EPS)
    assert bundle.mlm_head_weights is not None
    token_ids, padding_mask = _inputs(encoder.vocabulary_size)
    layers, logits = _project_outputs(bundle, token_ids, padding_mask)
    reference = numpy_xlm_roberta(hf_weights, token_ids, padding_mask)
    valid = padding_mask.astype(bool)
    assert len(layers) == LAYERS
    for layer, ref in zip(layers, reference):
        np.testing.assert_allclose(layer[valid], ref[valid], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(logits[valid], numpy_lm_head(hf_weights, reference[-1])[valid],
                               rtol=RTOL, atol=ATOL)

    # The reference can fail: it sees the position offset, the token type row,
    # the GELU variant and the padding mask.
    shifted = dict(hf_weights)
    shifted["roberta.embeddings.position_embeddings.weight"] = np.roll(
        hf_weights["roberta.embeddings.position_embeddings.weight"], 2, axis=0)
    no_type = dict(hf_weights)
    no_type["roberta.embeddings.token_type_embeddings.weight"] = 0 * hf_weights[
        "roberta.embeddings.token_type_embeddings.weight"]
    for wrong in (numpy_xlm_roberta(shifted, token_ids, padding_mask),
                  numpy_xlm_roberta(no_type, token_ids, padding_mask),
                  numpy_xlm_roberta(hf_weights, token_ids, padding_mask, act=gelu_tanh),
                  numpy_xlm_roberta(hf_weights, token_ids, np.ones_like(padding_mask))):
        assert np.max(np.abs(wrong[-1][valid] - layers[-1][valid])) > 5 * ATOL


# tolerance: two loaders give the same weights and graph: O(1) values, 1e-6.
@pytest.mark.numerics
def test_roberta_model_type_loads_the_same(tmp_path, hf_weights, spm_model, bundle):
    """keras-hub's RoBERTa converter skips the token type row; the loader adds it."""
    from tf_mbalign.modeling import encoders

    directory = write_xlm_roberta_dir(str(tmp_path / "roberta"), hf_weights, spm_model,
                                      model_type="roberta")
    roberta = encoders.load_encoder(directory, dropout=0.0)
    token_ids, padding_mask = _inputs(roberta.encoder.vocabulary_size)
    layers, logits = _project_outputs(roberta, token_ids, padding_mask)
    expected_layers, expected_logits = _project_outputs(bundle, token_ids, padding_mask)
    valid = padding_mask.astype(bool)
    np.testing.assert_allclose(layers[-1][valid], expected_layers[-1][valid], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(logits[valid], expected_logits[valid], rtol=1e-6, atol=1e-6)


# tolerance: float32 TF vs float32 torch: see RTOL / ATOL.
@pytest.mark.numerics
def test_xlm_roberta_dir_matches_transformers(bundle, checkpoint_dir):
    torch = pytest.importorskip("torch", reason=NO_TORCH)
    transformers = pytest.importorskip("transformers")
    model = transformers.XLMRobertaForMaskedLM.from_pretrained(checkpoint_dir).eval()
    token_ids, padding_mask = _inputs(bundle.encoder.vocabulary_size)
    with torch.no_grad():
        out = model(input_ids=torch.tensor(token_ids, dtype=torch.long),
                    attention_mask=torch.tensor(padding_mask), output_hidden_states=True)
    layers, logits = _project_outputs(bundle, token_ids, padding_mask)
    valid = padding_mask.astype(bool)
    for layer, ref in zip(layers, out.hidden_states[1:]):
        np.testing.assert_allclose(layer[valid], ref.numpy()[valid], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(logits[valid], out.logits.numpy()[valid], rtol=RTOL, atol=ATOL)


# --- the tokenizer: ids and special tokens -------------------------------------------------


def test_tokenizer_gives_the_checkpoint_ids(bundle, spm_model):
    """Hugging Face / fairseq ids: the file's id + 1, `<unk>` 3, specials first, `<mask>` last."""
    import sentencepiece as spm
    import tensorflow as tf

    processor = spm.SentencePieceProcessor(model_proto=spm_model)
    t = bundle.tokenizer
    assert (t.cls_id, t.pad_id, t.sep_id, t.unk_id) == (0, 1, 2, 3)
    assert t.mask_id == bundle.encoder.vocabulary_size - 1 == processor.get_piece_size() + 1
    assert tuple(t.random_id_range) == (4, t.mask_id)
    sentences = ["Hello world, how are you?", "Привет мир", "你好 ☃ 𝔘 <mask> <s>"]
    ids = t.tokenize(tf.constant(sentences)).to_list()
    fairseq = {0: 3, 1: 0, 2: 2}  # the file's <unk>, <s>, </s>
    expected = [[fairseq.get(i, i + 1) for i in processor.encode(s)] for s in sentences]
    assert ids == expected
    assert 3 in ids[2]  # an unknown character becomes <unk> = 3
    # Literal "<mask>" / "<s>" in text are ordinary characters, never the special ids.
    assert not {0, 1, 2, t.mask_id} & set(ids[2])


def test_special_tokens_through_packing_and_masking(bundle):
    import tensorflow as tf

    from tf_mbalign.data.pipeline import PipelineConfig, make_example

    t = bundle.tokenizer
    config = PipelineConfig(max_seq_length=40, max_sentence_length=20, max_predictions_per_seq=6,
                            mask_selection_rate=0.5, mask_token_rate=1.0, random_token_rate=0.0,
                            shuffle_inputs=False)
    example = make_example(tf.constant("The cat sat on the mat."), tf.constant("Le chat dort."),
                           position=3, tokenizer=t, config=config)
    ids, mask = example["tlm_token_ids"].numpy(), example["tlm_padding_mask"].numpy()
    n = int(mask.sum())
    assert ids[0] == 0 and ids[n - 1] == 2 and list(ids[:n]).count(2) == 2  # <s> a </s> b </s>
    assert set(ids[n:]) == {1} and not mask[n:].any()  # <pad> = 1 outside the mask
    chosen = example["masked_positions"].numpy()[example["masked_weights"].numpy() > 0]
    assert len(chosen) > 0 and set(ids[chosen]) == {t.mask_id}  # all became <mask>
    assert not set(example["masked_ids"].numpy()[: len(chosen)]) & {0, 1, 2, 3, t.mask_id}
    for side in ("query", "key"):
        side_ids = example[f"{side}_token_ids"].numpy()
        side_n = int(example[f"{side}_padding_mask"].numpy().sum())
        assert side_ids[0] == 0 and side_ids[side_n - 1] == 2 and set(side_ids[side_n:]) <= {1}


# --- errors ---------------------------------------------------------------------------------


def test_tokenizer_json_only_names_the_missing_file(tmp_path, checkpoint_dir):
    from tf_mbalign.modeling import encoders

    for name in ("config.json", "model.safetensors"):
        shutil.copy(os.path.join(checkpoint_dir, name), tmp_path / name)
    (tmp_path / "tokenizer.json").write_text('{"model": {"type": "Unigram"}}')
    with pytest.raises(FileNotFoundError) as info:
        encoders.load_encoder(str(tmp_path))
    message = str(info.value)
    assert str(tmp_path) in message
    assert "missing sentencepiece.bpe.model" in message
    assert "tokenizer.json" in message and "Copy sentencepiece.bpe.model" in message


def test_unsupported_model_type_lists_the_supported_ones(tmp_path, checkpoint_dir):
    from tf_mbalign.modeling import encoders

    shutil.copytree(checkpoint_dir, tmp_path / "m")
    config_path = tmp_path / "m" / "config.json"
    config = json.loads(config_path.read_text())
    config["model_type"] = "distilbert"
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError) as info:
        encoders.load_encoder(str(tmp_path / "m"))
    message = str(info.value)
    assert str(config_path) in message and "model_type='distilbert' is not supported" in message
    assert "Supported model types: bert, xlm-roberta, roberta" in message


def test_keras_hub_preset_directory_passed_as_hf_dir_gets_a_hint(tmp_path):
    from tf_mbalign.modeling import encoders

    (tmp_path / "config.json").write_text(json.dumps(
        {"module": "keras_hub.src.models", "class_name": "XLMRobertaBackbone",
         "registered_name": "keras_hub>XLMRobertaBackbone", "config": {}}))
    with pytest.raises(ValueError, match=r"not a Hugging Face model config.*preset:"):
        encoders.load_encoder(str(tmp_path))


# --- keras-hub preset ----------------------------------------------------------------------


# tolerance: keras-hub's backbone vs ours, same weights, other layers: O(1) values, 1e-5 ~100 ulps.
@pytest.mark.numerics
def test_keras_hub_xlm_roberta_preset_saved_locally(tmp_path, spm_model):
    import keras_hub
    import tensorflow as tf

    from tf_mbalign.modeling import encoders

    backbone = keras_hub.models.XLMRobertaBackbone(
        vocabulary_size=vocabulary_size_of(spm_model), num_layers=LAYERS, num_heads=HEADS,
        hidden_dim=HIDDEN, intermediate_dim=INTERMEDIATE, dropout=0.0, max_sequence_length=32)
    hub_tokenizer = keras_hub.models.XLMRobertaTokenizer(proto=spm_model)
    preset = str(tmp_path / "preset")
    backbone.save_to_preset(preset)
    hub_tokenizer.save_to_preset(preset)

    loaded = encoders.load_encoder(f"preset:{preset}", dropout=0.0)
    sentences = ["The cat sat.", "Привет мир", "你好"]
    ours = loaded.tokenizer.tokenize(tf.constant(sentences)).to_list()
    theirs = [list(np.asarray(x)) for x in hub_tokenizer(sentences)]
    assert ours == [[int(i) for i in x] for x in theirs]
    assert (loaded.tokenizer.mask_id, loaded.tokenizer.pad_id) == (
        hub_tokenizer.mask_token_id, hub_tokenizer.pad_token_id)
    token_ids, padding_mask = _inputs(backbone.vocabulary_size)
    expected = np.asarray(backbone({"token_ids": token_ids, "padding_mask": padding_mask}))
    got = np.asarray(loaded.encoder({"token_ids": token_ids, "segment_ids": 0 * token_ids,
                                     "padding_mask": padding_mask})["sequence_output"])
    valid = padding_mask.astype(bool)
    np.testing.assert_allclose(got[valid], expected[valid], rtol=1e-5, atol=1e-5)


# --- train, export, serve ------------------------------------------------------------------


# Session scope and one xdist_group for its tests: a module fixture was built
# again when its worker ran another module's test between two of them
# (BUILD_NOTES.md, "Test time"); a session one lives until the worker ends.
TRAINED_RUN_GROUP = pytest.mark.xdist_group("xlmr_trained_run")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, spm_model):
    """An XLM-R directory trained 3 steps by the trainer, exported at its end."""
    from conftest import tiny_train_config
    from tf_mbalign.export.run_export import ExportCallback
    from tf_mbalign.training.trainer import AlignmentRun

    root = tmp_path_factory.mktemp("xlmr_run")
    directory = write_xlm_roberta_dir(
        str(root / "hf"), xlm_roberta_weights(vocabulary_size_of(spm_model), seed=5, scale=0.3),
        spm_model)
    export = ExportCallback()
    run = AlignmentRun(tiny_train_config(root / "run", encoder=directory, train_steps=3),
                       callbacks=[export])
    run.run()
    return run, export, directory


def _packed(tokenizer, sentences, length=None):
    import tensorflow as tf

    from tf_mbalign.export.preprocessor import pack_segments

    tokens = tokenizer.tokenize(tf.constant(sentences))
    length = length or int(tf.reduce_max(tokens.row_lengths())) + 2
    return {k: v.numpy() for k, v in pack_segments(
        [tokens], length, tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id).items()}


SENTENCES = ["The cat sat on the mat.", "Le chat est assis.", "Кошка сидит на коврике.", "猫"]


# tolerance: exports vs the in-memory model: O(1) values, 1e-5 ~100 ulps (atol 1e-6 for unit embeddings).
@pytest.mark.numerics
@TRAINED_RUN_GROUP
def test_xlm_roberta_trains_exports_and_the_export_reproduces_it(trained_run):
    import tensorflow as tf

    from tf_mbalign.export import encoder_export
    from tf_mbalign.modeling.pooling import sentence_embedding

    run, export, directory = trained_run
    metrics = [json.loads(line) for line in open(os.path.join(run.config.model_dir,
                                                              "metrics.jsonl"))]
    assert [m["step"] for m in metrics][-1] == 3
    assert all(np.isfinite(m["loss"]) for m in metrics)
    encoder, tokenizer = run.aligner.encoder, run.bundle.tokenizer
    assert run.bundle.mlm_head_weights is not None  # lm_head.* was loaded

    x = _packed(tokenizer, SENTENCES)
    assert x["input_word_ids"][0, 0] == 0 and (x["input_word_ids"][x["input_mask"] == 0] == 1).all()
    inputs = {"token_ids": x["input_word_ids"], "segment_ids": x["input_type_ids"],
              "padding_mask": x["input_mask"]}
    expected = encoder(inputs, training=False)
    valid = x["input_mask"].astype(bool)
    expected_sequence = np.asarray(expected["sequence_output"])
    expected_embeddings = np.asarray(sentence_embedding(expected["encoder_outputs"],
                                                        x["input_mask"]))
    # The run changed the weights it loaded.
    from tf_mbalign.modeling import encoders

    before = encoders.load_encoder(directory, dropout=0.0).encoder(inputs, training=False)
    assert np.max(np.abs(np.asarray(before["sequence_output"])[valid]
                         - expected_sequence[valid])) > 1e-3

    paths = export.paths
    keras_encoder = encoder_export.load_encoder(os.path.dirname(paths["keras"]))
    np.testing.assert_allclose(np.asarray(keras_encoder(inputs)["sequence_output"])[valid],
                               expected_sequence[valid], rtol=1e-5, atol=1e-5)
    hub = tf.saved_model.load(paths["encoder"])
    hub_out = hub(dict(input_word_ids=x["input_word_ids"], input_mask=x["input_mask"],
                       input_type_ids=x["input_type_ids"]), training=False)
    np.testing.assert_allclose(hub_out["sequence_output"].numpy()[valid],
                               expected_sequence[valid], rtol=1e-5, atol=1e-5)
    positions = np.array([[1, 2]] * len(SENTENCES), np.int32)
    mlm = hub.mlm(dict(input_word_ids=x["input_word_ids"], input_mask=x["input_mask"],
                       input_type_ids=x["input_type_ids"], masked_lm_positions=positions),
                  training=False)["mlm_logits"].numpy()
    np.testing.assert_allclose(
        mlm, np.asarray(run.aligner.mlm_head(expected["sequence_output"], positions)),
        rtol=1e-5, atol=1e-5)

    preprocessor = tf.saved_model.load(paths["preprocessor"])
    special = {k: int(v) for k, v in preprocessor.tokenize.get_special_tokens_dict().items()}
    assert special == {"vocab_size": encoder.vocabulary_size, "padding_id": 1,
                       "start_of_sequence_id": 0, "end_of_segment_id": 2,
                       "mask_id": encoder.vocabulary_size - 1}
    packed = preprocessor(tf.constant(SENTENCES))
    width = x["input_word_ids"].shape[1]
    np.testing.assert_array_equal(packed["input_word_ids"].numpy()[:, :width], x["input_word_ids"])

    serving = tf.saved_model.load(paths["serving"]).signatures["serving_default"]
    served = serving(sentences=tf.constant(SENTENCES))["embeddings"].numpy()
    np.testing.assert_allclose(served, expected_embeddings, rtol=1e-5, atol=1e-6)

    # Evaluation reads the export and the run like BERT ones.
    from tf_mbalign.evaluation.trained_encoders import load_trained_encoder

    for spec in (os.path.dirname(paths["keras"]), run.config.model_dir):
        trained = load_trained_encoder(spec, dropout=0.0)
        assert trained.tokenizer.tokenize(tf.constant(SENTENCES)).to_list() == \
            tokenizer.tokenize(tf.constant(SENTENCES)).to_list()
        got = np.asarray(trained.encoder(inputs, training=False)["sequence_output"])
        np.testing.assert_allclose(got[valid], expected_sequence[valid], rtol=1e-5, atol=1e-5)

    info = json.load(open(os.path.join(os.path.dirname(paths["keras"]), "export_info.json")))
    assert info["serving"] == os.path.join("serving", "tf_mbalign", "1")
    assert info["serving_ids"] == os.path.join("serving", "tf_mbalign_ids", "1")
    assert info["encoder"] == "encoder" and info["keras"] == "keras"


_SAVED_MODEL_CLI = """
import json, sys
if sys.argv[2] == "with_tensorflow_text":
    import tensorflow_text  # registers TF Text's ops, as a server linked with them would
from tensorflow.python.tools import saved_model_cli
sys.argv = ["saved_model_cli"] + json.loads(sys.argv[1])
status = 0
try:
    saved_model_cli.main()
except SystemExit as stop:
    status = stop.code or 0
except Exception as error:  # saved_model_cli raises on a model it cannot load
    status, message = 1, f"{type(error).__name__}: {error}"
    print(message[:2000], file=sys.stderr)
print("REPORT " + json.dumps({
    "status": status,
    "tensorflow_text_modules": sorted(m for m in sys.modules if m.startswith("tensorflow_text")),
}))
"""


def _saved_model_cli(model_dir, signature, inputs, outdir, with_tensorflow_text=False):
    """`saved_model_cli run` (a session-based loader, as TF Serving's) in a
    fresh process; returns (report, stderr)."""
    outdir = str(outdir)
    os.makedirs(outdir, exist_ok=True)
    args = ["run", "--dir", model_dir, "--tag_set", "serve", "--signature_def", signature,
            "--inputs", ";".join(f"{k}={v}" for k, v in inputs.items()), "--outdir", outdir]
    mode = "with_tensorflow_text" if with_tensorflow_text else "stock"
    result = subprocess.run([sys.executable, "-c", _SAVED_MODEL_CLI, json.dumps(args), mode],
                            capture_output=True, text=True, timeout=600, cwd=outdir)
    lines = [line for line in result.stdout.splitlines() if line.startswith("REPORT ")]
    assert lines, result.stderr[-3000:]
    return json.loads(lines[-1][len("REPORT "):]), result.stderr


# tolerance: the serving SavedModel vs the in-memory model: unit embeddings, rtol 1e-5 + atol 1e-7.
@pytest.mark.numerics
@TRAINED_RUN_GROUP
def test_core_ops_serving_model_runs_in_stock_tensorflow(trained_run, tmp_path):
    import tensorflow as tf

    run, export, _ = trained_run
    paths = export.paths
    strings = tf.saved_model.load(paths["serving"]).signatures["serving_default"]
    expected = strings(sentences=tf.constant(SENTENCES))["embeddings"].numpy()
    x = _packed(run.bundle.tokenizer, SENTENCES, length=40)  # padded beyond the longest
    inputs = {}
    for name in ("input_word_ids", "input_mask"):
        inputs[name] = str(tmp_path / f"{name}.npy")
        np.save(inputs[name], x[name])

    report, stderr = _saved_model_cli(paths["serving_ids"], "serving_default", inputs, tmp_path)
    assert report == {"status": 0, "tensorflow_text_modules": []}, stderr[-3000:]
    served = np.load(tmp_path / "embeddings.npy")
    np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, rtol=1e-5)

    # The TF-Hub encoder has no TF Text ops either: its signature runs there too.
    hub = tf.saved_model.load(paths["encoder"])
    zeros = str(tmp_path / "input_type_ids.npy")
    np.save(zeros, 0 * x["input_word_ids"])
    report, stderr = _saved_model_cli(paths["encoder"], "serving_default",
                                      dict(inputs, input_type_ids=zeros), tmp_path / "encoder")
    assert report == {"status": 0, "tensorflow_text_modules": []}, stderr[-3000:]
    expected_pooled = hub(dict(input_word_ids=x["input_word_ids"], input_mask=x["input_mask"],
                               input_type_ids=0 * x["input_word_ids"]))["pooled_output"]
    np.testing.assert_allclose(np.load(tmp_path / "encoder" / "pooled_output.npy"),
                               expected_pooled.numpy(), rtol=1e-5, atol=1e-6)

    # The control: the strings model fails there, even through its ids signature.
    ids_inputs = dict(inputs, input_type_ids=inputs["input_mask"])
    report, stderr = _saved_model_cli(paths["serving"], "embed_ids", ids_inputs,
                                      tmp_path / "strings")
    assert report["status"] != 0 and "Op type not registered" in stderr


# tolerance: the serving SavedModel vs the in-memory model: unit embeddings, rtol 1e-5 + atol 1e-7.
@pytest.mark.numerics
@TRAINED_RUN_GROUP
def test_strings_serving_model_runs_in_a_session_loader_with_tf_text(trained_run, tmp_path):
    """With TF Text's ops registered, a session-based loader (TF Serving's kind)
    restores the strings model's variables (Keras 3 variables once exported a
    copy that only TF2's loader restored: "Could not find variable")."""
    import tensorflow as tf

    run, export, _ = trained_run
    strings = tf.saved_model.load(export.paths["serving"]).signatures["serving_default"]
    expected = strings(sentences=tf.constant(SENTENCES))["embeddings"].numpy()
    x = _packed(run.bundle.tokenizer, SENTENCES)
    inputs = {}
    for name in ("input_word_ids", "input_mask", "input_type_ids"):
        inputs[name] = str(tmp_path / f"{name}.npy")
        np.save(inputs[name], x[name])
    report, stderr = _saved_model_cli(export.paths["serving"], "embed_ids", inputs,
                                      tmp_path / "out", with_tensorflow_text=True)
    assert report["status"] == 0, stderr[-3000:]
    np.testing.assert_allclose(np.load(tmp_path / "out" / "embeddings.npy"), expected,
                               rtol=1e-5, atol=1e-7)
