"""The alignment input pipeline: pairs -> TLM and contrastive examples.

Every example is a pure function of (run seed, its global position g):

    epoch e = g // N, slot = g % N            (N = pairs in one epoch)
    pair    = epoch_index[index_shuffle(slot, seed=(seed, e))]
    coin    = stateless coin(seed, g)          random input shuffling
    masks   = stateless draws(seed, g)         TLM 80/10/10

Global batch s holds positions [start + s*B, start + (s+1)*B); replica r of R
gets the contiguous slice r*(B/R) ... of it. So the data position is one
integer (`examples_consumed`, kept in the checkpoint): resuming rebuilds the
pipeline from it and replays exactly the batches an uninterrupted run sees,
without reading the skipped examples.

One example's path: tokenize both sides -> `shuffle_pair_order` (random input
shuffling, `input_shuffling.py`) -> `pack_pair` (`pair_packing.py`) ->
`tlm_masking` (`tlm_masking.py`) for the TLM input, `pack_single` for the MoCo
query (the side that came first) and key. `query_is_english` records the coin.

This is the in-memory path; a prepared corpus is streamed from its shards
by `streamed_pipeline.py` (same examples from ids: `make_example_from_ids`),
and `training_input.py` chooses between them.
"""

import dataclasses

import tensorflow as tf

from tf_mbalign.data import corpus as corpus_lib
from tf_mbalign.data import pair_packing, tlm_masking
from tf_mbalign.data.input_shuffling import shuffle_pair_order

_SEED_SALT_PAIR, _SEED_SALT_MASK = 1, 2


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Input settings; defaults follow BERT / the paper where it says."""

    max_seq_length: int = 128  # TLM input: [CLS] a [SEP] b [SEP]
    max_sentence_length: int = 64  # each MoCo side: [CLS] s [SEP]
    max_predictions_per_seq: int = 20  # BERT's value for 128 tokens
    mask_selection_rate: float = 0.15
    mask_token_rate: float = 0.8
    random_token_rate: float = 0.1
    shuffle_inputs: bool = True  # random input shuffling; False: English first/query
    language_sampling_alpha: float = 0.7
    seed: int = 0


def _example_seed(seed, position, salt):
    return tf.stack([tf.cast(seed, tf.int64) * 1000003 + salt, tf.cast(position, tf.int64)])


def make_example(english, other, position, tokenizer, config, pair_id=-1):
    """Builds one training example from a sentence pair (scalar strings).

    `pair_id` (the pair's index in the corpus) lets the model keep a pair's
    own older key out of its negatives once the data repeats.
    """
    ids = tokenizer.tokenize(tf.stack([english, other]))
    return make_example_from_ids(ids[0], ids[1], position, tokenizer, config, pair_id)


def make_example_from_ids(english_ids, other_ids, position, tokenizer, config, pair_id=-1):
    """`make_example` of a pair already tokenized (int32 id vectors; the
    streamed path reads them from a prepared corpus)."""
    first, second, english_first = shuffle_pair_order(
        english_ids, other_ids, _example_seed(config.seed, position, _SEED_SALT_PAIR),
        enabled=config.shuffle_inputs)

    tlm = tlm_masking.tlm_masking(
        pair_packing.pack_pair(first, second, tokenizer.cls_id, tokenizer.sep_id,
                               config.max_seq_length),
        seed=_example_seed(config.seed, position, _SEED_SALT_MASK),
        special_ids=tokenizer.special_ids,
        mask_id=tokenizer.mask_id,
        random_id_range=tokenizer.random_id_range,
        max_predictions=config.max_predictions_per_seq,
        selection_rate=config.mask_selection_rate,
        mask_token_rate=config.mask_token_rate,
        random_token_rate=config.random_token_rate,
    )
    query = pair_packing.pack_single(first, tokenizer.cls_id, tokenizer.sep_id,
                                     config.max_sentence_length)
    key = pair_packing.pack_single(second, tokenizer.cls_id, tokenizer.sep_id,
                                   config.max_sentence_length)

    def padded(ids, length):
        return pair_packing.pad_to_length(ids, length, tokenizer.pad_id)

    tlm_ids, tlm_mask = padded(tlm["token_ids"], config.max_seq_length)
    query_ids, query_mask = padded(query, config.max_sentence_length)
    key_ids, key_mask = padded(key, config.max_sentence_length)
    p = config.max_predictions_per_seq
    return {
        "tlm_token_ids": tlm_ids,
        "tlm_padding_mask": tlm_mask,
        "masked_positions": tf.ensure_shape(tlm["masked_positions"], [p]),
        "masked_ids": tf.ensure_shape(tlm["masked_ids"], [p]),
        "masked_weights": tf.ensure_shape(tlm["masked_weights"], [p]),
        "query_token_ids": query_ids,
        "query_padding_mask": query_mask,
        "key_token_ids": key_ids,
        "key_padding_mask": key_mask,
        "query_is_english": english_first,
        "position": tf.cast(position, tf.int64),
        "pair_id": tf.cast(pair_id, tf.int64),
    }


def batch_fingerprint(pair_ids):
    """A stable 64-bit hash (int64 scalar) of a batch's pair ids, in order.

    Logged per step, so two runs, or a run and its resumed continuation, can
    be checked batch by batch for repeated or skipped data.
    """
    text = tf.strings.reduce_join(tf.strings.as_string(tf.cast(pair_ids, tf.int64)),
                                  separator=",")
    return tf.strings.to_hash_bucket_fast(text, tf.int64.max)


@dataclasses.dataclass(frozen=True)
class ReplicaLayout:
    """Where one input pipeline's per-replica batches sit in the global batches.

    Global batch s holds positions [s*B, (s+1)*B); replica r of R gets the
    contiguous slice starting at s*B + r*(B/R). A pipeline feeds its
    `local_replicas` replicas in turn, starting with replica
    `pipeline_id * local_replicas`.
    """

    global_batch_size: int
    per_replica: int
    local_replicas: int
    pipeline_id: int
    num_pipelines: int

    @classmethod
    def of(cls, global_batch_size, input_context=None):
        """The layout for a `tf.distribute.InputContext` (None: one pipeline,
        one replica)."""
        num_replicas = input_context.num_replicas_in_sync if input_context else 1
        num_pipelines = input_context.num_input_pipelines if input_context else 1
        if global_batch_size % num_replicas:
            raise ValueError(
                f"global batch size {global_batch_size} is not divisible by the "
                f"{num_replicas} replicas."
            )
        return cls(global_batch_size, global_batch_size // num_replicas,
                   num_replicas // num_pipelines,
                   input_context.input_pipeline_id if input_context else 0, num_pipelines)

    @property
    def per_pipeline(self):
        """Examples this pipeline gives each global batch."""
        return self.per_replica * self.local_replicas

    def first_position(self, k):
        """Global position (from the run's start) of the first example of the
        pipeline's per-replica batch k."""
        step, local = k // self.local_replicas, k % self.local_replicas
        replica = self.pipeline_id * self.local_replicas + local
        return step * self.global_batch_size + replica * self.per_replica


def build_dataset(
    corpus,
    tokenizer,
    config,
    global_batch_size,
    input_context=None,
    start_example=0,
):
    """A `tf.data.Dataset` of per-replica batches, endless and deterministic.

    Args:
        corpus: a `ParallelCorpus`.
        tokenizer: a `SubwordTokenizer`.
        config: a `PipelineConfig`.
        global_batch_size: examples per step over all replicas.
        input_context: a `tf.distribute.InputContext` (from
            `distribute_datasets_from_function`); None for a single pipeline.
        start_example: examples already consumed (resume position).
    """
    layout = ReplicaLayout.of(global_batch_size, input_context)
    per_replica = layout.per_replica

    index = corpus_lib.epoch_index(corpus, config.language_sampling_alpha, config.seed)
    epoch_size = len(index)
    index = tf.constant(index)
    english = tf.constant(corpus.english)
    other = tf.constant(corpus.other)
    seed = config.seed

    def positions_of(k):
        # k counts this pipeline's per-replica batches.
        first = start_example + layout.first_position(k)
        return first + tf.range(per_replica, dtype=tf.int64)

    def pair_at(position):
        epoch, slot = position // epoch_size, position % epoch_size
        shuffled = tf.random.experimental.index_shuffle(
            slot, seed=tf.stack([tf.constant(seed, tf.int64), epoch]),
            max_index=epoch_size - 1,
        )
        pair = tf.gather(index, shuffled)
        return tf.gather(english, pair), tf.gather(other, pair), position, pair

    dataset = tf.data.Dataset.range(tf.int64.max)
    dataset = dataset.map(positions_of).unbatch()
    dataset = dataset.map(pair_at)
    dataset = dataset.map(
        lambda e, o, p, i: make_example(e, o, p, tokenizer, config, pair_id=i),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    dataset = dataset.batch(per_replica, drop_remainder=True)
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.OFF
    )
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)
