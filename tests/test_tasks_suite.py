"""The zero-shot transfer suite end to end on a tiny random model and tiny files.

Covers: every task found from the files present, two encoders compared, the
reports, a re-run that reuses finished jobs, refusals of jobs made with
other settings (library and command line), pooling selected on English rows.
"""

import dataclasses
import json
import os

import pytest

from conftest import run_module
from tf_mbalign.tasks import budgets, suite

NLI = [("A man sleeps.", "A person rests.", "entailment"),
       ("A dog runs.", "A cat sleeps.", "neutral"),
       ("It rains.", "It is dry.", "contradiction"),
       ("Kids play.", "Children play.", "entailment")]
ENTITIES = [[("Anna", "B-PER"), ("lives", "O"), ("in", "O"), ("Berlin", "B-LOC")],
            [("New", "B-LOC"), ("York", "I-LOC"), ("is", "O"), ("big", "O")]]
TAGS = [[("Anna", "PROPN"), ("lives", "VERB"), ("here", "ADV")],
        [("The", "DET"), ("dog", "NOUN"), ("runs", "VERB")]]
TOPICS = [("1", "sports", "The team won the match."), ("2", "travel", "We flew to Rome."),
          ("3", "health", "Eat more fruit.")]


def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def _conll(sentences):
    return "".join("".join(f"{w}\t{t}\n" for w, t in s) + "\n" for s in sentences)


def write_tiny_data(root, languages=("en", "de"), tasks=("nli", "ner", "pos", "topic",
                                                         "retrieval")):
    """The suite's layout with a few rows per file (test languages = `languages`)."""
    root = str(root)
    pairs = "".join(f"{p}\t{h}\t{y}\n" for p, h, y in NLI * 3)
    topics = "index_id\tcategory\ttext\n" + "".join(f"{i}\t{c}\t{t}\n" for i, c, t in TOPICS * 3)
    files = {"nli": {"nli/snli-train.tsv": pairs, "nli/snli-test.tsv": pairs},
             "ner": {"panx/train-en.tsv": _conll(ENTITIES * 3)},
             "pos": {"udpos/train-en.tsv": _conll(TAGS * 3)},
             "topic": {"sib200/train-en.tsv": topics, "sib200/dev-en.tsv": topics},
             "retrieval": {}}
    for lang in languages:
        files["nli"][f"xnli/dev-{lang}.tsv"] = pairs
        files["ner"][f"panx/test-{lang}.tsv"] = _conll(ENTITIES * 2)
        files["pos"][f"udpos/test-{lang}.tsv"] = _conll(TAGS * 2)
        files["topic"][f"sib200/test-{lang}.tsv"] = topics
        if lang != "en":
            files["retrieval"][f"tatoeba/{lang}-en.{lang}"] = "".join(f"{p}\n" for p, _, _ in NLI)
            files["retrieval"][f"tatoeba/{lang}-en.en"] = "".join(f"{h}\n" for _, h, _ in NLI)
    for task in tasks:
        for name, text in files[task].items():
            _write(os.path.join(root, name), text)
    return root


TABLES = ["nli", "ner", "retrieval_cls_xx_to_en", "retrieval_cls_en_to_xx",
          "retrieval_mean_xx_to_en", "retrieval_mean_en_to_xx"]


def test_suite_end_to_end_reuses_and_refuses(tmp_path):
    # NLI (sentence pairs), NER (words) and retrieval for two encoders; POS and
    # topic run through the same runner in the next test (CI time).
    config = suite.SuiteConfig(encoders=("tiny:demo", "tiny:demo"),
                               data_root=write_tiny_data(tmp_path / "data",
                                                         tasks=("nli", "ner", "retrieval")),
                               budget="tiny", seeds=2, output_dir=str(tmp_path / "out"),
                               job_processes=False, replicates=200, progress=False)
    lines = []
    summary = suite.run_suite(config, log=lines.append)
    out = tmp_path / "out"
    assert list(summary["tables"]) == TABLES
    for name in TABLES:
        assert (out / f"{name}.png").stat().st_size > 0
    assert (out / "summary.png").stat().st_size > 0
    nli = summary["tables"]["nli"]
    assert nli["pooling"] == ["mean", "mean"]
    assert set(nli["encoders"][0]["languages"]) == {"en", "de"}
    assert nli["encoders"][0]["transfer_gap"] is not None
    assert nli["difference"]["languages"]["de"]["low"] <= nli["difference"]["languages"]["de"][
        "mean"]
    assert summary["tables"]["retrieval_mean_xx_to_en"]["encoders"][0]["transfer_gap"] is None
    assert summary["comparison"]["cells"] == 2 * 2 + 4 * 1
    assert summary["comparison"]["expected_by_chance"] == pytest.approx(0.4)
    markdown = (out / "suite.md").read_text(encoding="utf-8")
    assert "transfer gap" in markdown and "non-English average" in markdown
    assert "would pass by chance" in markdown
    job = json.loads((out / "tiny_demo" / "ner.json").read_text(encoding="utf-8"))
    assert job["job"]["encoder"] == "tiny:demo"
    assert job["job"]["code_version"].endswith("+" + job["job"]["settings_hash"])
    assert len(job["tables"]["ner"]["languages"]["de"]["row_stats"]) == 2  # seeds
    assert len(job["tables"]["ner"]["languages"]["de"]["row_stats"][0]) == 4  # sentences

    # Re-run: every job reused, nothing rewritten.
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/*.json")}
    assert len(stamps) == 6
    lines.clear()
    suite.run_suite(config, log=lines.append)
    assert sum("reused" in line for line in lines) == 6
    assert not any(line.endswith(": running") for line in lines)
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/*.json")} == stamps

    # Other settings: refused before anything runs, naming the file and what differs.
    with pytest.raises(suite.JobMismatch, match=r"nli.json was made with another "
                                                r"code_version, settings_hash.*seeds"):
        suite.run_suite(dataclasses.replace(config, seeds=1), log=lines.append)
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/*.json")} == stamps


def test_suite_runs_pos_and_topic_from_their_files(tmp_path):
    config = suite.SuiteConfig(encoders=("tiny:demo",),
                               data_root=write_tiny_data(tmp_path / "data",
                                                         languages=("en", "de", "fr"),
                                                         tasks=("pos", "topic")),
                               budget="tiny", seeds=1, output_dir=str(tmp_path / "out"),
                               job_processes=False, replicates=100, progress=False)
    summary = suite.run_suite(config, log=print)
    assert list(summary["tables"]) == ["pos", "topic"]
    assert "comparison" not in summary
    pos = summary["tables"]["pos"]["encoders"][0]
    assert set(pos["languages"]) == {"en", "de", "fr"}
    assert pos["non_english_average"]["mean"] == pytest.approx(
        (pos["languages"]["de"]["mean"] + pos["languages"]["fr"]["mean"]) / 2)
    assert summary["tables"]["topic"]["pooling"] == ["mean"]
    assert summary["tables"]["pos"]["rows"] == {"en": 4, "de": 4, "fr": 4}  # sentences
    assert (tmp_path / "out" / "topic.png").is_file()


def test_pooling_is_selected_on_english_held_out_rows(tmp_path):
    from tf_mbalign.evaluation.trained_encoders import load_trained_encoder
    from tf_mbalign.tasks import registry, runner

    root = write_tiny_data(tmp_path, tasks=("nli",))
    task = registry.TASKS["nli"]
    budget = dataclasses.replace(budgets.TINY, pooling="select")
    result = runner.run_finetuned_task(task, load_trained_encoder("tiny:demo"),
                                       task.find_files(root), budget, seeds=[0], log=print,
                                       progress=False)
    selection = result["pooling_selection"]
    assert selection["on"].endswith(os.path.join("nli", "snli-test.tsv"))
    assert set(selection["scores"]) == {"cls", "mean"}
    assert result["tables"]["nli"]["pooling"] == max(selection["scores"],
                                                     key=selection["scores"].get)


def test_no_task_files_is_a_clear_error(tmp_path):
    config = suite.SuiteConfig(encoders=("tiny:demo",), data_root=str(tmp_path), budget="tiny")
    with pytest.raises(FileNotFoundError, match="no task files"):
        suite.plan_jobs(config)


def test_command_line_suite_runs_jobs_in_processes_and_refuses_other_settings(tmp_path):
    root = write_tiny_data(tmp_path / "data", tasks=("retrieval",))
    args = ["-m", "tf_mbalign.evaluate", "suite", "--encoder=tiny:demo", f"--data_root={root}",
            f"--output_dir={tmp_path / 'out'}", "--seeds=1", "--quiet"]
    done = run_module([*args, "--budget=tiny"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "out" / "suite.md").is_file()
    assert (tmp_path / "out" / "tiny_demo" / "retrieval.json").is_file()
    assert not (tmp_path / "out" / "tiny_demo" / "retrieval.job.json").exists()
    refused = run_module([*args, "--budget=cpu"])
    assert refused.returncode == 2
    assert "retrieval.json was made with another" in refused.stderr
    assert "budget" in refused.stderr
