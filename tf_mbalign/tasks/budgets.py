"""How much data and training each task gets: the `cpu`, `full` and `tiny` budgets.

`cpu` is sized so that one encoder's whole suite (four tasks, 2 seeds, plus
retrieval with both poolings) should finish in about 60 minutes on 2 CPU
cores with e5-small. Measured (2026-12-02, e5-small, 2 seeds, a quiet
2-vCPU AMD EPYC Zen 4; BENCHMARKS.md, "Measured times"): 27.6 min in all.

| task | training | test rows a language | measured, 2 seeds |
| --- | --- | --- | --- |
| nli | 4,000 SNLI rows, 1 epoch, batch 32 | 800 pairs | 585 s |
| ner | 2,000 sentences, 1 epoch, batch 16 | 500 sentences | 210 s |
| pos | 2,000 sentences, 1 epoch, batch 16 | 500 sentences | 289 s |
| topic | 701 rows, 4 epochs, batch 16 | all 204 | 390 s |
| retrieval | none | all 1,000 pairs, [CLS] and mean | 179 s |

Expected 95% half-widths of the non-English averages (7 languages, test-row
noise only, before seed noise): NLI ≈ ±1.3 points (800 rows at ~60%), NER
and POS ≈ ±1 to ±1.5 points; topic cannot get near ±1.5: 204 sentences give
≈ ±6.5 points a language and ≈ ±2.5 on the average.

The optional tasks (run only when `--tasks` names them, not part of the 60
minutes above; estimates from the same figure, not measured):

| task | training | test rows a language | estimate, 2 seeds |
| --- | --- | --- | --- |
| xnli_mini | all 1,660 English rows, 2 epochs, batch 32 | all 830 | ~17 min |
| mlqa | all 585 English questions, 2 epochs, batch 16 | all (233–563 questions) | ~50 min |

(MLQA-mini with e5-small's tokenizer and 192-token windows: 1,365 training
windows, 386–1,284 test windows a language.)

`full` uses every training row and every test row (meant for a GPU;
wall time to be measured there). `tiny` is for tests.

Training subsets are the first N rows after one fixed shuffle
(`numpy.random.RandomState(0)`), the same for every seed and encoder; test
subsets are the first N rows of each file (line-aligned files stay aligned).
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class TaskBudget:
    """Data and schedule of one task (0 = all rows)."""

    max_train_examples: int = 0
    epochs: float = 1.0
    max_test_examples: int = 0
    max_select_examples: int = 0
    batch_size: int = 32
    learning_rate: float = 3e-5
    head_learning_rate: float = 1e-3
    max_seq_length: int = 128


@dataclasses.dataclass(frozen=True)
class Budget:
    """A named budget: one `TaskBudget` per task, plus suite-wide settings.

    `pooling` is the sentence classifiers' pooling: "mean" or "cls" (the same
    for both encoders), or "select" (each encoder's own choice on English
    held-out rows: snli-test for NLI, SIB-200 dev-en for topic; seed 0 is
    fine-tuned once per pooling and the better one is kept).
    """

    name: str
    tasks: dict
    pooling: str = "mean"
    retrieval_max_pairs: int = 0
    retrieval_max_length: int = 128

    def task(self, name):
        return self.tasks[name]


CPU = Budget(
    name="cpu",
    tasks={
        "nli": TaskBudget(max_train_examples=4000, epochs=1.0, max_test_examples=800,
                          max_select_examples=1000),
        "ner": TaskBudget(max_train_examples=2000, epochs=1.0, max_test_examples=500,
                          batch_size=16, learning_rate=5e-5),
        "pos": TaskBudget(max_train_examples=2000, epochs=1.0, max_test_examples=500,
                          batch_size=16, learning_rate=5e-5),
        "topic": TaskBudget(epochs=4.0, batch_size=16, learning_rate=5e-5),
        "xnli_mini": TaskBudget(epochs=2.0, learning_rate=5e-5, max_select_examples=1000),
        "mlqa": TaskBudget(epochs=2.0, batch_size=16, learning_rate=5e-5, max_seq_length=192),
    },
    pooling="mean",
)

FULL = Budget(
    name="full",
    tasks={
        "nli": TaskBudget(epochs=2.0),
        "ner": TaskBudget(epochs=3.0, batch_size=32, learning_rate=5e-5),
        "pos": TaskBudget(epochs=3.0, batch_size=32, learning_rate=5e-5),
        "topic": TaskBudget(epochs=10.0, batch_size=16, learning_rate=5e-5),
        "xnli_mini": TaskBudget(epochs=5.0, learning_rate=5e-5),
        "mlqa": TaskBudget(epochs=3.0, learning_rate=5e-5, max_seq_length=384),
    },
    pooling="select",
)

_TINY_TASK = TaskBudget(max_train_examples=16, epochs=1.0, max_test_examples=8,
                        max_select_examples=8, batch_size=8, learning_rate=1e-3,
                        max_seq_length=32)
TINY = Budget(
    name="tiny",
    tasks={**{name: _TINY_TASK for name in ("nli", "ner", "pos", "topic", "xnli_mini")},
           "mlqa": dataclasses.replace(_TINY_TASK, max_seq_length=64)},  # room for a question
    pooling="mean",
    retrieval_max_pairs=8,
    retrieval_max_length=32,
)

BUDGETS = {budget.name: budget for budget in (CPU, FULL, TINY)}


def get_budget(name):
    if name not in BUDGETS:
        raise ValueError(f"--budget={name}: expected one of {', '.join(BUDGETS)}.")
    return BUDGETS[name]
