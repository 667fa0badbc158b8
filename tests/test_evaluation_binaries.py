"""The evaluation commands end to end on tiny models and tiny data (fresh processes)."""

import json

import pytest

from conftest import run_module, tiny_train_config
from test_retrieval import _write_bitext
from test_xnli import _write as write_xnli


def test_compare_runs_every_job_resumes_and_writes_reports(tmp_path):
    from tf_mbalign.training.trainer import AlignmentRun

    root = tmp_path / "data"
    _write_bitext(root / "tatoeba", "sw", ["habari", "asante sana", "ndiyo"],
                  ["hello", "thank you very much", "yes"])
    write_xnli(root / "xnli")
    run_dir = tmp_path / "run"
    AlignmentRun(tiny_train_config(run_dir, train_steps=2), log=lambda *_: None).run()
    out = tmp_path / "compare"
    args = ["-m", "tf_mbalign.evaluate", "compare", "--unaligned=tiny:demo",
            f"--aligned={run_dir}", f"--data_root={root}", f"--output_dir={out}",
            "--xnli_settings=zero_shot", "--mlqa_settings=",
            "--finetune_flags=--max_steps=2,--max_seq_length=64,--batch_size=4"]
    result = run_module(args)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("retrieval", "xnli_zero_shot"):
        pair = json.loads((out / f"{name}.json").read_text())
        assert [r["model"] for r in pair] == ["unaligned", "aligned"]
        assert (out / f"{name}.png").stat().st_size > 1000
    retrieval = json.loads((out / "retrieval.json").read_text())
    assert set(retrieval[1]["metrics"]) == {"xx_to_en", "en_to_xx"}
    assert list(retrieval[1]["metrics"]["xx_to_en"]) == ["sw"]
    assert retrieval[1]["encoder"].startswith(str(run_dir))  # the run's checkpoint
    summary = (out / "summary.md").read_text()
    assert "## xnli_zero_shot" in summary and "Δ (last − first)" in summary
    again = run_module(args)  # Finished jobs are not run again.
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("done earlier") == 4


def test_finetune_refuses_bad_requests(tmp_path):
    from binary_runs import run_many

    write_xnli(tmp_path / "xnli")
    bad_setting, missing, too_long = run_many("tf_mbalign.finetune", [
        {"argv": ["--task=mlqa", "--encoder=tiny:demo", "--setting=translate_train",
                  f"--data={tmp_path}"]},
        {"argv": ["--task=xnli", "--encoder=tiny:demo", f"--data={tmp_path / 'missing'}"]},
        {"argv": ["--task=xnli", "--encoder=tiny:demo", f"--data={tmp_path / 'xnli'}",
                  "--max_seq_length=512"]},
    ])
    assert bad_setting["exit_code"] == 2
    assert "--setting=translate_train is not one of zero_shot, code_switch" in bad_setting["stderr"]
    assert missing["exit_code"] == 2 and "missing: no such directory" in missing["stderr"]
    assert too_long["exit_code"] == 2
    assert "exceeds the encoder's 128 positions" in too_long["stderr"]
    assert not any("Traceback" in r["stderr"] for r in (bad_setting, missing, too_long))


@pytest.mark.parametrize("module", ["tf_mbalign.evaluate", "tf_mbalign.finetune"])
def test_help_exits_0_and_an_unknown_flag_exits_2_with_a_suggestion(module):
    from binary_runs import run_many

    helped, wrong = run_many(module, [{"argv": ["--help"]}, {"argv": ["--encodr=x"]}])
    assert helped["exit_code"] == 0, helped["stderr"][-2000:]
    assert "--encoder" in helped["stdout"]
    assert wrong["exit_code"] == 2
    assert "Unknown command line flag 'encodr'. Did you mean: encoder ?" in wrong["stderr"]
