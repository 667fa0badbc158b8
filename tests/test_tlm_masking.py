"""TLM masking statistics and random input shuffling, on real text."""

import os

import numpy as np
import pytest
import tensorflow as tf

from tf_mbalign.data import corpus as corpus_lib
from tf_mbalign.data import pair_packing, pipeline, tlm_masking, tokenizers, vocabulary


def _tokenizer(texts, tmp_path):
    path = vocabulary.write_vocab(vocabulary.character_wordpiece_vocab(texts),
                                  str(tmp_path / "vocab.txt"))
    return tokenizers.WordPieceTokenizer(path)


@pytest.mark.parametrize(
    "first,second,budget,expected",
    [(10, 100, 50, (10, 40)), (100, 30, 50, (25, 25)), (40, 40, 50, (25, 25)),
     (5, 5, 50, (5, 5)), (30, 19, 50, (30, 19)), (3, 200, 50, (3, 47))],
)
def test_pair_truncation_trims_the_longer_side(first, second, budget, expected):
    got = pair_packing.truncate_pair_lengths(first, second, budget)
    assert (int(got[0]), int(got[1])) == expected


def test_pack_pair_layout():
    ids = pair_packing.pack_pair(tf.constant([5, 6, 7]), tf.constant([8, 9]), 1, 2, 16)
    assert ids.numpy().tolist() == [1, 5, 6, 7, 2, 8, 9, 2]


def test_masking_rates_are_forced_by_zero_and_one():
    ids = tf.constant([1] + list(range(10, 50)) + [2])
    all_mask = tlm_masking.tlm_masking(ids, tf.constant([1, 2], tf.int64), [1, 2], 99,
                                       (10, 50), 40, selection_rate=1.0, mask_token_rate=1.0,
                                       random_token_rate=0.0)
    assert all_mask["token_ids"].numpy().tolist() == [1] + [99] * 40 + [2]
    keep = tlm_masking.tlm_masking(ids, tf.constant([1, 2], tf.int64), [1, 2], 99,
                                   (10, 50), 40, selection_rate=1.0, mask_token_rate=0.0,
                                   random_token_rate=0.0)
    assert keep["token_ids"].numpy().tolist() == ids.numpy().tolist()
    assert keep["masked_ids"].numpy().tolist() == list(range(10, 50))


def _real_pairs(shared_data, languages=("de", "ru", "zh", "ar", "hi"), per_language=400):
    pairs = []
    for lang in languages:
        path = os.path.join(shared_data, "parallel", f"en-{lang}.tsv")
        corpus = corpus_lib.read_tsv(path)
        pairs += list(zip(corpus.english[:per_language], corpus.other[:per_language]))
    return pairs


def _examples(pairs, tokenizer, config):
    """`make_example` on every pair, traced once (eager calls take ~25 ms each)."""
    english, other = zip(*pairs)
    data = tf.data.Dataset.from_tensor_slices(
        (list(english), list(other), tf.range(len(pairs), dtype=tf.int64)))
    data = data.map(lambda e, o, p: pipeline.make_example(e, o, p, tokenizer, config))
    for example in data.as_numpy_iterator():
        yield example


def test_masking_statistics_on_real_text(shared_data, tmp_path):
    pairs = _real_pairs(shared_data)
    tokenizer = _tokenizer([t for p in pairs for t in p], tmp_path)
    config = pipeline.PipelineConfig(max_seq_length=128, max_predictions_per_seq=20, seed=3)
    special = set(tokenizer.special_ids)
    selected = candidates = masked = randomized = kept = 0
    for example in _examples(pairs, tokenizer, config):
        ids = example["tlm_token_ids"]
        valid = example["tlm_padding_mask"].astype(bool)
        weights = example["masked_weights"].astype(bool)
        positions = example["masked_positions"][weights]
        originals = example["masked_ids"][weights]
        # Unmask to get the original packed sequence back.
        original_ids = ids.copy()
        original_ids[positions] = originals
        assert all(original_ids[p] not in special for p in positions), "special token selected"
        assert valid[positions].all(), "padding selected"
        assert ids[0] == tokenizer.cls_id and (original_ids[valid] == tokenizer.sep_id).sum() == 2
        n = int(np.sum([t not in special for t in original_ids[valid]]))
        assert len(positions) == min(max(1, round(0.15 * n)), 20)
        candidates += n
        selected += len(positions)
        now = ids[positions]
        masked += int(np.sum(now == tokenizer.mask_id))
        kept += int(np.sum(now == originals))
        randomized += int(np.sum((now != tokenizer.mask_id) & (now != originals)))
    rate = selected / candidates
    print(f"selected {selected}/{candidates} = {rate:.4f}; [MASK] {masked / selected:.4f}, "
          f"random {randomized / selected:.4f}, kept {kept / selected:.4f}")
    assert 0.14 <= rate <= 0.16, rate
    # ~6,000 selections: the shares have a standard error below 0.6 points.
    assert abs(masked / selected - 0.8) < 0.02, masked / selected
    # A random draw equal to the original counts as kept: 10% + a tiny share.
    assert abs(randomized / selected - 0.1) < 0.015, randomized / selected
    assert abs(kept / selected - 0.1) < 0.015, kept / selected


def test_random_input_shuffling_on_real_text(shared_data, tmp_path):
    pairs = _real_pairs(shared_data, per_language=200)
    tokenizer = _tokenizer([t for p in pairs for t in p], tmp_path)
    config = pipeline.PipelineConfig(max_seq_length=256, max_sentence_length=128,
                                     max_predictions_per_seq=1, mask_selection_rate=0.01,
                                     mask_token_rate=0.0, random_token_rate=0.0, seed=11)
    english_first = 0
    # Each side tokenized on its own, in one batch per side, to compare against.
    english_ids = tokenizer.tokenize(tf.constant([e for e, _ in pairs])).to_list()
    other_ids = tokenizer.tokenize(tf.constant([o for _, o in pairs])).to_list()
    for example, eng, oth in zip(_examples(pairs, tokenizer, config), english_ids, other_ids):
        tlm = example["tlm_token_ids"][example["tlm_padding_mask"] == 1].tolist()
        query = example["query_token_ids"][example["query_padding_mask"] == 1]
        key = example["key_token_ids"][example["key_padding_mask"] == 1]
        first_segment = tlm[1 : tlm.index(tokenizer.sep_id)]  # fairly truncated prefix
        first_is_english = first_segment == eng[: len(first_segment)]
        assert first_is_english != (first_segment == oth[: len(first_segment)])
        # The same coin decides the TLM order and the query side.
        assert bool(example["query_is_english"]) == first_is_english
        expected_query, expected_key = (eng, oth) if first_is_english else (oth, eng)
        assert query[1:-1].tolist() == expected_query[:126]
        assert key[1:-1].tolist() == expected_key[:126]
        english_first += first_is_english
    share = english_first / len(pairs)
    print(f"English first (and query) in {english_first} of {len(pairs)} pairs = {share:.3f}")
    assert 0.45 < share < 0.55, share  # 1,000 pairs: standard error 1.6 points


def test_no_shuffling_keeps_english_first(tmp_path):
    demo = corpus_lib.read_corpus("demo")
    tokenizer = _tokenizer(demo.english + demo.other, tmp_path)
    config = pipeline.PipelineConfig(shuffle_inputs=False)
    for position in range(20):
        example = pipeline.make_example(tf.constant(demo.english[position]),
                                        tf.constant(demo.other[position]),
                                        tf.constant(position, tf.int64), tokenizer, config)
        assert bool(example["query_is_english"])


def test_pipeline_is_deterministic_and_resumable(tmp_path):
    demo = corpus_lib.read_corpus("demo")
    tokenizer = _tokenizer(demo.english + demo.other, tmp_path)
    config = pipeline.PipelineConfig(max_seq_length=48, max_sentence_length=24,
                                     max_predictions_per_seq=8, seed=5)

    def batches(start, count):
        it = iter(pipeline.build_dataset(demo, tokenizer, config, 8, start_example=start))
        return [next(it) for _ in range(count)]

    full = batches(0, 4)
    again = batches(0, 4)
    resumed = batches(16, 2)
    for a, b in zip(full, again):
        for key in a:
            np.testing.assert_array_equal(a[key].numpy(), b[key].numpy())
    for a, b in zip(full[2:], resumed):
        for key in a:
            np.testing.assert_array_equal(a[key].numpy(), b[key].numpy())
    positions = np.concatenate([b["position"].numpy() for b in full])
    assert positions.tolist() == list(range(32))


def test_epochs_cover_every_pair_once_with_natural_mix(tmp_path):
    # The demo directory itself: all 1,200 pairs (12 whole batches of 100).
    demo = corpus_lib.read_corpus(corpus_lib.demo_corpus_dir())
    tokenizer = _tokenizer(demo.english + demo.other, tmp_path)
    config = pipeline.PipelineConfig(max_seq_length=48, max_sentence_length=24,
                                     max_predictions_per_seq=8, language_sampling_alpha=1.0)
    dataset = pipeline.build_dataset(demo, tokenizer, config, 100)
    seen = []
    for batch in dataset.take(len(demo) // 100):
        seen += [tuple(x) for x in np.stack([batch["query_token_ids"].numpy(),
                                             batch["key_token_ids"].numpy()], 1)
                 .reshape(100, -1).tolist()]
    assert len(seen) == len(demo)
    # Every pair of the epoch differs (the demo corpus has no duplicates).
    assert len(set(map(tuple, seen))) > 0.99 * len(demo)


def test_shuffle_pair_order_is_a_stateless_coin():
    from tf_mbalign.data.input_shuffling import shuffle_pair_order

    english, other = tf.constant([5, 6, 7]), tf.constant([8, 9])
    firsts = []
    for position in range(200):
        seed = tf.constant([3, position], tf.int64)
        first, second, english_first = shuffle_pair_order(english, other, seed)
        again = shuffle_pair_order(english, other, seed)
        assert bool(english_first) == bool(again[2])  # a function of the seed
        expected = (english, other) if bool(english_first) else (other, english)
        assert first.numpy().tolist() == expected[0].numpy().tolist()
        assert second.numpy().tolist() == expected[1].numpy().tolist()
        firsts.append(bool(english_first))
    # A fair coin: 200 draws fall within 5 standard deviations of 100.
    assert 100 - 5 * 7.1 < sum(firsts) < 100 + 5 * 7.1
    for position in range(20):
        _, _, english_first = shuffle_pair_order(english, other, tf.constant([3, position]),
                                                 enabled=False)
        assert bool(english_first)
