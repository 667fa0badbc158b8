"""Kill a training run with SIGKILL at random moments, resume it, compare.

Used by `tests/test_fault_tolerance.py` (a few kills) and
`benchmarks/kill_resume.py` (N = 20). A run is the training binary on a tiny
random encoder and the demo corpus, in a fresh process each attempt:

- a *step* kill waits until the attempt has logged a randomly chosen step
  beyond its restored checkpoint, sleeps a random 0-60 ms more (so the kill
  lands inside a step, a metrics write or a checkpoint write) and sends
  SIGKILL;
- a *save* kill sets `TF_MBALIGN_TEST_PAUSE_IN_SAVE=N`, waits until the save
  of step N is paused half-way through its commit (data file renamed into
  place, index and manifest not yet) and sends SIGKILL there.

With `corpus="prepared:DIR"` the run streams a prepared corpus
(`streamed_pipeline.py`); with `workers=2` each attempt is two local
MultiWorkerMirroredStrategy workers (fresh ports each time), killed
together, the pause-in-save hook set on the chief only (the other worker
then waits in the next collective until killed).

After the last kill the run is resumed to the end. `compare_runs` then
checks it against an uninterrupted run: per-step losses, per-step batch
fingerprints (hashes of the global batch's pair ids) and data positions, and
every variable of the final checkpoint (model, key encoder, key queue and
pointer, both optimizers, step, data position, dropout RNG states).
"""

import json
import os
import random
import signal
import subprocess
import sys
import time

from conftest import TEST_PRECISION_FLAG, free_ports

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GLOBAL_BATCH = 8
TRAIN_FLAGS = [
    "--encoder=tiny:demo", f"--global_batch_size={GLOBAL_BATCH}",
    "--queue_size=16", "--max_seq_length=48", "--max_sentence_length=24",
    "--max_predictions_per_seq=8", "--learning_rate=1e-3", "--warmup_steps=1",
    "--dropout=0.1", "--head_warmup_steps=2", "--keep_checkpoints=3", "--steps_per_loop=1",
    "--quiet", "--noexport", TEST_PRECISION_FLAG,
    # The before -> after check costs each attempt seconds and resumes on its
    # own (tests/test_held_out_check.py); the kills are about the training state.
    "--noalignment_check",
]


def _env(extra=None):
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, PYTHONUNBUFFERED="1")
    env.pop("TF_MBALIGN_TEST_PAUSE_IN_SAVE", None)
    env.update(extra or {})
    return env


class Workers:
    """The processes of one training attempt, handled as one (worker 0, the
    chief, decides the return code)."""

    def __init__(self, processes):
        self.processes = processes

    def poll(self):
        codes = [p.poll() for p in self.processes]
        return None if None in codes else codes[0]

    def send_signal(self, signal_number):
        for p in self.processes:
            if p.poll() is None:
                p.send_signal(signal_number)

    def kill(self):
        self.send_signal(signal.SIGKILL)

    def wait(self, timeout=None):
        codes = [p.wait(timeout=timeout) for p in self.processes]
        return codes[0] if len(set(codes)) == 1 else next(c for c in codes if c)


def start_training(model_dir, train_steps, checkpoint_every, log_path, env=None, corpus="demo",
                   workers=1):
    """Starts the training binary (`workers` local processes); stdout and
    stderr go to `log_path`. Returns a `Workers`."""
    args = [sys.executable, "-m", "tf_mbalign.train", *TRAIN_FLAGS, f"--corpus={corpus}",
            f"--model_dir={model_dir}", f"--train_steps={train_steps}",
            f"--checkpoint_every={checkpoint_every}"]
    log = open(log_path, "a", encoding="utf-8")
    log.write(f"\n=== {' '.join(args[3:])} {env or ''} workers={workers}\n")
    log.flush()
    if workers == 1:
        return Workers([subprocess.Popen(args, cwd=REPO_ROOT, env=_env(env), stdout=log,
                                         stderr=subprocess.STDOUT)])
    cluster = [f"127.0.0.1:{port}" for port in free_ports(workers)]
    processes = []
    for index in range(workers):
        tf_config = {"cluster": {"worker": cluster}, "task": {"type": "worker", "index": index}}
        extra = dict(env or {}) if index == 0 else {}
        extra["TF_CONFIG"] = json.dumps(tf_config)
        processes.append(subprocess.Popen(
            args + ["--strategy=multi_worker_mirrored"], cwd=REPO_ROOT, env=_env(extra),
            stdout=log, stderr=subprocess.STDOUT))
    return Workers(processes)


def prepare_demo(output, shards_per_language=4):
    """Prepares the demo corpus for the tiny encoder in `output` (in this
    process); returns the `--corpus` value that streams it."""
    from tf_mbalign.data import corpus_preparation
    from tf_mbalign.modeling import encoders

    tokenizer = encoders.load_tokenizer("tiny:demo")
    request = corpus_preparation.PreparationRequest.for_tokenizer(
        "demo", "tiny:demo", tokenizer, shards_per_language=shards_per_language)
    corpus_preparation.prepare_corpus(request, tokenizer, output, log=lambda message: None)
    return f"prepared:{output}"


def read_metrics(model_dir):
    """metrics.jsonl records, skipping a half-written last line."""
    path = os.path.join(model_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except ValueError:
                pass
    return records


def committed_step(model_dir):
    from tf_mbalign.training import checkpointing

    steps = checkpointing.committed_steps(os.path.join(model_dir, "checkpoints"))
    return steps[0] if steps else 0


def _log_mentions_start(log_path, attempt_offset):
    with open(log_path, encoding="utf-8", errors="replace") as f:
        f.seek(attempt_offset)
        return " at step " in f.read()


def _wait(condition, process, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.005)
    process.kill()
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def save_steps(resumed_from, total_steps, checkpoint_every, max_ahead=None):
    """The saves an attempt resumed at `resumed_from` will make: every
    `checkpoint_every` steps and at `total_steps` (never empty while the run
    is unfinished)."""
    last = total_steps if max_ahead is None else min(total_steps, resumed_from + max_ahead)
    saves = [s for s in range(resumed_from + 1, last + 1)
             if s % checkpoint_every == 0 or s == total_steps]
    return saves or [total_steps]


def kill_attempt(model_dir, total_steps, train_steps, checkpoint_every, log_path, kind,
                 rng, max_ahead=None, timeout=300, corpus="demo", workers=1):
    """One attempt ended by SIGKILL; returns what happened.

    The kill lands at most `max_ahead` steps after the restored checkpoint
    (default: anywhere before the last step).
    """
    resumed_from = committed_step(model_dir)
    offset = os.path.getsize(log_path) if os.path.exists(log_path) else 0
    env = None
    if kind == "save":
        # The run's last save (at `total_steps`) is always ahead of an
        # unfinished run, so a save kill has a target by construction, wherever
        # the earlier kills landed.
        target = rng.choice(save_steps(resumed_from, total_steps, checkpoint_every, max_ahead))
        env = {"TF_MBALIGN_TEST_PAUSE_IN_SAVE": str(target)}
    else:
        # At most the second-to-last step: the 0-60 ms after it must not let
        # the run finish before the kill arrives.
        last = total_steps - 2 if max_ahead is None else resumed_from + max_ahead
        target = rng.randint(resumed_from + 1, max(resumed_from + 1, min(last, total_steps - 2)))
    started = time.time()
    process = start_training(model_dir, train_steps, checkpoint_every, log_path, env, corpus,
                             workers)
    marker = os.path.join(model_dir, "checkpoints", ".paused-in-save")
    if kind == "save":
        reached = _wait(lambda: os.path.exists(marker), process, timeout, f"the save of {target}")
    else:
        reached = _wait(lambda: _log_mentions_start(log_path, offset), process, timeout,
                        "the restore") and _wait(
            lambda: any(r.get("step", 0) >= target for r in read_metrics(model_dir)),
            process, timeout, f"step {target}")
        time.sleep(rng.uniform(0.0, 0.06))
    process.kill()
    returncode = process.wait()
    logged = [r["step"] for r in read_metrics(model_dir)]
    return {"kind": kind, "target": target, "resumed_from": resumed_from,
            "killed": returncode == -signal.SIGKILL and reached, "returncode": returncode,
            "last_logged_step": max(logged, default=0),
            "committed_after": committed_step(model_dir), "seconds": time.time() - started}


def finish(model_dir, train_steps, checkpoint_every, log_path, timeout=300, corpus="demo",
           workers=1):
    process = start_training(model_dir, train_steps, checkpoint_every, log_path, corpus=corpus,
                             workers=workers)
    returncode = process.wait(timeout=timeout)
    if returncode != 0:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            tail = f.read()[-3000:]
        raise RuntimeError(f"the resumed run failed (exit {returncode}):\n{tail}")


def checkpoint_values(prefix):
    """{name: numpy value} of every variable in a checkpoint."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(prefix)
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if not name.startswith("_CHECKPOINTABLE_OBJECT_GRAPH")}


def _loss_difference(value, reference):
    """Relative to the loss (losses are ~1-10; below 1 it is absolute); a
    MoCo loss logged as None (empty queue) must be None in both runs."""
    if value is None or reference is None:
        return 0.0 if value is reference else float("inf")
    return abs(value - reference) / max(1.0, abs(reference))


def compare_runs(reference_dir, killed_dir, total_steps):
    """Per-step and final-state differences of two runs of `total_steps`."""
    import numpy as np

    reference, resumed = read_metrics(reference_dir), read_metrics(killed_dir)
    steps = [r["step"] for r in resumed]
    by_step = {r["step"]: r for r in reference}
    loss_diff = max(_loss_difference(r[k], by_step[r["step"]][k])
                    for r in resumed for k in ("loss", "tlm_loss", "moco_loss"))
    fingerprints = [f for r in resumed for f in r["batch_fingerprints"]]
    expected = [f for r in reference for f in r["batch_fingerprints"]]
    positions = [r["first_example"] for r in resumed]
    # Batches compared position by position with the uninterrupted run.
    repeated = sum(max(0, fingerprints.count(f) - expected.count(f)) for f in set(fingerprints))
    skipped = sum(max(0, expected.count(f) - fingerprints.count(f)) for f in set(expected))
    a = checkpoint_values(os.path.join(reference_dir, "checkpoints", f"ckpt-{total_steps}"))
    b = checkpoint_values(os.path.join(killed_dir, "checkpoints", f"ckpt-{total_steps}"))
    weight_diff, mismatched = 0.0, []
    for name in sorted(set(a) | set(b)):
        if name not in a or name not in b or np.shape(a[name]) != np.shape(b[name]):
            mismatched.append(name)
            continue
        x, y = np.asarray(a[name]), np.asarray(b[name])
        if x.dtype.kind in "fc":
            if x.size:
                diff = np.abs(x.astype(np.float64) - y.astype(np.float64))
                weight_diff = max(weight_diff, float(np.max(diff)))
        elif not np.array_equal(x, y):
            mismatched.append(name)
    return {
        "steps": steps,
        "steps_in_order": steps == list(range(1, total_steps + 1)),
        "positions_in_order": positions == [GLOBAL_BATCH * i for i in range(total_steps)],
        "fingerprints_equal": fingerprints == expected,
        "batches_repeated": repeated,
        "batches_skipped": skipped,
        "max_loss_rel_diff": loss_diff,
        "max_weight_diff": weight_diff,
        "variables_compared": len(a),
        "variable_names": sorted(a),
        "mismatched_variables": mismatched,
    }


def run_with_kills(work_dir, kinds, train_steps, checkpoint_every, seed, head_warmup_steps=2,
                   max_ahead=None, corpus="demo", workers=1):
    """Trains in `work_dir/killed`, killing once per entry of `kinds`
    ("step" or "save"), then resumes to the end; returns the attempts."""
    rng = random.Random(seed)
    model_dir = os.path.join(work_dir, "killed")
    log_path = os.path.join(work_dir, "killed.log")
    total = train_steps + head_warmup_steps
    attempts = [kill_attempt(model_dir, total, train_steps, checkpoint_every, log_path, kind,
                             rng, max_ahead, corpus=corpus, workers=workers) for kind in kinds]
    started = time.time()
    finish(model_dir, train_steps, checkpoint_every, log_path, corpus=corpus, workers=workers)
    attempts.append({"kind": "finish", "seconds": time.time() - started})
    return model_dir, attempts
