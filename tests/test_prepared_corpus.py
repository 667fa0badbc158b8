"""`python -m tf_mbalign.prepare` and its library: shards, manifest, re-runs, inputs.

Corpora are written into tmp_path; the tokenizer is the tiny encoder's
character WordPiece vocabulary.
"""

import json
import os
import signal
import subprocess
import sys

from tf_mbalign import runtime  # noqa: E402

runtime.set_tensorflow_environment_defaults()  # before TensorFlow loads

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from conftest import run_module  # noqa: E402
from tf_mbalign.data import corpus as corpus_lib  # noqa: E402
from tf_mbalign.data import corpus_preparation, training_input  # noqa: E402
from tf_mbalign.data import prepared_corpus as prepared  # noqa: E402
from tf_mbalign.data.corpus import CorpusError  # noqa: E402
from tf_mbalign.modeling import encoders  # noqa: E402


@pytest.fixture(scope="module")
def tokenizer():
    return encoders.load_tokenizer("tiny:demo")


def _write(path, text):
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    return str(path)


def _corpus_dir(tmp_path, sizes=None):
    """en-XX.tsv files with sizes[XX] usable pairs, plus one empty pair
    (skipped) and one over-long side (truncated) in de."""
    sizes = sizes or {"de": 23, "fr": 9}
    folder = tmp_path / "corpus"
    folder.mkdir()
    for language, count in sizes.items():
        lines = [f"the sentence {i} of {language}\tsentence {language} {i}\n"
                 for i in range(count)]
        if language == "de":
            lines.insert(3, " \tleer\n")
            lines.insert(5, "long " * 30 + "\tkurz\n")
            lines.pop(6)
        _write(folder / f"en-{language}.tsv", "".join(lines))
    return str(folder)


def _prepare(spec, tokenizer, output, shards=3, **settings):
    request = corpus_preparation.PreparationRequest.for_tokenizer(
        spec, "tiny:demo", tokenizer, shards_per_language=shards, **settings)
    messages = []
    manifest = corpus_preparation.prepare_corpus(request, tokenizer, str(output),
                                                 log=messages.append)
    return manifest, messages


def _records(directory):
    """{pair_id: (language, shard index, position, decoded record)}."""
    manifest = prepared.read_manifest(directory)
    found = {}
    for shard in manifest["shards"]:
        path = os.path.join(directory, shard["path"])
        for position, record in enumerate(tf.data.TFRecordDataset(path).as_numpy_iterator()):
            decoded = prepared.decode_record_numpy(record)
            assert decoded["pair_id"] not in found
            found[decoded["pair_id"]] = (shard["language"], shard["index"], position, decoded)
    return found


# === What prepare writes ===

def test_shards_hold_every_validated_pair_tokenized(tmp_path, tokenizer):
    spec = _corpus_dir(tmp_path)
    output = tmp_path / "prepared"
    manifest, _ = _prepare(spec, tokenizer, output, shards=3, max_chars=40)
    reference = corpus_lib.read_corpus(spec, max_chars=40)

    # Counts are the in-memory reader's.
    assert manifest["pairs"] == len(reference) == 32
    assert manifest["pairs_per_language"] == reference.language_counts() == {"de": 23, "fr": 9}
    assert manifest["skipped_empty"] == reference.stats.skipped_empty == 1
    assert manifest["truncated"] == reference.stats.truncated == 1
    assert manifest["tokenizer"]["fingerprint"] == tokenizer.fingerprint()
    assert not os.path.exists(output / prepared.PREPARING_FILE)

    records = _records(str(output))
    assert sorted(records) == list(range(len(reference)))
    per_language = {}
    for pair_id, (language, index, position, record) in sorted(records.items()):
        ids = tokenizer.tokenize(tf.constant([reference.english[pair_id],
                                              reference.other[pair_id]]))
        assert record["english_ids"].tolist() == ids[0].numpy().tolist(), pair_id
        assert record["other_ids"].tolist() == ids[1].numpy().tolist(), pair_id
        source = f"{manifest['files'][record['file_index']]}:{record['line']}"
        assert source == reference.sources[pair_id]
        assert language == reference.languages[reference.language_ids[pair_id]]
        # The language's k-th pair is in shard k mod 3, at place k // 3.
        k = per_language.setdefault(language, 0)
        assert (index, position) == (k % 3, k // 3)
        per_language[language] = k + 1

    # Sizes and checksums are the files'.
    corpus = prepared.PreparedCorpus.open(str(output))
    corpus.verify_checksums()
    for shard in manifest["shards"]:
        size, crc = prepared.file_crc32(os.path.join(output, shard["path"]))
        assert (size, crc) == (shard["bytes"], shard["crc32"])
    assert corpus.sources_of([31, 0]) == [reference.sources[31], reference.sources[0]]


def test_a_damaged_shard_is_found(tmp_path, tokenizer):
    output = tmp_path / "prepared"
    manifest, _ = _prepare(_corpus_dir(tmp_path), tokenizer, output)
    path = os.path.join(output, manifest["shards"][0]["path"])
    with open(path, "r+b") as f:
        f.seek(20)
        f.write(b"\xff\xff")
    with pytest.raises(CorpusError, match="CRC-32"):
        prepared.PreparedCorpus.open(str(output)).verify_checksums()
    with open(path, "ab") as f:
        f.write(b"x")
    with pytest.raises(CorpusError, match="changed or truncated"):
        prepared.PreparedCorpus.open(str(output))


def test_errors_are_the_readers_and_leave_no_manifest(tmp_path, tokenizer):
    spec = _corpus_dir(tmp_path)
    with open(os.path.join(spec, "en-fr.tsv"), "a", encoding="utf-8") as f:
        f.write("one\ttwo\tthree\n")
    with pytest.raises(CorpusError) as in_memory:
        corpus_lib.read_corpus(spec)
    output = tmp_path / "prepared"
    with pytest.raises(CorpusError) as streamed:
        _prepare(spec, tokenizer, output)
    assert str(streamed.value) == str(in_memory.value)
    assert "en-fr.tsv:10:" in str(streamed.value)
    # The partial output never looks complete, to training or to a re-run.
    assert not os.path.exists(output / prepared.MANIFEST_FILE)
    with pytest.raises(CorpusError, match="did not finish"):
        training_input.open_corpus(str(output))
    with pytest.raises(CorpusError, match="did not finish"):
        training_input.open_corpus(f"prepared:{output}")


# === Re-running ===

def test_rerun_does_nothing_when_done_and_refuses_other_requests(tmp_path, tokenizer):
    spec = _corpus_dir(tmp_path)
    output = tmp_path / "prepared"
    first, _ = _prepare(spec, tokenizer, output)
    shard = os.path.join(output, first["shards"][0]["path"])
    written = os.stat(shard).st_mtime_ns

    again, messages = _prepare(spec, tokenizer, output)
    assert again == first and "nothing to do" in messages[0]
    assert os.stat(shard).st_mtime_ns == written

    with pytest.raises(CorpusError, match=r"shards_per_language=3 \(now 2\).*--overwrite"):
        _prepare(spec, tokenizer, output, shards=2)
    other_tokenizer = _other_tokenizer(tmp_path)
    with pytest.raises(CorpusError, match="another tokenizer"):
        _prepare(spec, other_tokenizer, output)
    assert prepared.read_manifest(str(output)) == first  # refusals change nothing

    with open(os.path.join(spec, "en-fr.tsv"), "a", encoding="utf-8") as f:
        f.write("a new line\tune ligne\n")
    with pytest.raises(CorpusError, match="en-fr.tsv changed since it was prepared"):
        _prepare(spec, tokenizer, output)

    request = corpus_preparation.PreparationRequest.for_tokenizer(
        spec, "tiny:demo", tokenizer, shards_per_language=2)
    replaced = corpus_preparation.prepare_corpus(request, tokenizer, str(output), overwrite=True,
                                                 log=lambda m: None)
    assert replaced["pairs"] == first["pairs"] + 1
    assert {s["index"] for s in replaced["shards"]} == {0, 1}
    assert sorted(os.listdir(output / prepared.SHARD_FOLDER)) == sorted(
        os.path.basename(s["path"]) for s in replaced["shards"])


def _other_tokenizer(tmp_path):
    from tf_mbalign.data import tokenizers, vocabulary

    path = vocabulary.write_vocab(vocabulary.character_wordpiece_vocab(["abc"]),
                                  str(tmp_path / "other_vocab.txt"))
    return tokenizers.WordPieceTokenizer(path)


def test_an_interrupted_preparation_starts_over_or_is_refused(tmp_path, tokenizer):
    spec = _corpus_dir(tmp_path)
    output = tmp_path / "prepared"
    finished, _ = _prepare(spec, tokenizer, output)
    # Leave it as a killed run would: a marker naming a dead process, a
    # half-written shard, no manifest.
    request = corpus_preparation.PreparationRequest.for_tokenizer(
        spec, "tiny:demo", tokenizer, shards_per_language=3)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    marker = dict(request.to_dict(), pid=dead.pid, host=os.uname().nodename, started="then")
    os.remove(output / prepared.MANIFEST_FILE)
    _write(output / prepared.PREPARING_FILE, json.dumps(marker))
    _write(output / prepared.SHARD_FOLDER / "de-00000.tfrecord", "half")

    with pytest.raises(CorpusError, match="another request.*--overwrite"):
        _prepare(spec, tokenizer, output, shards=4)
    again, messages = _prepare(spec, tokenizer, output)
    assert any("did not finish; starting over" in m for m in messages)
    assert again["shards"] == finished["shards"]  # the same bytes, checksums included

    # A preparation still running (a live process) is never touched.
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        os.remove(output / prepared.MANIFEST_FILE)
        _write(output / prepared.PREPARING_FILE, json.dumps(dict(marker, pid=live.pid)))
        with pytest.raises(CorpusError, match=f"right now by process {live.pid}"):
            _prepare(spec, tokenizer, output)
    finally:
        live.send_signal(signal.SIGKILL)
        live.wait()


def test_a_directory_that_is_not_a_prepared_corpus_is_refused(tmp_path, tokenizer):
    spec = _corpus_dir(tmp_path)
    with pytest.raises(CorpusError, match="not empty and holds no prepared corpus"):
        _prepare(spec, tokenizer, tmp_path)  # holds the corpus itself
    assert sorted(os.listdir(tmp_path)) == ["corpus"]


# === Inputs: Hugging Face JSONL, TFDS ===

def _jsonl_line(translation):
    return json.dumps({"translation": translation}, ensure_ascii=False) + "\n"


def test_hugging_face_translation_jsonl(tmp_path, tokenizer):
    path = _write(tmp_path / "train.jsonl", "".join([
        _jsonl_line({"en": "Hello", "de": "Hallo"}),
        "\n",
        _jsonl_line({"de": "  ", "en": "Nothing"}),
        _jsonl_line({"fr": "Bonne nuit", "en": "Good night"}),
    ]))
    corpus = corpus_lib.read_corpus(path)
    assert corpus.english == ["Hello", "Good night"] and corpus.other == ["Hallo", "Bonne nuit"]
    assert corpus.languages == ["de", "fr"]
    assert corpus.sources == [f"{path}:1", f"{path}:4"]
    assert corpus.stats.skipped_empty == 2

    manifest, _ = _prepare(path, tokenizer, tmp_path / "prepared")
    assert manifest["pairs_per_language"] == {"de": 1, "fr": 1}
    assert manifest["skipped_empty"] == 2


@pytest.mark.parametrize("line,problem", [
    ('{"translation": {"en": "a", "de": "b"', ":2: not a JSON object"),
    ('["en", "de"]', ':2: no "translation" object'),
    ('{"translation": {"de": "a", "fr": "b"}}', "languages ['de', 'fr']"),
    ('{"translation": {"en": "a", "de": "b", "fr": "c"}}', "exactly one other"),
    ('{"translation": {"en": "a", "de": 3}}', "not a string"),
])
def test_jsonl_errors_name_file_and_line(tmp_path, tokenizer, line, problem):
    path = _write(tmp_path / "bad.jsonl", _jsonl_line({"en": "ok", "de": "gut"}) + line + "\n")
    with pytest.raises(CorpusError, match="bad.jsonl:2: ") as info:
        corpus_lib.read_corpus(path)
    assert problem in str(info.value) and '{"translation": {"en"' in str(info.value)
    with pytest.raises(CorpusError) as streamed:
        _prepare(path, tokenizer, tmp_path / "prepared")
    assert str(streamed.value) == str(info.value)


def test_tfds_translation_goes_through_prepare(tmp_path, tokenizer, monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")

    class TfMbalignTinyTranslation(tfds.core.GeneratorBasedBuilder):
        """A local TFDS translation dataset (TFDS's layout, no download)."""

        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self, features=tfds.features.Translation(languages=["de", "en"]))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            pairs = [("Hello", "Hallo"), (" ", "leer"), ("Good night", "Gute Nacht")]
            for i, (english, german) in enumerate(pairs):
                yield i, {"en": english, "de": german}

    data_dir = str(tmp_path / "tfds")
    TfMbalignTinyTranslation(data_dir=data_dir).download_and_prepare()
    monkeypatch.setenv("TFDS_DATA_DIR", data_dir)
    spec = "tfds:tf_mbalign_tiny_translation"
    reference = corpus_lib.read_corpus(spec)
    manifest, _ = _prepare(spec, tokenizer, tmp_path / "prepared")
    assert manifest["pairs_per_language"] == {"de": 2} and manifest["skipped_empty"] == 1
    assert manifest["files"] == ["tfds:tf_mbalign_tiny_translation/train"]
    records = _records(str(tmp_path / "prepared"))
    assert [f"{manifest['files'][r['file_index']]}:{r['line']}"
            for *_, r in (records[i] for i in sorted(records))] == reference.sources


# === The binary ===

def test_prepare_binary_writes_reruns_and_reports_errors(tmp_path):
    spec = _corpus_dir(tmp_path)
    output = str(tmp_path / "prepared")
    args = ["-m", "tf_mbalign.prepare", f"--corpus={spec}", "--encoder=tiny:demo",
            f"--output={output}", "--shards_per_language=2", "--quiet"]
    first = run_module(args)
    assert first.returncode == 0, first.stderr[-3000:]
    # The binary holds out pairs for the alignment check (--seed=0): 1 of de's
    # 23 (5% rounded down), none of fr's 9.
    assert "prepared 31 pairs" in first.stdout and f"--corpus=prepared:{output}" in first.stdout
    assert "1 held out for the alignment check" in first.stdout
    assert os.path.isfile(os.path.join(output, prepared.HELD_OUT_FILE))
    assert "pairs/s" in first.stderr  # the progress line
    assert "Traceback" not in first.stderr
    assert prepared.read_manifest(output)["settings"]["shards_per_language"] == 2
    # A re-run asking for something else: exit 2, the reason, no traceback.
    refused = run_module(args[:-2] + ["--shards_per_language=3"])
    assert refused.returncode == 2
    assert "error:" in refused.stderr and "--overwrite" in refused.stderr
    assert "Traceback" not in refused.stderr
