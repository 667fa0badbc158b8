"""The alignment training run: build inputs, model, optimizers; loop; save.

A custom loop of `strategy.run(aligner.train_step, ...)` inside a
`tf.function` instead of `Model.fit`, because Keras 3 `fit` fails under
MultiWorkerMirroredStrategy (keras-team/keras#20585); the same loop serves
every strategy. `Aligner.train_step` is the ordinary Keras hook, so the model
also trains with `fit` on one device.

Resume order: the newest intact checkpoint in `model_dir/checkpoints` -> from
the pretrained encoder. A checkpoint holds the model (encoder, MLM head, key
encoder, key queue and its pointer), both optimizers, the step and the data
position (`examples_consumed`); the input pipeline is rebuilt from the data
position, so a resumed run sees exactly the batches an uninterrupted run sees.
Checkpoints are committed atomically and verified on restore, with a warned
fall-back to the previous one (`checkpointing.py`).

Faults:
- a non-finite loss or gradient norm stops the loop after that step with
  `NonFiniteError` (the step and the batch's corpus lines); nothing is saved
  after the last good checkpoint. With mixed float16, non-finite gradients
  are the loss scale's business: the step is skipped (model unchanged) and
  counted in `skipped_steps`;
- SIGTERM saves at the next loop boundary on every worker and stops
  (`preemption.py`); `run()` then returns with `self.preempted` set.

Every logged line of `metrics.jsonl` carries `first_example` and one
`batch_fingerprints` entry per step: a hash of the global batch's pair ids,
so repeated or skipped batches show.

Test hook: `TF_MBALIGN_INJECT_FAULT=KIND@STEP` (KIND: `nan_loss`,
`inf_gradient` or `gradient_overflow`, the latter multiplying the gradients
by 1e30, which overflows float16 only) injects a fault into step STEP
(1-based). For tests; a warning says when it is set.
"""

import json
import math
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
from tf_mbalign.training import checkpointing, optimization
from tf_mbalign.training.preemption import PreemptionWatcher

METRICS_FILE = "metrics.jsonl"
FAULT_ENV = "TF_MBALIGN_INJECT_FAULT"
_FAULTS = {  # kind -> (what is multiplied, by what)
    "nan_loss": ("loss", float("nan")),
    "inf_gradient": ("gradient", float("inf")),
    "gradient_overflow": ("gradient", 1e30),
}


class NonFiniteError(RuntimeError):
    """A step produced a NaN/Inf loss or gradient; training stopped."""


def parse_fault(value):
    """`KIND@STEP` -> (KIND, STEP); None for an empty value."""
    if not value:
        return None
    kind, _, step = value.partition("@")
    if kind not in _FAULTS or not step.isdigit() or int(step) < 1:
        raise ValueError(f"{FAULT_ENV}={value!r}: expected KIND@STEP with KIND one of "
                         f"{sorted(_FAULTS)} and STEP >= 1")
    return kind, int(step)


def _warn_to_stderr(message):
    print(f"warning: {message}", file=sys.stderr, flush=True)


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
        warn: callable for warnings (default: stderr).
    """

    def __init__(self, config, log=print, warn=None):
        self.config = config
        self.log = log
        self.warn = warn or _warn_to_stderr
        self.fault = parse_fault(os.environ.get(FAULT_ENV, ""))
        self.preempted = False
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
        self.checkpoint_dir = os.path.join(config.model_dir, "checkpoints")
        worker_dir = None
        if not self.chief:  # Workers must save too (it is collective), elsewhere.
            worker_dir = os.path.join(config.model_dir, "worker_tmp",
                                      f"task_{self.strategy.cluster_resolver.task_id}")
        self.writer = checkpointing.CheckpointWriter(
            self.checkpoint, self.checkpoint_dir, max_to_keep=config.keep_checkpoints,
            chief=self.chief, worker_directory=worker_dir, log=log,
        )
        self._functions = {}
        self.retrieval = self._retrieval_callback()  # Reads its data now: fails early.
        self._last_saved_step = None

    # === Checkpoints ===

    def restore(self):
        """Restores the newest intact checkpoint; returns its path or None.

        Raises:
            checkpointing.CheckpointError: checkpoints exist, none restores.
        """
        self.writer.remove_leftovers()
        return checkpointing.restore_latest(self.checkpoint, self.checkpoint_dir, self.warn)

    def save(self):
        step = int(self.step.numpy())
        path = self.writer.save(step, metadata={
            "examples_consumed": int(self.examples_consumed.numpy())})
        self._last_saved_step = step
        return path

    # === Steps ===

    def _fault_multipliers(self, global_step):
        """(loss_multiplier, gradient_multiplier) for the injected fault."""
        if self.fault is None:
            return None, None
        kind, at_step = self.fault
        target, value = _FAULTS[kind]
        multiplier = tf.where(tf.equal(global_step, at_step), tf.constant(value, tf.float32),
                              tf.constant(1.0, tf.float32))
        return (multiplier, None) if target == "loss" else (None, multiplier)

    def _loop_function(self, train_encoder):
        """A tf.function running up to `steps` steps; it stops after the first
        non-finite one and returns each step's fingerprint and status."""
        if train_encoder in self._functions:
            return self._functions[train_encoder]
        aligner, strategy = self.aligner, self.strategy
        halt_on_gradients = not isinstance(aligner.optimizer, keras.optimizers.LossScaleOptimizer)

        def step_fn(batch, global_step):
            aligner.train_encoder = train_encoder  # Read while tracing.
            loss_multiplier, gradient_multiplier = self._fault_multipliers(global_step)
            return aligner.train_step_with_status(batch, loss_multiplier, gradient_multiplier)

        # The step has no data-dependent Python control flow (Keras layers use
        # ops.cond & co.): autograph would only spend start-up time converting
        # the ~100 functions it reaches. The loop below is converted.
        step_fn = tf.autograph.experimental.do_not_convert(step_fn)
        if self.config.jit_compile:  # XLA for the step; the iterator stays outside.
            step_fn = tf.function(step_fn, jit_compile=True)

        def first_replica(value):
            return strategy.experimental_local_results(value)[0]

        @tf.function
        def loop(iterator, steps, first_step):
            fingerprints = tf.TensorArray(tf.int64, size=steps)
            done = tf.constant(0)
            skipped = tf.constant(0)
            halted = tf.constant(False)
            # The last step's loss and pair ids (the bad step's, after a halt).
            status = {"loss": tf.constant(0.0),
                      "pair_ids": tf.fill([self.config.global_batch_size], -1)}
            for i in tf.range(steps):
                global_step = first_step + tf.cast(i, tf.int64) + 1
                outputs = strategy.run(step_fn, args=(next(iterator), global_step))
                outputs = {k: first_replica(v) for k, v in outputs.items()}
                # The all-gathered ids have no static length; the loop needs one.
                outputs["pair_ids"] = tf.reshape(outputs["pair_ids"],
                                                 [self.config.global_batch_size])
                fingerprints = fingerprints.write(
                    i, pipeline.batch_fingerprint(outputs["pair_ids"]))
                done += 1
                skipped += tf.cast(tf.logical_not(outputs["applied"]), tf.int32)
                status = {k: outputs[k] for k in status}
                bad = tf.logical_not(outputs["loss_finite"])
                if halt_on_gradients:
                    bad = tf.logical_or(bad, tf.logical_not(outputs["gradients_finite"]))
                if bad:
                    halted = True
                    break
            return {"fingerprints": fingerprints.stack()[:done], "done": done,
                    "skipped": skipped, "halted": halted, **status}

        self._functions[train_encoder] = loop
        return loop

    def _non_finite_error(self, step, result, first_example):
        pair_ids = [int(i) for i in result["pair_ids"].numpy()]
        sources = [self.corpus.sources[i] for i in pair_ids if 0 <= i < len(self.corpus.sources)]
        loss = float(result["loss"])
        what = (f"the loss is {loss}" if not math.isfinite(loss)
                else "the gradient norm is not finite")
        size = self.config.global_batch_size
        last = (f"{self.checkpoint_dir}/ckpt-{self._last_saved_step} (step {self._last_saved_step})"
                if self._last_saved_step is not None else "none yet (nothing was saved)")
        return NonFiniteError(
            f"step {step}: {what}; training stopped before saving anything further.\n"
            f"  batch: examples {first_example}..{first_example + size - 1}, corpus lines "
            f"{', '.join(sources)}\n"
            f"  last good checkpoint: {last}\n"
            "  Check those lines; lower --learning_rate or --max_gradient_norm; with "
            "--precision=mixed_float16 try float32 or mixed_bfloat16. Rerunning resumes from "
            "the last good checkpoint."
        )

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
        kept = []
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:  # A killed run may leave a half-written last line.
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and record.get("step", last_step + 1) <= last_step:
                    kept.append(json.dumps(record) + "\n")
        checkpointing.write_text_atomic(path, "".join(kept))

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
        """Trains to `config.total_steps` (or until preempted); returns the
        logged metrics, one dict per loop call."""
        with PreemptionWatcher(self.strategy) as watcher:
            return self._run(watcher)

    def _run(self, watcher):
        config = self.config
        if self.fault is not None:
            self.warn(f"{FAULT_ENV}={self.fault[0]}@{self.fault[1]} is set: a test hook "
                      f"injects a fault into step {self.fault[1]}.")
        restored = self.restore()
        start = int(self.step.numpy())
        self._last_saved_step = start if restored else None
        metrics_path = os.path.join(config.model_dir, METRICS_FILE)
        if self.chief:
            self._trim_metrics_file(metrics_path, start)  # Steps after the checkpoint go.
            os.makedirs(config.model_dir, exist_ok=True)
            checkpointing.write_text_atomic(os.path.join(config.model_dir, "flags.json"), config.to_json() + "\n")
            stats = self.corpus.stats
            self.log(
                f"corpus: {stats.pairs} pairs, languages {self.corpus.language_counts()}, "
                f"{stats.skipped_empty} empty skipped, {stats.truncated} truncated"
            )
            self.log(f"encoder: {self.bundle.source}; "
                     f"{'resumed from ' + restored if restored else 'fresh start'} at step {start}; "
                     f"{self.strategy.num_replicas_in_sync} replica(s)")
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
            first_example = int(self.examples_consumed.numpy())
            result = self._loop_function(train_encoder)(
                iterator, tf.constant(n), tf.constant(step, tf.int64))
            done = int(result["done"])
            if bool(result["halted"]):
                writer.flush()
                raise self._non_finite_error(
                    step + done, result, first_example + (done - 1) * config.global_batch_size)
            step += done
            self.step.assign(step)
            self.examples_consumed.assign_add(done * config.global_batch_size)
            logs = self._read_metrics(train_encoder)
            logs["step"] = step
            logs["phase"] = "encoder" if train_encoder else "head_warmup"
            logs["skipped_steps"] = int(result["skipped"])
            optimizer = self.aligner.optimizer if train_encoder else self.aligner.head_optimizer
            if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
                logs["loss_scale"] = float(optimizer.dynamic_scale.numpy())
            logs["first_example"] = first_example
            logs["batch_fingerprints"] = [f"{int(v) & (2**64 - 1):016x}"
                                          for v in result["fingerprints"].numpy()]
            if retrieval is not None:
                retrieval.on_train_batch_end(step, logs)
            history.append(logs)
            if self.chief:
                with open(metrics_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(logs) + "\n")
                with writer.as_default(step=step):
                    for key, value in logs.items():
                        # retrieval/*: written by the RetrievalCallback itself.
                        if isinstance(value, (int, float)) and key not in (
                                "step", "first_example") and not key.startswith("retrieval/"):
                            tf.summary.scalar(key, value)
            progress.update(step, logs)
            if step % config.checkpoint_every == 0 or step == config.total_steps:
                self.save()
            if step < config.total_steps and watcher.stop_requested():
                if self._last_saved_step != step:
                    self.save()
                self.preempted = True
                break
        writer.flush()
        if self.chief and progress.bar is not None:
            sys.stdout.write("\n")
        if self.preempted and self.chief:
            self.log(f"preempted at step {step}: saved {self.checkpoint_dir}/ckpt-{step}; "
                     "run the same command again to resume.")
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
    latest = checkpointing.restore_latest(
        tf.train.Checkpoint(model=aligner), os.path.join(config.model_dir, "checkpoints"),
        warn=_warn_to_stderr, partial=True,
    )
    if not latest:
        raise FileNotFoundError(
            f"{config.model_dir}/checkpoints: no checkpoint to export. Train first "
            "(python -m tf_mbalign.train ...)."
        )
    return bundle, aligner, latest
