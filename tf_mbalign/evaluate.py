r"""Cross-lingual evaluation: Tatoeba retrieval, and the aligned-vs-unaligned comparison.

Usage:
  python -m tf_mbalign.evaluate retrieval --encoder=runs/align/export \
      [--data=../shared/data/tatoeba] [--pooling=cls|mean] [--max_pairs=0]
  python -m tf_mbalign.evaluate compare --unaligned=e5-small \
      --aligned=runs/align/export [--data_root=../shared/data] [--output_dir=results/compare]

`retrieval` writes <output_dir>/retrieval.{json,md,png}: XX->en and en->XX
top-1 accuracy per language (cosine nearest neighbour, L2-normalized
sentence vectors). `compare` runs retrieval, XNLI (zero-shot,
translate-train, code-switch) and MLQA (zero-shot, code-switch) for both
encoders with the same seeds and flags (configs/xnli.flags,
configs/mlqa.flags), one process per job; a finished job's JSON is kept, so
re-running resumes. It writes side-by-side reports and summary.md.

  python -m tf_mbalign.evaluate suite --encoder=A [--against=B] \
      [--data_root=DIR] --budget=cpu|full --seeds=N [--output_dir=results/suite] \
      [--tasks=nli,ner,pos,topic,retrieval]

`suite` runs the zero-shot transfer suite (tf_mbalign/tasks/suite.py): every
task of --tasks whose files are under --data_root (by default nli/ + xnli/,
panx/, udpos/, sib200/, plus retrieval with [CLS] and mean pooling; the
optional xnli_mini (xnli/) and mlqa (mlqa/) only when named), with 95%
intervals and, with --against, the paired differences B - A. `compare` is
kept as it was.

  python -m tf_mbalign.evaluate suite --track=lowres --encoder=A [--against=B] \
      [--data_root=DIR] [--budget=cpu] [--seeds=2] [--test_rows=even|odd] \
      [--first_seed=N] [--output_dir=results/lowres]

`--track=lowres` runs the low-resource track (tf_mbalign/tasks/lowres_track.py)
instead: Tatoeba and FLORES retrieval (both directions, [CLS] and mean
pooling) and zero-shot topic on the weak languages of DIR/lowres/, with the
developer languages of tatoeba/ and sib200/ (and English for topic) as
controls; it writes lowres.{md,json,png}: weak languages first, controls
second, the headline at mean pooling for both encoders.
"""

from tf_mbalign import runtime

runtime.import_tensorflow_quietly()

import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from absl import app, flags  # noqa: E402

from tf_mbalign.atomic_files import write_json_atomic, write_text_atomic  # noqa: E402
from tf_mbalign.data.data_root import default_data_root  # noqa: E402
from tf_mbalign.tasks.suite import (DEFAULT_TASKS, DEFAULT_TRACK, OPTIONAL_TASKS,  # noqa: E402
                                    TRACKS)

COMMANDS = ("retrieval", "compare", "suite")

_ENCODER = flags.DEFINE_string("encoder", None, "retrieval: export dir, run dir, or --encoder "
                               "value (e5-small, HF dir, preset:NAME, tiny:demo).")
_DATA = flags.DEFINE_string("data", "", "retrieval: dir of XX-en.XX / XX-en.en files "
                            "('' = $TF_MBALIGN_SHARED_DATA/tatoeba).")
_POOLING = flags.DEFINE_enum("pooling", "", ["", "cls", "mean"],
                             "Sentence representation ('' = the export's or run's, else "
                             "the checkpoint's: mean without an MLM head, e.g. e5-small; cls "
                             "with one).")
_LAYER = flags.DEFINE_integer("layer", None, "Encoder layer (default: the export's or run's, "
                              "else -1).")
_MAX_PAIRS = flags.DEFINE_integer("max_pairs", 0, "> 0: first N pairs per language.")
_MAX_LENGTH = flags.DEFINE_integer("max_length", 128, "Tokens per sentence.")
_LANGUAGES = flags.DEFINE_list("languages", [], "Only these languages (default: all found).")
_OUTPUT = flags.DEFINE_string("output_dir", "results", "Where the reports go.")
_LABEL = flags.DEFINE_string("label", "", "The model's name in reports (default: --encoder).")
_COMPARE = flags.DEFINE_list("compare_with", [], "Retrieval report JSONs to show side by side.")

_UNALIGNED = flags.DEFINE_string("unaligned", "e5-small", "compare: the encoder before alignment.")
_ALIGNED = flags.DEFINE_string("aligned", "runs/align/export", "compare: the aligned encoder.")
_DATA_ROOT = flags.DEFINE_string("data_root", "", "compare: dir with tatoeba/, xnli/, mlqa/ "
                                 "('' = $TF_MBALIGN_SHARED_DATA or ../shared/data).")
_XNLI_FLAGS = flags.DEFINE_string("xnli_flagfile", "configs/xnli.flags", "compare: XNLI flags.")
_MLQA_FLAGS = flags.DEFINE_string("mlqa_flagfile", "configs/mlqa.flags", "compare: MLQA flags.")
_XNLI_SETTINGS = flags.DEFINE_list("xnli_settings", ["zero_shot", "translate_train",
                                                     "code_switch"], "compare: XNLI settings.")
_MLQA_SETTINGS = flags.DEFINE_list("mlqa_settings", ["zero_shot", "code_switch"],
                                   "compare: MLQA settings.")
_EXTRA = flags.DEFINE_list("finetune_flags", [], "compare: extra flags for every fine-tuning "
                           "job, e.g. --finetune_flags=--max_steps=20,--seeds=0.")


def data_root():
    """--data_root, else `$TF_MBALIGN_SHARED_DATA`, else `../shared/data`."""
    return _DATA_ROOT.value or default_data_root()


def run_retrieval():
    from tf_mbalign.evaluation import reports
    from tf_mbalign.evaluation.retrieval import evaluate_retrieval, read_bitext_dir
    from tf_mbalign.evaluation.sentence_embedding import SentenceEmbedder
    from tf_mbalign.evaluation.trained_encoders import load_trained_encoder

    if not _ENCODER.value:
        raise ValueError("retrieval needs --encoder")
    started = time.time()
    data = read_bitext_dir(_DATA.value or os.path.join(data_root(), "tatoeba"),
                           _LANGUAGES.value or None, _MAX_PAIRS.value or None)
    trained = load_trained_encoder(_ENCODER.value, dropout=0.0)
    pooling = _POOLING.value or trained.pooling
    layer = trained.representation_layer if _LAYER.value is None else _LAYER.value
    embedder = SentenceEmbedder(trained.encoder, trained.tokenizer, pooling, layer,
                                _MAX_LENGTH.value)
    results = evaluate_retrieval(embedder, data)
    per_seed = {direction: {lang: [row[direction]] for lang, row in results["languages"].items()}
                for direction in ("xx_to_en", "en_to_xx")}
    metrics, average = reports.summarize(per_seed)
    report = {
        "task": "retrieval", "setting": f"{pooling}, layer {layer}",
        "model": _LABEL.value or _ENCODER.value, "encoder": trained.source,
        "metrics": metrics, "average": average,
        "pairs": {lang: row["pairs"] for lang, row in results["languages"].items()},
        "config": {"pooling": pooling, "layer": layer, "max_length": _MAX_LENGTH.value,
                   "max_pairs": _MAX_PAIRS.value},
        "wall_seconds": round(time.time() - started, 1),
    }
    others = [reports.read_report(path) for path in _COMPARE.value]
    prefix = os.path.join(_OUTPUT.value, "retrieval")
    if others:
        reports.write_report(report, prefix + "_" + report["model"].replace("/", "_"))
    paths = reports.write_report([*others, report], prefix)
    print(reports.markdown_table([*others, report]))
    print(f"wrote {', '.join(paths.values())}")


def run_compare():
    """Both encoders on every task; one subprocess per job, resumable."""
    from tf_mbalign.evaluation import reports

    out = _OUTPUT.value if _OUTPUT.value != "results" else os.path.join("results", "compare")
    root = data_root()
    models = {"unaligned": _UNALIGNED.value, "aligned": _ALIGNED.value}
    for label, spec in models.items():
        if label == "aligned" and not os.path.exists(spec):
            raise FileNotFoundError(
                f"--aligned={spec} does not exist: train first "
                "(python -m tf_mbalign.train --flagfile=configs/align.flags).")
    jobs = [("retrieval", label, [
        "-m", "tf_mbalign.evaluate", "retrieval", f"--encoder={spec}",
        f"--data={os.path.join(root, 'tatoeba')}", f"--label={label}"])
        for label, spec in models.items()]
    # Zero-shot first: the headline figures are there when a long run is cut short.
    task_settings = sorted(
        [("xnli", s, _XNLI_FLAGS.value) for s in _XNLI_SETTINGS.value]
        + [("mlqa", s, _MLQA_FLAGS.value) for s in _MLQA_SETTINGS.value],
        key=lambda job: (job[1] != "zero_shot", job[1] == "translate_train"))
    for task, setting, flagfile in task_settings:
        for label, spec in models.items():
            jobs.append((f"{task}_{setting}", label, [
                "-m", "tf_mbalign.finetune", f"--task={task}", f"--encoder={spec}",
                f"--flagfile={flagfile}", f"--setting={setting}",
                f"--data={os.path.join(root, task)}", f"--label={label}", "--quiet",
                *_EXTRA.value]))
    timings = {}
    for name, label, args in jobs:
        job_dir = os.path.join(out, label)
        result = os.path.join(job_dir, f"{name}.json")
        if os.path.exists(result):
            print(f"[{label}] {name}: done earlier ({result})")
            continue
        print(f"[{label}] {name}: running", flush=True)
        started = time.time()
        process = subprocess.run([sys.executable, *args, f"--output_dir={job_dir}"])
        timings[f"{label}/{name}"] = round(time.time() - started, 1)
        if process.returncode != 0:
            raise RuntimeError(f"[{label}] {name} failed (exit {process.returncode}); the "
                               f"finished jobs are kept in {out}; re-run to resume.")
    names = [name for name, label, _ in jobs if label == "unaligned"]
    summary = ["# Unaligned vs aligned", "",
               f"unaligned = `{models['unaligned']}`, aligned = `{models['aligned']}`, "
               f"data = `{root}`", ""]
    for name in names:
        pair = [reports.read_report(os.path.join(out, label, f"{name}.json")) for label in models]
        reports.write_report(pair, os.path.join(out, name))
        summary += [f"## {name}", "", f"![{name}]({name}.png)", "",
                    reports.markdown_table(pair), ""]
        summary.append("wall time: " + ", ".join(
            f"{r['model']} {r['wall_seconds']:.0f} s" for r in pair) + "\n")
    write_text_atomic(os.path.join(out, "summary.md"), "\n".join(summary))
    write_json_atomic(os.path.join(out, "timings.json"), timings, indent=2)
    print(f"wrote {os.path.join(out, 'summary.md')}")


_AGAINST = flags.DEFINE_string("against", "", "suite: a second encoder, compared against "
                               "--encoder (differences are against minus encoder).")
_BUDGET = flags.DEFINE_enum("budget", "cpu", ["cpu", "full", "tiny"], "suite: data and "
                            "schedule per task (tf_mbalign/tasks/budgets.py).")
_SEEDS = flags.DEFINE_integer("seeds", 2, "suite: fine-tuning seeds per task "
                              "(--first_seed .. --first_seed+N-1).")
_FIRST_SEED = flags.DEFINE_integer("first_seed", 0, "suite: the first fine-tuning seed (fresh "
                                   "seeds to confirm a choice: e.g. 100).")
_TEST_ROWS = flags.DEFINE_enum("test_rows", "all", ["all", "even", "odd"], "suite: every test "
                               "row, or one of two disjoint interleaved halves of each test file "
                               "(choose a recipe on one half, confirm it on the other).")
_TASKS = flags.DEFINE_list("tasks", list(DEFAULT_TASKS), "suite: the tasks to run (those whose "
                           f"files are present); optional ones: {', '.join(OPTIONAL_TASKS)}.")
_TRACK = flags.DEFINE_enum("track", DEFAULT_TRACK, list(TRACKS), "suite: the default "
                           "zero-shot transfer suite, or the low-resource track (weak languages "
                           "of DATA_ROOT/lowres/ against the developer languages).")
_JOB_PROCESSES = flags.DEFINE_boolean("job_processes", True, "suite: each job in its own "
                                      "process (false: all in this one).")
_QUIET = flags.DEFINE_boolean("quiet", False, "suite: no progress bars.")


def run_suite_command():
    """Every task of the suite for --encoder (and --against); resumable."""
    from tf_mbalign.tasks.suite import SuiteConfig, run_suite

    if not _ENCODER.value:
        raise ValueError("suite needs --encoder")
    default_dir = "suite" if _TRACK.value == DEFAULT_TRACK else _TRACK.value
    output_dir = (_OUTPUT.value if _OUTPUT.value != "results"
                  else os.path.join("results", default_dir))
    config = SuiteConfig(
        encoders=tuple(spec for spec in (_ENCODER.value, _AGAINST.value) if spec),
        data_root=data_root(), tasks=tuple(_TASKS.value), track=_TRACK.value,
        budget=_BUDGET.value,
        seeds=_SEEDS.value, first_seed=_FIRST_SEED.value, test_rows=_TEST_ROWS.value,
        output_dir=output_dir, job_processes=_JOB_PROCESSES.value,
        progress=not _QUIET.value)
    run_suite(config)


def main(argv):
    if len(argv) != 2 or argv[1] not in COMMANDS:
        raise app.UsageError(f"usage: python -m tf_mbalign.evaluate {{{'|'.join(COMMANDS)}}} "
                             "[flags]", exitcode=runtime.BAD_FLAGS_EXIT_CODE)
    try:
        commands = {"retrieval": run_retrieval, "compare": run_compare,
                    "suite": run_suite_command}
        commands[argv[1]]()
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def run_main():
    # --help exits 0, flag errors exit 2 (absl alone exits 1 for both).
    app.run(main, flags_parser=runtime.flags_parser(
        lambda: __doc__.strip() + "\n\n" + flags.FLAGS.main_module_help()))


if __name__ == "__main__":
    run_main()
