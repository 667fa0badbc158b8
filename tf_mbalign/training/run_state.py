"""What a run's checkpoint holds, and saving / restoring it.

A checkpoint holds the model (encoder, MLM head, key encoder, key queue and
its pointer; with the English anchor a fingerprint of the teacher's weights,
not the teacher, which every run rebuilds from `--encoder`), both optimizers, the dropout RNG states, the step and the data
position (`examples_consumed`): the input pipeline is rebuilt from the data
position, so a resumed run sees exactly the batches an uninterrupted run
sees. Checkpoints are committed atomically and verified on restore, with a
warned fall-back to the previous one (`checkpointing.py`).

Resume order: the newest intact checkpoint in `model_dir/checkpoints` -> the
pretrained encoder.

`restore_trained_aligner` is the one way to get a run's aligned encoder back
from its checkpoints (the export binary and evaluation use it).
"""

import dataclasses
import json
import os
import sys

import tensorflow as tf

from tf_mbalign.config import TrainConfig
from tf_mbalign.modeling import encoders
from tf_mbalign.modeling.bert_encoder import dropout_rng_states
from tf_mbalign.training import checkpointing
from tf_mbalign.training.alignment_step import build_aligner

CHECKPOINT_FOLDER = "checkpoints"
# Flags that change which variables a checkpoint holds: flag -> the part of
# its value that matters. A frozen token table has no optimizer slots;
# sampled TLM negatives add a random state (any K > 0 the same one). A run
# resumes only with what it started with; a flags.json written before a flag
# existed had its `TrainConfig` default.
CHECKPOINT_SHAPING_FLAGS = {"train_token_embeddings": bool, "tlm_sampled_negatives": bool}


def warn_to_stderr(message):
    print(f"warning: {message}", file=sys.stderr, flush=True)


class RunState:
    """The variables a run resumes from, and their checkpoints.

    Args:
        alignment_step: the `AlignmentStep` (its aligner and optimizers).
        model_dir: the run's folder (checkpoints go to `model_dir/checkpoints`).
        strategy: the run's `tf.distribute.Strategy`.
        keep_checkpoints: committed checkpoints kept.
        chief: whether this worker writes the committed checkpoints.
        log, warn: callables for messages and warnings.
    """

    def __init__(self, alignment_step, model_dir, strategy, keep_checkpoints, chief, log, warn):
        with strategy.scope():
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
            self.examples_consumed = tf.Variable(0, dtype=tf.int64, trainable=False,
                                                 name="examples_consumed")
        aligner = self.aligner = alignment_step.aligner
        self.checkpoint = tf.train.Checkpoint(
            model=aligner,
            # Dropout RNG states: Keras does not checkpoint them, and without
            # them a resumed run would draw other dropout masks.
            rng_states=dropout_rng_states(aligner),
            optimizer=alignment_step.optimizer,
            head_optimizer=alignment_step.head_optimizer,
            step=self.step,
            examples_consumed=self.examples_consumed,
        )
        self.directory = os.path.join(model_dir, CHECKPOINT_FOLDER)
        worker_dir = None
        if not chief:  # Workers must save too (it is collective), elsewhere.
            worker_dir = os.path.join(model_dir, "worker_tmp",
                                      f"task_{strategy.cluster_resolver.task_id}")
        self.writer = checkpointing.CheckpointWriter(
            self.checkpoint, self.directory, max_to_keep=keep_checkpoints, chief=chief,
            worker_directory=worker_dir, log=log,
        )
        self.warn = warn
        self.last_saved_step = None

    def restore(self):
        """Restores the newest intact checkpoint; returns its path or None.

        Raises:
            checkpointing.CheckpointError: checkpoints exist, none restores;
                or the English anchor's teacher (rebuilt from the encoder
                loaded now, not checkpointed) is not the encoder the run
                started from.
        """
        self.writer.remove_leftovers()
        path = checkpointing.restore_latest(self.checkpoint, self.directory, self.warn)
        if path and not self.aligner.teacher_matches_checkpoint():
            raise checkpointing.CheckpointError(
                f"{path} was trained with an English anchor (--anchor_weight) whose teacher, "
                "the encoder the run started from, had other weights than the encoder "
                "loaded now. Resume with the --encoder (and, for a random test encoder, the "
                "--seed) the run started with, or start a new run with another --model_dir.")
        self.last_saved_step = int(self.step.numpy()) if path else None
        return path

    def advance(self, steps, global_batch_size):
        """Counts `steps` finished steps of `global_batch_size` examples."""
        self.step.assign_add(steps)
        self.examples_consumed.assign_add(steps * global_batch_size)

    def save(self):
        step = int(self.step.numpy())
        path = self.writer.save(step, metadata={
            "examples_consumed": int(self.examples_consumed.numpy())})
        self.last_saved_step = step
        return path

    def last_saved_description(self):
        if self.last_saved_step is None:
            return "none yet (nothing was saved)"
        return (f"{self.directory}/ckpt-{self.last_saved_step} "
                f"(step {self.last_saved_step})")


def check_resume_flags(config):
    """Raises `checkpointing.CheckpointError` when `config.model_dir` holds
    checkpoints of a run whose flags.json set a `CHECKPOINT_SHAPING_FLAGS`
    flag otherwise than `config` (its optimizer state would not fit)."""
    flags_path = os.path.join(config.model_dir, "flags.json")
    directory = os.path.join(config.model_dir, CHECKPOINT_FOLDER)
    if not (os.path.isfile(flags_path) and os.path.isdir(directory) and os.listdir(directory)):
        return
    with open(flags_path, encoding="utf-8") as f:
        previous = json.load(f)
    defaults = {field.name: field.default for field in dataclasses.fields(TrainConfig)}
    for name, part in CHECKPOINT_SHAPING_FLAGS.items():
        before, now = previous.get(name, defaults[name]), getattr(config, name)
        if part(before) != part(now):
            raise checkpointing.CheckpointError(
                f"{flags_path}: the checkpoints in {directory} were trained with "
                f"--{name}={str(before).lower()}, and this run asks for "
                f"--{name}={str(now).lower()}, which changes the variables a checkpoint "
                f"holds. Resume with --{name}={str(before).lower()}, or start a new run "
                "with another --model_dir.")


def restore_trained_aligner(config, warn=warn_to_stderr):
    """(encoder bundle, Aligner, checkpoint path) of a run at its newest
    intact checkpoint.

    Args:
        config: the run's `TrainConfig` (e.g. `TrainConfig.from_json_file(
            "<model_dir>/flags.json", model_dir=...)`).

    Raises:
        FileNotFoundError: the run has no checkpoint.
    """
    with tf.distribute.get_strategy().scope():
        bundle = encoders.load_encoder(config.encoder, dropout=config.dropout)
        # No anchor teacher: it is not in the checkpoint, and reading the
        # trained encoder back does not need it.
        aligner = build_aligner(config, bundle, teacher=False)
    latest = checkpointing.restore_latest(
        tf.train.Checkpoint(model=aligner), os.path.join(config.model_dir, CHECKPOINT_FOLDER),
        warn=warn, partial=True,
    )
    if not latest:
        raise FileNotFoundError(
            f"{config.model_dir}/{CHECKPOINT_FOLDER}: no checkpoint to export. Train first "
            "(python -m tf_mbalign.train ...)."
        )
    return bundle, aligner, latest
