"""Sentence representations, the learning-rate schedule, optimizer settings."""

import numpy as np
import pytest
import tensorflow as tf

from tf_mbalign.modeling.aligner import sentence_representation
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
