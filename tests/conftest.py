"""Shared test helpers: tiny configs, the demo corpus, the shared real data."""

import os
import socket
import subprocess
import sys

import pytest

from tf_mbalign import runtime  # noqa: E402

runtime.set_tensorflow_environment_defaults()  # before TensorFlow loads
from tf_mbalign.data.data_root import default_data_root  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The precision every test that trains pins: the default, `auto`, picks mixed
# bf16 on CPUs with AMX or AVX512-BF16, and results must not depend on the CPU
# CI lands on. Tests of `auto` or of mixed precision ask for theirs.
TEST_PRECISION = "float32"
TEST_PRECISION_FLAG = f"--precision={TEST_PRECISION}"


def largest_relative_difference(reference, other, floor=1e-6):
    """max over arrays of max|a - b| / max(max|a|, floor), `a` from `reference`:
    float32 noise in arrays below `floor` (e.g. attention key biases, whose
    gradient is 0 in exact arithmetic) does not count."""
    import numpy as np

    return max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
               / max(float(np.max(np.abs(a))), floor)
               for a, b in zip(reference, other) if np.size(a))


@pytest.fixture
def shared_data():
    """`$TF_MBALIGN_SHARED_DATA`, else `../shared/data` beside the checkout."""
    path = default_data_root(REPO_ROOT)
    if not os.path.isdir(os.path.join(path, "parallel")):
        pytest.skip(
            f"real data not found at {path}: set TF_MBALIGN_SHARED_DATA to the "
            "folder holding parallel/, tatoeba/, xnli/, mlqa/"
        )
    return path


@pytest.fixture(scope="session")
def tiny_vocab(tmp_path_factory):
    from tf_mbalign.data import vocabulary

    return vocabulary.demo_vocab_path(str(tmp_path_factory.mktemp("vocab")))


def tiny_train_config(model_dir, **overrides):
    """A TrainConfig for a tiny random encoder on the demo corpus."""
    from tf_mbalign.config import TrainConfig

    values = dict(
        encoder="tiny:demo", corpus="demo", model_dir=str(model_dir), train_steps=4,
        global_batch_size=8, queue_size=16, max_seq_length=48, max_sentence_length=24,
        max_predictions_per_seq=8, learning_rate=1e-3, warmup_steps=1, dropout=0.0,
        checkpoint_every=100, quiet=True, export=False, precision=TEST_PRECISION,
    )
    values.update(overrides)
    return TrainConfig(**values)


# The finished training binary run that several tests read (`finished_binary_run`).
BINARY_RUN_FLAGS = ["--encoder=tiny:demo", TEST_PRECISION_FLAG, "--global_batch_size=8",
                    "--queue_size=16", "--max_seq_length=48", "--max_sentence_length=24",
                    "--max_predictions_per_seq=8", "--quiet", "--head_warmup_steps=1",
                    "--train_steps=2"]


@pytest.fixture(scope="session")
def finished_binary_run(tmp_path_factory):
    """(model_dir, CompletedProcess) of one training binary run, finished and
    exported: the tiny encoder on the demo corpus, 1 head warm-up step and 2
    encoder steps (`BINARY_RUN_FLAGS`). One process serves every test that
    reads it; those tests are in the xdist group "binary_run", so one worker
    runs them all and makes it once. Read it; copy it before changing it."""
    model_dir = tmp_path_factory.mktemp("binary_run") / "run"
    result = run_module(["-m", "tf_mbalign.train", *BINARY_RUN_FLAGS, f"--model_dir={model_dir}"])
    assert result.returncode == 0, result.stderr[-3000:]
    return model_dir, result


def run_module(args, env=None, timeout=600, input_text=None):
    """Runs `python -m ...` in a fresh process (`input_text` on its stdin);
    returns CompletedProcess."""
    full_env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, *args], cwd=REPO_ROOT, env=full_env, capture_output=True,
        text=True, timeout=timeout, input=input_text,
    )


def free_ports(n):
    """n free TCP ports on 127.0.0.1 (for local multi-worker clusters)."""
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports
