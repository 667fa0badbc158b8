"""Prepared corpora on disk: tokenized pairs in TFRecord shards and a manifest.

`python -m tf_mbalign.prepare` writes one (`corpus_preparation.py`); training
reads it with `--corpus=prepared:DIR` (or `--corpus=DIR` when DIR holds a
`manifest.json`) through `streamed_pipeline.py`, never holding the corpus in
memory. A directory:

    DIR/manifest.json           written last, atomically: without it the
                                directory is not a prepared corpus
    DIR/.preparing.json         only while `prepare` runs (or after it died)
    DIR/shards/LANG-SSSSS.tfrecord
                                pairs of one language; the language's k-th
                                pair goes to shard k mod `shards_per_language`
                                (so every shard holds a spread sample of it)
    DIR/held_out.jsonl          the pairs held out of training for the
                                alignment check, as text (`held_out.py`:
                                the in-memory rule under prepare's --seed)

One TFRecord record per pair: a little-endian int32 vector

    [pair_id, file_index, line, english_length, english ids..., other ids...]

`pair_id` numbers the pairs training keeps in corpus order (the index the
in-memory reader would give the pair once the held-out pairs are left out), `file_index` points into the
manifest's `files` and `line` is the pair's line there (TFDS: its index).

The manifest says what the shards hold and what made them: the corpus and
its files (sizes, modification times), the tokenizer's fingerprint, the
validation counts, every shard's language, pair count, size and CRC-32, and
what was held out (`held_out`: rule, seed, counts; absent in corpora
prepared before pairs were held out, which are trained without the check).
"""

import dataclasses
import json
import os
import zlib

import numpy as np
import tensorflow as tf

from tf_mbalign.data import corpus as corpus_lib
from tf_mbalign.data.corpus import CorpusError, CorpusStats
from tf_mbalign.data.held_out import HeldOut

FORMAT = "tf_mbalign.prepared_corpus"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
PREPARING_FILE = ".preparing.json"
SHARD_FOLDER = "shards"
HELD_OUT_FILE = "held_out.jsonl"
SPEC_PREFIX = "prepared:"
RECORD_LAYOUT = ("little-endian int32: pair_id, file_index, line, english_length, "
                 "english ids, other ids")
_HEADER = 4  # int32 values before the ids


# === Records ===

def encode_records(header, english, other):
    """TFRecord payloads of a chunk of tokenized pairs.

    Args:
        header: int array [n, 3]: pair_id, file_index, line of each pair.
        english, other: (values, row_splits) of each side's ids (the pieces of
            a RaggedTensor [n, None]).

    Returns:
        A list of n `bytes`.
    """
    english_values, english_splits = english
    other_values, other_splits = other
    english_lengths = np.diff(english_splits)
    other_lengths = np.diff(other_splits)
    lengths = _HEADER + english_lengths + other_lengths
    ends = np.cumsum(lengths)
    starts = ends - lengths
    flat = np.empty(int(ends[-1]) if len(ends) else 0, "<i4")
    flat[starts] = header[:, 0]
    flat[starts + 1] = header[:, 1]
    flat[starts + 2] = header[:, 2]
    flat[starts + 3] = english_lengths
    flat[_positions(starts + _HEADER, english_lengths)] = english_values
    flat[_positions(starts + _HEADER + english_lengths, other_lengths)] = other_values
    data = flat.tobytes()
    return [data[4 * a:4 * b] for a, b in zip(starts.tolist(), ends.tolist())]


def _positions(starts, lengths):
    """Concatenated ranges [starts[i], starts[i] + lengths[i])."""
    total = int(lengths.sum())
    offsets = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.repeat(starts, lengths) + offsets


def decode_record(record):
    """(english_ids, other_ids, pair_id) of one record (in-graph; int32, int32, int64)."""
    values = tf.io.decode_raw(record, tf.int32, little_endian=True)
    english_end = _HEADER + values[3]
    return (values[_HEADER:english_end], values[english_end:],
            tf.cast(values[0], tf.int64))


def decode_record_numpy(record):
    """`decode_record` outside the graph: a dict of numpy values (tests, tools)."""
    values = np.frombuffer(record, "<i4")
    english_end = _HEADER + int(values[3])
    return {"pair_id": int(values[0]), "file_index": int(values[1]), "line": int(values[2]),
            "english_ids": values[_HEADER:english_end], "other_ids": values[english_end:]}


# === Manifest ===

@dataclasses.dataclass(frozen=True)
class ShardInfo:
    """One shard file: its path (relative to the directory), language, index
    among the language's shards, pairs, size in bytes and CRC-32."""

    path: str
    language: str
    index: int
    pairs: int
    bytes: int
    crc32: int


def file_crc32(path, chunk=1 << 22):
    """(size, CRC-32) of a file, read in chunks."""
    crc, size = 0, 0
    with open(path, "rb") as f:
        while True:
            data = f.read(chunk)
            if not data:
                return size, crc
            size += len(data)
            crc = zlib.crc32(data, crc)


def read_manifest(directory):
    """The manifest dict of a prepared directory.

    Raises:
        CorpusError: no manifest (an unfinished or foreign directory), or one
            of another format or version.
    """
    path = os.path.join(directory, MANIFEST_FILE)
    if not os.path.isfile(path):
        unfinished = os.path.exists(os.path.join(directory, PREPARING_FILE))
        raise CorpusError(
            f"{directory}: no {MANIFEST_FILE}: "
            + ("its preparation did not finish, so its shards are incomplete. Run "
               "`python -m tf_mbalign.prepare` again with the same flags (add --overwrite "
               "to start over with other ones)." if unfinished else
               "not a prepared corpus. Write one with `python -m tf_mbalign.prepare "
               "--corpus=SPEC --encoder=NAME --output=DIR`."))
    with open(path, encoding="utf-8") as f:
        try:
            manifest = json.load(f)
        except ValueError as error:
            raise CorpusError(f"{path}: not valid JSON ({error}).") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CorpusError(f"{path}: not a {FORMAT} manifest.")
    if manifest.get("version") != FORMAT_VERSION:
        raise CorpusError(
            f"{path}: format version {manifest.get('version')}, this reader knows "
            f"{FORMAT_VERSION}. Prepare the corpus again with this version.")
    return manifest


def prepared_directory(spec):
    """The prepared directory a `--corpus` value names, else None.

    `prepared:DIR` always names one (errors if DIR is not); a plain directory
    is one when it holds a manifest or an unfinished preparation.

    Raises:
        CorpusError: `prepared:DIR` without a finished manifest.
    """
    if spec.startswith(SPEC_PREFIX):
        directory = spec[len(SPEC_PREFIX):]
        read_manifest(directory)
        return directory
    if os.path.isdir(spec) and (os.path.exists(os.path.join(spec, MANIFEST_FILE))
                                or os.path.exists(os.path.join(spec, PREPARING_FILE))):
        read_manifest(spec)
        return spec
    return None


# === Reading ===

class PreparedCorpus:
    """A prepared corpus opened for training: its manifest, checked against
    the shards on disk (presence and size); no pair is held in memory.

    Attributes:
        directory: the prepared directory.
        manifest: the manifest dict.
        shards: `ShardInfo`s of the languages in use, paths made absolute.
        languages: sorted language codes in use.
        stats: a `CorpusStats` (pairs of the languages in use; the skipped,
            truncated and held-out counts of the whole preparation).
        held_out: the `HeldOut` pairs of the languages in use (None: the
            corpus was prepared before pairs were held out).
    """

    def __init__(self, directory, manifest, languages=None):
        self.directory = directory
        self.manifest = manifest
        counts = manifest["pairs_per_language"]
        if languages:
            missing = sorted(set(languages) - set(counts))
            if missing:
                raise CorpusError(
                    f"{directory}: languages {missing} are not in this prepared corpus "
                    f"(it has {sorted(counts)}).")
        self.languages = sorted(languages or counts)
        self.shards = [
            dataclasses.replace(ShardInfo(**shard), path=os.path.join(directory, shard["path"]))
            for shard in manifest["shards"] if shard["language"] in self.languages]
        self._check_shards()
        self.stats = CorpusStats(
            pairs=sum(counts[language] for language in self.languages),
            skipped_empty=manifest["skipped_empty"], truncated=manifest["truncated"],
            files=list(manifest["files"]), held_out=manifest.get("held_out_pairs", 0))
        self.held_out = None
        if manifest.get("held_out"):
            self.held_out = HeldOut.read(os.path.join(directory, HELD_OUT_FILE)).restricted(
                self.languages)

    @classmethod
    def open(cls, directory, languages=None):
        return cls(directory, read_manifest(directory), languages)

    def __len__(self):
        return self.stats.pairs

    @property
    def max_chars(self):
        return self.manifest["settings"]["max_chars"]

    def language_counts(self):
        return {language: self.manifest["pairs_per_language"][language]
                for language in self.languages}

    def unnamed_language_warning(self):
        return corpus_lib.unnamed_language_warning(self.stats.files, self.language_counts())

    def _check_shards(self):
        for shard in self.shards:
            if not os.path.isfile(shard.path):
                raise CorpusError(f"{self.directory}: shard {shard.path} is missing. Prepare "
                                  "the corpus again (python -m tf_mbalign.prepare ... "
                                  "--overwrite).")
            size = os.path.getsize(shard.path)
            if size != shard.bytes:
                raise CorpusError(
                    f"{shard.path}: {size} bytes, the manifest says {shard.bytes}: the shard "
                    "was changed or truncated. Prepare the corpus again (--overwrite).")

    def verify_checksums(self):
        """Reads every shard; raises `CorpusError` naming the first whose
        CRC-32 differs from the manifest's."""
        for shard in self.shards:
            size, crc = file_crc32(shard.path)
            if (size, crc) != (shard.bytes, shard.crc32):
                raise CorpusError(
                    f"{shard.path}: CRC-32 {crc:08x} ({size} bytes), the manifest says "
                    f"{shard.crc32:08x} ({shard.bytes} bytes): the shard is damaged. Prepare "
                    "the corpus again (--overwrite).")

    def check_tokenizer(self, tokenizer, encoder):
        """Raises `CorpusError` when `tokenizer` (of `--encoder=encoder`) gives
        other ids than the one the corpus was prepared with."""
        prepared = self.manifest["tokenizer"]
        if tokenizer.fingerprint() == prepared["fingerprint"]:
            return
        ours = tokenizer.describe()
        raise CorpusError(
            f"{self.directory} was prepared with another tokenizer than --encoder={encoder}'s: "
            f"prepared with --encoder={self.manifest['encoder']} ({prepared['type']}, "
            f"{prepared['vocabulary_size']} tokens, fingerprint {prepared['fingerprint'][:12]}), "
            f"this encoder has {ours['type']}, {ours['vocabulary_size']} tokens, fingerprint "
            f"{tokenizer.fingerprint()[:12]}. Its token ids would be wrong for this model. "
            f"Prepare the corpus for this encoder (python -m tf_mbalign.prepare "
            f"--corpus={self.manifest['corpus']} --encoder={encoder} --output=NEW_DIR), or "
            f"train --encoder={self.manifest['encoder']}.")

    def sources_of(self, pair_ids):
        """`file:line` of each pair id, found by reading the shards (for error
        reports: seconds to minutes on a large corpus)."""
        wanted = {int(i) for i in pair_ids}
        found = {}
        files = self.manifest["files"]
        for shard in self.shards:
            for record in tf.data.TFRecordDataset(shard.path).as_numpy_iterator():
                pair_id, file_index, line = np.frombuffer(record[:12], "<i4").tolist()
                if pair_id in wanted:
                    found[pair_id] = f"{files[file_index]}:{line}"
            if len(found) == len(wanted):
                break
        return [found[int(i)] for i in pair_ids if int(i) in found]
