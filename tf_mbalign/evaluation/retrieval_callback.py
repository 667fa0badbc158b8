"""Tatoeba-style retrieval as a Keras callback: alignment, per language, as it trains."""

import keras
import tensorflow as tf

from tf_mbalign.evaluation.retrieval import evaluate_retrieval, read_bitext_dir
from tf_mbalign.evaluation.sentence_embedding import SentenceEmbedder


class RetrievalCallback(keras.callbacks.Callback):
    """Evaluates retrieval every `every_n_steps` and logs it to TensorBoard.

    Works with `model.fit` (steps = batches) and with tf_mbalign's alignment
    loop (`--retrieval_data`), which calls `on_train_batch_end(step, logs)`
    with the global step. Scalars: `retrieval/xx_to_en/<lang>`,
    `retrieval/en_to_xx/<lang>` and the averages; they are also added to
    `logs`, so they reach metrics.jsonl.

    Args:
        data_dir: a directory of `XX-en.XX` / `XX-en.en` files.
        tokenizer: the model's tokenizer.
        log_dir: TensorBoard directory (None: only `logs`).
        every_n_steps: evaluation period in steps.
        max_pairs: pairs per language (the first ones), for speed.
        languages: restrict to these languages (default: all found).
        pooling, layer, max_length: the sentence representation.
        encoder: the encoder to embed with; default `model.encoder`.

    Example:
    ```python
    callback = RetrievalCallback("../shared/data/tatoeba", tokenizer, "runs/x/tensorboard",
                                 every_n_steps=100, max_pairs=200)
    aligner.fit(dataset, callbacks=[callback])
    ```
    """

    def __init__(self, data_dir, tokenizer, log_dir=None, every_n_steps=100, max_pairs=200,
                 languages=None, pooling="cls", layer=-1, max_length=64, encoder=None):
        super().__init__()
        self.data_dir = data_dir
        self.tokenizer = tokenizer
        self.log_dir = log_dir
        self.every_n_steps = every_n_steps
        self.max_pairs = max_pairs
        self.languages = languages
        self.pooling = pooling
        self.layer = layer
        self.max_length = max_length
        self.encoder = encoder
        self.data = read_bitext_dir(data_dir, languages, max_pairs)  # Fail early.
        self.writer = tf.summary.create_file_writer(log_dir) if log_dir else None
        self.history = []
        self._embedder = None
        self._batches_seen = 0

    def evaluate(self, step):
        if self._embedder is None:
            self._embedder = SentenceEmbedder(
                self.encoder or self.model.encoder, self.tokenizer, self.pooling, self.layer,
                self.max_length,
            )
        results = evaluate_retrieval(self._embedder, self.data)
        scalars = {}
        for language, row in results["languages"].items():
            scalars[f"retrieval/xx_to_en/{language}"] = row["xx_to_en"]
            scalars[f"retrieval/en_to_xx/{language}"] = row["en_to_xx"]
        for key, value in results["average"].items():
            scalars[f"retrieval/{key}/average"] = value
        if self.writer is not None:
            with self.writer.as_default(step=step):
                for name, value in scalars.items():
                    tf.summary.scalar(name, value)
            self.writer.flush()
        self.history.append({"step": int(step), **scalars})
        return scalars

    def on_train_begin(self, logs=None):
        self._embedder = None  # The model may have changed since construction.

    def on_train_batch_end(self, batch, logs=None):
        # `fit` passes the batch index within the epoch; count steps here.
        self._batches_seen += 1
        step = int(logs["step"]) if logs and "step" in logs else self._batches_seen
        if step > 0 and step % self.every_n_steps == 0:
            scalars = self.evaluate(step)
            if logs is not None:
                logs.update(scalars)
