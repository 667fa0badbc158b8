r"""Exports an aligned encoder from a training run's latest checkpoint.

Usage:
  python -m tf_mbalign.export --model_dir=runs/align --export_dir=exports/align

Writes encoder/ (TF-Hub encoder), preprocessor/, serving/<name>/<version>/
(sentences in), serving/<name>_ids/<version>/ (token ids in, core ops only)
and keras/ under --export_dir (see tf_mbalign/export/encoder_export.py), in
float32 unless --export_precision (or the run's flag) asks for bf16.
"""

from tf_mbalign import runtime

runtime.import_tensorflow_quietly()

import os  # noqa: E402
import sys  # noqa: E402

from absl import app, flags  # noqa: E402

from tf_mbalign.distribute import EXPORT_PRECISIONS  # noqa: E402

_MODEL_DIR = flags.DEFINE_string("model_dir", None, "A training run's --model_dir.")
_EXPORT_DIR = flags.DEFINE_string("export_dir", None, "Where to write the exports.")
_SERVING_NAME = flags.DEFINE_string("serving_name", "tf_mbalign", "TF Serving model name.")
_EXPORT_PRECISION = flags.DEFINE_enum(
    "export_precision", None, list(EXPORT_PRECISIONS),
    "Policy the export computes under (default: the run's --export_precision, float32 "
    "unless it asked otherwise, whatever policy it trained under).")
flags.mark_flags_as_required(["model_dir", "export_dir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    from tf_mbalign.config import TrainConfig
    from tf_mbalign.export.run_export import export_aligned_encoder
    from tf_mbalign.training.run_state import restore_trained_aligner

    flags_path = os.path.join(_MODEL_DIR.value, "flags.json")
    if not os.path.isfile(flags_path):
        print(f"error: {flags_path} not found: --model_dir must be a training run's "
              "directory.", file=sys.stderr)
        return 2
    config = TrainConfig.from_json_file(flags_path, model_dir=_MODEL_DIR.value)
    try:
        bundle, aligner, checkpoint = restore_trained_aligner(config)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    paths = export_aligned_encoder(config, bundle.tokenizer, aligner, _EXPORT_DIR.value,
                                   source=checkpoint, serving_name=_SERVING_NAME.value,
                                   precision=_EXPORT_PRECISION.value)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def run_main():
    # --help exits 0, flag errors (a missing --model_dir included) exit 2.
    app.run(main, flags_parser=runtime.flags_parser(
        lambda: __doc__.strip() + "\n\n" + flags.FLAGS.main_module_help()))


if __name__ == "__main__":
    run_main()
