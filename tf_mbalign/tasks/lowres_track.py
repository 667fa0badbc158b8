"""The suite's low-resource track: weak languages, with the developer languages as controls.

    python -m tf_mbalign.evaluate suite --track=lowres --encoder=e5-small \
        [--against=runs/align/export] [--data_root=DIR] [--test_rows=even|odd] \
        [--first_seed=N] [--output_dir=results/lowres]

Its files, under the data root (the shared data's README, "Low-resource track"):

- `lowres/tatoeba/XX-en.{XX,en}` and `lowres/flores/XX-en.{XX,en}`: retrieval
  test sets of the weak languages (Tatoeba: short everyday sentences;
  FLORES: the prose the alignment pairs come from, rows never trained on);
- `lowres/sib200/test-XX.tsv`: topic test sets of the weak languages;
- the controls: the languages of `tatoeba/` (retrieval) and of
  `sib200/test-XX.tsv`, English included (topic, trained on
  `sib200/train-en.tsv` as the default track's `topic`).

Two jobs an encoder, resumable as the suite's (`tasks.suite`):

- `lowres_retrieval`: test sets `tatoeba` (weak and control languages) and
  `flores` (weak languages), XX->en and en->XX, with [CLS] and mean pooling
  (`runner.run_retrieval`); tables `<set>_<pooling>_<direction>`;
- `lowres_topic`: the `topic` task and budget, tested on every weak, control
  and English file; table `topic`.

Their settings are the suite's (`suite.job_settings`) plus `track` and
`languages` ({"weak": [...], "control": [...]}: the report's groups), so the
hash covers the track's files and groups. The report is
`tf_mbalign.tasks.lowres_report`.

Example:
```python
jobs = track_jobs("../shared/data", ("retrieval", "topic"), log=print)
jobs["lowres_retrieval"]  # ("retrieval", {"tatoeba": {...}, "flores": {...}}, {...})
```
"""

import os

from tf_mbalign.evaluation.retrieval import bitext_files
from tf_mbalign.tasks import readers
from tf_mbalign.tasks.suite import LOWRES_TRACK, RETRIEVAL

TOPIC = "topic"
TASKS = (RETRIEVAL, TOPIC)  # in run order: retrieval, the headline, first
WEAK, CONTROL = "weak", "control"
RETRIEVAL_SETS = ("tatoeba", "flores")  # folders under lowres/; tatoeba/ holds the controls
FOLDERS = (*(f"lowres/{name}/" for name in RETRIEVAL_SETS), "lowres/sib200/")


def job_name(task):
    """The job (and its JSON file) of a track task: `lowres_retrieval`, `lowres_topic`."""
    return f"{LOWRES_TRACK}_{task}"


def lowres_folder(data_root):
    """`<data_root>/lowres`.

    Raises:
        FileNotFoundError: it is absent (the message names it and the fix).
    """
    folder = os.path.join(data_root, "lowres")
    if not os.path.isdir(folder):
        raise FileNotFoundError(
            f"{folder}: no such folder. The lowres track reads {', '.join(FOLDERS)} under "
            "--data_root (the shared data's README, 'Low-resource track'): pass "
            "--data_root=DIR of the folder that holds lowres/, or set TF_MBALIGN_SHARED_DATA.")
    return folder


def _bitexts_or_empty(directory):
    """`bitext_files` of `directory`, {} when it is absent (a folder without files, or
    a file without its English side, is an error)."""
    return bitext_files(directory) if os.path.isdir(directory) else {}


def _joined(weak, control, what):
    """{language: path} of both groups; a language in both is an error naming its files."""
    both = sorted(set(weak) & set(control))
    if both:
        raise ValueError(f"{what}: language(s) {both} are both weak and control "
                         f"({weak[both[0]]} and {control[both[0]]}); rename or remove one.")
    return {**weak, **control}


def _groups(weak, control):
    return {WEAK: sorted(weak), CONTROL: sorted(control)}


def retrieval_job(data_root):
    """(files, languages) of `lowres_retrieval`, or None without weak retrieval files.

    files = {"tatoeba": {language: XX-en.XX path}, "flores": {...}} (sets without
    files left out); languages = {"weak": [...], "control": [...]}.
    """
    lowres = lowres_folder(data_root)
    weak = {name: _bitexts_or_empty(os.path.join(lowres, name)) for name in RETRIEVAL_SETS}
    if not any(weak.values()):
        return None
    control = _bitexts_or_empty(os.path.join(data_root, "tatoeba"))
    files = {"tatoeba": _joined(weak["tatoeba"], control, "tatoeba"), "flores": weak["flores"]}
    weak_languages = set(weak["tatoeba"]) | set(weak["flores"])
    return ({name: tests for name, tests in files.items() if tests},
            _groups(weak_languages, control))


def topic_job(data_root):
    """(files, languages) of `lowres_topic` (the `topic` task's files, the weak test
    files added), or None without `sib200/train-en.tsv` or weak topic files."""
    from tf_mbalign.tasks import registry

    weak = readers.test_files(os.path.join(lowres_folder(data_root), "sib200"))
    files = registry.TASKS[TOPIC].find_files(data_root)
    if not weak or files is None:
        return None
    return ({**files, "tests": _joined(weak, files["tests"], "sib200")},
            _groups(weak, files["tests"]))


def track_jobs(data_root, selected, log=print, every_task_named=False):
    """{job name: (task name, files, extra settings)} of the track, in run order.

    Args:
        data_root: the folder holding lowres/ (and tatoeba/, sib200/).
        selected: the task names `--tasks` selected; the track runs those of
            `TASKS` among them.
        log: callable taking a line of text.
        every_task_named: `selected` is the suite's default list (then the
            tasks outside the track are not mentioned).

    Raises:
        FileNotFoundError: lowres/ is absent, or holds none of the track's files.
        ValueError: `selected` names none of `TASKS`.
    """
    data_root = os.path.abspath(data_root)  # files are recorded with absolute paths
    outside = [name for name in selected if name not in TASKS]
    if outside and not every_task_named:
        log(f"--tasks: {', '.join(outside)} not in the {LOWRES_TRACK} track: not run")
    tasks = [name for name in TASKS if name in selected]
    if not tasks:
        raise ValueError(f"--tasks={','.join(selected)}: the {LOWRES_TRACK} track runs "
                         f"{', '.join(TASKS)}; name one of them.")
    finders = {RETRIEVAL: retrieval_job, TOPIC: topic_job}
    jobs = {}
    for task in tasks:
        found = finders[task](data_root)
        if found is None:
            log(f"no {LOWRES_TRACK} files under {data_root} for {task}: not run")
            continue
        files, languages = found
        jobs[job_name(task)] = (task, files, {"track": LOWRES_TRACK, "languages": languages})
    if not jobs:
        raise FileNotFoundError(
            f"{os.path.join(data_root, 'lowres')}: no files of the {LOWRES_TRACK} track for "
            f"--tasks={','.join(tasks)} (expected XX-en.XX and XX-en.en in lowres/tatoeba/ or "
            "lowres/flores/, test-XX.tsv in lowres/sib200/ with sib200/train-en.tsv).")
    return jobs
