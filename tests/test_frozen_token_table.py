"""`train_token_embeddings=False`: the token table frozen, out of the
optimizer, the EMA and the checkpoints' optimizer state; a run resumes only
with the value it started with."""

import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import tiny_train_config
from tf_mbalign.training.checkpointing import CheckpointError
from tf_mbalign.training.trainer import AlignmentRun


def _quiet_run(model_dir, **overrides):
    values = dict(train_steps=3, head_warmup_steps=1, weight_decay=0.1)
    values.update(overrides)
    return AlignmentRun(tiny_train_config(model_dir, **values), log=lambda *_: None)


def _table(run):
    return run.aligner.encoder.token_embedding.embeddings


def _slots_shaped_like(optimizer, variable):
    return [v for v in optimizer.variables if tuple(v.shape) == tuple(variable.shape)]


def _checkpoint_elements(model_dir):
    prefix = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    return sum(int(np.prod(shape)) for _, shape in tf.train.list_variables(prefix))


def _first_layer_kernel(encoder):
    return next(w for w in encoder.weights if "transformer_layer_0" in w.path
                and w.path.endswith("kernel"))


# MoCo's queue with exact TLM (the EMA, and the tied decoder's separate
# gradient with the table out of the trained variables); in-batch negatives
# with sampled TLM negatives (the decoder reads frozen rows).
@pytest.mark.parametrize("negatives,tlm_sampled_negatives", [("queue", 0), ("in_batch", 16)])
def test_a_frozen_table_is_not_trained_decayed_or_checkpointed_with_moments(
        tmp_path, negatives, tlm_sampled_negatives):
    settings = dict(contrastive_negatives=negatives, tlm_sampled_negatives=tlm_sampled_negatives)
    trained = _quiet_run(tmp_path / "trained", **settings)
    frozen = _quiet_run(tmp_path / "frozen", train_token_embeddings=False, **settings)
    table_before = _table(frozen).numpy()
    kernel_before = _first_layer_kernel(frozen.aligner.encoder).numpy()
    trained_table_before = _table(trained).numpy()
    trained.run()
    frozen.run()

    # No op writes a frozen variable, so it keeps its exact bits; the trained
    # run's table moves (lr 1e-3 for 3 AdamW steps with decay 0.1: ~1e-3).
    np.testing.assert_array_equal(_table(frozen).numpy(), table_before)
    assert np.abs(_table(trained).numpy() - trained_table_before).max() > 1e-5
    # The rest of the encoder trains.
    assert np.abs(_first_layer_kernel(frozen.aligner.encoder).numpy()
                  - kernel_before).max() > 1e-5
    # AdamW keeps two moments of the trained table and none of the frozen one
    # (the demo vocabulary's table shape is not shared by another variable).
    assert len(_slots_shaped_like(trained.alignment_step.optimizer, _table(trained))) == 2
    assert _slots_shaped_like(frozen.alignment_step.optimizer, _table(frozen)) == []
    # So the checkpoint holds exactly two tables fewer (element counts: integers).
    table_size = int(np.prod(_table(frozen).shape))
    assert (_checkpoint_elements(tmp_path / "frozen")
            == _checkpoint_elements(tmp_path / "trained") - 2 * table_size)
    if negatives == "queue":
        key_encoder = frozen.aligner.key_encoder
        # The key encoder's copy of the frozen table is the table, bit for bit
        # (never updated); its other weights follow the EMA.
        np.testing.assert_array_equal(key_encoder.token_embedding.embeddings.numpy(),
                                      table_before)
        assert np.abs(_first_layer_kernel(key_encoder).numpy() - kernel_before).max() > 0
        assert all(query.trainable for _, query in frozen.aligner.momentum_variables())


def test_a_run_resumes_only_with_the_table_setting_it_started_with(tmp_path):
    model_dir = tmp_path / "run"
    _quiet_run(model_dir, train_steps=1).run()
    saved = sorted(os.listdir(model_dir / "checkpoints"))
    with pytest.raises(CheckpointError, match="--train_token_embeddings=true"):
        _quiet_run(model_dir, train_steps=2, train_token_embeddings=False).run()
    assert sorted(os.listdir(model_dir / "checkpoints")) == saved
    # The same setting resumes.
    resumed = _quiet_run(model_dir, train_steps=2)
    resumed.run()
    assert int(resumed.step.numpy()) == 3
