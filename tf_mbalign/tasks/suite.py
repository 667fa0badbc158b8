"""The zero-shot transfer suite: every task whose files are present, for one or two encoders.

One job per (encoder, task) for the selected tasks (`SuiteConfig.tasks`,
`--tasks`; default `DEFAULT_TASKS`: `nli`, `ner`, `pos`, `topic` and
`retrieval` with [CLS] and mean pooling; `OPTIONAL_TASKS`, `xnli_mini` and
`mlqa`, only when named) whose files are under the data root
(`registry.TASKS`). The `lowres` track (`SuiteConfig.track`,
`tf_mbalign.tasks.lowres_track`) runs retrieval and topic on the weak
languages of `<data root>/lowres/` and on control languages instead, as jobs
`lowres_retrieval` and `lowres_topic`. A job writes
`<output_dir>/<encoder label>/<job>.json` (the job is the task's name in the
default track) when it finishes, recording what made it:

    {"job": {"task", "encoder", "settings", "settings_hash", "code_version"}, ...}

`settings` is everything that changes a job's figures besides the encoder
(budget name and its numbers for the task, seeds, pooling rule, dropout,
data root and files); `settings_hash` is the first 16 hex digits of the
SHA-256 of its canonical JSON; `code_version` is `tf_mbalign.__version__`
plus that hash. On a re-run a finished job is reused when all three match
the new run and refused (`JobMismatch`, naming what differs) otherwise, so
figures made with other settings are never mixed into a report. Jobs run in
a subprocess each (`python -m tf_mbalign.tasks JOB.json`) or in this
process (`job_processes=False`, for tests).

Example:
```python
config = SuiteConfig(encoders=("e5-small", "runs/align/export"), data_root="data")
summary = run_suite(config)
```
"""

import dataclasses
import hashlib
import json
import os
import re
import subprocess
import sys
import time

import tf_mbalign
from tf_mbalign.tasks import budgets
from tf_mbalign.tasks.base import TEST_ROWS
from tf_mbalign.atomic_files import write_text_atomic

RETRIEVAL = "retrieval"
DEFAULT_TASKS = ("nli", "ner", "pos", "topic", RETRIEVAL)
OPTIONAL_TASKS = ("xnli_mini", "mlqa")  # the XNLI-mini and MLQA-mini protocols
FINETUNE_DROPOUT = 0.1
DEFAULT_TRACK = "default"
LOWRES_TRACK = "lowres"  # tf_mbalign.tasks.lowres_track
TRACKS = (DEFAULT_TRACK, LOWRES_TRACK)


class JobMismatch(ValueError):
    """A finished job's JSON was made with another encoder, settings or code version."""


@dataclasses.dataclass(frozen=True)
class SuiteConfig:
    """What one suite run does.

    Args:
        encoders: one or two `--encoder` values; with two, the second is
            compared against the first (B minus A).
        data_root: folder holding nli/, xnli/, panx/, udpos/, sib200/, tatoeba/
            (and mlqa/ for the optional `mlqa`).
        tasks: names of `DEFAULT_TASKS` and `OPTIONAL_TASKS` to run (those
            whose files are present); the lowres track runs those of
            `lowres_track.TASKS` among them.
        track: "default" (the tasks above on `data_root`'s folders) or
            "lowres" (`tf_mbalign.tasks.lowres_track`: weak languages of
            `data_root/lowres/` against the developer languages as controls).
        budget: a name of `budgets.BUDGETS`.
        seeds: number of fine-tuning seeds (first_seed .. first_seed+seeds-1).
        first_seed: the first of them (fresh seeds for a confirmation run).
        test_rows: "all", or "even" / "odd": one of two disjoint interleaved
            halves of every test file (choose on one, confirm on the other).
        output_dir: where jobs and reports go.
        job_processes: run each job in its own Python process.
        replicates: bootstrap replicates of the intervals.
        progress: progress bars.
    """

    encoders: tuple
    data_root: str
    tasks: tuple = DEFAULT_TASKS
    track: str = DEFAULT_TRACK
    budget: str = "cpu"
    seeds: int = 2
    first_seed: int = 0
    test_rows: str = "all"
    output_dir: str = os.path.join("results", "suite")
    job_processes: bool = True
    replicates: int = 1000
    progress: bool = True


def encoder_spec(spec):
    """A path becomes absolute (so a re-run from elsewhere matches); names stay."""
    return os.path.abspath(spec) if os.path.exists(spec) else spec


def encoder_labels(specs):
    """Folder-safe, distinct labels for the encoders, e.g. "e5-small", "export"."""
    labels = []
    for spec in specs:
        base = os.path.basename(os.path.normpath(spec)) if os.path.exists(spec) else spec
        label = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("_") or "encoder"
        while label in labels:
            label += "_b"
        labels.append(label)
    return labels


def select_tasks(names):
    """The named tasks (`--tasks`) in run order; an unknown name is an error naming the choices."""
    names = [name.strip() for name in names if name.strip()]
    choices = (*DEFAULT_TASKS, *OPTIONAL_TASKS)
    unknown = [name for name in names if name not in choices]
    if unknown or not names:
        raise ValueError(f"--tasks={','.join(names)}: "
                         + (f"unknown task(s) {', '.join(unknown)}; " if unknown else "no task; ")
                         + f"choose from {', '.join(choices)} (default: {','.join(DEFAULT_TASKS)}; "
                         f"optional: {', '.join(OPTIONAL_TASKS)}).")
    return tuple(name for name in choices if name in names)


def present_tasks(data_root, names=DEFAULT_TASKS):
    """{task name: files} of the tasks `names` whose files are under `data_root`, in run order."""
    from tf_mbalign.tasks import registry, runner

    data_root = os.path.abspath(data_root)  # files are recorded with absolute paths
    found = {name: (runner.retrieval_files(data_root) if name == RETRIEVAL
                    else registry.TASKS[name].find_files(data_root))
             for name in select_tasks(names)}
    return {name: files for name, files in found.items() if files}


def job_settings(task_name, files, budget, seeds, data_root, test_rows="all"):
    """Everything besides the encoder that changes a job's figures.

    `test_rows` is recorded only when it is not "all", so that jobs made
    before it existed keep their hashes.
    """
    settings = {"task": task_name, "budget": budget.name, "data_root": os.path.abspath(data_root),
                "files": files}
    if test_rows != "all":
        settings["test_rows"] = test_rows
    if task_name == RETRIEVAL:
        settings.update(max_pairs=budget.retrieval_max_pairs,
                        max_length=budget.retrieval_max_length, layer=-1)
    else:
        settings.update(seeds=list(seeds), pooling=budget.pooling, dropout=FINETUNE_DROPOUT,
                        task_budget=dataclasses.asdict(budget.task(task_name)))
    return settings


def settings_hash(settings):
    canonical = json.dumps(settings, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def job_record(task_name, spec, settings):
    digest = settings_hash(settings)
    return {"task": task_name, "encoder": spec, "settings": settings, "settings_hash": digest,
            "code_version": f"{tf_mbalign.__version__}+{digest}"}


def finished_job(path, record):
    """The finished job at `path` when it matches `record`; None when there is none.

    Raises:
        JobMismatch: the file was made with another encoder, settings or code version.
    """
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        result = json.load(f)
    made = result.get("job", {})
    differences = [key for key in ("encoder", "code_version", "settings_hash")
                   if made.get(key) != record[key]]
    if differences:
        changed = sorted(key for key in set(made.get("settings", {})) | set(record["settings"])
                         if made.get("settings", {}).get(key) != record["settings"].get(key))
        raise JobMismatch(
            f"{path} was made with another {', '.join(differences)} "
            f"(encoder {made.get('encoder')!r} vs {record['encoder']!r}; settings that differ: "
            f"{', '.join(changed) or 'none'}; code {made.get('code_version')!r} vs "
            f"{record['code_version']!r}). Its figures are not mixed with this run's: delete "
            "it to redo the job, or pass another --output_dir.")
    return result


def retrieval_test_sets(settings):
    """{test set name: {language: XX-en.XX path}} of a retrieval job's settings: the
    default track's one set is named `retrieval`, a track's sets are its files' keys."""
    if settings.get("track"):
        return settings["files"]
    return {RETRIEVAL: settings["files"]["tests"]}


def run_job(record, output_path, progress=True, log=print):
    """Runs one job in this process and writes its JSON atomically; returns the result."""
    from tf_mbalign.evaluation.trained_encoders import load_trained_encoder
    from tf_mbalign.tasks import registry, runner

    started = time.time()
    settings = record["settings"]
    budget = budgets.get_budget(settings["budget"])
    if record["task"] == RETRIEVAL:
        trained = load_trained_encoder(record["encoder"], dropout=0.0)
        result = runner.run_retrieval(trained, retrieval_test_sets(settings), budget, log,
                                      progress, settings.get("test_rows", "all"))
    else:
        trained = load_trained_encoder(record["encoder"], dropout=settings["dropout"])
        result = runner.run_finetuned_task(
            registry.TASKS[record["task"]], trained, settings["files"], budget,
            settings["seeds"], settings["dropout"], log, progress,
            settings.get("test_rows", "all"))
    result = {"job": record, **result, "wall_seconds": round(time.time() - started, 1)}
    os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
    write_text_atomic(output_path, json.dumps(result, ensure_ascii=False) + "\n")
    return result


def _run_job_in_subprocess(record, path, progress):
    spec_path = path[: -len(".json")] + ".job.json"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_text_atomic(spec_path, json.dumps({"record": record, "output": path,
                                             "progress": progress}, indent=2) + "\n")
    # The child imports this very tf_mbalign, whatever the working directory.
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(tf_mbalign.__file__)))
    path_list = [package_root, *filter(None, [os.environ.get("PYTHONPATH")])]
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join(path_list))
    process = subprocess.run([sys.executable, "-m", "tf_mbalign.tasks", spec_path],
                             env=environment)
    if process.returncode != 0:
        raise RuntimeError(f"{record['task']} on {record['encoder']} failed (exit "
                           f"{process.returncode}); finished jobs are kept; re-run to resume.")
    os.remove(spec_path)
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _default_track_jobs(config, selected, log):
    """{job name: (task name, files, extra settings)} of the default track."""
    tasks = present_tasks(config.data_root, selected)
    if not tasks:
        raise FileNotFoundError(
            f"{config.data_root}: no task files for --tasks={','.join(selected)} (expected "
            "nli/snli-train.tsv + xnli/, panx/, udpos/, sib200/, tatoeba/, or for the optional "
            "tasks xnli/dev-XX.tsv (xnli_mini), mlqa/dev-context-XX-question-XX.json (mlqa); "
            "see docs/data.md, 'The evaluation data').")
    absent = [name for name in selected if name not in tasks]
    if absent:
        log(f"no files under {config.data_root} for {', '.join(absent)}: not run")
    return {name: (name, files, {}) for name, files in tasks.items()}


def plan_jobs(config, log=print):
    """[(label, job name, record, output path)] of every job, checked before any runs."""
    budget = budgets.get_budget(config.budget)
    if not 1 <= len(config.encoders) <= 2:
        raise ValueError("the suite compares one or two encoders.")
    if config.seeds < 1:
        raise ValueError(f"--seeds={config.seeds}: at least 1.")
    if config.test_rows not in TEST_ROWS:
        raise ValueError(f"--test_rows={config.test_rows}: choose from {', '.join(TEST_ROWS)}.")
    if config.track not in TRACKS:
        raise ValueError(f"--track={config.track}: choose from {', '.join(TRACKS)}.")
    selected = select_tasks(config.tasks)
    if config.track == DEFAULT_TRACK:
        found = _default_track_jobs(config, selected, log)
    else:
        from tf_mbalign.tasks import lowres_track

        found = lowres_track.track_jobs(config.data_root, selected, log,
                                        every_task_named=selected == DEFAULT_TASKS)
    specs = [encoder_spec(s) for s in config.encoders]
    seeds = range(config.first_seed, config.first_seed + config.seeds)
    jobs = []
    for job_name, (task_name, files, extra) in found.items():
        settings = {**job_settings(task_name, files, budget, seeds, config.data_root,
                                   config.test_rows), **extra}
        for label, spec in zip(encoder_labels(config.encoders), specs):
            path = os.path.join(config.output_dir, label, f"{job_name}.json")
            jobs.append((label, job_name, job_record(task_name, spec, settings), path))
    return jobs


def run_suite(config, log=print):
    """Runs (or reuses) every job, then writes the reports; returns the summary dict."""
    from tf_mbalign.tasks import suite_report

    jobs = plan_jobs(config, log)
    finished = {(label, name): finished_job(path, record) for label, name, record, path in jobs}
    for number, (label, name, record, path) in enumerate(jobs, 1):
        prefix = f"[{number}/{len(jobs)}] {label} {name}"
        if finished[(label, name)] is not None:
            log(f"{prefix}: done earlier, reused ({path})")
            continue
        log(f"{prefix}: running")
        finished[(label, name)] = (
            _run_job_in_subprocess(record, path, config.progress) if config.job_processes
            else run_job(record, path, config.progress, log))
        log(f"{prefix}: {finished[(label, name)]['wall_seconds']:.0f} s")
    labels = encoder_labels(config.encoders)
    results = {label: {name: finished[(label, name)]
                       for job_label, name, _, _ in jobs if job_label == label}
               for label in labels}
    if config.track == DEFAULT_TRACK:
        return suite_report.write_suite_report(results, labels, config, log)
    from tf_mbalign.tasks import lowres_report

    return lowres_report.write_track_report(results, labels, config, log)
