"""Before -> after: did alignment bring translations closer? A check in seconds.

The training binary plugs `AlignmentCheck` into every run (`--alignment_check`,
on by default). It needs no data beyond the package: the demo corpus's pairs
held out of training (every 10th line of each `en-XX.tsv`, 20 per language;
`data.corpus.read_demo_corpus`). Each foreign sentence is compared with *all*
held-out English sentences (120 candidates, every language's), with the
run's own sentence representation (pooling, layer, length), and per language:

- mean rank of the true translation among the candidates (1 = best);
- cosine margin: cosine with the true translation minus the best cosine
  with a wrong candidate (> 0: the true one wins), averaged.

The margin is the figure that does not saturate: a strong encoder already
ranks most true translations first, but alignment should still widen the
gap. Both are computed with the encoder before the first step (step 0) and
after the last, printed as a table and written to
`model_dir/alignment_check.json` (the "before" half at the start, so a
resumed run still reports it). Held-out pairs whose sentences the run's
corpus contains (a corpus that includes the demo files) are dropped, with a
warning.

Example:
```python
scores = alignment_scores(SentenceEmbedder(encoder, tokenizer), check_bitexts())
scores["all"]  # {"mean_rank": 1.2, "margin": 0.05, "pairs": 120}
```
"""

import json
import os

import numpy as np

from tf_mbalign.atomic_files import write_json_atomic
from tf_mbalign.data.corpus import ParallelCorpus, read_demo_corpus
from tf_mbalign.evaluation.retrieval import Bitext
from tf_mbalign.evaluation.sentence_embedding import SentenceEmbedder
from tf_mbalign.training.callbacks import TrainingCallback

CHECK_FILE = "alignment_check.json"
DIRECTION = "xx_to_en"


def check_bitexts(training_corpus=None):
    """({language: Bitext} of the held-out demo pairs, dropped count): pairs
    with a sentence that `training_corpus` (a `ParallelCorpus`) contains are
    dropped. A prepared corpus holds token ids only and is not searched:
    `prepare --corpus=demo` already leaves the check's pairs out
    (`corpus.stream_demo_corpus`); preparing a copy of the demo directory
    would not."""
    held_out = read_demo_corpus(held_out=True)
    trained = set()
    if isinstance(training_corpus, ParallelCorpus):
        trained = set(training_corpus.english) | set(training_corpus.other)
    bitexts, dropped = {}, 0
    for english, other, language_id in zip(held_out.english, held_out.other,
                                           held_out.language_ids):
        if english in trained or other in trained:
            dropped += 1
            continue
        language = held_out.languages[int(language_id)]
        bitext = bitexts.setdefault(language, Bitext(language, [], []))
        bitext.foreign.append(other)
        bitext.english.append(english)
    return bitexts, dropped


def candidate_sentences(bitexts):
    """Every distinct English sentence of the check, in a fixed order."""
    return sorted({sentence for bitext in bitexts.values() for sentence in bitext.english})


def ranks_and_margins(similarity, true_columns):
    """Per row: rank of the true column (1 + wrong columns scored higher)
    and its margin over the best wrong column."""
    rows = np.arange(len(true_columns))
    true = similarity[rows, true_columns]
    wrong = similarity.copy()
    wrong[rows, true_columns] = -np.inf
    return 1 + np.sum(wrong > true[:, None], axis=1), true - np.max(wrong, axis=1)


def alignment_scores(embedder, bitexts):
    """{language: {"mean_rank", "margin", "pairs"}, "all": {...},
    "candidates": n}: each foreign sentence against every English candidate."""
    candidates = candidate_sentences(bitexts)
    column = {sentence: i for i, sentence in enumerate(candidates)}
    english_vectors = embedder(candidates)
    scores, all_ranks, all_margins = {}, [], []
    for language, bitext in sorted(bitexts.items()):
        similarity = embedder(bitext.foreign) @ english_vectors.T
        ranks, margins = ranks_and_margins(similarity, [column[s] for s in bitext.english])
        scores[language] = _means(ranks, margins)
        all_ranks.append(ranks)
        all_margins.append(margins)
    scores["all"] = _means(np.concatenate(all_ranks), np.concatenate(all_margins))
    scores["candidates"] = len(candidates)
    return scores


def _means(ranks, margins):
    return {"mean_rank": round(float(np.mean(ranks)), 4),
            "margin": round(float(np.mean(margins)), 4), "pairs": int(len(ranks))}


def check_table(report):
    """The printed before -> after table of a report (`AlignmentCheck.report`)."""
    before, after = report["before"], report["after"]
    languages = [k for k in after if k not in ("step", "candidates")]
    lines = [
        f"alignment check: {after['all']['pairs']} demo pairs held out of training, "
        f"{DIRECTION.replace('_to_', ' -> ')} among {after['candidates']} English sentences "
        f"({report['pooling']} pooling, layer {report['layer']}); "
        f"step {before['step'] if before else '?'} -> {after['step']}",
        f"  {'language':<9}{'pairs':>6}   {'mean rank (1 = best)':<22}{'cosine margin':<22}",
    ]
    for language in languages:
        now, then = after[language], (before or {}).get(language)
        rank = (f"{then['mean_rank']:.2f} -> " if then else "? -> ") + f"{now['mean_rank']:.2f}"
        margin = (f"{then['margin']:+.3f} -> " if then else "? -> ") + f"{now['margin']:+.3f}"
        lines.append(f"  {language:<9}{now['pairs']:>6}   {rank:<22}{margin:<22}")
    return "\n".join(lines)


class AlignmentCheck(TrainingCallback):
    """The before -> after check of an alignment run (chief only).

    Args:
        model_dir: where `alignment_check.json` goes.
        pooling, layer, max_length: the sentence representation (the run's).

    Attributes:
        report: the last report written (None before the run ends).
    """

    def __init__(self, model_dir, pooling="cls", layer=-1, max_length=64):
        self.model_dir = model_dir
        self.pooling = pooling
        self.layer = layer
        self.max_length = max_length
        self.active = False
        self.before = None
        self.report = None
        self._bitexts = None
        self._embedder = None

    @classmethod
    def for_alignment_run(cls, config):
        """The check of a `TrainConfig`: its model_dir and representation."""
        return cls(config.model_dir, config.pooling, config.representation_layer,
                   config.max_sentence_length)

    @property
    def path(self):
        return os.path.join(self.model_dir, CHECK_FILE)

    def on_run_start(self, run, start_step):
        self.active = run.chief
        if not self.active:
            return
        self._bitexts, dropped = check_bitexts(run.corpus)
        if dropped:
            run.warn(f"alignment check: {dropped} held-out demo pairs share a sentence with "
                     "the training corpus and are left out of the check.")
        if not self._bitexts:
            run.warn("alignment check: off (every held-out demo pair is in the training "
                     "corpus).")
            self.active = False
            return
        self._embedder = SentenceEmbedder(run.aligner.encoder, run.bundle.tokenizer,
                                          self.pooling, self.layer, self.max_length)
        if start_step == 0:
            self.before = {"step": 0, **self._scores()}
            write_json_atomic(self.path, {"before": self.before}, indent=2)
        else:
            self.before = self._read_before()

    def on_run_end(self, run):
        if not self.active:
            return
        after = {"step": int(run.step.numpy()), **self._scores()}
        self.report = {"direction": DIRECTION, "pooling": self.pooling, "layer": self.layer,
                       "max_length": self.max_length, "before": self.before, "after": after}
        write_json_atomic(self.path, self.report, indent=2)
        run.log(check_table(self.report))
        run.log(f"  (written to {self.path})")

    def _scores(self):
        return alignment_scores(self._embedder, self._bitexts)

    def _read_before(self):
        """The "before" half a first session wrote, or None."""
        if not os.path.isfile(self.path):
            return None
        with open(self.path, encoding="utf-8") as f:
            return json.load(f).get("before")
