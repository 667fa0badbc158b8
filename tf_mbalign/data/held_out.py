"""Pairs held out of training for the before -> after alignment check.

Two rules, one per kind of corpus:

- the demo corpus keeps its own: line 10, 20, ... of each `en-XX.tsv` (20
  pairs a language, `corpus.read_demo_corpus`), whatever the seed;
- every other corpus holds out, per language, min(20, n // 20) of its n
  pairs (20, or 5% rounded down when that is less: a language with fewer
  than 20 pairs holds none out and is not checked). The pairs chosen are
  those whose English sentence has the lowest keyed hash under the seed
  (`selection_key`), so the choice depends on the pairs' text and the seed
  only, not on the order of files or lines; and a corpus whose languages
  share their English sentences (a multi-parallel one, e.g. FLORES) holds
  out the same English sentences in every language, so training loses no
  more than the held-out pairs.

Either way training also drops every pair that shares a sentence (English or
translation) with a held-out pair, in any language, so no held-out sentence
is ever trained on. In memory, `hold_out` splits a `ParallelCorpus`;
`prepare` streams the corpus twice (`HeldOutChooser`, then
`without_held_out`) and stores the held-out pairs beside the manifest
(`HeldOut.write` / `HeldOut.read`), so a prepared corpus is checked on the
same pairs its in-memory twin would be.

Example:
```python
training = hold_out(read_corpus("corpus_dir"), seed=0)
training.held_out.describe()  # {"rule": ..., "seed": 0, "pairs": 40, ...}
```
"""

import dataclasses
import hashlib
import heapq
import json

from tf_mbalign.atomic_files import write_text_atomic
from tf_mbalign.data import corpus as corpus_lib

MAX_PER_LANGUAGE = 20
SHARE_DIVISOR = 20  # 1 pair in 20: 5%
DEMO_RULE = "demo"
CORPUS_RULE = "corpus"
RULE_TEXT = {
    DEMO_RULE: "the demo's every 10th line, 20 a language",
    CORPUS_RULE: f"min({MAX_PER_LANGUAGE}, 5%) a language, chosen by the seed",
}


def held_out_count(pairs):
    """Pairs a language of `pairs` pairs holds out: min(20, 5% rounded down)."""
    return min(MAX_PER_LANGUAGE, pairs // SHARE_DIVISOR)


def selection_key(english, seed):
    """The 64-bit keyed BLAKE2b hash of an English sentence under `seed`:
    the pairs of a language with the lowest keys are held out."""
    digest = hashlib.blake2b(english.encode("utf-8"), digest_size=8,
                             key=str(seed).encode("ascii"))
    return int.from_bytes(digest.digest(), "big")


class HeldOutChooser:
    """Chooses the held-out pairs while a corpus streams by, in one pass and
    bounded memory: per language its pair count and the `MAX_PER_LANGUAGE`
    pairs of lowest (key, index) so far.

    Example:
    ```python
    chooser = HeldOutChooser(seed=0)
    for index, pair in enumerate(stream_corpus("corpus_dir")):
        chooser.add(index, pair.language, pair.english, pair)
    chooser.held_out().pairs  # the chosen SentencePairs, in corpus order
    ```
    """

    def __init__(self, seed):
        self.seed = seed
        self.counts = {}
        self._lowest = {}  # language: a max-heap (negated) of the lowest keys

    def add(self, index, language, english, pair=None):
        """Counts pair `index` and keeps it (`pair`, e.g. its
        `SentencePair`) if its key is among its language's lowest."""
        self.counts[language] = self.counts.get(language, 0) + 1
        item = (-selection_key(english, self.seed), -index, pair)
        heap = self._lowest.setdefault(language, [])
        if len(heap) < MAX_PER_LANGUAGE:
            heapq.heappush(heap, item)
        elif item[:2] > heap[0][:2]:
            heapq.heapreplace(heap, item)

    def chosen(self):
        """{index: pair} of the held-out pairs: per language the
        `held_out_count` of lowest (key, index)."""
        chosen = {}
        for language, heap in self._lowest.items():
            lowest = sorted((-key, -index, pair) for key, index, pair in heap)
            for _, index, pair in lowest[:held_out_count(self.counts[language])]:
                chosen[index] = pair
        return chosen

    def held_out(self, pair_at=None):
        """The `HeldOut` of the pairs added so far (`dropped` still 0); its
        pairs are the ones added, or `pair_at(index)` when given."""
        chosen = self.chosen()
        unchecked = sorted(language for language, count in self.counts.items()
                           if not held_out_count(count))
        pairs = [chosen[i] if pair_at is None else pair_at(i) for i in sorted(chosen)]
        return HeldOut(pairs, CORPUS_RULE, self.seed, unchecked=tuple(unchecked))


@dataclasses.dataclass
class HeldOut:
    """The pairs a training corpus holds out for the alignment check.

    Attributes:
        pairs: the held-out `SentencePair`s, in corpus order.
        rule: `DEMO_RULE` or `CORPUS_RULE`.
        seed: the seed that chose them (None for the demo's rule).
        dropped: training pairs left out because they share a sentence with
            a held-out pair.
        unchecked: languages with too few pairs to hold any out.
    """

    pairs: list
    rule: str
    seed: object = None
    dropped: int = 0
    unchecked: tuple = ()

    def sentences(self):
        """Every sentence of the held-out pairs, both sides."""
        return {p.english for p in self.pairs} | {p.other for p in self.pairs}

    def language_counts(self):
        counts = {}
        for pair in self.pairs:
            counts[pair.language] = counts.get(pair.language, 0) + 1
        return dict(sorted(counts.items()))

    def fingerprint(self):
        """SHA-256 of the held-out pairs (language, English, other), in a
        fixed order: equal exactly when the check's pairs are."""
        digest = hashlib.sha256()
        for pair in sorted((p.language, p.english, p.other) for p in self.pairs):
            digest.update(json.dumps(pair, ensure_ascii=False).encode("utf-8") + b"\n")
        return digest.hexdigest()

    def restricted(self, languages):
        """The held-out pairs of `languages` only (the demo's: all of them,
        its check always covers its six languages)."""
        if self.rule == DEMO_RULE:
            return self
        keep = set(languages)
        return dataclasses.replace(self, pairs=[p for p in self.pairs if p.language in keep],
                                   unchecked=tuple(u for u in self.unchecked if u in keep))

    def describe(self):
        """What the check and the summary record of the hold-out."""
        return {"rule": RULE_TEXT[self.rule], "seed": self.seed, "pairs": len(self.pairs),
                "languages": self.language_counts(), "dropped_sharing_a_sentence": self.dropped,
                "unchecked_languages": list(self.unchecked), "fingerprint": self.fingerprint()}

    def write(self, path):
        """One JSON object a line: a header, then one pair a line."""
        header = {"rule": self.rule, "seed": self.seed, "dropped": self.dropped,
                  "unchecked": list(self.unchecked)}
        lines = [json.dumps(header)] + [
            json.dumps({"language": p.language, "english": p.english, "other": p.other,
                        "file": p.file, "line": p.line}, ensure_ascii=False)
            for p in self.pairs]
        write_text_atomic(path, "\n".join(lines) + "\n")

    @classmethod
    def read(cls, path):
        """The `HeldOut` that `write` wrote to `path`."""
        with open(path, encoding="utf-8") as f:
            header, *rows = [json.loads(line) for line in f if line.strip()]
        pairs = [corpus_lib.SentencePair(r["english"], r["other"], r["language"], r["file"],
                                         r["line"]) for r in rows]
        return cls(pairs, header["rule"], header["seed"], header["dropped"],
                   tuple(header["unchecked"]))


def hold_out(corpus, seed):
    """`corpus` (a `ParallelCorpus`) less its held-out pairs and those sharing
    a sentence with one; the returned corpus' `held_out` is the `HeldOut`.

    Raises:
        CorpusError: no pair is left to train on.
    """
    chooser = HeldOutChooser(seed)
    for index, (language_id, english) in enumerate(zip(corpus.language_ids.tolist(),
                                                       corpus.english)):
        chooser.add(index, corpus.languages[language_id], english)
    held = chooser.held_out(lambda index: corpus_lib.pair_of(corpus, index))
    chosen, sentences = set(chooser.chosen()), held.sentences()
    keep = [i for i in range(len(corpus)) if i not in chosen
            and corpus.english[i] not in sentences and corpus.other[i] not in sentences]
    held.dropped = len(corpus) - len(keep) - len(chosen)
    if not keep:
        raise _nothing_left(corpus.stats.files, held)
    training = corpus_lib.subset(corpus, keep)
    training.held_out = held
    return training


def without_held_out(stream, chooser):
    """(the pairs of a `CorpusStream` that training keeps, their `HeldOut`):
    `stream` is a second pass over the corpus `chooser` (a `HeldOutChooser`)
    saw, in the same order. Its stats count the pairs left out as held out;
    the `HeldOut`'s `dropped` counts those sharing a sentence once the
    stream is read."""
    held = chooser.held_out()
    chosen, sentences = set(chooser.chosen()), held.sentences()

    def kept():
        for index, pair in enumerate(stream):
            if index in chosen:
                continue
            if pair.english in sentences or pair.other in sentences:
                held.dropped += 1
                continue
            yield pair
        removed = len(chosen) + held.dropped
        stream.stats.pairs -= removed
        stream.stats.held_out += removed
        if not stream.stats.pairs:
            raise _nothing_left(stream.stats.files, held)

    return corpus_lib.CorpusStream(stream.description, stream, kept()), held


def demo_held_out(max_chars=corpus_lib.DEFAULT_MAX_CHARS):
    """The demo corpus' held-out pairs (its own rule, every language)."""
    pairs = corpus_lib.read_demo_corpus(max_chars=max_chars, held_out=True)
    return HeldOut([corpus_lib.pair_of(pairs, i) for i in range(len(pairs))], DEMO_RULE)


def _nothing_left(files, held):
    return corpus_lib.CorpusError(
        f"{', '.join(files)}: every pair is held out for the alignment check or shares a "
        f"sentence with one of the {len(held.pairs)} held-out pairs ({RULE_TEXT[held.rule]}), "
        "so nothing is left to train on. Use a corpus of distinct sentences.")
