"""Writes every export of an aligned encoder, atomically.

`export_dir/`:
- `encoder/`       TF-Hub BERT encoder SavedModel (`hub_encoder.py`), with `.mlm`
- `preprocessor/`  TF-Hub BERT preprocessor SavedModel (`preprocessor.py`)
- `serving/<name>/<version>/`  TF Serving SavedModel, sentences in (`serving.py`;
                   needs TF Text ops in the serving process)
- `serving/<name>_ids/<version>/`  TF Serving SavedModel, token ids in, core
                   TensorFlow ops only (any TensorFlow runtime)
- `keras/`         `encoder.keras` (load with safe_mode=True) and the tokenizer
                   assets (vocab.txt or spm.model, tokenizer.json)
- `export_info.json`  what was exported, from which run; its paths are
                   relative to `export_dir` (read them with `read_export_info`)

Each part is written under a temporary name in the same folder and renamed
into place, so a half-written export never looks complete. `encoder/`,
`preprocessor/` and `keras/` are replaced whole; serving versions are never
overwritten: a new export adds version N+1 beside the older ones, as TF
Serving expects.
"""

import json
import os
import shutil
import zipfile

import keras
import tensorflow as tf

from tf_mbalign.atomic_files import replace_directory_atomic, write_json_atomic
from tf_mbalign.data import tokenizers
from tf_mbalign.distribute import EXPORT_PRECISIONS
from tf_mbalign.export.hub_encoder import HubEncoder
from tf_mbalign.export.preprocessor import Preprocessor
from tf_mbalign.export.serving import SentenceEmbeddingServer, TokenIdsEmbeddingServer
from tf_mbalign.modeling.bert_encoder import encoder_at_precision
from tf_mbalign.modeling.mlm_head import tied_head_like


# Every export, in the order written.
EXPORT_PATH_KEYS = ("encoder", "preprocessor", "keras", "serving", "serving_ids")


def _save(obj, path):
    tf.saved_model.save(obj, path, signatures=obj.signatures())


def _keras_assets(encoder, tokenizer, path, seq_length):
    encoder.save(os.path.join(path, "encoder.keras"))
    if isinstance(tokenizer, tokenizers.WordPieceTokenizer):
        shutil.copyfile(tokenizer.vocab_path, os.path.join(path, "vocab.txt"))
    else:
        with open(os.path.join(path, "spm.model"), "wb") as f:
            f.write(tokenizer.proto)
    with open(os.path.join(path, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(dict(tokenizer.describe(), seq_length=seq_length), f, indent=2)


def next_serving_version(serving_root):
    versions = [int(d) for d in os.listdir(serving_root) if d.isdigit()] \
        if os.path.isdir(serving_root) else []
    return max(versions, default=0) + 1


def export_encoder(encoder, tokenizer, export_dir, mlm_head=None, pooling="cls",
                   representation_layer=-1, seq_length=128, serving_name="tf_mbalign",
                   source="", precision="float32", parts=EXPORT_PATH_KEYS):
    """Writes the exports named in `parts` (default: all of `EXPORT_PATH_KEYS`);
    returns a dict of their paths (`export_dir` joined with the relative paths
    that `export_info.json` records, which names only the parts written).

    `precision`: the Keras policy every export computes under, whatever the
    policy `encoder` trained under: `float32` (default; a mixed-bf16-trained
    encoder's float32 weights exported as they are), `mixed_bfloat16` (float32
    weights, bf16 matmuls) or `bfloat16` (weights stored in bf16 too). Outputs
    are float32 in every case."""
    unknown = sorted(set(parts) - set(EXPORT_PATH_KEYS))
    if unknown or not parts:
        raise ValueError(f"export parts must be a non-empty subset of {EXPORT_PATH_KEYS}, "
                         f"got {tuple(parts)!r}")
    encoder, mlm_head = models_at_precision(encoder, mlm_head, precision)
    # One version number for both serving models, so N of one matches N of the other.
    ids_name = f"{serving_name}_ids"
    version = max(next_serving_version(os.path.join(export_dir, "serving", name))
                  for name in (serving_name, ids_name))
    relative = {"encoder": "encoder", "preprocessor": "preprocessor", "keras": "keras",
                "serving": os.path.join("serving", serving_name, str(version)),
                "serving_ids": os.path.join("serving", ids_name, str(version))}
    relative = {key: value for key, value in relative.items() if key in parts}
    paths = {key: os.path.join(export_dir, value) for key, value in relative.items()}
    writers = {
        "encoder": lambda p: _save(HubEncoder(encoder, mlm_head), p),
        "preprocessor": lambda p: _save(Preprocessor(tokenizer, seq_length), p),
        "keras": lambda p: _keras_assets(encoder, tokenizer, p, seq_length),
        "serving": lambda p: _save(SentenceEmbeddingServer(
            encoder, tokenizer, pooling, representation_layer, seq_length), p),
        "serving_ids": lambda p: _save(TokenIdsEmbeddingServer(
            encoder, pooling, representation_layer), p),
    }
    for key in paths:
        replace_directory_atomic(paths[key], writers[key])
    info = dict(relative, source=source, pooling=pooling, representation_layer=representation_layer,
                seq_length=seq_length, precision=precision)
    if "serving" in paths or "serving_ids" in paths:
        info["serving_version"] = version
    write_json_atomic(os.path.join(export_dir, "export_info.json"), info, indent=2)
    return paths


def models_at_precision(encoder, mlm_head, precision):
    """(encoder, MLM head) computing under `precision` (copies where the
    policy differs; the head stays tied to the returned encoder)."""
    if precision not in EXPORT_PRECISIONS:
        raise ValueError(f"export precision must be one of {EXPORT_PRECISIONS}, "
                         f"got {precision!r}")
    exported = encoder_at_precision(encoder, precision)
    if mlm_head is not None:
        mlm_head = tied_head_like(mlm_head, exported.token_embedding, precision)
    return exported, mlm_head


def read_export_info(export_dir):
    """`export_info.json` with its paths resolved against `export_dir`.

    Exports of this version record paths relative to the export
    directory. Older ones recorded the path as given when exporting (absolute,
    or relative to the directory training ran in); those resolve too: an
    absolute path that exists is kept, otherwise the part below the export
    directory (`encoder`, `serving/<name>/<version>`, ...) is looked up
    under `export_dir`, so a moved export still works.
    """
    with open(os.path.join(export_dir, "export_info.json"), encoding="utf-8") as f:
        info = json.load(f)
    for key in EXPORT_PATH_KEYS:
        if isinstance(info.get(key), str):
            info[key] = _resolve_export_path(export_dir, key, info[key])
    return info


def _resolve_export_path(export_dir, key, recorded):
    if os.path.isabs(recorded) and os.path.exists(recorded):
        return recorded
    relative = os.path.join(export_dir, recorded)
    if not os.path.isabs(recorded) and os.path.exists(relative):
        return relative
    depth = 3 if key.startswith("serving") else 1  # serving/<name>/<version>
    tail = os.path.normpath(recorded).split(os.sep)[-depth:]
    return os.path.join(export_dir, *tail)


class UnsafeModelFileError(ValueError):
    """A `.keras` file that is not a plain exported encoder; nothing was loaded."""


# What `export_encoder` writes: a BertEncoder of plain values, its weights.
_ARCHIVE_MEMBERS = {"config.json", "metadata.json", "model.weights.h5"}
_ENCODER_CLASS = ("tf_mbalign.modeling.bert_encoder", "BertEncoder", "tf_mbalign>BertEncoder")
_ENCODER_ARGS = {
    "name": str, "trainable": bool, "vocabulary_size": int, "num_layers": int,
    "num_heads": int, "hidden_dim": int, "intermediate_dim": int, "dropout": (int, float),
    "max_sequence_length": int, "num_segments": int, "hidden_activation": str,
    "layer_norm_epsilon": (int, float),
}
_TOP_LEVEL_KEYS = {"module", "class_name", "config", "registered_name", "build_config",
                   "compile_config"}


def check_encoder_archive(path):
    """Refuses a `.keras` file unless it is exactly what `export_encoder` writes.

    The check reads only the zip listing and `config.json` (as JSON): the
    top object must be our `BertEncoder`, its arguments plain numbers and
    strings, its dtype a plain `DTypePolicy`. Any other object (a Lambda
    layer, a TFSMLayer, a function reference such as
    `keras.config.enable_unsafe_deserialization`) is refused before Keras
    deserializes anything, independently of Keras' own safe_mode checks.

    Raises:
        UnsafeModelFileError: naming the file and what was found.
    """
    def refuse(what):
        raise UnsafeModelFileError(
            f"{path}: {what}. Only encoders written by tf_mbalign's export are loaded "
            "(a model file is a program; nothing from this one was run). Re-export the "
            "encoder from its training run: python -m tf_mbalign.export --model_dir=... "
            "--export_dir=..."
        )

    try:
        with zipfile.ZipFile(path) as archive:
            members = set(archive.namelist())
            if members - _ARCHIVE_MEMBERS:
                refuse(f"unexpected archive members {sorted(members - _ARCHIVE_MEMBERS)}")
            config = json.loads(archive.read("config.json"))
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as error:
        if isinstance(error, UnsafeModelFileError):
            raise
        refuse(f"not a readable .keras archive ({error})")
    if not isinstance(config, dict) or set(config) - _TOP_LEVEL_KEYS:
        refuse("config.json is not a single serialized object")
    found = (config.get("module"), config.get("class_name"), config.get("registered_name"))
    if found != _ENCODER_CLASS:
        refuse(f"the model is {found[1]!r} from {found[0]!r}, not tf_mbalign's BertEncoder")
    arguments = config.get("config")
    if not isinstance(arguments, dict):
        refuse("the encoder has no configuration")
    for key, value in arguments.items():
        if key == "dtype":
            plain = isinstance(value, str) or (
                isinstance(value, dict) and value.get("module") == "keras"
                and value.get("class_name") == "DTypePolicy"
                and value.get("registered_name") is None
                and set(value) <= {"module", "class_name", "config", "registered_name"}
                and isinstance(value.get("config"), dict)
                and set(value["config"]) == {"name"} and isinstance(value["config"]["name"], str))
            if not plain:
                refuse(f"the encoder's dtype is not a plain DTypePolicy: {str(value)[:200]}")
        elif key not in _ENCODER_ARGS:
            refuse(f"unknown encoder argument {key!r}")
        elif not isinstance(value, _ENCODER_ARGS[key]) or (
                isinstance(value, bool) and _ENCODER_ARGS[key] is not bool):
            refuse(f"encoder argument {key!r} is {str(value)[:200]}, not a plain value")
    for key in ("build_config", "compile_config"):
        value = config.get(key)
        if value not in (None, {}) and not (
                key == "build_config" and set(value) == {"input_shape"}
                and value["input_shape"] is None):
            refuse(f"unexpected {key}: {str(value)[:200]}")


def load_encoder(export_dir):
    """The exported `BertEncoder` as a Keras model.

    The file is checked first (`check_encoder_archive`), then loaded with
    `safe_mode=True`.
    """
    from tf_mbalign.modeling import bert_encoder  # noqa: F401  (registers the class)

    path = os.path.join(export_dir, "keras", "encoder.keras")
    check_encoder_archive(path)
    return keras.saving.load_model(path, safe_mode=True)
