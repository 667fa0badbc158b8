"""Checkpoints of older runs (a TF state file, no manifests): `_legacy_candidates`,
which restore and leftover removal use."""

import os

import pytest
import tensorflow as tf

from tf_mbalign.training import checkpointing


def _legacy_run(directory, steps, max_to_keep=2):
    """Saves `steps` the way runs without manifests did (tf.train.CheckpointManager)."""
    value = tf.Variable(0.0)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(value=value), str(directory),
                                         max_to_keep=max_to_keep)
    for step in steps:
        value.assign(float(step))
        manager.save(checkpoint_number=step)
    return [os.path.join(str(directory), f"ckpt-{step}") for step in steps]


def _write_state(directory, *paths, latest=None):
    lines = [f'model_checkpoint_path: "{latest or paths[-1]}"']
    lines += [f'all_model_checkpoint_paths: "{p}"' for p in paths]
    (directory / checkpointing.STATE_FILE).write_text("\n".join(lines) + "\n")


def test_state_file_checkpoints_newest_first_by_step_number(tmp_path):
    _legacy_run(tmp_path, [8, 9, 10])
    assert checkpointing._legacy_candidates(str(tmp_path)) == [
        str(tmp_path / "ckpt-10"), str(tmp_path / "ckpt-9")]  # 10 > 9: numbers, not text
    # Absolute paths are kept, duplicates dropped; without the list, the latest one counts.
    _write_state(tmp_path, str(tmp_path / "ckpt-9"), "ckpt-9", "ckpt-2")
    assert checkpointing._legacy_candidates(str(tmp_path)) == [
        str(tmp_path / "ckpt-9"), str(tmp_path / "ckpt-2")]
    (tmp_path / checkpointing.STATE_FILE).write_text('model_checkpoint_path: "ckpt-4"\n')
    assert checkpointing._legacy_candidates(str(tmp_path)) == [str(tmp_path / "ckpt-4")]


@pytest.mark.parametrize("state", [None, "this is { not a state file\n"])
def test_no_or_unreadable_state_file_names_nothing(tmp_path, state):
    if state is not None:
        (tmp_path / checkpointing.STATE_FILE).write_text(state)
    assert checkpointing._legacy_candidates(str(tmp_path)) == []
    assert checkpointing._legacy_candidates(str(tmp_path / "absent")) == []


def test_restore_uses_the_newest_legacy_checkpoint_and_falls_back(tmp_path):
    prefixes = _legacy_run(tmp_path, [1, 2, 3])
    value = tf.Variable(-1.0)
    warnings = []
    restored = checkpointing.restore_latest(tf.train.Checkpoint(value=value), str(tmp_path),
                                            warnings.append)
    assert restored == prefixes[2] and float(value.numpy()) == 3.0 and not warnings
    os.remove(prefixes[2] + ".index")  # Damaged newest: the one before it, with a warning.
    restored = checkpointing.restore_latest(tf.train.Checkpoint(value=value), str(tmp_path),
                                            warnings.append)
    assert restored == prefixes[1] and float(value.numpy()) == 2.0
    assert len(warnings) == 1 and prefixes[2] in warnings[0] and prefixes[1] in warnings[0]


def test_leftover_removal_keeps_legacy_checkpoints(tmp_path):
    prefixes = _legacy_run(tmp_path, [1, 2])
    (tmp_path / "ckpt-7.index").write_bytes(b"unfinished")
    writer = checkpointing.CheckpointWriter(tf.train.Checkpoint(value=tf.Variable(0.0)),
                                            str(tmp_path), log=lambda *_: None)
    assert writer.remove_leftovers() == ["ckpt-7.index"]
    for prefix in prefixes:
        assert os.path.exists(prefix + ".index")
        assert any(name.startswith(os.path.basename(prefix) + ".data-")
                   for name in os.listdir(tmp_path))
