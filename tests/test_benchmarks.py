"""The benchmark scripts still run (their core functions, at toy sizes).

No speed is asserted here: figures and goals live in benchmarks/ and
BENCHMARKS.md. One tiny model is built and traced once and shared by the
step, reference and scaling checks, to keep this file around half a minute.
The PyTorch reference's test skips where torch is not installed (it is a
benchmark-only dependency).
"""

import os
import sys

import pytest

from conftest import REPO_ROOT

BENCHMARKS = os.path.join(REPO_ROOT, "benchmarks")
if BENCHMARKS not in sys.path:
    sys.path.insert(0, BENCHMARKS)


@pytest.fixture(scope="module")
def common():
    import _common

    return _common


def test_flop_formula_by_hand(common):
    shape = common.ModelShape("toy", vocabulary_size=10, num_layers=1, hidden_dim=2,
                              num_heads=1, intermediate_dim=4)
    settings = common.StepSettings(batch=1, seq_length=3, sentence_length=2, predictions=1,
                                   queue_size=5)
    n = 4 * 2 * 2 + 2 * 2 * 4  # 32 matmul weights per token
    tlm = 2 * n * 3 + 4 * 1 * 9 * 2
    sentence = 2 * n * 2 + 4 * 1 * 4 * 2
    head = 2 * 1 * (4 + 20)
    moco = 2 * 5 * 2
    assert common.step_flops(shape, settings)["step"] == (
        3 * (tlm + head + sentence) + sentence + 2 * moco)


@pytest.fixture(scope="module", autouse=True)
def rss_child(common):
    """The peak-RSS subprocess, started first so that it overlaps the other
    tests (mostly single-threaded tracing); `test_peak_rss_subprocess`
    collects it."""
    import scaling

    started = scaling.start_peak_rss("tiny", side="none", quick=True)
    yield started
    started[2].kill()  # No-op once collected.
    started[2].communicate()


@pytest.fixture(scope="module")
def tiny_step(common):
    """One toy `OurStep` (1 layer, dropout 0), built and traced once for
    this file (tracing the step is most of this file's time)."""
    shape = common.ModelShape("toy", vocabulary_size=300, num_layers=1, hidden_dim=16,
                              num_heads=2, intermediate_dim=32, max_sequence_length=32)
    settings = common.StepSettings(batch=2, seq_length=16, sentence_length=8, predictions=2,
                                   queue_size=8)
    batches = common.synthetic_batches(shape, settings, count=2, min_fill=0.5)
    assert batches[0]["masked_weights"].sum() >= 2
    return settings, common.OurStep(shape, settings, batches, dropout=0.0)


# tolerance: TF vs torch float32 steps: relative 1e-3 of gradients after different summation orders.
@pytest.mark.numerics
def test_torch_reference_is_the_same_step(common, tiny_step):
    for module in ("torch", "transformers"):
        pytest.importorskip(module, reason="PyTorch is a benchmark-only dependency "
                            "(benchmarks/requirements.txt); CI installs only .[test]")
    import torch_reference
    import train_step

    settings, ours = tiny_step
    reference = torch_reference.TorchAlignmentStep(ours.shape, settings, ours.batches,
                                                   dropout=0.0)
    # Same weights (copied from Keras), dropout 0 -> the same losses, step by
    # step (2 steps when this test is the first to use the model, else 1).
    check = train_step.check_same_step("toy", settings, steps=2, ours=ours,
                                       reference=reference, log=lambda *_: None)
    assert max(check["max_relative_difference"].values()) < 1e-3, check
    row = train_step.compare(ours, reference, "toy", settings,
                             common.step_flops(ours.shape, settings), peak=1e11, jit=False,
                             pairs=1, target_seconds=0.01, log=lambda *_: None)
    assert row["ratio_ours_over_reference"] > 0


def test_step_timing_and_scaling(common, tiny_step):
    import scaling
    import train_step

    settings, ours = tiny_step
    flops = common.step_flops(ours.shape, settings)
    row = train_step.compare(ours, None, "toy", settings, flops, peak=1e11, jit=False,
                             pairs=1, target_seconds=0.01, log=lambda *_: None)
    assert "error" not in row, row.get("error")
    assert row["examples_per_s"] > 0 and 0 < row["mfu"] < 1
    assert all(v == v for v in row["ours_metrics"].values())  # no NaN
    times = scaling.round_robin({"a": ours}, rounds=1, jit_compile=False, target_seconds=0.01)
    assert times["a"]["median_s"] > 0


def test_matmul_peak(common):
    peak = common.matmul_peak(n=128, repeats=1)
    assert peak["peak_flops"] >= peak["tensorflow_flops"] > 0


def test_pipeline_and_tokenizers(common):
    import input_pipeline
    from tf_mbalign.data import corpus as corpus_lib

    corpus = corpus_lib.read_corpus("demo")
    tokenizer, _ = input_pipeline.tokenizer_for_shape("tiny", [], "", "")
    settings = common.StepSettings(batch=4, seq_length=32, sentence_length=16, predictions=4,
                                   queue_size=8)
    result = input_pipeline.pipeline_pairs_per_s(corpus, tokenizer, settings, batches=2,
                                                  warmup=1)
    assert result["pairs_per_s"] > 0
    compared = input_pipeline.compare_tokenizers(tokenizer, corpus.english[:40], batch=16,
                                                 repeats=1)
    assert compared["identical_ids_share"] == 1.0, compared["first_difference"]


# tolerance: the export vs in-memory (1e-5 of unit vectors); its bf16 export vs float32 (cosine >= 0.99, bf16 rounding).
@pytest.mark.numerics
@pytest.mark.bfloat16
def test_serving_latency_core(common, tmp_path):
    import serving_latency

    from tf_mbalign.modeling import encoders

    bundle = encoders.tiny_encoder("demo", num_layers=1, hidden_dim=16, num_heads=2,
                                   intermediate_dim=32, max_sequence_length=32)
    callables, _ = serving_latency.build_callables(bundle, str(tmp_path / "export"), 32,
                                                   serving_only=True,
                                                   precisions=("float32", "bfloat16"))
    sentences = ["Hello world.", "Guten Tag!", "Ein kurzer Satz."] * 4
    result = serving_latency.measure(callables, sentences, latency_calls=2,
                                     throughput_batches=1, batch=4, warmup=1)
    assert result["max_abs_difference"] < 1e-5
    assert result["exported"]["p50_ms"] > 0
    # The bf16 export: timed against the float32 one, close to it but not it.
    assert result["exported_bfloat16_over_exported"]["p50"] > 0
    assert 0.99 <= result["exported_bfloat16_min_cosine_to_exported"] < 1 - 1e-7


def test_profile_of_a_step_summarized_by_kind(common, tiny_step, tmp_path):
    import profile_summary
    import train_step

    settings, ours = tiny_step
    path = train_step.profile_steps(ours, False, str(tmp_path), steps=1, log=lambda *_: None)
    traces = profile_summary.find_traces(str(tmp_path))
    assert list(traces) == [path] and profile_summary.recorded_steps(path, 7) == 1
    summary = profile_summary.summarize(traces[path], steps=1, top=5)
    kinds = {k["kind"]: k["self_ms_per_step"] for k in summary["kinds"]}
    assert kinds["matmul"] > 0 and kinds["optimizer / variable updates"] > 0
    assert abs(sum(k["share"] for k in summary["kinds"]) - 1) < 1e-9
    assert len(summary["top_ops"]) == 5
    # Op types: each one's time is its ops' summed time, within its kind's.
    types = {t["op_type"]: t for t in summary["top_op_types"]}
    assert len(types) == 5 and all(t["events_per_step"] >= 1 for t in types.values())
    for op in summary["top_ops"]:
        op_type = op["op"].rsplit(":", 1)[1]
        if op_type in types:
            assert types[op_type]["self_ms_per_step"] >= op["self_ms_per_step"] * (1 - 1e-9)
    for t in types.values():
        assert t["self_ms_per_step"] <= kinds[t["kind"]] * (1 + 1e-9)
    # The parts split exactly the non-matmul kinds' time, nothing more or less.
    parts = sum(p["self_ms_per_step"] for p in summary["non_matmul_by_part"])
    split = sum(kinds.get(k, 0.0) for k in profile_summary.PART_KINDS)
    assert abs(parts - split) <= 1e-9 * max(split, 1.0)
    assert {p["pass"] for p in summary["non_matmul_by_part"]} == {"forward", "backward"}


def test_self_time_subtracts_nested_ops():
    import profile_summary

    # A While op (0-100) holding a MatMul (10-50) that holds a Cast (20-30),
    # and an Add on another thread.
    events = [("t1", "loop", "While", 0, 100), ("t1", "mm", "MatMul", 10, 40),
              ("t1", "c", "Cast", 20, 10), ("t2", "a", "AddV2", 5, 7)]
    self_times = {name: t for name, _, t in profile_summary.self_times(events)}
    assert self_times == {"loop": 60, "mm": 30, "c": 10, "a": 7}
    assert [profile_summary.kind_of(t) for t in ("_MklBatchMatMulV2", "Cast", "_MklTranspose",
                                                 "ResourceApplyAdam", "GatherV2", "Erf")] == [
        "matmul", "cast", "transpose", "optimizer / variable updates",
        "gather / scatter / embedding", "element-wise"]


def test_op_names_map_to_model_parts():
    import profile_summary

    base = "while/body/_1/while/bert_encoder_1/transformer_layer_3_1/"
    grad = "while/body/_1/gradient_tape/while/bert_encoder_3/transformer_layer_3_1/"
    assert [profile_summary.part_of(name) for name in (
        base + "self_attention_dropout_1/SelectV2",
        grad + "self_attention_layer_norm_1/mul_2/Mul",
        base + "feedforward_intermediate_dense_1/Gelu/Erfc",
        grad + "self_attention_layer_1/softmax_1/Sum",
        "while/body/_1/while/adamw/Add_162",
        "while/cond/_0/while/Less")] == [
        ("dropout", "forward"), ("layer norm", "backward"), ("feed-forward and GELU", "forward"),
        ("attention", "backward"), ("optimizer", "forward"), ("other", "forward")]


def test_precision_numerics_comparisons(common):
    import numpy as np
    import precision_numerics as pn

    steps = np.arange(1, 41)
    flat = {name: (steps, np.full(40, 2.0)) for name in pn.CURVES}
    drifted = {name: (steps, np.where(steps > 20, 2.5, 2.02)) for name in pn.CURVES}
    windows = pn.window_comparison(flat, drifted, window=20, rtol=0.05)
    rows = windows["windows"]["loss"]
    assert [r["steps"] for r in rows] == [[1, 20], [21, 40]]
    assert [r["within_tolerance"] for r in rows] == [True, False]
    assert not windows["all_within_tolerance"] and abs(windows["max_relative_difference"]
                                                        - 0.25) < 1e-12
    eye = np.eye(4, dtype=np.float32)
    swapped = eye[[1, 0, 2, 3]]  # rows 0 and 1 retrieve each other's English side
    same = pn.paired_retrieval({"de": (eye, eye)}, {"de": (eye, eye)}, bootstrap=20)
    assert same["average"]["xx_to_en"]["difference"] == 0
    assert same["average"]["xx_to_en"]["interval_95"] == [0.0, 0.0]
    worse = pn.paired_retrieval({"de": (eye, eye)}, {"de": (swapped, eye)}, bootstrap=20)
    entry = worse["languages"]["de"]["xx_to_en"]
    assert entry["difference"] == -0.5 and entry["only_float32_right"] == 2
    assert pn.cosine_summary([eye], [swapped])["min"] == 0.0


def test_peak_rss_subprocess(rss_child):
    import scaling

    row = scaling.finish_peak_rss(rss_child, timeout=300)
    assert "error" not in row, row.get("error")
    assert row["peak_rss_bytes"] >= row["peak_rss_after_import_bytes"] > 0


def test_parameter_passes(common, tmp_path):
    import json

    import parameter_passes

    out = tmp_path / "passes.json"
    result = parameter_passes.main(["--quick", "--json", str(out)])
    assert [r["part"] for r in result["rows"]] == ["optimizer", "ema", "gradient scaling"]
    for row in result["rows"]:
        assert row["old"]["median_s"] > 0 and row["new"]["median_s"] > 0
    assert json.loads(out.read_text())["parameters"] == result["parameters"] > 0


def test_prepared_corpus_benchmark_pieces(tmp_path):
    """benchmarks/prepared_corpus.py: the synthetic corpus keeps the real
    files' language proportions; goals read the worst case; the memory probe
    sees an allocation."""
    import prepared_corpus

    source = tmp_path / "real"
    source.mkdir()
    (source / "en-de.tsv").write_text("".join(f"a{i}\tb{i}\n" for i in range(30)))
    (source / "en-fr.tsv").write_text("".join(f"c{i}\td{i}\n" for i in range(10)))
    prepared_corpus.write_synthetic_corpus(str(source), str(tmp_path / "big"), 100)
    lines = {name: (tmp_path / "big" / name).read_text().splitlines()
             for name in ("en-de.tsv", "en-fr.tsv")}
    assert [len(lines["en-de.tsv"]), len(lines["en-fr.tsv"])] == [75, 25]
    assert lines["en-fr.tsv"][10] == "c0\td0"  # the real lines, repeated

    row = {"prepare": {"above_baseline_mib": 900.0},
           "input": [{"above_baseline_mib": 10.0, "pairs_per_s": 5000.0},
                     {"above_baseline_mib": 1100.0, "pairs_per_s": 1500.0}]}
    goals = prepared_corpus.goals([row, {"pairs": 5, "skipped": "disk"}], 2.0)
    assert [met for _, met in goals.values()] == [True, False, False, True]

    memory = prepared_corpus.PeakMemory()
    block = bytearray(64 << 20)
    block[::4096] = b"x" * len(block[::4096])  # touch every page
    assert memory.stop()["above_baseline_mib"] >= 60


def test_recipe_grid_table_regenerates_the_committed_grid(tmp_path):
    """The grid table from the rows the recipe grid committed: the same figures and
    choice as the committed grid.json, and each row's curves and the grid
    plot drawn."""
    import json
    import shutil
    import subprocess

    committed = os.path.join(REPO_ROOT, "docs", "results", "grid_choose")
    grid = tmp_path / "grid"
    shutil.copytree(committed, grid, ignore=shutil.ignore_patterns("*.png"))
    process = subprocess.run(
        [sys.executable, os.path.join(BENCHMARKS, "recipe_grid_table.py"), f"--grid_dir={grid}"],
        capture_output=True, text=True, cwd=REPO_ROOT)
    assert process.returncode == 0, process.stderr[-2000:]
    with open(os.path.join(committed, "grid.json")) as f:
        expected = json.load(f)
    assert json.loads((grid / "grid.json").read_text()) == expected
    chosen = max(expected, key=lambda record: record["criterion"])["row"]
    assert f"chosen on this half: {chosen} " in process.stdout
    for record in expected:
        assert (grid / record["row"] / "training" / "training_curves.png").is_file()
    assert (grid / "grid.png").is_file()


def test_compare_commits_alternates_the_two_checkouts_and_removes_its_worktree(tmp_path,
                                                                              monkeypatch):
    import subprocess

    import compare_commits

    if not os.path.exists(os.path.join(REPO_ROOT, ".git")):
        pytest.skip("the checkout is not a git repository: no worktree of a commit to make")
    # Each side's "benchmark" reports its own step times: the base 2 s a
    # step, this tree 1.5 s in even rounds and 3 s in odd ones.
    calls = []

    def fake_run_side(checkout, step_args, json_path, log_path):
        side = "this" if checkout == compare_commits.REPO_ROOT else "base"
        calls.append(side)
        round_index = sum(1 for c in calls if c == side) - 1
        seconds = [2.0, 2.0] if side == "base" else [[1.5, 1.5], [3.0, 3.0]][round_index % 2]
        return {"machine": {"cpu": "test"}, "rows": [
            {"shape": "tiny", "precision": "float32", "xla": False,
             "ours": {"all_s": seconds}}]}

    monkeypatch.setattr(compare_commits, "run_side", fake_run_side)
    report = compare_commits.main(["--base", "HEAD", "--rounds", "3", "--json",
                                   str(tmp_path / "ab.json"), "--", "--shapes", "tiny"])
    assert calls == ["base", "this", "this", "base", "base", "this"]  # alternating order
    row = report["summary"]["tiny/float32/xla=False"]
    assert row["round_ratios"] == [0.75, 1.5, 0.75] and row["median_ratio"] == 0.75
    assert os.path.exists(tmp_path / "ab.json")
    worktrees = subprocess.run(["git", "-C", REPO_ROOT, "worktree", "list"],
                               capture_output=True, text=True, check=True).stdout
    assert "compare_commits_" not in worktrees


# tolerance: both compute (x - mean) / sqrt(var + eps) * gamma + beta in float32 over 384 values
# of magnitude ~3 (outputs up to ~7): 1e-5 absolute is ~100 ulps of the largest output.
@pytest.mark.numerics
def test_elementwise_layer_norm_variants_compute_keras_layer_norm(common):
    import elementwise_options as options

    rows = options.measure(rounds=1, calls=1, family="layer_norm")
    assert {r["variant"] for r in rows} == set(options.LAYER_NORM_VARIANTS)
    assert len(rows) == len(options.LAYER_NORM_SHAPES) * len(options.LAYER_NORM_VARIANTS)
    for row in rows:
        assert row["max_abs_difference"] < 1e-5
    # The check itself sees a wrong layer norm (beta left out: differences ~0.1).
    wrong = options.check("layer_norm", lambda x, seed: options.keras_layer_norm(x, seed)
                          - options._beta, options.keras_layer_norm, (2, 3, options.WIDTH))
    assert wrong[0]["max_abs_difference"] > 1e-2


# tolerance: the two variants are float32 softmax cross-entropies of the same logits
# (tests/test_vocabulary_softmax.py bounds each against float64): on 8 rows x 2,000 classes
# with mean weights the loss is ~9, and (2,000 + 4) * 2^-24 ~ 1.2e-4 bounds each normalizer's
# error; the gradients are probabilities (< 1) within (2,000 + 8) * 2^-24 relative of each other.
@pytest.mark.numerics
def test_vocabulary_softmax_benchmark_times_the_same_loss_two_ways(common, monkeypatch):
    import vocabulary_softmax as benchmark

    monkeypatch.setattr(benchmark, "ROWS", 8)
    monkeypatch.setattr(benchmark, "VOCABULARY", 2000)
    rows = benchmark.measure(rounds=2, calls=1)
    assert [r["variant"] for r in rows] == list(benchmark.VARIANTS)
    assert rows[0]["ratio"] == 1.0 and rows[0]["loss_difference"] == 0.0
    assert rows[1]["loss_difference"] <= 2 * 2004 * 2.0**-24
    assert rows[1]["largest_gradient_difference"] <= 2 * 2008 * 2.0**-24
    assert all(len(r["all_ms"]) == 2 for r in rows)
