"""The alignment step's gradient of the tied token table: the decoder's part
taken apart from the lookups' and added in place gives the tape's gradient."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import tiny_train_config
from tf_mbalign.training import optimization


def test_lookup_rows_are_added_into_the_dense_gradient():
    dense = tf.constant(np.arange(12, dtype=np.float32).reshape(4, 3))
    rows = tf.IndexedSlices(values=tf.constant([[1.0, 1.0, 1.0], [10.0, 20.0, 30.0],
                                                [2.0, 2.0, 2.0]]),
                            indices=tf.constant([3, 0, 3]), dense_shape=tf.constant([4, 3]))
    got = optimization.add_lookup_gradient(dense, rows)
    expected = dense.numpy().copy()
    expected[3] += 3.0  # a repeated row adds up
    expected[0] += [10.0, 20.0, 30.0]
    np.testing.assert_array_equal(got.numpy(), expected)
    np.testing.assert_array_equal(optimization.add_lookup_gradient(dense, dense).numpy(),
                                  2 * dense.numpy())
    assert optimization.add_lookup_gradient(dense, None) is dense
    assert optimization.add_lookup_gradient(None, rows) is rows


def _steps_from_one_start(tmp_path, negatives):
    from tf_mbalign.modeling import encoders
    from tf_mbalign.modeling.bert_encoder import copy_weights
    from tf_mbalign.training.alignment_step import build_alignment_step

    config = tiny_train_config(tmp_path, contrastive_negatives=negatives)
    steps = []
    for _ in range(2):
        keras.utils.set_random_seed(0)
        bundle = encoders.load_encoder(config.encoder, dropout=0.0)
        steps.append(build_alignment_step(config, bundle))
    copy_weights(steps[0].aligner.weights, steps[1].aligner.weights)
    steps[1].separate_decoder_gradient = False
    return steps, config, bundle.tokenizer


def _table_densifications(graph, table_shape):
    """UnsortedSegmentSum ops (an IndexedSlices made dense) of the table's shape."""
    found = []
    for op in graph.get_operations():
        if op.type == "UnsortedSegmentSum" and op.outputs[0].shape.as_list() == table_shape:
            found.append(op.name)
    return found


SGD_LEARNING_RATE = 1e-2
FLOAT32_EPS = float(np.finfo(np.float32).eps)


def _with_plain_sgd(step):
    """The step with plain SGD in place of its AdamW: a weight moves by
    exactly -lr * g, so weights after the steps compare the gradients
    themselves. (Adam divides each gradient by its own running RMS: a weight
    whose gradient is ~0 moves by up to lr whatever the sign of a 1e-7
    rounding difference, which measures the CPU's kernels, not the code.)"""
    step.optimizer = keras.optimizers.SGD(SGD_LEARNING_RATE)
    step.optimizer.build(step.aligner.trainable_variables)
    return step


# tolerance: plain SGD makes weights linear in the gradients: 1e-3 of each variable's
# displacement (the gradients' float32 summation noise) plus an ulp of the weights a step.
@pytest.mark.numerics
@pytest.mark.parametrize("negatives", ["queue", "in_batch"])
def test_separate_decoder_gradient_trains_as_the_tape_does(tmp_path, negatives):
    from tf_mbalign.data import corpus, pipeline

    (separate, taped), config, tokenizer = _steps_from_one_start(tmp_path, negatives)
    separate, taped = _with_plain_sgd(separate), _with_plain_sgd(taped)
    table = separate.aligner.tied_table()
    assert table is not None and any(v is table for v in separate.aligner.trained_variables(True))
    batches = list(pipeline.build_dataset(corpus.read_corpus("demo"), tokenizer,
                                          config.pipeline_config(),
                                          config.global_batch_size).take(3))
    start = [np.asarray(w.numpy(), np.float64) for w in taped.aligner.weights]
    strategy = tf.distribute.get_strategy()
    runs, results = {}, {}
    for name, step in (("separate", separate), ("taped", taped)):
        runs[name] = tf.function(lambda batch, step=step: strategy.run(step, args=(batch,)))
        results[name] = [{k: v.numpy() for k, v in runs[name](b).items()} for b in batches]
    for got, expected in zip(results["separate"], results["taped"]):
        # float32 losses of the same weights summed in another order: ~1e-7 relative.
        np.testing.assert_allclose(got["loss"], expected["loss"], rtol=1e-5)
    # Each variable's displacement over the steps is lr * (sum of its
    # gradients): the two ways agree to the gradients' float32 summation
    # noise (<= 1e-3 of the largest displacement of that variable; a dropped
    # or doubled lookup gradient is O(1) of it), plus the rounding of the
    # weights themselves (one ulp of max|w| per step and operand).
    moved = 0.0
    for a, b, w0 in zip(separate.aligner.weights, taped.aligner.weights, start):
        a, b = np.asarray(a.numpy(), np.float64), np.asarray(b.numpy(), np.float64)
        displacement = np.abs(b - w0).max() if b.size else 0.0
        bound = 1e-3 * displacement + 2 * len(batches) * FLOAT32_EPS * max(1.0, np.abs(b).max())
        np.testing.assert_allclose(a, b, rtol=0, atol=bound)
        moved = max(moved, displacement)
    table_index = next(i for i, v in enumerate(separate.aligner.weights) if v is table)
    assert np.abs(table.numpy() - start[table_index]).max() > 1e-6  # the table did train
    assert moved > 1e-4  # the steps trained
    # Only the tape's way makes the lookups' rows a dense table.
    shape = list(table.shape)
    graph = {name: run.get_concrete_function(batches[0]).graph for name, run in runs.items()}
    assert _table_densifications(graph["taped"], shape)
    assert not _table_densifications(graph["separate"], shape)
