r"""Fine-tunes an encoder on XNLI or MLQA and evaluates zero-shot transfer.

Usage:
  python -m tf_mbalign.finetune --task=xnli --encoder=runs/align/export \
      --flagfile=configs/xnli.flags [--setting=zero_shot|translate_train|code_switch]
  python -m tf_mbalign.finetune --task=mlqa --encoder=e5-small \
      --flagfile=configs/mlqa.flags [--setting=zero_shot|code_switch]

--encoder: an export dir, a training run's --model_dir, or e5-small / a
Hugging Face BERT dir / preset:NAME / tiny:demo (the encoder before alignment).
--data: a directory in the layout of ../shared/data/xnli or ../shared/data/mlqa
(default: $TF_MBALIGN_SHARED_DATA/<task>), or `tfds` for the full XNLI.
Writes <output_dir>/<task>_<setting>.{json,md,png}; --compare_with adds other
reports of the same task side by side.
"""

from tf_mbalign import runtime

runtime.import_tensorflow_quietly()

import os  # noqa: E402
import sys  # noqa: E402

from absl import app, flags  # noqa: E402

from tf_mbalign.data.data_root import default_data_root  # noqa: E402

_TASK = flags.DEFINE_enum("task", None, ["xnli", "mlqa"], "Downstream task.")
_ENCODER = flags.DEFINE_string("encoder", None, "Export dir, run dir, or --encoder value.")
_DATA = flags.DEFINE_string("data", "", "Task data dir ('' = $TF_MBALIGN_SHARED_DATA/<task>; "
                            "'tfds' = TFDS, XNLI only).")
_SETTING = flags.DEFINE_string("setting", "zero_shot",
                               "xnli: zero_shot | translate_train | code_switch; "
                               "mlqa: zero_shot | code_switch.")
_SEEDS = flags.DEFINE_list("seeds", ["0"], "Fine-tuning seeds; the report gives mean ± std.")
_LR = flags.DEFINE_float("learning_rate", 3e-5, "Peak learning rate of the encoder.")
_HEAD_LR = flags.DEFINE_float("head_learning_rate", 1e-3, "Peak learning rate of the new head.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Examples (windows for MLQA) per step.")
_EPOCHS = flags.DEFINE_float("epochs", 3.0, "Passes over the training examples.")
_MAX_STEPS = flags.DEFINE_integer("max_steps", 0, "> 0: exactly this many steps (not epochs).")
_WARMUP = flags.DEFINE_float("warmup_fraction", 0.1, "Linear warm-up share of the steps.")
_WEIGHT_DECAY = flags.DEFINE_float("weight_decay", 0.01, "AdamW weight decay.")
_FREEZE = flags.DEFINE_boolean("freeze_word_embeddings", True,
                               "Keep the word-embedding matrix fixed (see training/finetuning.py).")
_DROPOUT = flags.DEFINE_float("dropout", 0.1, "Encoder and head dropout while fine-tuning.")
_MAX_SEQ = flags.DEFINE_integer("max_seq_length", 0, "Tokens per input (0 = 128 xnli, 256 mlqa).")
_STRIDE = flags.DEFINE_integer("doc_stride", 128, "MLQA: tokens between context window starts.")
_CS_PROB = flags.DEFINE_float("code_switch_probability", 0.5,
                              "Per-segment code-switching probability (--setting=code_switch).")
_TRAIN_LANGS = flags.DEFINE_list("train_languages", [], "XNLI translate-train languages "
                                 "(default: all in --data).")
_EVAL_LANGS = flags.DEFINE_list("eval_languages", [], "XNLI test languages (default: all).")
_MAX_TRAIN = flags.DEFINE_integer("max_train_examples", 0, "> 0: use N training examples.")
_MAX_EVAL = flags.DEFINE_integer("max_eval_examples", 0,
                                 "> 0: the first N test examples per language / pair.")
_OUTPUT = flags.DEFINE_string("output_dir", "results", "Where the reports go.")
_LABEL = flags.DEFINE_string("label", "", "The model's name in reports (default: --encoder).")
_COMPARE = flags.DEFINE_list("compare_with", [], "Report JSONs to show side by side.")
_QUIET = flags.DEFINE_boolean("quiet", False, "No progress bars.")
flags.mark_flags_as_required(["task", "encoder"])


def default_data_dir(task):
    """`$TF_MBALIGN_SHARED_DATA/<task>`, else `../shared/data/<task>`."""
    return os.path.join(default_data_root(), task)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}",
                             exitcode=runtime.BAD_FLAGS_EXIT_CODE)
    from tf_mbalign.evaluation import reports
    from tf_mbalign.evaluation.trained_encoders import load_trained_encoder
    from tf_mbalign.tasks import mlqa, xnli
    from tf_mbalign.training.finetuning import FinetuneConfig

    task, setting = _TASK.value, _SETTING.value
    settings = xnli.SETTINGS if task == "xnli" else mlqa.SETTINGS
    if setting not in settings:
        print(f"error: --setting={setting} is not one of {', '.join(settings)} for "
              f"--task={task}", file=sys.stderr)
        return 2
    try:
        seeds = tuple(int(s) for s in _SEEDS.value)
    except ValueError:
        print(f"error: --seeds={','.join(_SEEDS.value)}: integers expected", file=sys.stderr)
        return 2
    data_dir = _DATA.value or default_data_dir(task)
    finetune = FinetuneConfig(
        learning_rate=_LR.value, head_learning_rate=_HEAD_LR.value, batch_size=_BATCH.value,
        epochs=_EPOCHS.value, max_steps=_MAX_STEPS.value, warmup_fraction=_WARMUP.value,
        weight_decay=_WEIGHT_DECAY.value, freeze_word_embeddings=_FREEZE.value,
        dropout=_DROPOUT.value,
    )
    try:
        if task == "xnli":
            config = xnli.XnliConfig(
                setting=setting, train_languages=tuple(_TRAIN_LANGS.value),
                eval_languages=tuple(_EVAL_LANGS.value),
                code_switch_probability=_CS_PROB.value, max_seq_length=_MAX_SEQ.value or 128,
                max_train_examples=_MAX_TRAIN.value, max_eval_examples=_MAX_EVAL.value,
                seeds=seeds,
            )
            languages = sorted(set(config.eval_languages) | set(config.train_languages) | {"en"})
            data = (xnli.read_xnli_tfds(languages if len(languages) > 1 else
                                        ["ar", "de", "en", "es", "fr", "hi", "ru", "zh"],
                                        _MAX_TRAIN.value)
                    if data_dir == "tfds" else
                    xnli.read_xnli_dir(data_dir, sorted(set(config.eval_languages)
                                                        | set(config.train_languages)) or None))
        else:
            config = mlqa.MlqaConfig(
                setting=setting, code_switch_probability=_CS_PROB.value,
                max_seq_length=_MAX_SEQ.value or 256, doc_stride=_STRIDE.value,
                max_train_examples=_MAX_TRAIN.value, max_eval_examples=_MAX_EVAL.value,
                seeds=seeds,
            )
            data = mlqa.read_mlqa_dir(data_dir)
        trained = load_trained_encoder(_ENCODER.value, dropout=_DROPOUT.value)
        positions = trained.encoder.get_config().get("max_sequence_length")
        if positions and config.max_seq_length > positions:
            raise ValueError(f"--max_seq_length={config.max_seq_length} exceeds the encoder's "
                             f"{positions} positions; pass --max_seq_length={positions} or less.")
    except (FileNotFoundError, ValueError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    run = xnli.run_xnli if task == "xnli" else mlqa.run_mlqa
    report = run(trained, data, config, finetune, progress=not _QUIET.value)
    report["model"] = _LABEL.value or _ENCODER.value
    others = [reports.read_report(path) for path in _COMPARE.value]
    prefix = os.path.join(_OUTPUT.value, f"{task}_{setting}")
    paths = reports.write_report([*others, report], prefix) if others else \
        reports.write_report(report, prefix)
    if others:  # This run's own figures stay in their own JSON too.
        reports.write_report(report, prefix + "_" + _safe_label(report["model"]))
    print(reports.markdown_table([*others, report]))
    print(f"wrote {', '.join(paths.values())}")
    return 0


def _safe_label(label):
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label).strip("_")


def run_main():
    # --help exits 0, flag errors exit 2 (absl alone exits 1 for both).
    app.run(main, flags_parser=runtime.flags_parser(
        lambda: __doc__.strip() + "\n\n" + flags.FLAGS.main_module_help()))


if __name__ == "__main__":
    run_main()
