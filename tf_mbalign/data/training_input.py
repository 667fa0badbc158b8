"""The training input: where a `--corpus` value goes in memory or streamed.

The switch is here and only here: a prepared directory (`prepared:DIR`, or
a directory holding a `manifest.json` written by `python -m
tf_mbalign.prepare`) is streamed from its shards (`streamed_pipeline.py`);
every other corpus is read, validated and held in memory exactly as before
(`corpus.read_corpus` + `pipeline.py`). Large corpora should be prepared:
`large_corpus_hint` says so for big in-memory ones.

Either way the corpus comes with the pairs held out of training for the
before -> after alignment check (`held_out.py`): the demo's own, those a
seed chooses from an in-memory corpus, or those `prepare` stored.
"""

from tf_mbalign.data import corpus as corpus_lib
from tf_mbalign.data import held_out as held_out_lib
from tf_mbalign.data import pipeline, streamed_pipeline
from tf_mbalign.data.prepared_corpus import PreparedCorpus, prepared_directory

# In-memory corpora from this size on get a hint to prepare them (memory
# ~5.7x the file, re-tokenized every epoch; BUILD_NOTES.md).
LARGE_CORPUS_PAIRS = 2_000_000


def open_corpus(spec, max_chars=corpus_lib.DEFAULT_MAX_CHARS, languages=None,
                hold_out_seed=None):
    """A `PreparedCorpus` for a prepared directory (its held-out pairs are
    those `prepare` chose), else the `ParallelCorpus` read into memory: the
    demo less its held-out pairs, any other corpus less those `hold_out_seed`
    chooses (None: nothing is held out). Either way `corpus.held_out` is the
    `HeldOut` (None: nothing held out)."""
    directory = prepared_directory(spec)
    if directory is not None:
        return PreparedCorpus.open(directory, languages=languages)
    corpus = corpus_lib.read_corpus(spec, max_chars=max_chars, languages=languages)
    if spec == "demo":
        corpus.held_out = held_out_lib.demo_held_out(max_chars)
    elif hold_out_seed is not None:
        corpus = held_out_lib.hold_out(corpus, hold_out_seed)
    return corpus


def check_tokenizer(corpus, tokenizer, encoder):
    """Raises `CorpusError` when a prepared corpus was tokenized by another
    tokenizer than `encoder`'s (in-memory corpora are tokenized while
    training, so they always match)."""
    if isinstance(corpus, PreparedCorpus):
        corpus.check_tokenizer(tokenizer, encoder)


def check_workers(corpus, workers):
    """Raises `CorpusError` when some of `workers` would get no shard of a
    prepared corpus (it has fewer shards per language than workers)."""
    if not isinstance(corpus, PreparedCorpus):
        return
    most = max(1 + max(s.index for s in corpus.shards if s.language == language)
               for language in corpus.languages)
    if most < workers:
        raise corpus_lib.CorpusError(
            f"{corpus.directory} has at most {most} shards per language for {workers} "
            "workers: some workers would read nothing. Prepare it again with "
            f"--shards_per_language a multiple of {workers} (python -m tf_mbalign.prepare "
            f"--corpus={corpus.manifest['corpus']} ... --overwrite).")


def corpus_warnings(corpus, max_chars, workers=1):
    """Warnings to print before training (unknown language, a --max_chars
    that a prepared corpus cannot honour, shards that do not split evenly
    over the workers, a large in-memory corpus)."""
    warnings = [corpus.unnamed_language_warning()]
    if isinstance(corpus, PreparedCorpus):
        problems = streamed_pipeline.mix_problems(corpus.shards, corpus.languages, workers)
        if problems:
            warnings.append(
                f"{corpus.directory}: " + "; ".join(problems) + ", so not every worker's "
                "share has the corpus' language mix. Prepare it with --shards_per_language a "
                f"multiple of {workers}.")
        if corpus.max_chars != max_chars:
            warnings.append(
                f"{corpus.directory} was truncated at {corpus.max_chars} characters when it "
                f"was prepared; --max_chars={max_chars} does not change that (prepare it "
                "again to change it).")
    elif len(corpus) >= LARGE_CORPUS_PAIRS:
        warnings.append(
            f"{len(corpus):,} pairs are held in memory and tokenized again every epoch; "
            "prepare the corpus once (python -m tf_mbalign.prepare --corpus=... --encoder=... "
            "--output=DIR) and train with --corpus=prepared:DIR to stream it from disk.")
    return [warning for warning in warnings if warning]


def describe(corpus):
    """One line: pairs, languages, validation counts (and the prepared directory)."""
    stats = corpus.stats
    line = (f"{stats.pairs} pairs, languages {corpus.language_counts()}, "
            f"{stats.skipped_empty} empty skipped, {stats.truncated} truncated")
    if getattr(stats, "held_out", 0):
        line += f", {stats.held_out} held out of training"
    if isinstance(corpus, PreparedCorpus):
        line += f"; prepared in {corpus.directory} ({len(corpus.shards)} shards, streamed)"
    return line


def build_dataset(corpus, tokenizer, config, global_batch_size, input_context=None,
                  start_example=0):
    """`streamed_pipeline.build_dataset` for a prepared corpus, else
    `pipeline.build_dataset`."""
    build = (streamed_pipeline.build_dataset if isinstance(corpus, PreparedCorpus)
             else pipeline.build_dataset)
    return build(corpus, tokenizer, config, global_batch_size, input_context, start_example)


def distributed_dataset(strategy, corpus, tokenizer, config, global_batch_size, start_example=0):
    """Per-replica batches through `distribute_datasets_from_function`: each
    input pipeline builds its own part (streamed: only its shards)."""

    def dataset_fn(input_context):
        return build_dataset(corpus, tokenizer, config, global_batch_size, input_context,
                             start_example)

    return strategy.distribute_datasets_from_function(dataset_fn)
