"""Checks that need several logical devices, run in a fresh process.

`python tests/distributed_checks.py mirrored_equivalence OUT.json` splits the
CPU into 2 logical devices (possible only before TensorFlow starts, hence a
separate process), runs the same steps on one device and under
MirroredStrategy on the same global batches, and writes the per-step metrics
and the largest weight differences to OUT.json for the test to check.
"""

import json
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

from tf_mbalign.config import TrainConfig  # noqa: E402
from tf_mbalign.data import corpus as corpus_lib  # noqa: E402
from tf_mbalign.data import pipeline  # noqa: E402
from tf_mbalign.modeling import encoders  # noqa: E402
from tf_mbalign.training.alignment_step import build_alignment_step  # noqa: E402

STEPS = 3
GLOBAL_BATCH = 8


def _config():
    return TrainConfig(
        encoder="tiny:demo", model_dir="/tmp/unused", train_steps=STEPS, global_batch_size=GLOBAL_BATCH,
        queue_size=12, max_seq_length=48, max_sentence_length=24, max_predictions_per_seq=8,
        learning_rate=1e-3, warmup_steps=0, dropout=0.0, max_gradient_norm=0.5, momentum=0.9,
    )


def _metrics(aligner):
    logs = {m.name: float(m.result()) for m in aligner.metrics}
    for m in aligner.metrics:
        m.reset_state()
    return logs


def mirrored_equivalence(out_path):
    config = _config()
    keras.utils.set_random_seed(0)
    corpus = corpus_lib.read_corpus("demo")
    bundle = encoders.load_encoder(config.encoder, dropout=0.0)
    single_training = build_alignment_step(config, bundle)
    single = single_training.aligner
    batches = list(
        pipeline.build_dataset(corpus, bundle.tokenizer, config.pipeline_config(), GLOBAL_BATCH)
        .take(STEPS)
    )

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        twin = encoders.load_encoder(config.encoder, dropout=0.0)
        mirrored_training = build_alignment_step(config, twin)
    mirrored = mirrored_training.aligner
    mirrored.set_weights(single.get_weights())

    @tf.function
    def single_step(batch):
        single_training(batch)

    @tf.function
    def mirrored_step(batch):
        strategy.run(mirrored_training, args=(batch,))

    report = {"single": [], "mirrored": [], "max_weight_diff": [], "max_queue_diff": [],
              "weights_changed": [], "replicas": strategy.num_replicas_in_sync}
    before = [w.copy() for w in single.encoder.get_weights()]
    for batch in batches:
        half = GLOBAL_BATCH // 2
        distributed = strategy.experimental_distribute_values_from_function(
            lambda ctx, b=batch: {
                k: v[ctx.replica_id_in_sync_group * half:(ctx.replica_id_in_sync_group + 1) * half]
                for k, v in b.items()
            }
        )
        single_step(batch)
        mirrored_step(distributed)
        report["single"].append(_metrics(single))
        report["mirrored"].append(_metrics(mirrored))
        diffs = [float(np.max(np.abs(a - b))) if a.size else 0.0
                 for a, b in zip(single.get_weights(), mirrored.get_weights())]
        report["max_weight_diff"].append(max(diffs))
        report["max_queue_diff"].append(float(np.max(np.abs(
            single.key_queue.keys.numpy() - mirrored.key_queue.keys.numpy()))))
        report["weights_changed"].append(max(
            float(np.max(np.abs(a - b))) if a.size else 0.0
            for a, b in zip(before, single.encoder.get_weights())))
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


if __name__ == "__main__":
    {"mirrored_equivalence": mirrored_equivalence, "gathered_keys": gathered_keys}[sys.argv[1]](
        sys.argv[2]
    )
