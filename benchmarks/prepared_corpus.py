"""Prepared corpora at scale: prepare's memory and time, the streamed input's
memory and throughput (the large-corpus goals, BENCHMARKS.md).

For each size in --pairs (default 1M and 5M pairs; add 20000000 where the
disk allows: the script checks free space first and skips a size that does
not fit):

1. a synthetic corpus: the real en-XX.tsv files (`--data`, default
   ../shared/data/parallel) repeated, language proportions kept, written to
   `--work_dir/corpus-N/`;
2. `prepare` in a fresh process: peak resident memory above that process's
   baseline (TensorFlow imported, tokenizer loaded), seconds and seconds per
   million pairs;
3. the training input (`streamed_pipeline.build_dataset`, the settings of
   the e5-small step) in a fresh process, once as the only worker and once
   as worker 0 of 2: peak resident memory above the baseline (TensorFlow,
   tokenizer, manifest) while `--batches` batches are read, and pairs/s
   after `--warmup` batches.

Memory is read from /proc/self/status: VmHWM after resetting it (writing 5
to /proc/self/clear_refs) at the baseline, and VmRSS sampled every 20 ms;
the larger is reported. Before the baseline, memory freed while loading is
handed back to the OS (`malloc_trim`), so it cannot hide later growth.
Goals: prepare <= 1 GiB above baseline; input <= 1 GiB above baseline at
every size; input >= 2,000 pairs/s per worker (twice an mBERT-base step at
batch 256 on a GPU-class device, assumed ~0.25 s: ~1,000 pairs/s) and >=
20x the e5-small step's consumption (`--e5_step_pairs_per_s`, default 2.11:
BENCHMARKS.md section 1, CPU).

Usage (from the repository root):
  python benchmarks/prepared_corpus.py --json results/prepared_corpus.json
  python benchmarks/prepared_corpus.py --pairs 1000000,5000000,20000000 --json ...
  python benchmarks/prepared_corpus.py --pairs 200000 --encoder tiny:demo  # quick check
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIB = 1 << 30


# === Memory of this process ===

def _status_kib(field):
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def return_freed_memory():
    """Hands memory that is free but still held by the C allocator back to the
    OS (glibc `malloc_trim`), so a baseline taken next is not inflated by
    what loading freed (the e5 file is parsed whole for its vocabulary)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak resident memory from now on, above the current (baseline) RSS."""

    def __init__(self, every=0.02):
        return_freed_memory()
        self.baseline = _status_kib("VmRSS") * 1024
        try:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
                f.write("5")  # resets VmHWM to the current RSS
            self.hwm_reset = True
        except OSError:
            self.hwm_reset = False
        self.sampled = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, args=(every,), daemon=True)
        self._thread.start()

    def _sample(self, every):
        while not self._stop.wait(every):
            self.sampled = max(self.sampled, _status_kib("VmRSS") * 1024)

    def stop(self):
        """{baseline, peak, above} in MiB."""
        self._stop.set()
        self._thread.join()
        peak = self.sampled
        if self.hwm_reset:
            peak = max(peak, _status_kib("VmHWM") * 1024)
        return {"baseline_mib": self.baseline / 2**20, "peak_mib": peak / 2**20,
                "above_baseline_mib": (peak - self.baseline) / 2**20,
                "vmhwm_reset": self.hwm_reset}


# === The children (fresh processes) ===

def _child_setup():
    sys.path.insert(0, REPO_ROOT)
    from tf_mbalign import runtime

    runtime.import_tensorflow_quietly()


def child_prepare(args):
    _child_setup()
    from tf_mbalign.data import corpus_preparation
    from tf_mbalign.modeling import encoders

    tokenizer = encoders.load_tokenizer(args.encoder)
    tokenizer.tokenize(["warm up"])
    request = corpus_preparation.PreparationRequest.for_tokenizer(
        args.corpus, args.encoder, tokenizer, shards_per_language=args.shards_per_language)
    memory = PeakMemory()
    started = time.perf_counter()
    manifest = corpus_preparation.prepare_corpus(
        request, tokenizer, args.output, overwrite=True,
        progress=corpus_preparation.ProgressLine(quiet=True, quiet_every=60), log=lambda m: None)
    seconds = time.perf_counter() - started
    result = dict(memory.stop(), seconds=seconds, pairs=manifest["pairs"],
                  seconds_per_million=seconds / manifest["pairs"] * 1e6,
                  shard_bytes=sum(s["bytes"] for s in manifest["shards"]),
                  shards=len(manifest["shards"]))
    print(json.dumps(result))


def child_input(args):
    _child_setup()
    import tensorflow as tf

    from tf_mbalign.data import pipeline, streamed_pipeline
    from tf_mbalign.data.prepared_corpus import PreparedCorpus
    from tf_mbalign.modeling import encoders

    tokenizer = encoders.load_tokenizer(args.encoder)
    corpus = PreparedCorpus.open(args.prepared)
    config = pipeline.PipelineConfig(max_seq_length=128, max_sentence_length=64,
                                     max_predictions_per_seq=20)
    context = tf.distribute.InputContext(num_input_pipelines=args.pipelines,
                                         input_pipeline_id=0,
                                         num_replicas_in_sync=args.pipelines)
    memory = PeakMemory()
    started = time.perf_counter()
    dataset = streamed_pipeline.build_dataset(corpus, tokenizer, config,
                                              args.batch * args.pipelines, context)
    iterator = iter(dataset)
    for _ in range(args.warmup):
        next(iterator)
    ready = time.perf_counter()
    for _ in range(args.batches):
        next(iterator)
    seconds = time.perf_counter() - ready
    result = dict(memory.stop(), pipelines=args.pipelines, batch=args.batch,
                  start_seconds=ready - started, pairs_per_s=args.batches * args.batch / seconds)
    print(json.dumps(result))


# === The parent ===

def write_synthetic_corpus(source_dir, output_dir, pairs):
    """en-XX.tsv files with `pairs` pairs in all, each language's real lines
    repeated in proportion to its real count."""
    files = sorted(f for f in os.listdir(source_dir) if f.startswith("en-") and f.endswith(".tsv"))
    lines = {}
    for name in files:
        with open(os.path.join(source_dir, name), "rb") as f:
            lines[name] = [line if line.endswith(b"\n") else line + b"\n" for line in f]
    total = sum(len(v) for v in lines.values())
    os.makedirs(output_dir, exist_ok=True)
    written = 0
    for number, name in enumerate(files):
        share = pairs - written if number == len(files) - 1 else \
            round(pairs * len(lines[name]) / total)
        with open(os.path.join(output_dir, name), "wb") as f:
            source = lines[name]
            for start in range(0, share, len(source)):
                f.writelines(source[:min(len(source), share - start)])
        written += share
    return sum(os.path.getsize(os.path.join(output_dir, n)) for n in files)


def _run_child(arguments, timeout):
    result = subprocess.run([sys.executable, os.path.abspath(__file__), *arguments],
                            capture_output=True, text=True, timeout=timeout,
                            env=dict(os.environ, PYTHONPATH=REPO_ROOT))
    if result.returncode != 0:
        raise RuntimeError(f"child {arguments[:2]} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _bytes_per_pair(source_dir):
    names = [n for n in os.listdir(source_dir) if n.startswith("en-") and n.endswith(".tsv")]
    size = sum(os.path.getsize(os.path.join(source_dir, n)) for n in names)
    lines = 0
    for name in names:
        with open(os.path.join(source_dir, name), "rb") as f:
            lines += sum(1 for _ in f)
    return size / lines


def measure_size(pairs, args, log):
    """The figures of one corpus size (None when the disk is too small)."""
    corpus_dir = os.path.join(args.work_dir, f"corpus-{pairs}")
    prepared_dir = os.path.join(args.work_dir, f"prepared-{pairs}")
    needed = pairs * (_bytes_per_pair(args.data) + 400) * 1.2  # text + shards (est.)
    free = shutil.disk_usage(args.work_dir).free
    if needed > free:
        log(f"{pairs:,} pairs: skipped, needs ~{needed / GIB:.1f} GiB, "
            f"{free / GIB:.1f} GiB free in {args.work_dir}")
        return {"pairs": pairs, "skipped": f"needs ~{needed / GIB:.1f} GiB of disk, "
                                           f"{free / GIB:.1f} GiB free"}
    started = time.perf_counter()
    corpus_bytes = write_synthetic_corpus(args.data, corpus_dir, pairs)
    log(f"{pairs:,} pairs: corpus {corpus_bytes / 2**20:.0f} MiB written in "
        f"{time.perf_counter() - started:.0f} s; preparing ...")
    row = {"pairs": pairs, "corpus_mib": corpus_bytes / 2**20}
    row["prepare"] = _run_child(["--child", "prepare", "--corpus", corpus_dir, "--output",
                                 prepared_dir, "--encoder", args.encoder,
                                 "--shards_per_language", str(args.shards_per_language)],
                                timeout=24 * 3600)
    log(f"  prepare: {row['prepare']['seconds']:.0f} s "
        f"({row['prepare']['seconds_per_million']:.0f} s per million pairs), "
        f"{row['prepare']['above_baseline_mib']:.0f} MiB above baseline, shards "
        f"{row['prepare']['shard_bytes'] / 2**20:.0f} MiB")
    row["input"] = []
    for pipelines in (1, 2):
        result = _run_child(["--child", "input", "--prepared", prepared_dir, "--encoder",
                             args.encoder, "--pipelines", str(pipelines), "--batch",
                             str(args.batch), "--batches", str(args.batches), "--warmup",
                             str(args.warmup)], timeout=3600)
        row["input"].append(result)
        log(f"  input, worker 0 of {pipelines}: {result['pairs_per_s']:,.0f} pairs/s, "
            f"{result['above_baseline_mib']:.0f} MiB above baseline, started in "
            f"{result['start_seconds']:.1f} s")
    if not args.keep:
        shutil.rmtree(corpus_dir, ignore_errors=True)
        shutil.rmtree(prepared_dir, ignore_errors=True)
    return row


def goals(rows, e5_step_pairs_per_s):
    """Each large-corpus goal with the measured worst case and whether it holds."""
    measured = [r for r in rows if "prepare" in r]
    if not measured:
        return {}
    prepare_mib = max(r["prepare"]["above_baseline_mib"] for r in measured)
    input_mib = max(i["above_baseline_mib"] for r in measured for i in r["input"])
    slowest = min(i["pairs_per_s"] for r in measured for i in r["input"])
    return {
        "prepare memory above baseline <= 1024 MiB": [round(prepare_mib), prepare_mib <= 1024],
        "input memory above baseline <= 1024 MiB": [round(input_mib), input_mib <= 1024],
        "input >= 2,000 pairs/s per worker": [round(slowest), slowest >= 2000],
        f"input >= 20x the e5-small step ({e5_step_pairs_per_s:,.2f} pairs/s)":
            [round(slowest / e5_step_pairs_per_s, 1), slowest >= 20 * e5_step_pairs_per_s],
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", choices=["prepare", "input"], help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    parser.add_argument("--prepared", help=argparse.SUPPRESS)
    parser.add_argument("--pipelines", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--pairs", default="1000000,5000000",
                        help="corpus sizes, comma-separated")
    parser.add_argument("--encoder", default="e5-small", help="whose tokenizer prepares")
    parser.add_argument("--data", default=None, help="real en-XX.tsv files to repeat "
                        "(default: $TF_MBALIGN_SHARED_DATA/parallel or ../shared/data/parallel)")
    parser.add_argument("--work_dir", default=None, help="where corpora and shards go "
                        "(default: a new folder in the system temp dir)")
    parser.add_argument("--shards_per_language", type=int, default=16)
    parser.add_argument("--batch", type=int, default=32, help="pairs per worker batch")
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--e5_step_pairs_per_s", type=float, default=2.11,
                        help="the e5-small step's consumption (train_step.py)")
    parser.add_argument("--keep", action="store_true", help="keep corpora and shards")
    parser.add_argument("--json", default="", help="write the figures here")
    args = parser.parse_args(argv)
    if args.child == "prepare":
        return child_prepare(args)
    if args.child == "input":
        return child_input(args)

    sys.path.insert(0, REPO_ROOT)
    from tf_mbalign.data.data_root import default_data_root

    args.data = args.data or os.path.join(default_data_root(REPO_ROOT), "parallel")
    if not os.path.isdir(args.data):
        print(f"error: no real corpus at {args.data} (set --data or TF_MBALIGN_SHARED_DATA)")
        return 1
    args.work_dir = args.work_dir or tempfile.mkdtemp(prefix="prepared_corpus_")
    os.makedirs(args.work_dir, exist_ok=True)

    def log(message):
        print(message, flush=True)

    log(f"work dir {args.work_dir}; encoder {args.encoder}; data {args.data}")
    rows = [measure_size(int(n), args, log) for n in args.pairs.split(",")]
    report = {"rows": rows, "goals": goals(rows, args.e5_step_pairs_per_s),
              "settings": {k: v for k, v in vars(args).items() if k in (
                  "encoder", "shards_per_language", "batch", "batches", "warmup",
                  "e5_step_pairs_per_s")}}
    for goal, (value, met) in report["goals"].items():
        log(f"goal: {goal}: {value} -> {'met' if met else 'NOT met'}")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
