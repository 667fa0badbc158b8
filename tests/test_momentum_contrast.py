"""MoCo mechanics: EMA update, FIFO queue with wrap-around, logits, restore."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO_ROOT, run_module  # noqa: E402
from tf_mbalign.modeling import momentum_contrast as moco


# tolerance: one elementwise EMA of O(1) values: float32 rtol 1e-6.
@pytest.mark.numerics
def test_momentum_update_formula():
    keys = [keras.Variable(np.full((2, 3), 4.0, np.float32)), keras.Variable(np.float32(-1.0))]
    queries = [keras.Variable(np.full((2, 3), 2.0, np.float32)), keras.Variable(np.float32(3.0))]
    moco.momentum_update(keys, queries, 0.9)
    np.testing.assert_allclose(keys[0].numpy(), 0.9 * 4.0 + 0.1 * 2.0, rtol=1e-6)
    np.testing.assert_allclose(keys[1].numpy(), 0.9 * -1.0 + 0.1 * 3.0, rtol=1e-6)
    # The query side is never changed by the update.
    np.testing.assert_array_equal(queries[0].numpy(), np.full((2, 3), 2.0))


# tolerance: one elementwise EMA of O(1) values: float32 rtol 1e-6.
@pytest.mark.numerics
def test_momentum_update_skips_when_told():
    keys = [tf.Variable(np.full((2, 3), 4.0, np.float32)), tf.Variable(np.float32(-1.0))]
    queries = [tf.Variable(np.full((2, 3), 2.0, np.float32)), tf.Variable(np.float32(3.0))]

    @tf.function
    def update(apply):
        moco.momentum_update(keys, queries, 0.9, apply=apply)

    update(tf.constant(False))
    np.testing.assert_array_equal(keys[0].numpy(), np.full((2, 3), 4.0))
    update(tf.constant(True))
    np.testing.assert_allclose(keys[0].numpy(), 0.9 * 4.0 + 0.1 * 2.0, rtol=1e-6)
    np.testing.assert_allclose(keys[1].numpy(), 0.9 * -1.0 + 0.1 * 3.0, rtol=1e-6)


def test_queue_is_fifo_and_wraps_around():
    queue = moco.KeyQueue(queue_size=5, dim=1)
    assert not queue.valid_mask().numpy().any()
    queue.enqueue(tf.constant([[1.0], [2.0], [3.0]]))
    assert queue.keys.numpy()[:, 0].tolist() == [1, 2, 3, 0, 0]
    assert int(queue.pointer.numpy()) == 3 and int(queue.filled.numpy()) == 3
    assert queue.valid_mask().numpy().tolist() == [True, True, True, False, False]
    queue.enqueue(tf.constant([[4.0], [5.0], [6.0]]))  # wraps: 6 overwrites the oldest
    assert queue.keys.numpy()[:, 0].tolist() == [6, 2, 3, 4, 5]
    assert int(queue.pointer.numpy()) == 1 and int(queue.filled.numpy()) == 5
    queue.enqueue(tf.constant([[7.0], [8.0]]))
    assert queue.keys.numpy()[:, 0].tolist() == [6, 7, 8, 4, 5]


def test_queue_rejects_more_keys_than_it_holds():
    queue = moco.KeyQueue(queue_size=2, dim=1)
    with pytest.raises(ValueError, match="at least one global batch"):
        queue.enqueue(tf.zeros([3, 1]))


# tolerance: dot products of exact small values: default rtol 1e-7.
@pytest.mark.numerics
def test_contrastive_logits_positive_first_and_invalid_masked():
    q = tf.math.l2_normalize(tf.constant([[1.0, 0.0], [0.0, 1.0]]), axis=1)
    k = tf.constant([[1.0, 0.0], [0.0, 1.0]])
    queue = tf.constant([[0.0, 1.0], [1.0, 0.0], [0.6, 0.8]])
    valid = tf.constant([True, True, False])
    logits = moco.contrastive_logits(q, k, queue, valid, temperature=0.5).numpy()
    np.testing.assert_allclose(logits[:, 0], [2.0, 2.0])
    np.testing.assert_allclose(logits[:, 1:3], [[0.0, 2.0], [2.0, 0.0]])
    assert (logits[:, 3] < -1e8).all()


@pytest.mark.distributed
def test_keys_of_all_replicas_are_gathered_into_one_queue(tmp_path):
    out = tmp_path / "gathered.json"
    result = run_module([os.path.join(REPO_ROOT, "tests", "distributed_checks.py"),
                         "gathered_keys", str(out)])
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    # Step 0: replica 0 sends keys 0,1 and replica 1 sends 2,3 -> slots 0..3.
    assert [r[0] for r in report["rows"][0]] == [0, 1, 2, 3, 0, 0]
    # Step 1: 10,11 | 12,13 -> slots 4,5 then wrap to 0,1.
    assert [r[0] for r in report["rows"][1]] == [12, 13, 2, 3, 10, 11]
    assert report["pointer"] == 2 and report["filled"] == 6
    assert report["pair_ids"] == [112, 113, 102, 103, 110, 111]
    # Every device holds the same (global) queue.
    assert report["per_device"][0] == report["per_device"][1]


def test_queue_key_encoder_and_pointer_restored_bit_for_bit(tmp_path):
    from conftest import tiny_train_config
    from tf_mbalign.training.trainer import AlignmentRun

    config = tiny_train_config(tmp_path / "run", train_steps=3, queue_size=20)
    first = AlignmentRun(config)
    first.run()  # 3 steps x 8 keys into a queue of 20: wrapped once.
    assert int(first.aligner.key_queue.pointer.numpy()) == 4
    second = AlignmentRun(config)
    assert second.restore()
    a, b = first.aligner, second.aligner
    np.testing.assert_array_equal(a.key_queue.keys.numpy(), b.key_queue.keys.numpy())
    assert int(b.key_queue.pointer.numpy()) == 4 and int(b.key_queue.filled.numpy()) == 20
    for x, y in zip(a.key_encoder.get_weights(), b.key_encoder.get_weights()):
        np.testing.assert_array_equal(x, y)
    for x, y in zip(a.encoder.get_weights(), b.encoder.get_weights()):
        np.testing.assert_array_equal(x, y)
    # The key encoder is an EMA, so after training it differs from the encoder.
    assert any(not np.array_equal(x, y) for x, y in
               zip(a.key_encoder.get_weights(), a.encoder.get_weights()))
    assert int(second.state.examples_consumed.numpy()) == 24


# tolerance: a dot product of unit vectors: pytest.approx's 1e-6 relative.
@pytest.mark.numerics
def test_a_pairs_own_older_key_is_not_its_negative():
    queue = moco.KeyQueue(queue_size=4, dim=2)
    queue.enqueue(tf.constant([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]),
                  pair_ids=tf.constant([10, 11, 12], tf.int64))
    mask = queue.valid_mask(tf.constant([11, 99], tf.int64)).numpy()
    assert mask.tolist() == [[True, False, True, False], [True, True, True, False]]
    q = tf.constant([[0.0, 1.0], [0.0, 1.0]])
    logits = moco.contrastive_logits(q, q, tf.convert_to_tensor(queue.keys), mask, 1.0).numpy()
    # Query 0 (pair 11) does not see its own older key; query 1 does.
    assert logits[0, 2] < -1e8 and logits[1, 2] == pytest.approx(1.0)
