"""Tatoeba-style retrieval as a callback: alignment, per language, as it trains."""

import os

import keras
import tensorflow as tf

from tf_mbalign.evaluation.retrieval import evaluate_retrieval, read_bitext_dir
from tf_mbalign.evaluation.sentence_embedding import SentenceEmbedder
from tf_mbalign.training.callbacks import TrainingCallback


class RetrievalCallback(keras.callbacks.Callback, TrainingCallback):
    """Evaluates retrieval every `every_n_steps` and logs it to TensorBoard.

    Works with `model.fit` (steps = batches) and as a `TrainingCallback` of
    tf_mbalign's alignment run (`--retrieval_data`; `for_alignment_run`): it
    evaluates before the first step of a fresh run and at every multiple of
    `every_n_steps`, on the chief only. Scalars: `retrieval/xx_to_en/<lang>`,
    `retrieval/en_to_xx/<lang>` and the averages; they are also added to
    `logs`, so they reach metrics.jsonl.

    Args:
        data_dir: a directory of `XX-en.XX` / `XX-en.en` files.
        tokenizer: the model's tokenizer (None: the alignment run's, set
            when the run starts).
        log_dir: TensorBoard directory (None: only `logs`).
        every_n_steps: evaluation period in steps.
        max_pairs: pairs per language (the first ones), for speed.
        languages: restrict to these languages (default: all found).
        pooling, layer, max_length: the sentence representation (pooling or
            layer None: the alignment run's, known when it starts).
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
        # Created at the first evaluation: creating it here would start the
        # TensorFlow runtime before a multi-worker strategy is configured.
        self.writer = None
        self.history = []
        self._embedder = None
        self._batches_seen = 0
        self.active = True

    @classmethod
    def for_alignment_run(cls, config):
        """The in-training retrieval of a `TrainConfig` (`--retrieval_data`,
        `--retrieval_every`, `--retrieval_pairs`); reads the data now, so a
        wrong path fails before training starts. A pooling or layer left to
        the checkpoint is the run's once it starts."""
        return cls(
            config.retrieval_data, None, log_dir=os.path.join(config.model_dir, "tensorboard"),
            every_n_steps=config.retrieval_every or config.checkpoint_every,
            max_pairs=config.retrieval_pairs, pooling=config.pooling,
            layer=config.representation_layer, max_length=config.max_sentence_length,
        )

    # === TrainingCallback ===

    @property
    def loop_boundary_every(self):
        return self.every_n_steps

    def on_run_start(self, run, start_step):
        self.active = run.chief
        if not self.active:
            return
        self.tokenizer = self.tokenizer or run.bundle.tokenizer
        self.pooling = self.pooling or run.config.pooling
        if self.layer is None:
            self.layer = run.config.representation_layer
        self.set_model(run.aligner)
        self._embedder = None
        if start_step == 0:
            self.evaluate(0)  # Where alignment starts from.

    def on_loop_end(self, step, logs):
        if self.active:
            self.on_train_batch_end(step, logs)

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
        if self.writer is None and self.log_dir:
            self.writer = tf.summary.create_file_writer(self.log_dir)
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
