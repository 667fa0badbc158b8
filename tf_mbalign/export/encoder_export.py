"""Writes every export of an aligned encoder, atomically.

`export_dir/`:
- `encoder/`       TF-Hub BERT encoder SavedModel (`hub_encoder.py`), with `.mlm`
- `preprocessor/`  TF-Hub BERT preprocessor SavedModel (`preprocessor.py`)
- `serving/<name>/<version>/`  TF Serving SavedModel (`serving.py`)
- `keras/`         `encoder.keras` (load with safe_mode=True) and the tokenizer
                   assets (vocab.txt or spm.model, tokenizer.json)
- `export_info.json`  what was exported, from which run

Each part is written under a temporary name in the same folder and renamed
into place, so a half-written export never looks complete. `encoder/`,
`preprocessor/` and `keras/` are replaced whole; serving versions are never
overwritten: a new export adds version N+1 beside the older ones, as TF
Serving expects.
"""

import json
import os
import shutil
import tempfile

import keras
import tensorflow as tf

from tf_mbalign.data import tokenizers
from tf_mbalign.export.hub_encoder import HubEncoder
from tf_mbalign.export.preprocessor import Preprocessor
from tf_mbalign.export.serving import SentenceEmbeddingServer


def _atomic_dir(target, write):
    """Calls write(staging_dir), then renames staging onto `target`."""
    parent = os.path.dirname(os.path.abspath(target))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}-partial-", dir=parent)
    try:
        write(staging)
        old = None
        if os.path.exists(target):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}-old-", dir=parent)
            os.rmdir(old)
            os.replace(target, old)
        os.replace(staging, target)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


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
                   source=""):
    """Writes all exports; returns a dict of their paths."""
    paths = {
        "encoder": os.path.join(export_dir, "encoder"),
        "preprocessor": os.path.join(export_dir, "preprocessor"),
        "keras": os.path.join(export_dir, "keras"),
    }
    _atomic_dir(paths["encoder"], lambda p: _save(HubEncoder(encoder, mlm_head), p))
    _atomic_dir(paths["preprocessor"], lambda p: _save(Preprocessor(tokenizer, seq_length), p))
    _atomic_dir(paths["keras"], lambda p: _keras_assets(encoder, tokenizer, p, seq_length))
    serving_root = os.path.join(export_dir, "serving", serving_name)
    version = next_serving_version(serving_root)
    paths["serving"] = os.path.join(serving_root, str(version))
    server = SentenceEmbeddingServer(encoder, tokenizer, pooling, representation_layer, seq_length)
    _atomic_dir(paths["serving"], lambda p: _save(server, p))
    info = dict(paths, source=source, pooling=pooling, representation_layer=representation_layer,
                seq_length=seq_length, serving_version=version)
    tmp = os.path.join(export_dir, f".export_info.json.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2)
    os.replace(tmp, os.path.join(export_dir, "export_info.json"))
    return paths


def load_encoder(export_dir):
    """The exported `BertEncoder` as a Keras model (safe_mode, no Lambda)."""
    from tf_mbalign.modeling import bert_encoder  # noqa: F401  (registers the class)

    return keras.saving.load_model(os.path.join(export_dir, "keras", "encoder.keras"),
                                   safe_mode=True)
