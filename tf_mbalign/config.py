"""Every training flag, defined once, and the frozen config built from them.

The binary (`tf_mbalign.train`) only parses flags and calls
`TrainConfig.from_flags()`; library code and tests build `TrainConfig`
directly with keyword arguments.
"""

import dataclasses
import json

from absl import flags

from tf_mbalign.data.pipeline import PipelineConfig

# === Flags ===
FLAGS = flags.FLAGS
_F = flags

_F.DEFINE_string("encoder", "e5-small", "e5-small | a Hugging Face BERT dir | preset:NAME | tiny:VOCAB_TXT|tiny:demo")
_F.DEFINE_string("corpus", "demo", "demo | en-XX.tsv dir | TSV file | english.txt,other.txt | tfds:NAME[:SPLIT]")
_F.DEFINE_list("languages", [], "Only these languages of a corpus directory (default: all).")
_F.DEFINE_string("model_dir", "runs/align", "Checkpoints, TensorBoard logs, flags.json, metrics.jsonl, export/.")
_F.DEFINE_integer("train_steps", 100, "Encoder training steps (after the head warm-up).")
_F.DEFINE_integer("head_warmup_steps", 0, "Steps that train only a new MLM head before the encoder trains.")
_F.DEFINE_integer("global_batch_size", 32, "Pairs per step over all replicas.")
_F.DEFINE_integer("max_seq_length", 128, "TLM input length: [CLS] a [SEP] b [SEP].")
_F.DEFINE_integer("max_sentence_length", 64, "Length of each MoCo input: [CLS] s [SEP].")
_F.DEFINE_integer("max_predictions_per_seq", 20, "Masked positions kept per TLM input.")
_F.DEFINE_float("mask_selection_rate", 0.15, "Share of non-special tokens selected for TLM.")
_F.DEFINE_float("learning_rate", 1e-5, "Peak learning rate of the encoder.")
_F.DEFINE_float("head_learning_rate", 1e-3, "Learning rate of the head-only warm-up.")
_F.DEFINE_integer("warmup_steps", 10, "Linear learning-rate warm-up steps.")
_F.DEFINE_float("weight_decay", 0.01, "AdamW weight decay (not on biases / layer norms).")
_F.DEFINE_float("max_gradient_norm", 1.0, "Clip the global gradient norm (0 = off).")
_F.DEFINE_integer("queue_size", 65536, "MoCo queue size K (>= global batch).")
_F.DEFINE_float("momentum", 0.999, "MoCo key-encoder EMA momentum m.")
_F.DEFINE_float("temperature", 0.07, "InfoNCE temperature T.")
_F.DEFINE_float("contrastive_weight", 1.0, "Weight of the MoCo loss.")
_F.DEFINE_integer("representation_layer", -1, "Encoder layer for the sentence representation (-1 = last).")
_F.DEFINE_enum("pooling", "cls", ["cls", "mean"], "Sentence representation: [CLS] or mean.")
_F.DEFINE_integer("projection_dim", 0, "Linear projection before the MoCo loss (0 = none).")
_F.DEFINE_boolean("shuffle_inputs", True, "Random input shuffling (per pair: which side is first / the query).")
_F.DEFINE_float("language_sampling_alpha", 0.7, "Language sampling p_l ~ n_l^alpha.")
_F.DEFINE_integer("max_chars", 2000, "Truncate corpus sides longer than this many characters.")
_F.DEFINE_float("dropout", 0.1, "Encoder dropout.")
_F.DEFINE_integer("seed", 0, "Seed of the data order, masks and initialization.")
_F.DEFINE_enum("strategy", "default", ["default", "mirrored", "multi_worker_mirrored", "tpu"], "tf.distribute strategy.")
_F.DEFINE_string("tpu", "", "TPU address for --strategy=tpu.")
_F.DEFINE_enum("precision", "float32", ["float32", "mixed_float16", "mixed_bfloat16"], "Keras dtype policy.")
_F.DEFINE_boolean("jit_compile", False, "XLA-compile the train step (not with --strategy=mirrored on CPU).")
_F.DEFINE_integer("steps_per_loop", 1, "Steps per tf.function call (more = less Python overhead).")
_F.DEFINE_integer("checkpoint_every", 50, "Save a checkpoint every N steps (and at the end).")
_F.DEFINE_integer("keep_checkpoints", 3, "Checkpoints kept in model_dir.")
_F.DEFINE_boolean("quiet", False, "Log lines instead of a progress bar (for log files).")
_F.DEFINE_boolean("export", True, "Export the aligned encoder to model_dir/export at the end.")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The resolved settings of one training run (written to flags.json)."""

    encoder: str = "e5-small"
    corpus: str = "demo"
    languages: tuple = ()
    model_dir: str = "runs/align"
    train_steps: int = 100
    head_warmup_steps: int = 0
    global_batch_size: int = 32
    max_seq_length: int = 128
    max_sentence_length: int = 64
    max_predictions_per_seq: int = 20
    mask_selection_rate: float = 0.15
    learning_rate: float = 1e-5
    head_learning_rate: float = 1e-3
    warmup_steps: int = 10
    weight_decay: float = 0.01
    max_gradient_norm: float = 1.0
    queue_size: int = 65536
    momentum: float = 0.999
    temperature: float = 0.07
    contrastive_weight: float = 1.0
    representation_layer: int = -1
    pooling: str = "cls"
    projection_dim: int = 0
    shuffle_inputs: bool = True
    language_sampling_alpha: float = 0.7
    max_chars: int = 2000
    dropout: float = 0.1
    seed: int = 0
    strategy: str = "default"
    tpu: str = ""
    precision: str = "float32"
    jit_compile: bool = False
    steps_per_loop: int = 1
    checkpoint_every: int = 50
    keep_checkpoints: int = 3
    quiet: bool = False
    export: bool = True

    def __post_init__(self):
        problems = []
        if self.global_batch_size < 1:
            problems.append("--global_batch_size must be >= 1")
        if self.queue_size < self.global_batch_size:
            problems.append(
                f"--queue_size={self.queue_size} must hold at least one global batch "
                f"(--global_batch_size={self.global_batch_size})"
            )
        if self.max_predictions_per_seq < 1:
            problems.append("--max_predictions_per_seq must be >= 1")
        if self.max_seq_length < 5 or self.max_sentence_length < 3:
            problems.append("--max_seq_length must be >= 5 and --max_sentence_length >= 3")
        if not 0.0 < self.mask_selection_rate <= 1.0:
            problems.append("--mask_selection_rate must be in (0, 1]")
        if not 0.0 <= self.momentum <= 1.0:
            problems.append("--momentum must be in [0, 1]")
        if self.temperature <= 0:
            problems.append("--temperature must be > 0")
        if self.train_steps < 0 or self.head_warmup_steps < 0:
            problems.append("--train_steps and --head_warmup_steps must be >= 0")
        if self.steps_per_loop < 1 or self.checkpoint_every < 1:
            problems.append("--steps_per_loop and --checkpoint_every must be >= 1")
        if self.jit_compile and self.strategy == "mirrored":
            problems.append("--jit_compile with --strategy=mirrored fails on CPU in TF 2.21; drop one")
        if problems:
            raise ValueError("Invalid flags:\n  " + "\n  ".join(problems))

    @property
    def total_steps(self):
        return self.head_warmup_steps + self.train_steps

    def pipeline_config(self):
        return PipelineConfig(
            max_seq_length=self.max_seq_length,
            max_sentence_length=self.max_sentence_length,
            max_predictions_per_seq=self.max_predictions_per_seq,
            mask_selection_rate=self.mask_selection_rate,
            shuffle_inputs=self.shuffle_inputs,
            language_sampling_alpha=self.language_sampling_alpha,
            seed=self.seed,
        )

    @classmethod
    def from_flags(cls):
        values = {f.name: FLAGS[f.name].value for f in dataclasses.fields(cls)}
        values["languages"] = tuple(values["languages"])
        return cls(**values)

    def to_json(self):
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)
