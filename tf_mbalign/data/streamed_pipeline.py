"""The input pipeline of a prepared corpus: shards streamed, per worker.

The in-memory pipeline (`pipeline.py`) picks any pair at any global
position. Here each input pipeline (one per worker) reads only its own
shards, sequentially, with bounded buffers, and every example is still a
pure function of (seed, the pipeline's position k), so the checkpoint keeps
one integer (`examples_consumed`) and a resumed run rebuilds the stream at k
without replaying it:

1. One epoch, the same for any number of workers (`shard_shares`): language
   l gets t_l pairs, p_l ~ n_l ** alpha, rounded as `corpus.epoch_index`
   does; t_l is split over l's shards by size, and a shard of m pairs and
   target t contributes `t // m` full passes plus the `t % m` records whose
   seeded rank in the shard is lowest (fixed over epochs).
2. Shards go to pipelines by their index within the language: shard i of
   every language to pipeline i mod P. Prepare spreads each language's
   pairs round-robin over its shards, so with P dividing
   `shards_per_language` every pipeline holds 1/P of every language: each
   worker's share has the corpus's language mix, and the workers' epochs
   together are exactly the one-worker epoch (as multisets of pairs).
3. A pipeline's epoch e of N_w examples (`PipelinePlan`): slot j < N_w goes
   to language stream `lane(index_shuffle(j, seed, e))`, whose stream is its
   shard passes in a seeded order of epoch e read one after another
   (`tf.data` `choose_from_datasets`). Then windows of `SHUFFLE_WINDOW`
   records are permuted (`index_shuffle` per window): the bounded shuffle
   buffer. Position k = epoch k // N_w, window, offset.
4. Resuming at k: the language streams' offsets at the window's first slot
   are counted (O(k mod N_w) stateless draws, in chunks), each stream skips
   whole passes and then records inside one shard, and the first window is
   cut at k's offset. At most one shard per language and one window are read
   again.

Examples then go through `pipeline.make_example_from_ids` with their global
position (stateless coin and masks, as in memory) and the pair's corpus id.
"""

import dataclasses

import numpy as np
import tensorflow as tf

from tf_mbalign.data import corpus as corpus_lib
from tf_mbalign.data.pipeline import ReplicaLayout, make_example_from_ids
from tf_mbalign.data.prepared_corpus import decode_record

SHUFFLE_WINDOW = 16384  # records permuted together (the shuffle buffer)
_COUNT_CHUNK = 1 << 20  # slots per draw when counting a resume position
_READ_BLOCK = 1024  # records read (and filtered) together
_SALT_SUBSET, _SALT_PASSES, _SALT_SLOTS, _SALT_WINDOW = 11, 12, 13, 14


def _seed(seed, salt, *parts):
    """A stateless seed [2] (int64) from the run seed, a salt and int parts."""
    key = tf.constant([seed * 1000003 + salt, 0], tf.int64)
    for part in parts:
        key = tf.random.experimental.stateless_fold_in(key, tf.cast(part, tf.int64))
    return key


@dataclasses.dataclass(frozen=True)
class ShardShare:
    """A shard's part of every epoch: `copies` full passes plus its `extra`
    lowest-ranked records. `number` is its place in the corpus' shard list
    (seeds its ranks)."""

    path: str
    language: str
    index: int
    pairs: int
    copies: int
    extra: int
    number: int

    @property
    def per_epoch(self):
        return self.copies * self.pairs + self.extra


def shard_shares(shards, languages, alpha):
    """Every shard's `ShardShare` of one epoch (the alpha rule over the whole
    corpus, whatever the number of workers)."""
    counts = [sum(s.pairs for s in shards if s.language == language) for language in languages]
    targets = corpus_lib.language_targets(counts, alpha)
    shares = []
    for language, target in zip(languages, targets):
        own = [(number, s) for number, s in enumerate(shards) if s.language == language]
        parts = corpus_lib.apportion(int(target), [s.pairs for _, s in own])
        for (number, shard), part in zip(own, parts):
            copies, extra = divmod(int(part), shard.pairs)
            shares.append(ShardShare(shard.path, language, shard.index, shard.pairs, copies,
                                     extra, number))
    return shares


def mix_problems(shards, languages, num_pipelines):
    """Why some worker's share would not have the corpus' language mix (a
    list of sentences; empty when every worker gets 1/P of every language)."""
    problems = []
    for language in languages:
        indices = {s.index for s in shards if s.language == language}
        per_pipeline = [sum(1 for i in indices if i % num_pipelines == p)
                        for p in range(num_pipelines)]
        if min(per_pipeline) == 0:
            problems.append(f"{language} has {len(indices)} shards for {num_pipelines} "
                            "workers: some workers read none of it")
        elif max(per_pipeline) != min(per_pipeline):
            problems.append(f"{language}'s {len(indices)} shards do not split evenly over "
                            f"{num_pipelines} workers")
    return problems


class PipelinePlan:
    """One input pipeline's epochs: its shards, their passes, grouped into
    one stream per language, and the stateless maps position -> record.

    Args:
        shares: `ShardShare`s of the whole corpus.
        num_pipelines, pipeline_id: this pipeline among all.
        seed: the run seed.
        window: records per shuffle window.
    """

    def __init__(self, shares, num_pipelines, pipeline_id, seed, window=SHUFFLE_WINDOW):
        self.shares = [s for s in shares if s.index % num_pipelines == pipeline_id]
        self.pipeline_id, self.seed, self.window = pipeline_id, seed, window
        languages = sorted({s.language for s in self.shares if s.per_epoch})
        self.streams = [self._passes_of(language) for language in languages]
        self.stream_sizes = np.array([sum(kept for _, kept in passes)
                                      for passes in self.streams], np.int64)
        self.epoch_size = int(self.stream_sizes.sum())
        # Traced once per plan, shared by every stream and every epoch.
        self._pass_records = tf.function(self._read_pass)
        self._epoch_records = tf.function(self.epoch_records)
        if not self.epoch_size:
            raise ValueError(
                f"input pipeline {pipeline_id} of {num_pipelines} has no shard to read: the "
                "prepared corpus has fewer shards per language than there are workers. "
                "Prepare it again with --shards_per_language at least the number of workers "
                "(a multiple of it keeps every worker's language mix).")

    def _passes_of(self, language):
        """(share number in `shares`, records the pass keeps) of each pass
        over the language's shards: full passes, and the subset passes."""
        passes = []
        for number, share in enumerate(self.shares):
            if share.language == language:
                passes += [(number, share.pairs)] * share.copies
                if share.extra:
                    passes.append((number, share.extra))
        return passes

    @property
    def paths(self):
        return [s.path for s in self.shares]

    # === Stateless maps (the same ops eagerly and inside tf.data) ===

    def stream_of_slots(self, epoch, slots):
        """Language stream (int64) of each slot of an epoch."""
        drawn = tf.random.experimental.index_shuffle(
            tf.cast(slots, tf.int64), seed=_seed(self.seed, _SALT_SLOTS, epoch, self.pipeline_id),
            max_index=self.epoch_size - 1)
        streams = tf.searchsorted(tf.constant(np.cumsum(self.stream_sizes)),
                                  tf.reshape(drawn, [-1]), side="right", out_type=tf.int64)
        return tf.reshape(streams, tf.shape(drawn))

    def stream_offsets(self, epoch, first_slot):
        """Records each language stream has given before slot `first_slot`."""
        counts = np.zeros(len(self.streams), np.int64)
        for start in range(0, first_slot, _COUNT_CHUNK):
            slots = tf.range(start, min(first_slot, start + _COUNT_CHUNK), dtype=tf.int64)
            counts += np.bincount(self.stream_of_slots(epoch, slots).numpy(),
                                  minlength=len(self.streams))
        return counts

    def _pass_order(self, epoch, stream):
        count = len(self.streams[stream])
        return tf.random.experimental.index_shuffle(
            tf.range(count, dtype=tf.int64),
            seed=_seed(self.seed, _SALT_PASSES, epoch, self.pipeline_id, stream),
            max_index=count - 1)

    def _kept(self, share, positions, kept):
        """Which records (`positions` in share `share`) a pass keeping the
        share's `kept` lowest-ranked records reads (bool vector)."""
        pairs = tf.gather(tf.constant([s.pairs for s in self.shares], tf.int64), share)
        number = tf.gather(tf.constant([s.number for s in self.shares], tf.int64), share)
        return tf.cond(
            kept >= pairs, lambda: tf.ones_like(positions, tf.bool),
            lambda: tf.random.experimental.index_shuffle(
                positions, seed=_seed(self.seed, _SALT_SUBSET, number),
                max_index=pairs - 1) < kept)

    # === Datasets (vectorized: a record costs no per-element function) ===

    def _stream_records(self, epoch, stream, offset):
        """Serialized records of one language stream in epoch `epoch`, from
        its `offset`-th record on."""
        passes = tf.gather(tf.constant(self.streams[stream], tf.int64),
                           self._pass_order(epoch, stream))  # [n, 2] in this epoch's order
        starts = tf.cumsum(passes[:, 1], exclusive=True)
        offset = tf.cast(offset, tf.int64)
        first = tf.searchsorted(starts, tf.reshape(offset, [1]), side="right",
                                out_type=tf.int64)[0] - 1
        skips = tf.concat([tf.reshape(offset - starts[first], [1]),
                           tf.zeros([tf.shape(starts, out_type=tf.int64)[0] - first - 1],
                                    tf.int64)], 0)
        return tf.data.Dataset.from_tensor_slices(
            (passes[first:, 0], passes[first:, 1], skips)).flat_map(self._pass_records)

    def _read_pass(self, share, kept, skip):
        """The records of one pass over share `share` (keeping its `kept`
        lowest-ranked ones), after the first `skip`."""
        def kept_records(block, records):
            positions = block * _READ_BLOCK + tf.range(tf.shape(records, out_type=tf.int64)[0])
            return tf.boolean_mask(records, self._kept(share, positions, kept))

        records = tf.data.TFRecordDataset(tf.gather(tf.constant(self.paths), share))
        return records.batch(_READ_BLOCK).enumerate().map(kept_records).unbatch().skip(skip)

    def _window_streams(self, epoch, window):
        """Language stream of each slot of a shuffle window."""
        first = window * self.window
        slots = tf.range(first, tf.minimum(first + self.window, self.epoch_size))
        return self.stream_of_slots(epoch, slots)

    def epoch_records(self, epoch, first_window, offsets):
        """Serialized records of epoch `epoch` from window `first_window` on
        (`offsets`: `stream_offsets` at that window's first slot)."""
        streams = [self._stream_records(epoch, i, offsets[i]) for i in range(len(self.streams))]
        windows = -(-self.epoch_size // self.window)
        choices = tf.data.Dataset.range(first_window, windows).map(
            lambda window: self._window_streams(epoch, window)).unbatch()
        records = tf.data.Dataset.choose_from_datasets(streams, choices,
                                                       stop_on_empty_dataset=True)
        return records.batch(self.window).enumerate(start=first_window).map(
            lambda index, window: self._permuted(epoch, index, window)).unbatch()

    def _permuted(self, epoch, index, window):
        size = tf.shape(window, out_type=tf.int64)[0]
        order = tf.random.experimental.index_shuffle(
            tf.range(size), seed=_seed(self.seed, _SALT_WINDOW, epoch, self.pipeline_id, index),
            max_index=size - 1)
        return tf.gather(window, order)

    def records_from(self, k):
        """The endless stream of serialized records from position k on (one
        traced epoch function serves every epoch)."""
        epoch, slot = divmod(k, self.epoch_size)
        first_window, inside = divmod(slot, self.window)
        offsets = self.stream_offsets(epoch, first_window * self.window)
        no_offsets = tf.zeros([len(self.streams)], tf.int64)
        epochs = tf.data.Dataset.from_tensors(
            (tf.constant(epoch, tf.int64), tf.constant(first_window, tf.int64),
             tf.constant(offsets, tf.int64)))
        epochs = epochs.concatenate(tf.data.Dataset.range(epoch + 1, tf.int64.max).map(
            lambda later: (later, tf.constant(0, tf.int64), no_offsets)))
        return epochs.flat_map(self._epoch_records).skip(inside)


def build_dataset(corpus, tokenizer, config, global_batch_size, input_context=None,
                  start_example=0):
    """`pipeline.build_dataset` for a `PreparedCorpus`: per-replica batches,
    endless and deterministic, reading only this pipeline's shards
    (`mix_problems` says when they cannot hold the corpus' language mix).

    Raises:
        ValueError: this pipeline has no shard (more workers than shards).
    """
    layout = ReplicaLayout.of(global_batch_size, input_context)
    if start_example % global_batch_size:
        raise ValueError(f"start_example={start_example} is not a whole number of global "
                         f"batches of {global_batch_size}.")
    plan = PipelinePlan(shard_shares(corpus.shards, corpus.languages,
                                     config.language_sampling_alpha),
                        layout.num_pipelines, layout.pipeline_id, config.seed)
    first = start_example // global_batch_size * layout.per_pipeline

    def global_position(k):
        return layout.first_position(k // layout.per_replica) + k % layout.per_replica

    def example(k, record):
        english_ids, other_ids, pair_id = decode_record(record)
        return make_example_from_ids(english_ids, other_ids, global_position(k), tokenizer,
                                     config, pair_id=pair_id)

    dataset = plan.records_from(first).enumerate(start=first)
    dataset = dataset.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.batch(layout.per_replica, drop_remainder=True)
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)
