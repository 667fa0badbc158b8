"""Tab-separated task files, read line by line with `file:line` errors.

Shared by every reader of labelled task data (NLI pairs for the transfer
suite and XNLI, SIB-200 topics, CoNLL-style tagged words), so a malformed
line gets the same message whichever reader meets it.

Example:
```python
for number, (premise, hypothesis, label) in tsv_fields("snli-train.tsv",
                                                       ("premise", "hypothesis", "label")):
    ...
```
"""

import os

NLI_LABELS = ("entailment", "neutral", "contradiction")


def tsv_lines(path):
    """(line number, line without its end) of a UTF-8 file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file.")
    with open(path, encoding="utf-8", newline="") as f:
        for number, line in enumerate(f, 1):
            yield number, line.rstrip("\n").rstrip("\r")


def tsv_fields(path, columns):
    """(line number, fields) of each non-blank line, which must have exactly
    `len(columns)` tab-separated fields (the error names them)."""
    for number, line in tsv_lines(path):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != len(columns):
            raise ValueError(f"{path}:{number}: expected {'<TAB>'.join(columns)}, "
                             f"found {len(fields)} field(s).")
        yield number, fields


def nli_rows(path, labels=NLI_LABELS):
    """[(premise, hypothesis, label, "file:line")] of a premise/hypothesis/label TSV."""
    rows = []
    for number, (premise, hypothesis, label) in tsv_fields(
            path, ("premise", "hypothesis", "label")):
        if label not in labels:
            raise ValueError(f"{path}:{number}: label {label!r} is not one of {labels}.")
        if not premise.strip() or not hypothesis.strip():
            raise ValueError(f"{path}:{number}: empty premise or hypothesis.")
        rows.append((premise, hypothesis, label, f"{path}:{number}"))
    return rows
