"""Sentence representations, the learning-rate schedule, optimizer settings."""

import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_mbalign.modeling.pooling import sentence_representation
from tf_mbalign.training import optimization


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
    assert set(losses) == {"loss", "tlm_loss", "moco_loss"}
    np.testing.assert_allclose(float(losses["loss"]),
                               float(losses["tlm_loss"]) + float(losses["moco_loss"]), rtol=1e-6)
    assert float(losses["tlm_loss"]) > 0 and np.isfinite(float(losses["moco_loss"]))
