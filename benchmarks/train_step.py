"""Speed of the full alignment step, against a PyTorch reference and the
machine's matmul peak.

For each model shape (random weights: speed does not depend on them):

- ours: the `AlignmentStep` built by `build_alignment_step` and run in a
  `tf.function` loop like the trainer's (graph mode), without and with XLA
  (`--jit_compile`), in float32 (and bf16 mixed precision where the
  hardware multiplies bf16 natively, CPU included; the reference then runs
  under `torch.autocast` bf16 on the same device);
- the reference: `torch_reference.TorchAlignmentStep`, the same step in
  PyTorch + transformers (same shape, batch, lengths, queue, AdamW, EMA,
  MLM logits only at the masked tokens), with as many threads as TF uses;

timed alternately on the same synthetic batches: each timing runs k steps
(k chosen so a timing lasts about --target_seconds), pairs alternate which
side goes first, and ratio = median over >= 5 pairs of (ours / reference).

Reported per row: median step time, examples/s, tokens/s (TLM + query + key
positions), model FLOPs per step (formula in `_common.py` and
BENCHMARKS.md), MFU = FLOPs / step time / peak, where peak = the best of a
large float32 tf.matmul and numpy's BLAS matmul measured in the same run.

`--profile_dir DIR`: after a row is timed, `--profile_steps` more steps
of ours run under the TensorFlow profiler (`tf.profiler.experimental`), one
trace per row in DIR/<shape>-<precision>-<graph|xla>/;
`benchmarks/profile_summary.py DIR` tables each trace's ops by self time
(matmul, casts, transposes, element-wise, gathers, optimizer, ...). The
profiled steps are not part of the timings.

Usage (from the repository root):
  python benchmarks/train_step.py --json results/train_step.json
  python benchmarks/train_step.py --shapes e5-small --pairs 7
  python benchmarks/train_step.py --quick          # tiny config, < 1 minute
  python benchmarks/train_step.py --shapes e5-small --no_torch --tlm_sampled_negatives 4096 \
      --train_token_embeddings false
  python benchmarks/train_step.py --shapes e5-small --precisions mixed_bfloat16 --xla off \
      --no_torch --pairs 1 --profile_dir results/profile_bf16
  python benchmarks/profile_summary.py results/profile_bf16
"""

import argparse
import gc
import json
import os
import sys
import time

import _common as common
from _common import keras


SETTLE_SECONDS = 0.2


def _torch():
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError as error:
        return None, f"PyTorch reference skipped: {error}"
    import torch_reference

    torch.set_num_threads(common.cpu_threads())
    return torch_reference, None


def step_flags_of(args):
    """The training flags ours runs with (`OurStep(step_flags=...)`)."""
    return {"tlm_sampled_negatives": args.tlm_sampled_negatives,
            "train_token_embeddings": args.train_token_embeddings == "true",
            "recompute_activations": args.recompute_activations == "true",
            "dropout_mask_bits": args.dropout_mask_bits}


def _steps_per_timing(seconds_per_step, target_seconds):
    return max(1, int(round(target_seconds / max(seconds_per_step, 1e-6))))


def measure_shape(shape_name, settings, precisions, xla_modes, pairs, target_seconds,
                  with_torch, peaks, min_fill=1.0, log=print, on_row=None, profile=None,
                  step_flags=None):
    """Rows of results for one model shape (one per precision x XLA mode);
    `on_row(row)` is called as each row is finished. `profile`: (directory,
    steps) to trace each row's step with the TensorFlow profiler.
    `step_flags`: training flags of ours (`step_flags_of`: a frozen token
    table, sampled TLM negatives; the reference keeps the default step)."""
    step_flags = dict(step_flags or {})
    shape = common.get_shape(shape_name)
    batches = common.synthetic_batches(shape, settings, min_fill=min_fill)
    flops = common.step_flops(shape, settings, step_flags.get("tlm_sampled_negatives", 0))
    torch_ref, torch_note = _torch() if with_torch else (None, "PyTorch reference not requested")
    reference = None
    if torch_ref is not None:
        reference = torch_ref.TorchAlignmentStep(shape, settings, batches)
    rows = []
    for precision in precisions:
        log(f"[{shape_name}] building ours ({precision}) ...")
        ours = common.OurStep(shape, settings, batches, precision=precision,
                              step_flags=step_flags)
        if reference is not None:
            reference.autocast_dtype = None
            if precision == "mixed_bfloat16":
                import torch

                reference.autocast_dtype = torch.bfloat16
        peak = peaks["bfloat16" if precision == "mixed_bfloat16" and "bfloat16" in peaks
                     else "float32"]["peak_flops"]
        for jit in xla_modes:
            row = compare(ours, reference, shape_name, settings, flops, peak, jit, pairs,
                          target_seconds, log)
            row["min_fill"] = min_fill
            row.update(step_flags)
            if profile is not None and "error" not in row:
                row["profile_dir"] = profile_steps(ours, jit, *profile, log=log)
            if reference is None:
                row["reference_note"] = torch_note
            rows.append(row)
            if on_row is not None:
                on_row(row)
        del ours
        gc.collect()
        keras.backend.clear_session()
    return rows


def compare(ours, reference, shape_name, settings, flops, peak, jit, pairs, target_seconds,
            log=print):
    """One result row: `ours` (a built `OurStep`) and `reference` (a
    `TorchAlignmentStep` or None) timed alternately."""
    row = {
        "shape": shape_name, "precision": ours.precision, "xla": jit,
        **common.dataclasses.asdict(settings),
        "tokens_per_step": settings.tokens_per_step(),
        "flops_per_step": flops["step"], "flops": flops, "peak_flops": peak,
    }
    try:
        row["first_call_s"] = common.timed(ours.run, 1, jit)  # trace (+ compile)
        ours.run(1, jit)
        k = _steps_per_timing(common.timed(ours.run, 1, jit), target_seconds)
    except Exception as error:  # XLA may not compile everywhere.
        row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
        log(f"[{shape_name}] {ours.precision} xla={jit}: FAILED {row['error']}")
        return row
    if reference is not None:
        reference.run(2)  # warm-up
    ours_s, ref_s = [], []
    for i in range(pairs):
        order = ("ours", "ref") if i % 2 == 0 else ("ref", "ours")
        for side in order:
            # Let the other side's idle threads stop spinning before timing.
            time.sleep(SETTLE_SECONDS if target_seconds >= 1 else 0)
            if side == "ours":
                ours_s.append(common.timed(ours.run, k, jit) / k)
            elif reference is not None:
                ref_s.append(common.timed(reference.run, k) / k)
    median = common.summarize(ours_s)["median_s"]
    row.update({
        "steps_per_timing": k, "pairs": pairs,
        "ours": common.summarize(ours_s),
        "examples_per_s": settings.batch / median,
        "tokens_per_s": settings.tokens_per_step() / median,
        "achieved_flops": flops["step"] / median,
        "mfu": flops["step"] / median / peak,
        "ours_metrics": ours.metrics(),
    })
    if reference is not None:
        ratios = [a / b for a, b in zip(ours_s, ref_s)]
        ref_median = common.summarize(ref_s)["median_s"]
        row.update({
            "reference": common.summarize(ref_s),
            "reference_examples_per_s": settings.batch / ref_median,
            "reference_mfu": flops["step"] / ref_median / peak,
            "ratio_ours_over_reference": common.statistics.median(ratios),
            "ratios": ratios,
            "reference_metrics": reference.metrics(),
        })
    log(_row_line(row))
    return row


def profile_steps(ours, jit, directory, steps, log=print):
    """Runs `steps` steps of `ours` (already traced) under the TensorFlow
    profiler; returns the trace's directory (<shape>-<precision>-<mode>)."""
    import tensorflow as tf

    path = os.path.join(directory, f"{ours.shape.name}-{ours.precision}-"
                                   f"{'xla' if jit else 'graph'}")
    ours.run(1, jit)  # traced and warm before the profiler starts
    tf.profiler.experimental.start(path)
    try:
        ours.run(steps, jit)
    finally:
        tf.profiler.experimental.stop()
    with open(os.path.join(path, "profile_steps.json"), "w", encoding="utf-8") as f:
        json.dump({"steps": steps, "precision": ours.precision, "xla": jit}, f)
    log(f"[{ours.shape.name}] {ours.precision} xla={jit}: profiled {steps} step(s) -> {path}")
    return path


def check_same_step(shape_name, settings, steps=3, ours=None, reference=None, log=print):
    """Evidence that both sides compute the same step: the reference takes
    the Keras model's weights (dropout 0 on both), then both take `steps`
    steps on the same batches (with padding) and their per-step losses and
    gradient norms are compared. Returns the largest relative differences.

    `ours` / `reference`: an already built `OurStep` / `TorchAlignmentStep`
    with dropout 0 on the same batches (else they are built here).
    """
    torch_ref, note = _torch()
    if torch_ref is None:
        return {"skipped": note}
    shape = ours.shape if ours is not None else common.get_shape(shape_name)
    if ours is None:
        batches = common.synthetic_batches(shape, settings, count=steps, min_fill=0.5)
        ours = common.OurStep(shape, settings, batches, dropout=0.0)
    batches = ours.batches
    if int(ours.training.optimizer.iterations.numpy()) > 0:
        steps = 1  # Optimizer states are not copied: only a fresh pair agrees after a step.
    if reference is None:
        reference = torch_ref.TorchAlignmentStep(shape, settings, batches, dropout=0.0)
    reference.copy_from_keras(ours.aligner)
    keys = ("loss", "tlm_loss", "moco_loss", "gradient_norm", "tlm_accuracy", "moco_accuracy")
    worst = {k: 0.0 for k in keys}
    per_step = []
    for _ in range(steps):
        for metric in ours.aligner.metrics:
            metric.reset_state()
        ours.run(1)
        reference.run(1)
        a, b = ours.metrics(), reference.metrics()
        per_step.append({"ours": {k: a[k] for k in keys}, "reference": {k: b[k] for k in keys}})
        for k in keys:
            worst[k] = max(worst[k], abs(a[k] - b[k]) / max(abs(b[k]), 1e-6))
    result = {"shape": shape_name, "steps": steps, "max_relative_difference": worst,
              "per_step": per_step}
    log(f"[check] same weights, dropout 0, {steps} steps: max relative difference "
        + ", ".join(f"{k} {v:.1e}" for k, v in worst.items()))
    return result


def _row_line(row):
    text = (f"[{row['shape']}] {row['precision']} xla={row['xla']}: "
            f"step {row['ours']['median_s'] * 1e3:.1f} ms (k={row['steps_per_timing']}), "
            f"{row['examples_per_s']:.1f} ex/s, {row['tokens_per_s']:.0f} tok/s, "
            f"MFU {row['mfu']:.1%}, first call {row['first_call_s']:.1f} s")
    if "reference" in row:
        text += (f" | torch {row['reference']['median_s'] * 1e3:.1f} ms, "
                 f"ours/torch = {row['ratio_ours_over_reference']:.3f}")
    return text


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default=",".join(common.SHAPE_NAMES),
                        help="comma-separated: tiny, e5-small, mbert-base")
    parser.add_argument("--batch", type=int)
    parser.add_argument("--seq_length", type=int)
    parser.add_argument("--sentence_length", type=int)
    parser.add_argument("--predictions", type=int)
    parser.add_argument("--queue_size", type=int)
    parser.add_argument("--precisions", default="",
                        help="float32,mixed_bfloat16 (default: float32; both where the "
                             "hardware multiplies bf16 natively: GPU >= sm_80, CPU with AMX "
                             "or AVX512-BF16; elsewhere bf16 is emulated and slow)")
    parser.add_argument("--xla", choices=["both", "on", "off"], default=None,
                        help="without / with XLA (default both; off with --quick: the "
                             "XLA compile alone takes 15-40 s)")
    parser.add_argument("--pairs", type=int, default=5, help="alternating timing pairs (>= 5)")
    parser.add_argument("--target_seconds", type=float, default=3.0,
                        help="length of one timing (k steps)")
    parser.add_argument("--min_fill", type=float, default=1.0,
                        help="shortest real row as a fraction of its length (1 = no padding)")
    parser.add_argument("--peak_n", type=int, default=4096, help="matmul size for the peak")
    parser.add_argument("--no_torch", action="store_true")
    parser.add_argument("--quick", action="store_true",
                        help="tiny shape, tiny settings, short timings (a smoke run)")
    parser.add_argument("--json", default="", help="write the results here")
    parser.add_argument("--profile_dir", default="",
                        help="trace each row's step with the TensorFlow profiler here "
                             "(summarize with benchmarks/profile_summary.py)")
    parser.add_argument("--profile_steps", type=int, default=3)
    parser.add_argument("--tlm_sampled_negatives", type=int, default=0,
                        help="ours: TLM's softmax over the batch's targets and K sampled ids "
                             "(the training flag of that name; FLOPs count those rows). The "
                             "PyTorch reference stays exact. Default 0: exact")
    parser.add_argument("--train_token_embeddings", choices=["true", "false"], default="true",
                        help="ours: false freezes the token table (the training flag of that "
                             "name). The PyTorch reference trains it")
    parser.add_argument("--recompute_activations", choices=["true", "false"], default="false",
                        help="ours: true runs each transformer layer again in the backward "
                             "pass instead of keeping its activations (the training flag of "
                             "that name; FLOPs count the forward once). The PyTorch "
                             "reference keeps them")
    parser.add_argument("--dropout_mask_bits", type=int, choices=[16, 32], default=32,
                        help="ours: random bits per element of the dropout masks (the training "
                             "flag of that name). The PyTorch reference draws its own")
    args = parser.parse_args(argv)

    shapes = [s for s in args.shapes.split(",") if s]
    if args.quick:
        shapes, args.pairs, args.target_seconds, args.peak_n = ["tiny"], 5, 0.05, 512
        args.xla = args.xla or "off"
    precisions = [p for p in args.precisions.split(",") if p] or common.default_precisions()
    xla_modes = {"both": [False, True], "on": [True], "off": [False]}[args.xla or "both"]

    machine = common.machine_info()
    common.print_machine(machine)
    peaks = {"float32": common.matmul_peak(args.peak_n, repeats=3 if args.quick else 5)}
    if "mixed_bfloat16" in precisions:  # MFU of bf16 rows against the bf16 peak.
        peaks["bfloat16"] = common.matmul_peak(args.peak_n, dtype="bfloat16", with_numpy=False)
    torch_ref, _ = (None, None) if args.no_torch else _torch()
    if torch_ref is not None and not common.gpu_available():
        # Information only (not part of the peak): torch's own float32 matmul.
        peaks["float32"]["torch_information"] = torch_ref.torch_matmul_flops(
            args.peak_n, repeats=3 if args.quick else 5)
    for name, p in peaks.items():
        parts = ", ".join(f"{k[:-6]} {common.gflops(v)}" for k, v in p.items()
                          if k.endswith("_flops") and k != "peak_flops")
        if "torch_information" in p:
            parts += f"; torch (information) {common.gflops(p['torch_information'])}"
        print(f"matmul peak ({name}, n={p['n']}): {common.gflops(p['peak_flops'])} "
              f"[{parts}]", flush=True)

    check = None
    if not args.no_torch:
        check = check_same_step("tiny", common.QUICK_SETTINGS)
    rows = []
    result = {"benchmark": "train_step", "argv": sys.argv if argv is None else argv,
              "machine": machine, "peaks": peaks, "reference_check": check, "rows": rows,
              "complete": False}

    def save_so_far(row):
        # Rows are written as they finish: a run killed later (e.g. by the
        # OOM killer during an XLA compile) keeps what it measured.
        rows.append(row)
        common.write_json(args.json, result)

    for name in shapes:
        base = common.QUICK_SETTINGS if args.quick else common.DEFAULT_SETTINGS[name]
        overrides = {k: getattr(args, k) for k in ("batch", "seq_length", "sentence_length",
                                                   "predictions", "queue_size")
                     if getattr(args, k) is not None}
        settings = common.dataclasses.replace(base, **overrides)
        measure_shape(name, settings, precisions, xla_modes, args.pairs, args.target_seconds,
                      not args.no_torch, peaks, args.min_fill, on_row=save_so_far,
                      profile=(args.profile_dir, args.profile_steps) if args.profile_dir
                      else None, step_flags=step_flags_of(args))

    print("\nsummary (median step time; ratio = median of per-pair ours/torch):")
    table = [dict(r, lengths=f"{r['seq_length']}/{r['sentence_length']}",
                  step_ms=r["ours"]["median_s"] * 1e3,
                  torch_ms=r.get("reference", {}).get("median_s", float("nan")) * 1e3,
                  gflop=r["flops_per_step"] / 1e9)
             for r in rows if "ours" in r]
    common.print_table(table, [
        ("shape", "shape", "{}"), ("precision", "precision", "{}"), ("xla", "xla", "{}"),
        ("B", "batch", "{}"), ("S/s", "lengths", "{}"), ("K", "queue_size", "{}"),
        ("step ms", "step_ms", "{:.1f}"), ("ex/s", "examples_per_s", "{:.2f}"),
        ("tok/s", "tokens_per_s", "{:.0f}"), ("GFLOP/step", "gflop", "{:.3g}"),
        ("MFU", "mfu", "{:.1%}"), ("torch ms", "torch_ms", "{:.1f}"),
        ("ours/torch", "ratio_ours_over_reference", "{:.3f}"),
    ])
    for r in rows:
        if "error" in r:
            print(f"  {r['shape']} {r['precision']} xla={r['xla']}: {r['error']}")
    print("goals: ours/torch <= 0.7; MFU >= 50% for e5-small and mbert-base. "
          "'first call' in the JSON is the trace (+ XLA compile) time.")
    result["complete"] = True
    common.write_json(args.json, result)
    return result


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
