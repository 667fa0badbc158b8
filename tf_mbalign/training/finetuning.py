"""Fine-tuning an encoder plus a new head on a downstream task.

One loop for XNLI and MLQA: batches of dynamically padded inputs, AdamW with
warm-up and linear decay, a separate (higher) learning rate for the new head,
global-norm clipping, and the word-embedding matrix frozen by default; and one
per-seed loop (`run_per_seed`): every seed fine-tunes from the same start.

Why freeze the word embeddings: in zero-shot transfer only English tokens get
gradients, so fine-tuning moves English rows of the (tied, 250k x 384 for
e5) embedding matrix away from the other languages' rows that alignment just
brought together; it is also most of the parameters (96M of 118M in e5-small),
whose dense AdamW update dominated the CPU step time.

Example:
```python
tuner = FineTuner(model, loss_fn, FinetuneConfig(learning_rate=3e-5), 300, first_batch)
for batch, labels in batches:
    loss = tuner.train_step(batch, labels)
```
"""

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from tf_mbalign.data.dynamic_padding import length_grouped_batches, pad_rows
from tf_mbalign.training.optimization import create_optimizer

WORD_EMBEDDING = "token_embedding/embeddings"
UNUSED = "pooled_dense/"  # The task heads read sequence_output, not the pooler.


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """Optimization settings of one fine-tuning run."""

    learning_rate: float = 3e-5
    head_learning_rate: float = 1e-3
    batch_size: int = 32
    epochs: float = 3.0
    max_steps: int = 0  # > 0: exactly this many steps (overrides epochs)
    warmup_fraction: float = 0.1
    weight_decay: float = 0.01
    max_gradient_norm: float = 1.0
    freeze_word_embeddings: bool = True
    dropout: float = 0.1

    def total_steps(self, examples):
        if self.max_steps > 0:
            return self.max_steps
        return max(1, int(round(self.epochs * examples / self.batch_size)))


class FineTuner:
    """Owns the optimizers and the compiled step of one fine-tuning run.

    Args:
        model: a Keras model with `.encoder` and `.head_variables()`.
        loss_fn: (labels, model outputs) -> scalar float32 loss.
        config: a `FinetuneConfig`.
        total_steps: steps of the learning-rate schedule.
        sample_inputs: a batch of inputs that builds the new head.
    """

    def __init__(self, model, loss_fn, config, total_steps, sample_inputs):
        model(sample_inputs, training=False)  # Creates the head's weights.
        self.model = model
        self.loss_fn = loss_fn
        self.config = config
        head = model.head_variables()
        head_ids = {id(v) for v in head}
        self.encoder_variables = [
            v for v in model.trainable_variables
            if id(v) not in head_ids and UNUSED not in v.path
            and not (config.freeze_word_embeddings and v.path.endswith(WORD_EMBEDDING))
        ]
        self.head_variables = head
        warmup = int(config.warmup_fraction * total_steps)
        self.optimizer = create_optimizer(config.learning_rate, total_steps, warmup,
                                          config.weight_decay, name="encoder_adamw")
        self.head_optimizer = create_optimizer(config.head_learning_rate, total_steps, warmup,
                                               config.weight_decay, name="head_adamw")
        self.optimizer.build(self.encoder_variables)
        self.head_optimizer.build(self.head_variables)
        # No autograph: nothing here branches on tensors, and converting the
        # Keras layers reached from the step only costs start-up time.
        self._train_step = tf.function(self._step, reduce_retracing=True, autograph=False)
        self._predict = tf.function(lambda x: model(x, training=False), reduce_retracing=True,
                                    autograph=False)

    def _step(self, inputs, labels):
        variables = self.encoder_variables + self.head_variables
        with tf.GradientTape() as tape:
            loss = self.loss_fn(labels, self.model(inputs, training=True))
        gradients = tape.gradient(loss, variables)
        if self.config.max_gradient_norm > 0:
            gradients, _ = tf.clip_by_global_norm(gradients, self.config.max_gradient_norm)
        n = len(self.encoder_variables)
        self.optimizer.apply_gradients(zip(gradients[:n], variables[:n]))
        self.head_optimizer.apply_gradients(zip(gradients[n:], variables[n:]))
        return loss

    def train_step(self, inputs, labels):
        """One update; returns the loss as a Python float."""
        return float(self._train_step(inputs, labels))

    def predict(self, inputs):
        return self._predict(inputs)

    def fit(self, rows, labels_at, pad_id, steps, rng, progress=True):
        """`steps` updates over shuffled, length-grouped batches of `rows`.

        Args:
            rows: token-id lists.
            labels_at: callable, batch row indices -> the batch's labels.
            pad_id: the tokenizer's padding id.
            steps: number of updates (epochs repeat as needed).
            rng: `np.random.RandomState` for the order.
            progress: show a Keras progress bar.

        Returns:
            the loss of every step.
        """
        bar = keras.utils.Progbar(steps, stateful_metrics=["loss"], verbose=int(progress))
        lengths = [len(r) for r in rows]
        losses = []
        while len(losses) < steps:
            for index in length_grouped_batches(lengths, self.config.batch_size, rng):
                losses.append(self.train_step(pad_rows([rows[i] for i in index], pad_id),
                                              labels_at(index)))
                bar.update(len(losses), [("loss", float(np.mean(losses[-20:])))])
                if len(losses) == steps:
                    break
        return losses


def fine_tune(model, loss_fn, config, rows, labels_at, pad_id, rng, progress=True):
    """Builds a `FineTuner` for `rows` and trains it for `config.total_steps`.

    Args:
        model: a Keras model with `.encoder` and `.head_variables()`.
        loss_fn: (labels, model outputs) -> scalar float32 loss.
        config: a `FinetuneConfig`.
        rows: the training inputs, token-id lists.
        labels_at: callable, batch row indices -> the batch's labels.
        pad_id: the tokenizer's padding id.
        rng: `np.random.RandomState` for the batch order.
        progress: show a Keras progress bar.

    Returns:
        (the trained `FineTuner`, the loss of every step).
    """
    steps = config.total_steps(len(rows))
    tuner = FineTuner(model, loss_fn, config, steps, pad_rows(rows[:2], pad_id))
    return tuner, tuner.fit(rows, labels_at, pad_id, steps, rng, progress)


@dataclasses.dataclass
class SeedRun:
    """One seed's fine-tuning and evaluation.

    Attributes:
        losses: the training loss of every step.
        scores: {metric: {row: value}}, e.g. {"accuracy": {"de": 0.71}}.
        sizes: what the run trained on, for the report, e.g.
            {"train_examples": 1660, "steps": 156}.
    """

    losses: list
    scores: dict
    sizes: dict


@dataclasses.dataclass
class SeedRuns:
    """All seeds of a task.

    Attributes:
        scores: {metric: {row: [value per seed]}} (`reports.summarize`'s input).
        training_loss: `loss_summary` of the seeds' losses.
        sizes: the last seed's `SeedRun.sizes`.
    """

    scores: dict
    training_loss: dict
    sizes: dict


def run_per_seed(seeds, encoder, tokenizer, run_seed):
    """Fine-tunes and evaluates once per seed, each seed from the same start.

    Before each seed, `start_seed` seeds Keras/TF, puts the encoder's initial
    weights back and makes a fresh tokenizer; afterwards the encoder has its
    initial weights again.

    Args:
        seeds: the fine-tuning seeds.
        encoder: the encoder the task model fine-tunes.
        tokenizer: its tokenizer.
        run_seed: (seed, fresh tokenizer, `np.random.RandomState(seed)`) ->
            a `SeedRun`.

    Returns:
        a `SeedRuns`.

    Raises:
        ValueError: no seeds.
    """
    if not seeds:
        raise ValueError("no fine-tuning seeds: give at least one.")
    initial_weights = encoder.get_weights()
    runs = []
    try:
        for seed in seeds:
            seed_tokenizer, rng = start_seed(seed, encoder, initial_weights, tokenizer)
            runs.append(run_seed(seed, seed_tokenizer, rng))
    finally:
        encoder.set_weights(initial_weights)
    return SeedRuns(_scores_per_seed(runs), loss_summary([run.losses for run in runs]),
                    runs[-1].sizes)


def _scores_per_seed(runs):
    """{metric: {row: [value of each run]}}, rows in the first run's order."""
    return {metric: {row: [run.scores[metric][row] for run in runs] for row in rows}
            for metric, rows in runs[0].scores.items()}


def start_seed(seed, encoder, initial_weights, tokenizer):
    """The same start for every seed: seeded Keras/TF, the encoder's initial
    weights, a fresh tokenizer (reseeding frees SentencePiece's resource, see
    `SubwordTokenizer.after_reseed`). Returns (tokenizer, numpy RandomState)."""
    keras.utils.set_random_seed(seed)
    encoder.set_weights(initial_weights)
    return tokenizer.after_reseed(), np.random.RandomState(seed)


def loss_summary(losses_per_seed):
    """Mean training loss of the first and last 20 steps of each seed's run."""
    return {"first_20": [float(np.mean(x[:20])) for x in losses_per_seed],
            "last_20": [float(np.mean(x[-20:])) for x in losses_per_seed]}


def classification_loss(labels, logits):
    return tf.reduce_mean(
        keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
    )


def span_loss(labels, outputs):
    start_logits, end_logits = outputs
    start = keras.losses.sparse_categorical_crossentropy(
        labels["start_positions"], start_logits, from_logits=True)
    end = keras.losses.sparse_categorical_crossentropy(
        labels["end_positions"], end_logits, from_logits=True)
    return tf.reduce_mean(start + end) / 2.0
