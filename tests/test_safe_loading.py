"""Model files are programs: loading one must not run code from it.

- no pickle (or other code-running loader) anywhere in the package;
- `.keras` files: our loader accepts only what our exporter writes, then loads
  with safe_mode=True; crafted files (a Lambda layer with bytecode, a file
  that calls `keras.config.enable_unsafe_deserialization`) are refused and
  their payload never runs;
- Hugging Face checkpoints only through safetensors (`pytorch_model.bin` is
  refused in tests/test_encoders.py::test_pytorch_bin_only_is_refused_with_conversion_hint);
- the Keras version is one without the known safe_mode bypasses (>= 3.13.2).
"""

import ast
import configparser
import json
import os
import re
import zipfile

import keras
import pytest
from keras.src.saving import serialization_lib
from packaging.version import Version

from conftest import REPO_ROOT, run_module
from tf_mbalign.export import encoder_export
from tf_mbalign.export.encoder_export import UnsafeModelFileError

PACKAGE = os.path.join(REPO_ROOT, "tf_mbalign")
# Keras versions before 3.13.2 have published safe_mode bypasses: CVE-2025-1550
# (< 3.9: arbitrary module functions from config.json), CVE-2025-9906 (< 3.11:
# config.json calls enable_unsafe_deserialization), CVE-2025-8747 / -9905
# (gadget functions; .h5 files ignoring safe_mode; fixed by 3.11.3) and
# CVE-2026-1462 (a TFSMLayer loads an outside SavedModel under safe_mode;
# GHSA-4f3f-g24h-fr8m: fixed in 3.12.1 and 3.13.2, 3.13.0-3.13.1 affected).
# The pin (3.15.1) is also past the archive path traversal fixed in 3.14.0
# (GHSA-hqp4-2352-xf5r).
MINIMUM_KERAS = Version("3.13.2")

# === No pickle ===

_UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "marshal",
                   "shelve", "torch"}
_UNSAFE_CALLS = {"read_pickle", "unsafe_load", "enable_unsafe_deserialization", "eval", "exec"}
_UNSAFE_TEXT = re.compile(r"allow_pickle\s*=\s*True|torch\.load|pickle\.loads?\(|"
                          r"safe_mode\s*=\s*False|import\s+pickle|yaml\.load\(")


def unsafe_loading_findings(source, filename="<source>"):
    """`file:line: what` for each code-running load in a Python source."""
    findings = []
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + ([node.module] if isinstance(
                node, ast.ImportFrom) and node.module else [])
            for name in names:
                if name.split(".")[0] in _UNSAFE_MODULES:
                    findings.append(f"{where}: imports {name}")
        elif isinstance(node, ast.Call):
            function = node.func
            name = function.attr if isinstance(function, ast.Attribute) else getattr(
                function, "id", "")
            if name in _UNSAFE_CALLS:
                findings.append(f"{where}: calls {name}")
            if isinstance(function, ast.Attribute) and isinstance(function.value, ast.Name) \
                    and function.value.id in _UNSAFE_MODULES | {"np", "numpy"} \
                    and name == "load":
                keywords = {k.arg: k.value for k in node.keywords}
                allow = keywords.get("allow_pickle")
                if function.value.id not in ("np", "numpy") or (
                        allow is not None and not (isinstance(allow, ast.Constant)
                                                   and allow.value is False)):
                    findings.append(f"{where}: calls {function.value.id}.load")
            for keyword in node.keywords:
                if keyword.arg == "safe_mode" and not (
                        isinstance(keyword.value, ast.Constant) and keyword.value.value is True):
                    findings.append(f"{where}: safe_mode is not True")
    for number, line in enumerate(source.splitlines(), start=1):
        stripped = line.split("#", 1)[0]
        if _UNSAFE_TEXT.search(stripped) and not stripped.lstrip().startswith(("\"", "'")):
            findings.append(f"{filename}:{number}: {line.strip()[:80]}")
    return sorted(set(findings))


def test_the_scanner_finds_unsafe_loading():
    bad = (
        "import pickle\nimport numpy as np\nfrom joblib import load\nimport torch\n"
        "x = np.load('a.npy', allow_pickle=True)\ny = np.load('b.npy')\n"
        "keras.saving.load_model('m.keras', safe_mode=False)\n"
        "keras.config.enable_unsafe_deserialization()\nz = pd.read_pickle('p')\n"
    )
    found = "\n".join(unsafe_loading_findings(bad))
    for expected in ("imports pickle", "imports joblib", "imports torch", "calls np.load",
                     "safe_mode is not True", "calls enable_unsafe_deserialization",
                     "calls read_pickle", "<source>:5: x = np.load"):
        assert expected in found, (expected, found)
    assert "<source>:6: calls np.load" not in found  # allow_pickle defaults to False
    assert unsafe_loading_findings("import json\njson.load(open('x'))\n") == []


def test_the_package_never_unpickles_or_loads_unsafely():
    files = [os.path.join(root, name) for root, _, names in os.walk(PACKAGE)
             for name in names if name.endswith(".py")]
    assert len(files) > 20
    findings = []
    for path in files:
        with open(path, encoding="utf-8") as f:
            findings += unsafe_loading_findings(f.read(), os.path.relpath(path, REPO_ROOT))
    assert findings == []


def test_keras_version_has_no_known_safe_mode_bypass():
    assert Version(keras.__version__) >= MINIMUM_KERAS, keras.__version__
    parser = configparser.ConfigParser()
    parser.read(os.path.join(REPO_ROOT, "setup.cfg"))
    pins = [line.strip() for line in parser["options"]["install_requires"].splitlines()
            if line.strip().startswith("keras==")]
    assert len(pins) == 1 and Version(pins[0].split("==")[1]) >= MINIMUM_KERAS, pins


# === Crafted .keras files ===

@pytest.fixture(scope="module")
def crafted(tmp_path_factory):
    out = tmp_path_factory.mktemp("crafted")
    result = run_module([os.path.join(REPO_ROOT, "tests", "crafted_models.py"), str(out)])
    assert result.returncode == 0, result.stderr[-3000:]
    with open(out / "report.json") as f:
        return str(out), json.load(f)


def test_crafted_files_are_hostile_and_keras_safe_mode_refuses_them(crafted):
    _, report = crafted
    # Positive control: loaded unsafely, the Lambda's bytecode runs.
    assert report["unsafe_load_error"] is None and report["unsafe_load_ran_payload"]
    for name in ("lambda", "unsafe"):
        outcome = report["safe"][name]
        assert outcome["error"] and not outcome["payload_ran"], (name, outcome)
        assert outcome["safe_mode_after"] is not False, (name, outcome)


@pytest.mark.parametrize("name,reason", [("lambda", "'Functional'"), ("unsafe", "'Functional'")])
def test_our_loader_refuses_crafted_files_before_keras_reads_them(crafted, name, reason):
    out, _ = crafted
    export_dir = os.path.join(out, name)
    marker = os.path.join(out, f"{name}.marker")
    with pytest.raises(UnsafeModelFileError) as info:
        encoder_export.load_encoder(export_dir)
    message = str(info.value)
    assert os.path.join(export_dir, "keras", "encoder.keras") in message
    assert reason in message and "nothing from this one was run" in message
    assert not os.path.exists(marker)
    assert serialization_lib.in_safe_mode() is not False


def _tiny_export(tmp_path):
    from tf_mbalign.modeling import encoders

    encoder = encoders.load_encoder("tiny:demo", dropout=0.0).encoder
    export_dir = tmp_path / "export"
    (export_dir / "keras").mkdir(parents=True)
    encoder.save(str(export_dir / "keras" / "encoder.keras"))
    return str(export_dir), encoder


def _rewrite(path, change_config=None, extra_member=None):
    with zipfile.ZipFile(path) as archive:
        members = {n: archive.read(n) for n in archive.namelist()}
    config = json.loads(members["config.json"])
    if change_config:
        change_config(config)
    members["config.json"] = json.dumps(config).encode()
    if extra_member:
        members[extra_member] = b"x"
    with zipfile.ZipFile(path, "w") as archive:
        for n, data in members.items():
            archive.writestr(n, data)


_GADGET = {"module": "keras.config", "class_name": "function",
           "config": "enable_unsafe_deserialization", "registered_name": "function"}


@pytest.mark.parametrize("tamper,expected", [
    (dict(change_config=lambda c: c["config"].update(hidden_activation=_GADGET)),
     "'hidden_activation'"),
    (dict(change_config=lambda c: c["config"].update(dtype=_GADGET)), "not a plain DTypePolicy"),
    (dict(change_config=lambda c: c["config"].update(extra_layer={"class_name": "Lambda"})),
     "unknown encoder argument 'extra_layer'"),
    (dict(change_config=lambda c: c.update(module="keras.layers", class_name="TFSMLayer")),
     "'TFSMLayer'"),
    (dict(extra_member="assets/payload.py"), "unexpected archive members"),
])
def test_tampered_exports_are_refused_and_real_ones_load(tmp_path, tamper, expected):
    export_dir, encoder = _tiny_export(tmp_path)
    loaded = encoder_export.load_encoder(export_dir)  # the untouched export loads
    assert loaded.count_params() == encoder.count_params()
    _rewrite(os.path.join(export_dir, "keras", "encoder.keras"), **tamper)
    with pytest.raises(UnsafeModelFileError, match=re.escape(expected)):
        encoder_export.load_encoder(export_dir)


# === Hugging Face directories ===

def test_hf_directory_with_a_keras_config_is_refused(tmp_path, monkeypatch):
    import keras_hub

    from tf_mbalign.modeling import encoders

    def must_not_run(*args, **kwargs):
        raise AssertionError("keras-hub was asked to load the directory")

    monkeypatch.setattr(keras_hub.models.BertBackbone, "from_preset", must_not_run)
    (tmp_path / "config.json").write_text(json.dumps(
        {"module": "keras.layers", "class_name": "Lambda", "registered_name": None}))
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n")
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="not a Hugging Face model config"):
        encoders.load_encoder(str(tmp_path))
