"""Exports the aligned encoder: a SavedModel with the TF-Hub BERT names, the
Keras model file, and the tokenizer assets.

`export_dir/`:
- `saved_model/` : `serving_default` takes int32 `input_word_ids`,
  `input_mask`, `input_type_ids` [batch, seq] and returns `pooled_output`,
  `sequence_output` and `default` (= pooled_output).
- `encoder.keras` : the `BertEncoder` (load with safe_mode=True).
- `tokenizer/` : vocab.txt (WordPiece) or spm.model (SentencePiece) and
  `tokenizer.json` with the special ids.

The directory is written under a temporary name and renamed into place, so a
half-written export never looks complete; an older export at the same place
is replaced only once the new one is whole.
"""

import json
import os
import shutil
import tempfile

import keras
import tensorflow as tf

from tf_mbalign.data import tokenizers


def _saved_model(encoder, path, max_seq_length):
    def spec(name):
        return tf.TensorSpec([None, None], tf.int32, name=name)

    class _Serving(tf.Module):
        def __init__(self):
            super().__init__()
            self.encoder = encoder

        @tf.function(input_signature=[spec("input_word_ids"), spec("input_mask"),
                                      spec("input_type_ids")])
        def serve(self, input_word_ids, input_mask, input_type_ids):
            outputs = self.encoder(
                {
                    "token_ids": input_word_ids,
                    "segment_ids": input_type_ids,
                    "padding_mask": input_mask,
                },
                training=False,
            )
            return {
                "pooled_output": outputs["pooled_output"],
                "sequence_output": outputs["sequence_output"],
                "default": outputs["pooled_output"],
            }

    module = _Serving()
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve})


def export_encoder(encoder, tokenizer, export_dir, max_seq_length=128):
    """Writes the export atomically; returns `export_dir`."""
    parent = os.path.dirname(os.path.abspath(export_dir))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".export-", dir=parent)
    try:
        _saved_model(encoder, os.path.join(staging, "saved_model"), max_seq_length)
        encoder.save(os.path.join(staging, "encoder.keras"))
        assets = os.path.join(staging, "tokenizer")
        os.makedirs(assets)
        if isinstance(tokenizer, tokenizers.WordPieceTokenizer):
            shutil.copyfile(tokenizer.vocab_path, os.path.join(assets, "vocab.txt"))
        else:
            with open(os.path.join(assets, "spm.model"), "wb") as f:
                f.write(tokenizer.proto)
        with open(os.path.join(assets, "tokenizer.json"), "w", encoding="utf-8") as f:
            json.dump(dict(tokenizer.describe(), max_seq_length=max_seq_length), f, indent=2)
        old = None
        if os.path.exists(export_dir):
            old = tempfile.mkdtemp(prefix=".export-old-", dir=parent)
            os.rmdir(old)
            os.replace(export_dir, old)
        os.replace(staging, export_dir)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return export_dir


def load_encoder(export_dir):
    """The exported `BertEncoder` as a Keras model (safe_mode, no Lambda)."""
    from tf_mbalign.modeling import bert_encoder  # noqa: F401  (registers the class)

    return keras.saving.load_model(os.path.join(export_dir, "encoder.keras"), safe_mode=True)
