r"""Prepares a corpus for training once: validated, tokenized, sharded on disk.

Usage:
  python -m tf_mbalign.prepare --corpus=../shared/data/parallel --encoder=e5-small \
      --output=data/parallel-e5
  python -m tf_mbalign.train --corpus=prepared:data/parallel-e5 --encoder=e5-small ...

--corpus takes every form training takes (a directory of en-XX.tsv files,
TSV files, NAME.en,NAME.XX, Hugging Face translation JSONL files,
tfds:NAME[:SPLIT]); the rules and `file:line` errors are training's.
--encoder only decides the tokenizer (training refuses a prepared corpus
whose tokenizer differs from its encoder's). Memory stays bounded whatever
the corpus size. The output is complete only once manifest.json exists;
running the same command again does nothing when it is, starts over when an
earlier run died, and refuses (naming what differs) when DIR holds something
else. Layout and record format: tf_mbalign/data/prepared_corpus.py.

Like training in memory, prepare holds pairs out of training for the
before -> after alignment check (min(20, 5%) a language, chosen by --seed;
the demo's own pairs for --corpus=demo) and stores them as text beside the
manifest, so a run on the prepared corpus checks the languages it trains.

Exit codes: 0 prepared (or already), 2 bad flags, input or output.
"""

from tf_mbalign import runtime

runtime.import_tensorflow_quietly()

import sys  # noqa: E402

from absl import app, flags  # noqa: E402

from tf_mbalign.data import corpus_preparation  # noqa: E402
from tf_mbalign.data.corpus import DEFAULT_MAX_CHARS, CorpusError  # noqa: E402
from tf_mbalign.modeling import encoders  # noqa: E402

_CORPUS = flags.DEFINE_string("corpus", None, "The corpus, in any form --corpus of training "
                              "takes (not prepared:DIR).")
_ENCODER = flags.DEFINE_string("encoder", None, "The encoder whose tokenizer is used (e5-small, "
                               "a Hugging Face dir, preset:NAME, tiny:VOCAB_TXT).")
_OUTPUT = flags.DEFINE_string("output", None, "The prepared directory to write.")
_MAX_CHARS = flags.DEFINE_integer("max_chars", DEFAULT_MAX_CHARS,
                                  "Truncate sides longer than this many characters.")
_LANGUAGES = flags.DEFINE_list("languages", [], "Only these languages of a corpus directory.")
_SHARDS = flags.DEFINE_integer(
    "shards_per_language", corpus_preparation.DEFAULT_SHARDS_PER_LANGUAGE,
    "Shards of each language; training splits them over workers, so make it a multiple "
    "of the number of workers.")
_OVERWRITE = flags.DEFINE_boolean("overwrite", False, "Replace what --output holds (another "
                                  "preparation, finished or not).")
_QUIET = flags.DEFINE_boolean("quiet", False, "Log lines instead of a progress line.")
_SEED = flags.DEFINE_integer(
    "seed", 0, "Seed that chooses the pairs held out of training for the alignment check "
    "(min(20, 5%) a language; training in memory with --seed=N holds out the same pairs). "
    "Training's own --seed does not change a prepared corpus' held-out pairs.")
flags.mark_flags_as_required(["corpus", "encoder", "output"])


def main(argv):
    if len(argv) > 1:
        print(f"error: unexpected arguments: {' '.join(argv[1:])} (flags are --name=value)",
              file=sys.stderr)
        return runtime.BAD_FLAGS_EXIT_CODE
    if _SHARDS.value < 1:
        print("error: --shards_per_language must be >= 1", file=sys.stderr)
        return runtime.BAD_FLAGS_EXIT_CODE
    if _CORPUS.value.startswith("prepared:"):
        print(f"error: --corpus={_CORPUS.value} is prepared already: train with it, or "
              "pass the corpus it was prepared from.", file=sys.stderr)
        return runtime.BAD_FLAGS_EXIT_CODE
    try:
        tokenizer = encoders.load_tokenizer(_ENCODER.value)
        request = corpus_preparation.PreparationRequest.for_tokenizer(
            _CORPUS.value, _ENCODER.value, tokenizer, max_chars=_MAX_CHARS.value,
            languages=tuple(_LANGUAGES.value), shards_per_language=_SHARDS.value,
            hold_out_seed=_SEED.value)
        manifest = corpus_preparation.prepare_corpus(
            request, tokenizer, _OUTPUT.value, overwrite=_OVERWRITE.value,
            progress=corpus_preparation.ProgressLine(quiet=_QUIET.value))
    except (CorpusError, FileNotFoundError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return runtime.BAD_FLAGS_EXIT_CODE
    print(f"prepared {manifest['pairs']:,} pairs ({manifest['pairs_per_language']}; "
          f"{manifest['skipped_empty']} empty skipped, {manifest['truncated']} truncated, "
          f"{manifest.get('held_out_pairs', 0)} held out for the alignment check) in "
          f"{len(manifest['shards'])} shards: {_OUTPUT.value}\n"
          f"train with --corpus=prepared:{_OUTPUT.value} --encoder={_ENCODER.value}")
    return 0


def run_main():
    app.run(main, flags_parser=runtime.flags_parser(lambda: __doc__))


if __name__ == "__main__":
    run_main()
