"""An alignment training run: inputs, model, step loop, checkpoints, metrics.

One batch's path: `data/training_input.py` picks the pipeline,
`data/pipeline.py` (in memory) or `data/streamed_pipeline.py` (a prepared
corpus), which builds it (random input shuffling, pair packing, TLM
masking) -> `StepLoop` (`step_loop.py`) feeds it to `AlignmentStep`
(`alignment_step.py`) -> `Aligner.compute_losses` (`modeling/aligner.py`)
-> gradients through `optimization.reduce_and_clip_gradients` -> EMA of the
key encoder and the key queue.

The pieces of a run, each in its own module:
- `RunState` (`run_state.py`): the variables a run resumes from and their
  verified, atomic checkpoints;
- `StepLoop`: the compiled loop (several steps per call, halts after a
  non-finite step);
- `MetricsSinks` (`metrics_sinks.py`): metrics.jsonl, TensorBoard, progress;
- `TrainingCallback`s (`callbacks.py`): what the binary plugs in
  (in-training retrieval, the end-of-run export, the run summary); every
  stop, finished, preempted or failed, ends with their `on_run_stop`;
- `PreemptionWatcher` (`preemption.py`): SIGTERM saves at the next loop
  boundary on every worker and stops; `run()` then returns with
  `self.preempted` set;
- `FaultInjection` (`fault_injection.py`): a test hook wrapped around the
  step.

Faults: a non-finite loss or gradient norm stops the run after that step
with `NonFiniteError` (the step and the batch's corpus lines); nothing is
saved after the last good checkpoint. With mixed float16, non-finite
gradients are the loss scale's business: the step is skipped (model
unchanged) and counted in `skipped_steps`.

Every logged line of `metrics.jsonl` carries `first_example` and one
`batch_fingerprints` entry per step.
"""

import dataclasses
import math

import keras

from tf_mbalign import distribute
from tf_mbalign.atomic_files import write_text_atomic
from tf_mbalign.config import RANDOM, WITH_MLM_HEAD, WITHOUT_MLM_HEAD, checkpoint_kind
from tf_mbalign.data import training_input
from tf_mbalign.modeling import encoders
from tf_mbalign.training import optimization
from tf_mbalign.training.alignment_step import build_alignment_step
from tf_mbalign.training.fault_injection import FaultInjection
from tf_mbalign.training.head_warmup import measure_head_warmup
from tf_mbalign.training.metrics_sinks import MetricsSinks, chief_sinks
from tf_mbalign.training.preemption import PreemptionWatcher
from tf_mbalign.training.run_state import RunState, check_resume_flags, warn_to_stderr
from tf_mbalign.training.step_loop import StepLoop


class NonFiniteError(RuntimeError):
    """A step produced a NaN/Inf loss or gradient; training stopped."""


class AlignmentRun:
    """One training run; `run()` trains to `config.total_steps`.

    Args:
        config: a `TrainConfig`.
        log: callable for human-readable messages.
        warn: callable for warnings (default: stderr).
        callbacks: `TrainingCallback`s (e.g. in-training retrieval, export).
    """

    def __init__(self, config, log=print, warn=None, callbacks=()):
        self.config = config
        self.log = log
        self.warn = warn or warn_to_stderr
        self.callbacks = list(callbacks)
        self.fault = FaultInjection.from_environment()
        self.preempted = False
        self.history = []
        # Inputs first (validated before anything heavy).
        # Less the pairs the alignment check holds out (a function of the
        # corpus and the seed, so a resumed run holds out the same ones).
        self.corpus = training_input.open_corpus(
            config.corpus, max_chars=config.max_chars, languages=list(config.languages) or None,
            hold_out_seed=config.seed)
        # The strategy next: multi-worker collectives must be configured
        # before anything initializes the TensorFlow runtime.
        self.strategy = distribute.get_strategy(config.strategy, config.tpu)
        # `auto` becomes a policy here (the hardware is known now); the run,
        # its flags.json and its optimizers see the resolved one.
        precision, self.precision_reason = distribute.resolve_precision(config.precision,
                                                                        self.strategy)
        self.config = config = dataclasses.replace(config, precision=precision)
        distribute.set_precision(precision)
        keras.utils.set_random_seed(config.seed)
        self.chief = distribute.is_chief(self.strategy)
        self._check_batch_divides()
        with self.strategy.scope():
            self.bundle = encoders.load_encoder(config.encoder, dropout=config.dropout)
            # Defaults left to the checkpoint are known now (and validated).
            self.checkpoint_kind = checkpoint_kind(self.bundle)
            self.config, self.default_sources = config.with_checkpoint_defaults(
                self.checkpoint_kind)
            config = self.config
        training_input.check_tokenizer(self.corpus, self.bundle.tokenizer, config.encoder)
        training_input.check_workers(self.corpus, distribute.num_workers(self.strategy))
        with self.strategy.scope():
            self.alignment_step = build_alignment_step(config, self.bundle, self.fault)
        self.aligner = self.alignment_step.aligner
        self.state = RunState(self.alignment_step, config.model_dir, self.strategy,
                              config.keep_checkpoints, self.chief, log, self.warn)
        self.loop = StepLoop(self.strategy, self.alignment_step, config.global_batch_size,
                             config.jit_compile)

    @property
    def step(self):
        """The step counter (a tf.Variable, saved in the checkpoints)."""
        return self.state.step

    def restore(self):
        """Restores the newest intact checkpoint; returns its path or None."""
        check_resume_flags(self.config)
        return self.state.restore()

    # === The run ===

    def run(self):
        """Trains to `config.total_steps` (or until preempted); returns the
        logged metrics, one dict per loop call. Every stop (finished,
        preempted, failed) ends with the callbacks' `on_run_stop`."""
        try:
            self._train()
        except BaseException as error:
            self._stop("failed", error)
            raise
        self._stop("preempted" if self.preempted else "finished")
        return self.history

    def _train(self):
        with PreemptionWatcher(self.strategy) as watcher:
            start = self._start()
            sinks = (chief_sinks(self.config.model_dir, start, self.config.total_steps,
                                 self.config.quiet) if self.chief else MetricsSinks([]))
            iterator = iter(training_input.distributed_dataset(
                self.strategy, self.corpus, self.bundle.tokenizer,
                self.config.pipeline_config(), self.config.global_batch_size,
                start_example=int(self.state.examples_consumed.numpy())))
            for callback in self.callbacks:
                callback.on_run_start(self, start)
            step = start
            try:
                while step < self.config.total_steps and not self.preempted:
                    step = self._train_one_loop_call(step, iterator, sinks, watcher)
            finally:
                sinks.close()
        self._report_end(start, step)
        if not self.preempted:
            for callback in self.callbacks:
                callback.on_run_end(self)

    def _stop(self, outcome, error=None):
        """Calls every callback's `on_run_stop`; a failing hook is a warning
        (it must not hide the run's own outcome or error)."""
        for callback in self.callbacks:
            try:
                callback.on_run_stop(self, outcome, error)
            except Exception as hook_error:  # noqa: BLE001 - reported, not raised
                self.warn(f"{type(callback).__name__}.on_run_stop failed: {hook_error!r}")

    def _start(self):
        """Restores, writes flags.json, says where the run starts; returns the step."""
        if self.fault is not None:
            self.warn(self.fault.warning())
        restored = self.restore()
        start = int(self.step.numpy())
        if self.chief:
            write_text_atomic(f"{self.config.model_dir}/flags.json",
                              self.config.to_json(self.default_sources) + "\n")
            self.log(f"corpus: {training_input.describe(self.corpus)}")
            for warning in training_input.corpus_warnings(
                    self.corpus, self.config.max_chars, distribute.num_workers(self.strategy)):
                self.warn(warning)
            self.log(f"encoder: {self.bundle.source}; "
                     f"{'resumed from ' + restored if restored else 'fresh start'} at step {start}; "
                     f"{self.strategy.num_replicas_in_sync} replica(s); "
                     f"precision {self.config.precision} ({self.precision_reason})")
            emulated = distribute.emulated_precision_warning(self.config.precision, self.strategy)
            if emulated:
                self.warn(emulated)
            self._report_defaults()
        return start

    def _report_defaults(self):
        """Prints the checkpoint-dependent settings with their sources, and
        warns when TLM would train the encoder against an untrained head."""
        config = self.config
        kind = {WITH_MLM_HEAD: "has an MLM head", WITHOUT_MLM_HEAD: "has no MLM head",
                RANDOM: "is a random test encoder"}[self.checkpoint_kind]
        self.log(f"settings by checkpoint (the encoder {kind}):")
        for name, source in self.default_sources.items():
            self.log(f"  --{name}={getattr(config, name)}  [{source}]")
        anchor = (f"anchor_weight {config.anchor_weight} ({config.anchor_loss})"
                  if config.anchor_weight else "anchor_weight 0")
        tlm = f"tlm_weight {config.tlm_weight}"
        if config.tlm_sampled_negatives:
            tlm += (f" (softmax over the targets + {config.tlm_sampled_negatives} sampled "
                    "negatives)")
        self.log(f"objectives: {tlm}, contrastive_weight "
                 f"{config.contrastive_weight}, negatives {config.contrastive_negatives}, "
                 f"{anchor}")
        if (self.checkpoint_kind == WITHOUT_MLM_HEAD and config.tlm_weight > 0
                and config.head_warmup_steps == 0):
            self.warn(
                f"{self.bundle.source} has no MLM head and --head_warmup_steps=0: TLM "
                f"(--tlm_weight={config.tlm_weight}) trains the encoder from step 1 against "
                "a new, untrained MLM head, whose gradient is noise to the encoder. Warm the "
                "head up first (--head_warmup_steps=N; its TLM accuracy is measured at the end "
                "of the warm-up) or train without TLM (--tlm_weight=0).")

    def _train_one_loop_call(self, step, iterator, sinks, watcher):
        """Runs one compiled loop call, logs and saves; returns the new step."""
        config = self.config
        train_encoder = step >= config.head_warmup_steps
        first_example = int(self.state.examples_consumed.numpy())
        queue_was_empty = (self.aligner.uses_queue
                           and int(self.aligner.key_queue.filled.numpy()) == 0)
        result = self.loop(iterator, self._steps_in_next_call(step, train_encoder), step,
                           train_encoder)
        done = int(result["done"])
        if bool(result["halted"]):
            raise self._non_finite_error(
                step + done, result, first_example + (done - 1) * config.global_batch_size)
        step += done
        self.state.advance(done, config.global_batch_size)
        logs = self._loop_logs(step, train_encoder, result, first_example, queue_was_empty)
        if not train_encoder and step == config.head_warmup_steps and self.chief:
            logs.update(self._measure_head_warmup())
        for callback in self.callbacks:
            callback.on_loop_end(step, logs)
        self.history.append(logs)
        sinks.write(step, logs)
        if step % config.checkpoint_every == 0 or step == config.total_steps:
            self.state.save()
        if step < config.total_steps and watcher.stop_requested():
            if self.state.last_saved_step != step:
                self.state.save()
            self.preempted = True
        return step

    def _steps_in_next_call(self, step, train_encoder):
        """Up to `steps_per_loop`, ending at the warm-up's end, at checkpoints
        and at the callbacks' boundaries (the same on every worker)."""
        config = self.config
        boundary = config.head_warmup_steps if not train_encoder else config.total_steps
        periods = [config.checkpoint_every] + [
            c.loop_boundary_every for c in self.callbacks if c.loop_boundary_every]
        return min([config.steps_per_loop, boundary - step]
                   + [every - step % every for every in periods])

    def _loop_logs(self, step, train_encoder, result, first_example, queue_was_empty):
        """The record of one loop call: metrics (reset after reading), phase,
        learning rate, queue fill, skipped steps, batch fingerprints.

        MoCo's loss and accuracy are None (null in metrics.jsonl, not shown
        on the progress bar) when the call's first step met an empty queue:
        with no negatives the loss is 0 and the accuracy 1 by construction.
        An objective switched off (weight 0) logs None too, with a note
        (`tlm_note`, `moco_note`, `anchor_note`).
        """
        aligner = self.aligner
        logs = {m.name: float(m.result()) for m in aligner.metrics}
        for m in aligner.metrics:
            m.reset_state()
        if not aligner.uses_tlm:
            logs["tlm_loss"] = logs["tlm_accuracy"] = None
            logs["tlm_note"] = "off: --tlm_weight=0"
        if not aligner.uses_contrastive:
            logs["moco_loss"] = logs["moco_accuracy"] = None
            logs["moco_note"] = "off: --contrastive_weight=0"
        elif queue_was_empty:
            logs["moco_loss"] = logs["moco_accuracy"] = None
            logs["moco_note"] = "no negatives: the key queue was empty"
        if not aligner.uses_anchor:
            logs["anchor_loss"] = None
            logs["anchor_note"] = "off: --anchor_weight=0"
        optimizer = self.alignment_step.optimizer_for(train_encoder)
        logs["learning_rate"] = optimization.last_learning_rate(optimizer)
        if aligner.key_queue is not None:
            logs["queue_fill"] = int(aligner.key_queue.filled.numpy())
        logs["step"] = step
        logs["phase"] = "encoder" if train_encoder else "head_warmup"
        logs["skipped_steps"] = int(result["skipped"])
        if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            logs["loss_scale"] = float(optimizer.dynamic_scale.numpy())
        logs["first_example"] = first_example
        logs["batch_fingerprints"] = [f"{int(v) & (2**64 - 1):016x}"
                                      for v in result["fingerprints"].numpy()]
        return logs

    def _measure_head_warmup(self):
        """The warm-up's TLM accuracy at its end, logged and returned as
        metrics (`head_warmup.measure_head_warmup`)."""
        config = self.config
        measured = measure_head_warmup(
            self.aligner, self.corpus, self.bundle.tokenizer, config.pipeline_config(),
            config.global_batch_size, int(self.state.examples_consumed.numpy()),
            config.head_warmup_steps)
        self.log(
            ("" if config.quiet else "\n")  # after the progress bar's line
            + f"head warm-up done: TLM accuracy {measured['head_warmup_tlm_accuracy']:.1%} "
            f"on its last {measured['head_warmup_check_batches']} batches "
            f"({measured['head_warmup_check_tokens']} masked tokens, dropout off); "
            f"the encoder trains from step {config.head_warmup_steps + 1}")
        return measured

    def _report_end(self, start, step):
        if not self.chief:
            return
        if self.preempted:
            self.log(f"preempted at step {step}: saved {self.state.directory}/ckpt-{step}; "
                     "run the same command again to resume.")
        if step == start and start > 0:
            self.log(f"nothing to do: already at step {start} of {self.config.total_steps}")

    def _check_batch_divides(self):
        replicas = self.strategy.num_replicas_in_sync
        if self.config.global_batch_size % replicas:
            raise ValueError(
                f"--global_batch_size={self.config.global_batch_size} is not divisible by "
                f"the {replicas} replicas."
            )

    def _non_finite_error(self, step, result, first_example):
        pair_ids = [int(i) for i in result["pair_ids"].numpy()]
        sources = self.corpus.sources_of(pair_ids)
        loss = float(result["loss"])
        what = (f"the loss is {loss}" if not math.isfinite(loss)
                else "the gradient norm is not finite")
        size = self.config.global_batch_size
        return NonFiniteError(
            f"step {step}: {what}; training stopped before saving anything further.\n"
            f"  batch: examples {first_example}..{first_example + size - 1}, corpus lines "
            f"{', '.join(sources)}\n"
            f"  last good checkpoint: {self.state.last_saved_description()}\n"
            "  Check those lines; lower --learning_rate or --max_gradient_norm; with "
            "--precision=mixed_float16 try float32 or mixed_bfloat16. Rerunning resumes from "
            "the last good checkpoint."
        )
