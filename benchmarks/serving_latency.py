"""Latency and throughput of the exported serving SavedModel vs the same
computation on the in-memory model.

The encoder (`--model e5-small`: the embedded multilingual-e5-small, real
weights, with its SentencePiece tokenizer; `tiny`: a random `tiny:demo`
encoder) is exported with `tf_mbalign.export.encoder_export.export_encoder`
into a temporary directory, and its TF Serving model
(`serving/tf_mbalign/1`) is loaded back with `tf.saved_model.load`.

Timed on real sentences (`--data`, default ../shared/data/parallel, mixed
languages; the demo corpus when absent), alternating call by call:

  exported   `loaded.signatures["serving_default"](sentences=...)`: what TF
             Serving runs (tokenize, pack `[CLS] s [SEP]` cut at --seq_length
             and padded to the request's longest sentence, encoder, pooling,
             L2 norm)
  in-memory  the same `SentenceEmbeddingServer.serving_default` tf.function on
             the live Keras encoder (same graph, not exported)
  eager      (information) tokenization in a tf.function, then the Keras
             encoder called eagerly, pooled and normalized in Python

Reported: p50 / p95 latency at batch 1 and sentences/s at batch 32 for each,
ratios exported / in-memory (goal: <= 1.1), and the largest difference
between the exported and in-memory embeddings.

`--export_precisions float32,bfloat16` (or `mixed_bfloat16`) adds, for each
precision after the first, the same serving model exported under that
policy (`export_encoder(precision=...)`, the export binary's
`--export_precision`) as `exported_<precision>`, timed in the same
alternation; reported with its ratios to the float32 export (`exported`) and
the cosine between its embeddings and the float32 export's (min over a
batch). bf16 where the CPU lacks bf16 instructions is emulated and slow.

Usage (from the repository root):
  python benchmarks/serving_latency.py --json results/serving.json
  python benchmarks/serving_latency.py --export_precisions float32,bfloat16 \
      --json results/serving_bf16.json
  python benchmarks/serving_latency.py --quick       # tiny encoder
"""

import argparse
import os
import shutil
import sys
import tempfile

import _common as common
from _common import np, tf


def load_model(name):
    from tf_mbalign.modeling import encoders

    if name == "e5-small":
        return encoders.load_embedded_e5(dropout=0.0)
    if name == "tiny":
        return encoders.tiny_encoder("demo", dropout=0.0)
    raise ValueError(f"--model must be e5-small or tiny, got {name!r}")


def export_serving(bundle, export_dir, seq_length, pooling="cls", layer=-1,
                   serving_only=False, precision="float32"):
    """Exports the encoder computing under `precision`; returns the paths and
    the loaded TF Serving model's `serving_default`.

    serving_only: write only the TF Serving model (`export_encoder`'s
    `parts=("serving",)`), skipping the other exports (tests use it to save
    time)."""
    from tf_mbalign.export import encoder_export

    parts = ("serving",) if serving_only else encoder_export.EXPORT_PATH_KEYS
    paths = encoder_export.export_encoder(bundle.encoder, bundle.tokenizer, export_dir,
                                          pooling=pooling, representation_layer=layer,
                                          seq_length=seq_length, source="benchmark",
                                          precision=precision, parts=parts)
    return paths, tf.saved_model.load(paths["serving"]).signatures["serving_default"]


def build_callables(bundle, export_dir, seq_length, pooling="cls", layer=-1,
                    serving_only=False, precisions=("float32",)):
    """{'exported', 'in_memory', 'eager'} (and 'exported_<p>' for each of
    `precisions` after the first): sentences (list of str) -> numpy.

    `exported` is the export under `precisions[0]` (float32 by default);
    serving_only: see `export_serving`."""
    from tf_mbalign.export import serving
    from tf_mbalign.export.preprocessor import pack_segments
    from tf_mbalign.modeling.pooling import sentence_embedding

    paths, exported_fn = export_serving(bundle, export_dir, seq_length, pooling, layer,
                                        serving_only, precisions[0])
    variants = {}
    for precision in precisions[1:]:
        _, variants[f"exported_{precision}"] = export_serving(
            bundle, os.path.join(export_dir, precision), seq_length, pooling, layer,
            serving_only, precision)
    server = serving.SentenceEmbeddingServer(bundle.encoder, bundle.tokenizer, pooling, layer,
                                             seq_length)
    in_memory_fn = server.signatures()["serving_default"]
    t = bundle.tokenizer

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def preprocess(sentences):  # As the server: padded to the longest sentence.
        tokens = t.tokenize(sentences)
        length = tf.minimum(tf.cast(tf.reduce_max(tokens.row_lengths()), tf.int32) + 2,
                            seq_length)
        return pack_segments([tokens], length, t.cls_id, t.sep_id, t.pad_id)

    def eager(sentences):
        inputs = preprocess(tf.constant(sentences))
        outputs = bundle.encoder({"token_ids": inputs["input_word_ids"],
                                  "segment_ids": inputs["input_type_ids"],
                                  "padding_mask": inputs["input_mask"]}, training=False)
        return sentence_embedding(outputs["encoder_outputs"], inputs["input_mask"], layer,
                                  pooling).numpy()

    def call_served(function):
        return lambda s: function(sentences=tf.constant(s))["embeddings"].numpy()

    return {
        "exported": call_served(exported_fn),
        "in_memory": lambda s: in_memory_fn(tf.constant(s))["embeddings"].numpy(),
        "eager": eager,
        **{name: call_served(function) for name, function in variants.items()},
    }, paths


def measure(callables, sentences, latency_calls=200, throughput_batches=20, batch=32,
            warmup=5):
    names = list(callables)
    for name in names:  # warm-up, both batch sizes
        for i in range(warmup):
            callables[name](sentences[i:i + 1])
            callables[name](sentences[i:i + batch])
    latency = {n: [] for n in names}
    for i in range(latency_calls):
        sentence = sentences[i % len(sentences): i % len(sentences) + 1]
        order = names if i % 2 == 0 else names[::-1]
        for name in order:
            latency[name].append(common.timed(callables[name], sentence))
    throughput = {n: [] for n in names}
    for i in range(throughput_batches):
        start = (i * batch) % max(1, len(sentences) - batch)
        chunk = sentences[start:start + batch]
        order = names if i % 2 == 0 else names[::-1]
        for name in order:
            throughput[name].append(common.timed(callables[name], chunk))
    result = {}
    for name in names:
        result[name] = {
            "p50_ms": common.percentile(latency[name], 50) * 1e3,
            "p95_ms": common.percentile(latency[name], 95) * 1e3,
            "batch32_sentences_per_s": batch / float(np.median(throughput[name])),
        }
    for base in ("in_memory", "eager"):
        result[f"exported_over_{base}"] = _ratios(result, "exported", base)
    probe = sentences[:batch]
    reference = callables["exported"](probe)
    result["max_abs_difference"] = float(np.max(np.abs(reference - callables["in_memory"](probe))))
    for name in names:
        if name.startswith("exported_"):  # another export precision vs the first
            result[f"{name}_over_exported"] = _ratios(result, name, "exported")
            result[f"{name}_min_cosine_to_exported"] = float(np.min(np.sum(
                callables[name](probe) * reference, axis=1)))
    return result


def _ratios(result, name, base):
    """Time ratios name / base (p50, p95 at batch 1; batch-32 time)."""
    return {
        "p50": result[name]["p50_ms"] / result[base]["p50_ms"],
        "p95": result[name]["p95_ms"] / result[base]["p95_ms"],
        "batch32_time": (result[base]["batch32_sentences_per_s"]
                         / result[name]["batch32_sentences_per_s"]),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="", help="e5-small (default) or tiny")
    parser.add_argument("--data", default=common.default_data_dir())
    parser.add_argument("--seq_length", type=int, default=128,
                        help="packing length of the serving signature (the trainer's "
                             "--max_seq_length)")
    parser.add_argument("--latency_calls", type=int, default=300)
    parser.add_argument("--throughput_batches", type=int, default=30)
    parser.add_argument("--export_dir", default="", help="keep the export here (default: temp)")
    parser.add_argument("--export_precisions", default="float32",
                        help="comma-separated export policies: the first is `exported`, "
                             "each other one is timed against it (e.g. float32,bfloat16)")
    parser.add_argument("--quick", action="store_true", help="tiny encoder, few calls")
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)
    if args.quick:
        args.model = args.model or "tiny"
        args.latency_calls, args.throughput_batches = 20, 4
    args.model = args.model or "e5-small"

    from tf_mbalign.data import corpus as corpus_lib

    machine = common.machine_info()
    common.print_machine(machine)
    source = args.data if os.path.isdir(args.data) else "demo"
    corpus = corpus_lib.read_corpus(source)
    rng = np.random.default_rng(0)
    pool = corpus.english + corpus.other
    sentences = [pool[i] for i in rng.permutation(len(pool))[:2000]]

    bundle = load_model(args.model)
    lengths = bundle.tokenizer.tokenize(tf.constant(sentences[:500])).row_lengths().numpy() + 2
    export_dir = args.export_dir or tempfile.mkdtemp(prefix="tf_mbalign_serving_")
    try:
        precisions = tuple(p for p in args.export_precisions.split(",") if p)
        callables, paths = build_callables(bundle, export_dir, args.seq_length,
                                           precisions=precisions)
        result = measure(callables, sentences, args.latency_calls, args.throughput_batches)
    finally:
        if not args.export_dir:
            shutil.rmtree(export_dir, ignore_errors=True)
    result.update({
        "benchmark": "serving_latency", "argv": sys.argv if argv is None else argv,
        "machine": machine, "model": args.model, "source": bundle.source,
        "seq_length": args.seq_length, "corpus": source,
        "mean_tokens_per_sentence": float(np.mean(np.minimum(lengths, args.seq_length))),
        "serving_path": os.path.relpath(paths["serving"], export_dir),
        "export_precisions": list(precisions),
    })
    print(f"model {args.model}, sentences cut at {args.seq_length} tokens (they average "
          f"{result['mean_tokens_per_sentence']:.1f} tokens with [CLS]/[SEP])")
    common.print_table([dict(result[n], name=n) for n in callables], [
        ("", "name", "{}"), ("p50 ms (batch 1)", "p50_ms", "{:.2f}"),
        ("p95 ms (batch 1)", "p95_ms", "{:.2f}"),
        ("sentences/s (batch 32)", "batch32_sentences_per_s", "{:.1f}"),
    ])
    r = result["exported_over_in_memory"]
    print(f"exported / in-memory: p50 {r['p50']:.3f}, p95 {r['p95']:.3f}, "
          f"batch-32 time {r['batch32_time']:.3f} (goal <= 1.1); "
          f"max |difference| {result['max_abs_difference']:.2e}", flush=True)
    for precision in precisions[1:]:
        name = f"exported_{precision}"
        r = result[f"{name}_over_exported"]
        print(f"{name} / exported ({precisions[0]}): p50 {r['p50']:.3f}, p95 {r['p95']:.3f}, "
              f"batch-32 time {r['batch32_time']:.3f}; min cosine to it "
              f"{result[f'{name}_min_cosine_to_exported']:.5f}", flush=True)
    common.write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
