"""Does oneDNN fuse the feed-forward's matmul, bias and GELU, and what is it worth?

TensorFlow's Grappler remapper rewrites `MatMul -> BiasAdd -> GELU` into one
oneDNN op (`_MklNativeFusedMatMul`) when the MatMul is 2-D. Keras' `Dense` on
the encoder's 3-D hidden states goes through `Tensordot` (reshapes around a
MatMul), and the bias is added after the reshape back, so nothing fuses. This
times the feed-forward's first dense layer with its exact GELU on e5-small's
TLM hidden states (16 x 128 x 384 -> 1,536), as the encoder calls it (3-D)
and with the hidden states reshaped to 2-D around it, forward only and
forward + backward (the gradients of the input and the weights, as training
takes them), and lists the op types each runs with their self time per call
(a profile of the timed calls).

    python benchmarks/feedforward_fusion.py [--dtype bfloat16] --json OUT.json
"""

import argparse
import glob
import os
import tempfile

import _common as common
import profile_summary
from _common import keras, tf

SHAPE = (16, 128, 384)
INTERMEDIATE = 1536


def _dense(dtype):
    policy = "mixed_bfloat16" if dtype == "bfloat16" else "float32"
    dense = keras.layers.Dense(
        INTERMEDIATE, activation=lambda t: keras.activations.gelu(t, approximate=False),
        dtype=policy)
    dense.build([None, SHAPE[-1]])
    return dense


def variants(dense):
    width = SHAPE[-1]
    return {
        "dense_3d": lambda x: dense(x),
        "dense_2d": lambda x: tf.reshape(dense(tf.reshape(x, [-1, width])),
                                         [SHAPE[0], SHAPE[1], INTERMEDIATE]),
    }


def _function(call, dense, training):
    @tf.function
    def forward(x):
        return tf.reduce_sum(tf.cast(call(x)[:1], tf.float32))

    @tf.function
    def forward_backward(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.sin(tf.cast(call(x), tf.float32)))
        gradients = tape.gradient(loss, [x] + dense.trainable_variables)
        return sum(tf.reduce_sum(tf.cast(g[:1], tf.float32)) for g in gradients)

    return forward_backward if training else forward


def op_types(run, x, calls):
    """{op type: self ms per call} over `calls` profiled calls (types of at
    least 0.05 ms a call)."""
    with tempfile.TemporaryDirectory() as directory:
        tf.profiler.experimental.start(directory)
        for _ in range(calls):
            run(x).numpy()
        tf.profiler.experimental.stop()
        paths = glob.glob(os.path.join(directory, "**", "*.xplane.pb"), recursive=True)
        summary = profile_summary.summarize(paths, steps=calls, top=None)
    return {t["op_type"]: t["self_ms_per_step"] for t in summary["top_op_types"]
            if t["self_ms_per_step"] >= 0.05}


def measure(dtype, rounds, calls):
    dense = _dense(dtype)
    x = tf.cast(tf.random.stateless_normal(SHAPE, (1, 2)), dtype)
    rows = []
    for training in (False, True):
        runs = {name: _function(call, dense, training) for name, call in variants(dense).items()}
        for run in runs.values():
            run(x).numpy()
        times = {name: [] for name in runs}
        for r in range(rounds):
            for name in (list(runs) if r % 2 == 0 else list(reversed(list(runs)))):
                def calls_of(run=runs[name]):
                    for _ in range(calls):
                        run(x).numpy()

                times[name].append(common.timed(calls_of) / calls)
        base = common.statistics.median(times["dense_3d"])
        for name, run in runs.items():
            median = common.statistics.median(times[name])
            ops = op_types(run, x, calls)
            rows.append({"pass": "forward + backward" if training else "forward",
                         "variant": name, "median_ms": median * 1e3,
                         "ratio_to_dense_3d": median / base, "op_types_ms": ops,
                         "times_ms": [t * 1e3 for t in times[name]]})
            print(f"{rows[-1]['pass']:20s} {name:9s} {median * 1e3:8.2f} ms  x{median / base:.3f}  "
                  + ", ".join(f"{t} {v:.2f}" for t, v in list(ops.items())[:8]), flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=5, help="calls per timing")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    machine = common.machine_info()
    common.print_machine(machine)
    rows = measure(args.dtype, args.rounds, args.calls)
    common.write_json(args.json, {"machine": machine, "dtype": args.dtype, "shape": SHAPE,
                                  "intermediate": INTERMEDIATE, "rounds": args.rounds,
                                  "calls": args.calls, "rows": rows})


if __name__ == "__main__":
    main()
