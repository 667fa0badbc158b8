"""The run summary (summary.json / summary.md) at a finished, a preempted and a
failed stop, and MoCo figures reported as unavailable while the queue is empty."""

import json
import os
import signal

import pytest

from conftest import TEST_PRECISION_FLAG, run_module, tiny_train_config
from tf_mbalign.training.callbacks import TrainingCallback
from tf_mbalign.training.fault_injection import FAULT_ENV
from tf_mbalign.training.run_summary import RunSummary, phase_windows, summary_block
from tf_mbalign.training.trainer import AlignmentRun, NonFiniteError

TINY_FLAGS = ["--encoder=tiny:demo", "--global_batch_size=8", "--queue_size=16",
              "--max_seq_length=48", "--max_sentence_length=24",
              "--max_predictions_per_seq=8", "--quiet", TEST_PRECISION_FLAG]


def _read_summary(model_dir):
    with open(os.path.join(model_dir, "summary.json"), encoding="utf-8") as f:
        summary = json.load(f)
    with open(os.path.join(model_dir, "summary.md"), encoding="utf-8") as f:
        return summary, f.read()


@pytest.mark.xdist_group("binary_run")
def test_finished_run_writes_and_prints_the_summary_and_its_load_lines_work(finished_binary_run):
    model_dir, result = finished_binary_run  # BINARY_RUN_FLAGS: 1 warm-up + 2 encoder steps
    summary, markdown = _read_summary(model_dir)
    assert summary["outcome"] == "finished" and summary["error"] is None
    assert summary["steps"]["head_warmup"] == {"done": 1, "planned": 1}
    assert summary["steps"]["encoder"] == {"done": 2, "planned": 2}
    assert set(summary["metrics"]) == {"head_warmup", "encoder"}
    assert summary["metrics"]["head_warmup"]["start"]["moco_loss"] is None  # empty queue
    assert summary["metrics"]["encoder"]["end"]["moco_accuracy"] is not None
    # The demo less its held-out pairs (20 a language for the alignment check,
    # and 6 more that share a sentence with one).
    assert summary["corpus"]["pairs"] == 1074 and summary["corpus"]["languages"]["de"] == 178
    assert summary["corpus"]["held_out"] == 126
    # The warm-up's measurement and the settings by checkpoint, with sources.
    assert summary["head_warmup_check"]["step"] == 1
    assert summary["head_warmup_check"]["batches"] == 1
    assert summary["head_warmup_check"]["masked_tokens"] > 0
    assert 0 <= summary["head_warmup_check"]["tlm_accuracy"] <= 1
    assert summary["checkpoint_defaults"]["queue_size"] == {"value": 16,
                                                            "source": "set: --queue_size"}
    assert summary["checkpoint_defaults"]["temperature"]["value"] == 0.07
    assert summary["objectives"] == {"tlm_weight": 1.0, "contrastive_weight": 1.0,
                                     "contrastive_negatives": "queue", "anchor_weight": 0.0}
    assert summary["checkpoints"]["latest"] == "ckpt-3"
    assert 0 < summary["checkpoints"]["latest_bytes"] <= summary["checkpoints"]["all_bytes"]
    # Export paths relative to model_dir, and they exist.
    assert {"encoder", "preprocessor", "serving", "keras"} <= set(summary["export"])
    for path in summary["export"].values():
        assert not os.path.isabs(path) and path.startswith("export")
        assert os.path.exists(model_dir / path), path
    # The printed block is the summary's.
    assert summary_block(summary) in result.stdout
    assert "run summary (finished)" in result.stdout and "load it:" in result.stdout
    assert "# Run summary: finished" in markdown and "```python" in markdown
    # The curves picture is drawn and linked.
    assert summary["curves"] == "training_curves.png"
    with open(model_dir / "training_curves.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert "](training_curves.png)" in markdown
    # The three load lines run as printed, in a fresh process.
    assert len(summary["load_export"]) == 3
    check = "\n".join(summary["load_export"] + ["print(embeddings.shape)"])
    loaded = run_module(["-c", check])
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert loaded.stdout.strip() == "(2, 32)"


class _SigtermAt(TrainingCallback):
    """Sends this process SIGTERM after step `step` (a preemption)."""

    def __init__(self, step):
        self.step = step

    def on_loop_end(self, step, logs):
        if step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def test_preempted_run_writes_the_summary_and_moco_is_null_while_the_queue_is_empty(tmp_path):
    model_dir = tmp_path / "run"
    summary = RunSummary()
    run = AlignmentRun(tiny_train_config(model_dir, train_steps=10),
                       callbacks=[_SigtermAt(3), summary], log=lambda m: None)
    history = run.run()
    assert run.preempted and [h["step"] for h in history] == [1, 2, 3]
    # Step 1 met an empty queue: no negatives, no MoCo figures.
    assert history[0]["moco_loss"] is None and history[0]["moco_accuracy"] is None
    assert "queue was empty" in history[0]["moco_note"]
    assert all(h["moco_loss"] is not None and "moco_note" not in h for h in history[1:])
    with open(model_dir / "metrics.jsonl") as f:
        first = json.loads(f.readline())
    assert first["moco_loss"] is None and first["moco_accuracy"] is None
    written, markdown = _read_summary(model_dir)
    assert written == summary.summary
    assert written["outcome"] == "preempted"
    assert written["steps"]["encoder"] == {"done": 3, "planned": 10}
    assert written["checkpoints"]["latest"] == "ckpt-3" and written["export"] == {}
    assert written["load_export"] == []
    assert written["metrics"]["encoder"]["start"]["steps"] == "1-1"
    assert written["metrics"]["encoder"]["start"]["moco_loss"] is None
    assert written["metrics"]["encoder"]["end"]["steps"] == "3-3"
    assert written["metrics"]["encoder"]["end"]["queue_fill"] == 16
    assert "# Run summary: preempted" in markdown and "moco_loss n/a" in markdown
    # The anchor is off: no column for it.
    assert written["metrics"]["encoder"]["end"]["anchor_loss"] is None
    assert "anchor_loss" not in markdown


def test_failed_run_writes_the_summary_with_the_error(tmp_path, monkeypatch):
    monkeypatch.setenv(FAULT_ENV, "nan_loss@3")
    model_dir = tmp_path / "run"
    summary = RunSummary()
    run = AlignmentRun(tiny_train_config(model_dir, train_steps=6, checkpoint_every=2),
                       callbacks=[summary], log=lambda m: None, warn=lambda m: None)
    with pytest.raises(NonFiniteError):
        run.run()
    written, markdown = _read_summary(model_dir)
    assert written["outcome"] == "failed"
    assert written["error"].startswith("NonFiniteError: step 3: the loss is nan")
    assert written["steps"]["encoder"]["done"] == 2
    assert written["checkpoints"]["kept_steps"] == [2]
    assert "error: NonFiniteError: step 3" in markdown


def test_a_failing_stop_hook_does_not_hide_the_outcome(tmp_path):
    class Broken(TrainingCallback):
        def on_run_stop(self, run, outcome, error=None):
            raise OSError("disk full")

    warnings = []
    run = AlignmentRun(tiny_train_config(tmp_path / "run", train_steps=1),
                       callbacks=[Broken()], log=lambda m: None, warn=warnings.append)
    assert len(run.run()) == 1
    assert any("Broken.on_run_stop failed" in w and "disk full" in w for w in warnings)


def test_phase_windows_average_the_first_and_last_records_of_each_phase():
    records = [{"step": s, "phase": "encoder", "loss": float(s), "tlm_loss": 1.0,
                "tlm_accuracy": 0.5, "moco_loss": None if s == 1 else 2.0,
                "moco_accuracy": None if s == 1 else 0.25, "batch_fingerprints": ["x"]}
               for s in range(1, 31)]
    windows = phase_windows(records)
    assert list(windows) == ["encoder"]
    start, end = windows["encoder"]["start"], windows["encoder"]["end"]
    assert start["steps"] == "1-10" and start["loss"] == 5.5
    assert start["moco_loss"] == 2.0  # step 1's None left out
    assert end["steps"] == "21-30" and end["loss"] == 25.5
    assert end["queue_fill"] is None  # these records log none
    # Records of several steps (steps_per_loop > 1) cover them all.
    two = [{"step": 2 * i, "phase": "head_warmup", "loss": 1.0, "batch_fingerprints": ["a", "b"]}
           for i in range(1, 4)]
    assert phase_windows(two)["head_warmup"]["start"]["steps"] == "1-2"
