"""Numpy pieces of the independent reference forward passes (BERT in
test_encoders.py, XLM-R in test_xlm_roberta.py), written from the published
architectures; they share no code with the package."""

import math

import numpy as np

_erf = np.vectorize(math.erf)


def gelu_exact(x):
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def layer_norm(x, gamma, beta, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def linear(x, w, name):
    """HF nn.Linear: y = x W^T + b with W stored [out, in]."""
    return x @ w[f"{name}.weight"].T + w[f"{name}.bias"]


def transformer_layers(w, x, padding_mask, prefix, num_layers, num_heads, act, eps):
    """Post-layer-norm transformer layers (BERT / RoBERTa `encoder.layer.N`)
    on embeddings `x` [batch, length, hidden]; every layer's output."""
    batch, length, hidden = x.shape
    head_dim = hidden // num_heads
    # Additive mask over keys: 0 where attended, very negative at padding.
    key_bias = np.where(padding_mask[:, None, None, :] > 0, 0.0, -1e9)

    def heads(t):
        return t.reshape(batch, length, num_heads, head_dim).transpose(0, 2, 1, 3)

    layers = []
    for i in range(num_layers):
        p = f"{prefix}{i}."
        q, k, v = (heads(linear(x, w, f"{p}attention.self.{name}"))
                   for name in ("query", "key", "value"))
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(head_dim) + key_bias
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        context = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, length, hidden)
        x = layer_norm(linear(context, w, f"{p}attention.output.dense") + x,
                       w[f"{p}attention.output.LayerNorm.weight"],
                       w[f"{p}attention.output.LayerNorm.bias"], eps)
        ffn = linear(act(linear(x, w, f"{p}intermediate.dense")), w, f"{p}output.dense")
        x = layer_norm(ffn + x, w[f"{p}output.LayerNorm.weight"],
                       w[f"{p}output.LayerNorm.bias"], eps)
        layers.append(x)
    return layers
