"""The alignment training run: build inputs, model, optimizers; loop; save.

A custom loop of `strategy.run(aligner.train_step, ...)` inside a
`tf.function` instead of `Model.fit`, because Keras 3 `fit` fails under
MultiWorkerMirroredStrategy (keras-team/keras#20585); the same loop serves
every strategy. `Aligner.train_step` is the ordinary Keras hook, so the model
also trains with `fit` on one device.

Resume order: the latest checkpoint in `model_dir/checkpoints` -> from the
pretrained encoder. A checkpoint holds the model (encoder, MLM head, key
encoder, key queue and its pointer), both optimizers, the step and the data
position (`examples_consumed`); the input pipeline is rebuilt from the data
position, so a resumed run sees exactly the batches an uninterrupted run sees.
"""

import json
import os
import sys
import time

import keras
import tensorflow as tf

from tf_mbalign import distribute
from tf_mbalign.data import corpus as corpus_lib
from tf_mbalign.data import pipeline
from tf_mbalign.modeling import encoders
from tf_mbalign.modeling.aligner import Aligner
from tf_mbalign.modeling.bert_encoder import dropout_rng_states
from tf_mbalign.training import optimization

METRICS_FILE = "metrics.jsonl"


def _write_atomic(path, text):
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def build_aligner(config, bundle):
    """The Aligner and its two optimizers (call inside `strategy.scope()`)."""
    aligner = Aligner(
        bundle.encoder,
        queue_size=config.queue_size,
        momentum=config.momentum,
        temperature=config.temperature,
        contrastive_weight=config.contrastive_weight,
        representation_layer=config.representation_layer,
        pooling=config.pooling,
        projection_dim=config.projection_dim,
        max_gradient_norm=config.max_gradient_norm,
        name="aligner",
    )
    if bundle.mlm_head_weights is not None:
        encoders.set_mlm_head_weights(aligner.mlm_head, bundle.mlm_head_weights)
    optimizer = optimization.create_optimizer(
        config.learning_rate, config.train_steps, config.warmup_steps,
        config.weight_decay, config.precision, name="adamw",
    )
    head_optimizer = optimization.create_optimizer(
        config.head_learning_rate, max(config.head_warmup_steps, 1), 0, 0.0,
        config.precision, name="head_adamw",
    )
    aligner.compile(optimizer=optimizer)
    aligner.head_optimizer = head_optimizer
    optimizer.build(aligner.trainable_variables)
    head_optimizer.build(aligner.head_only_variables())
    return aligner


_SHOWN = ("loss", "tlm_loss", "tlm_accuracy", "moco_loss", "moco_accuracy", "queue_fill")


class _Progress:
    """A Keras progress bar, or plain log lines with --quiet."""

    def __init__(self, total, start, quiet, enabled):
        self.quiet, self.enabled, self.start_time = quiet, enabled, time.time()
        self.bar = None
        if enabled and not quiet:
            # Stateful: the bar shows each logged value, not a running mean.
            self.bar = keras.utils.Progbar(total, stateful_metrics=list(_SHOWN), unit_name="step")
            if start:
                self.bar.update(start)

    def update(self, step, logs):
        if not self.enabled:
            return
        shown = [(k, logs[k]) for k in _SHOWN if k in logs]
        if self.bar is not None:
            self.bar.update(step, values=shown, finalize=False)
        else:
            text = " ".join(f"{k}={v}" if isinstance(v, int) else f"{k}={v:.4f}"
                            for k, v in shown)
            print(f"step {step} {text} ({time.time() - self.start_time:.0f}s)", flush=True)


class AlignmentRun:
    """One training run; `run()` trains to `config.total_steps`.

    Args:
        config: a `TrainConfig`.
        log: callable for human-readable messages.
    """

    def __init__(self, config, log=print):
        self.config = config
        self.log = log
        # === Inputs (validated before anything heavy) ===
        self.corpus = corpus_lib.read_corpus(
            config.corpus, max_chars=config.max_chars, languages=list(config.languages) or None
        )
        # The strategy first: multi-worker collectives must be configured
        # before anything initializes the TensorFlow runtime.
        self.strategy = distribute.get_strategy(config.strategy, config.tpu)
        distribute.set_precision(config.precision)
        keras.utils.set_random_seed(config.seed)
        self.chief = distribute.is_chief(self.strategy)
        replicas = self.strategy.num_replicas_in_sync
        if config.global_batch_size % replicas:
            raise ValueError(
                f"--global_batch_size={config.global_batch_size} is not divisible by "
                f"the {replicas} replicas."
            )

        # === Model ===
        with self.strategy.scope():
            self.bundle = encoders.load_encoder(config.encoder, dropout=config.dropout)
            self.aligner = build_aligner(config, self.bundle)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
            self.examples_consumed = tf.Variable(
                0, dtype=tf.int64, trainable=False, name="examples_consumed"
            )
        self.checkpoint = tf.train.Checkpoint(
            model=self.aligner,
            # Dropout RNG states: Keras does not checkpoint them, and without
            # them a resumed run would draw other dropout masks.
            rng_states=dropout_rng_states(self.aligner),
            optimizer=self.aligner.optimizer,
            head_optimizer=self.aligner.head_optimizer,
            step=self.step,
            examples_consumed=self.examples_consumed,
        )
        checkpoint_dir = os.path.join(config.model_dir, "checkpoints")
        if not self.chief:  # Workers must save too (it is collective), elsewhere.
            checkpoint_dir = os.path.join(config.model_dir, "worker_tmp",
                                          f"task_{self.strategy.cluster_resolver.task_id}")
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, checkpoint_dir, max_to_keep=config.keep_checkpoints
        )
        self._functions = {}
        self.retrieval = self._retrieval_callback()  # Reads its data now: fails early.

    # === Checkpoints ===

    def restore(self):
        """Restores the latest checkpoint; returns its path or None."""
        latest = tf.train.latest_checkpoint(os.path.join(self.config.model_dir, "checkpoints"))
        if latest:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
        return latest

    def save(self):
        return self.manager.save(checkpoint_number=int(self.step.numpy()))

    # === Steps ===

    def _loop_function(self, train_encoder):
        if train_encoder in self._functions:
            return self._functions[train_encoder]
        aligner, strategy = self.aligner, self.strategy

        def step_fn(batch):
            aligner.train_encoder = train_encoder  # Read while tracing.
            aligner.train_step(batch)

        if self.config.jit_compile:  # XLA for the step; the iterator stays outside.
            step_fn = tf.function(step_fn, jit_compile=True)

        @tf.function
        def loop(iterator, steps):
            for _ in tf.range(steps):
                strategy.run(step_fn, args=(next(iterator),))

        self._functions[train_encoder] = loop
        return loop

    def _read_metrics(self, train_encoder):
        logs = {m.name: float(m.result()) for m in self.aligner.metrics}
        for m in self.aligner.metrics:
            m.reset_state()
        optimizer = self.aligner.optimizer if train_encoder else self.aligner.head_optimizer
        logs["learning_rate"] = optimization.last_learning_rate(optimizer)
        logs["queue_fill"] = int(self.aligner.key_queue.filled.numpy())
        return logs

    def _trim_metrics_file(self, path, last_step):
        if not os.path.exists(path):
            return
        with open(path, encoding="utf-8") as f:
            kept = [line for line in f if line.strip() and json.loads(line)["step"] <= last_step]
        _write_atomic(path, "".join(kept))

    def _retrieval_callback(self):
        """`--retrieval_data`: per-language retrieval in TensorBoard as it trains."""
        config = self.config
        if not config.retrieval_data or not self.chief:
            return None
        from tf_mbalign.evaluation.retrieval_callback import RetrievalCallback

        callback = RetrievalCallback(
            config.retrieval_data, self.bundle.tokenizer,
            log_dir=os.path.join(config.model_dir, "tensorboard"),
            every_n_steps=config.retrieval_every or config.checkpoint_every,
            max_pairs=config.retrieval_pairs, pooling=config.pooling,
            layer=config.representation_layer, max_length=config.max_sentence_length,
        )
        callback.set_model(self.aligner)
        return callback

    # === The run ===

    def run(self):
        config = self.config
        restored = self.restore()
        start = int(self.step.numpy())
        if self.chief:
            os.makedirs(config.model_dir, exist_ok=True)
            _write_atomic(os.path.join(config.model_dir, "flags.json"), config.to_json() + "\n")
            stats = self.corpus.stats
            self.log(
                f"corpus: {stats.pairs} pairs, languages {self.corpus.language_counts()}, "
                f"{stats.skipped_empty} empty skipped, {stats.truncated} truncated"
            )
            self.log(f"encoder: {self.bundle.source}; "
                     f"{'resumed from ' + restored if restored else 'fresh start'} at step {start}; "
                     f"{self.strategy.num_replicas_in_sync} replica(s)")
        metrics_path = os.path.join(config.model_dir, METRICS_FILE)
        if self.chief:
            self._trim_metrics_file(metrics_path, start)
        writer = (tf.summary.create_file_writer(os.path.join(config.model_dir, "tensorboard"))
                  if self.chief else tf.summary.create_noop_writer())

        dataset = pipeline.distributed_dataset(
            self.strategy, self.corpus, self.bundle.tokenizer, config.pipeline_config(),
            config.global_batch_size, start_example=int(self.examples_consumed.numpy()),
        )
        iterator = iter(dataset)
        retrieval = self.retrieval
        if retrieval is not None and start == 0:
            retrieval.evaluate(0)  # Where alignment starts from.
        retrieval_every = (config.retrieval_every or config.checkpoint_every
                           if config.retrieval_data else 0)
        progress = _Progress(config.total_steps, start, config.quiet, self.chief)
        history = []
        step = start
        while step < config.total_steps:
            train_encoder = step >= config.head_warmup_steps
            boundary = config.head_warmup_steps if not train_encoder else config.total_steps
            n = min(config.steps_per_loop, boundary - step,
                    config.checkpoint_every - step % config.checkpoint_every)
            if retrieval_every:  # Same on every worker (MWMS steps in lockstep).
                n = min(n, retrieval_every - step % retrieval_every)
            self._loop_function(train_encoder)(iterator, tf.constant(n))
            step += n
            self.step.assign(step)
            self.examples_consumed.assign_add(n * config.global_batch_size)
            logs = self._read_metrics(train_encoder)
            logs["step"] = step
            logs["phase"] = "encoder" if train_encoder else "head_warmup"
            if retrieval is not None:
                retrieval.on_train_batch_end(step, logs)
            history.append(logs)
            if self.chief:
                with open(metrics_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(logs) + "\n")
                with writer.as_default(step=step):
                    for key, value in logs.items():
                        if isinstance(value, (int, float)) and key != "step":
                            tf.summary.scalar(key, value)
            progress.update(step, logs)
            if step % config.checkpoint_every == 0 or step == config.total_steps:
                self.save()
        writer.flush()
        if self.chief and progress.bar is not None:
            sys.stdout.write("\n")
        if step == start and start > 0 and self.chief:
            self.log(f"nothing to do: already at step {start} of {config.total_steps}")
        return history

    def export(self, export_dir=None):
        from tf_mbalign.export import encoder_export

        export_dir = export_dir or os.path.join(self.config.model_dir, "export")
        if self.chief:
            encoder_export.export_encoder(
                self.aligner.encoder, self.bundle.tokenizer, export_dir,
                mlm_head=self.aligner.mlm_head, pooling=self.config.pooling,
                representation_layer=self.config.representation_layer,
                seq_length=self.config.max_seq_length, source=self.bundle.source,
            )
        return export_dir


def restore_for_export(config):
    """The encoder bundle and Aligner of a run, at its latest checkpoint."""
    with tf.distribute.get_strategy().scope():
        bundle = encoders.load_encoder(config.encoder, dropout=config.dropout)
        aligner = Aligner(
            bundle.encoder, queue_size=config.queue_size, projection_dim=config.projection_dim,
            name="aligner",
        )
    latest = tf.train.latest_checkpoint(os.path.join(config.model_dir, "checkpoints"))
    if not latest:
        raise FileNotFoundError(
            f"{config.model_dir}/checkpoints: no checkpoint to export. Train first "
            "(python -m tf_mbalign.train ...)."
        )
    tf.train.Checkpoint(model=aligner).restore(latest).expect_partial()
    return bundle, aligner, latest
