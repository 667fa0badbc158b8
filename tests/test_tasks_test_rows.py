"""Test-row halves and fresh seeds: choose a recipe on one half, confirm on the other.

`--test_rows=even|odd` keeps two disjoint, interleaved halves of every test
file (the budget's row limit applies after the half is taken), `--first_seed`
moves the fine-tuning seeds; jobs made with "all" rows keep their hashes.
"""

import dataclasses

import pytest

from test_tasks_suite import write_tiny_data
from tf_mbalign.tasks import budgets, registry, runner, suite
from tf_mbalign.tasks import base


def test_halves_are_disjoint_interleaved_and_cover_the_file():
    rows = list(range(11))
    even, odd = base.test_subset(rows, 0, "even"), base.test_subset(rows, 0, "odd")
    assert even == [0, 2, 4, 6, 8, 10] and odd == [1, 3, 5, 7, 9]
    assert sorted(even + odd) == rows
    assert base.test_subset(rows, 3, "odd") == [1, 3, 5]  # the limit applies within the half
    assert base.test_subset(rows, 3) == [0, 1, 2]  # "all": unchanged, the first rows
    with pytest.raises(ValueError, match="choose from all, even, odd"):
        base.test_subset(rows, 0, "first")


def test_task_data_halves_keep_line_alignment_and_the_limit(tmp_path):
    root = write_tiny_data(tmp_path, languages=("en", "de"), tasks=("nli",))
    task = registry.TASKS["nli"]
    files = task.find_files(root)
    limited = budgets.TINY.task("nli")  # max_test_examples=8 of 12 rows
    whole = runner.read_task_data(task, files, dataclasses.replace(limited, max_test_examples=0))
    for rows in ("even", "odd"):
        half = runner.read_task_data(task, files, limited, rows)
        for language, examples in half.tests.items():
            expected = whole.tests[language][("even", "odd").index(rows)::2]
            assert examples == expected[: limited.max_test_examples]
    assert runner.read_task_data(task, files, limited).tests == {
        language: examples[: limited.max_test_examples]
        for language, examples in whole.tests.items()}


def test_retrieval_halves_keep_pairs_aligned(tmp_path):
    root = write_tiny_data(tmp_path, languages=("en", "de"), tasks=("retrieval",))
    files = runner.retrieval_files(root)["tests"]
    whole = runner.read_retrieval_pairs(files, budgets.FULL)
    odd = runner.read_retrieval_pairs(files, budgets.FULL, "odd")
    assert odd["de"].foreign == whole["de"].foreign[1::2]
    assert odd["de"].english == whole["de"].english[1::2]


def test_halves_and_fresh_seeds_enter_the_settings_only_when_used(tmp_path):
    root = write_tiny_data(tmp_path, tasks=("nli",))

    def record(**options):
        config = suite.SuiteConfig(encoders=("tiny:demo",), data_root=root, budget="tiny",
                                   seeds=2, output_dir=str(tmp_path / "out"), **options)
        [(_, _, job, _)] = suite.plan_jobs(config, log=lambda line: None)
        return job

    plain = record()
    assert "test_rows" not in plain["settings"] and plain["settings"]["seeds"] == [0, 1]
    assert record(test_rows="all")["settings_hash"] == plain["settings_hash"]
    confirm = record(test_rows="odd", first_seed=100)
    assert confirm["settings"]["test_rows"] == "odd"
    assert confirm["settings"]["seeds"] == [100, 101]
    assert confirm["settings_hash"] != plain["settings_hash"]
    with pytest.raises(ValueError, match="--test_rows=half"):
        record(test_rows="half")


def test_a_half_run_end_to_end_tests_only_its_rows(tmp_path):
    root = write_tiny_data(tmp_path / "data", languages=("en", "de"), tasks=("nli",))
    config = suite.SuiteConfig(encoders=("tiny:demo",), data_root=root, budget="tiny", seeds=1,
                               first_seed=7, test_rows="even", output_dir=str(tmp_path / "out"),
                               job_processes=False, progress=False)
    summary = suite.run_suite(config, log=lambda line: None)
    languages = summary["tables"]["nli"]["encoders"][0]["languages"]
    # 12 rows a file, even half = 6 rows (below the tiny budget's limit of 8).
    assert summary["tables"]["nli"]["rows"]["de"] == 6
    assert set(languages) == {"en", "de"}
