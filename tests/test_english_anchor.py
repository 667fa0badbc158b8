"""The English anchor: a frozen copy of the starting encoder embeds the English
side, and the trained encoder's embeddings of both sides are pulled to it
(multilingual distillation, Reimers & Gurevych 2020)."""

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
from tf_mbalign.training.checkpointing import CheckpointError
from tf_mbalign.training.trainer import AlignmentRun

_PIPELINE = pipeline.PipelineConfig(max_seq_length=48, max_sentence_length=24,
                                    max_predictions_per_seq=8)


def _tiny_aligner(encoder=None, **kwargs):
    bundle = encoders.load_encoder("tiny:demo", dropout=0.0)
    return bundle, Aligner(encoder or bundle.encoder, queue_size=16, **kwargs)


def _batch(bundle, size=8):
    dataset = pipeline.build_dataset(corpus_lib.read_corpus("demo"), bundle.tokenizer,
                                     _PIPELINE, size)
    batch = next(iter(dataset))
    coins = batch["query_is_english"].numpy()
    assert coins.any() and not coins.all()  # both sides are the English one somewhere
    return batch


def _perturb(encoder, scale=0.05):
    """Moves the trained encoder away from its teacher (as training would)."""
    rng = np.random.default_rng(0)
    encoder.set_weights([w + scale * rng.normal(size=w.shape).astype(w.dtype)
                         for w in encoder.get_weights()])


def _vectors(aligner, encoder, batch, side):
    return aligner.sentence_vectors(encoder, batch[f"{side}_token_ids"],
                                    batch[f"{side}_padding_mask"]).numpy().astype(np.float64)


# === The loss ===

# tolerance: float32 vs float64 numpy, relative 1e-5: float32 rounding amplified by |t|/|s-t| < 10, summed over 512 terms.
@pytest.mark.numerics
@pytest.mark.parametrize("kind", ["mse", "cosine"])
def test_anchor_loss_equals_a_numpy_reference(kind):
    bundle, aligner = _tiny_aligner(anchor_weight=0.5, anchor_loss=kind,
                                    contrastive_negatives="in_batch", pooling="mean")
    _perturb(aligner.encoder)
    batch = _batch(bundle)
    losses, sums = aligner.compute_losses(batch, training=False)

    english = batch["query_is_english"].numpy()[:, None]
    target = np.where(english, _vectors(aligner, aligner.teacher, batch, "query"),
                      _vectors(aligner, aligner.teacher, batch, "key"))
    students = [_vectors(aligner, aligner.encoder, batch, side) for side in ("query", "key")]
    if kind == "mse":  # mean over coordinates, then over the 2B sentences
        distances = [np.mean((s - target) ** 2, axis=1) for s in students]
    else:
        distances = [1 - np.sum(s * target, axis=1)
                     / (np.linalg.norm(s, axis=1) * np.linalg.norm(target, axis=1))
                     for s in students]
    expected = np.mean(np.concatenate(distances))
    assert expected > 1e-3  # the perturbed encoder is away from its teacher on both sides
    # float32 inputs (~1e-7 relative) amplified by |t| / |s - t| (< 10 here) and
    # summed over 2 x 8 x 32 terms: relative error well below 1e-5.
    np.testing.assert_allclose(float(losses["anchor_loss"]), expected, rtol=1e-5)
    np.testing.assert_allclose(sums["anchor_distances"].numpy(), np.concatenate(distances),
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(
        float(losses["loss"]),
        float(losses["tlm_loss"]) + float(losses["moco_loss"]) + 0.5 * expected, rtol=1e-5)


@pytest.mark.parametrize("negatives", ["queue", "in_batch"])
def test_anchor_off_builds_no_teacher_and_leaves_the_loss_unchanged(negatives):
    bundle, off = _tiny_aligner(contrastive_negatives=negatives)
    _, on = _tiny_aligner(encoder=bundle.encoder, contrastive_negatives=negatives,
                          anchor_weight=2.0)
    on.mlm_head.set_weights(off.mlm_head.get_weights())
    assert off.teacher is None and off.teacher_fingerprint is None
    assert on.teacher is not None and on.teacher is not on.encoder
    # The teacher is not among the aligner's weights, nor trained.
    assert len(on.weights) == len(off.weights) + 1  # + the fingerprint
    assert len(on.trained_variables(True)) == len(off.trained_variables(True))
    assert not on.teacher.trainable_weights

    calls = {"encoder": 0, "teacher": 0}
    for name, encoder in (("encoder", bundle.encoder), ("teacher", on.teacher)):
        def counted(*args, _call=encoder.call, _name=name, **kwargs):
            calls[_name] += 1
            return _call(*args, **kwargs)
        encoder.call = counted

    batch = _batch(bundle)
    keys = off.momentum_keys(batch)
    off_losses, _ = off.compute_losses(batch, keys, training=False)
    # TLM + the query (queue) or both sides (in-batch); no teacher.
    assert calls == {"encoder": 2 if negatives == "queue" else 3, "teacher": 0}
    calls.update(encoder=0)
    on_losses, _ = on.compute_losses(batch, keys, training=False)
    # TLM + both sides: in-batch negatives' two sides serve the anchor too;
    # MoCo's key side is embedded once more by the trained encoder. The
    # teacher runs once.
    assert calls == {"encoder": 3, "teacher": 1}
    assert float(off_losses["anchor_loss"]) == 0.0
    assert float(off_losses["loss"]) == float(
        off.tlm_weight * off_losses["tlm_loss"] + off.contrastive_weight * off_losses["moco_loss"])
    for name in ("tlm_loss", "moco_loss"):
        assert float(on_losses[name]) == pytest.approx(float(off_losses[name]), rel=1e-6)
    assert float(on_losses["anchor_loss"]) > 0
    assert float(on_losses["loss"]) == pytest.approx(
        float(off_losses["loss"]) + 2.0 * float(on_losses["anchor_loss"]), rel=1e-6)
    # The config round-trips the anchor.
    assert {k: on.get_config()[k] for k in ("anchor_weight", "anchor_loss")} == \
        {"anchor_weight": 2.0, "anchor_loss": "mse"}


# tolerance: the same terms summed in another order: 1e-5 of the largest gradient entry.
@pytest.mark.numerics
def test_gradients_reach_the_encoder_through_both_sides():
    bundle, aligner = _tiny_aligner(anchor_weight=1.0, tlm_weight=0.0, contrastive_weight=0.0)
    _perturb(aligner.encoder)
    batch = _batch(bundle)
    variables = aligner.encoder.trainable_variables

    def gradients(stopped=None):
        with tf.GradientTape() as tape:
            if stopped is None:
                loss = aligner.compute_losses(batch, training=False)[0]["loss"]
            else:
                vectors = aligner.trained_sentence_vectors(batch, training=False)
                vectors[stopped] = tf.stop_gradient(vectors[stopped])
                loss = aligner.anchor_terms(batch, vectors)[0]
        return [np.zeros(v.shape) if g is None else tf.convert_to_tensor(g).numpy()
                for g, v in zip(tape.gradient(loss, variables), variables)]

    both, query_only, key_only = gradients(), gradients("key"), gradients("query")
    scale = max(float(np.max(np.abs(g))) for g in both)
    for side in (query_only, key_only):  # each side alone moves the encoder
        assert max(float(np.max(np.abs(g))) for g in side) > 0.1 * scale
    # The loss's gradient is the two sides' sum: neither is cut off. float32
    # sums of the same terms in another order: 1e-5 of the largest entry.
    for g, q, k in zip(both, query_only, key_only):
        np.testing.assert_allclose(g, q + k, atol=1e-5 * scale)


# === Training with the anchor ===

def test_the_teacher_stays_the_starting_encoder_while_the_encoder_trains(tmp_path):
    run = AlignmentRun(tiny_train_config(tmp_path / "a", train_steps=3, head_warmup_steps=1,
                                         anchor_weight=1.0, contrastive_negatives="in_batch",
                                         checkpoint_every=2))
    aligner = run.aligner
    start = [w.copy() for w in aligner.encoder.get_weights()]
    for a, b in zip(start, aligner.teacher.get_weights()):
        np.testing.assert_array_equal(a, b)
    history = run.run()
    for a, b in zip(start, aligner.teacher.get_weights()):
        np.testing.assert_array_equal(a, b)  # after the warm-up and 3 encoder steps
    assert any(not np.array_equal(a, b) for a, b in zip(start, aligner.encoder.get_weights()))
    teacher = {id(v) for v in aligner.teacher.weights}
    trained = {id(v) for v in aligner.trained_variables(True)}
    optimized = {id(v) for v in run.alignment_step.optimizer._trainable_variables}
    assert not teacher & (trained | optimized)
    assert [h["phase"] for h in history] == ["head_warmup"] + ["encoder"] * 3
    # The warm-up leaves the encoder at its start: only the other side is off the anchor.
    assert all(h["anchor_loss"] > 0 and "anchor_note" not in h for h in history)
    # Checkpoints hold the teacher's fingerprint, not the teacher.
    names = _checkpoint_names(run)
    assert any("teacher_fingerprint" in n for n in names)
    assert not any("teacher/" in n for n in names)


def _checkpoint_names(run):
    from tf_mbalign.training import checkpointing

    steps = checkpointing.committed_steps(run.state.directory)
    prefix = checkpointing.checkpoint_prefix(run.state.directory, steps[-1])
    return [name for name, _ in tf.train.list_variables(prefix)]


def test_anchor_only_trains_the_encoder(tmp_path):
    history = AlignmentRun(tiny_train_config(
        tmp_path / "only", train_steps=2, tlm_weight=0.0, contrastive_weight=0.0,
        anchor_weight=1.0, anchor_loss="cosine")).run()
    for h in history:
        assert h["tlm_loss"] is None and h["moco_loss"] is None
        assert h["loss"] == pytest.approx(h["anchor_loss"]) and h["anchor_loss"] > 0


def test_resuming_from_another_starting_encoder_is_refused(tmp_path):
    model_dir = tmp_path / "run"
    AlignmentRun(tiny_train_config(model_dir, train_steps=1, anchor_weight=1.0)).run()
    # Another seed: the same model_dir, but another random starting encoder.
    other = AlignmentRun(tiny_train_config(model_dir, train_steps=2, anchor_weight=1.0, seed=1))
    with pytest.raises(CheckpointError, match="English anchor .* other weights"):
        other.run()


# === Flags ===

def test_anchor_flags_are_validated():
    TrainConfig(tlm_weight=0.0, contrastive_weight=0.0, anchor_weight=1.0)  # anchor only
    with pytest.raises(ValueError, match="leave nothing to train"):
        TrainConfig(tlm_weight=0.0, contrastive_weight=0.0, anchor_weight=0.0)
    with pytest.raises(ValueError, match="--anchor_weight must be >= 0"):
        TrainConfig(anchor_weight=-0.5)
    with pytest.raises(ValueError, match=r"--anchor_loss='l1' is not one of"):
        TrainConfig(anchor_weight=1.0, anchor_loss="l1")
    # TLM left to the checkpoint is not called "the only objective" beside the anchor.
    _, sources = TrainConfig(contrastive_weight=0.0, anchor_weight=1.0).with_checkpoint_defaults(
        config_lib.WITHOUT_MLM_HEAD)
    assert "only objective" not in sources["tlm_weight"]
    arguments = TrainConfig(anchor_weight=0.3, anchor_loss="cosine").aligner_arguments()
    assert (arguments["anchor_weight"], arguments["anchor_loss"]) == (0.3, "cosine")
