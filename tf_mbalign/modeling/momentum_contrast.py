"""MoCo mechanics: momentum (EMA) key encoder, key queue, InfoNCE logits;
and in-batch negatives, the option without queue or momentum encoder.

Defaults for checkpoints with an MLM head (MoCo, He et al. 2020, arXiv
1911.05722; whether Pan et al. 2021 changed them is unverified here), chosen
per checkpoint kind in `tf_mbalign.config.CHECKPOINT_DEFAULTS`:

    momentum m      0.999   key = m * key + (1 - m) * query, every step
    queue size K    65536   keys of past batches (MoCo's ImageNet value)
    temperature T   0.07    logits = [q.k+, q.queue] / T

In-batch negatives (`--contrastive_negatives=in_batch`): both sentences of a
pair go through the trained encoder; each query is scored against every key
of the *global* batch and each key against every query (symmetric InfoNCE).
The embeddings are all-gathered with their gradient (TensorFlow's
`ReplicaContext.all_gather` sums the upstream gradients over replicas and
hands each replica its own slice), so the replicas' gradients sum to the
single-device gradient of the same global batch.

Everything works unchanged under `tf.distribute`: variables are mirrored, and
updates that every replica computes identically (the EMA, the enqueue of the
all-gathered keys) are applied per device through `merge_call` +
`extended.update`, with no extra communication.
"""

import keras
import tensorflow as tf

from tf_mbalign.distribute import tf_variable


def replica_assign(variable, value):
    """Assigns a value that every replica computed identically.

    Callable from a replica context (inside `strategy.run`) or without a
    strategy. Each device's copy of `variable` takes its own replica's value.
    """

    def update(strategy, var, val):
        strategy.extended.update(var, lambda v, x: v.assign(x), args=(val,))

    tf.distribute.get_replica_context().merge_call(
        update, args=(tf_variable(variable), value)
    )


def replica_scatter_update(variable, indices, updates):
    """Writes `updates` into the rows `indices` ([n, 1]) of `variable` in
    place; like `replica_assign`, for values every replica computed
    identically. Touches n rows instead of copying the whole variable."""

    def update(strategy, var, rows, values):
        strategy.extended.update(var, lambda v, i, x: v.scatter_nd_update(i, x),
                                 args=(rows, values))

    tf.distribute.get_replica_context().merge_call(
        update, args=(tf_variable(variable), indices, updates)
    )


def momentum_update(key_variables, query_variables, momentum, apply=None):
    """key <- momentum * key + (1 - momentum) * query, for every pair.

    `apply` (optional bool scalar tensor): where False, keys keep their values.
    """
    pairs = [(tf_variable(k), tf_variable(q)) for k, q in zip(key_variables, query_variables)]

    def update(strategy):
        def ema(key, query):
            # key - (1 - m)(key - query): three passes over the variable, and a
            # skipped step is a zero rate rather than one more select. (One
            # fused `ResourceApplyGradientDescent` instead of the product and
            # the subtraction measured no faster on e5-small's table:
            # BENCHMARKS.md.)
            rate = tf.constant(1.0 - momentum, key.dtype)
            if apply is not None:
                rate = tf.where(apply, rate, tf.zeros_like(rate))
            return key.assign_sub(rate * (key - tf.cast(query, key.dtype)))

        for key, query in pairs:
            strategy.extended.update(key, ema, args=(query,))

    tf.distribute.get_replica_context().merge_call(update)


def all_gather_keys(keys):
    """Keys (or any rows) of all replicas, in replica order (identity
    without a strategy). Differentiable: the gradient of the gathered rows
    is summed over replicas and each replica gets its own slice."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return keys
    return context.all_gather(keys, axis=0)


@keras.saving.register_keras_serializable(package="tf_mbalign")
class KeyQueue(keras.layers.Layer):
    """A FIFO queue of L2-normalized keys, as checkpointed variables.

    `keys` [queue_size, dim], `pair_ids` [queue_size] (which sentence pair
    each key came from), `pointer` (next slot to write) and `filled` (number
    of valid keys, at most queue_size). `valid_mask()` excludes entries never
    written, so early steps do not compare against random vectors, and, given
    the batch's pair ids, the batch's own pairs: once the data repeats, a
    pair's older key would otherwise be a negative for its own query.

    Args:
        queue_size: int. Number of keys kept (K).
        dim: int. Width of a key.

    Example:
    ```python
    queue = KeyQueue(queue_size=8, dim=4)
    queue.enqueue(tf.math.l2_normalize(tf.random.normal([3, 4]), axis=1),
                  pair_ids=tf.constant([7, 8, 9], tf.int64))
    queue.filled  # 3
    queue.valid_mask(tf.constant([8], tf.int64))  # [[T, F, T, F, F, F, F, F]]
    ```
    """

    def __init__(self, queue_size, dim, **kwargs):
        super().__init__(**kwargs)
        self.queue_size = queue_size
        self.dim = dim
        # === Variables ===
        self.keys = self.add_weight(
            shape=(queue_size, dim), initializer="zeros", trainable=False,
            name="keys", dtype="float32",
        )
        self.pair_ids = self.add_weight(
            shape=(queue_size,), initializer=keras.initializers.Constant(-1),
            trainable=False, name="pair_ids", dtype="int32",
        )
        self.pointer = self.add_weight(
            shape=(), initializer="zeros", trainable=False, name="pointer", dtype="int32"
        )
        self.filled = self.add_weight(
            shape=(), initializer="zeros", trainable=False, name="filled", dtype="int32"
        )

    def valid_mask(self, pair_ids=None):
        """[K] filled entries; with `pair_ids` [B], [B, K] also excluding
        keys of the same pairs."""
        filled = tf.range(self.queue_size) < self.filled
        if pair_ids is None:
            return filled
        same_pair = tf.equal(tf.cast(pair_ids, tf.int32)[:, None],
                             tf.convert_to_tensor(self.pair_ids)[None, :])
        return filled[None, :] & ~same_pair

    def enqueue(self, keys, pair_ids=None, apply=None):
        """Writes `keys` [n, dim] (and their `pair_ids` [n]) at the pointer,
        wrapping around (n <= K). `apply` (optional bool scalar tensor):
        where False, the queue is left as it was (a skipped step)."""
        n = keys.shape[0]
        if n is not None and n > self.queue_size:
            raise ValueError(
                f"Cannot enqueue {n} keys into a queue of {self.queue_size}: the "
                "queue must hold at least one global batch."
            )
        count = tf.shape(keys)[0]
        slots = ((self.pointer + tf.range(count)) % self.queue_size)[:, None]
        if pair_ids is None:
            pair_ids = tf.fill([count], tf.constant(-1, tf.int32))
        keys = tf.cast(keys, tf.float32)
        pair_ids = tf.cast(pair_ids, tf.int32)
        new_pointer = (self.pointer + count) % self.queue_size
        new_filled = tf.minimum(self.filled + count, self.queue_size)
        if apply is not None:  # A skipped step leaves the queue as it was.
            # Only the rows it would overwrite are read (a sparse read).
            keys = tf.where(apply, keys, tf.gather(tf_variable(self.keys), slots[:, 0]))
            pair_ids = tf.where(apply, pair_ids,
                                tf.gather(tf_variable(self.pair_ids), slots[:, 0]))
            new_pointer = tf.where(apply, new_pointer, tf.convert_to_tensor(self.pointer))
            new_filled = tf.where(apply, new_filled, tf.convert_to_tensor(self.filled))
        # The rows are written in place. Once a variable has had a sparse
        # update, TensorFlow copies it on every full read, so a step must
        # read the whole queue only once (for the logits). Measured with that
        # read and the logits' gradient, K 65,536, batch 16, 2 shared CPU
        # cores: this write costs ~20 ms per step at width 384 and at 768;
        # rebuilding the queue (tensor_scatter_nd_update + assign) cost ~20
        # and 35-50 ms; a second full read here added ~20 ms (BENCHMARKS.md).
        replica_scatter_update(self.keys, slots, keys)
        replica_scatter_update(self.pair_ids, slots, pair_ids)
        replica_assign(self.pointer, new_pointer)
        replica_assign(self.filled, new_filled)

    def get_config(self):
        config = super().get_config()
        config.update({"queue_size": self.queue_size, "dim": self.dim})
        return config


def contrastive_logits(queries, positive_keys, queue_keys, valid, temperature):
    """InfoNCE logits [batch, 1 + K]: column 0 is the positive key.

    Queue entries that are not `valid` ([K] or [batch, K]) get a large
    negative logit.
    """
    queries = tf.cast(queries, tf.float32)
    positive = tf.reduce_sum(queries * tf.cast(positive_keys, tf.float32), axis=1, keepdims=True)
    negative = tf.matmul(queries, queue_keys, transpose_b=True)
    valid = tf.convert_to_tensor(valid)
    if valid.shape.rank == 1:
        valid = valid[None, :]
    negative = tf.where(valid, negative, -1e9)
    return tf.concat([positive, negative], axis=1) / temperature


# === In-batch negatives (no queue, no momentum encoder) ===

def replica_first_row(local_count):
    """Index of this replica's first example in the global batch: replicas
    hold contiguous slices in replica order (`data/pipeline.py`)."""
    context = tf.distribute.get_replica_context()
    replica = context.replica_id_in_sync_group if context is not None else 0
    return tf.cast(replica, tf.int32) * tf.cast(local_count, tf.int32)


def in_batch_valid_mask(local_pair_ids, global_pair_ids, first_row):
    """[b, B]: which global-batch entries are fair negatives for this
    replica's b rows. The row's own positive (global index first_row + i)
    stays; another copy of the same pair (language sampling can draw a pair
    twice in one batch) is masked, as `KeyQueue.valid_mask` does for the
    queue."""
    local_pair_ids = tf.cast(local_pair_ids, tf.int32)
    positives = first_row + tf.range(tf.shape(local_pair_ids)[0])
    is_positive = tf.equal(positives[:, None], tf.range(tf.shape(global_pair_ids)[0])[None, :])
    same_pair = tf.equal(local_pair_ids[:, None], tf.cast(global_pair_ids, tf.int32)[None, :])
    return is_positive | ~same_pair


def in_batch_logits(rows, columns, valid, temperature):
    """InfoNCE logits [b, B] of this replica's rows against every row of the
    other side of the global batch; entries not `valid` ([b, B] or None) get
    a large negative logit. The positive of row i is column first_row + i."""
    logits = tf.matmul(tf.cast(rows, tf.float32), tf.cast(columns, tf.float32), transpose_b=True)
    if valid is not None:
        logits = tf.where(valid, logits, -1e9)
    return logits / temperature
