"""Does mixed bfloat16 train the same as float32? One alignment run in each
from the same start, compared.

1. Two runs of the training binary (`python -m tf_mbalign.train`), the same
   flags (default: `configs/align.flags`, e5-small on the demo corpus; the
   same seed, so the same initialization, data order and masks) except
   `--precision` (float32, mixed_bfloat16) and `--model_dir`. Dropout is 0
   by default: Keras draws dropout masks in the compute dtype, so with
   dropout the two runs would also drop different units (`--dropout 0.1` to
   compare that way too).
2. Loss curves (`metrics.jsonl`: loss, tlm_loss, moco_loss) in one PNG, and
   their means over windows of `--window` steps compared: |bf16 - f32| /
   |f32| <= `--loss_rtol` (stated in the JSON) in every window.
3. Each run's export (float32, the default whatever the training policy;
   checked from export_info.json) embeds the Tatoeba sentences (both sides,
   every language of `--tatoeba`, default ../shared/data/tatoeba; skipped
   with the reason when absent) with the run's pooling and with mean pooling:
   per-sentence cosine between the bf16-trained and the float32-trained
   embedding (min, percentiles, mean; goal: >= 0.99 for every sentence), and
   for scale the same cosine between the float32-trained encoder and the
   encoder before alignment (how far training moved the embeddings).
4. Retrieval (`evaluation/retrieval.py`, both directions, top-1) of both,
   and their paired difference (bf16 - f32) per language and averaged, with
   the rows where only one is right and a 95% paired-bootstrap interval.

Writes `precision_numerics.json` and `loss_curves.png` to `--output_dir`
(default docs/results/precision_numerics). The runs (checkpoints and exports,
~3.4 GB each for e5-small) go to `--work_dir`; a finished run there with the
same flags is reused (`--retrain` to train again).

Usage (from the repository root):
  python benchmarks/precision_numerics.py      # 50 + 200 steps (estimate: 40-60 min, 2 cores)
  python benchmarks/precision_numerics.py --steps 6 --head_warmup_steps 2 \\
      --max_pairs 20 --output_dir /tmp/pn --work_dir /tmp/pn_runs     # a smoke run
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import _common as common
from _common import np

PRECISIONS = ("float32", "mixed_bfloat16")
CURVES = ("loss", "tlm_loss", "moco_loss")
COSINE_GOAL = 0.99


# === The two runs ===


def train_arguments(args, precision, model_dir):
    """The training binary's command line for one run."""
    return [sys.executable, "-m", "tf_mbalign.train", f"--flagfile={args.flagfile}",
            f"--encoder={args.encoder}", f"--corpus={args.corpus}",
            f"--train_steps={args.steps}", f"--head_warmup_steps={args.head_warmup_steps}",
            f"--dropout={args.dropout}", f"--seed={args.seed}", f"--precision={precision}",
            f"--model_dir={model_dir}", "--export=true", "--export_precision=float32",
            "--keep_checkpoints=1", f"--checkpoint_every={args.steps + args.head_warmup_steps}",
            "--quiet", *args.train_flag]


def finished_run(model_dir, arguments):
    """True when `model_dir` holds a finished run started with `arguments`."""
    try:
        with open(os.path.join(model_dir, "summary.json"), encoding="utf-8") as f:
            summary = json.load(f)
        with open(os.path.join(model_dir, "numerics_command.json"), encoding="utf-8") as f:
            command = json.load(f)
    except (OSError, ValueError):
        return False
    return summary.get("outcome") == "finished" and command == arguments[1:]


def run_training(args, precision):
    """Trains (or reuses) one run; returns its model_dir and wall seconds."""
    model_dir = os.path.join(args.work_dir, precision)
    arguments = train_arguments(args, precision, model_dir)
    if not args.retrain and finished_run(model_dir, arguments):
        print(f"[{precision}] reusing the finished run in {model_dir}", flush=True)
        return model_dir, None
    shutil.rmtree(model_dir, ignore_errors=True)
    os.makedirs(model_dir)
    with open(os.path.join(model_dir, "numerics_command.json"), "w", encoding="utf-8") as f:
        json.dump(arguments[1:], f)
    print(f"[{precision}] training: {' '.join(arguments[1:])}", flush=True)
    log_path = os.path.join(model_dir, "train.log")
    start = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        code = subprocess.call(arguments, cwd=common.REPO_ROOT, stdout=log,
                               stderr=subprocess.STDOUT,
                               env=dict(os.environ, PYTHONPATH=common.REPO_ROOT))
    seconds = time.perf_counter() - start
    if code != 0:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            tail = f.read()[-3000:]
        raise SystemExit(f"[{precision}] training failed (exit {code}); {log_path} ends:\n{tail}")
    print(f"[{precision}] trained in {seconds:.0f} s", flush=True)
    return model_dir, seconds


# === Loss curves ===


def loss_curves(model_dir):
    """{metric: (steps, values)} from the run's metrics.jsonl (null values,
    e.g. MoCo at an empty queue, left out)."""
    from tf_mbalign.training.metrics_sinks import read_metrics

    records = read_metrics(model_dir)
    curves = {}
    for name in CURVES:
        points = [(r["step"], r[name]) for r in records if r.get(name) is not None]
        curves[name] = (np.array([p[0] for p in points]), np.array([p[1] for p in points]))
    return curves


def window_comparison(reference, other, window, rtol):
    """Window means of each curve for both runs and their relative
    difference; `within_tolerance` for each window and overall.

    `reference` / `other`: {metric: (steps, values)}. A window is the steps
    (start, start + window]; only steps both runs logged count."""
    table = {}
    for name in CURVES:
        ref = dict(zip(*map(list, reference[name])))
        oth = dict(zip(*map(list, other[name])))
        steps = sorted(set(ref) & set(oth))
        rows = []
        if steps:
            for start in range(0, int(max(steps)), window):
                inside = [s for s in steps if start < s <= start + window]
                if not inside:
                    continue
                a = float(np.mean([ref[s] for s in inside]))
                b = float(np.mean([oth[s] for s in inside]))
                relative = abs(b - a) / max(abs(a), 1e-12)
                rows.append({"steps": [int(inside[0]), int(inside[-1])], "float32": a,
                             "mixed_bfloat16": b, "relative_difference": relative,
                             "within_tolerance": relative <= rtol})
        table[name] = rows
    every = [row["within_tolerance"] for rows in table.values() for row in rows]
    return {"window": window, "rtol": rtol, "windows": table,
            "max_relative_difference": max((row["relative_difference"]
                                            for rows in table.values() for row in rows),
                                           default=None),
            "all_within_tolerance": bool(every) and all(every)}


def plot_curves(curves_by_precision, path, title, head_warmup_steps=0):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(CURVES), figsize=(5 * len(CURVES), 3.6))
    for axis, name in zip(axes, CURVES):
        for precision, style in zip(PRECISIONS, ("-", "--")):
            steps, values = curves_by_precision[precision][name]
            axis.plot(steps, values, style, label=precision, linewidth=1)
        if head_warmup_steps:
            axis.axvline(head_warmup_steps + 0.5, color="grey", linewidth=0.8, linestyle=":")
        axis.set_title(name)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    axes[0].legend()
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    print(f"wrote {path}", flush=True)


# === Embeddings and retrieval ===


def load_export(model_dir):
    """(TrainedEncoder, export precision) of a run's export."""
    from tf_mbalign.evaluation.trained_encoders import load_trained_encoder
    from tf_mbalign.export.encoder_export import read_export_info

    export_dir = os.path.join(model_dir, "export")
    precision = read_export_info(export_dir).get("precision", "float32 (not recorded)")
    return load_trained_encoder(export_dir), precision


def embed_bitexts(trained, data, pooling, layer, max_length):
    """{language: (foreign vectors, english vectors)}, L2-normalized float32."""
    from tf_mbalign.evaluation.sentence_embedding import SentenceEmbedder

    embedder = SentenceEmbedder(trained.encoder, trained.tokenizer, pooling, layer, max_length)
    return {language: (embedder(b.foreign), embedder(b.english)) for language, b in data.items()}


def cosine_summary(a, b):
    """Per-row cosines of two sets of L2-normalized vectors, summarized."""
    cosines = np.sum(np.concatenate(a) * np.concatenate(b), axis=1)
    return {"sentences": int(cosines.size), "min": float(cosines.min()),
            "p1": common.percentile(cosines, 1), "p5": common.percentile(cosines, 5),
            "median": common.percentile(cosines, 50), "mean": float(cosines.mean()),
            "share_at_least_goal": float(np.mean(cosines >= COSINE_GOAL))}


def row_correct(foreign, english):
    """(XX->en, en->XX) per-row top-1 correctness (bool arrays)."""
    similarity = foreign @ english.T
    gold = np.arange(len(foreign))
    return np.argmax(similarity, axis=1) == gold, np.argmax(similarity, axis=0) == gold


def paired_retrieval(reference, other, bootstrap=1000, seed=0):
    """Retrieval accuracy of both and the paired difference (other - reference)
    per language and direction, and averaged over languages with a 95%
    bootstrap interval (rows resampled within each language, the same rows
    for both encoders)."""
    from tf_mbalign.evaluation.retrieval import retrieval_accuracy

    rng = np.random.default_rng(seed)
    result = {"languages": {}, "average": {}}
    replicates = {"xx_to_en": [], "en_to_xx": []}
    for language in sorted(reference):
        ref_correct = row_correct(*reference[language])
        oth_correct = row_correct(*other[language])
        ref_accuracy = retrieval_accuracy(*reference[language])
        oth_accuracy = retrieval_accuracy(*other[language])
        entry = {}
        for index, direction in enumerate(("xx_to_en", "en_to_xx")):
            a, b = ref_correct[index], oth_correct[index]
            entry[direction] = {
                "float32": ref_accuracy[index], "mixed_bfloat16": oth_accuracy[index],
                "difference": oth_accuracy[index] - ref_accuracy[index],
                "only_float32_right": int(np.sum(a & ~b)),
                "only_mixed_bfloat16_right": int(np.sum(b & ~a)), "pairs": int(a.size)}
            rows = rng.integers(0, a.size, size=(bootstrap, a.size))
            replicates[direction].append((b[rows].astype(float) - a[rows]).mean(axis=1))
        result["languages"][language] = entry
    for direction, per_language in replicates.items():
        averages = np.mean(per_language, axis=0)
        difference = float(np.mean([e[direction]["difference"]
                                    for e in result["languages"].values()]))
        result["average"][direction] = {
            "float32": float(np.mean([e[direction]["float32"]
                                      for e in result["languages"].values()])),
            "mixed_bfloat16": float(np.mean([e[direction]["mixed_bfloat16"]
                                             for e in result["languages"].values()])),
            "difference": difference,
            "interval_95": [common.percentile(averages, 2.5), common.percentile(averages, 97.5)],
        }
    return result


def compare_encoders(args, model_dirs):
    """Cosines and paired retrieval of the two exports on Tatoeba."""
    from tf_mbalign.evaluation.retrieval import read_bitext_dir
    from tf_mbalign.evaluation.trained_encoders import load_trained_encoder

    if not os.path.isdir(args.tatoeba):
        return {"skipped": f"no Tatoeba data at {args.tatoeba} (set --tatoeba or "
                           "TF_MBALIGN_SHARED_DATA)"}
    data = read_bitext_dir(args.tatoeba, max_pairs=args.max_pairs or None)
    exports = {p: load_export(model_dirs[p]) for p in PRECISIONS}
    result = {"tatoeba": args.tatoeba, "languages": sorted(data),
              "pairs_per_language": {k: len(v.foreign) for k, v in data.items()},
              "export_precision": {p: exports[p][1] for p in PRECISIONS}, "poolings": {}}
    start = load_trained_encoder(args.encoder) if args.baseline else None
    run_pooling = exports["float32"][0].pooling
    layer = exports["float32"][0].representation_layer
    for pooling in dict.fromkeys([run_pooling, *filter(None, args.poolings.split(","))]):
        vectors = {p: embed_bitexts(exports[p][0], data, pooling, layer, args.max_length)
                   for p in PRECISIONS}
        both = {p: [v for pair in vectors[p].values() for v in pair] for p in PRECISIONS}
        entry = {"run_pooling": pooling == run_pooling,
                 "cosine_bf16_vs_f32": cosine_summary(both["float32"], both["mixed_bfloat16"]),
                 "retrieval": paired_retrieval(vectors["float32"], vectors["mixed_bfloat16"])}
        entry["cosine_goal_met"] = entry["cosine_bf16_vs_f32"]["min"] >= COSINE_GOAL
        if start is not None:
            before = embed_bitexts(start, data, pooling, layer, args.max_length)
            entry["cosine_f32_vs_before_alignment"] = cosine_summary(
                both["float32"], [v for pair in before.values() for v in pair])
        result["poolings"][pooling] = entry
        _print_pooling(pooling, entry)
    return result


def _print_pooling(pooling, entry):
    c = entry["cosine_bf16_vs_f32"]
    print(f"[{pooling}] cosine bf16 vs f32 over {c['sentences']} sentences: min {c['min']:.4f}, "
          f"p1 {c['p1']:.4f}, median {c['median']:.4f}, mean {c['mean']:.4f} "
          f"(goal >= {COSINE_GOAL} for each: {'met' if entry['cosine_goal_met'] else 'MISSED'})",
          flush=True)
    if "cosine_f32_vs_before_alignment" in entry:
        m = entry["cosine_f32_vs_before_alignment"]
        print(f"[{pooling}] for scale, f32-trained vs before alignment: min {m['min']:.4f}, "
              f"median {m['median']:.4f}", flush=True)
    for direction, a in entry["retrieval"]["average"].items():
        low, high = a["interval_95"]
        print(f"[{pooling}] retrieval {direction}: f32 {a['float32']:.4f}, bf16 "
              f"{a['mixed_bfloat16']:.4f}, difference {a['difference']:+.4f} "
              f"[{low:+.4f}, {high:+.4f}]", flush=True)


# === Main ===


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="encoder training steps")
    parser.add_argument("--head_warmup_steps", type=int, default=50,
                        help="head-only steps before them (e5-small has no MLM head)")
    parser.add_argument("--flagfile", default="configs/align.flags")
    parser.add_argument("--encoder", default="e5-small")
    parser.add_argument("--corpus", default="demo")
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train_flag", action="append", default=[],
                        help="another flag for both runs, e.g. --train_flag=--global_batch_size=8")
    parser.add_argument("--window", type=int, default=20, help="steps per window mean")
    parser.add_argument("--loss_rtol", type=float, default=0.05,
                        help="allowed relative difference of a window mean")
    parser.add_argument("--tatoeba", default=os.path.join(common.default_data_root(
        common.REPO_ROOT), "tatoeba"))
    parser.add_argument("--max_pairs", type=int, default=0, help="per language (0 = all)")
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--poolings", default="mean",
                        help="poolings compared besides the run's own")
    parser.add_argument("--no_baseline", dest="baseline", action="store_false",
                        help="skip the before-alignment cosines")
    parser.add_argument("--work_dir", default="/tmp/tf_mbalign_precision_numerics")
    parser.add_argument("--output_dir", default="docs/results/precision_numerics")
    parser.add_argument("--retrain", action="store_true")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    machine = common.machine_info()
    common.print_machine(machine)
    os.makedirs(args.output_dir, exist_ok=True)
    model_dirs, wall = {}, {}
    for precision in PRECISIONS:
        model_dirs[precision], wall[precision] = run_training(args, precision)
    curves = {p: loss_curves(model_dirs[p]) for p in PRECISIONS}
    windows = window_comparison(curves["float32"], curves["mixed_bfloat16"], args.window,
                                args.loss_rtol)
    print(f"loss window means ({args.window} steps): max relative difference "
          f"{windows['max_relative_difference']}, all within {args.loss_rtol}: "
          f"{windows['all_within_tolerance']}", flush=True)
    plot_curves(curves, os.path.join(args.output_dir, "loss_curves.png"),
                f"{args.encoder} on {args.corpus}, {args.head_warmup_steps} head + {args.steps} "
                f"encoder steps (dotted: the encoder starts training), dropout {args.dropout}, "
                f"seed {args.seed}; {machine['cpu']}", args.head_warmup_steps)
    result = {
        "benchmark": "precision_numerics", "argv": sys.argv if argv is None else argv,
        "machine": machine, "settings": vars(args),
        "train_commands": {p: train_arguments(args, p, model_dirs[p])[1:] for p in PRECISIONS},
        "train_wall_seconds": wall,
        "resolved_precision": {p: _summary(model_dirs[p]).get("precision") for p in PRECISIONS},
        "loss_windows": windows,
        "encoders": compare_encoders(args, model_dirs),
    }
    common.write_json(os.path.join(args.output_dir, "precision_numerics.json"), result)
    return result


def _summary(model_dir):
    with open(os.path.join(model_dir, "summary.json"), encoding="utf-8") as f:
        return json.load(f)


if __name__ == "__main__":
    main()
