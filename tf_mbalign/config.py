"""Every training flag, defined once, and the frozen config built from them.

The binary (`tf_mbalign.train`) calls `define_flags()`, parses the flags and
calls `TrainConfig.from_flags()`; library code and tests build `TrainConfig`
directly with keyword arguments.

A few defaults depend on the checkpoint (`CHECKPOINT_DEFAULTS`): such a field
is None ("by checkpoint") until the encoder is loaded, then
`TrainConfig.with_checkpoint_defaults(kind)` sets it and says where each value
came from; the run prints that and writes it to flags.json.
"""

import dataclasses
import inspect
import json

from absl import flags

from tf_mbalign import distribute
from tf_mbalign.data.pipeline import PipelineConfig
from tf_mbalign.modeling.aligner import NEGATIVES, Aligner
from tf_mbalign.modeling.english_anchor import ANCHOR_LOSSES
from tf_mbalign.modeling.sixteen_bit_dropout import MASK_BITS

# === Defaults that depend on the checkpoint ===
# Kinds of checkpoint (`checkpoint_kind`).
WITH_MLM_HEAD = "mlm_head"  # e.g. mBERT or XLM-R from a Hugging Face directory
WITHOUT_MLM_HEAD = "no_mlm_head"  # a pre-trained sentence encoder, e.g. e5-small
RANDOM = "random"  # a random test encoder (tiny:): nothing pre-trained to protect
_MOCO = "MoCo's default (He et al. 2020, arXiv 1911.05722); Pan et al. 2021's own value unverified"


@dataclasses.dataclass(frozen=True)
class CheckpointDefault:
    """A flag's default per checkpoint kind, each with where it comes from."""

    with_mlm_head: object
    with_mlm_head_source: str
    without_mlm_head: object
    without_mlm_head_source: str

    def for_kind(self, kind):
        """(value, source) for a `checkpoint_kind`; a random test encoder
        takes the values of a checkpoint with an MLM head."""
        if kind == WITHOUT_MLM_HEAD:
            return self.without_mlm_head, self.without_mlm_head_source
        if kind == WITH_MLM_HEAD:
            return self.with_mlm_head, self.with_mlm_head_source
        return self.with_mlm_head, "random test encoder: the value for checkpoints with an MLM head"


# What the recipe grid chose for e5-small (docs/results/grid_choose, RESULTS.md):
# on the choose half of the test rows, the row with the best mean difference
# over NLI and POS; the other half confirms it.
GRID = "the recipe grid on e5-small (RESULTS.md, 'The recipe grid')"
GRID_UNVARIED = f"used by every row of {GRID}, not varied there"

CHECKPOINT_DEFAULTS = {
    # Resolved in this order: the warm-up's default follows tlm_weight, the
    # queue's and momentum's notes follow contrastive_negatives.
    "tlm_weight": CheckpointDefault(
        1.0, "Pan et al. 2021: TLM and MoCo together",
        1.0, f"{GRID}: its chosen row (TLM + in-batch negatives) keeps TLM"),
    "contrastive_negatives": CheckpointDefault(
        "queue", "Pan et al. 2021: MoCo's queue and momentum encoder",
        "in_batch", f"{GRID}: the chosen row"),
    "head_warmup_steps": CheckpointDefault(
        0, "the checkpoint's MLM head is trained already (Pan et al. 2021 start from mBERT's)",
        50, f"checkpoint without an MLM head: {GRID_UNVARIED} with TLM"),
    "queue_size": CheckpointDefault(65536, _MOCO, 4096, GRID_UNVARIED),
    "momentum": CheckpointDefault(0.999, _MOCO, 0.99, GRID_UNVARIED),
    "temperature": CheckpointDefault(0.07, _MOCO, 0.05, GRID_UNVARIED),
    # The sentence representation the contrastive objective trains, and the
    # one the export embeds with.
    "pooling": CheckpointDefault(
        "cls", "Pan et al. 2021: the contrastive objective on [CLS]",
        "mean", "a sentence encoder trained with mean pooling (multilingual-e5: Wang et al. "
                "2024, arXiv 2402.05672); its [CLS] retrieves worse unaligned (RESULTS.md)"),
    "representation_layer": CheckpointDefault(
        -1, "Pan et al. 2021: the encoder's output, its last layer",
        -1, "the last layer, the one the sentence encoder was trained to pool"),
}


def checkpoint_kind(bundle):
    """`WITH_MLM_HEAD`, `WITHOUT_MLM_HEAD` or `RANDOM` for an `EncoderBundle`."""
    if not bundle.pretrained:
        return RANDOM
    return WITH_MLM_HEAD if bundle.has_mlm_head else WITHOUT_MLM_HEAD


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The resolved settings of one training run (written to flags.json)."""

    encoder: str = "e5-small"
    corpus: str = "demo"
    languages: tuple = ()
    model_dir: str = "runs/align"
    train_steps: int = 100
    head_warmup_steps: int = None  # by checkpoint (CHECKPOINT_DEFAULTS)
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
    train_token_embeddings: bool = True
    recompute_activations: bool = False
    dropout_mask_bits: int = 32
    queue_size: int = None  # by checkpoint
    momentum: float = None  # by checkpoint
    temperature: float = None  # by checkpoint
    contrastive_weight: float = 1.0
    tlm_weight: float = None  # by checkpoint
    contrastive_negatives: str = None  # by checkpoint
    anchor_weight: float = 0.0
    anchor_loss: str = "mse"
    tlm_sampled_negatives: int = 0
    representation_layer: int = None  # by checkpoint
    pooling: str = None  # by checkpoint
    projection_dim: int = 0
    shuffle_inputs: bool = True
    language_sampling_alpha: float = 0.7
    max_chars: int = 2000
    dropout: float = 0.1
    seed: int = 0
    strategy: str = "default"
    tpu: str = ""
    precision: str = "auto"
    jit_compile: bool = False
    steps_per_loop: int = 1
    checkpoint_every: int = 50
    keep_checkpoints: int = 3
    quiet: bool = False
    export: bool = True
    export_precision: str = "float32"
    retrieval_data: str = ""
    retrieval_every: int = 0
    retrieval_pairs: int = 200
    alignment_check: bool = True

    def __post_init__(self):
        problems = [
            f"--{name}={getattr(self, name)!r} is not one of {choices}"
            for name, choices in CHOICES.items()
            if getattr(self, name) not in choices
            and not (getattr(self, name) is None and name in CHECKPOINT_DEFAULTS)
        ]
        if self.global_batch_size < 1:
            problems.append("--global_batch_size must be >= 1")
        if (self.queue_size is not None and self.contrastive_negatives == "queue"
                and self.queue_size < self.global_batch_size):
            problems.append(
                f"--queue_size={self.queue_size} must hold at least one global batch "
                f"(--global_batch_size={self.global_batch_size})"
            )
        problems += self._objective_problems()
        if self.dropout_mask_bits not in MASK_BITS:
            problems.append(f"--dropout_mask_bits={self.dropout_mask_bits} is not one of "
                            f"{list(MASK_BITS)}")
        if self.max_predictions_per_seq < 1:
            problems.append("--max_predictions_per_seq must be >= 1")
        if self.max_seq_length < 5 or self.max_sentence_length < 3:
            problems.append("--max_seq_length must be >= 5 and --max_sentence_length >= 3")
        if not 0.0 < self.mask_selection_rate <= 1.0:
            problems.append("--mask_selection_rate must be in (0, 1]")
        if self.momentum is not None and not 0.0 <= self.momentum <= 1.0:
            problems.append("--momentum must be in [0, 1]")
        if self.temperature is not None and self.temperature <= 0:
            problems.append("--temperature must be > 0")
        if self.train_steps < 0 or (self.head_warmup_steps or 0) < 0:
            problems.append("--train_steps and --head_warmup_steps must be >= 0")
        if self.steps_per_loop < 1 or self.checkpoint_every < 1:
            problems.append("--steps_per_loop and --checkpoint_every must be >= 1")
        if self.retrieval_every < 0 or self.retrieval_pairs < 1:
            problems.append("--retrieval_every must be >= 0 and --retrieval_pairs >= 1")
        if self.jit_compile and self.strategy == "mirrored":
            problems.append("--jit_compile with --strategy=mirrored fails on CPU in TF 2.21; drop one")
        if problems:
            raise ValueError("Invalid flags:\n  " + "\n  ".join(problems))

    def _objective_problems(self):
        problems = []
        if (self.tlm_weight or 0) < 0 or self.contrastive_weight < 0 or self.anchor_weight < 0:
            problems.append("--tlm_weight, --contrastive_weight and --anchor_weight must be "
                            ">= 0 (0 = off)")
        elif self.tlm_weight == 0 and self.contrastive_weight == 0 and self.anchor_weight == 0:
            problems.append("--tlm_weight=0, --contrastive_weight=0 and --anchor_weight=0 "
                            "leave nothing to train; set one of them > 0")
        if self.tlm_sampled_negatives < 0:
            problems.append(f"--tlm_sampled_negatives={self.tlm_sampled_negatives} must be "
                            ">= 0 (0 = exact softmax over the whole vocabulary)")
        elif self.tlm_weight == 0 and self.tlm_sampled_negatives:
            problems.append(f"--tlm_sampled_negatives={self.tlm_sampled_negatives} samples "
                            "TLM's softmax, which --tlm_weight=0 switches off; drop one of them")
        if self.tlm_weight == 0 and self.head_warmup_steps:
            problems.append(f"--head_warmup_steps={self.head_warmup_steps} trains the MLM head "
                            "for TLM, which --tlm_weight=0 switches off; drop one of them")
        return problems

    @property
    def total_steps(self):
        if self.head_warmup_steps is None:
            raise ValueError("head_warmup_steps is left to the checkpoint: call "
                             "TrainConfig.with_checkpoint_defaults(kind) first")
        return self.head_warmup_steps + self.train_steps

    def with_checkpoint_defaults(self, kind):
        """(config, sources): the fields left None ("by checkpoint") set to
        the defaults of a `checkpoint_kind`, and {flag: where its value came
        from} for every `CHECKPOINT_DEFAULTS` flag. Set fields are kept (a
        resolved config comes back unchanged)."""
        values, sources = {}, {}
        for name, default in CHECKPOINT_DEFAULTS.items():
            if getattr(self, name) is not None:
                sources[name] = f"set: --{name}"
                continue
            value, source = default.for_kind(kind)
            if name == "tlm_weight" and self.contrastive_weight == 0 and self.anchor_weight == 0:
                value, source = 1.0, "--contrastive_weight=0: TLM is the only objective"
            if name == "head_warmup_steps" and values.get("tlm_weight", self.tlm_weight) == 0:
                value, source = 0, "--tlm_weight=0: no TLM, no MLM head to warm up"
            negatives = values.get("contrastive_negatives", self.contrastive_negatives)
            if name in ("queue_size", "momentum") and negatives != "queue":
                source += f" (unused with --contrastive_negatives={negatives})"
            values[name], sources[name] = value, source
        return dataclasses.replace(self, **values), sources

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
    def from_flags(cls, flag_values=None):
        """The config of parsed flags (`define_flags`' in `flag_values`,
        absl's global `FLAGS` by default)."""
        flag_values = flags.FLAGS if flag_values is None else flag_values
        values = {f.name: flag_values[f.name].value for f in dataclasses.fields(cls)}
        values["languages"] = tuple(values["languages"])
        return cls(**values)

    @classmethod
    def from_json_file(cls, path, **overrides):
        """The config a run wrote to its flags.json (fields overridable)."""
        with open(path, encoding="utf-8") as f:
            values = json.load(f)
        values.pop(DEFAULT_SOURCES_KEY, None)
        values["languages"] = tuple(values.get("languages", ()))
        values.update(overrides)
        return cls(**values)

    def to_json(self, default_sources=None):
        """The fields as JSON; with `default_sources` ({flag: source}, from
        `with_checkpoint_defaults`) also where the checkpoint-dependent
        values came from."""
        values = dataclasses.asdict(self)
        if default_sources:
            values[DEFAULT_SOURCES_KEY] = default_sources
        return json.dumps(values, indent=2, sort_keys=True)


# flags.json: where the checkpoint-dependent values came from (not a field).
DEFAULT_SOURCES_KEY = "checkpoint_default_sources"


# === Flags: one per TrainConfig field, defaults taken from it ===
HELP = {
    "encoder": "e5-small (also spelled e5_small or embedded: the same model) | a Hugging "
               "Face BERT or XLM-R / RoBERTa dir | preset:NAME (BERT or XLM-R) | tiny:VOCAB_TXT | "
               "tiny:demo",
    "corpus": "demo | en-XX.tsv dir | TSV file(s): a.tsv[,b.tsv...] | en-XX.tsv dirs and TSV "
              "files joined by commas, read as one corpus: weak_dir,strong_dir[,c.tsv] (each "
              "language from one file) | two line-aligned "
              "files: NAME.en,NAME.XX | Hugging Face translation JSONL: a.jsonl[,b.jsonl...] "
              "| tfds:NAME[:SPLIT] | prepared:DIR (written by python -m tf_mbalign.prepare; "
              "streamed from disk, for large corpora)",
    "languages": "Only these languages of a corpus directory, or of the union of a comma "
                 "list of directories and TSV files (default: all).",
    "model_dir": "Checkpoints, TensorBoard logs, flags.json, metrics.jsonl, export/.",
    "train_steps": "Encoder training steps (after the head warm-up).",
    "head_warmup_steps": "Steps that train only a new MLM head before the encoder trains (for "
                         "checkpoints without one); its TLM accuracy is measured at the end.",
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
    "train_token_embeddings": "Train the token-embedding table (true, the paper's). false: the "
                              "table stays as loaded (no gradient, no AdamW moments or decay, no "
                              "EMA copy to update, no optimizer slots in the checkpoints); most "
                              "of a multilingual encoder's parameters are this table (e5-small: "
                              "96M of 118M), and a batch looks up a few thousand of its rows. "
                              "A run resumes only with the value it started with.",
    "recompute_activations": "Keep only each transformer layer's input for the backward pass and "
                             "run the layer again there: the step's activations shrink from "
                             "every layer's to about one layer's, for one more forward pass of "
                             "compute. Same losses, gradients and dropout masks as false.",
    "dropout_mask_bits": "Random bits per element of the encoder's dropout masks: 32 (Keras' "
                         "Dropout: a float uniform draw per element) or 16 (two masks' worth per "
                         "32-bit draw, compared as integers: the same distribution of masks to "
                         "6e-6 in the rate, another random stream, a cheaper step).",
    "queue_size": "MoCo queue size K (>= global batch; --contrastive_negatives=queue).",
    "momentum": "MoCo key-encoder EMA momentum m (--contrastive_negatives=queue).",
    "temperature": "InfoNCE temperature T.",
    "contrastive_weight": "Weight of the contrastive (sentence-level) loss; 0 = TLM only "
                          "(nothing of it is computed).",
    "tlm_weight": "Weight of the TLM (word-level) loss; 0 = contrastive only (the MLM head "
                  "is not run).",
    "tlm_sampled_negatives": "0 (default) = TLM's softmax over the whole vocabulary (exact). "
                             "K > 0 = over a candidate set: the ids the batch's masked tokens "
                             "must predict plus K ids drawn uniformly at random from the "
                             "vocabulary each step, duplicates removed; no correction term "
                             "(Jean et al. 2015's targets + sampled negatives): a cheaper, "
                             "biased loss, and a TLM accuracy among the candidates (higher "
                             "than the exact one). Needs the MLM head tied to the token "
                             "embeddings.",
    "anchor_weight": "Weight of the English anchor (multilingual distillation, Reimers & "
                     "Gurevych 2020): a frozen copy of the starting encoder embeds each "
                     "pair's English side, and the trained encoder's embeddings of both "
                     "sides are pulled to it, so English stays where the starting model put "
                     "it. 0 = off (no teacher is built); > 0 keeps one more encoder copy in "
                     "memory and runs it on the English sides.",
    "anchor_loss": "Distance of the English anchor (--anchor_weight > 0), on the run's "
                   "sentence representation (--pooling, --representation_layer): mse = mean "
                   "squared error of the vectors before normalization (Reimers & Gurevych "
                   "2020), cosine = 1 - cosine similarity.",
    "contrastive_negatives": "queue: MoCo (momentum key encoder, a queue of past keys; the "
                             "paper's). in_batch: symmetric InfoNCE over the global batch, both "
                             "sides through the trained encoder, no queue or key encoder. By "
                             "checkpoint: queue with an MLM head (the paper), in_batch without "
                             "(the recipe grid on e5-small, RESULTS.md).",
    "representation_layer": "Encoder layer for the sentence representation (-1 = last), the "
                            "one the contrastive objective trains and the export embeds with.",
    "pooling": "Sentence representation: [CLS] or mean, the one the contrastive objective "
               "trains, the alignment check and in-training retrieval score, and the export "
               "embeds with. By checkpoint: [CLS] with an MLM head (the paper), mean without "
               "(e5-small is a mean-pooling sentence encoder).",
    "projection_dim": "Linear projection before the MoCo loss (0 = none).",
    "shuffle_inputs": "Random input shuffling (per pair: which side is first / the query).",
    "language_sampling_alpha": "Language sampling p_l ~ n_l^alpha.",
    "max_chars": "Truncate corpus sides longer than this many characters.",
    "dropout": "Encoder dropout.",
    "seed": "Seed of the data order, masks and initialization.",
    "strategy": "tf.distribute strategy.",
    "tpu": "TPU address for --strategy=tpu.",
    "precision": "Keras dtype policy. auto (default): mixed_bfloat16 where the hardware "
                 "multiplies bf16 natively (TPU, GPU >= sm_80, CPU with AMX or AVX512-BF16), "
                 "else float32; the choice and its reason are printed at start and written to "
                 "flags.json and summary.json. Pin float32 (as configs/align.flags does) for "
                 "results that must not depend on the machine.",
    "jit_compile": "XLA-compile the train step (not with --strategy=mirrored on CPU).",
    "steps_per_loop": "Steps per tf.function call (more = less Python overhead).",
    "checkpoint_every": "Save a checkpoint every N steps (and at the end).",
    "keep_checkpoints": "Checkpoints kept in model_dir.",
    "quiet": "Log lines instead of a progress bar (for log files).",
    "export": "Export the aligned encoder to model_dir/export at the end.",
    "export_precision": "Policy the export computes under: float32 whatever --precision "
                        "trained (default), or mixed_bfloat16 / bfloat16 (bf16 weights too) "
                        "where serving in bf16 is wanted.",
    "retrieval_data": "A Tatoeba-style dir (XX-en.XX, XX-en.en): log retrieval accuracy per "
                      "language to TensorBoard and metrics.jsonl while training ('' = off).",
    "retrieval_every": "Retrieval evaluation period in steps (0 = --checkpoint_every).",
    "retrieval_pairs": "Pairs per language for --retrieval_data (the first ones).",
    "alignment_check": "Before -> after check at the end, on pairs held out of training (the "
                       "demo's own; of another corpus min(20, 5%) a language, chosen by "
                       "--seed): per language the rank of the true translation, its cosine "
                       "margin over the best wrong one and top-1 accuracy; before also with "
                       "the other pooling (model_dir/alignment_check.json).",
}
# --help lists the flags under these topics, in this order (every field once).
TOPICS = {
    "data": ["corpus", "languages", "language_sampling_alpha", "max_chars", "max_seq_length",
             "max_sentence_length"],
    "model": ["encoder", "dropout", "pooling", "representation_layer", "projection_dim"],
    "objectives (TLM, MoCo, English anchor)": [
        "tlm_weight", "max_predictions_per_seq", "mask_selection_rate",
        "tlm_sampled_negatives", "contrastive_weight",
        "contrastive_negatives", "queue_size", "momentum", "temperature", "shuffle_inputs",
        "anchor_weight", "anchor_loss"],
    "optimizer": ["train_steps", "head_warmup_steps", "global_batch_size", "learning_rate",
                  "head_learning_rate", "warmup_steps", "weight_decay", "max_gradient_norm",
                  "train_token_embeddings", "recompute_activations", "dropout_mask_bits"],
    "checkpoints and runtime": ["model_dir", "checkpoint_every", "keep_checkpoints", "export",
                                "export_precision", "seed", "quiet", "steps_per_loop",
                                "retrieval_data", "retrieval_every", "retrieval_pairs",
                                "alignment_check"],
    "distribution": ["strategy", "tpu", "precision", "jit_compile"],
}
CHOICES = {
    "pooling": ["cls", "mean"],
    "contrastive_negatives": list(NEGATIVES),
    "anchor_loss": list(ANCHOR_LOSSES),
    "strategy": list(distribute.STRATEGIES),
    "precision": list(distribute.PRECISION_CHOICES),
    "export_precision": list(distribute.EXPORT_PRECISIONS),
}
FLAGS = flags.FLAGS


def define_flags(flag_values=FLAGS):
    """Defines one absl flag per TrainConfig field in `flag_values` (the
    training binary: absl's global `FLAGS`)."""
    for field in dataclasses.fields(TrainConfig):
        name, default, text = field.name, field.default, HELP[field.name]
        by_checkpoint = CHECKPOINT_DEFAULTS.get(name)
        kind = type(by_checkpoint.with_mlm_head) if by_checkpoint else None
        where = {"flag_values": flag_values}
        if name in CHOICES:
            flags.DEFINE_enum(name, default, CHOICES[name], text, **where)
        elif isinstance(default, bool):
            flags.DEFINE_boolean(name, default, text, **where)
        elif isinstance(default, int) or kind is int:
            flags.DEFINE_integer(name, default, text, **where)
        elif isinstance(default, float) or kind is float:
            flags.DEFINE_float(name, default, text, **where)
        elif isinstance(default, tuple):
            flags.DEFINE_list(name, list(default), text, **where)
        else:
            flags.DEFINE_string(name, default, text, **where)


def grouped_help(usage, flag_values=FLAGS):
    """`--help` of the training binary: `usage`, then every training flag
    under its topic (`TOPICS`) with its default and help."""
    lines = [usage.strip(), ""]
    for topic, names in TOPICS.items():
        lines.append(f"{topic}:")
        for name in names:
            flag = flag_values[name]
            lines.append(f"  --{name} (default: {_default_text(name, flag.default)})")
            lines.append(f"      {flag.help}")
        lines.append("")
    lines.append("Defaults 'by checkpoint' are resolved when the encoder is loaded, printed "
                 "with their source and written to model_dir/flags.json.")
    lines.append("other: --flagfile=FILE reads flags from a file (one a line, # comments); "
                 "--helpfull lists absl's own flags too.")
    return "\n".join(lines)


def _default_text(name, default):
    if name in CHECKPOINT_DEFAULTS and default is None:
        by_kind = CHECKPOINT_DEFAULTS[name]
        return (f"by checkpoint: {by_kind.with_mlm_head!r} with an MLM head, "
                f"{by_kind.without_mlm_head!r} without")
    return repr(",".join(default) if isinstance(default, list) else default)
