"""Every training flag, defined once, and the frozen config built from them.

The binary (`tf_mbalign.train`) calls `define_flags()`, parses the flags and
calls `TrainConfig.from_flags()`; library code and tests build `TrainConfig`
directly with keyword arguments.
"""

import dataclasses
import inspect
import json

from absl import flags

from tf_mbalign import distribute
from tf_mbalign.data.pipeline import PipelineConfig
from tf_mbalign.modeling.aligner import Aligner


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
    retrieval_data: str = ""
    retrieval_every: int = 0
    retrieval_pairs: int = 200

    def __post_init__(self):
        problems = [
            f"--{name}={getattr(self, name)!r} is not one of {choices}"
            for name, choices in CHOICES.items() if getattr(self, name) not in choices
        ]
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
        if self.retrieval_every < 0 or self.retrieval_pairs < 1:
            problems.append("--retrieval_every must be >= 0 and --retrieval_pairs >= 1")
        if self.jit_compile and self.strategy == "mirrored":
            problems.append("--jit_compile with --strategy=mirrored fails on CPU in TF 2.21; drop one")
        if problems:
            raise ValueError("Invalid flags:\n  " + "\n  ".join(problems))

    @property
    def total_steps(self):
        return self.head_warmup_steps + self.train_steps

    def pipeline_config(self):
        """The input pipeline's settings: every `PipelineConfig` field this
        config has (the others keep their defaults)."""
        return PipelineConfig(**self._values_named(f.name for f in dataclasses.fields(PipelineConfig)))

    def aligner_arguments(self):
        """`Aligner` constructor settings (arguments with defaults) that are
        fields of this config."""
        parameters = inspect.signature(Aligner.__init__).parameters.values()
        return self._values_named(p.name for p in parameters if p.default is not p.empty)

    def _values_named(self, names):
        own = {f.name for f in dataclasses.fields(self)}
        return {name: getattr(self, name) for name in names if name in own}

    @classmethod
    def from_flags(cls):
        values = {f.name: FLAGS[f.name].value for f in dataclasses.fields(cls)}
        values["languages"] = tuple(values["languages"])
        return cls(**values)

    @classmethod
    def from_json_file(cls, path, **overrides):
        """The config a run wrote to its flags.json (fields overridable)."""
        with open(path, encoding="utf-8") as f:
            values = json.load(f)
        values["languages"] = tuple(values.get("languages", ()))
        values.update(overrides)
        return cls(**values)

    def to_json(self):
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)


# === Flags: one per TrainConfig field, defaults taken from it ===
HELP = {
    "encoder": "e5-small (also spelled e5_small or embedded: the same model) | a Hugging "
               "Face BERT or XLM-R / RoBERTa dir | preset:NAME (BERT or XLM-R) | tiny:VOCAB_TXT | "
               "tiny:demo",
    "corpus": "demo | en-XX.tsv dir | TSV file(s): a.tsv[,b.tsv...] | two line-aligned "
              "files: NAME.en,NAME.XX | Hugging Face translation JSONL: a.jsonl[,b.jsonl...] "
              "| tfds:NAME[:SPLIT] | prepared:DIR (written by python -m tf_mbalign.prepare; "
              "streamed from disk, for large corpora)",
    "languages": "Only these languages of a corpus directory (default: all).",
    "model_dir": "Checkpoints, TensorBoard logs, flags.json, metrics.jsonl, export/.",
    "train_steps": "Encoder training steps (after the head warm-up).",
    "head_warmup_steps": "Steps that train only a new MLM head before the encoder trains.",
    "global_batch_size": "Pairs per step over all replicas.",
    "max_seq_length": "TLM input length: [CLS] a [SEP] b [SEP].",
    "max_sentence_length": "Length of each MoCo input: [CLS] s [SEP].",
    "max_predictions_per_seq": "Masked positions kept per TLM input.",
    "mask_selection_rate": "Share of non-special tokens selected for TLM.",
    "learning_rate": "Peak learning rate of the encoder.",
    "head_learning_rate": "Learning rate of the head-only warm-up.",
    "warmup_steps": "Linear learning-rate warm-up steps.",
    "weight_decay": "AdamW weight decay (not on biases / layer norms).",
    "max_gradient_norm": "Clip the global gradient norm (0 = off).",
    "queue_size": "MoCo queue size K (>= global batch).",
    "momentum": "MoCo key-encoder EMA momentum m.",
    "temperature": "InfoNCE temperature T.",
    "contrastive_weight": "Weight of the MoCo loss.",
    "representation_layer": "Encoder layer for the sentence representation (-1 = last).",
    "pooling": "Sentence representation: [CLS] or mean.",
    "projection_dim": "Linear projection before the MoCo loss (0 = none).",
    "shuffle_inputs": "Random input shuffling (per pair: which side is first / the query).",
    "language_sampling_alpha": "Language sampling p_l ~ n_l^alpha.",
    "max_chars": "Truncate corpus sides longer than this many characters.",
    "dropout": "Encoder dropout.",
    "seed": "Seed of the data order, masks and initialization.",
    "strategy": "tf.distribute strategy.",
    "tpu": "TPU address for --strategy=tpu.",
    "precision": "Keras dtype policy; auto = mixed_bfloat16 where the hardware multiplies "
                 "bf16 natively (TPU, GPU >= sm_80, CPU with AMX or AVX512-BF16), else float32.",
    "jit_compile": "XLA-compile the train step (not with --strategy=mirrored on CPU).",
    "steps_per_loop": "Steps per tf.function call (more = less Python overhead).",
    "checkpoint_every": "Save a checkpoint every N steps (and at the end).",
    "keep_checkpoints": "Checkpoints kept in model_dir.",
    "quiet": "Log lines instead of a progress bar (for log files).",
    "export": "Export the aligned encoder to model_dir/export at the end.",
    "retrieval_data": "A Tatoeba-style dir (XX-en.XX, XX-en.en): log retrieval accuracy per "
                      "language to TensorBoard and metrics.jsonl while training ('' = off).",
    "retrieval_every": "Retrieval evaluation period in steps (0 = --checkpoint_every).",
    "retrieval_pairs": "Pairs per language for --retrieval_data (the first ones).",
}
# --help lists the flags under these topics, in this order (every field once).
TOPICS = {
    "data": ["corpus", "languages", "language_sampling_alpha", "max_chars", "max_seq_length",
             "max_sentence_length"],
    "model": ["encoder", "dropout", "pooling", "representation_layer", "projection_dim"],
    "objectives (TLM, MoCo)": ["max_predictions_per_seq", "mask_selection_rate",
                               "contrastive_weight", "queue_size", "momentum", "temperature",
                               "shuffle_inputs"],
    "optimizer": ["train_steps", "head_warmup_steps", "global_batch_size", "learning_rate",
                  "head_learning_rate", "warmup_steps", "weight_decay", "max_gradient_norm"],
    "checkpoints and runtime": ["model_dir", "checkpoint_every", "keep_checkpoints", "export",
                                "seed", "quiet", "steps_per_loop", "retrieval_data",
                                "retrieval_every", "retrieval_pairs"],
    "distribution": ["strategy", "tpu", "precision", "jit_compile"],
}
CHOICES = {
    "pooling": ["cls", "mean"],
    "strategy": list(distribute.STRATEGIES),
    "precision": list(distribute.PRECISION_CHOICES),
}
FLAGS = flags.FLAGS


def define_flags():
    """Defines one absl flag per TrainConfig field (the training binary)."""
    for field in dataclasses.fields(TrainConfig):
        name, default, text = field.name, field.default, HELP[field.name]
        if name in CHOICES:
            flags.DEFINE_enum(name, default, CHOICES[name], text)
        elif isinstance(default, bool):
            flags.DEFINE_boolean(name, default, text)
        elif isinstance(default, int):
            flags.DEFINE_integer(name, default, text)
        elif isinstance(default, float):
            flags.DEFINE_float(name, default, text)
        elif isinstance(default, tuple):
            flags.DEFINE_list(name, list(default), text)
        else:
            flags.DEFINE_string(name, default, text)



def grouped_help(usage, flag_values=FLAGS):
    """`--help` of the training binary: `usage`, then every training flag
    under its topic (`TOPICS`) with its default and help."""
    lines = [usage.strip(), ""]
    for topic, names in TOPICS.items():
        lines.append(f"{topic}:")
        for name in names:
            flag = flag_values[name]
            default = ",".join(flag.default) if isinstance(flag.default, list) else flag.default
            lines.append(f"  --{name} (default: {default!r})")
            lines.append(f"      {flag.help}")
        lines.append("")
    lines.append("other: --flagfile=FILE reads flags from a file (one a line, # comments); "
                 "--helpfull lists absl's own flags too.")
    return "\n".join(lines)
