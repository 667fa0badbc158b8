"""An unknown flag gets the flags whose names contain it, in every binary.

absl suggests only close spellings: `--batch_size` (the name most frameworks
use) got nothing, though `--global_batch_size` contains it. Every binary
parses with `runtime.flags_parser`, checked on each binary's own flags in one
process; the training binary also end to end.
"""

import os

import pytest
from absl import flags

import binary_flags
from conftest import REPO_ROOT, run_module
from tf_mbalign import runtime


def _flag_values(*names, booleans=()):
    flag_values = flags.FlagValues()
    for name in names:
        flags.DEFINE_string(name, "", "", flag_values=flag_values)
    for name in booleans:
        flags.DEFINE_boolean(name, True, "", flag_values=flag_values)
    return flag_values


def test_flags_containing_the_unknown_name_are_found():
    flag_values = _flag_values("global_batch_size", "queue_size", "max_seq_length",
                               booleans=("export",))
    assert runtime.flags_containing("batch_size", flag_values) == ["global_batch_size"]
    assert runtime.flags_containing("size", flag_values) == ["global_batch_size", "queue_size"]
    assert runtime.flags_containing("SEQ_LENGTH", flag_values) == ["max_seq_length"]
    assert runtime.flags_containing("noexpor", flag_values) == ["export"]  # a --noNAME boolean
    assert runtime.flags_containing("learning_rate", flag_values) == []
    assert runtime.containing_flags_hint("batch_size", flag_values) == \
        ". Flags whose names contain it: --global_batch_size"
    assert runtime.containing_flags_hint("learning_rate", flag_values) == ""


def test_absls_own_flags_are_not_suggested():
    from absl import app

    app.define_help_flags()  # defines --help, --helpfull, ... in the global registry
    found = runtime.flags_containing("help", flags.FLAGS)
    assert "helpfull" in set(flags.FLAGS) and "helpfull" not in found


# (binary, an unknown flag, the flag that contains its name)
BINARIES = {
    "tf_mbalign.train": ("--batch_size=8", "--global_batch_size"),
    "tf_mbalign.finetune": ("--seq_length=64", "--max_seq_length"),
    "tf_mbalign.evaluate": ("--rows=odd", "--test_rows"),
    "tf_mbalign.prepare": ("--shards=4", "--shards_per_language"),
    "tf_mbalign.export.__main__": ("--precision=bfloat16", "--export_precision"),
}


def test_every_binarys_flags_get_the_suggestion_and_exit_2():
    """The binaries' parser on each binary's own flags (one process, no binary run)."""
    answer = binary_flags.collect({"bad": {m: [[unknown]] for m, (unknown, _) in BINARIES.items()}})
    for module, (unknown, suggested) in BINARIES.items():
        (result,) = answer["binaries"][module]["bad"]
        name = unknown[2:].split("=")[0]
        assert result["exit_code"] == 2, (module, result)
        assert f"Unknown command line flag '{name}'" in result["stderr"], (module, result)
        assert f"Flags whose names contain it: {suggested}" in result["stderr"], (module, result)


@pytest.mark.parametrize("module", sorted(BINARIES))
def test_every_binary_parses_its_flags_with_the_shared_parser(module):
    path = os.path.join(REPO_ROOT, *module.split(".")) + ".py"
    with open(path, encoding="utf-8") as f:
        assert "flags_parser=runtime.flags_parser(" in f.read(), path


def test_the_training_binary_suggests_global_batch_size_and_exits_2(tmp_path):
    result = run_module(["-m", "tf_mbalign.train", "--batch_size=8",
                         f"--model_dir={tmp_path / 'run'}"])
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Unknown command line flag 'batch_size'. Flags whose names contain it: " \
        "--global_batch_size" in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()
