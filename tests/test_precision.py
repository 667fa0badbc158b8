"""`--precision=auto`: bfloat16 where the hardware multiplies it natively."""

import dataclasses
import glob
import os

import pytest

from tf_mbalign import distribute


@pytest.mark.parametrize("flags,native,words", [
    ({"avx512f", "amx_bf16", "amx_tile", "avx512_bf16"}, True, "AMX"),
    ({"avx2", "avx512f", "avx512_bf16"}, True, "AVX512-BF16"),
    ({"avx2", "fma", "avx512f"}, False, "without bfloat16"),  # e.g. AMD Zen 3
    (set(), False, "without bfloat16"),
])
def test_cpu_flags_decide(flags, native, words):
    got, reason = distribute.cpu_bfloat16_support(flags)
    assert got is native and words in reason


@pytest.mark.parametrize("capabilities,native", [
    ([(9, 0)], True), ([(8, 0), (8, 6)], True), ([(7, 5)], False), ([(8, 0), (7, 0)], False),
])
def test_gpu_capability_decides(capabilities, native):
    assert distribute.gpu_bfloat16_support(capabilities)[0] is native


def test_cpu_flags_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx512_bf16 amx_bf16\n\n"
                       "processor\t: 1\nflags\t\t: fpu sse avx512_bf16 amx_bf16\n")
    assert distribute.cpu_flags(str(cpuinfo)) == {"fpu", "sse", "avx512_bf16", "amx_bf16"}
    assert distribute.cpu_flags(str(tmp_path / "absent")) == set()


@pytest.mark.parametrize("flags,policy,words", [
    ({"avx2", "fma"}, "float32", "without bfloat16"),  # neither AMX nor AVX512-BF16
    ({"avx512f", "avx512_bf16"}, "mixed_bfloat16", "AVX512-BF16"),
    ({"amx_tile", "amx_bf16"}, "mixed_bfloat16", "AMX"),
])
def test_auto_on_a_cpu_follows_its_bfloat16_instructions(monkeypatch, flags, policy, words):
    monkeypatch.setattr(distribute, "_gpu_compute_capabilities", lambda: [])
    monkeypatch.setattr(distribute, "cpu_flags", lambda: flags)
    got, reason = distribute.resolve_precision("auto")
    assert got == policy and reason.startswith("auto: ") and words in reason


def test_auto_follows_the_gpu_and_explicit_choices_are_kept(monkeypatch):
    monkeypatch.setattr(distribute, "cpu_flags", lambda: {"amx_bf16"})
    monkeypatch.setattr(distribute, "_gpu_compute_capabilities", lambda: [(7, 0)])
    assert distribute.resolve_precision("auto")[0] == "float32"  # the GPU computes, not the CPU
    # An explicit choice is kept whatever the hardware.
    assert distribute.resolve_precision("mixed_float16") == ("mixed_float16", "set by --precision")
    assert distribute.resolve_precision("float32") == ("float32", "set by --precision")
    with pytest.raises(ValueError, match="auto"):
        distribute.resolve_precision("bf16")


@pytest.mark.parametrize("flags,policy,words", [
    ({"avx2"}, "float32", "auto: CPU without bfloat16"),
    ({"amx_bf16"}, "mixed_bfloat16", "auto: CPU with AMX"),
])
def test_a_run_resolves_auto_and_records_why(tmp_path, monkeypatch, flags, policy, words):
    import json

    import keras

    from conftest import tiny_train_config
    from tf_mbalign.training.run_summary import RunSummary
    from tf_mbalign.training.trainer import AlignmentRun

    monkeypatch.setattr(distribute, "_gpu_compute_capabilities", lambda: [])
    monkeypatch.setattr(distribute, "cpu_flags", lambda: flags)
    messages = []
    try:
        run = AlignmentRun(tiny_train_config(tmp_path / "run", train_steps=1, precision="auto"),
                           callbacks=[RunSummary()], log=messages.append)
        run.run()
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert run.config.precision == policy and run.precision_reason.startswith(words)
    assert any(f"precision {policy} ({words}" in m for m in messages)  # printed at start
    with open(tmp_path / "run" / "flags.json") as f:
        assert json.load(f)["precision"] == policy  # what ran, so a re-run is the same
    with open(tmp_path / "run" / "summary.json") as f:
        assert json.load(f)["precision"] == {"policy": policy, "reason": run.precision_reason}


@pytest.mark.parametrize("policy,flags,gpus,words", [
    ("mixed_bfloat16", {"avx2", "fma"}, [], "CPU without bfloat16"),  # e.g. AMD Zen 3
    ("mixed_bfloat16", {"amx_bf16"}, [(7, 5)], "compute capability 7.5"),  # the GPU computes
    ("mixed_float16", {"amx_bf16", "avx512_bf16"}, [], "no GPU"),
    ("mixed_bfloat16", {"avx512_bf16"}, [], None),
    ("mixed_bfloat16", {"avx2"}, [(9, 0)], None),
    ("mixed_float16", {"avx2"}, [(7, 0)], None),
    ("float32", {"avx2"}, [], None),
])
def test_an_explicit_precision_the_hardware_emulates_is_warned_of(monkeypatch, policy, flags,
                                                                  gpus, words):
    monkeypatch.setattr(distribute, "_gpu_compute_capabilities", lambda: gpus)
    monkeypatch.setattr(distribute, "cpu_flags", lambda: flags)
    warning = distribute.emulated_precision_warning(policy)
    if words is None:
        assert warning is None
    else:
        assert words in warning and "emulated" in warning and "--precision=auto" in warning
    assert distribute.resolve_precision(policy) == (policy, "set by --precision")  # still kept


def test_a_run_warns_at_start_when_its_precision_is_emulated(tmp_path, monkeypatch):
    import keras

    from conftest import tiny_train_config
    from tf_mbalign.training.trainer import AlignmentRun

    monkeypatch.setattr(distribute, "_gpu_compute_capabilities", lambda: [])
    monkeypatch.setattr(distribute, "cpu_flags", lambda: {"avx2", "fma"})
    warnings = []
    try:
        run = AlignmentRun(tiny_train_config(tmp_path / "run", train_steps=1,
                                             precision="mixed_bfloat16"),
                           log=lambda message: None, warn=warnings.append)
        run.run()
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert run.config.precision == "mixed_bfloat16"
    assert [w for w in warnings if "bfloat16 is emulated here" in w], warnings


# === The default is auto; tests and the training configs pin theirs ===

def test_auto_is_the_default_of_the_config_and_of_the_flag():
    from absl import flags

    from tf_mbalign import config
    from tf_mbalign.config import TrainConfig

    assert TrainConfig().precision == "auto"
    flag_values = flags.FlagValues()  # the training binary's flags, apart from absl's global ones
    config.define_flags(flag_values)
    flag_values(["x"])
    assert flag_values["precision"].default == "auto"
    assert config.TrainConfig.from_flags(flag_values).precision == "auto"


def _flags_set(path):
    """{name: value} of the flags a flag file sets (the files it includes
    with --flagfile first; --name alone as "true", --noname as "false")."""
    from conftest import REPO_ROOT

    values = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line.startswith("--"):
                continue
            name, has_value, value = line[2:].partition("=")
            if name == "flagfile":
                values.update(_flags_set(os.path.join(REPO_ROOT, value)))
            elif has_value:
                values[name] = value
            elif name.startswith("no"):
                values[name[2:]] = "false"
            else:
                values[name] = "true"
    return values


def _training_flag_files():
    """configs/*.flags of the training binary: those whose every flag is a
    TrainConfig field (the fine-tuning ones set --epochs, --seeds, ...)."""
    from conftest import REPO_ROOT
    from tf_mbalign.config import TrainConfig

    fields = {field.name for field in dataclasses.fields(TrainConfig)}
    configs = {os.path.basename(path): _flags_set(path)
               for path in glob.glob(os.path.join(REPO_ROOT, "configs", "*.flags"))}
    return {name: values for name, values in configs.items() if set(values) <= fields}


def test_every_training_config_pins_its_precision():
    configs = _training_flag_files()
    assert {"align.flags", "recipe.flags", "mbert_paper.flags"} <= set(configs)
    unpinned = [name for name, values in configs.items()
                if values.get("precision", "auto") == "auto"]
    assert not unpinned, f"configs that train without pinning --precision: {unpinned}"
    assert configs["align.flags"]["precision"] == configs["recipe.flags"]["precision"] == "float32"


# === Mixed bfloat16 training on a tiny model (emulated where the CPU lacks bf16) ===

STEPS = 3
# bf16 keeps 8 bits of mantissa (relative rounding 2^-9 per value); over a
# few steps of a tiny model the losses stay within 1% of float32's (measured:
# within 1e-4), the gradient norm within 10% (measured: 2%).
LOSS_RTOL, LOSS_ATOL = 1e-2, 1e-3


def _build_tiny_step(precision, seed=0):
    """(AlignmentStep, config, tokenizer) on the tiny encoder under `precision`."""
    import keras

    from conftest import tiny_train_config
    from tf_mbalign.modeling import encoders
    from tf_mbalign.training.alignment_step import build_alignment_step

    config = tiny_train_config("/unused", precision=precision, queue_size=16)
    distribute.set_precision(precision)
    try:
        keras.utils.set_random_seed(seed)
        bundle = encoders.load_encoder(config.encoder, dropout=0.0)
        return build_alignment_step(config, bundle), config, bundle.tokenizer
    finally:
        distribute.set_precision("float32")


def _demo_batches(tokenizer, config, count):
    from tf_mbalign.data import corpus, pipeline

    dataset = pipeline.build_dataset(corpus.read_corpus("demo"), tokenizer,
                                     config.pipeline_config(), config.global_batch_size)
    return list(dataset.take(count))


def _train(step, batches):
    """(per-step results, the traced step graph) of `step` on `batches`."""
    import tensorflow as tf

    strategy = tf.distribute.get_strategy()
    run = tf.function(lambda batch: strategy.run(step, args=(batch,)))
    results = [{k: v.numpy() for k, v in run(batch).items()} for batch in batches]
    return results, run.get_concrete_function(batches[0]).graph


@pytest.fixture(scope="module")
def float32_and_mixed_runs():
    """A float32 and a mixed-bf16 tiny alignment from the same start, the
    same batches, dropout 0: {policy: (results, graph, step, tokenizer)}."""
    from tf_mbalign.modeling.bert_encoder import copy_weights

    reference, config, tokenizer = _build_tiny_step("float32")
    mixed, _, _ = _build_tiny_step("mixed_bfloat16")
    copy_weights(reference.aligner.weights, mixed.aligner.weights)  # the same start
    batches = _demo_batches(tokenizer, config, STEPS)
    return {policy: (*_train(step, batches), step, tokenizer)
            for policy, step in (("float32", reference), ("mixed_bfloat16", mixed))}


# tolerance: bf16 vs float32 steps: see LOSS_RTOL / LOSS_ATOL (bf16 has 8 bits of mantissa).
@pytest.mark.numerics
@pytest.mark.bfloat16
def test_mixed_bfloat16_steps_stay_finite_and_close_to_float32(float32_and_mixed_runs):
    import numpy as np

    float32_results, _, float32_step, _ = float32_and_mixed_runs["float32"]
    mixed_results, _, mixed_step, _ = float32_and_mixed_runs["mixed_bfloat16"]
    assert mixed_step.aligner.encoder.compute_dtype == "bfloat16"  # it did run mixed
    for a, b in zip(float32_results, mixed_results):
        assert bool(b["loss_finite"]) and bool(b["gradients_finite"]) and bool(b["applied"])
        np.testing.assert_allclose(b["loss"], a["loss"], rtol=LOSS_RTOL, atol=LOSS_ATOL)
    float32_means = {m.name: float(m.result()) for m in float32_step.aligner.metrics}
    mixed_means = {m.name: float(m.result()) for m in mixed_step.aligner.metrics}
    for name in ("loss", "tlm_loss", "moco_loss"):
        np.testing.assert_allclose(mixed_means[name], float32_means[name], rtol=LOSS_RTOL,
                                   atol=LOSS_ATOL, err_msg=name)
    np.testing.assert_allclose(mixed_means["gradient_norm"], float32_means["gradient_norm"],
                               rtol=0.1)


def _op_dtypes(graph, op_types):
    """{op type: set of output dtype names} of the graph's ops of those types."""
    found = {}
    for op in graph.get_operations():
        if op.type in op_types:
            # Ops that write a variable have no outputs: their value inputs count.
            tensors = list(op.outputs) or [t for t in op.inputs if t.dtype != "resource"]
            found.setdefault(op.type, set()).update(t.dtype.name for t in tensors)
    return found


def test_numerically_sensitive_parts_stay_float32_in_mixed_runs(float32_and_mixed_runs):
    _, graph, step, _ = float32_and_mixed_runs["mixed_bfloat16"]
    aligner = step.aligner
    # State: every weight (encoder, key encoder, MLM head, queue) and every
    # optimizer slot is float32; the queue's ids are int32.
    assert {v.dtype for v in aligner.weights} == {"float32", "int32"}
    assert aligner.key_queue.keys.dtype == "float32"
    assert {v.dtype for v in aligner.key_encoder.weights} == {"float32"}
    assert {v.dtype for v in step.optimizer.variables if "iteration" not in v.path} == {"float32"}
    found = _op_dtypes(graph, {
        "SparseSoftmaxCrossEntropyWithLogits",  # TLM over the vocabulary, MoCo over the queue
        "Softmax",                              # attention (Keras computes it in float32)
        "Rsqrt",                                # layer norms (Keras: at least float32)
        "AssignSubVariableOp",                  # the key encoder's EMA
        "AssignVariableOp",                     # AdamW's decoupled weight decay
        "ResourceScatterNdUpdate",              # the queue write
        "ResourceApplyAdam",                    # AdamW on float32 weights
    })
    assert set(found) >= {"SparseSoftmaxCrossEntropyWithLogits", "Softmax", "Rsqrt",
                          "AssignSubVariableOp", "ResourceScatterNdUpdate",
                          "ResourceApplyAdam", "AssignVariableOp"}
    for op_type, dtypes in found.items():
        # (AssignVariableOp also writes the optimizers' int64 step counts.)
        allowed = {"float32", "int32"} | ({"int64"} if op_type == "AssignVariableOp" else set())
        assert dtypes <= allowed, (op_type, dtypes)
    # ... while the matmuls are bf16, the tied MLM decoder included (its
    # [*, vocabulary] product), and the table is never transposed.
    vocabulary = aligner.encoder.vocabulary_size
    decoder = [op for op in graph.get_operations() if op.type == "MatMul"
               and op.outputs[0].shape.rank == 2 and op.outputs[0].shape[-1] == vocabulary]
    assert decoder and {op.outputs[0].dtype.name for op in decoder} == {"bfloat16"}
    assert not [op for op in graph.get_operations() if op.type == "Transpose"
                and vocabulary in op.outputs[0].shape.as_list()]


# === Exports of a mixed-bf16-trained model: float32 unless asked ===


def _ids_batch(tokenizer, sentences):
    from tf_mbalign.data.dynamic_padding import pad_rows
    from tf_mbalign.evaluation.sentence_embedding import encode_single

    batch = pad_rows(encode_single(tokenizer, sentences, 32), tokenizer.pad_id)
    return {"input_word_ids": batch["token_ids"], "input_mask": batch["padding_mask"],
            "input_type_ids": 0 * batch["token_ids"]}


def _float32_embeddings(encoder, inputs):
    """What the trained weights give in float32 (a float32 copy, in memory)."""
    from tf_mbalign.modeling.bert_encoder import encoder_at_precision
    from tf_mbalign.modeling.pooling import sentence_embedding

    copy = encoder_at_precision(encoder, "float32")
    outputs = copy({"token_ids": inputs["input_word_ids"], "padding_mask": inputs["input_mask"],
                    "segment_ids": inputs["input_type_ids"]})
    return sentence_embedding(outputs["encoder_outputs"], inputs["input_mask"]).numpy()


def _saved_dtypes(path):
    """Every dtype named by an op attribute anywhere in a SavedModel's graph,
    the functions of its library included (a signature's own graph only
    calls them)."""
    import tensorflow as tf
    from tensorflow.python.tools import saved_model_utils

    graph = saved_model_utils.get_meta_graph_def(path, "serve").graph_def
    nodes = list(graph.node) + [n for f in graph.library.function for n in f.node_def]
    found = set()
    for node in nodes:
        for value in node.attr.values():
            found.update(tf.as_dtype(t).name for t in ([value.type] if value.type else [])
                         + list(value.list.type))
    return found


# tolerance: a float32 export vs the float32 reference maths: rtol 1e-5 + atol 1e-6 of unit vectors.
@pytest.mark.numerics
@pytest.mark.bfloat16
def test_export_of_a_mixed_bfloat16_model_is_float32_unless_asked(float32_and_mixed_runs,
                                                                   tmp_path):
    import numpy as np
    import tensorflow as tf

    from tf_mbalign.export import encoder_export

    _, _, step, tokenizer = float32_and_mixed_runs["mixed_bfloat16"]
    encoder, head = step.aligner.encoder, step.aligner.mlm_head
    inputs = _ids_batch(tokenizer, ["Hello world.", "Guten Morgen, wie geht es dir heute?"])
    expected = _float32_embeddings(encoder, inputs)

    # Default: float32 throughout, the trained float32 weights as they are.
    paths = encoder_export.export_encoder(encoder, tokenizer, str(tmp_path / "f32"),
                                          mlm_head=head, seq_length=32)
    assert encoder_export.read_export_info(str(tmp_path / "f32"))["precision"] == "float32"
    for part in ("serving_ids", "serving", "encoder"):
        assert "bfloat16" not in _saved_dtypes(paths[part]), part
    served = tf.saved_model.load(paths["serving_ids"]).signatures["serving_default"]
    got = served(input_word_ids=inputs["input_word_ids"], input_mask=inputs["input_mask"])
    np.testing.assert_allclose(got["embeddings"].numpy(), expected, rtol=1e-5, atol=1e-6)
    assert encoder_export.load_encoder(str(tmp_path / "f32")).dtype_policy.name == "float32"
    mlm = tf.saved_model.load(paths["encoder"]).mlm(
        dict(inputs, masked_lm_positions=tf.constant([[1], [2]])), training=False)
    assert mlm["mlm_logits"].dtype == tf.float32


# tolerance: a bf16 export vs float32: bounded by bf16's 2^-8 relative rounding.
@pytest.mark.numerics
@pytest.mark.bfloat16
def test_bfloat16_export_on_request(float32_and_mixed_runs, tmp_path):
    """bf16 weights and matmuls, float32 embeddings out, close to float32's
    (the serving model alone: `export_encoder(precision=...)` exports the
    models `models_at_precision` returns)."""
    import numpy as np
    import tensorflow as tf

    from tf_mbalign.export import encoder_export
    from tf_mbalign.export.serving import TokenIdsEmbeddingServer

    _, _, step, tokenizer = float32_and_mixed_runs["mixed_bfloat16"]
    inputs = _ids_batch(tokenizer, ["Hello world.", "Guten Morgen, wie geht es dir heute?"])
    expected = _float32_embeddings(step.aligner.encoder, inputs)
    encoder, head = encoder_export.models_at_precision(step.aligner.encoder,
                                                       step.aligner.mlm_head, "bfloat16")
    assert {w.dtype for w in encoder.weights} == {"bfloat16"}
    assert head.token_embedding is encoder.token_embedding and head.compute_dtype == "bfloat16"
    server = TokenIdsEmbeddingServer(encoder)
    path = str(tmp_path / "bf16")
    tf.saved_model.save(server, path, signatures=server.signatures())
    assert "bfloat16" in _saved_dtypes(path)
    served = tf.saved_model.load(path).signatures["serving_default"]
    got = served(input_word_ids=inputs["input_word_ids"], input_mask=inputs["input_mask"])
    assert got["embeddings"].dtype == tf.float32
    cosines = np.sum(got["embeddings"].numpy() * expected, axis=1)
    assert cosines.min() >= 0.99 and not np.allclose(got["embeddings"].numpy(), expected,
                                                     atol=1e-6)
    with pytest.raises(ValueError, match="export precision"):
        encoder_export.models_at_precision(encoder, head, "fp8")


def test_export_precision_comes_from_the_run_unless_given(monkeypatch):
    from conftest import tiny_train_config
    from tf_mbalign.export import encoder_export, run_export

    asked = []
    monkeypatch.setattr(encoder_export, "export_encoder",
                        lambda *args, precision, **kwargs: asked.append(precision))
    aligner = type("FakeAligner", (), {"encoder": None, "mlm_head": None})()
    config = tiny_train_config("/unused", precision="mixed_bfloat16")
    assert config.export_precision == "float32"  # whatever the run trained in
    run_export.export_aligned_encoder(config, None, aligner, "/unused", source="")
    run_export.export_aligned_encoder(
        tiny_train_config("/unused", export_precision="bfloat16"), None, aligner, "/unused",
        source="")
    run_export.export_aligned_encoder(config, None, aligner, "/unused", source="",
                                      precision="mixed_bfloat16")  # the export binary's flag
    assert asked == ["float32", "bfloat16", "mixed_bfloat16"]
    with pytest.raises(ValueError, match="export_precision"):
        tiny_train_config("/unused", export_precision="float16")
