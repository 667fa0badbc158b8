"""The interval method (tf_mbalign/tasks/intervals.py) against cases computed by hand."""

import math

import numpy as np
import pytest

from tf_mbalign.tasks import intervals


def test_combine_by_hand():
    # Two seeds at 0.6 and 0.8; two bootstrap replicates per seed.
    # Replicate means over seeds: (0.5 + 0.7) / 2 = 0.6 and (0.7 + 0.9) / 2 = 0.8,
    # so v_rows = var([0.6, 0.8], ddof=1) = 0.02; v_seeds = var([0.6, 0.8], ddof=1) / 2 = 0.01.
    interval = intervals.combine([0.6, 0.8], [[0.5, 0.7], [0.7, 0.9]])
    half_width = 1.959963984540054 * math.sqrt(0.02 + 0.01)
    assert interval.mean == pytest.approx(0.7)
    assert interval.low == pytest.approx(0.7 - half_width)
    assert interval.high == pytest.approx(0.7 + half_width)
    assert interval.half_width == pytest.approx(0.3395, abs=1e-4)
    assert interval.row_std == pytest.approx(math.sqrt(0.02))
    assert interval.seed_std == pytest.approx(math.sqrt(0.01))


def test_one_seed_has_no_seed_variance():
    interval = intervals.combine([0.5], [[0.4, 0.6]])
    assert interval.seed_std == 0.0
    assert interval.half_width == pytest.approx(1.959963984540054 * math.sqrt(0.02))


def test_bootstrap_variance_of_an_accuracy_matches_the_formula():
    # 100 rows, 75 right: the bootstrap variance of a mean of 0/1 values is
    # p (1 - p) / n = 0.75 * 0.25 / 100 = 0.001875.
    stats = np.stack([np.r_[np.ones(75), np.zeros(25)], np.ones(100)], axis=1)
    weights = intervals.bootstrap_weights(100, 20000, "test/en")
    replicates = intervals.seed_replicates("accuracy", [stats], weights)
    interval = intervals.combine([0.75], replicates)
    assert interval.row_std ** 2 == pytest.approx(0.001875, rel=0.05)
    assert interval.mean == 0.75


def test_resamples_are_the_same_for_the_same_key():
    first = intervals.bootstrap_weights(10, 5, "nli/de")
    assert np.array_equal(first, intervals.bootstrap_weights(10, 5, "nli/de"))
    assert not np.array_equal(first, intervals.bootstrap_weights(10, 5, "nli/fr"))
    assert (first.sum(axis=1) == 10).all()


def test_entity_f1_of_sums():
    # tp 3, predicted 4, gold 6: F1 = 2 * 3 / 10.
    assert intervals.metric_value("f1", [[1, 2, 3], [2, 2, 3]]) == pytest.approx(0.6)
    assert intervals.metric_value("f1", [[0, 0, 0]]) == 0.0


def test_chance_passes():
    # Binomial(40, 0.05): P(X <= 3) = 0.862, P(X <= 4) = 0.952.
    assert intervals.chance_passes(40) == (pytest.approx(2.0), 4)
    assert intervals.chance_passes(1) == (pytest.approx(0.05), 0)


def _table(correct_per_seed):
    """A job table with one language per entry of `correct_per_seed`."""
    return {"metric": "accuracy", "languages": {
        lang: {"row_stats": [[[c, 1] for c in seed] for seed in seeds], "rows": len(seeds[0])}
        for lang, seeds in correct_per_seed.items()}}


def test_average_gap_and_paired_difference():
    first = _table({"en": [[1, 1, 1, 0]], "de": [[1, 0, 0, 0]], "fr": [[1, 1, 0, 0]]})
    second = _table({"en": [[1, 1, 1, 0]], "de": [[1, 1, 0, 0]], "fr": [[1, 1, 0, 0]]})
    summary = intervals.summarize_table("nli", [first, second], replicates=2000)
    a, b = summary["encoders"]
    assert a["languages"]["en"]["mean"] == 0.75
    assert a["non_english_average"]["mean"] == pytest.approx((0.25 + 0.5) / 2)
    assert a["transfer_gap"]["mean"] == pytest.approx(0.75 - 0.375)
    assert b["transfer_gap"]["mean"] == pytest.approx(0.75 - 0.5)
    difference = summary["difference"]
    assert difference["languages"]["de"]["mean"] == pytest.approx(0.25)
    # Identical rows: the paired difference has no spread at all.
    assert difference["languages"]["en"]["half_width"] == 0.0
    assert difference["languages"]["fr"]["half_width"] == 0.0
    # de differs in one row of four: every resample's difference is (copies of row 1) / 4,
    # whose variance is Var(Binomial(4, 1/4)) / 16 = 0.75 / 16.
    assert difference["languages"]["de"]["row_std"] ** 2 == pytest.approx(0.75 / 16, rel=0.1)
    assert difference["moved"] == []


def test_a_clear_difference_moves():
    rows = 400
    first = _table({"en": [[1] * rows], "de": [[1] * (rows // 2) + [0] * (rows // 2)]})
    second = _table({"en": [[1] * rows], "de": [[1] * rows]})
    summary = intervals.summarize_table("nli", [first, second], replicates=500)
    assert summary["difference"]["moved"] == ["de"]
    assert summary["difference"]["transfer_gap"]["mean"] == pytest.approx(-0.5)


def test_unpaired_tables_are_refused():
    first = _table({"de": [[1, 0]]})
    second = _table({"de": [[1, 0, 1]]})
    with pytest.raises(ValueError, match=r"nli/de: .*\[2, 3\] rows"):
        intervals.summarize_table("nli", [first, second], replicates=10)
