"""A directory of per-language files: find them, select the requested languages.

Every reader of a per-language directory (the parallel corpus, Tatoeba
bitexts, XNLI, MLQA) names its files by a pattern, e.g. `en-XX.tsv`. This
module lists such a directory once, the same way for all of them, and raises
one clear error when a requested language has no file: the directory, the
missing languages, the file names it expected and the languages it found.

Example:
```python
layout = FileLayout(re.compile(r"^en-(?P<language>[a-z]+)\\.tsv$"), "en-XX.tsv",
                    expected=lambda language: f"en-{language}.tsv")
paths = find_language_files("corpus_dir", layout, languages=["de", "fr"])
# {"de": "corpus_dir/en-de.tsv", "fr": "corpus_dir/en-fr.tsv"}
```
"""

import dataclasses
import os
import re
from typing import Callable

SPLIT = "split"


@dataclasses.dataclass(frozen=True)
class FileLayout:
    """How a directory names its per-language files.

    Attributes:
        pattern: a compiled regex matched against whole file names. Its named
            groups other than `split` form the key of a file: one group gives
            a string (a language), several a tuple (e.g. context and question
            language). An optional group `split` names the file's part
            (`dev`, `train`, `test`).
        names: the file names in words, for messages, e.g. `"en-XX.tsv"`.
        expected: key -> the file name(s) expected for it, for messages.
        example: a directory with this layout, for messages ("" = none).
        what: what a key is, for messages.
    """

    pattern: re.Pattern
    names: str
    expected: Callable
    example: str = ""
    what: str = "language"

    def key(self, match):
        """The key of a matching file name: its language(s)."""
        groups = [name for name in self.pattern.groupindex if name != SPLIT]
        values = tuple(match.group(name) for name in groups)
        return values[0] if len(values) == 1 else values


def key_name(key):
    """A key as written in messages: `de`, or `de-en` for a tuple."""
    return key if isinstance(key, str) else "-".join(key)


def find_language_files(directory, layout, languages=None, none_found=FileNotFoundError):
    """The files of `directory` that match `layout`, by key.

    Args:
        directory: the directory to list.
        layout: a `FileLayout`.
        languages: the keys wanted, in the order wanted; empty or None: all
            keys found, sorted.
        none_found: the exception type raised when no file matches and no
            key was requested.

    Returns:
        {key: path}, or {key: {split: path}} when the pattern has a `split`
        group.

    Raises:
        FileNotFoundError: `directory` does not exist, or a requested key has
            no file (the message names the directory, the missing keys, the
            expected file names and the keys found).
        none_found: no key was requested and no file in `directory` matches
            the layout.
    """
    if not os.path.isdir(directory):
        example = f", e.g. {layout.example}" if layout.example else ""
        raise FileNotFoundError(
            f"{directory}: no such directory (expected {layout.names} files{example}).")
    found = _files_by_key(directory, layout)
    if languages:
        _check_requested(directory, layout, languages, found)
        return {key: found[key] for key in languages}
    if not found:
        raise none_found(f"{directory}: no {layout.names} files.")
    return dict(sorted(found.items()))


def _check_requested(directory, layout, languages, found):
    missing = [key for key in languages if key not in found]
    if missing:
        raise FileNotFoundError(
            f"{directory}: no file for {layout.what}(s) {[key_name(k) for k in missing]}; "
            f"expected {', '.join(layout.expected(k) for k in missing)}; found "
            f"{layout.what}(s) {[key_name(k) for k in sorted(found)]}.")


def _files_by_key(directory, layout):
    files = {}
    for name in sorted(os.listdir(directory)):
        match = layout.pattern.match(name)
        if not match:
            continue
        path = os.path.join(directory, name)
        if SPLIT in layout.pattern.groupindex:
            files.setdefault(layout.key(match), {})[match.group(SPLIT)] = path
        else:
            files[layout.key(match)] = path
    return files
