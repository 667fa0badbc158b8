"""XLM-R / RoBERTa checkpoints into our `BertEncoder`, through keras-hub.

keras-hub reads the weights (`XLMRobertaBackbone` and its Hugging Face
converter, or a keras-hub preset); this module copies them into a
`BertEncoder`, which alignment needs for every layer's output and a pooled
[CLS] (see BUILD_NOTES.md, "XLM-R-family encoders"). The copy is exact:

- positions: Hugging Face RoBERTa numbers real tokens from
  `padding_idx + 1` = 2, and keras-hub keeps position rows 2.. as rows 0..;
  with right padding (the only padding here) every real token gets the same
  row as in Hugging Face (padded positions differ and are masked out).
- token types: XLM-R has one (`type_vocab_size: 1`). keras-hub's XLM-R
  converter adds its row to the position rows; its RoBERTa converter does
  not, so `fold_token_type_into_positions` adds it when missing. Our encoder
  keeps two segment rows, holding `type_i - type_0` (zeros for XLM-R), so
  segment ids 0 and 1 (the TF-Hub preprocessor's convention) both give
  XLM-R's single type.
- exact (erf) GELU, layer norm epsilon from the config (1e-5 for XLM-R).
- the MLM head (`lm_head.*`: dense, GELU, layer norm, decoder tied to the
  word embeddings, bias) has BERT's shape, so it loads into the same
  keras-hub `MaskedLMHead` as `cls.predictions.*`.
"""

import numpy as np

from tf_mbalign.modeling.bert_encoder import BertEncoder

ROBERTA_MODEL_TYPES = ("xlm-roberta", "roberta")
PADDING_ID = 1  # `<pad>`: Hugging Face RoBERTa's `padding_idx`
_POSITION_OFFSET = PADDING_ID + 1


def _tensor(reader, names):
    """The first of `names` (with or without a `roberta.` prefix) in a
    safetensors reader, or None."""
    available = set(reader.keys())
    for name in names:
        for key in (name, f"roberta.{name}", f"xlm-roberta.{name}"):
            if key in available:
                return reader.get_tensor(key)
    return None


def read_checkpoint_extras(weights_path):
    """What keras-hub's converter does not read: token types, pooler, MLM head.

    Args:
        weights_path: a Hugging Face `model.safetensors` (read as numpy;
            nothing is executed).

    Returns:
        dict with `token_type` ([types, width] or None), `position`
        ([rows, width]), `pooler` ((kernel, bias) or None) and `mlm_head`
        (the `set_mlm_head_weights` dict, or None when the file has no
        complete `lm_head.*`).
    """
    from safetensors.numpy import safe_open

    with safe_open(weights_path, framework="numpy") as reader:
        extras = {
            "token_type": _tensor(reader, ["embeddings.token_type_embeddings.weight"]),
            "position": _tensor(reader, ["embeddings.position_embeddings.weight"]),
        }
        pooler = [_tensor(reader, [f"pooler.dense.{n}"]) for n in ("weight", "bias")]
        extras["pooler"] = None if pooler[0] is None or pooler[1] is None else (
            np.transpose(pooler[0]), pooler[1])
        head = {
            "dense_kernel": _tensor(reader, ["lm_head.dense.weight"]),
            "dense_bias": _tensor(reader, ["lm_head.dense.bias"]),
            "ln_gamma": _tensor(reader, ["lm_head.layer_norm.weight", "lm_head.layer_norm.gamma"]),
            "ln_beta": _tensor(reader, ["lm_head.layer_norm.bias", "lm_head.layer_norm.beta"]),
            "bias": _tensor(reader, ["lm_head.bias", "lm_head.decoder.bias"]),
        }
    if any(value is None for value in head.values()):
        extras["mlm_head"] = None
    else:
        head["dense_kernel"] = np.transpose(head["dense_kernel"])
        extras["mlm_head"] = head
    return extras


def fold_token_type_into_positions(backbone, extras):
    """Adds token type 0 to the backbone's position rows unless keras-hub's
    converter already did (its XLM-R converter does, its RoBERTa one not)."""
    if extras["token_type"] is None or extras["position"] is None:
        return
    positions = backbone.embeddings.position_embedding.position_embeddings
    rows = int(positions.shape[0])
    hf_rows = extras["position"][_POSITION_OFFSET:_POSITION_OFFSET + rows]
    if np.array_equal(np.asarray(positions.numpy()), hf_rows):
        positions.assign(hf_rows + extras["token_type"][0])


def encoder_from_roberta_backbone(backbone, dropout=0.1, dtype=None, hidden_activation="gelu",
                                  layer_norm_epsilon=1e-5, token_type=None, pooler=None,
                                  name="xlm_roberta_encoder"):
    """A `BertEncoder` holding a keras-hub (XLM-)RoBERTa backbone's weights.

    Args:
        backbone: a `keras_hub.models.RobertaBackbone` (or `XLMRobertaBackbone`)
            whose position rows already include token type 0.
        dropout: dropout rate of the new encoder.
        dtype: Keras dtype policy.
        hidden_activation: `"gelu"` (exact, XLM-R's) or `"gelu_approximate"`.
        layer_norm_epsilon: the checkpoint's `layer_norm_eps`.
        token_type: the checkpoint's token type rows, or None (one type).
        pooler: (kernel [in, out], bias) of `pooler.dense`, or None (the
            pooled output then starts random, as for a new head).
        name: Keras name of the encoder.
    """
    encoder = BertEncoder(
        vocabulary_size=backbone.vocabulary_size, num_layers=backbone.num_layers,
        num_heads=backbone.num_heads, hidden_dim=backbone.hidden_dim,
        intermediate_dim=backbone.intermediate_dim, dropout=dropout,
        max_sequence_length=backbone.max_sequence_length, num_segments=2,
        hidden_activation=hidden_activation, layer_norm_epsilon=layer_norm_epsilon,
        dtype=dtype, name=name,
    )
    encoder.token_embedding.set_weights(backbone.token_embedding.get_weights())
    encoder.position_embedding.set_weights(
        backbone.embeddings.position_embedding.get_weights())
    encoder.segment_embedding.set_weights([_segment_rows(token_type, backbone.hidden_dim)])
    encoder.embeddings_layer_norm.set_weights(backbone.embeddings_layer_norm.get_weights())
    for ours, theirs in zip(encoder.transformer_layers, backbone.transformer_layers):
        ours.set_weights(theirs.get_weights())
    if pooler is not None:
        encoder.pooled_dense.set_weights(list(pooler))
    return encoder


def _segment_rows(token_type, width):
    """Two segment rows relative to type 0 (already in the positions)."""
    rows = np.zeros((2, width), np.float32)
    if token_type is not None:
        for i in range(min(2, len(token_type))):
            rows[i] = token_type[i] - token_type[0]
    return rows
