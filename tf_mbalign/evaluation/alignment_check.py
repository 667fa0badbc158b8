"""Before -> after: did alignment bring translations closer? A check in seconds.

The training binary plugs `AlignmentCheck` into every run (`--alignment_check`,
on by default). Its pairs are the ones the run's corpus holds out of
training (`data/held_out.py`): the demo's own (every 10th line of each
`en-XX.tsv`, 20 a language), or, of any other corpus, min(20, 5%) of each
language's pairs chosen by the run's `--seed` (a prepared corpus: the ones
`prepare` stored), so a run checks the languages it trains. Each foreign
sentence is compared with *all* held-out English sentences (every
language's), and per language:

- mean rank of the true translation among the candidates (1 = best);
- cosine margin: cosine with the true translation minus the best cosine
  with a wrong candidate (> 0: the true one wins), averaged;
- top-1 accuracy: the share of foreign sentences whose true translation
  ranks first (XX -> en retrieval accuracy).

The margin is the figure that does not saturate: a strong encoder already
ranks most true translations first, but alignment should still widen the
gap. "Before" is computed with the encoder before the first step (step 0),
with [CLS] and with mean pooling; "after" after the last step with the run's
sentence representation (pooling, layer, length: the export's). Printed as a
table (the run's pooling, before -> after) and written to
`model_dir/alignment_check.json` (the "before" half at the start, so a
resumed run still reports it; a resumed run whose held-out pairs differ, e.g.
another --seed, drops it with a warning). `export_against_unaligned` compares
per language the export's embedding with the unaligned encoder at its best
pooling (higher accuracy, then lower mean rank); the run summary prints it.

Example:
```python
scores = alignment_scores(SentenceEmbedder(encoder, tokenizer), check_bitexts(held_out))
scores["all"]  # {"mean_rank": 1.2, "margin": 0.05, "accuracy": 0.9, "pairs": 120}
```
"""

import json
import os

import numpy as np

from tf_mbalign.atomic_files import write_json_atomic
from tf_mbalign.data.held_out import CORPUS_RULE, DEMO_RULE, RULE_TEXT, SHARE_DIVISOR
from tf_mbalign.data.prepared_corpus import PreparedCorpus
from tf_mbalign.evaluation.retrieval import Bitext
from tf_mbalign.evaluation.sentence_embedding import SentenceEmbedder
from tf_mbalign.modeling.pooling import POOLINGS
from tf_mbalign.training.callbacks import TrainingCallback
from tf_mbalign.training.run_summary import ALIGNMENT_CHECK_JSON, check_languages

CHECK_FILE = ALIGNMENT_CHECK_JSON
DIRECTION = "xx_to_en"


def check_bitexts(held_out):
    """{language: Bitext} of the pairs of a `HeldOut`."""
    bitexts = {}
    for pair in held_out.pairs:
        bitext = bitexts.setdefault(pair.language, Bitext(pair.language, [], []))
        bitext.foreign.append(pair.other)
        bitext.english.append(pair.english)
    return bitexts


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
    """{language: {"mean_rank", "margin", "accuracy", "pairs"}, "all": {...},
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
            "margin": round(float(np.mean(margins)), 4),
            "accuracy": round(float(np.mean(ranks == 1)), 4), "pairs": int(len(ranks))}


def _retrieval_order(scores):
    """What "better" means between two poolings' figures: higher accuracy,
    then lower mean rank (margins of two poolings are on different scales)."""
    return scores["accuracy"], -scores["mean_rank"]


def export_against_unaligned(before_by_pooling, after, pooling):
    """Per language of `after`: the export's figures (`pooling`, after
    training) and the unaligned encoder's at its best pooling (of
    `before_by_pooling`, {pooling: scores at step 0}; on a tie the run's
    own), and whether the export is worse (`_retrieval_order`)."""
    comparison = {}
    for language in check_languages(after):
        candidates = [p for p in before_by_pooling if language in before_by_pooling[p]]
        if not candidates:
            continue
        best = max(candidates, key=lambda p: (
            *_retrieval_order(before_by_pooling[p][language]), p == pooling))
        unaligned = before_by_pooling[best][language]
        comparison[language] = {
            "export": dict(after[language], pooling=pooling),
            "unaligned_best": dict(unaligned, pooling=best),
            "worse": _retrieval_order(after[language]) < _retrieval_order(unaligned),
        }
    return comparison


def check_table(report):
    """The printed before -> after table of a report (`AlignmentCheck.report`)."""
    before, after = report["before"], report["after"]
    held_out = report.get("held_out") or {}
    lines = [
        f"alignment check: {_held_out_text(after['all']['pairs'], held_out)}, "
        f"{DIRECTION.replace('_to_', ' -> ')} among {after['candidates']} English sentences "
        f"({report['pooling']} pooling, layer {report['layer']}); "
        f"step {before['step'] if before else '?'} -> {after['step']}",
        f"  {'language':<9}{'pairs':>6}   {'mean rank (1 = best)':<22}{'cosine margin':<22}"
        f"{'top-1 accuracy':<18}",
    ]
    for language in check_languages(after):
        now, then = after[language], (before or {}).get(language) or {}
        cells = [_change(then.get(name), now[name], form)
                 for name, form in (("mean_rank", ".2f"), ("margin", "+.3f"), ("accuracy", ".3f"))]
        lines.append(f"  {language:<9}{now['pairs']:>6}   {cells[0]:<22}{cells[1]:<22}{cells[2]}")
    if held_out.get("unchecked_languages"):
        lines.append(f"  not checked (fewer than {SHARE_DIVISOR} pairs, none held out): "
                     + ", ".join(held_out["unchecked_languages"]))
    return "\n".join(lines)


def _held_out_text(pairs, held_out):
    if held_out.get("rule", RULE_TEXT[DEMO_RULE]) == RULE_TEXT[DEMO_RULE]:
        return f"{pairs} demo pairs held out of training"
    return (f"{pairs} pairs of the corpus held out of training "
            f"({RULE_TEXT[CORPUS_RULE]}, seed {held_out.get('seed')})")


def _change(then, now, form):
    return (f"{then:{form}} -> " if then is not None else "? -> ") + f"{now:{form}}"


class AlignmentCheck(TrainingCallback):
    """The before -> after check of an alignment run (chief only).

    Args:
        model_dir: where `alignment_check.json` goes.
        pooling, layer, max_length: the sentence representation (pooling or
            layer None: the run's, known when it starts).

    Attributes:
        report: the last report written (None before the run ends).
    """

    def __init__(self, model_dir, pooling=None, layer=None, max_length=64):
        self.model_dir = model_dir
        self.pooling = pooling
        self.layer = layer
        self.max_length = max_length
        self.active = False
        self.held_out = None
        self.before_by_pooling = {}
        self.report = None
        self._bitexts = None
        self._embedders = None

    @classmethod
    def for_alignment_run(cls, config):
        """The check of a `TrainConfig`: its model_dir and representation
        (left to the checkpoint: the run's once it starts)."""
        return cls(config.model_dir, config.pooling, config.representation_layer,
                   config.max_sentence_length)

    @property
    def path(self):
        return os.path.join(self.model_dir, CHECK_FILE)

    @property
    def before(self):
        """The step-0 figures with the run's pooling (None: not known)."""
        return self.before_by_pooling.get(self.pooling)

    def on_run_start(self, run, start_step):
        self.active = run.chief
        if not self.active:
            return
        self.pooling = self.pooling or run.config.pooling
        if self.layer is None:
            self.layer = run.config.representation_layer
        self.held_out = getattr(run.corpus, "held_out", None)
        off = _off_reason(run.corpus, self.held_out)
        if off:
            run.warn(f"alignment check: off ({off}).")
            self.active = False
            return
        self._bitexts = check_bitexts(self.held_out)
        self._embedders = {pooling: SentenceEmbedder(run.aligner.encoder, run.bundle.tokenizer,
                                                     pooling, self.layer, self.max_length)
                           for pooling in POOLINGS}
        if start_step == 0:
            self.before_by_pooling = {pooling: {"step": 0, **self._scores(pooling)}
                                      for pooling in POOLINGS}
            write_json_atomic(self.path, self._report(), indent=2)
        else:
            self.before_by_pooling = self._read_before(run.warn)

    def on_run_end(self, run):
        if not self.active:
            return
        after = {"step": int(run.step.numpy()), **self._scores(self.pooling)}
        self.report = self._report(after)
        write_json_atomic(self.path, self.report, indent=2)
        run.log(check_table(self.report))
        run.log(f"  (written to {self.path})")

    def _scores(self, pooling):
        return alignment_scores(self._embedders[pooling], self._bitexts)

    def _report(self, after=None):
        report = {"direction": DIRECTION, "pooling": self.pooling, "layer": self.layer,
                  "max_length": self.max_length, "held_out": self.held_out.describe(),
                  "before": self.before, "before_by_pooling": self.before_by_pooling}
        if after is not None:
            report["after"] = after
            report["export_against_unaligned"] = export_against_unaligned(
                self.before_by_pooling, after, self.pooling)
        return report

    def _read_before(self, warn):
        """{pooling: step-0 figures} a first session wrote ({} when none, or
        when it checked other pairs)."""
        if not os.path.isfile(self.path):
            return {}
        with open(self.path, encoding="utf-8") as f:
            written = json.load(f)
        recorded = (written.get("held_out") or {}).get("fingerprint")
        if recorded and recorded != self.held_out.fingerprint():
            warn(f"alignment check: {self.path} was started on other held-out pairs (another "
                 "corpus or --seed): its step-0 figures are not comparable and are left out.")
            return {}
        if "before_by_pooling" in written:
            return written["before_by_pooling"]
        before = written.get("before")  # written before both poolings were checked
        return {written.get("pooling", self.pooling): before} if before else {}


def _off_reason(corpus, held_out):
    """Why the check cannot run on `corpus`, or None."""
    if held_out is None and isinstance(corpus, PreparedCorpus):
        return (f"{corpus.directory} was prepared before pairs were held out of training for "
                "the check; prepare it again (python -m tf_mbalign.prepare ... --overwrite) to "
                "check the languages it trains")
    if held_out is None:
        return "no pairs of this corpus are held out of training"
    if not held_out.pairs:
        return (f"no language of the corpus has {SHARE_DIVISOR} pairs or more, so none is held "
                f"out of training ({RULE_TEXT[held_out.rule]})")
    return None
