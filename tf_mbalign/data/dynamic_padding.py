"""Batches of token-id rows padded to the longest row of each batch.

Evaluation and fine-tuning see sentences of very different lengths; padding
every batch to the model's maximum wastes most of the compute on [PAD]. Rows
are grouped by length (sorted for inference; sorted within shuffled windows
for training, so batches stay random) and each batch is padded only to its
own longest row, rounded up to a multiple of 8.

Example:
```python
for index in length_grouped_batches([len(r) for r in rows], batch_size=32):
    batch = pad_rows([rows[i] for i in index], pad_id=0)
```
"""

import numpy as np


def pad_rows(rows, pad_id, multiple=8):
    """int32 `token_ids`, `padding_mask`, `segment_ids` [len(rows), width]."""
    width = max(len(r) for r in rows)
    width = -(-width // multiple) * multiple
    ids = np.full((len(rows), width), pad_id, np.int32)
    mask = np.zeros((len(rows), width), np.int32)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return {"token_ids": ids, "padding_mask": mask, "segment_ids": np.zeros_like(ids)}


def length_grouped_batches(lengths, batch_size, rng=None, window_batches=50):
    """Lists of row indices, each a batch of rows of similar length.

    Args:
        lengths: the rows' lengths.
        batch_size: rows per batch (the last batch may be smaller).
        rng: a `np.random.RandomState` for training order; None = inference
            order (all rows sorted by length, every row exactly once).
        window_batches: with `rng`, rows are shuffled, then sorted within
            windows of `window_batches * batch_size` rows; batches are
            shuffled at the end.
    """
    lengths = np.asarray(lengths)
    if rng is None:
        order = np.argsort(lengths, kind="stable")
        return [order[i: i + batch_size] for i in range(0, len(order), batch_size)]
    order = rng.permutation(len(lengths))
    window = batch_size * window_batches
    batches = []
    for start in range(0, len(order), window):
        chunk = order[start: start + window]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i: i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches
