"""Files and folders written whole or not at all (`tf_mbalign/atomic_files.py`)."""

import os

import pytest

from tf_mbalign import atomic_files


def test_text_replaces_the_file_whole_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "deep" / "flags.json"
    atomic_files.write_text_atomic(str(path), "first\n")
    atomic_files.write_json_atomic(str(path), {"a": [1, 2]}, sort_keys=True)
    assert path.read_text() == '{"a": [1, 2]}\n'
    assert os.listdir(path.parent) == ["flags.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "report.png"
    atomic_files.write_bytes_atomic(str(path), b"old")

    def broken_replace(*_):
        raise OSError("disk full")

    monkeypatch.setattr(atomic_files.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_files.write_bytes_atomic(str(path), b"new")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["report.png"]  # the temporary file is gone


def test_directory_is_replaced_whole_or_kept(tmp_path):
    target = tmp_path / "export" / "encoder"

    def write(content):
        def writer(staging):
            with open(os.path.join(staging, "saved_model.pb"), "w") as f:
                f.write(content)
        return writer

    atomic_files.replace_directory_atomic(str(target), write("v1"))
    atomic_files.replace_directory_atomic(str(target), write("v2"))
    assert (target / "saved_model.pb").read_text() == "v2"

    def failing(staging):
        write("half")(staging)
        raise RuntimeError("crashed while writing")

    with pytest.raises(RuntimeError):
        atomic_files.replace_directory_atomic(str(target), failing)
    assert (target / "saved_model.pb").read_text() == "v2"
    assert sorted(os.listdir(target.parent)) == ["encoder"]  # no staging folder left
