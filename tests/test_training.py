"""Training runs: resume, distribution, the binary, bad input, exports."""

import json
import os

import numpy as np
import pytest

from conftest import REPO_ROOT, TEST_PRECISION_FLAG, run_module, tiny_train_config  # noqa: E402
from tf_mbalign.training.trainer import AlignmentRun


def _losses(history):
    """(step, loss, tlm_loss, moco_loss, anchor_loss) per record; a loss
    logged as None (MoCo without negatives yet, the anchor off) is NaN, which
    assert_allclose matches with NaN."""
    return [(h["step"], h["loss"], h["tlm_loss"],
             *(np.nan if h[name] is None else h[name] for name in ("moco_loss", "anchor_loss")))
            for h in history]


# tolerance: resume replays the same ops on the same kernels: bitwise by design; rtol 1e-5 of ~5-10 losses only absorbs summation order.
@pytest.mark.numerics
def test_resume_gives_the_same_per_step_losses(tmp_path):
    # Dropout on, head warm-up, and a restart in the encoder phase; MoCo's
    # queue and key encoder restored, and the English anchor's teacher
    # rebuilt from the encoder the resumed run loads.
    common = dict(head_warmup_steps=2, dropout=0.1, checkpoint_every=3, anchor_weight=0.5)
    straight = AlignmentRun(tiny_train_config(tmp_path / "a", train_steps=4, **common)).run()
    first = AlignmentRun(tiny_train_config(tmp_path / "b", train_steps=1, **common)).run()
    second = AlignmentRun(tiny_train_config(tmp_path / "b", train_steps=4, **common)).run()
    assert [h["step"] for h in first] == [1, 2, 3] and [h["step"] for h in second] == [4, 5, 6]
    # Losses are ~5-10: relative 1e-5 (float32 summation order) + a small absolute floor.
    np.testing.assert_allclose(np.array(_losses(straight)), np.array(_losses(first + second)),
                               rtol=1e-5, atol=1e-6)
    # The anchor was computed and changed once the encoder trained.
    anchors = [h["anchor_loss"] for h in straight]
    assert all(a is not None and a > 0 for a in anchors) and anchors[-1] != anchors[0]
    # metrics.jsonl of the resumed run holds each step once.
    with open(tmp_path / "b" / "metrics.jsonl") as f:
        assert [json.loads(line)["step"] for line in f] == [1, 2, 3, 4, 5, 6]


def test_head_warmup_leaves_the_encoder_unchanged(tmp_path):
    run = AlignmentRun(tiny_train_config(tmp_path / "w", train_steps=0, head_warmup_steps=2))
    before = [w.copy() for w in run.aligner.encoder.get_weights()]
    head_before = [w.copy() for w in run.aligner.mlm_head.get_weights()]
    history = run.run()
    assert [h["phase"] for h in history] == ["head_warmup", "head_warmup"]
    for a, b in zip(before, run.aligner.encoder.get_weights()):
        np.testing.assert_array_equal(a, b)
    changed = [not np.array_equal(a, b) for a, b in
               zip(head_before, run.aligner.mlm_head.get_weights())]
    assert sum(changed) >= 3  # dense kernel, bias, layer norm, output bias


def test_training_lowers_the_losses(tmp_path):
    history = AlignmentRun(tiny_train_config(
        tmp_path / "l", train_steps=30, learning_rate=3e-3, queue_size=64,
        global_batch_size=16)).run()
    first, last = history[:5], history[-5:]
    assert np.mean([h["tlm_loss"] for h in last]) < np.mean([h["tlm_loss"] for h in first]) - 0.3
    assert history[-1]["queue_fill"] == 64
    assert all(np.isfinite(h["loss"]) for h in history)


FLOAT32_EPS = float(np.finfo(np.float32).eps)


def _flippable_rows(comparison):
    """Rows whose top-1 may differ between two float32 computations of the
    same logits: the correct logit leads (or trails) the best other one by no
    more than twice the largest difference measured between the two paths
    (each side may round either way), plus 8 ulps of the logits' scale for
    the step's own recomputation of them."""
    noise = 2 * comparison["max_diff"] + 8 * FLOAT32_EPS * comparison["scale"]
    return sum(abs(m) <= noise for m in comparison["margins"])


MIRRORED_VARIANTS = ("queue", "anchor")


# Its tests carry xdist_group("mirrored"): one worker builds it (with -n 2 each
# worker would build its own). Session scope: a module fixture was built again
# when that worker ran another module's test between the two variants.
@pytest.fixture(scope="session")
def mirrored_reports(tmp_path_factory):
    """distributed_checks.py's report of each variant, from one process
    (TensorFlow and the 2 logical devices start once)."""
    out = tmp_path_factory.mktemp("mirrored")
    result = run_module([os.path.join(REPO_ROOT, "tests", "distributed_checks.py"),
                         "mirrored_equivalence", str(out), *MIRRORED_VARIANTS])
    assert result.returncode == 0, result.stderr[-3000:]
    return {v: json.loads((out / f"{v}.json").read_text()) for v in MIRRORED_VARIANTS}


# tolerance: losses, logits and gradients to float32 summation noise (1e-5 relative);
# accuracies up to the rows whose winner leads by less than that noise.
@pytest.mark.numerics
@pytest.mark.distributed
@pytest.mark.parametrize("variant", MIRRORED_VARIANTS)
@pytest.mark.xdist_group("mirrored")
def test_mirrored_step_equals_single_device_step(mirrored_reports, variant):
    """MoCo's queue; and in-batch negatives gathered over replicas with their
    gradient (with tlm_weight 0.5 and a pair id shared across replicas) with
    the English anchor on (the anchor variant exercises every in-batch path)."""
    report = mirrored_reports[variant]
    negatives = report["negatives"]
    assert report["replicas"] == 2 and report["variant"] == variant
    for single, mirrored, logits in zip(report["single"], report["mirrored"], report["logits"]):
        for key in ("loss", "tlm_loss", "moco_loss", "anchor_loss", "gradient_norm"):
            # Relative: losses and gradient norms are O(1-10); replicas sum in another order.
            assert abs(single[key] - mirrored[key]) <= 1e-5 * max(1.0, abs(single[key])), (
                key, single, mirrored)
        # The logits themselves, before each step: float32 noise of O(1-20) values.
        for objective in ("contrastive", "tlm"):
            assert logits[objective]["max_diff"] <= 1e-5 * max(1.0, logits[objective]["scale"])
        # Accuracies are counts of argmax wins: they may differ by at most the
        # rows whose winner leads by no more than the measured noise (the tiny
        # model's step-1 embeddings are near-identical, so near-ties happen).
        for key, objective in (("moco_accuracy", "contrastive"), ("tlm_accuracy", "tlm")):
            rows = len(logits[objective]["margins"])
            assert (abs(single[key] - mirrored[key]) * rows
                    <= _flippable_rows(logits[objective]) + 1e-6 * rows), (key, single, mirrored)
    # The summed gradients agree to float32 summation noise (without the
    # all-gather's gradient, in-batch negatives differ by ~25% here).
    assert report["max_gradient_relative_diff"] <= 1e-4
    # Adam is made linear in the gradients (epsilon 1, distributed_checks.py),
    # so each variable's difference is its gradients' summation noise: within
    # 1e-3 of how far it moved (a wrong replica scaling is O(1) of that), plus
    # the rounding of the weights themselves (an ulp of max|w| per step).
    for step, variables in enumerate(report["weight_diff"], start=1):
        for difference, moved, largest in variables:
            assert difference <= 1e-3 * moved + 2 * step * FLOAT32_EPS * max(1.0, largest), (
                step, difference, moved, largest)
    assert min(report["weights_changed"]) > 5e-4  # the steps really trained
    assert report["single"][1]["moco_loss"] > 0  # negatives were used
    assert (report["single"][0]["anchor_loss"] > 0) == (variant == "anchor")
    if negatives == "queue":
        # Queued keys are unit vectors computed by the two paths.
        assert max(report["max_queue_diff"]) <= 1e-5
        assert report["queue_filled"] == [12, 12] and report["queue_pointer"] == [0, 0]
    else:
        assert report["negatives"] == "in_batch" and not report["max_queue_diff"]


# Two local MultiWorkerMirroredStrategy workers train, are preempted and
# resume in tests/test_fault_tolerance.py::test_sigterm_to_one_worker_saves_on_all_and_a_restart_resumes.


# === The binary and bad input ===

def _train(args, tmp_path):
    return run_module(["-m", "tf_mbalign.train", "--encoder=tiny:demo", TEST_PRECISION_FLAG,
                       f"--model_dir={tmp_path / 'run'}", *args])


# The training binary's command lines that end before any training (bad
# flags, bad input, --help; one trains 0 steps), run together in one process
# (tests/binary_runs.py) instead of a TensorFlow start-up each. A case writes
# its files into its own directory and returns its arguments; every case gets
# --model_dir=<its directory>/run, which must not appear when it fails.
def _corpus_file(content):
    def write(directory):
        corpus = directory / "corpus"
        corpus.mkdir()
        if content is not None:
            (corpus / "en-de.tsv").write_bytes(content)
        return [f"--corpus={corpus / 'en-de.tsv'}"]
    return write


def _files(files, corpus):
    def write(directory):
        for name, text in files.items():
            (directory / name).write_text(text)
        return [f"--corpus={','.join(str(directory / name) for name in corpus.split(','))}"]
    return write


def _unknown_language_corpus(directory):
    (directory / "pairs.tsv").write_text("Hello\tBonjour\nGood night\tBonne nuit\n")
    return [f"--corpus={directory / 'pairs.tsv'}", "--train_steps=0", "--noexport", "--quiet"]


def _mismatched_line_counts(directory):
    (directory / "a.en").write_text("one\ntwo\nthree\n")
    (directory / "a.de").write_text("eins\nzwei\n")
    return [f"--corpus={directory / 'a.en'},{directory / 'a.de'}"]


BAD_CORPORA = {  # case: (writes the corpus, what stderr says)
    "invalid_utf8": (_corpus_file(b"Hello\tHallo\nbad \xff\tx\n"), "en-de.tsv:2: invalid UTF-8"),
    "blank": (_corpus_file(b"\n  \t \n"), "no usable sentence pairs"),
    "missing": (_corpus_file(None), "not found"),
}
BAD_FLAGS = {  # case: (arguments, what stderr says)
    "misspelt": (["--queue_sise=16"],
                 "Unknown command line flag 'queue_sise'. Did you mean: queue_size ?"),
    "not_an_int": (["--train_steps=ten"], "flag --train_steps=ten: invalid literal for int()"),
    "not_a_choice": (["--pooling=max"], "flag --pooling=max: value should be one of <cls|mean>"),
    "stray": (["stray"], "unexpected arguments: stray"),
}
BAD_CORPUS_INPUT = {  # case: (writes the files, what stderr says)
    "tsv_without_tab": (_files({"en-de.tsv": "Hello\tHallo\njust English\n"}, "en-de.tsv"),
                        "en-de.tsv:2: expected `english<TAB>other` (one tab), found 0 tabs: the "
                        "tab and the translation after it are missing"),
    "tab_in_line_aligned": (_files({"pairs.en": "Hello\tHallo\n", "pairs.fr": "Hello\tBonjour\n"},
                                   "pairs.en,pairs.fr"),
                            "pairs.en:1: a tab in the English file of a line-aligned pair. This "
                            "looks like an `english<TAB>other` TSV file"),
    "three_files": (_files({"a.en": "one\n", "a.de": "eins\n", "a.fr": "un\n"}, "a.en,a.de,a.fr"),
                    "a comma list is either TSV files"),
}
BINARY_CASES = {
    **{f"bad_corpus/{name}": write for name, (write, _) in BAD_CORPORA.items()},
    **{f"bad_flags/{name}": (lambda d, a=args: a) for name, (args, _) in BAD_FLAGS.items()},
    **{f"bad_input/{name}": write for name, (write, _) in BAD_CORPUS_INPUT.items()},
    "mismatched_line_counts": _mismatched_line_counts,
    "invalid_together": lambda d: ["--contrastive_negatives=queue", "--queue_size=4",
                                   "--global_batch_size=8", "--temperature=0"],
    "help": lambda d: ["--help"],
    "unknown_language": _unknown_language_corpus,
}


# Session scope, like every fixture an xdist_group shares (BUILD_NOTES.md,
# "Tests on 2 processes"): its worker may run another module's test between two
# of the group's, which would tear a module fixture down and build it again.
@pytest.fixture(scope="session")
def binary_cases(tmp_path_factory):
    """{case: (its directory, {"exit_code", "stdout", "stderr"})} of every
    `BINARY_CASES` entry, run in one process."""
    from binary_runs import run_many

    root = tmp_path_factory.mktemp("binary_cases")
    directories, requests = {}, []
    for index, (name, write) in enumerate(BINARY_CASES.items()):
        directory = root / f"case{index}"
        directory.mkdir()
        directories[name] = directory
        requests.append({"argv": ["--encoder=tiny:demo", TEST_PRECISION_FLAG,
                                  f"--model_dir={directory / 'run'}", *write(directory)]})
    results = run_many("tf_mbalign.train", requests)
    return {name: (directories[name], result) for name, result in zip(BINARY_CASES, results)}


@pytest.mark.xdist_group("training_binary_cases")
@pytest.mark.parametrize("case", sorted(BAD_CORPORA))
def test_bad_corpus_fails_before_training_and_writes_nothing(binary_cases, case):
    directory, result = binary_cases[f"bad_corpus/{case}"]
    assert result["exit_code"] == 2
    assert BAD_CORPORA[case][1] in result["stderr"], result["stderr"][-2000:]
    assert "Traceback" not in result["stderr"]
    assert not (directory / "run").exists()


@pytest.mark.xdist_group("training_binary_cases")
def test_mismatched_line_counts_name_both_files(binary_cases):
    directory, result = binary_cases["mismatched_line_counts"]
    assert result["exit_code"] == 2
    assert "a.en has 3 lines" in result["stderr"] and "a.de has 2 lines" in result["stderr"]
    assert not (directory / "run").exists()


@pytest.mark.xdist_group("training_binary_cases")
def test_invalid_flags_are_reported_together(binary_cases):
    _, result = binary_cases["invalid_together"]
    assert result["exit_code"] == 2
    assert "--queue_size=4 must hold" in result["stderr"] and "--temperature" in result["stderr"]


@pytest.mark.xdist_group("training_binary_cases")
def test_help_is_grouped_by_topic_and_exits_0(binary_cases):
    directory, result = binary_cases["help"]
    stdout = result["stdout"]
    assert result["exit_code"] == 0, result["stderr"][-2000:]
    topics = ["data:", "model:", "objectives (TLM, MoCo, English anchor):", "optimizer:",
              "checkpoints and runtime:", "distribution:"]
    positions = [stdout.index(f"\n{topic}\n") for topic in topics]
    assert positions == sorted(positions)
    # Each flag under its topic: --corpus under data, --encoder under model.
    assert positions[0] < stdout.index("\n  --corpus ") < positions[1]
    assert positions[1] < stdout.index("\n  --encoder ") < positions[2]
    assert "e5_small or embedded" in stdout  # the encoder aliases, documented
    # Defaults that depend on the checkpoint say so, with both values.
    assert "--temperature (default: by checkpoint: 0.07 with an MLM head, 0.05 without)" in stdout
    assert "--contrastive_negatives (default: by checkpoint: 'queue' with an MLM head, " \
        "'in_batch' without)" in stdout
    assert "\n  --tlm_weight " in stdout and "\n  --contrastive_negatives " in stdout
    assert "\n  --anchor_weight (default: 0.0)" in stdout
    assert not (directory / "run").exists()


def test_every_training_flag_has_one_help_topic():
    import dataclasses

    from tf_mbalign.config import TOPICS, TrainConfig

    listed = [name for names in TOPICS.values() for name in names]
    assert sorted(listed) == sorted(f.name for f in dataclasses.fields(TrainConfig))


@pytest.mark.xdist_group("training_binary_cases")
@pytest.mark.parametrize("case", sorted(BAD_FLAGS))
def test_bad_flags_exit_2_with_the_problem(binary_cases, case):
    directory, result = binary_cases[f"bad_flags/{case}"]
    assert result["exit_code"] == 2, result["stderr"][-2000:]
    assert BAD_FLAGS[case][1] in result["stderr"], result["stderr"][-2000:]
    assert "Traceback" not in result["stderr"]
    assert not (directory / "run").exists()


@pytest.mark.xdist_group("training_binary_cases")
@pytest.mark.parametrize("case", sorted(BAD_CORPUS_INPUT))
def test_bad_corpus_input_exits_2_naming_the_fix(binary_cases, case):
    directory, result = binary_cases[f"bad_input/{case}"]
    assert result["exit_code"] == 2, result["stderr"][-2000:]
    assert BAD_CORPUS_INPUT[case][1] in result["stderr"], result["stderr"][-2000:]
    assert not (directory / "run").exists()


@pytest.mark.xdist_group("training_binary_cases")
def test_corpus_of_unknown_language_warns_how_to_name_it(binary_cases):
    _, result = binary_cases["unknown_language"]
    assert result["exit_code"] == 0, result["stderr"][-2000:]
    assert "warning: " in result["stderr"]
    assert "the language of 2 pairs is unknown ('xx')" in result["stderr"]
    assert "Name a TSV file en-XX.tsv (e.g. en-de.tsv)" in result["stderr"]


@pytest.mark.xdist_group("binary_run")
def test_binary_trains_resumes_and_exports(tmp_path, finished_binary_run):
    import shutil

    from conftest import BINARY_RUN_FLAGS

    finished_dir, result = finished_binary_run  # 1 head warm-up + 2 encoder steps
    assert "step 3 loss=" in result.stdout and "exported the aligned encoder" in result.stdout
    # Clean output: no TensorFlow start-up noise.
    assert "cuda" not in (result.stdout + result.stderr).lower()
    run_dir = tmp_path / "run"  # a copy: the finished run is shared
    shutil.copytree(finished_dir, run_dir)
    flags = json.loads((run_dir / "flags.json").read_text())
    assert flags["train_steps"] == 2 and flags["encoder"] == "tiny:demo"
    # Checkpoint-dependent values resolved (a random test encoder).
    assert flags["temperature"] == 0.07
    assert flags["checkpoint_default_sources"]["temperature"].startswith("random test encoder")
    assert flags["checkpoint_default_sources"]["queue_size"] == "set: --queue_size"
    assert "settings by checkpoint (the encoder is a random test encoder):" in result.stdout
    assert os.listdir(run_dir / "tensorboard")
    # The before -> after check: printed, and both halves in model_dir.
    assert "alignment check: 120 demo pairs held out of training" in result.stdout
    check = json.loads((run_dir / "alignment_check.json").read_text())
    assert (check["before"]["step"], check["after"]["step"]) == (0, 3)
    assert set(check["after"]) == {"step", "candidates", "all", "ar", "de", "fr", "hi", "ru", "zh"}
    assert check["after"]["candidates"] == 120 and check["after"]["de"]["pairs"] == 20
    assert check["before"]["all"] != check["after"]["all"]  # the encoder trained in between
    flags_again = [f for f in BINARY_RUN_FLAGS if not f.startswith("--train_steps=")]
    again = run_module(["-m", "tf_mbalign.train", *flags_again, "--train_steps=3",
                        f"--model_dir={run_dir}"])
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from" in again.stdout and "step 4 loss=" in again.stdout
    # The resumed session reports against the first session's "before".
    resumed_check = json.loads((run_dir / "alignment_check.json").read_text())
    assert resumed_check["before"] == check["before"] and resumed_check["after"]["step"] == 4

    # The export reloads in a fresh process, and its Keras file and SavedModel
    # hold the same trained weights, bit for bit (stored values, no arithmetic:
    # that the two compute the same outputs is tests/test_export.py's
    # numerics round trip).
    check = (
        "import hashlib, sys, numpy as np, tensorflow as tf\n"
        "from tf_mbalign.export import encoder_export\n"
        "d = sys.argv[1]\n"
        "def digests(arrays):\n"
        "    return {hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()"
        " + str(a.shape) for a in arrays}\n"
        "keras_weights = digests(w.numpy() for w in encoder_export.load_encoder(d).weights)\n"
        "saved = digests(v.numpy() for v in tf.saved_model.load(d + '/encoder').variables)\n"
        "print(len(keras_weights), keras_weights <= saved)\n"
    )
    result = run_module(["-c", check, str(run_dir / "export")])
    assert result.returncode == 0, result.stderr[-3000:]
    keras_count, contained = result.stdout.split()
    # Every weight of the Keras file is a variable of the SavedModel (which
    # also holds the MLM head's).
    assert int(keras_count) > 10 and contained == "True", result.stdout


# tolerance: a float16 / bf16 / XLA first step vs float32 from the same start: 0.05 of a ~5
# loss is bf16's 2^-8 rounding through a few layers, far above kernel noise.
@pytest.mark.numerics
@pytest.mark.parametrize("overrides", [pytest.param(dict(precision="mixed_float16"),
                                                    marks=pytest.mark.float16, id="mixed_float16"),
                                       pytest.param(dict(precision="mixed_bfloat16"),
                                                    marks=pytest.mark.bfloat16, id="mixed_bfloat16"),
                                       pytest.param(dict(jit_compile=True), id="xla")])
def test_precision_and_xla_variants_train(tmp_path, overrides):
    import keras

    reference = AlignmentRun(tiny_train_config(tmp_path / "ref", train_steps=2)).run()
    try:
        history = AlignmentRun(tiny_train_config(tmp_path / "v", train_steps=2, **overrides)).run()
    finally:
        keras.mixed_precision.set_global_policy("float32")
    # Same data and initialization: the first step's loss agrees to low precision.
    assert abs(history[0]["loss"] - reference[0]["loss"]) < 0.05
    assert all(np.isfinite(h["loss"]) for h in history)


def test_keras_hub_preset_offline_names_the_alternative(monkeypatch):
    import keras_hub

    from tf_mbalign.modeling import encoders

    def offline(*args, **kwargs):  # What kagglehub raises without a network.
        raise ConnectionError("Failed to resolve 'api.kaggle.com'")

    monkeypatch.setattr(keras_hub.models.BertBackbone, "from_preset", offline)
    with pytest.raises(RuntimeError, match="--encoder=<that directory>"):
        encoders.load_encoder("preset:bert_base_multi")
