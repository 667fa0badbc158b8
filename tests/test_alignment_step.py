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


@pytest.mark.parametrize("negatives", ["queue", "in_batch"])
def test_separate_decoder_gradient_trains_as_the_tape_does(tmp_path, negatives):
    from tf_mbalign.data import corpus, pipeline

    (separate, taped), config, tokenizer = _steps_from_one_start(tmp_path, negatives)
    table = separate.aligner.tied_table()
    assert table is not None and any(v is table for v in separate.aligner.trained_variables(True))
    batches = list(pipeline.build_dataset(corpus.read_corpus("demo"), tokenizer,
                                          config.pipeline_config(),
                                          config.global_batch_size).take(3))
    start = table.numpy().copy()
    strategy = tf.distribute.get_strategy()
    runs, results = {}, {}
    for name, step in (("separate", separate), ("taped", taped)):
        runs[name] = tf.function(lambda batch, step=step: strategy.run(step, args=(batch,)))
        results[name] = [{k: v.numpy() for k, v in runs[name](b).items()} for b in batches]
    for got, expected in zip(results["separate"], results["taped"]):
        np.testing.assert_allclose(got["loss"], expected["loss"], rtol=1e-5)
    # The weights after three steps: the same up to float32 summation order.
    for a, b in zip(separate.aligner.weights, taped.aligner.weights):
        a, b = np.asarray(a.numpy(), np.float64), np.asarray(b.numpy(), np.float64)
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * max(1.0, np.abs(b).max()))
    assert np.abs(table.numpy() - start).max() > 1e-4  # the table did train
    # Only the tape's way makes the lookups' rows a dense table.
    shape = list(table.shape)
    graph = {name: run.get_concrete_function(batches[0]).graph for name, run in runs.items()}
    assert _table_densifications(graph["taped"], shape)
    assert not _table_densifications(graph["separate"], shape)
