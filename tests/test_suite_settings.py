"""A finished suite job is reused only when its settings hash matches: the code
that makes the hash must keep giving the committed real-data jobs their hash.

`docs/results/suite_cpu/<encoder>/<task>.json` record the settings they were
made with; `job_settings` (fed what those runs found: files, seeds, data root)
must rebuild exactly those settings, and `present_tasks` must find the same
files in the same data folder.
"""

import glob
import json
import os

import pytest

from conftest import REPO_ROOT
from tf_mbalign.tasks import budgets, suite

COMMITTED_JOBS = sorted(glob.glob(os.path.join(REPO_ROOT, "docs", "results", "suite_cpu", "*",
                                               "*.json")))


def _job(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)["job"]


def test_there_are_committed_jobs_of_every_default_task():
    assert {_job(path)["task"] for path in COMMITTED_JOBS} == {"nli", "ner", "pos", "topic",
                                                               "retrieval"}


@pytest.mark.parametrize("path", COMMITTED_JOBS, ids=os.path.basename)
def test_job_settings_rebuild_the_committed_settings_and_hash(path):
    job = _job(path)
    made = job["settings"]
    settings = suite.job_settings(job["task"], made["files"], budgets.get_budget(made["budget"]),
                                  range(len(made.get("seeds", []))), made["data_root"])
    assert settings == made
    assert suite.settings_hash(settings) == job["settings_hash"]
    assert suite.job_record(job["task"], job["encoder"], settings) == job


def _relative(files, root):
    """The files of a job with paths relative to the data root."""
    if isinstance(files, dict):
        return {key: _relative(value, root) for key, value in files.items()}
    return None if files is None else os.path.relpath(files, root)


def test_the_shared_data_gives_the_committed_files(shared_data):
    found = suite.present_tasks(shared_data)
    for path in COMMITTED_JOBS:
        job = _job(path)
        recorded = _relative(job["settings"]["files"], job["settings"]["data_root"])
        assert _relative(found[job["task"]], os.path.abspath(shared_data)) == recorded, path
