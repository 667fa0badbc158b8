"""Distribution strategy and precision policy from flags."""

import json
import os

import keras
import tensorflow as tf

STRATEGIES = ("default", "mirrored", "multi_worker_mirrored", "tpu")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


def tf_variable(variable):
    """The `tf.Variable` behind a Keras variable (TensorFlow backend); a
    `tf.Variable` is returned as it is."""
    return variable.value if isinstance(variable, keras.Variable) else variable


def get_strategy(name="default", tpu_address=""):
    """A `tf.distribute.Strategy` by name.

    - `default`: one device (the no-op strategy).
    - `mirrored`: all local GPUs (or CPU), synchronous all-reduce.
    - `multi_worker_mirrored`: several processes; each reads its role from
      the `TF_CONFIG` environment variable.
    - `tpu`: a TPU at `tpu_address` ("" = the local / Cloud TPU VM default).
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker_mirrored":
        if "TF_CONFIG" not in os.environ:
            raise ValueError(
                "--strategy=multi_worker_mirrored needs TF_CONFIG, e.g. "
                '{"cluster": {"worker": ["127.0.0.1:12345", "127.0.0.1:12346"]}, '
                '"task": {"type": "worker", "index": 0}}'
            )
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu_address)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(f"--strategy must be one of {STRATEGIES}, got {name!r}")


def is_chief(strategy):
    """True on the worker that writes checkpoints, summaries and exports."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type in (None, "chief"):
        return True
    cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    return task_type == "worker" and task_id == 0 and "chief" not in cluster


def set_precision(policy):
    if policy not in PRECISIONS:
        raise ValueError(f"--precision must be one of {PRECISIONS}, got {policy!r}")
    keras.mixed_precision.set_global_policy(policy)
