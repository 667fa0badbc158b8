"""training_curves: the series, the running mean and the picture of metrics.jsonl records."""

import warnings

import numpy as np
import pytest

from tf_mbalign.training.training_curves import (metric_series, panel_headings,
                                                 plot_training_curves, records_per_window,
                                                 running_mean, warmup_end)


def _records(warmup=3, encoder=5):
    records = []
    for step in range(1, warmup + encoder + 1):
        phase = "head_warmup" if step <= warmup else "encoder"
        moco = None if step == 1 else 1.0 / step  # logged as None while the queue is empty
        records.append({"step": step, "phase": phase, "loss": 10.0 - step,
                        "tlm_loss": 8.0, "tlm_accuracy": 0.01 * step,
                        "moco_loss": moco, "moco_accuracy": moco})
    return records


def test_series_skip_missing_values_and_keep_steps():
    steps, values = metric_series(_records(), "moco_loss")
    assert steps.tolist() == list(range(2, 9))
    np.testing.assert_allclose(values, [1.0 / s for s in range(2, 9)])
    assert len(metric_series(_records(), "absent")[0]) == 0


@pytest.mark.parametrize("window", [1, 2, 3, 7, 50])
def test_running_mean_matches_a_direct_mean(window):
    values = np.random.default_rng(window).normal(size=23)
    expected = [values[max(0, i + 1 - window):i + 1].mean() for i in range(len(values))]
    np.testing.assert_allclose(running_mean(values, window), expected, rtol=1e-12, atol=1e-12)


def test_the_window_counts_steps_not_records():
    # A run logging every 10 steps: 20 steps are 2 records.
    assert records_per_window(np.arange(10, 210, 10), 20) == 2
    assert records_per_window(np.arange(1, 50), 20) == 20
    assert records_per_window(np.arange(10, 210, 10), 3) == 1
    assert records_per_window(np.asarray([5]), 20) == 1


def test_warmup_end_is_the_last_warmup_step():
    assert warmup_end(_records(warmup=3)) == 3
    assert warmup_end(_records(warmup=0)) == 0


def test_plot_writes_a_png_and_declines_without_records(tmp_path):
    path = tmp_path / "curves.png"
    assert plot_training_curves(_records(), str(path), title="tiny") is True
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_training_curves([], str(tmp_path / "none.png")) is False
    assert not (tmp_path / "none.png").exists()


def test_the_contrastive_panel_names_the_negatives():
    assert "queue" in panel_headings("queue")[-1]
    assert "MoCo" in panel_headings("queue")[-1]
    assert "in-batch" in panel_headings("in_batch")[-1]
    assert "MoCo" not in panel_headings("in_batch")[-1]
    assert panel_headings(None)[:2] == panel_headings("queue")[:2]


def test_a_run_without_contrastive_values_draws_without_legend_warnings(tmp_path):
    # e.g. --contrastive_weight=0 with nothing logged for the contrastive panel.
    records = [{key: value for key, value in record.items() if not key.startswith("moco")}
               for record in _records(warmup=0)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert plot_training_curves(records, str(tmp_path / "c.png"), negatives="in_batch")
