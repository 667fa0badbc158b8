"""Element-wise work of the alignment step: ways to compute the same thing,
timed against each other on e5-small's tensor shapes.

Dropout is the largest element-wise cost of the step after the optimizer's
per-variable arithmetic (a serialized profile of the e5-small float32 step:
`StatelessRandomUniformV2`, `SelectV2` and `GreaterEqual`, BENCHMARKS.md).
Keras' `Dropout` calls `tf.nn.experimental.stateless_dropout`: a uniform
draw, a comparison, `x * scale` and a select against 0, and in the backward
pass another select and multiply. The variants compute the same
distribution of outputs:

- `keras_dropout`: that path (what the encoder runs today);
- `scaled_mask`: one mask `cast(u >= rate) / (1 - rate)` multiplied in, and
  the backward pass one multiply by the same mask (`tf.custom_gradient`);
- `integer_bits`: the mask from 32 random bits compared with an integer
  threshold (no float conversion of the draw), then as `scaled_mask`;
- `sixteen_bits`: two masks' worth of 16-bit integers from each 32-bit word
  (half the random bits), then as `scaled_mask`;
- `sixteen_bits_select`: the same mask applied by selects, as Keras applies
  its mask (what `--dropout_mask_bits=16` runs:
  `tf_mbalign.modeling.sixteen_bit_dropout`).

Each variant runs forward and backward (`d sum(dropout(x) * w) / dx`) in a
`tf.function` on the step's three dropout shapes (attention probabilities of
the TLM pass, hidden states of the TLM pass, attention probabilities of a
sentence pass); the variants are timed alternately, `--rounds` rounds, and
the median time per call is reported with its ratio to `keras_dropout`.

Layer norm (`--family layer_norm`): Keras' `LayerNormalization` on TensorFlow
computes `moments` and a handful of element-wise ops, forward and backward
(`keras.ops.layer_normalization`). TensorFlow's fused op,
`FusedBatchNormV3` (oneDNN has a kernel for it, forward and backward),
normalizes each channel over the other axes: with the hidden states reshaped
to `[1, tokens, width, 1]` in NCHW, each token is a channel and the op
computes a layer norm's mean and variance over the width, then the layer's
gamma and beta are applied as a multiply and an add. Both variants run
forward and backward with the gradients of the input, gamma and beta on the
step's hidden-state shapes; each row also reports the largest difference
of the outputs from Keras'.

GELU (`--family gelu`): Keras' exact GELU in the input's dtype (what the
encoder runs) against the same function computed in float32 and cast back
(one rounding to bf16 instead of one per op), on the feed-forward's
activations. `--dtype bfloat16` runs dropout and GELU on bf16 inputs, as the
mixed bf16 step does (layer norm: float32 only).

    python benchmarks/elementwise_options.py --json docs/results/elementwise/zen3.json
    python benchmarks/elementwise_options.py --family layer_norm --json LAYER_NORM.json
    python benchmarks/elementwise_options.py --family gelu --dtype bfloat16 --json GELU.json
"""

import argparse

import _common as common
from _common import tf
from tf_mbalign.modeling.bert_encoder import gelu_in_float32
from tf_mbalign.modeling.sixteen_bit_dropout import sixteen_bit_dropout, sixteen_bit_keep_mask

RATE = 0.1
# e5-small's dropout shapes in the benchmark step (batch 16, TLM length 128,
# sentence length 64, 12 heads, width 384).
SHAPES = {
    "attention_probs_tlm": (16, 12, 128, 128),
    "hidden_tlm": (16, 128, 384),
    "attention_probs_sentence": (16, 12, 64, 64),
}


def keras_dropout(x, seed):
    return tf.nn.experimental.stateless_dropout(x, RATE, seed=seed)


def _multiply_by_mask(x, mask):
    @tf.custom_gradient
    def forward(x):
        return x * mask, lambda dy: dy * mask

    return forward(x)


def scaled_mask(x, seed):
    keep = tf.random.stateless_uniform(tf.shape(x), seed, dtype=x.dtype) >= RATE
    return _multiply_by_mask(x, tf.cast(keep, x.dtype) * (1.0 / (1.0 - RATE)))


def integer_bits(x, seed):
    bits = tf.random.stateless_uniform(tf.shape(x), seed, minval=None, maxval=None,
                                       dtype=tf.int32)
    # P(bits >= t) = 1 - RATE for bits uniform over int32.
    threshold = int(RATE * 2 ** 32) - 2 ** 31
    keep = bits >= threshold
    return _multiply_by_mask(x, tf.cast(keep, x.dtype) * (1.0 / (1.0 - RATE)))


def sixteen_bits(x, seed):
    """Two 16-bit draws per 32-bit word: half the random bits of the others.
    P(drop) = 6,554 / 65,536 = 0.100006 for RATE 0.1."""
    keep = sixteen_bit_keep_mask(tf.shape(x), RATE, seed)
    return _multiply_by_mask(x, tf.cast(keep, x.dtype) * (1.0 / (1.0 - RATE)))


def sixteen_bits_select(x, seed):
    """As `sixteen_bits`, the mask applied by selects: what
    `--dropout_mask_bits=16` runs."""
    return sixteen_bit_dropout(x, RATE, seed)


VARIANTS = {"keras_dropout": keras_dropout, "scaled_mask": scaled_mask,
            "integer_bits": integer_bits, "sixteen_bits": sixteen_bits,
            "sixteen_bits_select": sixteen_bits_select}

EPSILON = 1e-12  # e5-small's layer norm epsilon
WIDTH = 384
LAYER_NORM_SHAPES = {"hidden_tlm": (16, 128, WIDTH), "hidden_sentence": (16, 64, WIDTH)}
_gamma = tf.Variable(tf.random.stateless_uniform((WIDTH,), (3, 4), 0.5, 1.5), name="gamma")
_beta = tf.Variable(tf.random.stateless_normal((WIDTH,), (5, 6)) * 0.1, name="beta")


def keras_layer_norm(x, seed):
    del seed
    return common.keras.ops.layer_normalization(x, _gamma, _beta, axis=-1, epsilon=EPSILON)


def fused_batch_norm(x, seed):
    del seed
    shape = tf.shape(x)
    rows = tf.reshape(x, [1, -1, WIDTH, 1])  # NCHW: a channel per token
    ones = tf.ones([tf.shape(rows)[1]], x.dtype)
    normalized, _, _ = tf.compat.v1.nn.fused_batch_norm(
        rows, scale=ones, offset=tf.zeros_like(ones), epsilon=EPSILON, data_format="NCHW",
        is_training=True)
    return tf.reshape(normalized, shape) * _gamma + _beta


LAYER_NORM_VARIANTS = {"keras_layer_norm": keras_layer_norm, "fused_batch_norm": fused_batch_norm}

# GELU (`--family gelu`): the feed-forward's activation on its 1,536-wide
# output, forward and backward. In a mixed bf16 step the input is bf16.
INTERMEDIATE = 1536
GELU_SHAPES = {"intermediate_tlm": (16, 128, INTERMEDIATE),
               "intermediate_sentence": (16, 64, INTERMEDIATE)}


def keras_gelu(approximate):
    """What the encoder ran before: Keras' GELU in the input's dtype."""
    return lambda x, seed: common.keras.activations.gelu(x, approximate=approximate)


def float32_gelu(approximate):
    """GELU computed in float32 and rounded to the input's dtype once: what
    the encoder runs in mixed precision."""
    return lambda x, seed: gelu_in_float32(x, approximate)


# The tanh rows' ratios are to the exact GELU's.
GELU_VARIANTS = {"keras_gelu": keras_gelu(False), "float32_gelu": float32_gelu(False),
                 "keras_gelu_tanh": keras_gelu(True), "float32_gelu_tanh": float32_gelu(True)}

# family: (variants, shapes, the baseline variant)
FAMILIES = {"dropout": (VARIANTS, SHAPES, "keras_dropout"),
            "layer_norm": (LAYER_NORM_VARIANTS, LAYER_NORM_SHAPES, "keras_layer_norm"),
            "gelu": (GELU_VARIANTS, GELU_SHAPES, "keras_gelu")}


def forward_backward(variant):
    @tf.function
    def run(x, w, seed):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(variant(x, seed) * w)
        gradients = tape.gradient(loss, [x, _gamma, _beta])
        return sum(tf.reduce_sum(g[:1]) for g in gradients if g is not None)

    return run


def keep_rate(variant, shape):
    """The share of elements kept and the mean of the output over ones
    (should be 1 - RATE and 1)."""
    x = tf.ones(shape)
    y = variant(x, tf.constant([1, 2]))
    return float(tf.reduce_mean(tf.cast(y != 0, tf.float32))), float(tf.reduce_mean(y))


def check(family, variant, baseline, shape, dtype="float32"):
    """What each row reports to show the variant computes the same thing."""
    if family == "dropout":
        kept, mean = keep_rate(variant, shape)
        return {"kept_share": kept, "mean_of_ones": mean}, f"kept {kept:.4f}"
    x = tf.cast(tf.random.stateless_normal(shape, (7, 8)) * 3.0 + 1.0, dtype)
    difference = float(tf.reduce_max(tf.abs(tf.cast(variant(x, None), tf.float32)
                                            - tf.cast(baseline(x, None), tf.float32))))
    return {"max_abs_difference": difference}, f"max |diff| {difference:.2e}"


def measure(rounds, calls, family="dropout", dtype="float32"):
    variants, shapes, base_name = FAMILIES[family]
    rows = []
    for shape_name, shape in shapes.items():
        x = tf.cast(tf.random.normal(shape), dtype)
        w = tf.cast(tf.random.normal(shape), dtype)
        runs = {name: forward_backward(fn) for name, fn in variants.items()}
        for run in runs.values():
            run(x, w, tf.constant([0, 0])).numpy()
        times = {name: [] for name in runs}
        for r in range(rounds):
            order = list(runs) if r % 2 == 0 else list(reversed(list(runs)))
            for name in order:
                def calls_of(run=runs[name], r=r):
                    for i in range(calls):
                        run(x, w, tf.constant([r, i])).numpy()

                times[name].append(common.timed(calls_of) / calls)
        base = common.statistics.median(times[base_name])
        for name, values in times.items():
            median = common.statistics.median(values)
            checked, text = check(family, variants[name], variants[base_name], shape, dtype)
            rows.append({"shape": shape_name, "elements": int(common.np.prod(shape)),
                         "variant": name, "median_ms": median * 1e3,
                         f"ratio_to_{base_name}": median / base, **checked,
                         "times_ms": [t * 1e3 for t in values]})
            print(f"{shape_name:26s} {name:16s} {median * 1e3:8.2f} ms  "
                  f"x{median / base:.3f}  {text}", flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=5, help="calls per timing")
    parser.add_argument("--family", choices=sorted(FAMILIES), default="dropout")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                        help="the inputs' dtype (bfloat16: as the mixed_bfloat16 step runs)")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    machine = common.machine_info()
    common.print_machine(machine)
    rows = measure(args.rounds, args.calls, args.family, args.dtype)
    common.write_json(args.json, {"machine": machine, "family": args.family, "dtype": args.dtype, "rate": RATE,
                                  "rounds": args.rounds, "calls": args.calls, "rows": rows})


if __name__ == "__main__":
    main()
