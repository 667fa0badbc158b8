"""TLM over a sampled candidate set (`--tlm_sampled_negatives`): the head's
candidate logits, the labels, the loss against the exact one, a training
step with the table's sparse gradient, the flag and the random state."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import tiny_train_config
from tf_mbalign.data import corpus as corpus_lib
from tf_mbalign.data import pipeline
from tf_mbalign.modeling import encoders
from tf_mbalign.modeling.aligner import Aligner, tlm_candidates

_PIPELINE = pipeline.PipelineConfig(max_seq_length=48, max_sentence_length=24,
                                    max_predictions_per_seq=8)
FLOAT32_EPS = float(np.finfo(np.float32).eps)


@pytest.fixture(scope="module")
def bundle():
    keras.utils.set_random_seed(0)
    return encoders.load_encoder("tiny:demo", dropout=0.0)


@pytest.fixture(scope="module")
def batch(bundle):
    dataset = pipeline.build_dataset(corpus_lib.read_corpus("demo"), bundle.tokenizer,
                                     _PIPELINE, 8)
    return next(iter(dataset))


def _aligner(bundle, **kwargs):
    """An Aligner of the shared tiny encoder (in-batch negatives: no key
    encoder to copy), its MLM head's bias made nonzero so that a gather of
    the wrong bias rows shows."""
    aligner = Aligner(bundle.encoder, contrastive_negatives="in_batch", **kwargs)
    bias = aligner.mlm_head._bias
    bias.assign(tf.random.stateless_normal(bias.shape, seed=[7, 7]))
    return aligner


def _logit_tolerance(width, logits):
    """The float32 difference of one logit computed twice as a `width`-term
    dot product (another kernel blocking): width * eps relative (the
    dot product's rounding bound), of the largest logit, so that entries
    that cancel to ~0 are covered too."""
    return width * FLOAT32_EPS * float(np.abs(logits).max())


def _loss_tolerance(width, vocabulary, logits):
    """Bound on the float32 difference of a mean cross-entropy computed
    twice: each of its two logits (target, max) off by `_logit_tolerance`,
    and the log of a sum of up to `vocabulary` exponentials in [0, 1]
    rounded term by term (vocabulary * eps of a sum >= 1)."""
    return 2 * _logit_tolerance(width, logits) + vocabulary * FLOAT32_EPS


# === The head's candidate logits ===

# tolerance: the same dot products of the same table rows, gathered first (another matmul shape may block the width-term reduction otherwise): width * float32 eps of the largest logit.
@pytest.mark.numerics
def test_candidate_logits_are_the_exact_logits_of_those_ids(bundle):
    head = _aligner(bundle).mlm_head
    vocabulary, width = bundle.encoder.vocabulary_size, bundle.encoder.hidden_dim
    hidden = tf.random.stateless_normal([3, 7, width], seed=[1, 2])
    positions = tf.constant([[1, 2], [0, 6], [3, 3]])
    exact = head(hidden, mask_positions=positions).numpy()
    assert exact.shape == (3, 2, vocabulary)
    tolerance = _logit_tolerance(width, exact)
    # The whole vocabulary in order: the exact logits.
    everything = head(hidden, mask_positions=positions, candidate_ids=tf.range(vocabulary))
    assert everything.dtype == tf.float32
    np.testing.assert_allclose(everything.numpy(), exact, rtol=0, atol=tolerance)
    # Any ids, repeated and out of order: the exact logits' columns of those ids.
    ids = tf.random.stateless_uniform([40], seed=[3, 4], maxval=vocabulary, dtype=tf.int32)
    some = head(hidden, mask_positions=positions, candidate_ids=ids).numpy()
    np.testing.assert_allclose(some, exact[..., ids.numpy()], rtol=0, atol=tolerance)


@pytest.mark.bfloat16
def test_mixed_precision_casts_only_the_candidates_rows(bundle):
    from tf_mbalign.modeling.mlm_head import TiedMaskedLMHead

    embedding = bundle.encoder.token_embedding
    head = TiedMaskedLMHead(vocabulary_size=bundle.encoder.vocabulary_size,
                            token_embedding=embedding, intermediate_activation="gelu",
                            dtype="mixed_bfloat16")
    width = bundle.encoder.hidden_dim
    head.build((None, None, width), (None, None))
    hidden = tf.random.stateless_normal([2, 5, width], seed=[5, 6])
    positions = tf.constant([[1, 2], [0, 4]])
    table_shape = list(embedding.embeddings.shape)

    def table_casts(candidate_ids):
        @tf.function
        def decode(hidden):
            with tf.GradientTape() as tape:
                logits = head(hidden, mask_positions=positions, candidate_ids=candidate_ids)
                total = tf.reduce_sum(logits)
            return logits, tape.gradient(total, embedding.embeddings)

        graph = decode.get_concrete_function(hidden).graph
        casts = [op for op in graph.get_operations()
                 if op.type == "Cast" and op.outputs[0].shape.as_list() == table_shape]
        return casts, decode(hidden)

    casts, (logits, gradient) = table_casts(tf.constant([4, 9, 4, 100]))
    assert not casts and logits.dtype == tf.float32 and logits.shape == (2, 2, 4)
    assert isinstance(gradient, tf.IndexedSlices)
    # The exact decoder casts the whole table (once) to bf16.
    assert table_casts(None)[0]


# === Candidates and labels ===

def test_candidates_are_the_targets_then_the_new_negatives_each_once():
    candidate_ids, labels = tlm_candidates(tf.constant([[5, 3], [5, 0]]), tf.constant([3, 7, 7]))
    assert candidate_ids.numpy().tolist() == [5, 3, 0, 7]
    assert labels.numpy().tolist() == [[0, 1], [0, 2]]


def test_labels_point_at_the_masked_targets(bundle, batch):
    aligner = _aligner(bundle, tlm_sampled_negatives=64)
    negatives = aligner.sampled_negative_ids()
    assert negatives.shape == (64,) and negatives.dtype == tf.int32
    assert 0 <= int(tf.reduce_min(negatives)) and int(tf.reduce_max(negatives)) < \
        bundle.encoder.vocabulary_size
    candidate_ids, labels = tlm_candidates(batch["masked_ids"], negatives)
    targets = batch["masked_ids"].numpy()
    assert labels.shape == targets.shape
    np.testing.assert_array_equal(tf.gather(candidate_ids, labels).numpy(), targets)
    candidates = candidate_ids.numpy().tolist()
    assert len(set(candidates)) == len(candidates)
    assert set(candidates) == set(targets.ravel().tolist()) | set(negatives.numpy().tolist())


# === The loss ===

# tolerance: the cross-entropy of the same logits over a permutation of the vocabulary: two logits per token off by width * eps of the largest, and a vocabulary-term sum of exponentials rounded term by term (vocabulary * eps).
@pytest.mark.numerics
def test_candidate_loss_over_the_whole_vocabulary_is_the_exact_loss(bundle, batch):
    aligner = _aligner(bundle)
    vocabulary, width = bundle.encoder.vocabulary_size, bundle.encoder.hidden_dim
    exact, exact_sums = aligner.tlm_terms(batch, training=False)
    forced, forced_sums = aligner.candidate_tlm_terms(batch, tf.range(vocabulary),
                                                      training=False)
    tolerance = _loss_tolerance(width, vocabulary, aligner.tlm_logits(batch).numpy())
    assert float(exact) > 0
    np.testing.assert_allclose(float(forced), float(exact), rtol=0, atol=tolerance)
    tokens = float(exact_sums["local_tokens"])
    assert float(forced_sums["local_tokens"]) == tokens > 0
    np.testing.assert_allclose(float(forced_sums["token_losses_sum"]),
                               float(exact_sums["token_losses_sum"]), rtol=0,
                               atol=tokens * tolerance)


# tolerance: as the whole-vocabulary test's: the two losses' float32 rounding bound (two logits per token, a vocabulary-term sum).
@pytest.mark.numerics
def test_sampled_loss_is_at_most_the_exact_loss(bundle, batch):
    aligner = _aligner(bundle, tlm_sampled_negatives=8)
    vocabulary, width = bundle.encoder.vocabulary_size, bundle.encoder.hidden_dim
    sampled, _ = aligner.tlm_terms(batch, training=False)
    aligner.tlm_sampled_negatives = 0  # the same weights and batch, exact
    exact, _ = aligner.tlm_terms(batch, training=False)
    tolerance = _loss_tolerance(width, vocabulary, aligner.tlm_logits(batch).numpy())
    # A softmax over a subset holding the target has a smaller normalizer.
    assert float(sampled) <= float(exact) + tolerance
    # At most 8 * 8 targets + 8 negatives of 1629 ids: the normalizer leaves
    # out most of the vocabulary's mass (about log(1629 / 72) a token).
    assert float(sampled) < float(exact) - 1.0


# === Training ===

def test_a_sampled_step_trains_with_a_sparse_table_gradient(tmp_path, batch):
    from tf_mbalign.training.alignment_step import build_alignment_step

    config = tiny_train_config(tmp_path, tlm_sampled_negatives=16)
    keras.utils.set_random_seed(0)
    step = build_alignment_step(config, encoders.load_encoder(config.encoder, dropout=0.0))
    aligner = step.aligner
    assert aligner.samples_tlm_negatives and aligner.tlm_sampled_negatives == 16
    table, vocabulary = aligner.tied_table(), aligner.encoder.vocabulary_size
    variables = aligner.trained_variables(True)
    assert any(v is table for v in variables)
    assert not any(v is aligner.tlm_negative_seeds.state for v in variables)
    # No dense decoder gradient to take apart: the tape adds the table's rows.
    assert step.decoder_table(variables) == (None, None)

    def table_gradient():
        with tf.GradientTape() as tape:
            losses, _ = aligner.compute_losses(batch, aligner.momentum_keys(batch))
        return tape.gradient(losses["loss"], table)

    assert isinstance(table_gradient(), tf.IndexedSlices)
    aligner.tlm_sampled_negatives = 0
    assert not isinstance(table_gradient(), tf.IndexedSlices)  # exact: dense
    aligner.tlm_sampled_negatives = 16

    strategy = tf.distribute.get_strategy()
    run = tf.function(lambda batch: strategy.run(step, args=(batch,)))
    before = [np.array(v.numpy()) for v in variables]
    state = aligner.tlm_negative_seeds.state.numpy().copy()
    result = run(batch)
    assert bool(result["applied"]) and np.isfinite(float(result["loss"]))
    changed = [not np.array_equal(a, v.numpy()) for a, v in zip(before, variables)]
    assert changed[next(i for i, v in enumerate(variables) if v is table)]
    assert sum(changed) > len(variables) // 2
    # Each step draws new negatives.
    assert not np.array_equal(state, aligner.tlm_negative_seeds.state.numpy())
    # The step never multiplies by the whole vocabulary.
    graph = run.get_concrete_function(batch).graph
    products = [op for op in graph.get_operations()
                if op.type in ("MatMul", "BatchMatMulV2") and op.outputs[0].shape.rank
                and op.outputs[0].shape[-1] == vocabulary]
    assert not products, [op.name for op in products]


# === The random state ===

@pytest.mark.parametrize("seed", [0, 1])
def test_sampled_negatives_are_reproducible_from_the_seed(bundle, seed):
    from tf_mbalign.modeling.bert_encoder import dropout_rng_states

    draws = []
    for _ in range(2):
        keras.utils.set_random_seed(seed)
        aligner = _aligner(bundle, tlm_sampled_negatives=32)
        draws.append([aligner.sampled_negative_ids().numpy() for _ in range(2)])
    np.testing.assert_array_equal(draws[0], draws[1])
    assert not np.array_equal(draws[0][0], draws[0][1])  # a new draw each call
    # The state is not trained and is checkpointed with the dropout RNG states.
    state = aligner.tlm_negative_seeds.state
    assert not state.trainable
    assert not any(v is state for v in aligner.trainable_variables)
    assert any(s is state.value for s in dropout_rng_states(aligner))
    # The exact default holds no such state (its checkpoints are unchanged).
    exact = _aligner(bundle)
    assert exact.tlm_negative_seeds is None and not dropout_rng_states(exact)


# === The flag ===

def test_the_flag_is_validated_and_reaches_the_aligner(bundle):
    from absl import flags

    from tf_mbalign import config as config_lib
    from tf_mbalign.config import TrainConfig

    with pytest.raises(ValueError, match="--tlm_sampled_negatives=-1 must be >= 0"):
        TrainConfig(tlm_sampled_negatives=-1)
    with pytest.raises(ValueError, match="--tlm_sampled_negatives=8 samples TLM's softmax, "
                                         "which --tlm_weight=0"):
        TrainConfig(tlm_weight=0.0, tlm_sampled_negatives=8)
    assert TrainConfig().tlm_sampled_negatives == 0  # exact by default
    flag_values = flags.FlagValues()
    config_lib.define_flags(flag_values)
    flag_values(["x", "--tlm_sampled_negatives=64"])
    parsed = TrainConfig.from_flags(flag_values)
    assert parsed.aligner_arguments()["tlm_sampled_negatives"] == 64
    assert "tlm_sampled_negatives" in config_lib.TOPICS["objectives (TLM, MoCo, English anchor)"]
    # The Aligner refuses what it cannot compute, naming the setting.
    with pytest.raises(ValueError, match="tlm_sampled_negatives=-2 must be >= 0"):
        Aligner(bundle.encoder, contrastive_negatives="in_batch", tlm_sampled_negatives=-2)


def test_a_head_without_the_tied_table_refuses_sampled_negatives(bundle):
    import keras_hub

    def keras_hub_head():
        return keras_hub.layers.MaskedLMHead(token_embedding=bundle.encoder.token_embedding,
                                             intermediate_activation="gelu")

    with pytest.raises(ValueError, match=r"tlm_sampled_negatives=8 needs .*\(MaskedLMHead"):
        Aligner(bundle.encoder, contrastive_negatives="in_batch", mlm_head=keras_hub_head(),
                tlm_sampled_negatives=8)
    # Exact TLM takes that head as before.
    Aligner(bundle.encoder, contrastive_negatives="in_batch", mlm_head=keras_hub_head())


def test_the_setting_round_trips_through_the_config(bundle):
    aligner = _aligner(bundle, tlm_sampled_negatives=12)
    config = aligner.get_config()
    assert config["tlm_sampled_negatives"] == 12
    restored = Aligner.from_config(config)
    assert restored.tlm_sampled_negatives == 12 and restored.tlm_negative_seeds is not None


def test_a_run_resumes_with_sampling_on_or_off_as_it_started(tmp_path):
    from tf_mbalign.training.checkpointing import CheckpointError
    from tf_mbalign.training.trainer import AlignmentRun

    model_dir = tmp_path / "run"

    def run(steps, negatives):
        return AlignmentRun(tiny_train_config(model_dir, train_steps=steps, head_warmup_steps=0,
                                              tlm_sampled_negatives=negatives),
                            log=lambda *_: None)

    run(1, 16).run()
    # Exact TLM has no random state for the negatives: refused, naming the flag.
    with pytest.raises(CheckpointError, match="--tlm_sampled_negatives=16"):
        run(2, 0).run()
    # Another K keeps the same state: it resumes.
    resumed = run(2, 32)
    resumed.run()
    assert int(resumed.step.numpy()) == 2
