"""A PyTorch + Hugging Face transformers reference of the alignment step.

The same step as `tf_mbalign.modeling.aligner.Aligner.train_step`, written the
way a PyTorch engineer would write it, for timing side by side
(`benchmarks/train_step.py`); benchmark-only dependency (torch is not a
dependency of the package, see benchmarks/requirements.txt):

1. EMA of the key encoder: one `torch._foreach_lerp_` over all parameters
   (key <- m key + (1 - m) query).
2. Keys: the key encoder (eval mode, no grad) on the key sentences, [CLS],
   L2-normalized.
3. TLM: `BertModel` (SDPA attention, no pooler: nothing uses it) on the packed
   pair; the hidden states of the *real* masked slots only (weight > 0) are
   gathered before the MLM head (dense + GELU + LayerNorm, decoder tied to
   the word embeddings + bias), so the vocabulary projection runs over the
   masked tokens alone; mean cross-entropy over them.
4. MoCo: the query encoder (= the TLM encoder, train mode) on the query
   sentences, [CLS], L2-normalized; logits [q.k+, q.queue] / T with queue
   entries that are empty or of the same pair set to -1e9; cross-entropy with
   target 0.
5. loss = tlm + moco; backward; `clip_grad_norm_` (global norm, foreach);
   AdamW (fused kernel; no decay on biases and LayerNorm weights) with a
   linear warm-up/decay schedule.
6. Enqueue the keys and their pair ids at the pointer (in-place index
   assignment; the pointer is a Python int).

TLM / MoCo accuracies are computed too (as tensors, never synchronized),
because the product's step computes them for its metrics.

Same model shape, batch, sequence lengths, masked slots, queue size,
dropout, GELU (exact), optimizer and schedule as ours; random weights.
"""

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn


def _bert(shape, dropout):
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=shape.vocabulary_size,
        hidden_size=shape.hidden_dim,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        intermediate_size=shape.intermediate_dim,
        hidden_act="gelu",
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        max_position_embeddings=shape.max_sequence_length,
        type_vocab_size=2,
        layer_norm_eps=1e-12,
    )
    config._attn_implementation = "sdpa"
    return BertModel(config, add_pooling_layer=False)


class TorchAlignmentStep(nn.Module):
    """Args: shape (`_common.ModelShape`), settings (`_common.StepSettings`),
    batches (list of numpy dicts in the pipeline's format), precision
    (`float32` or `mixed_bfloat16` -> autocast bf16), and the step's
    hyper-parameters."""

    def __init__(self, shape, settings, batches, precision="float32", dropout=0.1,
                 momentum=0.999, temperature=0.07, learning_rate=1e-5, weight_decay=0.01,
                 max_gradient_norm=1.0, warmup_steps=0, total_steps=10**9, seed=0,
                 device=None):
        super().__init__()
        torch.manual_seed(seed)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        h, V = shape.hidden_dim, shape.vocabulary_size
        self.encoder = _bert(shape, dropout)
        self.head_dense = nn.Linear(h, h)
        self.head_norm = nn.LayerNorm(h, eps=1e-12)
        self.head_bias = nn.Parameter(torch.zeros(V))
        self.key_encoder = copy.deepcopy(self.encoder)
        self.key_encoder.requires_grad_(False)
        self.key_encoder.eval()
        K = settings.queue_size
        self.register_buffer("queue", torch.zeros(K, h))
        self.register_buffer("queue_pair_ids", torch.full((K,), -1, dtype=torch.int32))
        self.to(self.device)
        self.pointer, self.filled, self.queue_size = 0, 0, K
        self.momentum, self.temperature = momentum, temperature
        self.max_gradient_norm = max_gradient_norm
        self.autocast_dtype = torch.bfloat16 if precision == "mixed_bfloat16" else None

        self.query_params = list(self.encoder.parameters())
        self.key_params = list(self.key_encoder.parameters())
        self.trained = [p for p in self.parameters() if p.requires_grad]
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if name.endswith("bias") or "LayerNorm" in name or "norm" in name
             else decay).append(p)
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": weight_decay},
             {"params": no_decay, "weight_decay": 0.0}],
            lr=learning_rate, betas=(0.9, 0.999), eps=1e-6, fused=True,
        )

        def schedule(step):
            if step < warmup_steps:
                return (step + 1) / max(warmup_steps, 1)
            return max(0.0, 1.0 - (step - warmup_steps) / max(total_steps - warmup_steps, 1))

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        self.batches = [self._to_device(b) for b in batches]
        self._next = 0
        self.last = {}

    def _to_device(self, batch):
        out = {k: torch.as_tensor(v).to(self.device) for k, v in batch.items()}
        for k in ("tlm_token_ids", "query_token_ids", "key_token_ids", "masked_positions",
                  "masked_ids"):
            out[k] = out[k].long()
        out["pair_id"] = out["pair_id"].int()
        return out

    def _autocast(self):
        if self.autocast_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    @staticmethod
    def _cls(encoder, ids, mask):
        hidden = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        return F.normalize(hidden[:, 0].float(), dim=-1)

    def step(self, b):
        # 1-2. EMA, then the keys.
        with torch.no_grad():
            torch._foreach_lerp_(self.key_params, self.query_params, 1.0 - self.momentum)
            with self._autocast():
                keys = self._cls(self.key_encoder, b["key_token_ids"], b["key_padding_mask"])

        with self._autocast():
            # 3. TLM, vocabulary projection over the real masked slots only.
            hidden = self.encoder(input_ids=b["tlm_token_ids"],
                                  attention_mask=b["tlm_padding_mask"]).last_hidden_state
            real = b["masked_weights"] > 0
            rows = torch.arange(hidden.shape[0], device=self.device)[:, None].expand_as(real)
            selected = hidden[rows[real], b["masked_positions"][real]]
            x = self.head_norm(F.gelu(self.head_dense(selected)))
            logits = F.linear(x, self.encoder.embeddings.word_embeddings.weight,
                              self.head_bias).float()
            targets = b["masked_ids"][real]
            tlm_loss = F.cross_entropy(logits, targets)

            # 4. MoCo.
            queries = self._cls(self.encoder, b["query_token_ids"], b["query_padding_mask"])
        positive = (queries * keys).sum(dim=1, keepdim=True)
        negative = queries @ self.queue.T
        valid = (torch.arange(self.queue_size, device=self.device) < self.filled)[None, :] & (
            b["pair_id"][:, None] != self.queue_pair_ids[None, :])
        negative = negative.masked_fill(~valid, -1e9)
        moco_logits = torch.cat([positive, negative], dim=1) / self.temperature
        moco_loss = F.cross_entropy(
            moco_logits, torch.zeros(moco_logits.shape[0], dtype=torch.long, device=self.device))
        loss = tlm_loss + moco_loss

        # 5. Backward, clip, AdamW.
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.trained, self.max_gradient_norm, foreach=True)
        self.optimizer.step()
        self.scheduler.step()

        # 6. Enqueue.
        with torch.no_grad():
            n = keys.shape[0]
            slots = (self.pointer + torch.arange(n, device=self.device)) % self.queue_size
            self.queue[slots] = keys
            self.queue_pair_ids[slots] = b["pair_id"]
            self.pointer = (self.pointer + n) % self.queue_size
            self.filled = min(self.filled + n, self.queue_size)
            self.last = {
                "loss": loss.detach(), "tlm_loss": tlm_loss.detach(),
                "moco_loss": moco_loss.detach(), "gradient_norm": norm,
                "tlm_accuracy": (logits.argmax(-1) == targets).float().mean(),
                "moco_accuracy": (moco_logits.argmax(-1) == 0).float().mean(),
            }

    @torch.no_grad()
    def copy_from_keras(self, aligner):
        """Loads the weights, key-encoder weights and queue of a Keras
        `Aligner` (for checking that both sides compute the same step)."""
        self._copy_encoder(self.encoder, aligner.encoder)
        self._copy_encoder(self.key_encoder, aligner.key_encoder)
        head = aligner.mlm_head
        self.head_dense.weight.copy_(_t(head._intermediate_dense.kernel).T)
        self.head_dense.bias.copy_(_t(head._intermediate_dense.bias))
        self.head_norm.weight.copy_(_t(head._intermediate_layer_norm.gamma))
        self.head_norm.bias.copy_(_t(head._intermediate_layer_norm.beta))
        self.head_bias.copy_(_t(head._bias))
        queue = aligner.key_queue
        self.queue.copy_(_t(queue.keys))
        self.queue_pair_ids.copy_(_t(queue.pair_ids))
        self.pointer, self.filled = int(queue.pointer.numpy()), int(queue.filled.numpy())

    @staticmethod
    def _copy_encoder(bert, keras_encoder):
        h = keras_encoder.hidden_dim
        emb = bert.embeddings
        emb.word_embeddings.weight.copy_(_t(keras_encoder.token_embedding.embeddings))
        emb.position_embeddings.weight.copy_(
            _t(keras_encoder.position_embedding.position_embeddings))
        emb.token_type_embeddings.weight.copy_(_t(keras_encoder.segment_embedding.embeddings))
        emb.LayerNorm.weight.copy_(_t(keras_encoder.embeddings_layer_norm.gamma))
        emb.LayerNorm.bias.copy_(_t(keras_encoder.embeddings_layer_norm.beta))
        for layer, ours in zip(bert.encoder.layer, keras_encoder.transformer_layers):
            attention = ours._self_attention_layer
            for name in ("query", "key", "value"):
                dense = getattr(attention, f"_{name}_dense")
                target = getattr(layer.attention.self, name)
                target.weight.copy_(_t(dense.kernel).reshape(h, h).T)
                target.bias.copy_(_t(dense.bias).reshape(h))
            out = attention._output_dense
            layer.attention.output.dense.weight.copy_(_t(out.kernel).reshape(h, h).T)
            layer.attention.output.dense.bias.copy_(_t(out.bias))
            norm = ours._self_attention_layer_norm
            layer.attention.output.LayerNorm.weight.copy_(_t(norm.gamma))
            layer.attention.output.LayerNorm.bias.copy_(_t(norm.beta))
            layer.intermediate.dense.weight.copy_(_t(ours._feedforward_intermediate_dense.kernel).T)
            layer.intermediate.dense.bias.copy_(_t(ours._feedforward_intermediate_dense.bias))
            layer.output.dense.weight.copy_(_t(ours._feedforward_output_dense.kernel).T)
            layer.output.dense.bias.copy_(_t(ours._feedforward_output_dense.bias))
            norm = ours._feedforward_layer_norm
            layer.output.LayerNorm.weight.copy_(_t(norm.gamma))
            layer.output.LayerNorm.bias.copy_(_t(norm.beta))

    def run(self, steps):
        """Runs `steps` steps (cycling the batches) and waits for them."""
        self.train()
        self.key_encoder.eval()
        for _ in range(steps):
            self.step(self.batches[self._next % len(self.batches)])
            self._next += 1
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return self._next

    def metrics(self):
        return {k: float(v) for k, v in self.last.items()}


def _t(variable):
    return torch.as_tensor(variable.numpy())


def torch_matmul_flops(n=2048, repeats=3):
    """Informational: torch's own float32 matmul rate (not part of the peak)."""
    import time

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2.0 * n ** 3 / best
