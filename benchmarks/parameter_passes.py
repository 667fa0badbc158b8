"""The per-parameter passes of one alignment step, old way vs new way.

Every step touches every parameter outside the matmuls: the optimizer
update, the key encoder's EMA, and scaling/clipping the gradients. For
e5-small (117.6M parameters, 96M of them the embedding) each full pass
reads and writes ~470 MB, so the number of passes is what these cost.
This script times each piece on variables of a model's real shapes, in a
`tf.function` (graph mode, like the step), alternating A and B:

- optimizer: `keras.optimizers.AdamW` (about 12 elementwise ops per
  variable) vs `optimization.FusedAdamW` (TensorFlow's fused Adam kernel);
- EMA: `m key + (1 - m) query` then a select for skipped steps, assigned
  (the former `momentum_update`) vs the product's
  `momentum_contrast.momentum_update` (`key -= (1 - m)(key - query)`);
- gradient scaling: `tf.clip_by_global_norm` followed by a multiplication
  by the replica/loss-scale factor (the former `Aligner._apply_gradients`)
  vs the single multiplication the product does now.

Usage (from the repository root):
  python benchmarks/parameter_passes.py --shape e5-small --json results/parameter_passes.json
  python benchmarks/parameter_passes.py --quick
"""

import argparse
import sys

import _common as common
from _common import keras, np, tf

from tf_mbalign.modeling import momentum_contrast
from tf_mbalign.training import optimization


def _variables(shape, name, seed):
    encoder = common.build_random_encoder(shape, dropout=0.0, name=name)
    rng = np.random.default_rng(seed)
    for v in encoder.trainable_variables:
        v.assign(rng.normal(scale=0.02, size=v.shape).astype("float32"))
    return encoder.trainable_variables


def _optimizer(kind):
    cls = keras.optimizers.AdamW if kind == "keras" else optimization.FusedAdamW
    optimizer = cls(learning_rate=1e-5, weight_decay=0.01, beta_1=0.9, beta_2=0.999,
                    epsilon=1e-6)
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    return optimizer


def _old_ema(keys, queries, momentum, apply):
    for key, query in zip(keys, queries):
        value = momentum * key + (1.0 - momentum) * query
        key.assign(tf.where(apply, value, key))


def _old_scaling(grads, clip, factor):
    norm = tf.linalg.global_norm(grads)
    grads, _ = tf.clip_by_global_norm(grads, clip, use_norm=norm)
    return [g * factor for g in grads]


def _new_scaling(grads, clip, factor):
    norm = tf.linalg.global_norm(grads)
    factor = factor * (clip / tf.maximum(norm, clip) + (norm - norm))
    return [g * factor for g in grads]


def build_cases(shape):
    queries = _variables(shape, "query", 0)
    keys = _variables(shape, "key", 1)
    grads = [tf.constant(np.random.default_rng(2).normal(scale=1e-3, size=v.shape),
                         tf.float32) for v in queries]
    optimizers = {kind: _optimizer(kind) for kind in ("keras", "fused")}
    for optimizer in optimizers.values():
        optimizer.build(queries)
    apply = tf.constant(True)

    def optimizer_case(kind):
        @tf.function
        def run():
            optimizers[kind].apply_gradients(zip(grads, queries))
        return run

    @tf.function
    def ema_old():
        _old_ema(keys, queries, 0.999, apply)

    @tf.function
    def ema_new():
        momentum_contrast.momentum_update(keys, queries, 0.999, apply)

    def scaling_case(fn):
        @tf.function
        def run():
            # The sum keeps the scaled gradients alive without a copy out.
            return tf.add_n([tf.reduce_sum(g) for g in fn(grads, 1.0, 1.0)])
        return run

    return {
        "optimizer": (optimizer_case("keras"), optimizer_case("fused")),
        "ema": (ema_old, ema_new),
        "gradient scaling": (scaling_case(_old_scaling), scaling_case(_new_scaling)),
    }, sum(int(np.prod(v.shape)) for v in queries)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="e5-small", help="tiny, e5-small, mbert-base")
    parser.add_argument("--pairs", type=int, default=9, help="alternating A/B pairs")
    parser.add_argument("--quick", action="store_true", help="tiny shape, 3 pairs")
    parser.add_argument("--json", default="", help="write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.shape, args.pairs = "tiny", 3

    machine = common.machine_info()
    common.print_machine(machine)
    cases, parameters = build_cases(common.get_shape(args.shape))
    print(f"[{args.shape}] {parameters / 1e6:.1f}M parameters "
          f"({parameters * 4 / 1e6:.0f} MB a pass), median of {args.pairs} alternating pairs")
    rows = []
    for name, (old, new) in cases.items():
        old(), new()  # trace
        old_s, new_s = [], []
        for i in range(args.pairs):
            for side in (("old", "new") if i % 2 == 0 else ("new", "old")):
                if side == "old":
                    old_s.append(common.timed(old))
                else:
                    new_s.append(common.timed(new))
        row = {"part": name, "old": common.summarize(old_s), "new": common.summarize(new_s),
               "ratio_new_over_old": common.statistics.median(
                   [b / a for a, b in zip(old_s, new_s)])}
        rows.append(row)
        print(f"  {name:17s} old {row['old']['median_s'] * 1e3:8.1f} ms   "
              f"new {row['new']['median_s'] * 1e3:8.1f} ms   "
              f"new/old {row['ratio_new_over_old']:.3f}", flush=True)
    saved = sum(r["old"]["median_s"] - r["new"]["median_s"] for r in rows)
    print(f"  per step: {saved * 1e3:.0f} ms less")
    result = {"benchmark": "parameter_passes", "argv": sys.argv if argv is None else argv,
              "machine": machine, "shape": args.shape, "parameters": parameters,
              "rows": rows, "saved_per_step_s": saved}
    common.write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
