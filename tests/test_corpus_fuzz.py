"""Hostile corpora: property-based tests of the readers and the tokenization.

Files are built from hostile pieces (random bytes, invalid UTF-8, NUL, \\r\\n,
lone \\r, \\x0b, \\x85, \\u2028, byte-order marks, tabs inside fields, empty and
whitespace-only or invisible sides, 1 MB lines, files with and without a
trailing newline, line-aligned files of different lengths). Every input must
either be read exactly as the rules in `tf_mbalign/data/corpus.py` say (checked
against an independent re-implementation here) or be rejected with a
`CorpusError` naming `file:line`; anything else fails the test. Line counts
are also checked against `tf.data.TextLineDataset`.

The suite runs `TF_MBALIGN_FUZZ_EXAMPLES` cases per property (default 200).
The full run (10,000 cases per property, ~17 minutes on 2 cores):

    TF_MBALIGN_FUZZ_EXAMPLES=10000 python -m pytest -q -s tests/test_corpus_fuzz.py
"""

import os
import tempfile
import tracemalloc
import unicodedata

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tf_mbalign.data import corpus as corpus_lib
from tf_mbalign.data.corpus import CorpusError

EXAMPLES = int(os.environ.get("TF_MBALIGN_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, print_blob=True,
                suppress_health_check=list(HealthCheck))
MAX_CHARS = 40
HUGE = "<1MB>"  # Expands to a 1 MB run of text when the file is written.
CASES = {}  # property -> cases run (printed with -s)


def count_lines(path):
    """The number of lines of a file under the corpus rules (no decoding)."""
    return sum(1 for _ in corpus_lib._raw_lines(path))

# === Hostile pieces ===
_PIECES = [
    b"\t", b"\t", b"\r", b"\r\n", b"\x00", b"\x0b", b"\x0c", b"\x1c", b" ", b"  ",
    "\x85".encode(), "\u2028".encode(), "\u2029".encode(), "\u3000".encode(),
    "\u200b".encode(), "\ufeff".encode(), b"\xef\xbb\xbf", "\ufffd".encode(),
    b"\xff", b"\xc3", b"\xe2\x82", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf4\x90\x80\x80",
    "é".encode(), "e\u0301".encode(), "中文".encode(), "😀".encode(), "\ue000".encode(),
    b"Hello", b"world", b"a", "Привет".encode(), "مرحبا".encode(), HUGE.encode(),
]
_piece = st.one_of(
    st.sampled_from(_PIECES),
    st.binary(max_size=6),
    st.text(max_size=6).map(lambda t: t.encode("utf-8", "surrogatepass")),
)
_line = st.lists(_piece, max_size=8).map(b"".join)
_terminator = st.sampled_from([b"\n", b"\n", b"\r\n", b"\r\r\n"])


@st.composite
def corpus_files(draw, min_lines=0, max_lines=10):
    """Bytes of a corpus file; HUGE becomes 1 MB in at most a few percent."""
    lines = draw(st.lists(_line, min_size=min_lines, max_size=max_lines))
    terminators = [draw(_terminator) for _ in lines]
    if lines and draw(st.booleans()):  # No newline after the last line.
        terminators[-1] = b""
    data = b"".join(line + end for line, end in zip(lines, terminators))
    if draw(st.integers(0, 9)) == 0:
        data = b"\xef\xbb\xbf" + data
    huge = draw(st.integers(0, 39)) == 0
    return data, huge


_TEXT_PIECES = [p for p in _PIECES if b"\t" not in p and b"\n" not in p]
_text_piece = st.one_of(
    st.sampled_from(_TEXT_PIECES).filter(lambda p: _decodes(p)),
    st.text(max_size=6).filter(lambda t: "\t" not in t and "\n" not in t)
    .map(lambda t: t.encode("utf-8", "surrogatepass")).filter(lambda p: _decodes(p)),
)
_side = st.lists(_text_piece, max_size=6).map(b"".join)


def _decodes(data):
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@st.composite
def valid_tsv_files(draw):
    """`english<TAB>other` files of hostile but valid UTF-8 text (most are read)."""
    lines = draw(st.lists(st.tuples(_side, _side).map(lambda p: p[0] + b"\t" + p[1]),
                          min_size=1, max_size=10))
    terminators = [draw(_terminator) for _ in lines]
    if draw(st.booleans()):
        terminators[-1] = b""
    huge = draw(st.integers(0, 39)) == 0
    return b"".join(line + end for line, end in zip(lines, terminators)), huge


@st.composite
def aligned_file_pairs(draw):
    """Two line-aligned files of hostile but valid text, usually of equal length."""
    count = draw(st.integers(1, 10))
    files = []
    for _ in range(2):
        lines = draw(st.lists(_side, min_size=count, max_size=count + draw(st.integers(0, 1))))
        terminators = [draw(_terminator) for _ in lines]
        if draw(st.booleans()):
            terminators[-1] = b""
        files.append((b"".join(line + end for line, end in zip(lines, terminators)),
                      draw(st.integers(0, 39)) == 0))
    return tuple(files)


def _write(directory, name, data, huge):
    path = os.path.join(directory, name)
    marker = HUGE.encode()
    data = data.replace(marker, b"x" * (1 << 20) if huge else b"xyz")
    with open(path, "wb") as f:
        f.write(data)
    return path, data


# === The rules, re-implemented independently (splitting the whole file) ===

def oracle_raw_lines(data, max_line_bytes=corpus_lib.MAX_LINE_BYTES):
    """[(number, raw line)], or ('too long', number)."""
    segments = data.split(b"\n")
    lines = []
    for index, segment in enumerate(segments):
        terminated = index < len(segments) - 1
        if len(segment) > max_line_bytes:
            return ("too long", index + 1)
        segment = segment.rstrip(b"\r")
        if not terminated and not segment:
            break
        if index == 0 and segment.startswith(b"\xef\xbb\xbf"):
            segment = segment[3:]
        lines.append((index + 1, segment))
    return lines


def _visible(text):
    return any(not c.isspace() and c != "\ufffd"
               and unicodedata.category(c) not in ("Cc", "Cf", "Cs", "Zs", "Zl", "Zp")
               for c in text)


def oracle_tsv(path, data):
    """('ok', pairs, sources, skipped, truncated) or ('error', 'file:line:', kind)."""
    raw = oracle_raw_lines(data)
    if isinstance(raw, tuple):
        return ("error", f"{path}:{raw[1]}:", "longer than")
    pairs, sources, skipped, truncated = [], [], 0, 0
    for number, line in raw:
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            return ("error", f"{path}:{number}:", "invalid UTF-8")
        if not _visible(text):
            skipped += 1
            continue
        if text.count("\t") != 1:
            return ("error", f"{path}:{number}:", "tabs")
        english, other = text.split("\t")
        if not (_visible(english) and _visible(other)):
            skipped += 1
            continue
        if len(english) > MAX_CHARS or len(other) > MAX_CHARS:
            truncated += 1
        pairs.append((english[:MAX_CHARS], other[:MAX_CHARS]))
        sources.append(f"{path}:{number}")
    if not pairs:
        return ("error", path, "no usable sentence pairs")
    return ("ok", pairs, sources, skipped, truncated)


def _outcome(read):
    try:
        corpus = read()
    except CorpusError as error:
        return ("raised", str(error))
    return ("ok", list(zip(corpus.english, corpus.other)), corpus.sources,
            corpus.stats.skipped_empty, corpus.stats.truncated)


def _check(expected, actual):
    if expected[0] == "ok":
        assert actual == expected, (expected, actual[:1])
    else:
        assert actual[0] == "raised", (expected, actual)
        _, where, kind = expected
        assert where in actual[1] and kind in actual[1], (expected, actual[1][:300])


def _count(name):
    CASES[name] = CASES.get(name, 0) + 1


@pytest.fixture(scope="module", autouse=True)
def _report_cases():
    yield
    print(f"\nfuzz cases run: {CASES}")


# === Properties ===

@FUZZ
@given(st.one_of(corpus_files(), valid_tsv_files()))
def test_tsv_reader_reads_by_the_rules_or_names_file_and_line(file):
    data, huge = file
    with tempfile.TemporaryDirectory() as directory:
        path, data = _write(directory, "en-de.tsv", data, huge)
        actual = _outcome(lambda: corpus_lib.read_tsv(path, max_chars=MAX_CHARS))
        _check(oracle_tsv(path, data), actual)
        _count(f"tsv_{actual[0]}")
        # The directory reader applies the same rules to the same file.
        assert _outcome(lambda: corpus_lib.read_directory(directory, max_chars=MAX_CHARS)) \
            [0] == actual[0]
    _count("tsv")


@FUZZ
@given(st.one_of(st.tuples(corpus_files(), corpus_files()), aligned_file_pairs()))
def test_line_aligned_reader_reads_by_the_rules_or_names_file_and_line(files):
    english, other = files
    with tempfile.TemporaryDirectory() as directory:
        english_path, english_data = _write(directory, "a.en", *english)
        other_path, other_data = _write(directory, "a.de", *other)
        actual = _outcome(lambda: corpus_lib.read_line_aligned(
            english_path, other_path, language="de", max_chars=MAX_CHARS))
        lines = [oracle_raw_lines(english_data), oracle_raw_lines(other_data)]
        expected = None
        decoded = [[], []]
        for side, (path, raw) in enumerate(zip((english_path, other_path), lines)):
            for number, line in raw:
                try:
                    decoded[side].append(line.decode("utf-8"))
                    problem = "a tab" if side == 0 and "\t" in decoded[side][-1] else None
                except UnicodeDecodeError:
                    problem = "invalid UTF-8"
                if problem:
                    # Both files are read in step: the error at the smaller
                    # line number comes first (English first on a tie).
                    candidate = (number, side, ("error", f"{path}:{number}:", problem))
                    expected = min(expected, candidate) if expected else candidate
                    break
        if expected:
            expected = expected[2]
        elif len(lines[0]) != len(lines[1]):
            expected = ("error", f"{english_path} has {len(lines[0])} lines", other_path)
        else:
            pairs = [(e[:MAX_CHARS], o[:MAX_CHARS]) for e, o in zip(*decoded)
                     if _visible(e) and _visible(o)]
            sources = [f"{other_path}:{n}" for (n, _), e, o in zip(lines[1], *decoded)
                       if _visible(e) and _visible(o)]
            truncated = sum(1 for e, o in zip(*decoded) if _visible(e) and _visible(o)
                            and (len(e) > MAX_CHARS or len(o) > MAX_CHARS))
            expected = (("ok", pairs, sources, len(lines[0]) - len(pairs), truncated) if pairs
                        else ("error", english_path, "no usable sentence pairs"))
        _check(expected, actual)
    _count("line_aligned")
    _count(f"line_aligned_{actual[0]}")


@FUZZ
@given(corpus_files())
def test_line_counts_agree_with_tf_data_text_line_dataset(file):
    data, huge = file
    with tempfile.TemporaryDirectory() as directory:
        path, data = _write(directory, "lines.txt", data, huge)
        reader_lines = [line for line in tf.data.TextLineDataset(path).as_numpy_iterator()]
        assert count_lines(path) == len(reader_lines) == len(oracle_raw_lines(data))
        # Same content, but for \r inside a line (TensorFlow deletes every \r;
        # the validator keeps it as text) and a leading byte-order mark.
        ours = [raw.replace(b"\r", b"") for _, raw in corpus_lib._raw_lines(path)]
        theirs = [line.replace(b"\r", b"") for line in reader_lines]
        if data.startswith(b"\xef\xbb\xbf"):  # The validator drops it, TF keeps it.
            theirs[0] = theirs[0][3:]
        assert ours == theirs
    _count("text_line_dataset")


@pytest.fixture(scope="module")
def example_fn():
    """make_example for one pair, traced once (tiny WordPiece vocabulary)."""
    from tf_mbalign.data import pipeline
    from tf_mbalign.modeling import encoders

    tokenizer = encoders.load_encoder("tiny:demo", dropout=0.0).tokenizer
    config = pipeline.PipelineConfig(max_seq_length=32, max_sentence_length=16,
                                     max_predictions_per_seq=6)

    @tf.function(input_signature=[tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.string),
                                  tf.TensorSpec([], tf.int64)])
    def make(english, other, position):
        return pipeline.make_example(english, other, position, tokenizer, config, pair_id=position)

    return make, tokenizer, config


@FUZZ
@given(valid_tsv_files())
def test_every_accepted_pair_tokenizes_into_a_valid_example(example_fn, file):
    make, tokenizer, config = example_fn
    data, huge = file
    with tempfile.TemporaryDirectory() as directory:
        path, _ = _write(directory, "en-de.tsv", data, huge)
        try:
            corpus = corpus_lib.read_tsv(path, max_chars=MAX_CHARS)
        except CorpusError:
            _count("tokenization_rejected")
            return
    for position, (english, other) in enumerate(zip(corpus.english, corpus.other)):
        example = {k: v.numpy() for k, v in make(
            tf.constant(english), tf.constant(other), tf.constant(position, tf.int64)).items()}
        # Each side keeps at least one token: [CLS] x.. [SEP].
        assert example["query_padding_mask"].sum() >= 3, (english, other)
        assert example["key_padding_mask"].sum() >= 3, (english, other)
        assert example["tlm_padding_mask"].sum() >= 5, (english, other)
        assert example["tlm_token_ids"].shape == (config.max_seq_length,)
        for key in ("tlm_token_ids", "query_token_ids", "key_token_ids"):
            ids = example[key]
            assert ids.min() >= 0 and ids.max() < tokenizer.vocabulary_size
        # Masks only where there is an ordinary token (a pair of [UNK]s has none).
        length = example["tlm_padding_mask"].sum()
        ordinary = np.setdiff1d(example["tlm_token_ids"][:length], tokenizer.special_ids)
        weights = example["masked_weights"]
        assert set(weights.tolist()) <= {0.0, 1.0}
        assert (weights.sum() >= 1) == (ordinary.size > 0 or example["masked_ids"][
            weights > 0].size > 0), (english, other)
        assert np.all(example["masked_positions"][weights > 0] < length)
    _count("tokenization")


# === Fixed cases: huge lines, memory, the tf.data pipeline ===

def _peak_bytes(function):
    tracemalloc.start()
    try:
        result = function()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_stays_bounded_on_1mb_lines(tmp_path):
    path = tmp_path / "en-de.tsv"
    with open(path, "wb") as f:
        for i in range(48):  # 48 MB: 48 lines of 1 MB each, then ordinary pairs.
            f.write(b"E" * (1 << 20) + b"\t" + f"line {i}".encode() + b"\n")
        for i in range(1000):
            f.write(f"sentence {i}\tSatz {i}\n".encode())
    corpus, peak = _peak_bytes(lambda: corpus_lib.read_tsv(str(path)))
    assert len(corpus) == 1048 and corpus.stats.truncated == 48
    print(f"\npeak Python memory reading a 48 MB file of 1 MB lines: {peak / 2**20:.1f} MiB")
    assert peak < 8 * 2**20  # a few copies of one line, not the file


def test_line_over_the_limit_is_rejected_naming_file_and_line(tmp_path):
    path = tmp_path / "en-de.tsv"
    with open(path, "wb") as f:
        f.write(b"ok\tgut\n" + b"x" * (corpus_lib.MAX_LINE_BYTES + 10) + b"\nlast\tletzte\n")
    with pytest.raises(CorpusError) as info:
        _, peak = _peak_bytes(lambda: corpus_lib.read_tsv(str(path)))
    assert f"{path}:2: line longer than" in str(info.value)


def test_pipeline_sees_exactly_the_validated_pairs_of_a_hostile_file(tmp_path):
    from tf_mbalign.data import pipeline
    from tf_mbalign.modeling import encoders

    lines = [
        "\ufeffBOM first\tBOM erste", "nul\x00inside\tNUL\x00drin", "crlf\tcrlf",
        "lone\rcr\tlone\rcr", "vt\x0bff\x0c\tvt", "nel\x85ls\u2028\tnel ls", "\u200b\tinvisible",
        "\x00\x00\tnul only", " \u3000\tspace only", "x" * 5000 + "\tlong english",
        "😀 emoji\t中文", "combining e\u0301\tÉ", "private \ue000\tuse", "",
        "last\tno newline",
    ]
    data = "\r\n".join(lines).encode()
    path = tmp_path / "en-de.tsv"
    path.write_bytes(data)
    corpus = corpus_lib.read_tsv(str(path))
    assert corpus.stats.skipped_empty == 4 and corpus.stats.truncated == 1
    assert corpus.english[0] == "BOM first" and corpus.english[3] == "lone\rcr"
    assert corpus.sources[-1] == f"{path}:15"  # the line after the empty one
    assert len(corpus) == count_lines(str(path)) - 4
    tokenizer = encoders.load_encoder("tiny:demo", dropout=0.0).tokenizer
    config = pipeline.PipelineConfig(max_seq_length=32, max_sentence_length=16,
                                     max_predictions_per_seq=6, language_sampling_alpha=1.0)
    dataset = pipeline.build_dataset(corpus, tokenizer, config, global_batch_size=len(corpus))
    batch = next(iter(dataset))
    assert sorted(batch["pair_id"].numpy().tolist()) == list(range(len(corpus)))
    assert np.all(batch["query_padding_mask"].numpy().sum(axis=1) >= 3)
