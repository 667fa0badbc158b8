"""Objectives as flags: weights that switch TLM / the contrastive loss
off, in-batch negatives, defaults by checkpoint kind, the measured head warm-up,
and the before -> after alignment check on held-out demo pairs (on other
corpora's held-out pairs: test_held_out_check.py)."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import tiny_train_config
from tf_mbalign import config as config_lib
from tf_mbalign.config import TrainConfig
from tf_mbalign.data import corpus as corpus_lib
from tf_mbalign.data import pipeline
from tf_mbalign.modeling import encoders
from tf_mbalign.modeling.aligner import Aligner
from tf_mbalign.training.trainer import AlignmentRun

_PIPELINE = pipeline.PipelineConfig(max_seq_length=48, max_sentence_length=24,
                                    max_predictions_per_seq=8)


def _tiny_aligner(**kwargs):
    bundle = encoders.load_encoder("tiny:demo", dropout=0.0)
    return bundle, Aligner(bundle.encoder, queue_size=16, **kwargs)


def _batch(bundle, size=8):
    dataset = pipeline.build_dataset(corpus_lib.read_corpus("demo"), bundle.tokenizer,
                                     _PIPELINE, size)
    return next(iter(dataset))


# === Weights: an ablation is a flag ===

def test_tlm_weight_zero_never_runs_the_mlm_head():
    bundle, aligner = _tiny_aligner(tlm_weight=0.0)

    def refuse(*args, **kwargs):
        raise AssertionError("the MLM head ran with tlm_weight=0")

    aligner.mlm_head.call = refuse
    batch = _batch(bundle)
    losses, _ = aligner.compute_losses(batch, aligner.momentum_keys(batch))
    assert float(losses["tlm_loss"]) == 0.0
    assert float(losses["loss"]) == pytest.approx(float(losses["moco_loss"]))
    trained = {id(v) for v in aligner.trained_variables(True)}
    assert not trained & {id(v) for v in aligner.head_only_variables()}
    assert {id(v) for v in aligner.encoder.trainable_variables} <= trained


# tolerance: a weight times the same computation: loss 1e-6 relative; gradients 1e-4 relative + 1e-9 for entries ~0.
@pytest.mark.numerics
def test_tlm_weight_scales_the_tlm_loss_and_the_heads_gradient():
    bundle, aligner = _tiny_aligner()
    batch = _batch(bundle)
    keys = aligner.momentum_keys(batch)
    head = aligner.head_only_variables()

    def loss_and_head_gradients(weight):
        aligner.tlm_weight = weight
        with tf.GradientTape() as tape:
            losses, _ = aligner.compute_losses(batch, keys)
        return losses, tape.gradient(losses["loss"], head)

    full, full_gradients = loss_and_head_gradients(1.0)
    quarter, quarter_gradients = loss_and_head_gradients(0.25)
    np.testing.assert_allclose(float(quarter["loss"]),
                               0.25 * float(full["tlm_loss"]) + float(full["moco_loss"]),
                               rtol=1e-6)
    # The contrastive loss never reaches the head's own variables.
    for a, b in zip(full_gradients, quarter_gradients):
        np.testing.assert_allclose(b.numpy(), 0.25 * a.numpy(), rtol=1e-4, atol=1e-9)
    assert max(float(tf.reduce_max(tf.abs(g))) for g in full_gradients) > 1e-4


@pytest.mark.parametrize("off", ["tlm_weight", "contrastive_weight"])
def test_an_objective_switched_off_is_not_computed_and_trains_nothing(tmp_path, off):
    run = AlignmentRun(tiny_train_config(tmp_path / off, train_steps=2, **{off: 0.0}))
    head = [v.numpy().copy() for v in run.aligner.head_only_variables()]
    key_encoder = [w.copy() for w in run.aligner.key_encoder.get_weights()]
    encoder = [w.copy() for w in run.aligner.encoder.get_weights()]
    history = run.run()
    aligner = run.aligner
    head_changed = any(not np.array_equal(a, v.numpy())
                       for a, v in zip(head, aligner.head_only_variables()))
    key_changed = any(not np.array_equal(a, b)
                      for a, b in zip(key_encoder, aligner.key_encoder.get_weights()))
    assert any(not np.array_equal(a, b) for a, b in zip(encoder, aligner.encoder.get_weights()))
    if off == "tlm_weight":
        assert all(h["tlm_loss"] is None and h["tlm_accuracy"] is None for h in history)
        assert not head_changed and key_changed
        assert history[-1]["moco_loss"] > 0
    else:
        assert all(h["moco_loss"] is None and "off" in h["moco_note"] for h in history)
        assert head_changed and not key_changed
        assert int(aligner.key_queue.filled.numpy()) == 0
        assert all(h["loss"] == pytest.approx(h["tlm_loss"]) for h in history)


# === In-batch negatives ===

# tolerance: cosines / T of unit vectors (|logit| <= 20) vs numpy: rtol 1e-5 + atol 1e-6.
@pytest.mark.numerics
def test_in_batch_negatives_are_symmetric_infonce_without_queue_or_key_encoder():
    _, aligner = _tiny_aligner(contrastive_negatives="in_batch", temperature=0.5)
    assert aligner.key_encoder is None and aligner.key_queue is None
    rng = np.random.default_rng(0)
    q, k = (rng.normal(size=(4, 6)).astype(np.float32) for _ in range(2))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    k /= np.linalg.norm(k, axis=1, keepdims=True)
    pair_ids = np.array([10, 11, 12, 11])  # rows 1 and 3: the same pair drawn twice
    logits, labels = aligner.in_batch_logits(tf.constant(q), tf.constant(k),
                                             tf.constant(pair_ids))
    similarity = q @ k.T / 0.5
    # Queries against keys, then keys against queries; the positive is each
    # row's own pair; another copy of the same pair is no negative.
    expected = np.concatenate([similarity, similarity.T])
    repeated = (pair_ids[:, None] == pair_ids[None, :]) & ~np.eye(4, dtype=bool)
    masked = np.concatenate([repeated, repeated])
    logits = logits.numpy()
    assert labels.numpy().tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    np.testing.assert_allclose(logits[~masked], expected[~masked], rtol=1e-5, atol=1e-6)
    assert masked.sum() == 4 and (logits[masked] < -1e8).all()


def test_in_batch_run_trains_the_encoder_on_both_sides(tmp_path):
    history = AlignmentRun(tiny_train_config(
        tmp_path / "in_batch", train_steps=1, contrastive_negatives="in_batch")).run()
    # In-batch negatives exist from step 1 (no queue to fill): log(8) at a random start.
    assert history[0]["moco_loss"] == pytest.approx(np.log(8), rel=0.05)
    assert "queue_fill" not in history[0] and "moco_note" not in history[0]


# === Defaults by checkpoint kind ===

def test_defaults_are_resolved_per_checkpoint_kind_with_their_sources():
    headless, sources = TrainConfig().with_checkpoint_defaults(config_lib.WITHOUT_MLM_HEAD)
    # The grid's choice for a headless checkpoint: TLM + in-batch negatives.
    assert (headless.tlm_weight, headless.contrastive_negatives, headless.head_warmup_steps,
            headless.queue_size, headless.momentum, headless.temperature) == \
        (1.0, "in_batch", 50, 4096, 0.99, 0.05)
    assert config_lib.GRID in sources["tlm_weight"] and config_lib.GRID in \
        sources["contrastive_negatives"]
    assert all(config_lib.GRID in sources[name] for name in ("queue_size", "temperature"))
    assert "unused with --contrastive_negatives=in_batch" in sources["queue_size"]
    # Contrastive only: nothing to warm up.
    moco_only, sources = TrainConfig(tlm_weight=0.0).with_checkpoint_defaults(
        config_lib.WITHOUT_MLM_HEAD)
    assert moco_only.head_warmup_steps == 0 and "--tlm_weight=0" in sources["head_warmup_steps"]
    # TLM alone is never resolved to nothing to train.
    tlm_only, sources = TrainConfig(contrastive_weight=0.0).with_checkpoint_defaults(
        config_lib.WITHOUT_MLM_HEAD)
    assert tlm_only.tlm_weight == 1.0 and "--contrastive_weight=0" in sources["tlm_weight"]
    with_head, sources = TrainConfig().with_checkpoint_defaults(config_lib.WITH_MLM_HEAD)
    assert (with_head.tlm_weight, with_head.contrastive_negatives, with_head.head_warmup_steps,
            with_head.queue_size, with_head.momentum, with_head.temperature) == \
        (1.0, "queue", 0, 65536, 0.999, 0.07)
    assert "He et al. 2020" in sources["queue_size"] and "unverified" in sources["queue_size"]
    # Set values stay; a resolved config resolves to itself.
    kept, sources = TrainConfig(queue_size=1024).with_checkpoint_defaults(
        config_lib.WITHOUT_MLM_HEAD)
    assert kept.queue_size == 1024 and sources["queue_size"] == "set: --queue_size"
    assert kept.with_checkpoint_defaults(config_lib.WITH_MLM_HEAD)[0] == kept
    with pytest.raises(ValueError, match="with_checkpoint_defaults"):
        TrainConfig().total_steps  # noqa: B018 - unresolved


@pytest.mark.parametrize("values,expected", [
    (dict(tlm_weight=0.0, contrastive_weight=0.0), "leave nothing to train"),
    (dict(tlm_weight=0.0, head_warmup_steps=5), "--tlm_weight=0 switches off"),
    (dict(tlm_weight=-1.0), "must be >= 0"),
    (dict(contrastive_negatives="memory_bank"), "is not one of"),
])
def test_contradictory_objective_flags_are_refused(values, expected):
    with pytest.raises(ValueError, match=expected):
        TrainConfig(**values)


def test_in_batch_needs_no_queue_as_large_as_the_batch():
    TrainConfig(contrastive_negatives="in_batch", queue_size=4, global_batch_size=8)
    with pytest.raises(ValueError, match="must hold at least one global batch"):
        TrainConfig(contrastive_negatives="queue", queue_size=4, global_batch_size=8)
    # Left to the checkpoint, the check runs once the negatives are known.
    small_queue = TrainConfig(queue_size=4, global_batch_size=8)
    assert small_queue.with_checkpoint_defaults(config_lib.WITHOUT_MLM_HEAD)[0] \
        .contrastive_negatives == "in_batch"
    with pytest.raises(ValueError, match="must hold at least one global batch"):
        small_queue.with_checkpoint_defaults(config_lib.WITH_MLM_HEAD)


def test_flags_json_holds_the_sources_and_reads_back(tmp_path):
    resolved, sources = TrainConfig().with_checkpoint_defaults(config_lib.WITHOUT_MLM_HEAD)
    path = tmp_path / "flags.json"
    path.write_text(resolved.to_json(sources))
    assert json.loads(path.read_text())["checkpoint_default_sources"] == sources
    assert TrainConfig.from_json_file(str(path)) == resolved


def test_a_headless_checkpoint_without_warmup_is_warned_about(tmp_path, monkeypatch):
    monkeypatch.setattr("tf_mbalign.training.trainer.checkpoint_kind",
                        lambda bundle: config_lib.WITHOUT_MLM_HEAD)
    warnings, lines = [], []
    run = AlignmentRun(tiny_train_config(tmp_path / "cold", train_steps=0, head_warmup_steps=0,
                                         tlm_weight=1.0),
                       log=lines.append, warn=warnings.append)
    run.run()
    assert len(warnings) == 1 and "has no MLM head and --head_warmup_steps=0" in warnings[0]
    assert "--head_warmup_steps=N" in warnings[0] and "--tlm_weight=0" in warnings[0]
    # The resolved values were printed with their sources and written to flags.json.
    assert any(line.startswith("  --temperature=0.05  [used by every row of the recipe grid")
               for line in lines)
    flags = json.loads((tmp_path / "cold" / "flags.json").read_text())
    assert flags["temperature"] == 0.05
    assert flags["checkpoint_default_sources"]["head_warmup_steps"] == \
        "set: --head_warmup_steps"
    # Left to the checkpoint, a headless run gets the grid's choice: TLM with
    # in-batch negatives after a 50-step head warm-up.
    warm = AlignmentRun(tiny_train_config(tmp_path / "warm", train_steps=0))
    assert (warm.config.tlm_weight, warm.config.contrastive_negatives,
            warm.config.head_warmup_steps) == (1.0, "in_batch", 50)


# === The head warm-up, measured ===

# tolerance: the same function on the same batches and weights in one process: the same kernels give the same argmax, so the count is exact; abs 1e-6 is the float of a count.
@pytest.mark.numerics
def test_head_warmup_is_measured_on_its_own_last_batches(tmp_path):
    from tf_mbalign.training.head_warmup import tlm_accuracy
    from tf_mbalign.training.run_summary import RunSummary

    summary = RunSummary()
    run = AlignmentRun(tiny_train_config(tmp_path / "w", train_steps=0, head_warmup_steps=4,
                                         head_learning_rate=5e-2), callbacks=[summary])
    history = run.run()
    measured = history[-1]
    assert measured["step"] == 4 and measured["head_warmup_check_batches"] == 4
    # Replaying the warm-up's batches from their positions gives the same
    # batches (fingerprints) and, with the trained head, the same accuracy.
    replay = pipeline.build_dataset(run.corpus, run.bundle.tokenizer,
                                    run.config.pipeline_config(), 8).take(4)
    fingerprints = [f"{int(pipeline.batch_fingerprint(b['pair_id'])) & (2**64 - 1):016x}"
                    for b in replay]
    assert fingerprints == [h["batch_fingerprints"][0] for h in history]
    accuracy, tokens, _ = tlm_accuracy(run.aligner, replay)
    assert measured["head_warmup_tlm_accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert measured["head_warmup_check_tokens"] == tokens
    # The head learnt something in 4 steps (the most frequent characters).
    assert accuracy > 0.02
    assert summary.summary["head_warmup_check"]["tlm_accuracy"] == pytest.approx(accuracy,
                                                                                 abs=1e-6)


# === Held-out demo pairs and the before -> after check ===

def test_held_out_demo_pairs_are_never_trained_on():
    training = corpus_lib.read_corpus("demo")
    held_out = corpus_lib.read_demo_corpus(held_out=True)
    assert held_out.language_counts() == {lang: 20 for lang in training.languages}
    sentences = set(training.english) | set(training.other)
    assert not sentences & (set(held_out.english) | set(held_out.other))
    assert len(training) + training.stats.held_out == 1200
    assert all(int(s.rsplit(":", 1)[1]) % 10 == 0 for s in held_out.sources)
    # A language filter keeps the split.
    german = corpus_lib.read_corpus("demo", languages=["de"])
    assert german.languages == ["de"] and not set(german.english) & set(held_out.english)


def test_the_demo_directory_given_as_a_path_holds_out_pairs_of_its_own():
    from tf_mbalign.data import training_input

    demo = training_input.open_corpus("demo", hold_out_seed=0)
    assert demo.held_out.rule == "demo" and len(demo.held_out.pairs) == 120
    # The same files as a directory are a corpus like any other: min(20, 5%)
    # of each language's 200 pairs, chosen by the seed, none trained on.
    directory = training_input.open_corpus(corpus_lib.demo_corpus_dir(), hold_out_seed=0)
    assert directory.held_out.rule == "corpus"
    assert directory.held_out.language_counts() == {lang: 10 for lang in demo.languages}
    assert not (set(directory.english) | set(directory.other)) & directory.held_out.sentences()


def test_ranks_and_margins_against_every_candidate():
    from tf_mbalign.evaluation.alignment_check import Bitext, alignment_scores

    similarity = {"a_de": [0.9, 0.5, 0.95], "b_de": [0.1, 0.8, 0.2], "c_fr": [0.3, 0.7, 0.4]}

    def embed(sentences):  # candidates a, b, c are the unit vectors
        return np.array([similarity[s] if s in similarity else np.eye(3)["abc".index(s)]
                         for s in sentences], np.float32)

    scores = alignment_scores(embed, {"de": Bitext("de", ["a_de", "b_de"], ["a", "b"]),
                                      "fr": Bitext("fr", ["c_fr"], ["c"])})
    assert scores["candidates"] == 3
    assert scores["de"]["mean_rank"] == pytest.approx((2 + 1) / 2)
    assert scores["de"]["margin"] == pytest.approx(((0.9 - 0.95) + (0.8 - 0.2)) / 2)
    assert scores["fr"] == {"mean_rank": 2.0, "margin": pytest.approx(0.4 - 0.7),
                            "accuracy": 0.0, "pairs": 1}
    assert scores["de"]["accuracy"] == pytest.approx(1 / 2)  # b_de ranks first, a_de second
    assert scores["all"]["pairs"] == 3
    assert scores["all"]["mean_rank"] == pytest.approx(5 / 3, abs=1e-4)


# === The configs ===

@pytest.mark.parametrize("flagfile", ["configs/recipe.flags", "configs/align.flags"])
def test_configs_parse_to_valid_settings(flagfile):
    from absl import flags

    from conftest import REPO_ROOT

    flag_values = flags.FlagValues()  # the training binary's flags, apart from absl's global ones
    config_lib.define_flags(flag_values)
    flag_values(["x", f"--flagfile={os.path.join(REPO_ROOT, flagfile)}"])
    parsed = config_lib.TrainConfig.from_flags(flag_values)
    # Resolved as for e5-small (no MLM head): no contradiction appears.
    parsed.with_checkpoint_defaults(config_lib.WITHOUT_MLM_HEAD)
    values = json.loads(parsed.to_json())
    if flagfile == "configs/recipe.flags":
        # The recipe leaves what depends on the checkpoint to the checkpoint.
        assert all(values[name] is None for name in config_lib.CHECKPOINT_DEFAULTS)
        assert values["corpus"] == "../shared/data/parallel" and values["alignment_check"]
    else:  # The demo pins its own values.
        assert values["head_warmup_steps"] == 50 and values["queue_size"] == 4096
        # The paper's two objectives, shown at work.
        assert (values["tlm_weight"], values["contrastive_negatives"]) == (1.0, "queue")


def test_add_languages_config_is_the_grid_row_it_names():
    """configs/add_languages.flags trains as the add-a-language grid's chosen
    row did (its flags.json, committed with the row), apart from where the run
    goes and how often it checkpoints, and as the frozen-table run whose track
    figures it now rests on; a value changed in any of them fails here."""
    from absl import flags

    from conftest import REPO_ROOT

    with open(os.path.join(REPO_ROOT, "docs", "results", "lowres_choose", "grid.json"),
              encoding="utf-8") as f:
        chosen = json.load(f)["chosen"]
    with open(os.path.join(REPO_ROOT, "docs", "results", "lowres_choose", chosen, "training",
                           "flags.json"), encoding="utf-8") as f:
        row = json.load(f)
    flag_values = flags.FlagValues()
    config_lib.define_flags(flag_values)
    flag_values(["x", f"--flagfile={os.path.join(REPO_ROOT, 'configs', 'add_languages.flags')}"])
    parsed = config_lib.TrainConfig.from_flags(flag_values)
    resolved, _ = parsed.with_checkpoint_defaults(config_lib.WITHOUT_MLM_HEAD)
    values = json.loads(resolved.to_json())
    where = {"model_dir", "checkpoint_every", "checkpoint_default_sources"}
    differ = {name: (values.get(name), row[name]) for name in row
              if name not in where and values.get(name) != row[name]}
    assert not differ, f"add_languages.flags vs the grid row {chosen!r}: {differ}"
    # The settings the grid did not have, each judged on the track by a run
    # that changed it alone: the table frozen (RESULTS.md's "The recipe with
    # the token table frozen"), then dropout masks from 16 bits ("Dropout
    # masks from 16 random bits on the track"). Each run's flags.json holds
    # every setting but where it went and its seed; a flag added after a run
    # has its default there.
    defaults = json.loads(config_lib.TrainConfig().to_json())

    def run_flags(*parts):
        with open(os.path.join(REPO_ROOT, "docs", "results", *parts, "flags.json"),
                  encoding="utf-8") as f:
            return {**defaults, **json.load(f)}

    def differences(a, b):
        return {name: (a.get(name), b.get(name)) for name in set(a) | set(b)
                if name not in where | {"seed"} and a.get(name) != b.get(name)}

    frozen_run = run_flags("lean_frozen", "training")
    bits_run = run_flags("lean_dropout_bits", "training_bits16")
    baseline_run = run_flags("lean_dropout_bits", "training_bits32")
    assert not differences(baseline_run, frozen_run)
    assert differences(bits_run, frozen_run) == {"dropout_mask_bits": (16, 32)}
    differ = differences(values, bits_run)
    assert not differ, f"add_languages.flags vs the 16-bit dropout run: {differ}"
    assert values["train_token_embeddings"] is False
