"""Fault tolerance: SIGKILL anywhere, damaged checkpoints, NaN/Inf steps, SIGTERM.

The kill test and the checkpoint tests share one uninterrupted reference run
(a training binary in its own process, started once per module and running
beside the first killed attempt).
"""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import kill_harness
from conftest import REPO_ROOT, free_ports, tiny_train_config
from tf_mbalign.training import checkpointing
from tf_mbalign.training.fault_injection import FAULT_ENV
from tf_mbalign.training.trainer import AlignmentRun, NonFiniteError

TRAIN_STEPS, WARMUP, EVERY = 12, 2, 3
TOTAL = TRAIN_STEPS + WARMUP


class _Reference:
    """The uninterrupted run, started in the background."""

    def __init__(self, work_dir):
        self.model_dir = os.path.join(work_dir, "reference")
        self.log = os.path.join(work_dir, "reference.log")
        self.process = kill_harness.start_training(self.model_dir, TRAIN_STEPS, EVERY, self.log)

    def wait(self):
        returncode = self.process.wait(timeout=400)
        if returncode != 0:
            with open(self.log, encoding="utf-8", errors="replace") as f:
                pytest.fail(f"the reference run failed ({returncode}):\n{f.read()[-3000:]}")
        return self.model_dir


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return _Reference(str(tmp_path_factory.mktemp("reference")))


def _config(model_dir, **overrides):
    """The kill harness's run as a TrainConfig (same flags as its binary calls)."""
    values = dict(train_steps=TRAIN_STEPS, head_warmup_steps=WARMUP, checkpoint_every=EVERY,
                  dropout=0.1, keep_checkpoints=3)
    values.update(overrides)
    return tiny_train_config(model_dir, **values)


# === 1. SIGKILL anywhere, resume exactly ===

@pytest.mark.slow
def test_sigkill_at_random_steps_and_inside_a_save_resumes_exactly(tmp_path, reference):
    seed = int(os.environ.get("TF_MBALIGN_KILL_SEED", random.SystemRandom().randrange(10**6)))
    print(f"kill test seed {seed} (TF_MBALIGN_KILL_SEED={seed} reproduces it)", flush=True)
    model_dir, attempts = kill_harness.run_with_kills(
        str(tmp_path), ["step", "save", "step"], TRAIN_STEPS, EVERY, seed)
    context = f"seed {seed} (TF_MBALIGN_KILL_SEED reproduces it); attempts {attempts}"
    assert all(a["killed"] for a in attempts[:-1]), context
    assert [a["kind"] for a in attempts[:-1]].count("save") >= 1, context
    # The kill inside the save left an uncommitted checkpoint; the next start said so.
    with open(os.path.join(str(tmp_path), "killed.log"), encoding="utf-8") as f:
        log = f.read()
    assert "removed unfinished checkpoint writes" in log, context
    assert "Traceback" not in log, context

    report = _assert_resumed_exactly(reference.wait(), model_dir, [], context)
    # What was compared: queue + pointer, key encoder, both optimizers, data position.
    names = "\n".join(report["variable_names"])
    for part in ("key_queue/keys", "key_queue/pointer", "key_queue/pair_ids", "key_encoder",
                 "optimizer/_variables", "head_optimizer/_variables", "examples_consumed",
                 "rng_states"):
        assert part in names, part
    print(f"\nkill test: seed {seed}, {len(attempts) - 1} kills, "
          f"loss diff {report['max_loss_rel_diff']}, weight diff {report['max_weight_diff']}, "
          f"{report['variables_compared']} variables")


@pytest.fixture(scope="module")
def prepared_demo(tmp_path_factory):
    """The demo corpus prepared for the tiny encoder (4 shards per language)."""
    return kill_harness.prepare_demo(str(tmp_path_factory.mktemp("prepared") / "demo"))


# Not `numerics` tests (BUILD_NOTES.md, "Numerical tolerances"): the killed
# and the uninterrupted run are made by the same kernels in the same order, so
# they agree to 1e-6 (in practice bit for bit) whichever kernels the CPU has,
# as long as those are deterministic; that each kernel path is, is what the
# numerics rerun of tests/test_training.py::test_resume_gives_the_same_per_step_losses
# checks, in one process instead of a dozen.
def _assert_resumed_exactly(reference_dir, model_dir, attempts, context):
    assert all(a["killed"] for a in attempts[:-1]), context
    report = kill_harness.compare_runs(reference_dir, model_dir, TOTAL)
    assert report["steps_in_order"] and report["positions_in_order"], (report, context)
    assert report["fingerprints_equal"], context
    assert report["batches_repeated"] == 0 and report["batches_skipped"] == 0, context
    assert report["max_loss_rel_diff"] <= 1e-6, (report["max_loss_rel_diff"], context)
    assert report["max_weight_diff"] <= 1e-6, (report["max_weight_diff"], context)
    assert report["mismatched_variables"] == [], context
    return report


@pytest.mark.slow
@pytest.mark.parametrize("workers,kills", [
    (1, ["step", "save"]), pytest.param(2, ["step"], marks=pytest.mark.distributed)])
def test_sigkill_on_the_streamed_path_resumes_exactly(tmp_path, prepared_demo, workers, kills):
    """The kill harness on a prepared corpus (shards streamed per worker):
    one worker killed after a random step and inside a checkpoint commit;
    two local workers killed together after a random step (each attempt
    costs two processes, ~3 min on the 2 shared cores)."""
    seed = int(os.environ.get("TF_MBALIGN_KILL_SEED", random.SystemRandom().randrange(10**6)))
    print(f"kill test seed {seed} (TF_MBALIGN_KILL_SEED={seed} reproduces it)", flush=True)
    reference_dir = str(tmp_path / "reference")
    reference = kill_harness.start_training(reference_dir, TRAIN_STEPS, EVERY,
                                            str(tmp_path / "reference.log"),
                                            corpus=prepared_demo, workers=workers)
    model_dir, attempts = kill_harness.run_with_kills(
        str(tmp_path), kills, TRAIN_STEPS, EVERY, seed, corpus=prepared_demo, workers=workers)
    assert reference.wait(timeout=600) == 0, open(tmp_path / "reference.log").read()[-3000:]
    context = f"seed {seed}, {workers} worker(s); attempts {attempts}"
    with open(tmp_path / "killed.log", encoding="utf-8") as f:
        log = f.read()
    assert "Traceback" not in log, context
    assert f"prepared in {prepared_demo[len('prepared:'):]}" in log, context  # streamed
    report = _assert_resumed_exactly(reference_dir, model_dir, attempts, context)
    history = kill_harness.read_metrics(model_dir)
    assert history[1]["queue_fill"] == 16  # with 2 workers: both workers' keys
    print(f"\nstreamed kill test ({workers} worker(s)): seed {seed}, "
          f"{len(attempts) - 1} kills, loss diff {report['max_loss_rel_diff']}, weight diff "
          f"{report['max_weight_diff']}, {report['variables_compared']} variables")


def test_every_kill_plan_has_a_save_to_kill_inside():
    """A save kill has a target wherever the earlier kills left the run
    (TF_MBALIGN_KILL_SEED=361128 once found none: its step kill had passed
    the last periodic save)."""
    for resumed_from in range(TOTAL):
        saves = kill_harness.save_steps(resumed_from, TOTAL, EVERY)
        assert saves and all(resumed_from < s <= TOTAL for s in saves), (resumed_from, saves)
        assert TOTAL in saves
    assert kill_harness.save_steps(0, TOTAL, EVERY) == [3, 6, 9, 12, 14]
    assert kill_harness.save_steps(12, TOTAL, EVERY) == [14]
    assert kill_harness.save_steps(4, TOTAL, EVERY, max_ahead=3) == [6]


# === 2. Checkpoint integrity ===

def _copy_run(reference, tmp_path):
    target = str(tmp_path / "run")
    shutil.copytree(reference.wait(), target)
    return target, os.path.join(target, "checkpoints")


def _restore(model_dir):
    warnings = []
    run = AlignmentRun(_config(model_dir), log=lambda m: None, warn=warnings.append)
    return run, run.restore(), warnings


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _flip_bytes(path):
    with open(path, "r+b") as f:
        data = bytearray(f.read())
        middle = len(data) // 2
        data[middle:middle + 8] = bytes(b ^ 0xFF for b in data[middle:middle + 8])
        f.seek(0)
        f.write(bytes(data))


@pytest.mark.parametrize("damage,file_name", [
    (_truncate, f"ckpt-{TOTAL}.data-00000-of-00001"),
    (_flip_bytes, f"ckpt-{TOTAL}.data-00000-of-00001"),
    (_flip_bytes, f"ckpt-{TOTAL}.index"),
])
def test_damaged_latest_checkpoint_falls_back_with_a_warning(reference, tmp_path, damage,
                                                             file_name):
    model_dir, checkpoints = _copy_run(reference, tmp_path)
    size_before = os.path.getsize(os.path.join(checkpoints, file_name))
    damage(os.path.join(checkpoints, file_name))
    assert os.path.getsize(os.path.join(checkpoints, file_name)) <= size_before
    run, restored, warnings = _restore(model_dir)
    previous = TOTAL - (TOTAL % EVERY or EVERY)  # ckpt-12 before ckpt-14
    assert restored == os.path.join(checkpoints, f"ckpt-{previous}")
    assert int(run.step.numpy()) == previous
    assert int(run.state.examples_consumed.numpy()) == previous * kill_harness.GLOBAL_BATCH
    assert len(warnings) == 1
    assert f"ckpt-{TOTAL}" in warnings[0] and f"ckpt-{previous}" in warnings[0]
    assert ("truncated" in warnings[0]) == (damage is _truncate)
    # The restored weights are the previous checkpoint's, bit for bit.
    values = kill_harness.checkpoint_values(restored)
    queue = next(v for k, v in values.items() if "key_queue/keys" in k)
    np.testing.assert_array_equal(run.aligner.key_queue.keys.numpy(), queue)


def test_every_checkpoint_damaged_is_an_error_not_a_fresh_start(reference, tmp_path):
    model_dir, checkpoints = _copy_run(reference, tmp_path)
    for step in checkpointing.committed_steps(checkpoints):
        _flip_bytes(os.path.join(checkpoints, f"ckpt-{step}.data-00000-of-00001"))
    with open(os.path.join(model_dir, "metrics.jsonl"), encoding="utf-8") as f:
        metrics_before = f.read()
    run = AlignmentRun(_config(model_dir, train_steps=TRAIN_STEPS + 2), log=lambda m: None)
    with pytest.raises(checkpointing.CheckpointError) as info:
        run.run()
    message = str(info.value)
    for step in checkpointing.committed_steps(checkpoints):
        assert f"ckpt-{step}" in message
    assert "Nothing was trained" in message and "--model_dir" in message
    assert int(run.step.numpy()) == 0
    with open(os.path.join(model_dir, "metrics.jsonl"), encoding="utf-8") as f:
        assert f.read() == metrics_before  # nothing trained, nothing trimmed


def test_lost_state_file_and_leftovers_do_not_hide_committed_checkpoints(reference, tmp_path):
    model_dir, checkpoints = _copy_run(reference, tmp_path)
    os.remove(os.path.join(checkpoints, "checkpoint"))
    # Leftovers of a save killed before its commit: staging folder, renamed data file.
    os.makedirs(os.path.join(checkpoints, f".staging-{TOTAL + 1}"))
    shutil.copy(os.path.join(checkpoints, f"ckpt-{TOTAL}.data-00000-of-00001"),
                os.path.join(checkpoints, f"ckpt-{TOTAL + 1}.data-00000-of-00001"))
    messages = []
    run = AlignmentRun(_config(model_dir), log=messages.append, warn=messages.append)
    assert run.restore() == os.path.join(checkpoints, f"ckpt-{TOTAL}")
    assert any("removed unfinished checkpoint writes" in m and f"ckpt-{TOTAL + 1}" in m
               for m in messages)
    assert not os.path.exists(os.path.join(checkpoints, f"ckpt-{TOTAL + 1}.data-00000-of-00001"))


# === 3. Numerical faults ===

def _batch_sources(run, step):
    """Corpus lines of the global batch that step `step` (1-based) trains on."""
    from tf_mbalign.data import pipeline

    config = run.config
    dataset = pipeline.build_dataset(run.corpus, run.bundle.tokenizer, config.pipeline_config(),
                                     config.global_batch_size,
                                     start_example=(step - 1) * config.global_batch_size)
    pair_ids = next(iter(dataset))["pair_id"].numpy()
    return [run.corpus.sources[i] for i in pair_ids]


@pytest.mark.parametrize("fault", ["nan_loss", "inf_gradient"])
def test_non_finite_step_halts_naming_step_and_lines(tmp_path, monkeypatch, fault):
    monkeypatch.setenv(FAULT_ENV, f"{fault}@3")
    model_dir = tmp_path / "run"
    warnings = []
    run = AlignmentRun(tiny_train_config(model_dir, train_steps=6, checkpoint_every=2,
                                         steps_per_loop=2),
                       log=lambda m: None, warn=warnings.append)
    with pytest.raises(NonFiniteError) as info:
        run.run()
    message = str(info.value)
    assert message.startswith("step 3: ")
    assert ("the loss is nan" in message) == (fault == "nan_loss")
    assert ("gradient norm is not finite" in message) == (fault == "inf_gradient")
    for source in _batch_sources(run, 3):
        assert source in message
    assert "examples 16..23" in message and "ckpt-2 (step 2)" in message
    assert any(FAULT_ENV in w for w in warnings)
    # Nothing after the last good checkpoint was saved; it restores and is finite.
    checkpoints = os.path.join(str(model_dir), "checkpoints")
    assert checkpointing.committed_steps(checkpoints) == [2]
    values = kill_harness.checkpoint_values(os.path.join(checkpoints, "ckpt-2"))
    assert all(np.all(np.isfinite(v)) for v in values.values() if np.asarray(v).dtype.kind == "f")
    with open(model_dir / "metrics.jsonl") as f:
        assert [json.loads(line)["step"] for line in f] == [2]


def test_mixed_float16_overflow_skips_the_step_and_leaves_the_model_unchanged(tmp_path,
                                                                              monkeypatch):
    import keras

    monkeypatch.setenv(FAULT_ENV, "gradient_overflow@2")
    model_dir = tmp_path / "run"
    try:
        run = AlignmentRun(tiny_train_config(model_dir, train_steps=3, checkpoint_every=1,
                                             precision="mixed_float16"),
                           log=lambda m: None, warn=lambda m: None)
        history = run.run()
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert [h["skipped_steps"] for h in history] == [0, 1, 0]
    assert history[1]["loss_scale"] == history[0]["loss_scale"] / 2
    assert all(np.isfinite(h["loss"]) for h in history)
    checkpoints = os.path.join(str(model_dir), "checkpoints")
    after = [kill_harness.checkpoint_values(os.path.join(checkpoints, f"ckpt-{s}"))
             for s in (1, 2, 3)]
    # Everything but the step, the data position, the loss scale and the
    # checkpoint counter is identical before and after the skipped step 2.
    bookkeeping = ("step/", "examples_consumed/", "dynamic_scale", "step_counter",
                   "save_counter")
    compared = [k for k in after[0] if not any(b in k for b in bookkeeping)]
    assert len(compared) > 100
    for name in compared:
        np.testing.assert_array_equal(after[0][name], after[1][name], err_msg=name)
    assert any("key_queue/keys" in k for k in compared)
    assert any("iteration" in k for k in compared)  # the optimizer did not count it
    # Step 3 trains again (the checkpoint names the encoder's weights by the
    # first path that reaches them: the optimizer's tracked variables).
    trained = [k for k in compared if k.startswith("optimizer/_trainable_variables/")]
    changed = [k for k in trained if not np.array_equal(after[1][k], after[2][k])]
    assert len(trained) > 30 and len(changed) > 30


def test_fault_hook_rejects_malformed_values(tmp_path, monkeypatch):
    monkeypatch.setenv(FAULT_ENV, "nan@x")
    with pytest.raises(ValueError, match="KIND@STEP"):
        AlignmentRun(tiny_train_config(tmp_path / "run"))


# === 5. Preemption (SIGTERM) ===

def _wait_for_step(model_dir, processes, step, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if any(r.get("step", 0) >= step for r in kill_harness.read_metrics(model_dir)):
            return
        for p in processes:
            if p.poll() is not None:
                raise AssertionError(f"a worker exited early ({p.returncode}): "
                                     f"{p.communicate()[1][-3000:]}")
        time.sleep(0.02)
    raise TimeoutError(f"step {step} not reached")


def _train_process(model_dir, train_steps, extra=(), env=None):
    args = [sys.executable, "-m", "tf_mbalign.train", *kill_harness.TRAIN_FLAGS,
            f"--model_dir={model_dir}", f"--train_steps={train_steps}", "--checkpoint_every=50",
            *extra]
    full_env = dict(os.environ, PYTHONPATH=REPO_ROOT, PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.Popen(args, cwd=REPO_ROOT, env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_sigterm_saves_and_exits_cleanly(tmp_path):
    model_dir = str(tmp_path / "run")
    process = _train_process(model_dir, 1000)
    _wait_for_step(model_dir, [process], 4)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 42, err[-3000:]
    assert "Traceback" not in err
    logged = [r["step"] for r in kill_harness.read_metrics(model_dir)]
    preempted_at = logged[-1]
    assert f"preempted at step {preempted_at}: saved" in out
    assert logged == list(range(1, preempted_at + 1))
    assert checkpointing.committed_steps(os.path.join(model_dir, "checkpoints"))[0] == preempted_at
    # A restart resumes from that step.
    run = AlignmentRun(_config(model_dir, train_steps=1000, checkpoint_every=50),
                       log=lambda m: None)
    assert run.restore().endswith(f"ckpt-{preempted_at}")
    assert int(run.state.examples_consumed.numpy()) == preempted_at * kill_harness.GLOBAL_BATCH


def _start_workers(model_dir, train_steps):
    workers = [f"127.0.0.1:{p}" for p in free_ports(2)]
    processes = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        processes.append(_train_process(model_dir, train_steps,
                                        ["--strategy=multi_worker_mirrored"],
                                        {"TF_CONFIG": json.dumps(tf_config)}))
    return processes


@pytest.mark.distributed
@pytest.mark.slow
def test_sigterm_to_one_worker_saves_on_all_and_a_restart_resumes(tmp_path):
    model_dir = str(tmp_path / "mw")
    chief, worker = _start_workers(model_dir, 1000)
    _wait_for_step(model_dir, [chief, worker], 4)
    worker.send_signal(signal.SIGTERM)  # Not the chief: it must learn from the worker.
    outputs = [p.communicate(timeout=180) for p in (chief, worker)]
    for p, (out, err) in zip((chief, worker), outputs):
        assert p.returncode == 42, err[-3000:]
        assert "Traceback" not in err
    history = kill_harness.read_metrics(model_dir)
    preempted_at = history[-1]["step"]
    assert f"preempted at step {preempted_at}: saved" in outputs[0][0]
    assert checkpointing.committed_steps(os.path.join(model_dir, "checkpoints"))[0] == preempted_at
    assert os.path.exists(os.path.join(model_dir, "checkpoints", "checkpoint"))
    assert all(np.isfinite(h["loss"]) for h in history)
    # Both workers contributed: the queue holds 2 steps x 8 gathered keys.
    assert history[1]["queue_fill"] == 16

    # Restart both workers: they resume at that step and train 2 more.
    target = preempted_at + 2
    chief, worker = _start_workers(model_dir, target - WARMUP)
    outputs = [p.communicate(timeout=300) for p in (chief, worker)]
    for p, (out, err) in zip((chief, worker), outputs):
        assert p.returncode == 0, err[-3000:]
    assert f"ckpt-{preempted_at} at step {preempted_at}" in outputs[0][0]
    assert [r["step"] for r in kill_harness.read_metrics(model_dir)] == list(range(1, target + 1))
