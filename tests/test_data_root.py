"""The one data-root lookup of the binaries, tests and benchmarks."""

import os

from tf_mbalign.data.data_root import default_data_root


def test_environment_variable_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("TF_MBALIGN_SHARED_DATA", str(tmp_path))
    assert default_data_root() == str(tmp_path)
    assert default_data_root("/somewhere/checkout") == str(tmp_path)


def test_else_shared_data_beside_the_current_directory_or_the_checkout(monkeypatch):
    monkeypatch.delenv("TF_MBALIGN_SHARED_DATA", raising=False)
    assert default_data_root() == os.path.join("..", "shared", "data")
    assert default_data_root("/work/checkout") == os.path.join("/work", "shared", "data")
