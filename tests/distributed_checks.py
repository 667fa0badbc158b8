"""Checks that need several logical devices, run in a fresh process.

`python tests/distributed_checks.py mirrored_equivalence OUT_DIR VARIANT...`
splits the CPU into 2 logical devices (possible only before TensorFlow
starts, hence a separate process), runs the same steps on one device and
under MirroredStrategy on the same global batches, and writes the per-step
metrics and the largest weight differences to OUT_DIR/VARIANT.json for the
test to check, for each VARIANT in turn (one process: TensorFlow starts
once). A VARIANT is `queue` (MoCo), `in_batch` (symmetric InfoNCE over the
global batch; two rows on different replicas are then given the same pair
id, so the cross-replica same-pair mask is exercised too) or `anchor`
(`in_batch` plus the English anchor).
"""

import json
import os
import sys

from tf_mbalign import runtime  # noqa: E402

runtime.set_tensorflow_environment_defaults()  # before TensorFlow loads

import numpy as np
import tensorflow as tf

tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0],
    [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()],
)

import keras  # noqa: E402

from conftest import TEST_PRECISION, largest_relative_difference  # noqa: E402
from tf_mbalign.config import TrainConfig  # noqa: E402
from tf_mbalign.data import corpus as corpus_lib  # noqa: E402
from tf_mbalign.data import pipeline  # noqa: E402
from tf_mbalign.modeling import encoders  # noqa: E402
from tf_mbalign.modeling.bert_encoder import copy_weights  # noqa: E402
from tf_mbalign.training.alignment_step import build_alignment_step  # noqa: E402

STEPS = 3
GLOBAL_BATCH = 8
VARIANTS = {
    "queue": dict(contrastive_negatives="queue", tlm_weight=1.0),
    "in_batch": dict(contrastive_negatives="in_batch", tlm_weight=0.5),
    "anchor": dict(contrastive_negatives="in_batch", tlm_weight=0.5, anchor_weight=1.0),
}
# Adam with epsilon 1 >> sqrt(v) (gradients are clipped to a global norm of
# 0.5): each update is lr * m_hat / (sqrt(v_hat) + 1) ~ lr * m_hat, linear in
# the gradients, so weights after the steps compare the summed gradients
# (and their replica scaling) instead of Adam's sign-like first steps, which
# turn a 1e-7 rounding difference in a ~0 gradient into a change of ~lr.
ADAM_EPSILON = 1.0
LEARNING_RATE = 1.0


def _config(variant="queue"):
    return TrainConfig(
        encoder="tiny:demo", model_dir="/tmp/unused", train_steps=STEPS, global_batch_size=GLOBAL_BATCH,
        queue_size=12, max_seq_length=48, max_sentence_length=24, max_predictions_per_seq=8,
        learning_rate=LEARNING_RATE, warmup_steps=0, dropout=0.0, max_gradient_norm=0.5,
        momentum=0.9, precision=TEST_PRECISION, **VARIANTS[variant],
    )


def _metrics(aligner):
    logs = {m.name: float(m.result()) for m in aligner.metrics}
    for m in aligner.metrics:
        m.reset_state()
    return logs


def _shared_pair_id(batch):
    """Rows 1 (replica 0) and 5 (replica 1) claim the same pair."""
    pair_id = batch["pair_id"].numpy()
    pair_id[5] = pair_id[1]
    return dict(batch, pair_id=tf.constant(pair_id))


def _summed_gradients(aligner, batch):
    """The loss's gradients of every trained variable, summed over replicas
    (replica context): what the optimizer's all-reduce hands on."""
    variables = aligner.trained_variables(True)
    with tf.GradientTape() as tape:
        losses, _ = aligner.compute_losses(batch, aligner.momentum_keys(batch))
    gradients = [tf.zeros_like(v) if g is None else tf.convert_to_tensor(g)
                 for g, v in zip(tape.gradient(losses["loss"], variables), variables)]
    context = tf.distribute.get_replica_context()
    if context.num_replicas_in_sync > 1:
        gradients = context.all_reduce("sum", gradients)
    return gradients


def _forward_logits(aligner, batch):
    """One replica's logits before a step (dropout is 0): the contrastive
    logits and labels, and the TLM logits of the masked positions with their
    target ids and weights."""
    return {
        "contrastive": aligner.contrastive_logits(batch, aligner.momentum_keys(batch), False),
        "tlm": (aligner.tlm_logits(batch), batch["masked_ids"], batch["masked_weights"]),
    }


def _per_replica_structures(strategy, result):
    """A `strategy.run` result (a structure of per-replica values) as one
    structure of tensors per replica."""
    flat = [strategy.experimental_local_results(x) for x in tf.nest.flatten(result)]
    return [tf.nest.pack_sequence_as(result, [parts[r] for parts in flat])
            for r in range(strategy.num_replicas_in_sync)]


def _single_device_rows(per_replica, in_batch):
    """Replicas' logits in the single device's row order: each replica
    holds its slice of the batch; with in-batch negatives its rows are its
    queries, then its keys, where one device has all queries, then all keys."""
    def rows(parts):
        parts = [np.asarray(p) for p in parts]
        if not in_batch:
            return np.concatenate(parts, 0)
        halves = [np.split(p, 2, axis=0) for p in parts]
        return np.concatenate([h[0] for h in halves] + [h[1] for h in halves], 0)

    logits, labels = zip(*[r["contrastive"] for r in per_replica])
    tlm = list(zip(*[r["tlm"] for r in per_replica]))
    return {"contrastive": (rows(logits), rows(labels)),
            "tlm": tuple(np.concatenate([np.asarray(p) for p in part], 0) for part in tlm)}


def _margins(logits, labels):
    """Per row: the label's logit minus the best other logit (> 0: correct)."""
    logits = np.asarray(logits, np.float64)
    rows = np.arange(len(labels))
    own = logits[rows, labels]
    others = logits.copy()
    others[rows, labels] = -np.inf
    return own - others.max(axis=1)


def _logit_comparison(single, mirrored):
    """Per objective: the largest logit difference, the logits' scale, and
    the margins of the single device's rows (TLM: masked positions only)."""
    out = {}
    (s_logits, labels), (m_logits, _) = single["contrastive"], mirrored["contrastive"]
    valid = s_logits > -1e8  # masked candidates (a pair's own older keys) hold -1e9
    out["contrastive"] = {
        "max_diff": float(np.max(np.abs(s_logits - m_logits)[valid])),
        "scale": float(np.max(np.abs(s_logits[valid]))),
        "margins": _margins(s_logits, labels).tolist()}
    (s_logits, ids, weights), (m_logits, _, _) = single["tlm"], mirrored["tlm"]
    kept = np.asarray(weights).reshape(-1) > 0
    s_logits = np.asarray(s_logits).reshape(-1, s_logits.shape[-1])[kept]
    m_logits = np.asarray(m_logits).reshape(-1, m_logits.shape[-1])[kept]
    out["tlm"] = {
        "max_diff": float(np.max(np.abs(s_logits - m_logits))),
        "scale": float(np.max(np.abs(s_logits))),
        "margins": _margins(s_logits, np.asarray(ids).reshape(-1)[kept]).tolist()}
    return out


def mirrored_equivalence(out_path, variant="queue", strategy=None):
    config = _config(variant)
    negatives = config.contrastive_negatives
    keras.utils.set_random_seed(0)
    corpus = corpus_lib.read_corpus("demo")
    bundle = encoders.load_encoder(config.encoder, dropout=0.0)
    single_training = build_alignment_step(config, bundle)
    single = single_training.aligner
    batches = list(
        pipeline.build_dataset(corpus, bundle.tokenizer, config.pipeline_config(), GLOBAL_BATCH)
        .take(STEPS)
    )
    if negatives == "in_batch":
        batches = [_shared_pair_id(b) for b in batches]

    strategy = strategy or tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        twin = encoders.load_encoder(config.encoder, dropout=0.0)
        mirrored_training = build_alignment_step(config, twin)
    mirrored = mirrored_training.aligner
    mirrored.set_weights(single.get_weights())
    if single.teacher is not None:
        # The teacher is not in `weights`. Both take the twin's starting
        # weights, which differ from the trained encoder's, so the English
        # side's anchor term is not 0 at the first step (dropout is off).
        copy_weights(mirrored.teacher.weights, single.teacher.weights)
    for training in (single_training, mirrored_training):
        training.optimizer.epsilon = ADAM_EPSILON

    @tf.function
    def single_step(batch):
        single_training(batch)

    @tf.function
    def mirrored_step(batch):
        strategy.run(mirrored_training, args=(batch,))

    report = {"single": [], "mirrored": [], "weight_diff": [], "max_queue_diff": [],
              "weights_changed": [], "logits": [], "replicas": strategy.num_replicas_in_sync}
    before = [w.copy() for w in single.encoder.get_weights()]
    start = [np.asarray(w, np.float64) for w in single.get_weights()]
    single_logits = tf.function(lambda b: _forward_logits(single, b))
    mirrored_logits = tf.function(lambda b: strategy.run(
        lambda x: _forward_logits(mirrored, x), args=(b,)))

    def split(batch):
        half = GLOBAL_BATCH // 2
        return strategy.experimental_distribute_values_from_function(
            lambda ctx, b=batch: {
                k: v[ctx.replica_id_in_sync_group * half:(ctx.replica_id_in_sync_group + 1) * half]
                for k, v in b.items()
            }
        )

    # The gradients themselves, before any step (Adam's first steps divide by
    # |g|, which amplifies float32 summation differences in tiny entries).
    single_gradients = tf.function(lambda b: _summed_gradients(single, b))(batches[0])
    mirrored_gradients = tf.function(lambda b: strategy.run(
        lambda x: _summed_gradients(mirrored, x), args=(b,)))(split(batches[0]))
    report["max_gradient_relative_diff"] = largest_relative_difference(
        [g.numpy() for g in single_gradients],
        [g.numpy() for g in strategy.experimental_local_results(mirrored_gradients)[0]])
    for batch in batches:
        distributed = split(batch)
        per_replica = _per_replica_structures(strategy, mirrored_logits(distributed))
        report["logits"].append(_logit_comparison(
            single_logits(batch), _single_device_rows(per_replica, negatives == "in_batch")))
        single_step(batch)
        mirrored_step(distributed)
        report["single"].append(_metrics(single))
        report["mirrored"].append(_metrics(mirrored))
        # Per variable: the largest difference, how far the single device's
        # variable has moved since the start, and its largest magnitude.
        report["weight_diff"].append([
            [float(np.max(np.abs(a - b))), float(np.max(np.abs(a - w0))), float(np.max(np.abs(a)))]
            for a, b, w0 in zip(single.get_weights(), mirrored.get_weights(), start) if a.size])
        if single.key_queue is not None:
            report["max_queue_diff"].append(float(np.max(np.abs(
                single.key_queue.keys.numpy() - mirrored.key_queue.keys.numpy()))))
        report["weights_changed"].append(max(
            float(np.max(np.abs(a - b))) if a.size else 0.0
            for a, b in zip(before, single.encoder.get_weights())))
    report["negatives"] = negatives
    report["variant"] = variant
    if single.key_queue is not None:
        report["queue_filled"] = [int(single.key_queue.filled.numpy()),
                                  int(mirrored.key_queue.filled.numpy())]
        report["queue_pointer"] = [int(single.key_queue.pointer.numpy()),
                                   int(mirrored.key_queue.pointer.numpy())]
    with open(out_path, "w") as f:
        json.dump(report, f, indent=1)


def gathered_keys(out_path):
    """Each replica enqueues its own keys; the queue must hold all of them."""
    from tf_mbalign.modeling import momentum_contrast as moco

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        queue = moco.KeyQueue(queue_size=6, dim=2)

    @tf.function
    def enqueue(values):
        def fn(v):
            ids = tf.cast(v[:, 0], tf.int64) + 100  # pair ids travel with their keys
            queue.enqueue(moco.all_gather_keys(v), moco.all_gather_keys(ids))
        strategy.run(fn, args=(values,))

    rows = []
    for step in range(2):  # 2 steps x 2 replicas x 2 keys = 8 > 6: wraps around.
        values = strategy.experimental_distribute_values_from_function(
            lambda ctx, s=step: tf.constant(
                [[s * 10 + ctx.replica_id_in_sync_group * 2 + i, 0.0] for i in range(2)]
            )
        )
        enqueue(values)
        rows.append([[float(x) for x in r] for r in queue.keys.numpy()])
    per_device = [t.numpy().tolist() for t in strategy.experimental_local_results(queue.keys.value)]
    with open(out_path, "w") as f:
        json.dump({"rows": rows, "pointer": int(queue.pointer.numpy()),
                   "filled": int(queue.filled.numpy()), "per_device": per_device,
                   "pair_ids": queue.pair_ids.numpy().tolist()}, f)


def mirrored_equivalences(out_dir, *variants):
    """`mirrored_equivalence` of each variant, into OUT_DIR/VARIANT.json,
    under one MirroredStrategy (a second strategy in the process would
    reuse the first one's collective instance keys, which TensorFlow's
    collective executor refuses)."""
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    for variant in variants:
        mirrored_equivalence(os.path.join(out_dir, f"{variant}.json"), variant, strategy)


if __name__ == "__main__":
    {"mirrored_equivalence": mirrored_equivalences, "gathered_keys": gathered_keys}[sys.argv[1]](
        *sys.argv[2:]
    )
