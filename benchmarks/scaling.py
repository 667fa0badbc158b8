"""How the alignment step scales: queue size, sequence length, memory.

0. The queue's own work per step, isolated (`--parts queue_ops`): a full
   read, InfoNCE logits against K keys with their gradient, and the
   enqueue, in ms.
1. Step time vs MoCo queue size K (default 1,024 -> 65,536) at the shape's
   default batch and lengths. One model per K, all built first, then timed
   round-robin (`--rounds` rounds, median per K), so drift hits every K
   alike. Reported: the share of the 65k step that the queue costs,
   (t(K_max) - t(K_min)) / t(K_max) (goal: < 5%).
2. Step time vs TLM sequence length S (64 -> 256; each MoCo sentence S/2),
   the same way: step time, tokens/s, MFU.
3. Peak memory (RSS) per model size: each shape runs a few steps in a fresh
   subprocess, which reports its peak RSS (VmHWM) and the bytes of the
   model + optimizer state it holds; with
   torch installed, the PyTorch reference is measured the same way.

Usage (from the repository root):
  python benchmarks/scaling.py --json results/scaling.json
  python benchmarks/scaling.py --parts queue --shape mbert-base
  python benchmarks/scaling.py --quick
"""

import argparse
import json
import resource
import subprocess
import sys
import time

import _common as common
from _common import keras, np


def round_robin(models, rounds, jit_compile, target_seconds):
    """Median seconds per step of each model, timed in alternation."""
    steps = {}
    for key, model in models.items():
        model.run(2, jit_compile)
        per_step = common.timed(model.run, 1, jit_compile)
        steps[key] = max(1, int(round(target_seconds / per_step)))
    seconds = {key: [] for key in models}
    keys = list(models)
    for r in range(rounds):
        for key in (keys if r % 2 == 0 else keys[::-1]):
            seconds[key].append(common.timed(models[key].run, steps[key], jit_compile)
                                / steps[key])
    return {key: common.summarize(v) for key, v in seconds.items()}


# One model the queue sweep leaves for the length sweep (the same settings).
_KEPT = {}


def queue_sweep(shape_name, base, queue_sizes, rounds, jit_compile, target_seconds, peak):
    shape = common.get_shape(shape_name)
    batches = common.synthetic_batches(shape, base)
    models = {}
    for k in queue_sizes:
        settings = common.dataclasses.replace(base, queue_size=k)
        models[k] = common.OurStep(shape, settings, batches)
    times = round_robin(models, rounds, jit_compile, target_seconds)
    rows = []
    for k in queue_sizes:
        settings = common.dataclasses.replace(base, queue_size=k)
        median = times[k]["median_s"]
        flops = common.step_flops(shape, settings)
        rows.append({"queue_size": k, "step": times[k], "step_ms": median * 1e3,
                     "examples_per_s": base.batch / median,
                     "mfu": flops["step"] / median / peak,
                     "vs_smallest": median / times[queue_sizes[0]]["median_s"]})
    largest, smallest = times[queue_sizes[-1]]["median_s"], times[queue_sizes[0]]["median_s"]
    if base.queue_size in models:  # The length sweep's point at the base lengths.
        _KEPT[(shape_name, base)] = models[base.queue_size]
    del models
    return {"shape": shape_name, "settings": common.dataclasses.asdict(base),
            "xla": jit_compile, "rows": rows,
            "queue_share_of_largest_step": (largest - smallest) / largest}


def length_sweep(shape_name, base, lengths, rounds, jit_compile, target_seconds, peak):
    shape = common.get_shape(shape_name)
    models, settings_of = {}, {}
    for length in lengths:
        settings = common.dataclasses.replace(base, seq_length=length,
                                              sentence_length=length // 2)
        settings_of[length] = settings
        models[length] = _KEPT.pop((shape_name, settings), None) or common.OurStep(
            shape, settings, common.synthetic_batches(shape, settings))
    times = round_robin(models, rounds, jit_compile, target_seconds)
    rows = []
    for length in lengths:
        settings, median = settings_of[length], times[length]["median_s"]
        flops = common.step_flops(shape, settings)
        rows.append({"seq_length": length, "sentence_length": length // 2, "step": times[length],
                     "step_ms": median * 1e3,
                     "tokens_per_s": settings.tokens_per_step() / median,
                     "gflop_per_step": flops["step"] / 1e9,
                     "mfu": flops["step"] / median / peak,
                     "vs_shortest": median / times[lengths[0]]["median_s"]})
    del models
    keras.backend.clear_session()
    return {"shape": shape_name, "settings": common.dataclasses.asdict(base),
            "xla": jit_compile, "rows": rows}


def queue_ops(queue_sizes, dim, batch, repeats=15):
    """Milliseconds per step of the queue's own work, isolated, as the step
    does it: a full read of the queue, the InfoNCE logits and the loss's
    gradient w.r.t. the queries (`moco.contrastive_logits`,
    `KeyQueue.valid_mask`), then `KeyQueue.enqueue` (conditional on a finite
    loss, as the step calls it). Timed with and without the enqueue,
    alternating; enqueue = the difference. (The enqueue alone would mislead:
    after a sparse write TensorFlow copies the variable on its next full
    read, so part of the write's cost shows up in the read.)"""
    from tf_mbalign.modeling import momentum_contrast as moco

    tf = common.tf
    rows = []
    rng = np.random.default_rng(0)

    def unit(n):
        x = rng.standard_normal((n, dim)).astype(np.float32)
        return tf.constant(x / np.linalg.norm(x, axis=1, keepdims=True))

    queries, keys = unit(batch), unit(batch)
    ids = tf.range(batch)
    for k in queue_sizes:
        contents = unit(k)

        def make(with_enqueue):
            # A queue each: one that never had a sparse write reads without a copy.
            queue = moco.KeyQueue(k, dim)
            queue.keys.assign(contents)
            queue.filled.assign(k)

            @tf.function
            def step():
                with tf.GradientTape() as tape:
                    tape.watch(queries)
                    logits = moco.contrastive_logits(queries, keys,
                                                     tf.convert_to_tensor(queue.keys),
                                                     queue.valid_mask(ids), 0.07)
                    loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
                        tf.zeros([batch], tf.int32), logits))
                gradient = tf.reduce_sum(tape.gradient(loss, queries))
                if with_enqueue:
                    queue.enqueue(keys, ids, apply=tf.math.is_finite(loss))
                return gradient

            return step

        functions = {"logits_ms": make(False), "with_enqueue_ms": make(True)}
        times = {name: [] for name in functions}
        for fn in functions.values():
            fn().numpy()
            fn().numpy()
        for r in range(repeats):
            for name in (list(functions) if r % 2 == 0 else list(functions)[::-1]):
                times[name].append(common.timed(lambda: functions[name]().numpy()))
        row = {"queue_size": k, "dim": dim, "batch": batch}
        row.update({name: 1e3 * common.statistics.median(v) for name, v in times.items()})
        row["enqueue_ms"] = row["with_enqueue_ms"] - row["logits_ms"]
        rows.append(row)
    return rows


# === Peak RSS, one subprocess per shape ===


def _rss_child(shape_name, side, steps, quick, jit_compile):
    """Runs in the subprocess: build, step, report (one JSON line).
    side: `ours`, `torch`, or `none` (imports only: the baseline)."""
    after_import = _peak_rss()
    shape = common.get_shape(shape_name)
    settings = common.QUICK_SETTINGS if quick else common.DEFAULT_SETTINGS[shape_name]
    batches = common.synthetic_batches(shape, settings)
    start = time.perf_counter()
    state_bytes = 0
    after_build = after_import
    if side == "ours":
        model = common.OurStep(shape, settings, batches)
        aligner = model.aligner
        variables = aligner.weights + model.training.optimizer.variables
        state_bytes = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize
                          for v in variables)
        after_build = _peak_rss()
        model.run(steps, jit_compile)
    elif side == "torch":
        import torch
        import torch_reference

        torch.set_num_threads(common.cpu_threads())
        model = torch_reference.TorchAlignmentStep(shape, settings, batches)
        after_build = _peak_rss()
        model.run(steps)
        state_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        state_bytes += sum(t.numel() * t.element_size()
                           for s in model.optimizer.state.values() for t in s.values()
                           if hasattr(t, "numel"))
    print(json.dumps({"shape": shape_name, "side": side, "steps": steps, "xla": jit_compile,
                      "settings": common.dataclasses.asdict(settings),
                      "peak_rss_after_import_bytes": after_import,
                      "peak_rss_after_build_bytes": after_build,
                      "peak_rss_bytes": _peak_rss(), "state_bytes": state_bytes,
                      "seconds": time.perf_counter() - start}))


def _peak_rss():
    """Peak RSS of this process, in bytes: VmHWM on Linux. (Not
    `getrusage().ru_maxrss`: Linux carries it across exec, so a child would
    report at least its parent's size at fork.)"""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def start_peak_rss(shape_name, side="ours", steps=3, quick=False, jit_compile=False):
    """Starts the subprocess of `peak_rss`; `finish_peak_rss` collects it."""
    command = [sys.executable, __file__, "--_rss_child", shape_name, "--_rss_side", side,
               "--_rss_steps", str(steps)]
    if quick:
        command.append("--quick")
    if jit_compile:
        command.append("--_rss_xla")
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    return shape_name, side, child


def finish_peak_rss(started, timeout=1800):
    shape_name, side, child = started
    try:
        stdout, stderr = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        return {"shape": shape_name, "side": side, "error": f"timed out after {timeout} s"}
    if child.returncode != 0:
        return {"shape": shape_name, "side": side,
                "error": (stderr.strip().splitlines() or ["?"])[-1][:300]}
    return json.loads(stdout.strip().splitlines()[-1])


def peak_rss(shape_name, side="ours", steps=3, quick=False, jit_compile=False, timeout=1800):
    """Peak RSS and state bytes of `steps` steps of `shape_name` in a fresh
    process (`side`: ours, torch, or none = the imports alone)."""
    return finish_peak_rss(start_peak_rss(shape_name, side, steps, quick, jit_compile),
                           timeout)


def _torch_available():
    import importlib.util

    return all(importlib.util.find_spec(m) for m in ("torch", "transformers"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default="queue_ops,queue,length,memory")
    parser.add_argument("--shape", default="e5-small", help="shape of the queue/length sweeps")
    parser.add_argument("--queue_sizes", default="1024,4096,16384,65536")
    parser.add_argument("--lengths", default="64,128,256")
    parser.add_argument("--memory_shapes", default=",".join(common.SHAPE_NAMES))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--target_seconds", type=float, default=3.0)
    parser.add_argument("--xla", action="store_true", help="time the XLA-compiled step")
    parser.add_argument("--no_torch", action="store_true", help="memory: ours only")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", default="")
    parser.add_argument("--_rss_child", help=argparse.SUPPRESS)
    parser.add_argument("--_rss_side", default="ours", help=argparse.SUPPRESS)
    parser.add_argument("--_rss_steps", type=int, default=3, help=argparse.SUPPRESS)
    parser.add_argument("--_rss_xla", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._rss_child:
        return _rss_child(args._rss_child, args._rss_side, args._rss_steps, args.quick,
                          args._rss_xla)

    parts = [p for p in args.parts.split(",") if p]
    queue_sizes = [int(x) for x in args.queue_sizes.split(",")]
    lengths = [int(x) for x in args.lengths.split(",")]
    memory_shapes = [s for s in args.memory_shapes.split(",") if s]
    base = common.DEFAULT_SETTINGS[args.shape]
    if args.quick:
        args.shape, base = "tiny", common.QUICK_SETTINGS
        # Two tiny models (tracing each one is most of the run), the second
        # sweep reusing the first's model at the base lengths.
        queue_sizes, lengths, memory_shapes = [256, 1024], [32], ["tiny"]
        args.rounds, args.target_seconds, args.no_torch = 3, 0.05, True

    machine = common.machine_info()
    common.print_machine(machine)
    peak = common.matmul_peak(512 if args.quick else 4096, repeats=3 if args.quick else 5)
    print(f"matmul peak: {common.gflops(peak['peak_flops'])}", flush=True)
    result = {"benchmark": "scaling", "argv": sys.argv if argv is None else argv,
              "machine": machine, "peak": peak}

    sides = ["ours"] + ([] if args.no_torch or not _torch_available() else ["torch"])
    early = []
    if "memory" in parts and args.quick:
        # A smoke run: overlap the memory subprocess with the timings (which
        # it disturbs; real runs measure memory after them, one at a time).
        early = [start_peak_rss(s, side, quick=True, jit_compile=args.xla)
                 for s in memory_shapes for side in sides]

    if "queue_ops" in parts:
        dim = common.get_shape(args.shape).hidden_dim
        rows = queue_ops(queue_sizes, dim, base.batch, repeats=3 if args.quick else 30)
        result["queue_ops"] = rows
        print(f"\nthe queue's own work per step, isolated (width {dim}, batch {base.batch}):")
        common.print_table(rows, [
            ("K", "queue_size", "{}"), ("read + logits fwd+grad ms", "logits_ms", "{:.2f}"),
            ("+ enqueue ms", "with_enqueue_ms", "{:.2f}"),
            ("enqueue share ms", "enqueue_ms", "{:.2f}")])
        common.write_json(args.json, result)  # Each part saved as it finishes.

    if "queue" in parts:
        sweep = queue_sweep(args.shape, base, queue_sizes, args.rounds, args.xla,
                            args.target_seconds, peak["peak_flops"])
        result["queue"] = sweep
        print(f"\nstep time vs queue size ({args.shape}, batch {base.batch}, "
              f"lengths {base.seq_length}/{base.sentence_length}, xla={args.xla}):")
        common.print_table(sweep["rows"], [
            ("K", "queue_size", "{}"), ("step ms", "step_ms", "{:.1f}"),
            ("ex/s", "examples_per_s", "{:.2f}"), ("MFU", "mfu", "{:.1%}"),
            ("vs smallest K", "vs_smallest", "{:.3f}")])
        print(f"queue share of the K={queue_sizes[-1]} step: "
              f"{sweep['queue_share_of_largest_step']:.1%} (goal < 5%)", flush=True)
        common.write_json(args.json, result)

    if "length" in parts:
        sweep = length_sweep(args.shape, base, lengths, args.rounds, args.xla,
                             args.target_seconds, peak["peak_flops"])
        result["length"] = sweep
        print(f"\nstep time vs sequence length ({args.shape}, batch {base.batch}, "
              f"K {base.queue_size}, xla={args.xla}):")
        common.print_table(sweep["rows"], [
            ("S", "seq_length", "{}"), ("s", "sentence_length", "{}"),
            ("step ms", "step_ms", "{:.1f}"), ("tok/s", "tokens_per_s", "{:.0f}"),
            ("GFLOP/step", "gflop_per_step", "{:.1f}"), ("MFU", "mfu", "{:.1%}"),
            ("vs shortest", "vs_shortest", "{:.2f}")])
        common.write_json(args.json, result)

    if "memory" in parts:
        rows = ([finish_peak_rss(started) for started in early] if early else
                [peak_rss(s, side, quick=args.quick, jit_compile=args.xla)
                 for s in memory_shapes for side in sides])
        result["memory"] = rows
        print("\npeak RSS per model size (fresh process each; settings as train_step.py):")
        for r in rows:
            if "error" in r:
                print(f"  {r['shape']} {r['side']}: FAILED {r['error']}")
        common.print_table([dict(r, peak=r["peak_rss_bytes"] / 2**20,
                                 imported=r["peak_rss_after_import_bytes"] / 2**20,
                                 built=r["peak_rss_after_build_bytes"] / 2**20,
                                 state=r["state_bytes"] / 2**20)
                            for r in rows if "error" not in r], [
            ("shape", "shape", "{}"), ("side", "side", "{}"),
            ("model+optimizer state MiB", "state", "{:.0f}"),
            ("RSS after imports MiB", "imported", "{:.0f}"),
            ("peak RSS after build MiB", "built", "{:.0f}"),
            ("peak RSS MiB", "peak", "{:.0f}")])
    common.write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
