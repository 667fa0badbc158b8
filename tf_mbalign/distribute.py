"""Distribution strategy and precision policy from flags.

`--precision=auto` resolves, after the strategy exists, to mixed bfloat16
where the hardware multiplies bfloat16 natively (TPUs, GPUs of compute
capability 8.0 or more, CPUs with AMX or AVX512-BF16) and to float32
elsewhere; `resolve_precision` returns the choice with its reason, which the
run prints and records.
"""

import json
import os

import keras
import tensorflow as tf

STRATEGIES = ("default", "mirrored", "multi_worker_mirrored", "tpu")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
PRECISION_CHOICES = ("auto",) + PRECISIONS
# Policies an export computes under (`--export_precision`): float32 whatever
# the training policy unless asked; `bfloat16` also stores the weights in bf16.
EXPORT_PRECISIONS = ("float32", "mixed_bfloat16", "bfloat16")
# CPU flags (as /proc/cpuinfo names them) of native bfloat16 matrix products.
CPU_BFLOAT16_FLAGS = {"amx_bf16": "AMX (amx_bf16)", "avx512_bf16": "AVX512-BF16"}


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


def num_workers(strategy):
    """Worker processes of the strategy (each runs one input pipeline): the
    cluster's workers and chief under MultiWorkerMirroredStrategy, else 1."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return 1
    cluster = resolver.cluster_spec().as_dict()
    return max(1, len(cluster.get("worker", [])) + len(cluster.get("chief", [])))


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


def cpu_flags(cpuinfo_path="/proc/cpuinfo"):
    """The CPU feature flags the OS reports (an empty set where it does not
    say, e.g. off Linux)."""
    try:
        with open(cpuinfo_path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags") and ":" in line:
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_bfloat16_support(flags):
    """(native, reason) for a CPU with feature `flags`."""
    found = [name for flag, name in CPU_BFLOAT16_FLAGS.items() if flag in flags]
    if found:
        return True, f"CPU with {' and '.join(found)}"
    return False, "CPU without bfloat16 instructions (no amx_bf16 / avx512_bf16)"


def gpu_bfloat16_support(compute_capabilities):
    """(native, reason) for GPUs of the given (major, minor) capabilities."""
    if not compute_capabilities:
        return False, "no GPU"
    oldest = min(compute_capabilities)
    if oldest >= (8, 0):
        return True, f"GPU of compute capability {oldest[0]}.{oldest[1]} (bf16 tensor cores)"
    return False, (f"GPU of compute capability {oldest[0]}.{oldest[1]} (< 8.0: no bf16 "
                   "tensor cores)")


def _gpu_compute_capabilities():
    capabilities = []
    for device in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(device)
        if details.get("compute_capability"):
            capabilities.append(tuple(details["compute_capability"]))
    return capabilities


def native_bfloat16(strategy=None):
    """(native, reason): does the hardware the run computes on multiply bf16
    natively? Call after the strategy exists (listing devices earlier would
    start the TensorFlow runtime before a multi-worker strategy is set up)."""
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return True, "TPU"
    capabilities = _gpu_compute_capabilities()
    if capabilities:
        return gpu_bfloat16_support(capabilities)
    return cpu_bfloat16_support(cpu_flags())


def resolve_precision(requested, strategy=None):
    """(policy, reason): `requested` itself, or what `auto` chooses here.

    An explicit choice is kept whatever the hardware;
    `emulated_precision_warning` says when the hardware emulates it."""
    if requested != "auto":
        if requested not in PRECISIONS:
            raise ValueError(f"--precision must be one of {PRECISION_CHOICES}, got {requested!r}")
        return requested, "set by --precision"
    native, reason = native_bfloat16(strategy)
    if native:
        return "mixed_bfloat16", f"auto: {reason} multiplies bfloat16 natively"
    return "float32", f"auto: {reason}"


def emulated_precision_warning(policy, strategy=None):
    """A warning when `policy` is a mixed policy this hardware emulates
    (bf16 on a CPU without AMX / AVX512-BF16 or a GPU before sm_80; float16
    with no GPU), else None. Emulated half precision computes the same
    numbers more slowly than float32."""
    if policy == "mixed_bfloat16":
        native, reason = native_bfloat16(strategy)
        if native:
            return None
        return (f"--precision=mixed_bfloat16 on a {reason}: bfloat16 is emulated here, slower "
                "than float32; --precision=auto (or float32) computes faster on this machine")
    if policy == "mixed_float16" and not isinstance(strategy, tf.distribute.TPUStrategy) \
            and not _gpu_compute_capabilities():
        return ("--precision=mixed_float16 with no GPU: float16 is emulated on CPUs, slower "
                "than float32; --precision=auto (or float32) computes faster on this machine")
    return None
