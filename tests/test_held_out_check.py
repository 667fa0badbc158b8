"""The alignment check on the languages a run trains: pairs of the user's corpus
held out of training (min(20, 5%) a language, chosen by the seed), in memory
and prepared; the per-language table and JSON; pooling and layer by
checkpoint; the summary's export against the unaligned model's best pooling.

Corpora are written into tmp_path; the encoder is the tiny random `tiny:demo`.
"""

import json

import pytest

from conftest import tiny_train_config
from tf_mbalign import config as config_lib
from tf_mbalign.config import TrainConfig
from tf_mbalign.data import corpus_preparation, held_out, training_input
from tf_mbalign.data import prepared_corpus as prepared
from tf_mbalign.evaluation.alignment_check import (
    AlignmentCheck, check_table, export_against_unaligned)
from tf_mbalign.evaluation.retrieval_callback import RetrievalCallback
from tf_mbalign.export.run_export import ExportCallback
from tf_mbalign.modeling import encoders
from tf_mbalign.training.run_summary import RunSummary, summary_block
from tf_mbalign.training.trainer import AlignmentRun

SIZES = {"de": 500, "fr": 60, "sw": 19}  # hold out 20 (the cap), 3 (5%), none


def _write_corpus(folder, sizes=SIZES, english=lambda language, i: f"{language} line {i} en",
                  reverse=False):
    """en-XX.tsv files of `sizes[XX]` pairs; `english` names each English side."""
    folder.mkdir()
    for language, count in sizes.items():
        lines = [f"{english(language, i)}\t{language} line {i}\n" for i in range(count)]
        (folder / f"en-{language}.tsv").write_text("".join(reversed(lines) if reverse
                                                           else lines))
    return str(folder)


def _held_pairs(corpus):
    return {(p.language, p.english, p.other) for p in corpus.held_out.pairs}


def _trained_sentences(corpus):
    return set(corpus.english) | set(corpus.other)


# === The hold-out ===

def test_hold_out_is_min_20_or_5_percent_a_language_and_never_trained_on(tmp_path):
    corpus = training_input.open_corpus(_write_corpus(tmp_path / "c"), hold_out_seed=0)
    held = corpus.held_out
    assert held.language_counts() == {"de": 20, "fr": 3}  # min(20, 25), min(20, 3), 19 // 20 = 0
    assert held.unchecked == ("sw",) and held.dropped == 0
    assert corpus.language_counts() == {"de": 480, "fr": 57, "sw": 19}
    assert corpus.stats.held_out == 23 and corpus.stats.pairs == len(corpus) == 556
    assert not _trained_sentences(corpus) & held.sentences()


def test_hold_out_depends_on_the_seed_and_the_text_not_the_line_order(tmp_path):
    spec = _write_corpus(tmp_path / "c")
    first = training_input.open_corpus(spec, hold_out_seed=0)
    again = training_input.open_corpus(spec, hold_out_seed=0)
    reordered = training_input.open_corpus(_write_corpus(tmp_path / "r", reverse=True),
                                           hold_out_seed=0)
    other_seed = training_input.open_corpus(spec, hold_out_seed=1)
    assert _held_pairs(first) == _held_pairs(again) == _held_pairs(reordered)
    assert first.held_out.fingerprint() == reordered.held_out.fingerprint()
    # Another seed: another 20 of de's 500 (all 20 alike has probability ~1e-35).
    assert _held_pairs(other_seed) != _held_pairs(first)
    assert other_seed.held_out.language_counts() == first.held_out.language_counts()
    assert training_input.open_corpus(spec).held_out is None  # library callers opt in


def test_pairs_sharing_a_sentence_with_a_held_out_pair_are_dropped(tmp_path):
    # de and fr share the English of lines 50..99 (as a multi-parallel corpus
    # shares all of them); ar repeats de's line-3 translation under new English.
    spec = _write_corpus(tmp_path / "c", sizes={"de": 100, "fr": 100},
                         english=lambda language, i: f"shared {i}" if (
                             language == "de" or i >= 50) else f"fr only {i}")
    (tmp_path / "c" / "en-ar.tsv").write_text(
        "".join(f"ar {i}\tde line {i}\n" for i in range(40)))
    everything = training_input.open_corpus(spec)
    corpus = training_input.open_corpus(spec, hold_out_seed=3)
    held = corpus.held_out
    assert held.language_counts() == {"ar": 2, "de": 5, "fr": 5}
    assert not _trained_sentences(corpus) & held.sentences()
    # Exactly the pairs with a held-out sentence are gone, and counted.
    sentences = held.sentences()
    expected = sum(1 for e, o in zip(everything.english, everything.other)
                   if e in sentences or o in sentences)
    assert len(everything) - len(corpus) == expected == len(held.pairs) + held.dropped
    assert corpus.stats.held_out == expected


def test_a_multi_parallel_corpus_holds_out_the_same_english_in_every_language(tmp_path):
    # Every language translates the same English sentences (as FLORES does):
    # the key is the English sentence, so no training pair is lost beyond
    # the held-out ones.
    spec = _write_corpus(tmp_path / "c", sizes={"de": 80, "fr": 80, "sw": 80},
                         english=lambda language, i: f"the same sentence {i}")
    corpus = training_input.open_corpus(spec, hold_out_seed=0)
    held = corpus.held_out
    english = {language: {p.english for p in held.pairs if p.language == language}
               for language in ("de", "fr", "sw")}
    assert len(english["de"]) == 4 and english["de"] == english["fr"] == english["sw"]
    assert held.dropped == 0 and corpus.stats.held_out == 12


def test_a_prepared_corpus_holds_out_what_memory_holds_out(tmp_path):
    spec = _write_corpus(tmp_path / "c", sizes={"de": 45, "fr": 30})
    tokenizer = encoders.load_tokenizer("tiny:demo")
    request = corpus_preparation.PreparationRequest.for_tokenizer(
        spec, "tiny:demo", tokenizer, shards_per_language=2, hold_out_seed=5)
    manifest = corpus_preparation.prepare_corpus(request, tokenizer, str(tmp_path / "p"),
                                                 log=lambda m: None)
    streamed = training_input.open_corpus(f"prepared:{tmp_path / 'p'}")
    in_memory = training_input.open_corpus(spec, hold_out_seed=5)
    assert streamed.held_out.fingerprint() == in_memory.held_out.fingerprint()
    assert streamed.held_out.language_counts() == {"de": 2, "fr": 1}
    assert manifest["pairs"] == len(in_memory) == 72 and manifest["held_out_pairs"] == 3
    assert streamed.language_counts() == in_memory.language_counts()
    assert streamed.stats.held_out == in_memory.stats.held_out == 3
    # The shards hold the in-memory training pairs under the same pair ids.
    assert streamed.sources_of(range(72)) == in_memory.sources
    # Another seed is another preparation.
    with pytest.raises(Exception, match=r"hold_out_seed=5 \(now 6\)"):
        corpus_preparation.prepare_corpus(
            corpus_preparation.PreparationRequest.for_tokenizer(
                spec, "tiny:demo", tokenizer, shards_per_language=2, hold_out_seed=6),
            tokenizer, str(tmp_path / "p"), log=lambda m: None)
    # Training on a subset of its languages checks those only.
    only_fr = training_input.open_corpus(f"prepared:{tmp_path / 'p'}", languages=["fr"])
    assert only_fr.held_out.language_counts() == {"fr": 1}


def test_a_corpus_prepared_without_held_out_pairs_is_trained_without_the_check(tmp_path):
    spec = _write_corpus(tmp_path / "c", sizes={"de": 40})
    tokenizer = encoders.load_tokenizer("tiny:demo")
    request = corpus_preparation.PreparationRequest.for_tokenizer(spec, "tiny:demo", tokenizer,
                                                                  shards_per_language=1)
    corpus_preparation.prepare_corpus(request, tokenizer, str(tmp_path / "p"), log=lambda m: None)
    assert not (tmp_path / "p" / prepared.HELD_OUT_FILE).exists()
    warnings = []
    check = AlignmentCheck(str(tmp_path / "run"))
    run = AlignmentRun(tiny_train_config(tmp_path / "run", corpus=f"prepared:{tmp_path / 'p'}",
                                         train_steps=0),
                       log=lambda m: None, warn=warnings.append, callbacks=[check])
    run.run()
    assert check.report is None and not (tmp_path / "run" / "alignment_check.json").exists()
    assert any("prepared before pairs were held out" in w and "--overwrite" in w
               for w in warnings)


# === The check on the corpus' languages, and resuming ===

def test_the_check_reports_every_corpus_language_and_resumes_on_the_same_pairs(tmp_path):
    spec = _write_corpus(tmp_path / "c", sizes={"de": 100, "fr": 40, "sw": 19})
    model_dir = tmp_path / "run"
    lines, warnings = [], []
    first = AlignmentCheck.for_alignment_run(tiny_train_config(model_dir))
    run = AlignmentRun(tiny_train_config(model_dir, corpus=spec, train_steps=2, seed=4),
                       callbacks=[first], log=lines.append, warn=warnings.append)
    run.run()
    report = json.loads((model_dir / "alignment_check.json").read_text())
    assert report == json.loads(json.dumps(first.report))
    assert report["held_out"]["languages"] == {"de": 5, "fr": 2}
    assert report["held_out"]["seed"] == 4 and report["held_out"]["unchecked_languages"] == ["sw"]
    for half in ("before", "after"):
        assert {k for k in report[half] if k not in ("step", "candidates", "all")} == {"de", "fr"}
        for language, pairs in (("de", 5), ("fr", 2)):
            figures = report[half][language]
            assert set(figures) == {"mean_rank", "margin", "accuracy", "pairs"}
            # Bounds by definition: 7 candidates, cosines in [-1, 1].
            assert figures["pairs"] == pairs and 1 <= figures["mean_rank"] <= 7
            assert 0 <= figures["accuracy"] <= 1 and -2 <= figures["margin"] <= 2
    assert report["after"]["candidates"] == 7  # every held-out English sentence
    # Step 0 with both poolings; "before" is the run's (tiny: [CLS]).
    assert report["pooling"] == "cls" and set(report["before_by_pooling"]) == {"cls", "mean"}
    assert report["before"] == report["before_by_pooling"]["cls"]
    table = check_table(report)
    assert "7 pairs of the corpus held out of training (min(20, 5%) a language" in table
    assert "seed 4" in table and "top-1 accuracy" in table and table in lines
    assert "not checked (fewer than 20 pairs, none held out): sw" in table
    for language in ("de", "fr"):
        row = next(line for line in table.splitlines() if line.startswith(f"  {language} "))
        assert row.count("->") == 3  # rank, margin, accuracy: before -> after
    # A resumed session holds out the same pairs and reports against step 0.
    held = run.corpus.held_out.fingerprint()
    second = AlignmentCheck.for_alignment_run(tiny_train_config(model_dir))
    resumed = AlignmentRun(tiny_train_config(model_dir, corpus=spec, train_steps=3, seed=4),
                           callbacks=[second], log=lambda m: None, warn=warnings.append)
    resumed.run()
    assert resumed.corpus.held_out.fingerprint() == held
    assert second.report["before_by_pooling"] == report["before_by_pooling"]
    assert second.report["after"]["step"] == 3 and not warnings
    # Resumed with another seed, the held-out pairs differ: step 0 is dropped.
    third = AlignmentCheck(str(model_dir))
    AlignmentRun(tiny_train_config(model_dir, corpus=spec, train_steps=4, seed=5),
                 callbacks=[third], log=lambda m: None, warn=warnings.append).run()
    assert third.report["before"] is None and third.report["before_by_pooling"] == {}
    assert any("other held-out pairs" in w for w in warnings)


# === Pooling and layer by checkpoint ===

@pytest.mark.parametrize("kind,pooling", [(config_lib.WITHOUT_MLM_HEAD, "mean"),
                                          (config_lib.WITH_MLM_HEAD, "cls"),
                                          (config_lib.RANDOM, "cls")])
def test_pooling_and_layer_resolve_by_checkpoint_and_a_flag_wins(kind, pooling):
    resolved, sources = TrainConfig().with_checkpoint_defaults(kind)
    assert (resolved.pooling, resolved.representation_layer) == (pooling, -1)
    assert sources["pooling"] != "set: --pooling"
    other = {"cls": "mean", "mean": "cls"}[pooling]
    pinned, sources = TrainConfig(pooling=other, representation_layer=-2) \
        .with_checkpoint_defaults(kind)
    assert (pinned.pooling, pinned.representation_layer) == (other, -2)
    assert sources["pooling"] == "set: --pooling"
    assert sources["representation_layer"] == "set: --representation_layer"


def test_a_headless_run_trains_checks_and_exports_mean_pooling(tmp_path, monkeypatch):
    monkeypatch.setattr("tf_mbalign.training.trainer.checkpoint_kind",
                        lambda bundle: config_lib.WITHOUT_MLM_HEAD)
    model_dir = tmp_path / "run"
    (tmp_path / "tatoeba").mkdir()
    (tmp_path / "tatoeba" / "de-en.de").write_text("Hallo\nDanke\n")
    (tmp_path / "tatoeba" / "de-en.en").write_text("Hello\nThanks\n")
    config = tiny_train_config(model_dir, train_steps=1, head_warmup_steps=0, tlm_weight=0.0,
                               retrieval_data=str(tmp_path / "tatoeba"))
    assert config.pooling is None  # by checkpoint: known once the encoder loads
    check, summary = AlignmentCheck.for_alignment_run(config), RunSummary()
    retrieval = RetrievalCallback.for_alignment_run(config)
    run = AlignmentRun(config, callbacks=[retrieval, check, ExportCallback(), summary],
                       log=lambda m: None, warn=lambda m: None)
    run.run()
    assert (run.config.pooling, run.aligner.pooling) == ("mean", "mean")
    assert check.report["pooling"] == "mean" and check.pooling == "mean"
    assert (retrieval.pooling, retrieval.layer) == ("mean", -1)
    info = json.loads((model_dir / "export" / "export_info.json").read_text())
    assert (info["pooling"], info["representation_layer"]) == ("mean", -1)
    flags = json.loads((model_dir / "flags.json").read_text())
    assert flags["pooling"] == "mean" and "mean pooling" in \
        flags["checkpoint_default_sources"]["pooling"]
    # The summary carries the check per language and prints the export against
    # the unaligned model's best pooling.
    written = json.loads((model_dir / "summary.json").read_text())
    assert written["alignment_check"]["pooling"] == "mean"
    assert set(written["alignment_check"]["languages"]) == {"ar", "de", "fr", "hi", "ru", "zh"}
    row = written["alignment_check"]["languages"]["de"]
    assert row["unaligned_best"]["pooling"] in ("cls", "mean")
    assert set(row["after"]) == {"mean_rank", "margin", "accuracy", "pairs"}
    block = summary_block(written)
    assert "export (mean pooling) vs the unaligned model at its best pooling" in block
    assert sum(line.startswith("    de ") for line in block.splitlines()) == 1


# === The export against the unaligned model's best pooling ===

def _figures(accuracy, mean_rank, margin=0.0):
    return {"accuracy": accuracy, "mean_rank": mean_rank, "margin": margin, "pairs": 20}


def test_the_export_is_compared_with_the_best_pooling_and_marked_when_worse():
    before = {"cls": {"step": 0, "de": _figures(0.60, 2.0, 0.3), "fr": _figures(0.90, 1.2),
                      "sw": _figures(0.50, 3.0)},
              "mean": {"step": 0, "de": _figures(0.80, 1.5, -0.1), "fr": _figures(0.90, 1.1),
                       "sw": _figures(0.50, 3.0)}}
    after = {"step": 9, "candidates": 60, "all": _figures(0.8, 1.4),
             "de": _figures(0.85, 1.3), "fr": _figures(0.90, 1.15), "sw": _figures(0.50, 3.0)}
    comparison = export_against_unaligned(before, after, "cls")
    # de: mean is better on accuracy whatever the margins say; the export beats it.
    assert comparison["de"]["unaligned_best"]["pooling"] == "mean"
    assert not comparison["de"]["worse"]
    # fr: a tie on accuracy goes to the lower mean rank, which the export misses.
    assert comparison["fr"]["unaligned_best"]["pooling"] == "mean" and comparison["fr"]["worse"]
    # sw: a full tie is the run's own pooling, not worse.
    assert comparison["sw"]["unaligned_best"]["pooling"] == "cls" and not comparison["sw"]["worse"]
    summary = {"outcome": "finished", "model_dir": "m", "error": None, "export": {},
               "load_export": [], "metrics": {},
               "steps": {"head_warmup": {"done": 0, "planned": 0},
                         "encoder": {"done": 9, "planned": 9}},
               "precision": {"policy": "float32", "reason": "set"},
               "corpus": {"pairs": 1, "languages": {}, "skipped_empty": 0, "truncated": 0},
               "wall_seconds": 1, "checkpoints": {"latest": None, "latest_bytes": 0,
                                                  "all_bytes": 0, "kept_steps": []},
               "alignment_check": {"pooling": "cls", "candidates": 60, "languages": {
                   language: {"after": after[language],
                              "unaligned_best": comparison[language]["unaligned_best"],
                              "export_worse": comparison[language]["worse"]}
                   for language in ("de", "fr", "sw")}}}
    lines = summary_block(summary).splitlines()
    row = {line.split()[0]: line for line in lines if line.startswith("    ")}
    assert "accuracy 0.850 vs 0.800 (mean), mean rank 1.30 vs 1.50" in row["de"]
    assert "WORSE" in row["fr"] and "WORSE" not in row["de"] and "WORSE" not in row["sw"]


def test_held_out_pairs_round_trip_through_their_file(tmp_path):
    corpus = training_input.open_corpus(_write_corpus(tmp_path / "c"), hold_out_seed=2)
    corpus.held_out.write(str(tmp_path / "held.jsonl"))
    read = held_out.HeldOut.read(str(tmp_path / "held.jsonl"))
    assert read == corpus.held_out and read.fingerprint() == corpus.held_out.fingerprint()


@pytest.mark.parametrize("has_mlm_head,pooling", [(False, "mean"), (True, "cls")])
def test_a_checkpoint_evaluated_as_it_is_embeds_with_its_pooling_by_checkpoint(
        monkeypatch, has_mlm_head, pooling):
    """`evaluate --encoder=e5-small` embeds with mean pooling, as training
    resolves it for a checkpoint without an MLM head (not [CLS])."""
    import dataclasses

    from tf_mbalign.evaluation import trained_encoders
    from tf_mbalign.modeling import encoders

    tiny = encoders.load_encoder("tiny:demo", dropout=0.0)
    pretrained = dataclasses.replace(tiny, pretrained=True,
                                     mlm_head_weights={"bias": None} if has_mlm_head else None)
    monkeypatch.setattr(encoders, "load_encoder", lambda spec, dropout=None: pretrained)
    trained = trained_encoders.load_trained_encoder("some-checkpoint", dropout=0.0)
    assert (trained.kind, trained.pooling, trained.representation_layer) == (
        "pretrained", pooling, -1)
    # A random test encoder keeps the values of a checkpoint with a head.
    monkeypatch.undo()
    assert trained_encoders.load_trained_encoder("tiny:demo", dropout=0.0).pooling == "cls"
