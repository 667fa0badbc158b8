"""Shared pieces of the benchmark scripts (not a benchmark itself).

- Importing this module puts the checkout this file lives in first on
  `sys.path` (so a benchmark measures *this* tree, not another installed copy)
  and imports TensorFlow quietly, with the package's environment defaults
  (oneDNN on).
- `SHAPES` / `DEFAULT_SETTINGS`: the model shapes and step settings every
  script uses, documented once.
- `step_flops`: the model-FLOP count of one alignment step (the MFU
  numerator; formula below and in BENCHMARKS.md).
- `matmul_peak`: the machine's measured matmul peak (the MFU denominator).
- `OurStep`: the product's alignment step (`build_alignment_step`, an
  `AlignmentStep`, in a `tf.function` loop like the trainer's `StepLoop`),
  fed with synthetic batches.

FLOPs of one step (multiply-add = 2 FLOPs; B batch, S TLM length, s sentence
length, P masked slots per TLM row, K queue size, L layers, h width, f
feed-forward width, V vocabulary, d key width (= h)):

    N      = L * (4 h^2 + 2 h f)                 matmul weights per token
    enc(n, t) = 2 N n  +  4 L t^2 h (n / t)      forward of n tokens in rows
                                                 of length t (QK^T and AV:
                                                 2 t^2 h each, per layer)
    F_tlm  = enc(B S, S)                         TLM forward (query encoder)
    F_head = 2 B P (h^2 + h V)                   MLM head, masked slots only
                                                 (sampled TLM negatives: V is
                                                 min(V, B P + k), the most
                                                 candidates k negatives give)
    F_q    = enc(B s, s)                         query sentence forward
    F_k    = enc(B s, s)                         key sentence forward (EMA
                                                 encoder, no backward)
    F_moco = 2 B K d                             query x queue logits
    step   = 3 (F_tlm + F_head + F_q) + F_k + 2 F_moco

(backward = 2x forward for trained matmuls; the queue logits need only the
gradient w.r.t. the queries, 1x). Not counted: embeddings, layer norms,
softmax, GELU, dropout, the EMA, AdamW, the pooler (bytes-bound or tiny).
These are *model* FLOPs over the padded shapes the step computes.
"""

import dataclasses
import json
import math
import os
import platform
import statistics
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if sys.path[:1] != [REPO_ROOT]:
    sys.path.insert(0, REPO_ROOT)

from tf_mbalign import runtime  # noqa: E402
from tf_mbalign.data.data_root import default_data_root  # noqa: E402

tf = runtime.import_tensorflow_quietly()
# On a GPU the PyTorch reference shares the device: TensorFlow must not take
# all of its memory up front.
for _gpu in tf.config.list_physical_devices("GPU"):
    tf.config.experimental.set_memory_growth(_gpu, True)

import keras  # noqa: E402
import numpy as np  # noqa: E402


def default_data_dir():
    """`$TF_MBALIGN_SHARED_DATA/parallel`, else `../shared/data/parallel` beside
    the checkout."""
    return os.path.join(default_data_root(REPO_ROOT), "parallel")


# === Model shapes and step settings ===


@dataclasses.dataclass(frozen=True)
class ModelShape:
    name: str
    vocabulary_size: int
    num_layers: int
    hidden_dim: int
    num_heads: int
    intermediate_dim: int
    max_sequence_length: int = 512

    @property
    def matmul_weights_per_token(self):
        h, f = self.hidden_dim, self.intermediate_dim
        return self.num_layers * (4 * h * h + 2 * h * f)


def _tiny_vocabulary_size():
    from tf_mbalign.data import vocabulary

    with open(vocabulary.demo_vocab_path(), encoding="utf-8") as f:
        return sum(1 for _ in f)


def get_shape(name):
    """`tiny` (the `tiny:demo` encoder's shape: 2 layers, width 32),
    `e5-small` (multilingual-e5-small) or `mbert-base`
    (bert-base-multilingual-cased)."""
    if name == "tiny":
        return ModelShape("tiny", _tiny_vocabulary_size(), 2, 32, 2, 64, 128)
    if name == "e5-small":
        return ModelShape("e5-small", 250037, 12, 384, 12, 1536, 512)
    if name == "mbert-base":
        return ModelShape("mbert-base", 119547, 12, 768, 12, 3072, 512)
    raise ValueError(f"unknown shape {name!r}; one of {SHAPE_NAMES}")


SHAPE_NAMES = ("tiny", "e5-small", "mbert-base")


@dataclasses.dataclass(frozen=True)
class StepSettings:
    """batch: pairs per step; seq_length: TLM input `[CLS] a [SEP] b [SEP]`;
    sentence_length: each MoCo side `[CLS] s [SEP]`; predictions: masked
    slots per TLM row; queue_size: MoCo queue K."""

    batch: int
    seq_length: int
    sentence_length: int
    predictions: int
    queue_size: int

    def tokens_per_step(self):
        """Positions the encoders process per step: TLM + query + key."""
        return self.batch * (self.seq_length + 2 * self.sentence_length)


# tiny: the demo run's lengths (configs/align.flags); e5-small / mBERT: BERT's
# 128-token inputs with 20 predictions, MoCo's 65,536-key queue, and a batch
# that keeps one mBERT step around ten seconds on 2 CPU cores.
DEFAULT_SETTINGS = {
    "tiny": StepSettings(batch=16, seq_length=64, sentence_length=32, predictions=10,
                         queue_size=4096),
    "e5-small": StepSettings(batch=16, seq_length=128, sentence_length=64, predictions=20,
                             queue_size=65536),
    "mbert-base": StepSettings(batch=16, seq_length=128, sentence_length=64, predictions=20,
                               queue_size=65536),
}
QUICK_SETTINGS = StepSettings(batch=4, seq_length=32, sentence_length=16, predictions=5,
                              queue_size=256)


def step_flops(shape, settings, tlm_sampled_negatives=0):
    """Model FLOPs of one alignment step (see the module docstring); with
    `tlm_sampled_negatives` the decoder's rows are at most the candidates."""
    B, S, s, P, K = (settings.batch, settings.seq_length, settings.sentence_length,
                     settings.predictions, settings.queue_size)
    L, h, V = shape.num_layers, shape.hidden_dim, shape.vocabulary_size
    if tlm_sampled_negatives:
        V = min(V, B * P + tlm_sampled_negatives)
    N = shape.matmul_weights_per_token

    def enc(n, t):
        return 2 * N * n + 4 * L * t * t * h * (n // t)

    f_tlm = enc(B * S, S)
    f_head = 2 * B * P * (h * h + h * V)
    f_q = enc(B * s, s)
    f_k = enc(B * s, s)
    f_moco = 2 * B * K * h
    total = 3 * (f_tlm + f_head + f_q) + f_k + 2 * f_moco
    return {"tlm_forward": f_tlm, "mlm_head_forward": f_head, "query_forward": f_q,
            "key_forward": f_k, "moco_logits_forward": f_moco, "step": total}


# === Synthetic batches ===


def synthetic_batches(shape, settings, count=4, min_fill=1.0, seed=0):
    """`count` batches in the input pipeline's format (numpy dicts).

    Token ids are random ordinary ids. Each row's real length is drawn
    uniformly from [ceil(min_fill * length), length] (min_fill=1: no
    padding); a TLM row of n real tokens has min(P, max(1, round(0.15 (n-3))))
    real masked slots, the pipeline's rule. Pair ids are unique over all
    batches, so the queue never masks a key of the same pair.
    """
    rng = np.random.default_rng(seed)
    B, S, s, P = settings.batch, settings.seq_length, settings.sentence_length, settings.predictions
    low, high = 5, shape.vocabulary_size

    def rows(length):
        n = rng.integers(max(3, math.ceil(min_fill * length)), length + 1, size=B)
        ids = rng.integers(low, high, size=(B, length)).astype(np.int32)
        mask = (np.arange(length)[None, :] < n[:, None]).astype(np.int32)
        return np.where(mask == 1, ids, 0).astype(np.int32), mask, n

    batches = []
    for i in range(count):
        tlm_ids, tlm_mask, n = rows(S)
        positions = np.zeros((B, P), np.int32)
        weights = np.zeros((B, P), np.float32)
        for r in range(B):
            chosen = min(P, max(1, round(0.15 * (n[r] - 3))), n[r] - 2)
            positions[r, :chosen] = np.sort(rng.choice(np.arange(1, n[r] - 1), chosen, False))
            weights[r, :chosen] = 1.0
        query_ids, query_mask, _ = rows(s)
        key_ids, key_mask, _ = rows(s)
        batches.append({
            "tlm_token_ids": tlm_ids,
            "tlm_padding_mask": tlm_mask,
            "masked_positions": positions,
            "masked_ids": rng.integers(low, high, size=(B, P)).astype(np.int32),
            "masked_weights": weights,
            "query_token_ids": query_ids,
            "query_padding_mask": query_mask,
            "key_token_ids": key_ids,
            "key_padding_mask": key_mask,
            "pair_id": np.arange(i * B, (i + 1) * B, dtype=np.int64),
        })
    return batches


# === The product's step ===


def gpu_available():
    return bool(tf.config.list_physical_devices("GPU"))


def bfloat16_is_native():
    """Whether this machine multiplies bf16 natively (`distribute.native_bfloat16`)."""
    from tf_mbalign import distribute

    return distribute.native_bfloat16()[0]


def default_precisions():
    """float32 everywhere; bf16 mixed precision as well where the hardware
    multiplies bf16 natively (GPU >= sm_80, CPU with AMX or AVX512-BF16)."""
    return ["float32", "mixed_bfloat16"] if bfloat16_is_native() else ["float32"]


def build_random_encoder(shape, dropout=0.1, name="bert_encoder"):
    from tf_mbalign.modeling.bert_encoder import encoder_like

    return encoder_like(shape, dropout=dropout, name=name)


class OurStep:
    """The product's alignment step on a random encoder of `shape`.

    Built exactly as the trainer builds it (`build_alignment_step` from a
    `TrainConfig`), stepped by a `tf.function` loop of
    `strategy.run(alignment_step, ...)` like the trainer's `StepLoop` (which
    runs the same step plus a per-step batch fingerprint and halt check of a
    few scalar ops), with the step
    XLA-compiled when `jit_compile` (the trainer's `--jit_compile`).
    Both loop variants share one model, so one build serves graph and XLA.
    """

    def __init__(self, shape, settings, batches, precision="float32", dropout=0.1,
                 momentum=0.999, seed=0, step_flags=None):
        from tf_mbalign import distribute
        from tf_mbalign.config import TrainConfig
        from tf_mbalign.modeling.encoders import EncoderBundle
        from tf_mbalign.training.alignment_step import build_alignment_step

        self.shape, self.settings, self.precision = shape, settings, precision
        self.batches = batches
        distribute.set_precision(precision)
        keras.utils.set_random_seed(seed)
        self.strategy = tf.distribute.get_strategy()
        config = TrainConfig(
            encoder="random", global_batch_size=settings.batch,
            max_seq_length=settings.seq_length, max_sentence_length=settings.sentence_length,
            max_predictions_per_seq=settings.predictions, queue_size=settings.queue_size,
            momentum=momentum, learning_rate=1e-5, warmup_steps=0, train_steps=10**9,
            dropout=dropout, precision=precision, **(step_flags or {}),
        )
        try:
            encoder = build_random_encoder(shape, dropout)
            bundle = EncoderBundle(encoder, None, "random", pretrained=False)
            self.training = build_alignment_step(config, bundle)
            self.aligner = self.training.aligner
        finally:
            distribute.set_precision("float32")
        data = tf.data.Dataset.from_tensor_slices(
            {k: np.stack([b[k] for b in batches]) for k in batches[0]}
        )
        self.iterator = iter(data.repeat().prefetch(2))
        self._loops = {}

    def loop(self, jit_compile):
        if jit_compile not in self._loops:
            training, strategy = self.training, self.strategy

            @tf.autograph.experimental.do_not_convert  # as the trainer's loop does
            def step_fn(batch):
                training(batch)

            if jit_compile:
                step_fn = tf.function(step_fn, jit_compile=True)

            @tf.function
            def loop(iterator, steps):
                for _ in tf.range(steps):
                    strategy.run(step_fn, args=(next(iterator),))
                return training.optimizer.iterations + 0

            self._loops[jit_compile] = loop
        return self._loops[jit_compile]

    def run(self, steps, jit_compile=False):
        """Runs `steps` steps and waits for them (the result is fetched)."""
        return int(self.loop(jit_compile)(self.iterator, tf.constant(steps)).numpy())

    def metrics(self):
        return {m.name: float(m.result()) for m in self.aligner.metrics}


# === Timing ===


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - start


def summarize(seconds):
    """Median / min / max and the list, for a list of per-step seconds."""
    return {"median_s": statistics.median(seconds), "min_s": min(seconds),
            "max_s": max(seconds), "all_s": list(seconds)}


def percentile(values, q):
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def cpu_threads():
    """Cores this process may use: what TensorFlow's default thread pools
    size themselves to, and what the PyTorch reference is given."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count()


def matmul_peak(n=4096, repeats=5, dtype="float32", with_numpy=True):
    """The machine's matmul peak in FLOP/s: best of a large TF matmul and
    numpy's BLAS matmul (n x n by n x n, 2 n^3 FLOPs each)."""
    flops = 2.0 * n ** 3
    device = "/GPU:0" if gpu_available() else "/CPU:0"
    with tf.device(device):
        a = tf.random.normal([n, n], dtype=dtype)
        b = tf.random.normal([n, n], dtype=dtype)

        @tf.function
        def product(a, b):
            return tf.reduce_sum(tf.cast(tf.matmul(a, b)[:1], tf.float32))

        product(a, b).numpy()
        tf_best = min(timed(lambda: product(a, b).numpy()) for _ in range(repeats))
    result = {"n": n, "dtype": dtype, "device": device,
              "tensorflow_flops": flops / tf_best}
    if with_numpy and dtype == "float32":
        x = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
        y = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
        x @ y
        np_best = min(timed(lambda: x @ y) for _ in range(repeats))
        result["numpy_flops"] = flops / np_best
    result["peak_flops"] = max(v for k, v in result.items() if k.endswith("_flops"))
    return result


# === Reporting ===


def machine_info():
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "threads_used": cpu_threads(),
        "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
        "tf_mbalign": os.path.dirname(sys.modules["tf_mbalign"].__file__),
        "load_average_at_start": _load_average(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        info["torch"] = None
    return info


def print_machine(machine):
    """One line about the machine, and a warning when it is not quiet."""
    print(f"machine: {machine['cpu']}, {machine['threads_used']} threads, "
          f"GPUs {machine['gpus'] or 'none'}, TF {machine['tensorflow']}, "
          f"torch {machine['torch']}, load average {machine['load_average_at_start']}",
          flush=True)
    load = machine["load_average_at_start"]
    if load and load[0] > 0.25 * machine["threads_used"]:
        print(f"WARNING: the 1-minute load average is {load[0]} on {machine['threads_used']} "
              "threads: other work is running, so figures from this run are not "
              "representative (PyTorch's OpenMP threads suffer most).", flush=True)


def _load_average():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _cpu_model():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def write_json(path, payload):
    if not path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=2, default=float)
        f.write("\n")
    print(f"wrote {path}", flush=True)


def gflops(x):
    return f"{x / 1e9:.1f} GFLOP/s"


def print_table(rows, columns):
    """Plain fixed-width table: `columns` is a list of (header, key, format)."""
    cells = [[h for h, _, _ in columns]]
    for row in rows:
        cells.append([("" if row.get(k) is None else fmt.format(row[k])) for _, k, fmt in columns])
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    for i, r in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(r, widths)), flush=True)
        if i == 0:
            print("  ".join("-" * w for w in widths), flush=True)
