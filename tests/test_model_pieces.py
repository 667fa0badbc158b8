"""Sentence representations, the learning-rate schedule, optimizer settings."""

import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_mbalign.modeling.pooling import sentence_representation
from tf_mbalign.training import optimization


# tolerance: a mean of a few O(1) values in float32: default rtol 1e-7.
@pytest.mark.numerics
def test_cls_and_mean_pooling_of_a_chosen_layer():
    layer0 = tf.constant([[[1.0, 1.0], [3.0, 5.0], [100.0, 100.0]]])
    layer1 = tf.constant([[[7.0, 0.0], [0.0, 7.0], [50.0, 50.0]]])
    mask = tf.constant([[1, 1, 0]])
    assert sentence_representation([layer0, layer1], mask, -1, "cls").numpy().tolist() == [[7.0, 0.0]]
    assert sentence_representation([layer0, layer1], mask, 0, "cls").numpy().tolist() == [[1.0, 1.0]]
    # Mean over the unpadded tokens only.
    np.testing.assert_allclose(sentence_representation([layer0, layer1], mask, 0, "mean"),
                               [[2.0, 3.0]])
    with pytest.raises(ValueError, match="pooling"):
        sentence_representation([layer0], mask, 0, "max")


def test_warmup_then_linear_decay():
    schedule = optimization.WarmupLinearDecay(1e-4, warmup_steps=10, total_steps=110)
    values = [float(schedule(s)) for s in (0, 4, 9, 10, 60, 110, 200)]
    np.testing.assert_allclose(values, [1e-5, 5e-5, 1e-4, 1e-4, 5e-5, 0.0, 0.0], rtol=1e-5, atol=1e-12)
    restored = optimization.WarmupLinearDecay(**schedule.get_config())
    assert float(restored(60)) == pytest.approx(5e-5)


def test_optimizer_decays_weights_but_not_biases_and_norms():
    import keras

    optimizer = optimization.create_optimizer(1e-2, total_steps=10, weight_decay=0.5)
    kernel = keras.Variable(np.ones((2, 2), np.float32), name="kernel")
    bias = keras.Variable(np.ones((2,), np.float32), name="bias")
    gamma = keras.Variable(np.ones((2,), np.float32), name="gamma")
    optimizer.apply_gradients([(tf.zeros((2, 2)), kernel), (tf.zeros((2,)), bias),
                               (tf.zeros((2,)), gamma)])
    assert float(kernel.numpy()[0, 0]) < 1.0  # decayed with a zero gradient
    assert bias.numpy().tolist() == [1.0, 1.0] and gamma.numpy().tolist() == [1.0, 1.0]
    scaled = optimization.create_optimizer(1e-3, 10, precision="mixed_float16")
    assert isinstance(scaled, keras.optimizers.LossScaleOptimizer)


def _adamw_trajectory(optimizer_class, strategy, steps=4, sparse=False):
    """Weights after `steps` AdamW steps on fixed gradients (bias excluded from decay)."""
    rng = np.random.default_rng(0)
    kernel0, bias0 = rng.normal(size=(5, 3)), rng.normal(size=(3,))
    grads = [(rng.normal(size=(5, 3)), rng.normal(size=(3,))) for _ in range(steps)]
    with strategy.scope():
        kernel = tf.Variable(kernel0, dtype=tf.float32, name="kernel")
        bias = tf.Variable(bias0, dtype=tf.float32, name="bias")
        optimizer = optimizer_class(
            learning_rate=optimization.WarmupLinearDecay(1e-2, 2, steps + 2),
            weight_decay=0.1, beta_1=0.9, beta_2=0.999, epsilon=1e-6)
        optimizer.exclude_from_weight_decay(var_names=["bias"])

    @tf.function
    def step(g_kernel, g_bias):
        def replica_fn():
            if sparse:  # Rows 0 and 3 only, as an embedding lookup's gradient.
                g = tf.IndexedSlices(tf.gather(g_kernel, [0, 3]), tf.constant([0, 3]),
                                     tf.constant([5, 3]))
            else:
                g = g_kernel
            optimizer.apply_gradients([(g, kernel), (g_bias, bias)])
        strategy.run(replica_fn)

    for g_kernel, g_bias in grads:
        step(tf.constant(g_kernel, tf.float32), tf.constant(g_bias, tf.float32))
    return kernel.numpy(), bias.numpy(), int(optimizer.iterations.numpy())


# tolerance: the same Adam formula in another op order on given gradients (none tiny): rtol 1e-5 / atol 1e-6 of O(1) weights.
@pytest.mark.numerics
@pytest.mark.parametrize("sparse", [False, True])
def test_fused_adamw_takes_keras_adamw_steps(sparse):
    """Same weights as Keras' AdamW (decay, schedule, bias correction, sparse
    fallback); under MirroredStrategy `tests/distributed_checks.py` compares
    the whole step, optimizer included, with one device."""
    strategy = tf.distribute.get_strategy()
    expected = _adamw_trajectory(keras.optimizers.AdamW, strategy, sparse=sparse)
    got = _adamw_trajectory(optimization.FusedAdamW, strategy, sparse=sparse)
    assert got[2] == expected[2] == 4
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[1], expected[1], rtol=1e-5, atol=1e-6)
    # It did move the weights (not a no-op that happens to agree).
    assert np.max(np.abs(got[0] - _adamw_trajectory(optimization.FusedAdamW, strategy,
                                                    steps=1, sparse=sparse)[0])) > 1e-3



def _op_types(function, *args):
    graph = function.get_concrete_function(*args).graph
    types = [op.type for op in graph.get_operations()]
    for f in graph._functions.values():  # the bodies of nested functions (merge calls, ...)
        types += [node.op for node in f.definition.node_def]
    return types


def test_fused_adamw_decays_in_one_pass_and_updates_in_one_kernel():
    """The decay is a product the variable adopts (`AssignVariableOp`), not
    Keras' product + `AssignSubVariableOp` pass; the update is one
    `ResourceApplyAdam` a variable."""
    kernel = tf.Variable(np.ones((4, 3), np.float32), name="kernel")
    bias = tf.Variable(np.ones((3,), np.float32), name="bias")
    optimizer = optimization.create_optimizer(1e-3, 10, weight_decay=0.1)
    optimizer.build([kernel, bias])

    @tf.function
    def step(g_kernel, g_bias):
        optimizer.apply_gradients([(g_kernel, kernel), (g_bias, bias)])

    types = _op_types(step, tf.zeros((4, 3)), tf.zeros((3,)))
    assert types.count("ResourceApplyAdam") == 2
    assert "AssignSubVariableOp" not in types
    assert types.count("AssignVariableOp") >= 1  # the kernel's decay (the bias has none)


def test_aligner_config_round_trips():
    from tf_mbalign.modeling import encoders
    from tf_mbalign.modeling.aligner import Aligner

    encoder = encoders.load_encoder("tiny:demo", dropout=0.0).encoder
    aligner = Aligner(encoder, queue_size=24, momentum=0.9, temperature=0.05,
                      contrastive_weight=0.5, representation_layer=-2, pooling="mean",
                      projection_dim=8, name="probe")
    config = aligner.get_config()
    restored = Aligner.from_config(config)
    assert restored.get_config() == config
    assert {k: config[k] for k in ("queue_size", "momentum", "pooling", "projection_dim")} == {
        "queue_size": 24, "momentum": 0.9, "pooling": "mean", "projection_dim": 8}
    assert [w.shape for w in restored.weights] == [w.shape for w in aligner.weights]


def test_aligner_docstring_example_runs():
    import re

    from tf_mbalign.modeling.aligner import Aligner

    example = re.search(r"```python\n(.*?)```", Aligner.__doc__, re.S).group(1)
    namespace = {}
    exec(compile(textwrap.dedent(example), "Aligner docstring", "exec"), namespace)
    losses = namespace["losses"]
    assert set(losses) == {"loss", "tlm_loss", "moco_loss", "anchor_loss"}
    np.testing.assert_allclose(float(losses["loss"]),
                               float(losses["tlm_loss"]) + float(losses["moco_loss"]), rtol=1e-6)
    assert float(losses["tlm_loss"]) > 0 and np.isfinite(float(losses["moco_loss"]))


def _tiny_bert(**kwargs):
    from tf_mbalign.modeling.bert_encoder import BertEncoder

    return BertEncoder(vocabulary_size=50, num_layers=1, num_heads=2, hidden_dim=8,
                       intermediate_dim=16, dropout=0.0, **kwargs)


# tolerance: the same logits through a transposed vs untransposed matmul: O(1) values, 1e-6; gradients sum 21 rows, 1e-5.
@pytest.mark.numerics
def test_tied_mlm_head_gives_keras_hub_heads_logits_and_gradients():
    import keras_hub

    from tf_mbalign.modeling.mlm_head import TiedMaskedLMHead, tied_head_like

    encoder = _tiny_bert()
    keras_head = keras_hub.layers.MaskedLMHead(token_embedding=encoder.token_embedding,
                                               intermediate_activation="gelu")
    keras_head.build((None, None, 8), (None, None))
    keras_head._bias.assign(np.random.default_rng(0).normal(size=50).astype(np.float32))
    ours = tied_head_like(keras_head, encoder.token_embedding, "float32")
    assert isinstance(ours, TiedMaskedLMHead)
    assert ours.token_embedding is encoder.token_embedding  # still tied, not a copy
    hidden = tf.random.stateless_normal([3, 7, 8], seed=[1, 2])
    positions = tf.constant([[1, 2], [0, 6], [3, 3]])
    table = encoder.token_embedding.embeddings
    results = []
    for head in (keras_head, ours):
        with tf.GradientTape() as tape:
            logits = head(hidden, mask_positions=positions)
            loss = tf.reduce_sum(tf.sin(logits))
        gradient = tf.convert_to_tensor(tape.gradient(loss, table))
        assert logits.dtype == tf.float32 and logits.shape == (3, 2, 50)
        results.append((logits.numpy(), gradient.numpy()))
    (keras_logits, keras_gradient), (our_logits, our_gradient) = results
    np.testing.assert_allclose(our_logits, keras_logits, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(our_gradient, keras_gradient, rtol=1e-5, atol=1e-6)
    assert np.abs(keras_gradient).max() > 0  # the table does receive a gradient


def test_encoder_at_another_precision_copies_weights_and_records_its_policy():
    from tf_mbalign.modeling.bert_encoder import BertEncoder, encoder_at_precision

    encoder = _tiny_bert()
    assert encoder_at_precision(encoder, "float32") is encoder
    copy = encoder_at_precision(encoder, "bfloat16")
    assert copy.dtype_policy.name == "bfloat16" and copy.get_config()["dtype"]["config"][
        "name"] == "bfloat16"  # the Keras file records the layers' policy
    assert {w.dtype for w in copy.weights} == {"bfloat16"}
    for source, target in zip(encoder.weights, copy.weights):
        rounded = tf.cast(tf.cast(source.value, tf.bfloat16), tf.float32)
        np.testing.assert_array_equal(rounded, tf.cast(target.value, tf.float32))
    # A functional model drops `dtype`; the encoder keeps the one its layers got.
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        assert BertEncoder.from_config(encoder.get_config()).dtype_policy.name == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")


# tolerance: a float32 mean of 64 bf16 values near 1: rtol 1e-6 is ~10 ulps, a bf16 sum would be off by ~1e-2.
@pytest.mark.numerics
@pytest.mark.bfloat16
def test_mean_pooling_of_bf16_states_sums_in_float32():
    # 64 tokens near 1: a bf16 running sum (spacing 0.5 above 64) would be
    # off by tenths; the float32 sum gives the mean of the bf16 values.
    values = tf.cast(1.0 + 0.01 * tf.range(64, dtype=tf.float32), tf.bfloat16)
    hidden = tf.reshape(values, [1, 64, 1])
    mean = sentence_representation([hidden], tf.ones([1, 64], tf.int32), pooling="mean")
    assert mean.dtype == tf.float32
    np.testing.assert_allclose(mean.numpy()[0, 0],
                               np.mean(tf.cast(values, tf.float32).numpy()), rtol=1e-6)
    cls = sentence_representation([hidden], tf.ones([1, 64], tf.int32), pooling="cls")
    assert cls.dtype == tf.float32 and float(cls[0, 0]) == 1.0


def _gelu_bound_violations(activation, reference):
    """Elements of `activation` on bf16 inputs farther from the float64
    `reference` than one rounding to bf16 allows."""
    values = np.linspace(-6.0, 6.0, 20_001, dtype=np.float32)
    x = tf.cast(values, tf.bfloat16)
    exact = reference(tf.cast(x, tf.float64).numpy())
    got = tf.cast(activation(x), tf.float64).numpy()
    # One round-to-nearest to bf16 (8 significant bits) errs by at most half
    # a unit in the last place, <= 2**-8 of the value. Before it, float32:
    # erf / tanh err by a few float32 ulps, relative to 1 in `1 + erf(...)`,
    # so the float32 GELU errs by ~|x| * 2**-23 (a large share of the value
    # where `1 + tanh` cancels, x << 0); 8 such ulps, and 1e-5 relative, cover
    # any CPU's kernels.
    bound = (2.0**-8 + 1e-5) * np.abs(exact) + 8 * 2.0**-24 * np.abs(values)
    return int(np.sum(np.abs(got - exact) > bound))


# tolerance: one rounding to bf16 (see `_gelu_bound_violations`), against float64.
@pytest.mark.numerics
@pytest.mark.bfloat16
@pytest.mark.parametrize("name", ["gelu", "gelu_approximate"])
def test_a_bfloat16_gelu_is_the_float32_gelu_rounded_once(name):
    """The encoder computes GELU of a bf16 input in float32 and rounds once
    (faster than bf16 kernels on CPUs, and nearer): every output is within
    half a bf16 unit of the float64 GELU. Keras' bf16 GELU, which rounds after
    each op, is not (the bound can fail)."""
    from numpy_reference import gelu_exact, gelu_tanh
    from tf_mbalign.modeling.bert_encoder import _ACTIVATIONS

    reference = {"gelu": gelu_exact, "gelu_approximate": gelu_tanh}[name]
    assert _gelu_bound_violations(_ACTIVATIONS[name], reference) == 0
    keras_bf16 = lambda x: keras.activations.gelu(x, approximate=name != "gelu")  # noqa: E731
    assert _gelu_bound_violations(keras_bf16, reference) > 0
    # float32 inputs: Keras' GELU itself.
    x = tf.random.stateless_normal([64], (1, 2)) * 3.0
    np.testing.assert_array_equal(_ACTIVATIONS[name](x).numpy(),
                                  keras.activations.gelu(x, approximate=name != "gelu").numpy())
