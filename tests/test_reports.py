"""Evaluation reports: the statistics, the Markdown table and the plot."""

import json

import numpy as np
import pytest

from tf_mbalign.evaluation import reports


def _report(model, values):
    metrics, average = reports.summarize({"accuracy": values})
    return {"task": "xnli", "model": model, "setting": "zero_shot", "metrics": metrics,
            "average": average}


def test_summarize_averages_rows_per_seed_before_the_spread():
    metrics, average = reports.summarize({"acc": {"de": [0.5, 0.7], "fr": [0.3, 0.1]}})
    assert metrics["acc"]["de"]["mean"] == pytest.approx(0.6)
    assert metrics["acc"]["de"]["std"] == pytest.approx(0.1)  # population std of 0.5, 0.7
    # Per-seed averages: seed 0 (0.5+0.3)/2 = 0.4, seed 1 (0.7+0.1)/2 = 0.4 -> std 0.
    assert average["acc"]["values"] == pytest.approx([0.4, 0.4])
    assert average["acc"]["std"] == pytest.approx(0.0)


def test_markdown_side_by_side_with_difference():
    before = _report("unaligned", {"de": [0.50], "zh": [0.40]})
    after = _report("aligned", {"de": [0.55], "zh": [0.38]})
    table = reports.markdown_table([before, after])
    assert "| | unaligned | aligned | Δ (last − first) |" in table.replace("|  |", "| |")
    assert "| de | 50.0 | 55.0 | +5.0 |" in table
    assert "| zh | 40.0 | 38.0 | -2.0 |" in table
    assert "| **average** | 45.0 | 46.5 | +1.5 |" in table


def test_write_report_json_markdown_png(tmp_path):
    before = _report("unaligned", {"de": [0.5, 0.6], "zh": [0.4, 0.4]})
    after = _report("aligned", {"de": [0.55, 0.65], "zh": [0.38, 0.4]})
    paths = reports.write_report([before, after], str(tmp_path / "xnli_zero_shot"))
    assert [r["model"] for r in json.loads(open(paths["json"]).read())] == ["unaligned",
                                                                            "aligned"]
    assert "| de | 55.0 ± 5.0 | 60.0 ± 5.0 | +5.0 |" in open(paths["md"]).read()
    with open(paths["png"], "rb") as f:
        header = f.read(8)
    assert header == b"\x89PNG\r\n\x1a\n"
    single = reports.write_report(after, str(tmp_path / "single"))
    assert json.loads(open(single["json"]).read())["model"] == "aligned"
    assert np.isclose(reports.read_report(single["json"])["average"]["accuracy"]["mean"],
                      np.mean([(0.55 + 0.38) / 2, (0.65 + 0.4) / 2]))
