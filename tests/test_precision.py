"""`--precision=auto`: bfloat16 where the hardware multiplies it natively."""

import pytest

from tf_mbalign import distribute


@pytest.mark.parametrize("flags,native,words", [
    ({"avx512f", "amx_bf16", "amx_tile", "avx512_bf16"}, True, "AMX"),
    ({"avx2", "avx512f", "avx512_bf16"}, True, "AVX512-BF16"),
    ({"avx2", "fma", "avx512f"}, False, "without bfloat16"),  # e.g. AMD Zen 3
    (set(), False, "without bfloat16"),
])
def test_cpu_flags_decide(flags, native, words):
    got, reason = distribute.cpu_bfloat16_support(flags)
    assert got is native and words in reason


@pytest.mark.parametrize("capabilities,native", [
    ([(9, 0)], True), ([(8, 0), (8, 6)], True), ([(7, 5)], False), ([(8, 0), (7, 0)], False),
])
def test_gpu_capability_decides(capabilities, native):
    assert distribute.gpu_bfloat16_support(capabilities)[0] is native


def test_cpu_flags_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx512_bf16 amx_bf16\n\n"
                       "processor\t: 1\nflags\t\t: fpu sse avx512_bf16 amx_bf16\n")
    assert distribute.cpu_flags(str(cpuinfo)) == {"fpu", "sse", "avx512_bf16", "amx_bf16"}
    assert distribute.cpu_flags(str(tmp_path / "absent")) == set()


def test_auto_resolves_to_what_the_hardware_supports(monkeypatch):
    monkeypatch.setattr(distribute, "_gpu_compute_capabilities", lambda: [])
    monkeypatch.setattr(distribute, "cpu_flags", lambda: {"avx2"})
    assert distribute.resolve_precision("auto") == (
        "float32", "auto: CPU without bfloat16 instructions (no amx_bf16 / avx512_bf16)")
    monkeypatch.setattr(distribute, "cpu_flags", lambda: {"amx_bf16"})
    policy, reason = distribute.resolve_precision("auto")
    assert policy == "mixed_bfloat16" and "AMX" in reason
    monkeypatch.setattr(distribute, "_gpu_compute_capabilities", lambda: [(7, 0)])
    assert distribute.resolve_precision("auto")[0] == "float32"  # the GPU computes, not the CPU
    # An explicit choice is kept whatever the hardware.
    assert distribute.resolve_precision("mixed_float16") == ("mixed_float16", "set by --precision")
    with pytest.raises(ValueError, match="auto"):
        distribute.resolve_precision("bf16")


def test_a_run_resolves_auto_and_records_why(tmp_path, monkeypatch):
    import json

    from conftest import tiny_train_config
    from tf_mbalign.training.trainer import AlignmentRun

    monkeypatch.setattr(distribute, "_gpu_compute_capabilities", lambda: [])
    monkeypatch.setattr(distribute, "cpu_flags", lambda: {"avx2"})  # no bf16 here
    messages = []
    run = AlignmentRun(tiny_train_config(tmp_path / "run", train_steps=1, precision="auto"),
                       log=messages.append)
    run.run()
    assert run.config.precision == "float32" and "without bfloat16" in run.precision_reason
    with open(tmp_path / "run" / "flags.json") as f:
        assert json.load(f)["precision"] == "float32"  # what ran, so a re-run is the same
    assert any("precision float32 (auto: CPU without bfloat16" in m for m in messages)
