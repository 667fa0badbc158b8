"""Tatoeba-style bitext retrieval (XTREME protocol), both directions.

For each language XX, line i of `XX-en.XX` translates line i of `XX-en.en`.
Both sides are embedded (L2-normalized, so a dot product is the cosine);
XX->en accuracy is the share of XX rows whose nearest English row is the same
line, en->XX the reverse. Any directory with that layout works, for any
languages; a test set may also take its languages from several such
directories (`bitext_files`, `read_bitext_files`).

Example:
```python
data = read_bitext_dir("../shared/data/tatoeba")
xx_to_en, en_to_xx = retrieval_accuracy(embed(data["de"].foreign), embed(data["de"].english))
```
"""

import dataclasses
import os
import re

import numpy as np

from tf_mbalign.data.language_files import FileLayout, find_language_files

_FILES = FileLayout(re.compile(r"^(?P<language>[A-Za-z][A-Za-z_-]*)-en\.(?P=language)$"),
                    "XX-en.XX and XX-en.en",
                    expected=lambda language: f"{language}-en.{language} and {language}-en.en",
                    example="../shared/data/tatoeba")


@dataclasses.dataclass
class Bitext:
    """Line-aligned sentences: `foreign[i]` translates `english[i]`."""

    language: str
    foreign: list
    english: list


def _read_lines(path):
    with open(path, encoding="utf-8", newline="") as f:
        text = f.read()
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]


def read_bitext_dir(data_dir, languages=None, max_pairs=None):
    """{language: Bitext} from `XX-en.XX` / `XX-en.en` files in `data_dir`."""
    found = find_language_files(data_dir, _FILES, languages)
    data = {}
    for language in sorted(found):
        foreign_path = found[language]
        english_path = os.path.join(data_dir, f"{language}-en.en")
        if not os.path.isfile(english_path):
            raise FileNotFoundError(f"{foreign_path} has no English side {english_path}.")
        foreign, english = _read_lines(foreign_path), _read_lines(english_path)
        if len(foreign) != len(english):
            raise ValueError(
                f"{foreign_path} has {len(foreign)} lines but {english_path} has "
                f"{len(english)}: line i of one must translate line i of the other."
            )
        for path, lines in ((foreign_path, foreign), (english_path, english)):
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    raise ValueError(f"{path}:{number}: empty line; remove the pair "
                                     "from both files.")
        if max_pairs:
            foreign, english = foreign[:max_pairs], english[:max_pairs]
        data[language] = Bitext(language, foreign, english)
    return data


def bitext_files(data_dir, languages=None):
    """{language: path of `XX-en.XX`} of `data_dir`, each pair of files read and checked
    (`read_bitext_dir`, whose errors it raises)."""
    return {language: os.path.join(data_dir, f"{language}-en.{language}")
            for language in read_bitext_dir(data_dir, languages)}


def read_bitext_files(foreign_paths, max_pairs=None):
    """{language: Bitext} of `{language: path of XX-en.XX}`, the files in any directories
    (the English side beside each, `XX-en.en`); languages in the order given."""
    by_directory = {}
    for language, path in foreign_paths.items():
        by_directory.setdefault(os.path.dirname(path), []).append(language)
    data = {}
    for directory, languages in by_directory.items():
        data.update(read_bitext_dir(directory, languages, max_pairs))
    return {language: data[language] for language in foreign_paths}


def retrieval_accuracy(foreign_vectors, english_vectors):
    """(XX->en, en->XX) top-1 accuracy of L2-normalized, line-aligned vectors."""
    similarity = foreign_vectors @ english_vectors.T
    gold = np.arange(len(foreign_vectors))
    return (float(np.mean(np.argmax(similarity, axis=1) == gold)),
            float(np.mean(np.argmax(similarity, axis=0) == gold)))


def evaluate_retrieval(embedder, data):
    """Per-language accuracies and their averages.

    Args:
        embedder: callable, list of sentences -> L2-normalized vectors
            (e.g. `SentenceEmbedder`).
        data: {language: Bitext} (`read_bitext_dir`).

    Returns:
        {"languages": {xx: {"xx_to_en", "en_to_xx", "pairs"}},
         "average": {"xx_to_en", "en_to_xx"}}
    """
    results = {}
    for language, bitext in data.items():
        xx_to_en, en_to_xx = retrieval_accuracy(embedder(bitext.foreign), embedder(bitext.english))
        results[language] = {"xx_to_en": xx_to_en, "en_to_xx": en_to_xx,
                             "pairs": len(bitext.foreign)}
    average = {key: float(np.mean([r[key] for r in results.values()]))
               for key in ("xx_to_en", "en_to_xx")}
    return {"languages": results, "average": average}
