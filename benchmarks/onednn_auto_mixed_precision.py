"""TensorFlow's oneDNN auto-mixed-precision rewrite against Keras' mixed_bfloat16.

One `--mode` per process (the rewrite is a process-wide Grappler option, and
a `tf.function` is optimized again whenever it changes, so two modes cannot
alternate in one process):

- `float32`: the e5-small alignment step of `train_step.py` in float32;
- `keras_mixed`: the same under Keras' `mixed_bfloat16` policy (what
  `--precision=mixed_bfloat16` trains with);
- `grappler`: the float32 model, with Grappler's
  `auto_mixed_precision_onednn_bfloat16` rewrite on: TensorFlow casts the
  graph to bf16 around the ops oneDNN runs in bf16 (matmuls, and element-wise
  ops between them by its own lists) and keeps the rest float32.

Prints (and with `--json` writes) the per-step times after a warm-up, the
median and the first step's metrics. Run the modes one after the other on a
quiet machine and compare medians: figures from separate processes, timed
one after the other.

Usage (from the repository root):
  python benchmarks/onednn_auto_mixed_precision.py --mode grappler --lean --json out.json
"""

import argparse
import json
import statistics
import sys
import time

import _common as common

MODES = ("float32", "keras_mixed", "grappler")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=MODES, required=True)
    parser.add_argument("--steps", type=int, default=6, help="timed steps after 2 warm-up steps")
    parser.add_argument("--lean", action="store_true",
                        help="table frozen and 4,096 sampled TLM negatives (the lean step)")
    parser.add_argument("--json", default="", help="write the results here")
    args = parser.parse_args(argv)

    import tensorflow as tf

    tf.config.optimizer.set_experimental_options(
        {"auto_mixed_precision_onednn_bfloat16": args.mode == "grappler"})
    flags = {"train_token_embeddings": not args.lean,
             "tlm_sampled_negatives": 4096 if args.lean else 0}
    shape = common.get_shape("e5-small")
    settings = common.DEFAULT_SETTINGS["e5-small"]
    machine = common.machine_info()
    common.print_machine(machine)
    batches = common.synthetic_batches(shape, settings, min_fill=1.0)
    precision = "mixed_bfloat16" if args.mode == "keras_mixed" else "float32"
    ours = common.OurStep(shape, settings, batches, precision=precision, step_flags=flags)
    first_call = common.timed(ours.run, 1)
    ours.run(1)
    metrics = ours.metrics()
    times = [common.timed(ours.run, 1) for _ in range(args.steps)]
    median = statistics.median(times)
    print(f"{args.mode}{' (lean)' if args.lean else ''}: step median {median * 1e3:.0f} ms "
          f"over {args.steps} ({', '.join(f'{t * 1e3:.0f}' for t in times)}); first call "
          f"{first_call:.1f} s; metrics after 2 steps {metrics}", flush=True)
    common.write_json(args.json, {
        "benchmark": "onednn_auto_mixed_precision", "argv": sys.argv if argv is None else argv,
        "machine": machine, "mode": args.mode, "lean": args.lean, "step_flags": flags,
        "times_s": times, "median_s": median, "first_call_s": first_call, "metrics": metrics})


if __name__ == "__main__":
    main()
