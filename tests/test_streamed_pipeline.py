"""The streamed input pipeline of prepared corpora (`data/streamed_pipeline.py`).

A corpus of three languages of unequal sizes (40, 13 and 5 pairs) is
prepared once per module with 4 shards per language; with alpha 0.5 the
small languages are drawn several times per epoch and the large one
partly, so every part of the epoch rule is exercised.
"""

import collections

from tf_mbalign import runtime  # noqa: E402

runtime.set_tensorflow_environment_defaults()  # before TensorFlow loads

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from conftest import tiny_train_config  # noqa: E402
from tf_mbalign.data import corpus as corpus_lib  # noqa: E402
from tf_mbalign.data import corpus_preparation, pipeline, streamed_pipeline  # noqa: E402
from tf_mbalign.data import training_input  # noqa: E402
from tf_mbalign.data import prepared_corpus as prepared  # noqa: E402
from tf_mbalign.data.corpus import CorpusError  # noqa: E402
from tf_mbalign.modeling import encoders  # noqa: E402

SIZES = {"de": 40, "fr": 13, "sw": 5}
ALPHA, SEED, SHARDS = 0.5, 7, 4
GLOBAL_BATCH = 8


@pytest.fixture(scope="module")
def tokenizer():
    return encoders.load_tokenizer("tiny:demo")


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    for language, count in SIZES.items():
        with open(folder / f"en-{language}.tsv", "w", encoding="utf-8") as f:
            f.writelines(f"sentence {i} in {language}\ttranslation {language} {i}\n"
                         for i in range(count))
    return str(folder)


@pytest.fixture(scope="module")
def prepared_dir(corpus_dir, tokenizer, tmp_path_factory):
    output = str(tmp_path_factory.mktemp("prepared"))
    request = corpus_preparation.PreparationRequest.for_tokenizer(
        corpus_dir, "tiny:demo", tokenizer, shards_per_language=SHARDS)
    corpus_preparation.prepare_corpus(request, tokenizer, output, log=lambda m: None)
    return output


@pytest.fixture(scope="module")
def corpus(prepared_dir):
    return prepared.PreparedCorpus.open(prepared_dir)


_PLANS = {}


def _plan(corpus, pipelines=1, pipeline_id=0, window=streamed_pipeline.SHUFFLE_WINDOW):
    """A `PipelinePlan`, kept for the module (a plan traces its functions once)."""
    key = (corpus.directory, pipelines, pipeline_id, window)
    if key not in _PLANS:
        shares = streamed_pipeline.shard_shares(corpus.shards, corpus.languages, ALPHA)
        _PLANS[key] = streamed_pipeline.PipelinePlan(shares, pipelines, pipeline_id, SEED, window)
    return _PLANS[key]


def _pair_ids(plan, start, count):
    return [prepared.decode_record_numpy(record)["pair_id"]
            for record in plan.records_from(start).take(count).as_numpy_iterator()]


def _languages_of(pair_ids, corpus_dir):
    reference = corpus_lib.read_corpus(corpus_dir)
    return collections.Counter(reference.languages[reference.language_ids[i]] for i in pair_ids)


def test_an_epoch_applies_the_alpha_rule_to_the_whole_corpus(corpus, corpus_dir):
    plan = _plan(corpus)
    size = plan.epoch_size
    assert size == sum(SIZES.values())
    both = _pair_ids(plan, 0, 2 * size)
    first, second = both[:size], both[size:]
    # Pairs per language: the in-memory rule (corpus.epoch_index) exactly.
    targets = corpus_lib.language_targets([SIZES[l] for l in sorted(SIZES)], ALPHA)
    assert _languages_of(first, corpus_dir) == dict(zip(sorted(SIZES), targets))
    assert targets.tolist() == [30, 17, 11]  # de drawn partly, fr and sw more than once
    # Each pair: its shard's full passes, plus one when it is in the shard's subset.
    counts = collections.Counter(first)
    shares = {s.path: s for s in plan.shares}
    for path, share in shares.items():
        ids = [prepared.decode_record_numpy(r)["pair_id"]
               for r in tf.data.TFRecordDataset(path).as_numpy_iterator()]
        seen = sorted(counts[i] - share.copies for i in ids)
        assert seen == [0] * (share.pairs - share.extra) + [1] * share.extra, path
    # The next epoch holds the same pairs in another order.
    assert collections.Counter(second) == counts and second != first


def test_resuming_at_any_position_gives_the_same_records(corpus):
    plan = _plan(corpus, window=16)  # windows and epochs both end inside the range
    reference = _pair_ids(plan, 0, 100)
    for start in (17, 75):  # inside a window of epoch 1; inside epoch 2
        assert _pair_ids(plan, start, 100 - start) == reference[start:], start


@pytest.fixture(scope="module")
def uninterrupted(corpus, tokenizer):
    """The first 12 batches of the only worker and of each of 2 workers
    (built once for the tests below)."""
    return {(pipelines, worker): _examples(corpus, tokenizer, pipelines, worker, 0, 12)
            for pipelines in (1, 2) for worker in range(pipelines)}


def _examples(corpus, tokenizer, pipelines, pipeline_id, start_example, batches):
    context = tf.distribute.InputContext(num_input_pipelines=pipelines,
                                         input_pipeline_id=pipeline_id,
                                         num_replicas_in_sync=pipelines)
    config = tiny_train_config("/tmp/unused", language_sampling_alpha=ALPHA, seed=SEED)
    dataset = streamed_pipeline.build_dataset(corpus, tokenizer, config.pipeline_config(),
                                              GLOBAL_BATCH, context, start_example)
    return [{k: v.numpy() for k, v in batch.items()} for batch in dataset.take(batches)]


def _epoch_pair_ids(batches, size):
    return np.concatenate([b["pair_id"] for b in batches])[:size].tolist()


def test_two_workers_read_disjoint_shards_and_together_give_the_one_worker_epoch(
        corpus, corpus_dir, uninterrupted):
    one = _plan(corpus)
    two = [_plan(corpus, 2, worker) for worker in range(2)]
    assert not set(two[0].paths) & set(two[1].paths)
    assert sorted(two[0].paths + two[1].paths) == sorted(one.paths)
    assert two[0].epoch_size + two[1].epoch_size == one.epoch_size

    single = _epoch_pair_ids(uninterrupted[1, 0], one.epoch_size)
    per_worker = [_epoch_pair_ids(uninterrupted[2, w], two[w].epoch_size) for w in range(2)]
    assert collections.Counter(per_worker[0] + per_worker[1]) == collections.Counter(single)
    assert not set(per_worker[0]) & set(per_worker[1])  # no pair on both workers
    # Each worker's share has the corpus' (sampled) language mix.
    whole = _languages_of(single, corpus_dir)
    for ids in per_worker:
        mix = _languages_of(ids, corpus_dir)
        for language, count in whole.items():
            assert abs(mix[language] - count / 2) <= 2, (language, mix, whole)


def test_resumed_batches_equal_the_uninterrupted_ones(corpus, tokenizer, uninterrupted):
    """Resumed in the second epoch (one worker) and inside the first (worker
    1 of 2); window boundaries are crossed in the test above."""
    for pipelines, pipeline_id, step in ((1, 0, 9), (2, 1, 5)):
        reference = uninterrupted[pipelines, pipeline_id]
        resumed = _examples(corpus, tokenizer, pipelines, pipeline_id, step * GLOBAL_BATCH, 3)
        assert len(reference[step:step + 3]) == len(resumed) == 3
        for expected, batch in zip(reference[step:], resumed):
            for key in expected:
                np.testing.assert_array_equal(batch[key], expected[key], err_msg=key)


def test_streamed_examples_equal_the_in_memory_examples_of_the_same_pairs(
        tokenizer, corpus_dir, uninterrupted):
    """Prepared ids = in-graph tokenization; the coin and masks follow the
    global position as in memory."""
    reference = corpus_lib.read_corpus(corpus_dir)
    config = tiny_train_config("/tmp/unused", seed=SEED).pipeline_config()
    in_memory = tf.function(lambda english, other, position, pair: pipeline.make_example(
        english, other, position, tokenizer, config, pair_id=pair))
    batches = uninterrupted[2, 1][:3]
    positions = np.concatenate([b["position"] for b in batches])
    # Worker 1 of 2 gives the second half of every global batch.
    assert positions.tolist() == [s * 8 + 4 + i for s in range(3) for i in range(4)]
    for batch in batches:
        for row in range(len(batch["pair_id"])):
            pair = int(batch["pair_id"][row])
            expected = in_memory(tf.constant(reference.english[pair]),
                                 tf.constant(reference.other[pair]),
                                 tf.constant(batch["position"][row]), tf.constant(pair, tf.int64))
            for key, value in expected.items():
                np.testing.assert_array_equal(batch[key][row], value.numpy(), err_msg=key)


def test_uneven_or_missing_shares_are_reported(corpus, prepared_dir):
    assert streamed_pipeline.mix_problems(corpus.shards, corpus.languages, 2) == []
    assert streamed_pipeline.mix_problems(corpus.shards, corpus.languages, 4) == []
    uneven = streamed_pipeline.mix_problems(corpus.shards, corpus.languages, 3)
    assert uneven and all("do not split evenly over 3 workers" in p for p in uneven)
    missing = streamed_pipeline.mix_problems(corpus.shards, corpus.languages, 5)
    assert any("some workers read none of it" in p for p in missing)
    with pytest.raises(ValueError, match="has no shard to read.*--shards_per_language"):
        _plan(corpus, pipelines=5, pipeline_id=4)


def test_languages_of_a_prepared_corpus_can_be_chosen(prepared_dir):
    only = training_input.open_corpus(prepared_dir, languages=["fr", "sw"])
    assert isinstance(only, prepared.PreparedCorpus)
    assert only.language_counts() == {"fr": 13, "sw": 5} and len(only) == 18
    assert {s.language for s in only.shards} == {"fr", "sw"}
    with pytest.raises(CorpusError, match=r"\['ru'\] are not in this prepared corpus"):
        training_input.open_corpus(f"prepared:{prepared_dir}", languages=["ru"])


def test_a_tokenizer_mismatch_is_refused_before_training(prepared_dir, tmp_path):
    from tf_mbalign.data import vocabulary
    from tf_mbalign.training.trainer import AlignmentRun

    other = vocabulary.write_vocab(vocabulary.character_wordpiece_vocab(["only these"]),
                                   str(tmp_path / "vocab.txt"))
    config = tiny_train_config(tmp_path / "run", encoder=f"tiny:{other}",
                               corpus=f"prepared:{prepared_dir}")
    with pytest.raises(CorpusError) as info:
        AlignmentRun(config, log=lambda m: None)
    message = str(info.value)
    assert "prepared with --encoder=tiny:demo" in message
    assert f"--encoder=tiny:{other}" in message
    assert "python -m tf_mbalign.prepare" in message and "--output=NEW_DIR" in message
    assert not (tmp_path / "run").exists()  # nothing was written


def test_more_workers_than_shards_is_refused_and_uneven_ones_warned(corpus):
    training_input.check_workers(corpus, 4)
    with pytest.raises(CorpusError, match="at most 4 shards per language for 5 workers"):
        training_input.check_workers(corpus, 5)
    warnings = training_input.corpus_warnings(corpus, corpus.max_chars, workers=3)
    assert len(warnings) == 1 and "a multiple of 3" in warnings[0]
    assert training_input.corpus_warnings(corpus, corpus.max_chars, workers=2) == []
    assert "--max_chars=50 does not change" in training_input.corpus_warnings(corpus, 50)[0]
