"""The suite's low-resource track on a tiny random model and a tiny lowres/ layout.

Covers: the track end to end (two encoders, jobs in this process, reports with
weak and control averages, a re-run that reuses its jobs), the weak average
and the worse / up counts from known per-language cells, the default track's
jobs untouched by the track, the error when lowres/ is absent (library and
command line), and the retrieval embedding cache.
"""

import json
import os

import numpy as np
import pytest

from conftest import run_module
from test_tasks_suite import TOPICS, _write, write_tiny_data
from tf_mbalign.tasks import lowres_report, lowres_track, suite

WEAK = ("kab", "oci")
FOREIGN = {"kab": ["Azul fell-awen.", "Tanemmirt.", "Ad nruḥ.", "Yelha."],
           "oci": ["Bonjorn a totes.", "Mercés.", "Anam.", "Es polit."]}
ENGLISH = ["Hello everyone.", "Thank you.", "Let us go.", "It is nice."]


def write_lowres_data(root):
    """The default layout (topic and retrieval, en + de) plus lowres/ for kab and oci.

    FLORES' English side is the same four sentences for both languages, as in
    the real data (the embedding cache embeds them once).
    """
    root = write_tiny_data(root, languages=("en", "de"), tasks=("topic", "retrieval"))
    topics = "index_id\tcategory\ttext\n" + "".join(
        f"{i}\t{c}\t{t}\n" for i, c, t in TOPICS * 3)
    for lang in WEAK:
        for folder in ("tatoeba", "flores"):
            _write(os.path.join(root, "lowres", folder, f"{lang}-en.{lang}"),
                   "".join(f"{line}\n" for line in FOREIGN[lang]))
            _write(os.path.join(root, "lowres", folder, f"{lang}-en.en"),
                   "".join(f"{line}\n" for line in ENGLISH))
        _write(os.path.join(root, "lowres", "sib200", f"test-{lang}.tsv"), topics)
    return root


def _config(root, out, encoders=("tiny:demo", "tiny:demo"), **options):
    return suite.SuiteConfig(encoders=encoders, data_root=root, track="lowres", budget="tiny",
                             seeds=1, output_dir=str(out), job_processes=False, replicates=100,
                             progress=False, **options)


def test_track_end_to_end_with_weak_and_control_averages(tmp_path):
    root = write_lowres_data(tmp_path / "data")
    out = tmp_path / "out"
    lines = []
    summary = suite.run_suite(_config(root, out), log=lines.append)
    assert summary["languages"] == {"weak": ["kab", "oci"], "control": ["de", "en"]}
    weak, control = summary["groups"]["weak"], summary["groups"]["control"]
    headline = ["tatoeba_mean_xx_to_en", "tatoeba_mean_en_to_xx", "flores_mean_xx_to_en",
                "flores_mean_en_to_xx", "topic"]
    assert list(weak)[:5] == headline  # the headline first, [CLS] after
    assert set(weak) == {*headline, "tatoeba_cls_xx_to_en", "tatoeba_cls_en_to_xx",
                         "flores_cls_xx_to_en", "flores_cls_en_to_xx"}
    assert set(control) == {"tatoeba_mean_xx_to_en", "tatoeba_mean_en_to_xx",
                            "tatoeba_cls_xx_to_en", "tatoeba_cls_en_to_xx", "topic"}
    for name, table in weak.items():
        cells = table["encoders"][0]["languages"]
        assert table["encoders"][0]["non_english_average"]["mean"] == pytest.approx(
            (cells["kab"]["mean"] + cells["oci"]["mean"]) / 2), name
        assert table["group_languages"] == ["kab", "oci"]
        assert table["difference"]["compared"] == 2
    assert set(control["tatoeba_mean_xx_to_en"]["encoders"][0]["languages"]) == {"de"}
    assert set(weak["topic"]["encoders"][0]["languages"]) == {"en", "kab", "oci"}  # reference
    assert control["topic"]["encoders"][0]["transfer_gap"] is not None
    assert weak["flores_mean_xx_to_en"]["rows"] == {"kab": 4, "oci": 4}
    assert summary["comparison"]["weak"]["cells"] == 5 * 2
    assert set(summary["pooling_check"]["tiny_demo"]) == {
        "tatoeba_xx_to_en", "tatoeba_en_to_xx", "flores_xx_to_en", "flores_en_to_xx"}

    markdown = (out / "lowres.md").read_text(encoding="utf-8")
    assert markdown.index("## Weak languages: kab, oci") < markdown.index("## Controls: de, en")
    assert markdown.index("## Controls") < markdown.index("## [CLS] pooling")
    assert "mean pooling, fixed before any test row" in markdown
    assert "weak languages: average" in markdown and "controls: average" in markdown
    assert (out / "lowres.png").stat().st_size > 0
    assert json.loads((out / "lowres.json").read_text(encoding="utf-8"))["track"] == "lowres"
    job = json.loads((out / "tiny_demo" / "lowres_retrieval.json").read_text(encoding="utf-8"))
    assert job["job"]["task"] == "retrieval"
    assert job["job"]["settings"]["track"] == "lowres"
    assert set(job["job"]["settings"]["files"]["tatoeba"]) == {"kab", "oci", "de"}
    assert set(job["job"]["settings"]["files"]["flores"]) == {"kab", "oci"}

    # Re-run: both jobs of both encoders reused.
    lines.clear()
    suite.run_suite(_config(root, out), log=lines.append)
    assert sum("reused" in line for line in lines) == 4


def test_halves_and_seeds_apply_to_the_track(tmp_path):
    root = write_lowres_data(tmp_path / "data")
    config = _config(root, tmp_path / "out", encoders=("tiny:demo",), tasks=("retrieval",),
                     test_rows="odd", first_seed=100)
    [(_, name, record, _)] = suite.plan_jobs(config, log=lambda line: None)
    assert name == "lowres_retrieval"
    assert record["settings"]["test_rows"] == "odd"
    summary = suite.run_suite(config, log=lambda line: None)
    assert "comparison" not in summary
    assert summary["groups"]["weak"]["flores_mean_xx_to_en"]["rows"] == {"kab": 2, "oci": 2}
    assert (tmp_path / "out" / "lowres.png").is_file()
    [(_, _, topic, _)] = suite.plan_jobs(_config(root, tmp_path / "out", encoders=("tiny:demo",),
                                                 tasks=("topic",), first_seed=100),
                                         log=lambda line: None)
    assert topic["settings"]["seeds"] == [100]


def _table(correct_by_language):
    """A job table of known per-row results: {language: [1 or 0 per row]}."""
    return {"metric": "accuracy", "pooling": "mean", "languages": {
        language: {"values": [float(np.mean(flags))],
                   "row_stats": [[[flag, 1] for flag in flags]], "rows": len(flags),
                   "file": f"test-{language}.tsv"}
        for language, flags in correct_by_language.items()}}


def test_weak_average_and_worse_count_from_known_cells():
    # 10 rows a language. kab: all right -> all wrong (worse; a difference of exactly -1,
    # no variance); oci: the same rows right in both (exactly 0: neither); uig: none
    # right -> 8 right (up: +0.8, half-width ~1.96 sqrt(.8 .2 / 10) = .25). Controls:
    # de and en (English, topic's reference) both all right -> all wrong.
    before = _table({"kab": [1] * 10, "oci": [1, 0] * 5, "uig": [0] * 10, "de": [1] * 10,
                     "en": [1] * 10})
    after = _table({"kab": [0] * 10, "oci": [1, 0] * 5, "uig": [1] * 8 + [0] * 2,
                    "de": [0] * 10, "en": [0] * 10})
    settings = {"languages": {"weak": ["kab", "oci", "uig"], "control": ["de", "en"]}}
    results = {label: {"lowres_topic": {"job": {"settings": settings}, "tables": {"topic": t}}}
               for label, t in (("A", before), ("B", after))}
    groups = lowres_report.group_summaries(results, ["A", "B"], replicates=200)
    weak, control = groups["weak"]["topic"], groups["control"]["topic"]
    assert weak["encoders"][0]["non_english_average"]["mean"] == pytest.approx((1 + .5 + 0) / 3)
    assert weak["encoders"][1]["non_english_average"]["mean"] == pytest.approx((0 + .5 + .8) / 3)
    assert weak["difference"]["non_english_average"]["mean"] == pytest.approx(
        (-1 + 0 + .8) / 3)
    assert weak["difference"]["worse"] == ["kab"]  # not en, which is a control
    assert weak["difference"]["up"] == ["uig"]
    assert weak["difference"]["compared"] == 3
    assert control["difference"]["worse"] == ["de", "en"]
    assert control["encoders"][0]["non_english_average"]["mean"] == pytest.approx(1.0)  # de only
    counts = lowres_report.comparison_counts(groups["weak"])
    assert counts["cells"] == 3 and counts["worse"] == ["topic/kab"]
    assert counts["up"] == ["topic/uig"]


def test_the_default_track_is_unchanged_by_the_track(tmp_path):
    root = write_lowres_data(tmp_path / "data")
    default = suite.plan_jobs(suite.SuiteConfig(encoders=("tiny:demo",), data_root=root,
                                                budget="tiny", output_dir=str(tmp_path)),
                              log=lambda line: None)
    assert [name for _, name, _, _ in default] == ["topic", "retrieval"]
    for _, name, record, path in default:
        assert "track" not in record["settings"] and "languages" not in record["settings"]
        assert path.endswith(os.path.join("tiny_demo", f"{name}.json"))
        # The default track's settings are job_settings', as the committed jobs' are.
        made = record["settings"]
        assert made == suite.job_settings(name, made["files"], suite.budgets.TINY, range(2),
                                          root)
    retrieval = dict((name, record) for _, name, record, _ in default)["retrieval"]
    assert set(retrieval["settings"]["files"]["tests"]) == {"de"}
    assert suite.retrieval_test_sets(retrieval["settings"]) == {
        "retrieval": retrieval["settings"]["files"]["tests"]}


def test_missing_lowres_folder_is_a_clear_error(tmp_path):
    root = write_tiny_data(tmp_path / "data", tasks=("topic", "retrieval"))
    with pytest.raises(FileNotFoundError, match=r"lowres: no such folder.*--data_root"):
        suite.plan_jobs(_config(root, tmp_path / "out"), log=lambda line: None)
    with pytest.raises(ValueError, match="the lowres track runs retrieval, topic"):
        lowres_track.track_jobs(root, ("nli",))
    done = run_module(["-m", "tf_mbalign.evaluate", "suite", "--track=lowres",
                       "--encoder=tiny:demo", f"--data_root={root}", "--budget=tiny",
                       f"--output_dir={tmp_path / 'out'}"])
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"{os.path.join(root, 'lowres')}: no such folder" in done.stderr


# tolerance: other batch compositions, unit vectors: atol 1e-5 ~100 ulps.
@pytest.mark.numerics
def test_retrieval_embeds_a_repeated_sentence_once():
    from tf_mbalign.evaluation.sentence_embedding import SentenceEmbedder
    from tf_mbalign.modeling import encoders
    from tf_mbalign.tasks import runner

    bundle = encoders.load_encoder("tiny:demo", dropout=0.0)
    embedder = SentenceEmbedder(bundle.encoder, bundle.tokenizer)
    calls = []
    each_pooling = embedder.each_pooling
    embedder.each_pooling = lambda sentences: calls.append(list(sentences)) or each_pooling(
        sentences)
    known = {}
    first = runner._embed_each_pooling(embedder, ["a b", "c", "a b"], known)
    second = runner._embed_each_pooling(embedder, ["c", "d e"], known)
    assert calls == [["a b", "c"], ["d e"]]
    direct = each_pooling(["a b", "c", "a b", "d e"])
    for pooling in ("cls", "mean"):
        # The same vectors as embedding directly (batch composition differs: 1e-5, the
        # tolerance of test_embedder_batching_does_not_change_vectors).
        np.testing.assert_allclose(first[pooling], direct[pooling][:3], atol=1e-5)
        np.testing.assert_allclose(second[pooling], direct[pooling][[1, 3]], atol=1e-5)
