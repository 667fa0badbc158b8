"""Prepare a corpus once: validate, tokenize, write shards and a manifest.

`prepare_corpus` streams the corpus (`corpus.stream_corpus`: the readers and
rules of training, the same `file:line` errors), tokenizes chunks of pairs
in parallel TensorFlow threads, and appends each pair to its language's
shards (`prepared_corpus.py` describes the directory and the records).
Memory is bounded by the chunks in flight and the open shard writers, not by
the corpus. With a `hold_out_seed` (the binary's `--seed`) a first pass, which
reads without tokenizing, chooses the pairs held out for the alignment check
as training would in memory (`held_out.py`); they are left out of the shards
and stored as text in `held_out.jsonl`. The demo's held-out pairs are its own
and always stored.

Re-running on the same output:
- a finished preparation of the same corpus (same files, sizes and
  modification times), tokenizer and settings: nothing to do;
- an unfinished one of the same request (its process is gone): it starts
  over, saying so (shards are written round-robin, so a partial run has no
  clean point to continue from);
- anything else (other settings, another tokenizer, changed files, a
  directory that is not a prepared corpus, a preparation still running):
  refused with what differs and the fix (`--overwrite`, or another output).

The manifest is renamed into place last (`atomic_files`): a directory
without it is never read as a prepared corpus.
"""

import dataclasses
import datetime
import json
import os
import shutil
import socket
import sys
import time

import tensorflow as tf

from tf_mbalign.atomic_files import write_json_atomic
from tf_mbalign.data import corpus as corpus_lib
from tf_mbalign.data import held_out as held_out_lib
from tf_mbalign.data import prepared_corpus as prepared
from tf_mbalign.data.corpus import CorpusError

DEFAULT_SHARDS_PER_LANGUAGE = 16
CHUNK_PAIRS = 2048


@dataclasses.dataclass(frozen=True)
class PreparationRequest:
    """What a preparation is asked to do; a re-run compares it with the
    recorded one."""

    corpus: str
    encoder: str
    tokenizer: dict  # `describe()` plus `fingerprint`
    max_chars: int = corpus_lib.DEFAULT_MAX_CHARS
    languages: tuple = ()
    shards_per_language: int = DEFAULT_SHARDS_PER_LANGUAGE
    hold_out_seed: int = None  # None: nothing held out (the demo's own pairs are)

    @classmethod
    def for_tokenizer(cls, corpus, encoder, tokenizer, **settings):
        return cls(corpus, encoder, dict(tokenizer.describe(),
                                         fingerprint=tokenizer.fingerprint()), **settings)

    def settings(self):
        return {"max_chars": self.max_chars, "languages": list(self.languages),
                "shards_per_language": self.shards_per_language,
                "hold_out_seed": self.hold_out_seed}

    def differences(self, recorded):
        """What differs from a recorded request (a manifest or a marker)."""
        found = []
        if recorded.get("corpus") != self.corpus:
            found.append(f"corpus {recorded.get('corpus')!r} (now {self.corpus!r})")
        fingerprint = recorded.get("tokenizer", {}).get("fingerprint")
        if fingerprint != self.tokenizer["fingerprint"]:
            found.append(f"tokenizer of --encoder={recorded.get('encoder')} (now "
                         f"--encoder={self.encoder}, another tokenizer)")
        for name, value in self.settings().items():
            if recorded.get("settings", {}).get(name) != value:
                found.append(f"{name}={recorded.get('settings', {}).get(name)!r} (now {value!r})")
        return found

    def to_dict(self):
        return {"corpus": self.corpus, "encoder": self.encoder, "tokenizer": self.tokenizer,
                "settings": self.settings()}


def file_identity(path):
    """{path, bytes, mtime_ns} of an input file; None for non-files (TFDS)."""
    if not os.path.isfile(path):
        return None
    status = os.stat(path)
    return {"path": path, "bytes": status.st_size, "mtime_ns": status.st_mtime_ns}


def changed_inputs(manifest):
    """Input files of a manifest whose size or modification time changed."""
    return [f"{identity['path']} changed since it was prepared"
            for identity in manifest.get("file_identity", [])
            if identity and file_identity(identity["path"]) != identity]


# === Claiming the output directory ===

def claim_output(output, request, overwrite=False, log=print):
    """Makes `output` ready for this request, or says it is already done.

    Returns:
        The existing manifest when `output` already holds this request's
        finished preparation (nothing to do), else None (the directory is
        now marked as being prepared and holds no shard).

    Raises:
        CorpusError: the directory holds something else and `overwrite` is
            off, is not a prepared corpus at all, or is being prepared by a
            live process.
    """
    manifest_path = os.path.join(output, prepared.MANIFEST_FILE)
    marker_path = os.path.join(output, prepared.PREPARING_FILE)
    if os.path.exists(marker_path):
        _check_unfinished(output, marker_path, request, overwrite, log)
    elif os.path.exists(manifest_path):
        manifest = prepared.read_manifest(output)
        differences = request.differences(manifest) + changed_inputs(manifest)
        if not differences:
            return manifest
        if not overwrite:
            raise CorpusError(
                f"{output} already holds a prepared corpus made differently: "
                f"{'; '.join(differences)}. Pass another --output, or --overwrite to "
                "replace it.")
        log(f"{output}: replacing the prepared corpus there (--overwrite): "
            f"{'; '.join(differences)}")
    elif os.path.isdir(output) and os.listdir(output):
        raise CorpusError(
            f"{output} is not empty and holds no prepared corpus: pass a new or empty "
            "directory as --output (prepare never deletes files it did not write).")
    _mark_preparing(output, marker_path, request)
    return None


def _check_unfinished(output, marker_path, request, overwrite, log):
    with open(marker_path, encoding="utf-8") as f:
        try:
            marker = json.load(f)
        except ValueError:
            marker = {}
    if _alive(marker):
        raise CorpusError(
            f"{output} is being prepared right now by process {marker['pid']} on this "
            f"machine (since {marker.get('started')}). Wait for it, or stop it first.")
    differences = request.differences(marker)
    if differences and not overwrite:
        raise CorpusError(
            f"{output} holds an unfinished preparation of another request: "
            f"{'; '.join(differences)}. Pass --overwrite to replace it, or another --output.")
    log(f"{output}: an earlier preparation (started {marker.get('started')}) did not "
        "finish; starting over (its shards are incomplete).")


def _alive(marker):
    if marker.get("host") != socket.gethostname() or not marker.get("pid"):
        return False
    if marker["pid"] == os.getpid():
        return False
    try:
        os.kill(marker["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _mark_preparing(output, marker_path, request):
    os.makedirs(output, exist_ok=True)
    manifest_path = os.path.join(output, prepared.MANIFEST_FILE)
    if os.path.exists(manifest_path):
        os.remove(manifest_path)  # never a manifest beside shards it does not describe
    write_json_atomic(marker_path, dict(
        request.to_dict(), pid=os.getpid(), host=socket.gethostname(),
        started=datetime.datetime.now().isoformat(timespec="seconds")), indent=1)
    shutil.rmtree(os.path.join(output, prepared.SHARD_FOLDER), ignore_errors=True)
    if os.path.exists(os.path.join(output, prepared.HELD_OUT_FILE)):
        os.remove(os.path.join(output, prepared.HELD_OUT_FILE))
    os.makedirs(os.path.join(output, prepared.SHARD_FOLDER))


# === Tokenizing ===

class _Names:
    """Strings numbered in order of first appearance."""

    def __init__(self):
        self.names, self._index = [], {}

    def index(self, name):
        if name not in self._index:
            self._index[name] = len(self.names)
            self.names.append(name)
        return self._index[name]


def tokenized_chunks(stream, tokenizer, chunk_pairs=CHUNK_PAIRS):
    """Yields (header, english, other, languages) per chunk of pairs of a
    `CorpusStream`: header an int64 array [n, 3] (pair id, index into
    `stream.stats.files`, line), each side (values, row_splits) of its token
    ids, languages a list of n codes. Chunks are tokenized in parallel by
    tf.data, in order.

    Raises:
        CorpusError: the stream's own errors, unchanged (not wrapped by tf.data).
    """
    languages, file_numbers = _Names(), {}
    failures = []

    def file_number(name):
        if name not in file_numbers:
            file_numbers[name] = stream.stats.files.index(name)
        return file_numbers[name]

    def chunks():
        try:
            english, other, header = [], [], []
            for pair_id, pair in enumerate(stream):
                english.append(pair.english)
                other.append(pair.other)
                header.append((pair_id, file_number(pair.file), pair.line,
                               languages.index(pair.language)))
                if len(header) == chunk_pairs:
                    yield english, other, header
                    english, other, header = [], [], []
            if header:
                yield english, other, header
        except Exception as error:  # noqa: BLE001 - re-raised below, unwrapped
            failures.append(error)

    def tokenize(english, other, header):
        english_ids, other_ids = tokenizer.tokenize(english), tokenizer.tokenize(other)
        return (header, english_ids.values, english_ids.row_splits, other_ids.values,
                other_ids.row_splits)

    dataset = tf.data.Dataset.from_generator(chunks, output_signature=(
        tf.TensorSpec([None], tf.string), tf.TensorSpec([None], tf.string),
        tf.TensorSpec([None, 4], tf.int64)))
    dataset = dataset.map(tokenize, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    for header, english, english_splits, other, other_splits in (
            dataset.prefetch(2).as_numpy_iterator()):
        yield (header[:, :3], (english, english_splits), (other, other_splits),
               [languages.names[i] for i in header[:, 3]])
    if failures:
        raise failures[0]


# === Writing ===

class ShardWriters:
    """The shard files of one preparation: a language's k-th pair goes to its
    shard k mod `shards_per_language` (files open when they get a pair)."""

    def __init__(self, directory, shards_per_language):
        self.directory = directory
        self.shards_per_language = shards_per_language
        self.pairs_per_language = {}
        self._writers = {}
        self._pairs = {}

    def write(self, language, record):
        count = self.pairs_per_language.get(language, 0)
        self.pairs_per_language[language] = count + 1
        key = (language, count % self.shards_per_language)
        writer = self._writers.get(key) or self._open(key)
        writer.write(record)
        self._pairs[key] += 1

    def _open(self, key):
        language, index = key
        path = os.path.join(self.directory, prepared.SHARD_FOLDER,
                            f"{language}-{index:05d}.tfrecord")
        try:
            writer = tf.io.TFRecordWriter(path)
        except (OSError, tf.errors.OpError) as error:
            raise OSError(
                f"{path}: cannot open a shard file ({error}); {len(self._writers)} shards are "
                "open. With many languages, raise the open-file limit (ulimit -n) or lower "
                "--shards_per_language.") from error
        self._writers[key], self._pairs[key] = writer, 0
        return writer

    def close(self):
        """Closes every shard; returns their `ShardInfo`s (size and CRC-32 read
        back from disk), sorted by language and index."""
        shards = []
        for (language, index), writer in sorted(self._writers.items()):
            writer.close()
            relative = os.path.join(prepared.SHARD_FOLDER, f"{language}-{index:05d}.tfrecord")
            size, crc = prepared.file_crc32(os.path.join(self.directory, relative))
            shards.append(prepared.ShardInfo(relative, language, index,
                                             self._pairs[(language, index)], size, crc))
        self._writers = {}
        return shards


class ProgressLine:
    """Pairs written and pairs/s: a line redrawn in place, or with `quiet`
    a log line every `quiet_every` seconds."""

    def __init__(self, out=sys.stderr, quiet=False, every=0.5, quiet_every=30.0):
        self.out, self.quiet = out, quiet
        self.every = quiet_every if quiet else every
        self.started = self._last = time.monotonic()
        self._shown = None

    def update(self, pairs, force=False):
        now = time.monotonic()
        if pairs == self._shown or (not force and now - self._last < self.every):
            return
        self._last, self._shown = now, pairs
        rate = pairs / max(now - self.started, 1e-9)
        text = f"prepared {pairs:,} pairs ({rate:,.0f} pairs/s, {now - self.started:.0f} s)"
        self.out.write(text + "\n" if self.quiet else f"\r{text}   ")
        self.out.flush()

    def finish(self, pairs):
        self.update(pairs, force=True)
        if not self.quiet:
            self.out.write("\n")
            self.out.flush()


# === The preparation ===

def prepare_corpus(request, tokenizer, output, overwrite=False, progress=None, log=print):
    """Writes `request.corpus`, tokenized, to `output`; returns the manifest.

    Args:
        request: a `PreparationRequest` (its tokenizer description must be
            `tokenizer`'s).
        tokenizer: the encoder's `SubwordTokenizer`.
        output: the prepared directory.
        overwrite: replace a preparation of another request.
        progress: a `ProgressLine` (None: silent).
        log: callable for messages.

    Raises:
        CorpusError: the corpus breaks a rule (`file:line`), or the output is
            refused (`claim_output`).
    """
    existing = claim_output(output, request, overwrite, log)
    if existing is not None:
        log(f"{output}: already prepared ({existing['pairs']:,} pairs, "
            f"{len(existing['shards'])} shards); nothing to do.")
        return existing
    started = time.monotonic()
    stream, held = training_stream(request, log)
    writers = ShardWriters(output, request.shards_per_language)
    pairs = 0
    try:
        for header, english, other, languages in tokenized_chunks(stream, tokenizer):
            for language, record in zip(languages, prepared.encode_records(header, english,
                                                                           other)):
                writers.write(language, record)
            pairs += len(languages)
            if progress:
                progress.update(pairs)
    finally:
        shards = writers.close()
    if progress:
        progress.finish(pairs)
    if held is not None:
        held.write(os.path.join(output, prepared.HELD_OUT_FILE))
    manifest = _manifest(request, stream.stats, writers.pairs_per_language, shards,
                         time.monotonic() - started, held)
    write_json_atomic(os.path.join(output, prepared.MANIFEST_FILE), manifest, indent=1)
    os.remove(os.path.join(output, prepared.PREPARING_FILE))
    return manifest


def training_stream(request, log=print):
    """(the `CorpusStream` of the pairs training keeps, their `HeldOut` or
    None): the demo less its own held-out pairs; another corpus less those
    `request.hold_out_seed` chooses, found by a first pass over it."""
    def read():
        return corpus_lib.stream_corpus(request.corpus, max_chars=request.max_chars,
                                        languages=list(request.languages) or None)

    if request.corpus == "demo":
        return read(), held_out_lib.demo_held_out(request.max_chars)
    if request.hold_out_seed is None:
        return read(), None
    log(f"{request.corpus}: choosing the pairs held out for the alignment check "
        f"({held_out_lib.RULE_TEXT[held_out_lib.CORPUS_RULE]}, seed {request.hold_out_seed}; "
        "a first pass that reads without tokenizing)")
    chooser = held_out_lib.HeldOutChooser(request.hold_out_seed)
    for index, pair in enumerate(read()):
        chooser.add(index, pair.language, pair.english, pair)
    return held_out_lib.without_held_out(read(), chooser)


def _manifest(request, stats, pairs_per_language, shards, seconds, held=None):
    return dict(
        format=prepared.FORMAT, version=prepared.FORMAT_VERSION,
        record_layout=prepared.RECORD_LAYOUT,
        **request.to_dict(),
        files=list(stats.files),
        file_identity=[file_identity(path) for path in stats.files],
        pairs=stats.pairs,
        pairs_per_language=dict(sorted(pairs_per_language.items())),
        skipped_empty=stats.skipped_empty,
        truncated=stats.truncated,
        held_out_pairs=stats.held_out,
        held_out=dict(held.describe(), file=prepared.HELD_OUT_FILE) if held else None,
        shards=[dataclasses.asdict(shard) for shard in shards],
        seconds=round(seconds, 1),
        created=datetime.datetime.now().isoformat(timespec="seconds"),
    )
