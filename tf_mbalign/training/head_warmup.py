"""The head warm-up, measured: how well the new MLM head predicts when the encoder starts.

A checkpoint without an MLM head (e5-small, most sentence encoders) gets a new
head, trained alone for `--head_warmup_steps` before the encoder trains
(`AlignmentStep` with `train_encoder=False`). At the warm-up's last step the
trainer measures the head on the warm-up's own last batches, rebuilt from
their data positions (every example is a pure function of the run's seed and
its position, `data/pipeline.py`): TLM accuracy over their masked tokens with
dropout off. It is logged (metrics.jsonl, TensorBoard) and lands in
summary.json, so a run shows whether TLM trained the encoder against a head
that predicts something or against noise.

Example:
```python
measured = measure_head_warmup(aligner, corpus, tokenizer, pipeline_config,
                               global_batch_size=16, examples_consumed=800, warmup_steps=50)
measured["head_warmup_tlm_accuracy"]  # e.g. 0.31
```
"""

import tensorflow as tf

from tf_mbalign.data import training_input

# The warm-up's last batches (at most this many) that the measurement replays.
CHECK_BATCHES = 10


def last_warmup_batches(corpus, tokenizer, pipeline_config, global_batch_size,
                        examples_consumed, warmup_steps):
    """The warm-up's last `min(CHECK_BATCHES, warmup_steps)` global batches,
    exactly as it trained on them (`examples_consumed`: the data position at
    the warm-up's end)."""
    count = min(CHECK_BATCHES, warmup_steps)
    first = examples_consumed - count * global_batch_size
    return training_input.build_dataset(corpus, tokenizer, pipeline_config, global_batch_size,
                                        start_example=first).take(count)


def tlm_accuracy(aligner, batches):
    """(accuracy, masked tokens, batches) of the MLM head over `batches`,
    dropout off."""
    counts = tf.function(aligner.tlm_counts)
    correct = tokens = 0.0
    seen = 0
    for batch in batches:
        batch_correct, batch_tokens = counts(batch)
        correct += float(batch_correct)
        tokens += float(batch_tokens)
        seen += 1
    return (correct / tokens if tokens else 0.0), int(tokens), seen


def measure_head_warmup(aligner, corpus, tokenizer, pipeline_config, global_batch_size,
                        examples_consumed, warmup_steps):
    """The metrics the trainer logs at the warm-up's last step:
    `head_warmup_tlm_accuracy`, `head_warmup_check_tokens`,
    `head_warmup_check_batches`."""
    accuracy, tokens, seen = tlm_accuracy(aligner, last_warmup_batches(
        corpus, tokenizer, pipeline_config, global_batch_size, examples_consumed,
        warmup_steps))
    return {"head_warmup_tlm_accuracy": round(accuracy, 6),
            "head_warmup_check_tokens": tokens,
            "head_warmup_check_batches": seen}
