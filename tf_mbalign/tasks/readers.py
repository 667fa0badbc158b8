"""Readers of the suite's file formats; every error names `file:line`.

- Sentence pairs (NLI): `premise<TAB>hypothesis<TAB>label`, one example a line.
- Tagged words (NER, POS; CoNLL style): `token<TAB>tag` a line, a blank line
  ends a sentence.
- Topics (SIB-200): `index_id<TAB>category<TAB>text`, with or without that
  header line.
- Test languages: `test-XX.tsv` (else `dev-XX.tsv`) in a folder; XX is
  whatever the file says, so the languages are the files present
  (`test_files`, listed by `tf_mbalign.data.language_files`).
"""

import dataclasses
import re

from tf_mbalign.data.language_files import FileLayout, find_language_files
from tf_mbalign.data.tsv_files import NLI_LABELS, nli_rows, tsv_fields, tsv_lines

_ENTITY_TAG = re.compile(r"^(O|[BI]-\S+)$")
_ANY_TAG = re.compile(r"^\S+$")
TEST_FILES = FileLayout(
    re.compile(r"^(?P<split>test|dev)-(?P<language>[A-Za-z][A-Za-z_-]*)\.tsv$"),
    "test-XX.tsv (or dev-XX.tsv)", expected=lambda language: f"test-{language}.tsv")
_TOPIC_HEADER = ("index_id", "category", "text")


@dataclasses.dataclass(frozen=True)
class PairExample:
    premise: str
    hypothesis: str
    label: str
    source: str  # "file:line"


@dataclasses.dataclass(frozen=True)
class TaggedSentence:
    words: tuple
    tags: tuple
    source: str  # "file:line" of the first word


@dataclasses.dataclass(frozen=True)
class TopicExample:
    text: str
    category: str
    source: str


def read_pairs(path, labels=NLI_LABELS):
    """[PairExample] of a premise/hypothesis/label TSV."""
    return _non_empty([PairExample(*row) for row in nli_rows(path, labels)], path)


def read_tagged(path, entity_tags=False):
    """[TaggedSentence] of a `token<TAB>tag` file; `entity_tags`: tags are O / B-X / I-X."""
    pattern = _ENTITY_TAG if entity_tags else _ANY_TAG
    sentences, words, tags, start = [], [], [], 0
    for number, line in tsv_lines(path):
        if not line.strip():
            if words:
                sentences.append(TaggedSentence(tuple(words), tuple(tags), f"{path}:{start}"))
            words, tags = [], []
            continue
        fields = line.split("\t")
        if len(fields) != 2:
            raise ValueError(f"{path}:{number}: expected token<TAB>tag, found {len(fields)} "
                             "field(s).")
        word, tag = fields
        if not word.strip():
            raise ValueError(f"{path}:{number}: empty token.")
        if not pattern.match(tag):
            expected = "O, B-TYPE or I-TYPE" if entity_tags else "a tag without spaces"
            raise ValueError(f"{path}:{number}: tag {tag!r} is not {expected}.")
        if not words:
            start = number
        words.append(word)
        tags.append(tag)
    if words:
        sentences.append(TaggedSentence(tuple(words), tuple(tags), f"{path}:{start}"))
    return _non_empty(sentences, path)


def read_topics(path):
    """[TopicExample] of an `index_id<TAB>category<TAB>text` file."""
    examples = []
    for number, fields in tsv_fields(path, _TOPIC_HEADER):
        if number == 1 and tuple(fields) == _TOPIC_HEADER:
            continue
        _, category, text = fields
        if not category.strip() or not text.strip():
            raise ValueError(f"{path}:{number}: empty category or text.")
        examples.append(TopicExample(text, category, f"{path}:{number}"))
    return _non_empty(examples, path)


def _non_empty(examples, path):
    if not examples:
        raise ValueError(f"{path}: no examples.")
    return examples


def check_labels(examples, label_of, known, path_hint):
    """Raises with the example's file:line when a label was never seen in training."""
    for example in examples:
        for label in label_of(example):
            if label not in known:
                raise ValueError(f"{example.source}: label {label!r} does not occur in the "
                                 f"training file {path_hint}.")


def test_files(directory):
    """{language: path} of `test-XX.tsv` files (`dev-XX.tsv` where no test file), by
    language; {} when `directory` is absent or holds neither."""
    try:
        splits = find_language_files(directory, TEST_FILES)
    except FileNotFoundError:
        return {}
    return {language: paths.get("test", paths.get("dev")) for language, paths in splits.items()}
