"""Parallel corpora: read, validate and describe (English, other) sentence pairs.

Supported inputs, all checked completely before training starts:

- a TSV file of `english<TAB>other` lines (`read_tsv`);
- two line-aligned files, English and other (`read_line_aligned`);
- a directory of `en-XX.tsv` files, one per language (`read_directory`);
- a TensorFlow Datasets translation dataset (`read_tfds`, needs internet or a
  prepared TFDS data dir).

Rules, the same for every reader:

- lines are split on `\\n` only; trailing `\\r`s are dropped, and a last
  line without `\\n` that is empty after that is no line (so the line count
  always equals `tf.data.TextLineDataset`'s). Other Unicode line breaks
  (`\\x0b`, `\\x85`, `\\u2028`) and a `\\r` inside a line are text, not
  line ends. A UTF-8 byte-order mark at the start of a file is dropped;
- files are read line by line: memory grows with the longest line, not with
  the file. A line over `MAX_LINE_BYTES` (16 MiB) is an error naming
  `file:line` (a binary file, or one without line ends);
- invalid UTF-8 is an error naming `file:line` and the byte offset;
- a pair with an empty side is skipped and counted; a side is empty when it
  has no visible character (only whitespace, control or format characters
  such as NUL, U+200B or U+FEFF, which tokenizers drop);
- a side longer than `max_chars` characters is truncated and counted;
- a TSV line needs exactly one tab (`file:line` error otherwise);
- line-aligned files must have the same number of lines (both paths and both
  counts in the error);
- a corpus with no usable pair is an error.
"""

import dataclasses
import itertools
import os
import re
import unicodedata

import numpy as np

from tf_mbalign.data.language_files import FileLayout, find_language_files

DEFAULT_MAX_CHARS = 2000
MAX_LINE_BYTES = 16 * 1024 * 1024
_PAIR_FILES = FileLayout(re.compile(r"^en-(?P<language>[A-Za-z_]+)\.tsv$"), "en-XX.tsv",
                         expected=lambda language: f"en-{language}.tsv")
_BOM = b"\xef\xbb\xbf"
# Characters BERT-style tokenizers drop: they do not make a side non-empty.
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zs", "Zl", "Zp"})


class CorpusError(ValueError):
    """A corpus that cannot be used; the message names the file and line."""


@dataclasses.dataclass
class CorpusStats:
    """What validation saw; printed before training and written to model_dir."""

    pairs: int = 0
    skipped_empty: int = 0
    truncated: int = 0
    files: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class ParallelCorpus:
    """Validated sentence pairs held in memory.

    Attributes:
        english: list of English sentences.
        other: list of the other-language sentences, aligned with `english`.
        languages: sorted language codes.
        language_ids: int32 array, index into `languages` for every pair.
        sources: list of `"file:line"` strings, one per pair (for error reports).
        stats: a `CorpusStats`.
    """

    english: list
    other: list
    languages: list
    language_ids: np.ndarray
    sources: list
    stats: CorpusStats

    def __len__(self):
        return len(self.english)

    def language_counts(self):
        return {
            lang: int(np.sum(self.language_ids == i))
            for i, lang in enumerate(self.languages)
        }


def has_visible_text(text):
    """True if `text` has a character a tokenizer keeps (not whitespace,
    control or format characters, not U+FFFD)."""
    for char in text:
        if not char.isspace() and char != "\ufffd" and (
                unicodedata.category(char) not in _INVISIBLE_CATEGORIES):
            return True
    return False


def _check_file(path):
    if not os.path.exists(path):
        raise FileNotFoundError(f"Corpus file not found: {path}")
    if not os.path.isfile(path):
        raise CorpusError(f"{path}: is not a regular file.")


def _raw_lines(path):
    """Yields (line_number, raw bytes without line end), reading line by line.

    Raises:
        CorpusError: a line longer than `MAX_LINE_BYTES`.
    """
    _check_file(path)
    with open(path, "rb") as f:
        number = 0
        while True:
            raw = f.readline(MAX_LINE_BYTES + 1)
            if not raw:
                return
            number += 1
            ended = raw.endswith(b"\n")
            if ended:
                raw = raw[:-1]
            elif len(raw) > MAX_LINE_BYTES:
                raise CorpusError(
                    f"{path}:{number}: line longer than {MAX_LINE_BYTES} bytes. A corpus "
                    "line is one sentence pair; is this a binary file, or one without "
                    "newline line ends?"
                )
            raw = raw.rstrip(b"\r")
            if not ended and not raw:
                return  # Only \r after the last newline: no line.
            if number == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM):]
            yield number, raw


def _read_lines(path):
    """Yields (line_number, text) of a file, checking that it is UTF-8."""
    for number, raw in _raw_lines(path):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise CorpusError(
                f"{path}:{number}: invalid UTF-8 at byte {error.start} of the line "
                f"({error.reason}). Re-encode the file as UTF-8, e.g. "
                f"`iconv -f <encoding> -t UTF-8`."
            ) from None
        yield number, text


class _Builder:
    """Collects pairs, applying the skip / truncate rules."""

    def __init__(self, max_chars):
        self.max_chars = max_chars
        self.english, self.other, self.language_ids, self.sources = [], [], [], []
        self.languages = []
        self.stats = CorpusStats()

    def add_file(self, path):
        self.stats.files.append(path)

    def add(self, english, other, language, source):
        if not has_visible_text(english) or not has_visible_text(other):
            self.stats.skipped_empty += 1
            return
        if len(english) > self.max_chars or len(other) > self.max_chars:
            self.stats.truncated += 1
            english, other = english[: self.max_chars], other[: self.max_chars]
        if language not in self.languages:
            self.languages.append(language)
        self.english.append(english)
        self.other.append(other)
        self.language_ids.append(self.languages.index(language))
        self.sources.append(source)

    def build(self, description):
        if not self.english:
            raise CorpusError(
                f"{description}: no usable sentence pairs "
                f"({self.stats.skipped_empty} empty pairs skipped). "
                "Each line needs text on both sides."
            )
        order = sorted(range(len(self.languages)), key=lambda i: self.languages[i])
        remap = np.empty(len(order), np.int32)
        remap[order] = np.arange(len(order), dtype=np.int32)
        self.stats.pairs = len(self.english)
        return ParallelCorpus(
            english=self.english,
            other=self.other,
            languages=sorted(self.languages),
            language_ids=remap[np.asarray(self.language_ids, np.int32)],
            sources=self.sources,
            stats=self.stats,
        )


def _language_of(path, language):
    if language:
        return language
    match = _PAIR_FILES.pattern.match(os.path.basename(path))
    return _PAIR_FILES.key(match) if match else "xx"


def _add_tsv(builder, path, language):
    builder.add_file(path)
    for number, line in _read_lines(path):
        if not has_visible_text(line):
            builder.stats.skipped_empty += 1
            continue
        fields = line.split("\t")
        if len(fields) != 2:
            raise CorpusError(
                f"{path}:{number}: expected `english<TAB>other` (one tab), found "
                f"{len(fields) - 1} tabs. Remove tabs inside sentences."
            )
        builder.add(fields[0], fields[1], language, f"{path}:{number}")


def read_tsv(path, language=None, max_chars=DEFAULT_MAX_CHARS):
    """Reads one `english<TAB>other` file. The language comes from an
    `en-XX.tsv` name unless given."""
    builder = _Builder(max_chars)
    _add_tsv(builder, path, _language_of(path, language))
    return builder.build(path)


def read_line_aligned(english_path, other_path, language="xx", max_chars=DEFAULT_MAX_CHARS):
    """Reads two line-aligned files: line i of one translates line i of the other."""
    _check_file(english_path)
    _check_file(other_path)
    builder = _Builder(max_chars)
    builder.add_file(english_path)
    builder.add_file(other_path)
    counts = [0, 0]
    for english, other in itertools.zip_longest(_read_lines(english_path),
                                                _read_lines(other_path)):
        if english is not None:
            counts[0] = english[0]
        if other is not None:
            counts[1] = other[0]
        if english is not None and other is not None:
            builder.add(english[1], other[1], language, f"{other_path}:{other[0]}")
    if counts[0] != counts[1]:
        raise CorpusError(
            "Line-aligned files differ in length: "
            f"{english_path} has {counts[0]} lines, "
            f"{other_path} has {counts[1]} lines. Line i of one file must "
            "translate line i of the other."
        )
    return builder.build(f"{english_path} + {other_path}")


def read_directory(directory, languages=None, max_chars=DEFAULT_MAX_CHARS):
    """Reads every `en-XX.tsv` in a directory (optionally only `languages`)."""
    found = find_language_files(directory, _PAIR_FILES, languages, none_found=CorpusError)
    builder = _Builder(max_chars)
    for lang in sorted(found):
        _add_tsv(builder, found[lang], lang)
    return builder.build(directory)


def read_tfds(name, split="train", max_pairs=None, data_dir=None, max_chars=DEFAULT_MAX_CHARS):
    """Reads a TFDS translation dataset such as `wmt14_translate/de-en`.

    The dataset must have an `en` feature and one other language feature.
    Downloads need internet (or a prepared `data_dir`).
    """
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
        if not builder.is_prepared():
            print(f"tfds:{name} is not prepared in {builder.data_dir}: downloading it "
                  "(needs internet; offline this fails after the download retries).",
                  flush=True)
        dataset, info = tfds.load(name, split=split, data_dir=data_dir, with_info=True)
    except Exception as error:  # TFDS raises many types; keep the cause.
        raise CorpusError(
            f"TFDS dataset {name!r} could not be loaded ({error}). Offline, pass "
            "--corpus=<file or directory> instead."
        ) from error
    keys = [k for k in info.features.keys() if k != "en"]
    if "en" not in info.features.keys() or len(keys) != 1:
        raise CorpusError(
            f"TFDS dataset {name!r} has features {list(info.features.keys())}; "
            "expected `en` and exactly one other language."
        )
    builder = _Builder(max_chars)
    builder.add_file(f"tfds:{name}/{split}")
    for i, example in enumerate(tfds.as_numpy(dataset)):
        if max_pairs is not None and i >= max_pairs:
            break
        builder.add(
            example["en"].decode("utf-8"),
            example[keys[0]].decode("utf-8"),
            keys[0],
            f"tfds:{name}/{split}:{i}",
        )
    return builder.build(f"tfds:{name}")


def read_corpus(spec, max_chars=DEFAULT_MAX_CHARS, languages=None):
    """Reads a corpus from a `--corpus` value.

    `spec` is one of: a directory of en-XX.tsv files; a TSV file; two files
    joined by a comma (`english.txt,other.txt`); `tfds:NAME[:SPLIT]`; or
    `demo` for the corpus shipped with the package.
    """
    if spec == "demo":
        return read_directory(demo_corpus_dir(), languages=languages, max_chars=max_chars)
    if spec.startswith("tfds:"):
        parts = spec.split(":")
        return read_tfds(parts[1], split=parts[2] if len(parts) > 2 else "train",
                         max_chars=max_chars)
    if "," in spec:
        english_path, other_path = spec.split(",", 1)
        return read_line_aligned(english_path, other_path, max_chars=max_chars)
    if os.path.isdir(spec):
        return read_directory(spec, languages=languages, max_chars=max_chars)
    return read_tsv(spec, max_chars=max_chars)


def demo_corpus_dir():
    """The small hand-written parallel corpus shipped inside the package."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo_corpus")


def epoch_index(corpus, alpha=0.7, seed=0):
    """Indices of the pairs that make up one epoch, with language smoothing.

    Languages are sampled with probability p_l proportional to n_l ** alpha
    (n_l = pairs of language l), the exponential smoothing of XLM / mBERT
    (alpha = 1 keeps the natural mix, alpha -> 0 makes languages uniform).
    An epoch holds as many pairs as the corpus, round(p_l * N) of language l:
    whole copies of the language's pairs plus a fixed, seeded subset for the
    remainder. The training pipeline reshuffles this index every epoch.
    """
    counts = np.bincount(corpus.language_ids, minlength=len(corpus.languages))
    weights = counts.astype(np.float64) ** alpha
    probabilities = weights / weights.sum()
    # Largest-remainder rounding: the shares add up to exactly N pairs.
    raw = probabilities * len(corpus)
    targets = np.floor(raw).astype(np.int64)
    targets[np.argsort(-(raw - targets), kind="stable")[: len(corpus) - targets.sum()]] += 1
    rng = np.random.default_rng(seed)
    parts = []
    for language, target in enumerate(targets):
        members = np.flatnonzero(corpus.language_ids == language)
        copies, remainder = divmod(int(target), len(members))
        parts.extend([members] * copies)
        parts.append(np.sort(rng.choice(members, size=remainder, replace=False)))
    return np.concatenate(parts).astype(np.int64)
