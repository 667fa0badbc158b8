"""A BERT encoder that exposes every layer's output and its GELU variant."""

import keras
import keras_hub
import tensorflow as tf

from tf_mbalign.modeling.recomputed_transformer import TransformerEncoder


def _initializer(stddev=0.02):
    return keras.initializers.TruncatedNormal(stddev=stddev)


_REDUCED_PRECISIONS = ("bfloat16", "float16")


def gelu_in_float32(x, approximate):
    """GELU of `x`; a bf16 or float16 `x` is computed in float32 and rounded
    to its dtype once. TensorFlow's CPU kernels run each bf16 element-wise op
    through float32 and round after every op: the same function in float32,
    casts included, takes 0.54-0.62x the time forward and backward on e5-small's
    feed-forward activations (BENCHMARKS.md, "Element-wise work on the AMX
    CPU"), and is nearer the float32 result. float32 inputs: Keras' GELU as is."""
    if keras.backend.standardize_dtype(x.dtype) in _REDUCED_PRECISIONS:
        return keras.ops.cast(
            keras.activations.gelu(keras.ops.cast(x, "float32"), approximate=approximate),
            x.dtype)
    return keras.activations.gelu(x, approximate=approximate)


def _gelu_exact(x):
    return gelu_in_float32(x, approximate=False)


def _gelu_tanh(x):
    return gelu_in_float32(x, approximate=True)


_ACTIVATIONS = {"gelu": _gelu_exact, "gelu_approximate": _gelu_tanh}


def dropout_rng_states(model):
    """The state variables of every Keras SeedGenerator in `model`, in a
    fixed order."""
    states, seen = [], set()
    for layer in model._flatten_layers(include_self=True, recursive=True):
        for generator in getattr(layer, "_seed_generators", []):
            if id(generator) not in seen:
                seen.add(id(generator))
                states.append(generator.state.value)
    return states


@keras.saving.register_keras_serializable(package="tf_mbalign")
class BertEncoder(keras.Model):
    """A post-layer-norm BERT encoder built from keras-hub layers.

    Same layers, layer names and weight layout as
    `keras_hub.models.BertBackbone`, so weights move between the two with
    `set_weights`. Two differences, both needed by alignment training:

    - `hidden_activation` picks exact (erf) GELU, as used by mBERT and
      multilingual-e5 checkpoints, or keras-hub's tanh approximation;
    - the outputs include `encoder_outputs`, the hidden states after every
      transformer layer, so a sentence representation can be read from any
      layer and the TF-Hub encoder contract can be exported.

    Args:
        vocabulary_size: int. Rows of the token embedding.
        num_layers: int. Number of transformer layers.
        num_heads: int. Attention heads per layer.
        hidden_dim: int. Width of the hidden states.
        intermediate_dim: int. Width of the feed-forward layer.
        dropout: float. Dropout rate for embeddings and transformer layers.
        max_sequence_length: int. Number of position embeddings.
        num_segments: int. Number of token types.
        hidden_activation: `"gelu"` (exact) or `"gelu_approximate"`.
        layer_norm_epsilon: float. Epsilon of every layer norm.
        dtype: Keras dtype policy.

    Example:
    ```python
    encoder = BertEncoder(vocabulary_size=100, num_layers=2, num_heads=2,
                          hidden_dim=16, intermediate_dim=32)
    outputs = encoder({
        "token_ids": np.ones((1, 8), "int32"),
        "segment_ids": np.zeros((1, 8), "int32"),
        "padding_mask": np.ones((1, 8), "int32"),
    })
    outputs["sequence_output"].shape  # (1, 8, 16)
    len(outputs["encoder_outputs"])   # 2
    ```
    """

    def __init__(
        self,
        vocabulary_size,
        num_layers,
        num_heads,
        hidden_dim,
        intermediate_dim,
        dropout=0.1,
        max_sequence_length=512,
        num_segments=2,
        hidden_activation="gelu",
        layer_norm_epsilon=1e-12,
        dtype=None,
        **kwargs,
    ):
        if hidden_activation not in _ACTIVATIONS:
            raise ValueError(
                f"hidden_activation must be one of {sorted(_ACTIVATIONS)}, "
                f"got {hidden_activation!r}."
            )
        # === Layers ===
        self.token_embedding = keras_hub.layers.ReversibleEmbedding(
            input_dim=vocabulary_size,
            output_dim=hidden_dim,
            embeddings_initializer=_initializer(),
            dtype=dtype,
            name="token_embedding",
        )
        self.position_embedding = keras_hub.layers.PositionEmbedding(
            initializer=_initializer(),
            sequence_length=max_sequence_length,
            dtype=dtype,
            name="position_embedding",
        )
        self.segment_embedding = keras.layers.Embedding(
            input_dim=num_segments,
            output_dim=hidden_dim,
            embeddings_initializer=_initializer(),
            dtype=dtype,
            name="segment_embedding",
        )
        self.embeddings_add = keras.layers.Add(dtype=dtype, name="embeddings_add")
        self.embeddings_layer_norm = keras.layers.LayerNormalization(
            epsilon=layer_norm_epsilon, dtype=dtype, name="embeddings_layer_norm"
        )
        self.embeddings_dropout = keras.layers.Dropout(
            dropout, dtype=dtype, name="embeddings_dropout"
        )
        self.transformer_layers = [
            TransformerEncoder(
                num_heads=num_heads,
                intermediate_dim=intermediate_dim,
                activation=_ACTIVATIONS[hidden_activation],
                dropout=dropout,
                layer_norm_epsilon=layer_norm_epsilon,
                kernel_initializer=_initializer(),
                dtype=dtype,
                name=f"transformer_layer_{i}",
            )
            for i in range(num_layers)
        ]
        self.pooled_dense = keras.layers.Dense(
            hidden_dim,
            kernel_initializer=_initializer(),
            activation="tanh",
            dtype=dtype,
            name="pooled_dense",
        )

        # === Functional Model ===
        token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
        segment_ids = keras.Input(shape=(None,), dtype="int32", name="segment_ids")
        padding_mask = keras.Input(shape=(None,), dtype="int32", name="padding_mask")
        tokens = self.token_embedding(token_ids)
        x = self.embeddings_add(
            (tokens, self.position_embedding(tokens), self.segment_embedding(segment_ids))
        )
        x = self.embeddings_dropout(self.embeddings_layer_norm(x))
        encoder_outputs = []
        for layer in self.transformer_layers:
            x = layer(x, padding_mask=padding_mask)
            encoder_outputs.append(x)
        super().__init__(
            inputs={
                "token_ids": token_ids,
                "segment_ids": segment_ids,
                "padding_mask": padding_mask,
            },
            outputs={
                "sequence_output": x,
                "pooled_output": self.pooled_dense(x[:, 0, :]),
                "encoder_outputs": encoder_outputs,
            },
            dtype=dtype,
            **kwargs,
        )
        # A functional model drops `dtype`: its own policy would be the global
        # one at construction, which `get_config` (and so the Keras file)
        # records, whatever policy the layers got.
        self.dtype_policy = self.token_embedding.dtype_policy

        # === Config ===
        self.vocabulary_size = vocabulary_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim
        self.dropout = dropout
        self.max_sequence_length = max_sequence_length
        self.num_segments = num_segments
        self.hidden_activation = hidden_activation
        self.layer_norm_epsilon = layer_norm_epsilon

    def set_recompute_activations(self, recompute):
        """Training calls of every transformer layer keep only the layer's input
        for the backward pass and run the layer again there (True), or keep
        every activation (False, the default). Same losses and gradients;
        not part of the config (`recomputed_transformer`)."""
        for layer in self.transformer_layers:
            layer.recompute_activations = bool(recompute)

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "dtype": keras.saving.serialize_keras_object(self.dtype_policy),
            "vocabulary_size": self.vocabulary_size,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "hidden_dim": self.hidden_dim,
            "intermediate_dim": self.intermediate_dim,
            "dropout": self.dropout,
            "max_sequence_length": self.max_sequence_length,
            "num_segments": self.num_segments,
            "hidden_activation": self.hidden_activation,
            "layer_norm_epsilon": self.layer_norm_epsilon,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


ARCHITECTURE = ("vocabulary_size", "num_layers", "num_heads", "hidden_dim", "intermediate_dim",
                "max_sequence_length", "num_segments", "hidden_activation", "layer_norm_epsilon")


def encoder_like(source, **arguments):
    """A new, randomly initialized `BertEncoder` with `source`'s architecture.

    Args:
        source: anything with the attributes in `ARCHITECTURE` (a keras-hub
            `BertBackbone`, a converted checkpoint, a benchmark shape, a
            `BertEncoder`); missing ones take the constructor's defaults.
        **arguments: constructor arguments that win over `source`'s (e.g.
            `dropout`, `dtype`, `name`, or an activation the source lacks).
    """
    values = {name: getattr(source, name) for name in ARCHITECTURE if hasattr(source, name)}
    values.update(arguments)
    return BertEncoder(**values)


def clone_encoder(encoder, **overrides):
    """A same-shaped `BertEncoder` holding a copy of `encoder`'s weights;
    `overrides` change config values (e.g. `name`, `dropout`)."""
    config = dict(encoder.get_config(), **overrides)
    clone = BertEncoder.from_config(config)
    clone.set_weights(encoder.get_weights())
    return clone


def encoder_at_precision(encoder, policy):
    """`encoder` itself when its dtype policy is `policy`, else a copy of it
    computing under `policy` (e.g. the float32 export of a model trained in
    mixed bf16: same float32 weights, float32 compute). Weights are copied
    variable to variable (cast to the copy's variable dtype)."""
    if encoder.dtype_policy.name == policy:
        return encoder
    copy = BertEncoder.from_config(dict(encoder.get_config(), dtype=policy))
    copy_weights(encoder.weights, copy.weights)
    return copy


def copy_weights(sources, targets):
    """Assigns each source variable to its target (same shapes, same order),
    cast to the target's dtype; no host copy."""
    if len(sources) != len(targets):
        raise ValueError(f"{len(sources)} source weights for {len(targets)} targets")
    for source, target in zip(sources, targets):
        if tuple(source.shape) != tuple(target.shape):
            raise ValueError(f"{source.path} {source.shape} -> {target.path} {target.shape}")
        target.assign(tf.cast(source.value, target.dtype))
