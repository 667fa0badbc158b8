"""`--dist loadgroup` keeps an `xdist_group` on one worker: the suite's
shared fixtures (the mirrored report, the trained XLM-R run, the finished
binary run) are built once only if it does. Under pytest 9.2 with
pytest-xdist 3.8.0 it silently did not (setup.cfg pins pytest below 9)."""

import os
import subprocess
import sys

GROUPED = '''
import os
import pytest

@pytest.mark.xdist_group("shared")
@pytest.mark.parametrize("case", range(4))
def test_grouped(case):
    with open(os.path.join(os.environ["GROUP_LOG"], f"grouped{case}"), "w") as f:
        f.write(os.environ["PYTEST_XDIST_WORKER"])

@pytest.mark.parametrize("case", range(8))
def test_ungrouped(case):
    with open(os.path.join(os.environ["GROUP_LOG"], f"ungrouped{case}"), "w") as f:
        f.write(os.environ["PYTEST_XDIST_WORKER"])
'''


def test_an_xdist_group_runs_on_one_worker(tmp_path):
    (tmp_path / "test_grouped.py").write_text(GROUPED)
    log = tmp_path / "log"
    log.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-n", "2", "--dist", "loadgroup",
         "-p", "no:cacheprovider", "-c", os.devnull, "--rootdir", str(tmp_path),
         str(tmp_path / "test_grouped.py")],
        capture_output=True, text=True, timeout=300, cwd=str(tmp_path),
        env=dict(os.environ, GROUP_LOG=str(log)))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    workers = {p.name: p.read_text() for p in log.iterdir()}
    assert len(workers) == 12, workers
    grouped = {workers[f"grouped{case}"] for case in range(4)}
    assert len(grouped) == 1, f"one xdist_group ran on several workers: {workers}"
    # Both workers ran (the check above means something): the ungrouped
    # tests spread over both, or the group and the rest went to different ones.
    assert set(workers.values()) == {"gw0", "gw1"}, workers
