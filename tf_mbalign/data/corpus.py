"""Parallel corpora: read, validate and describe (English, other) sentence pairs.

Supported inputs, all checked completely before training starts:

- a TSV file of `english<TAB>other` lines (`read_tsv`), or several joined by
  commas (`a.tsv,b.tsv`: every item ends in `.tsv`; `read_tsv_files`);
- a comma list of directories of `en-XX.tsv` files and/or `.tsv` files
  (`strong/,weak/,extra/en-kab.tsv`: `read_pair_files`), read as one corpus
  whose languages are the union (language sampling then runs over all of
  them). A language given by two files is an error, as is one file given
  twice (`pair_files`): merging them would silently weight that language
  twice in the sampling, or repeat its pairs;
- two line-aligned files, English and other, joined by a comma
  (`NAME.en,NAME.XX`; `read_line_aligned`). The language is the other
  file's extension when the English one ends in `.en`;
- a directory of `en-XX.tsv` files, one per language (`read_directory`);
- Hugging Face translation JSONL files, one `{"translation": {"en": ...,
  "XX": ...}}` object a line (`read_jsonl_files`; `a.jsonl[,b.jsonl...]`,
  each line's language is its other key);
- `demo`: the corpus shipped with the package, less the pairs held out of
  training for the before -> after alignment check (`read_demo_corpus`);
- a TensorFlow Datasets translation dataset (`read_tfds`, needs internet or a
  prepared TFDS data dir).

Every reader streams: `stream_corpus` (and `stream_*`) yields validated
`SentencePair`s one by one (what `prepare` writes to shards);
`read_corpus` (and `read_*`) collects them into a `ParallelCorpus` in memory.

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
- a TSV line needs exactly one tab (`file:line` error otherwise, saying
  whether the translation is missing or a sentence holds a tab);
- a JSONL line is an object whose `translation` holds `en` and exactly one
  other language, both strings (`file:line` error otherwise);
- a line of the English file of a line-aligned pair holds no tab (a tab
  there means the file is a TSV: the error says to pass it alone);
- line-aligned files must have the same number of lines (both paths and both
  counts in the error);
- a corpus with no usable pair is an error;
- a corpus whose language is unknown (`xx`: a TSV not named `en-XX.tsv`,
  line-aligned files not named `NAME.en` / `NAME.XX`) is read, and
  `unnamed_language_warning` says how to name it.
"""

import dataclasses
import itertools
import json
import os
import re
import unicodedata

import numpy as np

from tf_mbalign.data.language_files import FileLayout, find_language_files

DEFAULT_MAX_CHARS = 2000
MAX_LINE_BYTES = 16 * 1024 * 1024
_PAIR_FILES = FileLayout(re.compile(r"^en-(?P<language>[A-Za-z_]+)\.tsv$"), "en-XX.tsv",
                         expected=lambda language: f"en-{language}.tsv")
UNKNOWN_LANGUAGE = "xx"
_LANGUAGE_EXTENSION = re.compile(r"^[a-z]{2,3}(_[A-Za-z]+)?$")
_TEXT_EXTENSIONS = frozenset({"en", "txt", "tsv", "csv", "raw", "tok", "out", "dat"})
_BOM = b"\xef\xbb\xbf"
_JSONL_LAYOUT = ('Each line of a translation JSONL file is one object '
                 '{"translation": {"en": "...", "XX": "..."}} (the Hugging Face layout).')
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
    held_out: int = 0  # pairs kept out of training for the alignment check (`held_out.py`)


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
        held_out: the `held_out.HeldOut` pairs kept out of training for the
            alignment check (None: none chosen; `training_input.open_corpus`
            sets it).
    """

    english: list
    other: list
    languages: list
    language_ids: np.ndarray
    sources: list
    stats: CorpusStats
    held_out: object = None

    def __len__(self):
        return len(self.english)

    def language_counts(self):
        return {
            lang: int(np.sum(self.language_ids == i))
            for i, lang in enumerate(self.languages)
        }

    def unnamed_language_warning(self):
        """A warning when some pairs' language is unknown (`xx`), else None."""
        return unnamed_language_warning(self.stats.files, self.language_counts())

    def sources_of(self, pair_ids):
        """`file:line` of each pair id (ids outside the corpus are left out)."""
        return [self.sources[i] for i in pair_ids if 0 <= i < len(self.sources)]


def unnamed_language_warning(files, language_counts):
    """A warning when some pairs' language is unknown (`xx`), else None."""
    if UNKNOWN_LANGUAGE not in language_counts:
        return None
    return (
        f"{', '.join(files)}: the language of {language_counts[UNKNOWN_LANGUAGE]} pairs is "
        f"unknown ({UNKNOWN_LANGUAGE!r}), so they are logged and sampled as one language "
        f"{UNKNOWN_LANGUAGE!r}. Name a TSV file en-XX.tsv (e.g. en-de.tsv), line-aligned "
        "files NAME.en and NAME.XX (e.g. train.en,train.de), or put en-XX.tsv files in "
        "a directory and pass --corpus=<directory>."
    )


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


@dataclasses.dataclass(frozen=True)
class SentencePair:
    """One validated pair and where it came from (`file`:`line`; TFDS: the
    example's index)."""

    english: str
    other: str
    language: str
    file: str
    line: int

    @property
    def source(self):
        return f"{self.file}:{self.line}"


class _PairRules:
    """Applies the skip / truncate rules to raw pairs and counts what they did."""

    def __init__(self, max_chars):
        self.max_chars = max_chars
        self.stats = CorpusStats()

    def add_file(self, path):
        self.stats.files.append(path)

    def check(self, english, other, language, file, line):
        """The pair as it is kept (sides truncated), or None when skipped."""
        if not has_visible_text(english) or not has_visible_text(other):
            self.stats.skipped_empty += 1
            return None
        if len(english) > self.max_chars or len(other) > self.max_chars:
            self.stats.truncated += 1
            english, other = english[: self.max_chars], other[: self.max_chars]
        self.stats.pairs += 1
        return SentencePair(english, other, language, file, line)


class CorpusStream:
    """The validated pairs of a corpus, read lazily (once) in corpus order.

    Iterating yields `SentencePair`s; `stats` counts as it goes. Memory
    follows the longest line, not the corpus (what `prepare` streams).

    Raises (while iterating):
        CorpusError: a rule is broken (`file:line`), or no pair is usable.
    """

    def __init__(self, description, rules, pairs):
        self.description = description
        self.stats = rules.stats
        self._pairs = pairs

    def __iter__(self):
        yield from self._pairs
        if not self.stats.pairs:
            raise CorpusError(
                f"{self.description}: no usable sentence pairs "
                f"({self.stats.skipped_empty} empty pairs skipped). "
                "Each line needs text on both sides."
            )


def collect(stream):
    """A `ParallelCorpus` holding every pair of a `CorpusStream`."""
    english, other, language_ids, sources, languages = [], [], [], [], []
    index = {}
    for pair in stream:
        if pair.language not in index:
            index[pair.language] = len(languages)
            languages.append(pair.language)
        english.append(pair.english)
        other.append(pair.other)
        language_ids.append(index[pair.language])
        sources.append(pair.source)
    order = sorted(range(len(languages)), key=lambda i: languages[i])
    remap = np.empty(len(order), np.int32)
    remap[order] = np.arange(len(order), dtype=np.int32)
    return ParallelCorpus(
        english=english,
        other=other,
        languages=sorted(languages),
        language_ids=remap[np.asarray(language_ids, np.int32)],
        sources=sources,
        stats=stream.stats,
    )


def _language_of(path, language):
    if language:
        return language
    match = _PAIR_FILES.pattern.match(os.path.basename(path))
    return _PAIR_FILES.key(match) if match else UNKNOWN_LANGUAGE


def _tsv_pairs(rules, path, language):
    rules.add_file(path)
    for number, line in _read_lines(path):
        if not has_visible_text(line):
            rules.stats.skipped_empty += 1
            continue
        fields = line.split("\t")
        if len(fields) != 2:
            raise CorpusError(f"{path}:{number}: {_tab_count_problem(len(fields) - 1)}")
        pair = rules.check(fields[0], fields[1], language, path, number)
        if pair:
            yield pair


def _tab_count_problem(tabs):
    """What a TSV line with `tabs` tabs (not 1) lacks, and the fix."""
    expected = "expected `english<TAB>other` (one tab)"
    if tabs == 0:
        return (f"{expected}, found 0 tabs: the tab and the translation after it are "
                "missing. Each line holds an English sentence, one tab, then its "
                "translation. Two files of one sentence a line each are read as "
                "--corpus=NAME.en,NAME.XX.")
    return (f"{expected}, found {tabs} tabs: a sentence holds a tab. Replace tabs inside "
            "sentences with spaces (e.g. keep the first tab as the separator).")


def read_tsv(path, language=None, max_chars=DEFAULT_MAX_CHARS):
    """Reads one `english<TAB>other` file. The language comes from an
    `en-XX.tsv` name unless given."""
    return read_tsv_files([path], language=language, max_chars=max_chars)


def stream_tsv_files(paths, language=None, max_chars=DEFAULT_MAX_CHARS):
    """`read_tsv_files` as a `CorpusStream`."""
    rules = _PairRules(max_chars)
    pairs = (pair for path in paths
             for pair in _tsv_pairs(rules, path, _language_of(path, language)))
    return CorpusStream(",".join(paths), rules, pairs)


def read_tsv_files(paths, language=None, max_chars=DEFAULT_MAX_CHARS):
    """Reads several `english<TAB>other` files as one corpus; each file's
    language comes from its `en-XX.tsv` name unless `language` is given."""
    return collect(stream_tsv_files(paths, language, max_chars))


def line_aligned_language(english_path, other_path):
    """The language of line-aligned files `NAME.en` + `NAME.XX` (same NAME;
    XX of 2-3 letters with an optional `_Script` suffix, not a text-file
    extension such as `txt`): `XX`, else `xx`."""
    english_stem, english_extension = os.path.splitext(english_path)
    other_stem, other_extension = os.path.splitext(other_path)
    language = other_extension[1:]
    if (english_extension == ".en" and english_stem == other_stem
            and _LANGUAGE_EXTENSION.match(language) and language not in _TEXT_EXTENSIONS):
        return language
    return UNKNOWN_LANGUAGE


def _english_lines(path):
    """`_read_lines` of the English file of a line-aligned pair, refusing tabs.

    Raises:
        CorpusError: a line holds a tab (the file is most likely a TSV).
    """
    for number, text in _read_lines(path):
        if "\t" in text:
            raise CorpusError(
                f"{path}:{number}: a tab in the English file of a line-aligned pair. "
                "This looks like an `english<TAB>other` TSV file: pass it alone "
                f"(--corpus={path}), several joined by commas (--corpus=a.tsv,b.tsv), or a "
                "directory of en-XX.tsv files. If the tab is part of the sentence, replace "
                "it with a space."
            )
        yield number, text


def _line_aligned_pairs(rules, english_path, other_path, language):
    rules.add_file(english_path)
    rules.add_file(other_path)
    counts = [0, 0]
    for english, other in itertools.zip_longest(_english_lines(english_path),
                                                _read_lines(other_path)):
        if english is not None:
            counts[0] = english[0]
        if other is not None:
            counts[1] = other[0]
        if english is not None and other is not None:
            pair = rules.check(english[1], other[1], language, other_path, other[0])
            if pair:
                yield pair
    if counts[0] != counts[1]:
        raise CorpusError(
            "Line-aligned files differ in length: "
            f"{english_path} has {counts[0]} lines, "
            f"{other_path} has {counts[1]} lines. Line i of one file must "
            "translate line i of the other."
        )


def stream_line_aligned(english_path, other_path, language=None, max_chars=DEFAULT_MAX_CHARS):
    """`read_line_aligned` as a `CorpusStream` (both files are checked now)."""
    _check_file(english_path)
    _check_file(other_path)
    language = language or line_aligned_language(english_path, other_path)
    rules = _PairRules(max_chars)
    return CorpusStream(f"{english_path} + {other_path}", rules,
                        _line_aligned_pairs(rules, english_path, other_path, language))


def read_line_aligned(english_path, other_path, language=None, max_chars=DEFAULT_MAX_CHARS):
    """Reads two line-aligned files: line i of one translates line i of the other.

    The language is `language`, else the other file's extension when the
    English file ends in `.en` (`line_aligned_language`), else `xx`.
    """
    return collect(stream_line_aligned(english_path, other_path, language, max_chars))


def stream_directory(directory, languages=None, max_chars=DEFAULT_MAX_CHARS):
    """`read_directory` as a `CorpusStream` (languages in sorted order)."""
    found = find_language_files(directory, _PAIR_FILES, languages, none_found=CorpusError)
    rules = _PairRules(max_chars)
    pairs = (pair for lang in sorted(found) for pair in _tsv_pairs(rules, found[lang], lang))
    return CorpusStream(directory, rules, pairs)


def read_directory(directory, languages=None, max_chars=DEFAULT_MAX_CHARS):
    """Reads every `en-XX.tsv` in a directory (optionally only `languages`)."""
    return collect(stream_directory(directory, languages, max_chars))


def pair_files(items, languages=None):
    """[(path, language)] of a comma list of directories of `en-XX.tsv` files
    and `.tsv` files, in the order given (a directory's files by language).
    The language of a `.tsv` item comes from its `en-XX.tsv` name (else
    `xx`); `languages` keeps only those, over the union of the items.

    Raises:
        CorpusError: an item is neither a directory nor a `.tsv` file; a
            directory has no `en-XX.tsv` file; one file is given twice, or a
            named language by two files (unnamed `xx` files may repeat).
        FileNotFoundError: a `.tsv` item does not exist; a requested
            language is in no item.
    """
    files = []
    for item in items:
        if os.path.isdir(item):
            found = find_language_files(item, _PAIR_FILES, none_found=CorpusError)
            files += [(path, language) for language, path in found.items()]
        elif item.endswith(".tsv"):
            _check_file(item)
            files.append((item, _language_of(item, None)))
        else:
            raise CorpusError(
                f"--corpus={','.join(items)}: the item {item!r} is neither a directory of "
                "en-XX.tsv files nor a .tsv file. A comma list of directories and TSV files "
                "takes only those (e.g. --corpus=weak_dir,strong_dir,extra/en-kab.tsv).")
    _check_distinct(files)
    if languages:
        missing = sorted(set(languages) - {language for _, language in files})
        if missing:
            raise FileNotFoundError(
                f"--corpus={','.join(items)}: no file for language(s) {missing}; expected "
                f"{', '.join(_PAIR_FILES.expected(m) for m in missing)} in one of the items; "
                f"found {sorted({language for _, language in files})}.")
        files = [(path, language) for path, language in files if language in languages]
    return files


def _check_distinct(files):
    """Raises `CorpusError` for a file given twice, or a named language given
    by two files."""
    first_of = {}
    for path, language in files:
        for key in (("file", os.path.realpath(path)), ("language", language)):
            if key == ("language", UNKNOWN_LANGUAGE):
                continue
            if key in first_of:
                what = ("the same file twice" if key[0] == "file"
                        else f"language {language!r} twice")
                raise CorpusError(
                    f"--corpus gives {what}: {first_of[key]} and {path}. Each language "
                    "must come from one file (pairs of one language are sampled as one "
                    "pool): concatenate them into one en-XX.tsv, or leave one out.")
            first_of[key] = path


def stream_pair_files(items, languages=None, max_chars=DEFAULT_MAX_CHARS):
    """`read_pair_files` as a `CorpusStream` (the items are listed and
    checked now)."""
    files = pair_files(items, languages)
    rules = _PairRules(max_chars)
    pairs = (pair for path, language in files for pair in _tsv_pairs(rules, path, language))
    return CorpusStream(",".join(items), rules, pairs)


def read_pair_files(items, languages=None, max_chars=DEFAULT_MAX_CHARS):
    """Reads a comma list of directories of `en-XX.tsv` files and `.tsv`
    files as one corpus (`pair_files`)."""
    return collect(stream_pair_files(items, languages, max_chars))


def _translation_of(text, path, number):
    """(english, other, language) of one line of a Hugging Face translation
    JSONL file: `{"translation": {"en": ..., "XX": ...}}`.

    Raises:
        CorpusError: not JSON, or not that layout (`file:line` and the fix).
    """
    try:
        record = json.loads(text)
    except ValueError as error:
        raise CorpusError(f"{path}:{number}: not a JSON object ({error}). {_JSONL_LAYOUT}") \
            from None
    translation = record.get("translation") if isinstance(record, dict) else None
    if not isinstance(translation, dict):
        raise CorpusError(f"{path}:{number}: no \"translation\" object. {_JSONL_LAYOUT}")
    others = sorted(key for key in translation if key != "en")
    if "en" not in translation or len(others) != 1 or not others[0]:
        raise CorpusError(
            f"{path}:{number}: the translation has languages {sorted(translation)}; "
            f"expected \"en\" and exactly one other. {_JSONL_LAYOUT}")
    english, other = translation["en"], translation[others[0]]
    if not isinstance(english, str) or not isinstance(other, str):
        raise CorpusError(f"{path}:{number}: a translation value is not a string. "
                          f"{_JSONL_LAYOUT}")
    return english, other, others[0]


def _jsonl_pairs(rules, path):
    rules.add_file(path)
    for number, line in _read_lines(path):
        if not has_visible_text(line):
            rules.stats.skipped_empty += 1
            continue
        pair = rules.check(*_translation_of(line, path, number), path, number)
        if pair:
            yield pair


def stream_jsonl_files(paths, max_chars=DEFAULT_MAX_CHARS):
    """`read_jsonl_files` as a `CorpusStream`."""
    rules = _PairRules(max_chars)
    pairs = (pair for path in paths for pair in _jsonl_pairs(rules, path))
    return CorpusStream(",".join(paths), rules, pairs)


def read_jsonl_files(paths, max_chars=DEFAULT_MAX_CHARS):
    """Reads Hugging Face translation JSONL files (one
    `{"translation": {"en": ..., "XX": ...}}` object a line; each line's
    language is its other key)."""
    return collect(stream_jsonl_files(paths, max_chars))


def _tfds_pairs(rules, name, split, max_pairs, data_dir):
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
    rules.add_file(f"tfds:{name}/{split}")
    for i, example in enumerate(tfds.as_numpy(dataset)):
        if max_pairs is not None and i >= max_pairs:
            break
        pair = rules.check(example["en"].decode("utf-8"), example[keys[0]].decode("utf-8"),
                           keys[0], f"tfds:{name}/{split}", i)
        if pair:
            yield pair


def stream_tfds(name, split="train", max_pairs=None, data_dir=None,
                max_chars=DEFAULT_MAX_CHARS):
    """`read_tfds` as a `CorpusStream` (the dataset loads on the first pair)."""
    rules = _PairRules(max_chars)
    return CorpusStream(f"tfds:{name}", rules, _tfds_pairs(rules, name, split, max_pairs, data_dir))


def read_tfds(name, split="train", max_pairs=None, data_dir=None, max_chars=DEFAULT_MAX_CHARS):
    """Reads a TFDS translation dataset such as `wmt14_translate/de-en`.

    The dataset must have an `en` feature and one other language feature.
    Downloads need internet (or a prepared `data_dir`; TFDS also reads
    `$TFDS_DATA_DIR`).
    """
    return collect(stream_tfds(name, split, max_pairs, data_dir, max_chars))


def stream_corpus(spec, max_chars=DEFAULT_MAX_CHARS, languages=None):
    """The `CorpusStream` of a `--corpus` value (`read_corpus` lists the forms).

    Raises:
        CorpusError: a comma list that is none of the forms.
    """
    if spec == "demo":  # less the pairs held out for the alignment check
        return stream_demo_corpus(languages=languages, max_chars=max_chars)
    if spec.startswith("tfds:"):
        parts = spec.split(":")
        return stream_tfds(parts[1], split=parts[2] if len(parts) > 2 else "train",
                           max_chars=max_chars)
    paths = spec.split(",")
    if all(path.endswith(".jsonl") for path in paths):
        return stream_jsonl_files(paths, max_chars=max_chars)
    if len(paths) > 1:
        return _stream_comma_list(paths, max_chars, languages)
    if os.path.isdir(spec):
        return stream_directory(spec, languages=languages, max_chars=max_chars)
    return stream_tsv_files([spec], max_chars=max_chars)


def read_corpus(spec, max_chars=DEFAULT_MAX_CHARS, languages=None):
    """Reads a corpus from a `--corpus` value.

    `spec` is one of: a directory of en-XX.tsv files; a TSV file; directories
    of en-XX.tsv files and TSV files joined by commas (every item a directory
    or ending in `.tsv`; `languages` applies to their union); two line-aligned files
    joined by a comma (`NAME.en,NAME.XX`); Hugging Face translation JSONL
    files (every item ends in `.jsonl`); `tfds:NAME[:SPLIT]`; or `demo` for
    the corpus shipped with the package.

    Raises:
        CorpusError: a comma list that is none of the forms.
    """
    if spec == "demo":  # less the pairs held out for the alignment check
        return read_demo_corpus(languages=languages, max_chars=max_chars)
    return collect(stream_corpus(spec, max_chars=max_chars, languages=languages))


def _stream_comma_list(paths, max_chars, languages=None):
    """Directories and `.tsv` files (`dir,b.tsv,...`: every item ends in
    `.tsv` or one is a directory) or `english,other` (two files)."""
    if any(os.path.isdir(path) for path in paths) or all(path.endswith(".tsv")
                                                          for path in paths):
        return stream_pair_files(paths, languages=languages, max_chars=max_chars)
    if len(paths) != 2 or not all(paths):
        raise CorpusError(
            f"--corpus={','.join(paths)}: a comma list is either TSV files and directories "
            "of en-XX.tsv files (every item ending in .tsv or a directory: a.tsv,b.tsv or "
            "weak_dir,strong_dir), Hugging Face translation JSONL files (every item ending "
            "in .jsonl) or exactly two line-aligned files (NAME.en,NAME.XX)."
        )
    return stream_line_aligned(paths[0], paths[1], max_chars=max_chars)


def demo_corpus_dir():
    """The small hand-written parallel corpus shipped inside the package."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo_corpus")


# === The demo corpus: training pairs and the pairs held out of training ===
# Every 10th line of each demo file (20 of 200 per language) is held out for
# the before -> after alignment check (`evaluation/alignment_check.py`).
DEMO_HELD_OUT_EVERY = 10


def read_demo_corpus(languages=None, max_chars=DEFAULT_MAX_CHARS, held_out=False):
    """The demo corpus without its held-out pairs, or (`held_out=True`) only those.

    Held out: line 10, 20, ... of each `en-XX.tsv`. Training also drops any
    other pair that shares a sentence (English or translation) with a held-out
    pair (a few English sentences occur in several languages' files), so no
    held-out sentence is ever trained on.
    """
    everything = read_directory(demo_corpus_dir(), max_chars=max_chars)
    held = [i for i, source in enumerate(everything.sources)
            if int(source.rsplit(":", 1)[1]) % DEMO_HELD_OUT_EVERY == 0]
    held_sentences = ({everything.english[i] for i in held}
                      | {everything.other[i] for i in held})
    chosen = read_directory(demo_corpus_dir(), languages=languages, max_chars=max_chars)
    held_sources = {everything.sources[i] for i in held}
    if held_out:
        keep = [i for i, source in enumerate(chosen.sources) if source in held_sources]
    else:
        keep = [i for i in range(len(chosen)) if chosen.english[i] not in held_sentences
                and chosen.other[i] not in held_sentences]
    return subset(chosen, keep)


def stream_demo_corpus(languages=None, max_chars=DEFAULT_MAX_CHARS):
    """`read_demo_corpus`'s training pairs as a `CorpusStream` (the demo is
    small enough to hold), so `prepare --corpus=demo` leaves the alignment
    check's pairs out too."""
    training = read_demo_corpus(languages=languages, max_chars=max_chars)
    pairs = (pair_of(training, i) for i in range(len(training)))
    return CorpusStream("demo", _StatsOnly(training.stats), pairs)


def pair_of(corpus, i):
    """Pair `i` of a `ParallelCorpus` as the `SentencePair` it was read as."""
    file, line = corpus.sources[i].rsplit(":", 1)
    return SentencePair(corpus.english[i], corpus.other[i],
                        corpus.languages[int(corpus.language_ids[i])], file, int(line))


@dataclasses.dataclass
class _StatsOnly:
    """What `CorpusStream` needs of its rules: the stats they count into."""

    stats: CorpusStats


def subset(corpus, keep):
    """The pairs `keep` (indices) of a corpus; the others count as held out."""
    stats = dataclasses.replace(corpus.stats, pairs=len(keep),
                                held_out=corpus.stats.held_out + len(corpus) - len(keep),
                                files=list(corpus.stats.files))
    present = sorted({int(corpus.language_ids[i]) for i in keep})
    remap = {old: new for new, old in enumerate(present)}
    return ParallelCorpus(
        english=[corpus.english[i] for i in keep],
        other=[corpus.other[i] for i in keep],
        languages=[corpus.languages[i] for i in present],
        language_ids=np.asarray([remap[int(corpus.language_ids[i])] for i in keep], np.int32),
        sources=[corpus.sources[i] for i in keep],
        stats=stats,
    )


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
    targets = language_targets(counts, alpha)
    rng = np.random.default_rng(seed)
    parts = []
    for language, target in enumerate(targets):
        members = np.flatnonzero(corpus.language_ids == language)
        copies, remainder = divmod(int(target), len(members))
        parts.extend([members] * copies)
        parts.append(np.sort(rng.choice(members, size=remainder, replace=False)))
    return np.concatenate(parts).astype(np.int64)


def language_targets(counts, alpha):
    """Pairs of each language in one epoch of sum(counts) pairs: p_l
    proportional to counts[l] ** alpha, rounded so they add up exactly."""
    weights = np.asarray(counts, np.float64) ** alpha
    return apportion(int(np.sum(counts)), weights)


def apportion(total, weights):
    """`total` split in proportion to `weights` (int64 array), by
    largest-remainder rounding: the parts add up to exactly `total`."""
    weights = np.asarray(weights, np.float64)
    raw = weights / weights.sum() * total
    parts = np.floor(raw).astype(np.int64)
    parts[np.argsort(-(raw - parts), kind="stable")[: total - parts.sum()]] += 1
    return parts
