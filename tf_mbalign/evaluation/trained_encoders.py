"""Loads the encoder to evaluate from whatever the user points at.

`--encoder` for evaluation and fine-tuning accepts:

- an export directory (`export_info.json`, `keras/encoder.keras` and the
  tokenizer assets, as written by training or `python -m tf_mbalign.export`);
  loaded with `safe_mode=True`;
- a training run's `--model_dir` (`flags.json` + `checkpoints/`): the latest
  checkpoint's encoder;
- anything `tf_mbalign.modeling.encoders.load_encoder` takes (`e5-small`, a
  Hugging Face BERT directory, `preset:NAME`, `tiny:VOCAB`): the encoder as
  it is, before alignment, with the pooling and layer training resolves for
  it (mean for e5-small, [CLS] for a checkpoint with an MLM head).

Example:
```python
trained = load_trained_encoder("runs/align/export")
trained.encoder, trained.tokenizer, trained.pooling  # BertEncoder, tokenizer, "mean"
```
"""

import dataclasses
import json
import os

from tf_mbalign.data import tokenizers
from tf_mbalign.modeling import encoders
from tf_mbalign.modeling.bert_encoder import clone_encoder


@dataclasses.dataclass
class TrainedEncoder:
    """An encoder with its tokenizer and the sentence representation it was aligned for."""

    encoder: object
    tokenizer: tokenizers.SubwordTokenizer
    source: str
    kind: str  # "export", "run" or "pretrained"
    pooling: str = "cls"
    representation_layer: int = -1


def tokenizer_from_assets(keras_dir):
    """The tokenizer saved beside `encoder.keras` (vocab.txt or spm.model)."""
    info_path = os.path.join(keras_dir, "tokenizer.json")
    with open(info_path, encoding="utf-8") as f:
        info = json.load(f)
    if info["type"] == "WordPieceTokenizer":
        return tokenizers.WordPieceTokenizer(
            os.path.join(keras_dir, "vocab.txt"), lowercase=bool(info.get("lowercase", False))
        )
    if info["type"] == "SentencePieceTokenizer":
        return tokenizers.SentencePieceTokenizer(
            os.path.join(keras_dir, "spm.model"), vocabulary_size=info["vocabulary_size"]
        )
    raise ValueError(f"{info_path}: unknown tokenizer type {info['type']!r}")


def load_trained_encoder(spec, dropout=None):
    """An export dir, a run's model_dir, or an `--encoder` value (module docstring)."""
    if os.path.isfile(os.path.join(spec, "export_info.json")):
        from tf_mbalign.export import encoder_export

        info = encoder_export.read_export_info(spec)
        encoder = encoder_export.load_encoder(spec)
        if dropout is not None:
            encoder = _with_dropout(encoder, dropout)
        return TrainedEncoder(
            encoder, tokenizer_from_assets(os.path.join(spec, "keras")), source=spec,
            kind="export", pooling=info.get("pooling", "cls"),
            representation_layer=int(info.get("representation_layer", -1)),
        )
    if os.path.isfile(os.path.join(spec, "flags.json")):
        from tf_mbalign.config import TrainConfig
        from tf_mbalign.training.run_state import restore_trained_aligner

        config = TrainConfig.from_json_file(os.path.join(spec, "flags.json"), model_dir=spec)
        if dropout is not None:
            config = dataclasses.replace(config, dropout=dropout)
        bundle, aligner, checkpoint = restore_trained_aligner(config)
        return TrainedEncoder(
            aligner.encoder, bundle.tokenizer, source=checkpoint, kind="run",
            pooling=aligner.pooling, representation_layer=aligner.representation_layer,
        )
    bundle = encoders.load_encoder(spec, dropout=0.1 if dropout is None else dropout)
    pooling, layer = representation_by_checkpoint(bundle)
    return TrainedEncoder(bundle.encoder, bundle.tokenizer, source=bundle.source,
                          kind="pretrained", pooling=pooling, representation_layer=layer)


def representation_by_checkpoint(bundle):
    """(pooling, layer) a checkpoint embeds sentences with when nothing sets
    them: what training resolves for it (`config.CHECKPOINT_DEFAULTS`: mean
    for a sentence encoder without an MLM head such as e5-small, [CLS] for
    one with a head)."""
    from tf_mbalign.config import CHECKPOINT_DEFAULTS, checkpoint_kind

    kind = checkpoint_kind(bundle)
    return (CHECKPOINT_DEFAULTS["pooling"].for_kind(kind)[0],
            CHECKPOINT_DEFAULTS["representation_layer"].for_kind(kind)[0])


def _with_dropout(encoder, dropout):
    """`encoder`, or a copy whose dropout rate is `dropout` (same weights)."""
    if encoder.get_config().get("dropout") == dropout:
        return encoder
    return clone_encoder(encoder, dropout=dropout)
