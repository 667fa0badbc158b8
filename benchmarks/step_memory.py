"""Resident memory of an alignment run, phase by phase, in one fresh process.

Builds what `python -m tf_mbalign.train` builds for a flagfile (the encoder,
the Aligner, its optimizers, the input pipeline on the flagfile's corpus),
runs `--steps` steps, writes one checkpoint, and prints the process's
resident memory (`VmRSS`) and its peak so far (`VmHWM`) after each phase,
then after `malloc_trim(0)` (what the allocator held but no tensor used).

    python benchmarks/step_memory.py --flagfile=configs/add_languages.flags \
        --train_token_embeddings=false --json docs/results/step_memory/frozen.json

Flags after the script's own are training flags (`--flagfile=...` and any
override), read as the training binary reads them.
"""

import ctypes
import dataclasses
import gc
import json
import os
import sys
import tempfile
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tf_mbalign import runtime  # noqa: E402

runtime.set_tensorflow_environment_defaults()
from tf_mbalign import config as config_lib  # noqa: E402

config_lib.define_flags()
_STEPS = flags.DEFINE_integer("steps", 10, "Alignment steps to run.")
_JSON = flags.DEFINE_string("json", "", "Write the phases here.")
_TRIM = flags.DEFINE_boolean("trim_each_phase", False, "Also measure each phase after "
                             "malloc_trim(0): memory the allocator kept but no tensor uses.")


def malloc_trim():
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)


def memory_kib():
    """(VmRSS, VmHWM) of this process in KiB."""
    values = {}
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                name, amount = line.split(":", 1)
                values[name] = int(amount.split()[0])
    return values["VmRSS"], values["VmHWM"]


class Phases:
    def __init__(self):
        self.rows = []
        self.started = time.time()

    def mark(self, name):
        rss, peak = memory_kib()
        row = {"phase": name, "rss_gib": rss / 2**20, "peak_gib": peak / 2**20,
               "seconds": round(time.time() - self.started, 1)}
        text = f"{name:38s} RSS {rss / 2**20:6.2f} GiB   peak {peak / 2**20:6.2f} GiB"
        if _TRIM.value:
            malloc_trim()
            row["rss_after_trim_gib"] = memory_kib()[0] / 2**20
            text += f"   after malloc_trim {row['rss_after_trim_gib']:6.2f} GiB"
        self.rows.append(row)
        print(text, flush=True)


def main(argv):
    del argv
    import keras
    import tensorflow as tf

    from tf_mbalign import distribute
    from tf_mbalign.config import TrainConfig, checkpoint_kind
    from tf_mbalign.data import training_input
    from tf_mbalign.modeling import encoders
    from tf_mbalign.training.alignment_step import build_alignment_step

    phases = Phases()
    phases.mark("imports")
    config = TrainConfig.from_flags()
    precision, _ = distribute.resolve_precision(config.precision)
    config = dataclasses.replace(config, precision=precision)
    distribute.set_precision(precision)
    keras.utils.set_random_seed(config.seed)
    corpus = training_input.open_corpus(config.corpus, max_chars=config.max_chars,
                                        hold_out_seed=config.seed)
    phases.mark("corpus read")
    bundle = encoders.load_encoder(config.encoder, dropout=config.dropout)
    config, _ = config.with_checkpoint_defaults(checkpoint_kind(bundle))
    phases.mark("encoder loaded")
    step = build_alignment_step(config, bundle)
    phases.mark("aligner and optimizers built")
    strategy = tf.distribute.get_strategy()
    iterator = iter(training_input.distributed_dataset(
        strategy, corpus, bundle.tokenizer, config.pipeline_config(), config.global_batch_size))

    @tf.function
    def run(batch):
        return strategy.run(step, args=(batch, True, tf.constant(1)))["loss"]

    run(next(iterator)).numpy()
    phases.mark("first step (traced)")
    for _ in range(_STEPS.value - 1):
        run(next(iterator)).numpy()
    phases.mark(f"{_STEPS.value} steps")
    checkpoint = tf.train.Checkpoint(model=step.aligner, optimizer=step.optimizer)
    with tempfile.TemporaryDirectory() as directory:
        path = checkpoint.write(os.path.join(directory, "ckpt"))
        size = sum(os.path.getsize(os.path.join(directory, f)) for f in os.listdir(directory))
        phases.mark("checkpoint written")
    del path
    malloc_trim()
    phases.mark("after malloc_trim(0)")
    trainable = sum(int(v.numpy().size) for v in step.aligner.trainable_variables)
    result = {"config": json.loads(config.to_json()), "steps": _STEPS.value,
              "checkpoint_bytes": size, "trainable_parameters": trainable,
              "optimizer_variables": sum(int(v.numpy().size) for v in step.optimizer.variables),
              "phases": phases.rows}
    print(f"checkpoint {size / 1e6:.0f} MB; trainable parameters {trainable / 1e6:.1f}M")
    if _JSON.value:
        os.makedirs(os.path.dirname(os.path.abspath(_JSON.value)), exist_ok=True)
        with open(_JSON.value, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    app.run(main)
