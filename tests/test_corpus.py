"""Tests for tf_mbalign/data/corpus.py: reading, validation and language smoothing."""

import glob
import os

from tf_mbalign import runtime  # noqa: E402

runtime.set_tensorflow_environment_defaults()  # before TensorFlow loads

import numpy as np
import pytest

from tf_mbalign.data import corpus as corpus_lib
from tf_mbalign.data.corpus import CorpusError

def _write(path, data):
    """Writes bytes (or UTF-8 text) exactly as given, no newline translation."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


def _count_usable(path):
    """Independent count of the usable pairs of an `english<TAB>other` file."""
    with open(path, "rb") as f:
        raw = f.read()
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    usable = skipped = 0
    for line in lines:
        text = line.decode("utf-8").removesuffix("\r")
        english, _, other = text.partition("\t")
        if english.strip() and other.strip():
            usable += 1
        else:
            skipped += 1
    return usable, skipped


def _synthetic_corpus(counts):
    """A ParallelCorpus with counts[i] pairs of language `l{i}`."""
    ids = np.concatenate([np.full(n, i, np.int32) for i, n in enumerate(counts)])
    n = len(ids)
    return corpus_lib.ParallelCorpus(
        english=[f"e{i}" for i in range(n)], other=[f"o{i}" for i in range(n)],
        languages=[f"l{i}" for i in range(len(counts))], language_ids=ids,
        sources=[f"x:{i}" for i in range(n)], stats=corpus_lib.CorpusStats(pairs=n),
    )


# --- TSV reading ---------------------------------------------------------------


def test_language_from_file_name(tmp_path):
    path = _write(tmp_path / "en-de.tsv", "Hello\tHallo\nGood night\tGute Nacht\n")
    corpus = corpus_lib.read_tsv(path)
    assert corpus.languages == ["de"]
    assert corpus.language_ids.tolist() == [0, 0]
    assert corpus.english == ["Hello", "Good night"]
    assert corpus.other == ["Hallo", "Gute Nacht"]
    assert corpus.sources == [f"{path}:1", f"{path}:2"]
    assert corpus.stats.pairs == 2 and corpus.stats.files == [path]


def test_language_override_and_unknown_name(tmp_path):
    path = _write(tmp_path / "pairs.tsv", "Hello\tBonjour\n")
    assert corpus_lib.read_tsv(path).languages == ["xx"]
    assert corpus_lib.read_tsv(path, language="fr").languages == ["fr"]
    # An en-XX.tsv name loses to an explicit language.
    named = _write(tmp_path / "en-es.tsv", "Hello\tHola\n")
    assert corpus_lib.read_tsv(named, language="pt").languages == ["pt"]


def test_crlf_line_ends_are_stripped(tmp_path):
    path = _write(tmp_path / "en-fr.tsv", b"One\tUn\r\nTwo\tDeux\r\n")
    corpus = corpus_lib.read_tsv(path)
    assert corpus.english == ["One", "Two"]
    assert corpus.other == ["Un", "Deux"]  # no trailing "\r" on the last field
    assert not any("\r" in s for s in corpus.english + corpus.other)


def test_last_line_without_trailing_newline_is_kept(tmp_path):
    path = _write(tmp_path / "en-fr.tsv", "One\tUn\nTwo\tDeux\nThree\tTrois")
    corpus = corpus_lib.read_tsv(path)
    assert len(corpus) == 3
    assert corpus.english[-1] == "Three" and corpus.other[-1] == "Trois"
    assert corpus.sources[-1] == f"{path}:3"


def test_crlf_without_trailing_newline(tmp_path):
    path = _write(tmp_path / "en-fr.tsv", b"One\tUn\r\nTwo\tDeux\r")
    corpus = corpus_lib.read_tsv(path)
    assert corpus.other == ["Un", "Deux"]


@pytest.mark.parametrize("separator", ["\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\u2029"])
def test_unicode_line_breaks_inside_a_sentence_are_text(tmp_path, separator):
    text = (
        "First\tErste\n"
        f"Left{separator}right\tLinks{separator}rechts\n"
        "Third\tDritte\n"
    )
    path = _write(tmp_path / "en-de.tsv", text)
    corpus = corpus_lib.read_tsv(path)
    assert len(corpus) == 3
    assert corpus.english[1] == f"Left{separator}right"
    assert corpus.other[1] == f"Links{separator}rechts"
    assert corpus.sources == [f"{path}:1", f"{path}:2", f"{path}:3"]


def test_unicode_line_breaks_keep_error_line_numbers_right(tmp_path):
    # Had "\u2028" / "\x85" been treated as line ends, the bad line would be
    # reported as line 5 rather than line 3.
    text = "A\u2028B\tC\u2028D\nE\x85F\tG\nno tab on this line\n"
    path = _write(tmp_path / "en-de.tsv", text)
    with pytest.raises(CorpusError) as info:
        corpus_lib.read_tsv(path)
    assert f"{path}:3:" in str(info.value)


# --- skipping and truncation ------------------------------------------------------


def test_empty_lines_and_empty_sides_are_skipped_and_counted(tmp_path):
    text = (
        "Hello\tHallo\n"
        "\n"                 # empty line
        "   \n"              # whitespace-only line
        "\tnur Deutsch\n"    # empty English side
        "only English\t\n"   # empty other side
        "blank\t \u3000\n"    # other side is whitespace only
        "Bye\tTschüss\n"
    )
    path = _write(tmp_path / "en-de.tsv", text)
    corpus = corpus_lib.read_tsv(path)
    assert corpus.english == ["Hello", "Bye"]
    assert corpus.other == ["Hallo", "Tschüss"]
    assert corpus.stats.skipped_empty == 5
    assert corpus.stats.pairs == 2
    # Line numbers of kept pairs count the skipped lines too.
    assert corpus.sources == [f"{path}:1", f"{path}:7"]


def test_long_sides_are_truncated_and_counted(tmp_path):
    text = (
        "short\tkurz\n"
        + "E" * 30 + "\tkurz\n"
        + "short\t" + "D" * 25 + "\n"
        + "E" * 40 + "\t" + "D" * 40 + "\n"   # both sides long: one truncated pair
        + "E" * 10 + "\t" + "D" * 10 + "\n"   # exactly max_chars: untouched
    )
    path = _write(tmp_path / "en-de.tsv", text)
    corpus = corpus_lib.read_tsv(path, max_chars=10)
    assert corpus.stats.truncated == 3
    assert corpus.english == ["short", "E" * 10, "short", "E" * 10, "E" * 10]
    assert corpus.other == ["kurz", "kurz", "D" * 10, "D" * 10, "D" * 10]
    assert max(len(s) for s in corpus.english + corpus.other) == 10


def test_default_max_chars_truncates(tmp_path):
    long = "x" * (corpus_lib.DEFAULT_MAX_CHARS + 5)
    path = _write(tmp_path / "en-de.tsv", f"{long}\tkurz\n")
    corpus = corpus_lib.read_tsv(path)
    assert len(corpus.english[0]) == corpus_lib.DEFAULT_MAX_CHARS
    assert corpus.stats.truncated == 1


# --- errors -------------------------------------------------------------------


@pytest.mark.parametrize("bad_line,tabs", [("no tab at all", 0), ("a\tb\tc", 2)])
def test_wrong_tab_count_names_file_and_line(tmp_path, bad_line, tabs):
    path = _write(tmp_path / "en-de.tsv", f"ok\tgut\nalso ok\tauch gut\n{bad_line}\n")
    with pytest.raises(CorpusError) as info:
        corpus_lib.read_tsv(path)
    message = str(info.value)
    assert f"{path}:3:" in message
    assert f"found {tabs} tabs" in message


def test_missing_tab_says_what_is_missing(tmp_path):
    path = _write(tmp_path / "en-de.tsv", "ok\tgut\njust one sentence\n")
    with pytest.raises(CorpusError) as info:
        corpus_lib.read_tsv(path)
    message = str(info.value)
    assert f"{path}:2: " in message
    assert "the tab and the translation after it are missing" in message
    assert "Remove tabs" not in message and "Replace tabs" not in message


def test_extra_tab_says_a_sentence_holds_one(tmp_path):
    path = _write(tmp_path / "en-de.tsv", "a\tb\tc\n")
    with pytest.raises(CorpusError, match=r"found 2 tabs: a sentence holds a tab"):
        corpus_lib.read_tsv(path)


def test_line_aligned_english_file_with_tabs_suggests_the_tsv_form(tmp_path):
    english = _write(tmp_path / "en-de.tsv", "Hello\tHallo\nNight\tNacht\n")
    other = _write(tmp_path / "en-fr.tsv", "Hello\tBonjour\nNight\tNuit\n")
    with pytest.raises(CorpusError) as info:
        corpus_lib.read_line_aligned(english, other)
    message = str(info.value)
    assert f"{english}:1: a tab in the English file of a line-aligned pair" in message
    assert f"--corpus={english}" in message and "TSV" in message


def test_comma_list_of_tsv_files_reads_each_with_its_language(tmp_path):
    german = _write(tmp_path / "en-de.tsv", "Hello\tHallo\nNight\tNacht\n")
    french = _write(tmp_path / "en-fr.tsv", "Hello\tBonjour\n")
    corpus = corpus_lib.read_corpus(f"{german},{french}")
    assert corpus.languages == ["de", "fr"]
    assert corpus.language_counts() == {"de": 2, "fr": 1}
    assert corpus.other == ["Hallo", "Nacht", "Bonjour"]
    assert corpus.sources == [f"{german}:1", f"{german}:2", f"{french}:1"]
    assert corpus.stats.files == [german, french]
    assert corpus.unnamed_language_warning() is None


def test_comma_list_of_three_non_tsv_files_is_refused(tmp_path):
    paths = [_write(tmp_path / f"a.{x}", "one\n") for x in ("en", "de", "fr")]
    with pytest.raises(CorpusError, match=r"a comma list is either TSV files .* or exactly two"):
        corpus_lib.read_corpus(",".join(paths))


# --- a comma list of directories and TSV files -------------------------------------


def _two_directories(tmp_path):
    """weak/ (kab, oci) and strong/ (de, fr): four languages in two folders."""
    for folder, files in {"weak": {"kab": "Hello\tAzul\nNight\tId\n", "oci": "Yes\tÒc\n"},
                          "strong": {"de": "Hello\tHallo\n", "fr": "Yes\tOui\nNo\tNon\n"}}.items():
        (tmp_path / folder).mkdir()
        for language, text in files.items():
            _write(tmp_path / folder / f"en-{language}.tsv", text)
    return str(tmp_path / "weak"), str(tmp_path / "strong")


def test_comma_list_of_directories_and_tsv_files_is_one_corpus(tmp_path):
    weak, strong = _two_directories(tmp_path)
    extra = _write(tmp_path / "en-eus.tsv", "Night\tGau\n")
    corpus = corpus_lib.read_corpus(f"{weak},{strong},{extra}")
    assert corpus.language_counts() == {"de": 1, "eus": 1, "fr": 2, "kab": 2, "oci": 1}
    # Items in the order given, a directory's files by language; file:line sources.
    assert corpus.sources == [f"{weak}/en-kab.tsv:1", f"{weak}/en-kab.tsv:2",
                              f"{weak}/en-oci.tsv:1", f"{strong}/en-de.tsv:1",
                              f"{strong}/en-fr.tsv:1", f"{strong}/en-fr.tsv:2", f"{extra}:1"]
    assert len(corpus.stats.files) == 5
    # Language sampling runs over the union: alpha 0 gives each of the 5
    # languages 7/5 of an epoch's 7 pairs, rounded to 1 or 2.
    index = corpus_lib.epoch_index(corpus, alpha=0.0)
    assert sorted(np.bincount(corpus.language_ids[index], minlength=5)) == [1, 1, 1, 2, 2]
    # --languages picks from the union; a language in no item is named.
    chosen = corpus_lib.read_corpus(f"{weak},{strong}", languages=["fr", "kab"])
    assert chosen.languages == ["fr", "kab"] and len(chosen) == 4
    with pytest.raises(FileNotFoundError, match=r"no file for language\(s\) \['gle'\]; "
                                                r"expected en-gle.tsv"):
        corpus_lib.read_corpus(f"{weak},{strong}", languages=["de", "gle"])


def test_comma_list_of_directories_keeps_file_and_line_errors(tmp_path):
    weak, strong = _two_directories(tmp_path)
    bad = _write(tmp_path / "strong" / "en-fr.tsv", "Yes\tOui\njust one sentence\n")
    with pytest.raises(CorpusError, match=f"^{bad}:2: expected `english<TAB>other`"):
        corpus_lib.read_corpus(f"{weak},{strong}")


@pytest.mark.parametrize("extra,expected", [
    ("strong/en-de.tsv", "the same file twice"),  # also reached through strong/
    ("more/en-kab.tsv", "language 'kab' twice"),
    ("notes.txt", "is neither a directory of en-XX.tsv files nor a .tsv file"),
    ("missing/", "is neither a directory"),
])
def test_comma_list_of_directories_refuses_repeats_and_other_items(tmp_path, extra, expected):
    weak, strong = _two_directories(tmp_path)
    (tmp_path / "more").mkdir()
    _write(tmp_path / "more" / "en-kab.tsv", "Yes\tIh\n")
    _write(tmp_path / "notes.txt", "Yes\tIh\n")
    with pytest.raises(CorpusError, match=expected) as info:
        corpus_lib.read_corpus(f"{weak},{strong},{tmp_path / extra}")
    if "twice" in expected:  # both files named, and the fix
        assert str(tmp_path / extra) in str(info.value) and "concatenate" in str(info.value)


def test_files_of_unknown_language_may_repeat_in_a_comma_list(tmp_path):
    weak, _ = _two_directories(tmp_path)
    first = _write(tmp_path / "a.tsv", "Yes\tJa\n")
    (tmp_path / "b").mkdir()
    second = _write(tmp_path / "b" / "a.tsv", "No\tNein\n")
    corpus = corpus_lib.read_corpus(f"{weak},{first},{second}")
    assert corpus.language_counts() == {"kab": 2, "oci": 1, "xx": 2}


def test_line_aligned_language_from_the_file_extensions(tmp_path):
    english = _write(tmp_path / "train.en", "one\n")
    german = _write(tmp_path / "train.de", "eins\n")
    assert corpus_lib.read_corpus(f"{english},{german}").languages == ["de"]
    assert corpus_lib.line_aligned_language("a.en", "a.zh_Hant") == "zh_Hant"
    assert corpus_lib.line_aligned_language("a.txt", "b.txt") == "xx"
    assert corpus_lib.line_aligned_language("a.en", "b.de") == "xx"  # not one NAME
    assert corpus_lib.line_aligned_language("a.en", "a.txt") == "xx"


def test_unknown_language_warns_how_to_name_the_files(tmp_path):
    path = _write(tmp_path / "pairs.tsv", "Hello\tBonjour\n")
    warning = corpus_lib.read_tsv(path).unnamed_language_warning()
    assert f"{path}: the language of 1 pairs is unknown ('xx')" in warning
    assert "en-XX.tsv (e.g. en-de.tsv)" in warning and "NAME.en and NAME.XX" in warning
    named = _write(tmp_path / "en-fr.tsv", "Hello\tBonjour\n")
    assert corpus_lib.read_tsv(named).unnamed_language_warning() is None


def test_invalid_utf8_names_file_and_line(tmp_path):
    data = "ok\tgut\nfine\tfein\n".encode("utf-8") + b"caf\xe9\tCaf\xc3\xa9\nlast\tletzte\n"
    path = _write(tmp_path / "en-fr.tsv", data)
    with pytest.raises(CorpusError) as info:
        corpus_lib.read_tsv(path)
    message = str(info.value)
    assert f"{path}:3:" in message
    assert "UTF-8" in message
    assert "byte 3" in message  # offset of \xe9 in "caf\xe9..."


def test_invalid_utf8_in_line_aligned_file(tmp_path):
    english = _write(tmp_path / "a.en", "one\ntwo\nthree\n")
    other = _write(tmp_path / "a.de", b"eins\nzwei\n\xff\xfe drei\n")
    with pytest.raises(CorpusError) as info:
        corpus_lib.read_line_aligned(english, other)
    assert f"{other}:3:" in str(info.value)


def test_line_aligned_reads_pairs(tmp_path):
    english = _write(tmp_path / "a.en", "one\ntwo\n\nfour\n")
    other = _write(tmp_path / "a.de", "eins\nzwei\ndrei\nvier")
    corpus = corpus_lib.read_line_aligned(english, other, language="de")
    assert corpus.english == ["one", "two", "four"]
    assert corpus.other == ["eins", "zwei", "vier"]
    assert corpus.languages == ["de"]
    assert corpus.stats.skipped_empty == 1
    assert corpus.sources[-1] == f"{other}:4"
    # read_corpus's "english,other" form reads the same pairs.
    via_spec = corpus_lib.read_corpus(f"{english},{other}")
    assert via_spec.english == corpus.english and via_spec.other == corpus.other


def test_line_aligned_length_mismatch_names_both_files_and_counts(tmp_path):
    english = _write(tmp_path / "train.en", "one\ntwo\nthree\n")
    other = _write(tmp_path / "train.de", "eins\nzwei\ndrei\nvier\nfünf\n")
    with pytest.raises(CorpusError) as info:
        corpus_lib.read_line_aligned(english, other)
    message = str(info.value)
    assert f"{english} has 3 lines" in message
    assert f"{other} has 5 lines" in message


def test_missing_file_raises_file_not_found(tmp_path):
    path = str(tmp_path / "en-de.tsv")
    with pytest.raises(FileNotFoundError) as info:
        corpus_lib.read_tsv(path)
    assert path in str(info.value)
    with pytest.raises(FileNotFoundError) as info:
        corpus_lib.read_corpus(path)
    assert path in str(info.value)


def test_missing_line_aligned_file(tmp_path):
    english = _write(tmp_path / "a.en", "one\n")
    missing = str(tmp_path / "a.de")
    with pytest.raises(FileNotFoundError) as info:
        corpus_lib.read_line_aligned(english, missing)
    assert missing in str(info.value)


def test_missing_directory_raises_file_not_found(tmp_path):
    directory = str(tmp_path / "no_such_dir")
    with pytest.raises(FileNotFoundError) as info:
        corpus_lib.read_directory(directory)
    assert directory in str(info.value)


def test_directory_without_pair_files(tmp_path):
    _write(tmp_path / "notes.txt", "hello\n")
    with pytest.raises(CorpusError) as info:
        corpus_lib.read_directory(str(tmp_path))
    assert "no en-XX.tsv files" in str(info.value)


@pytest.mark.parametrize("content", ["", "\n\n\n", " \n\t\n \r\n"])
def test_empty_corpus_is_an_error(tmp_path, content):
    path = _write(tmp_path / "en-de.tsv", content)
    with pytest.raises(CorpusError) as info:
        corpus_lib.read_tsv(path)
    message = str(info.value)
    assert "no usable sentence pairs" in message
    assert path in message


def test_read_directory_with_absent_language_lists_available(tmp_path):
    _write(tmp_path / "en-de.tsv", "Hello\tHallo\n")
    _write(tmp_path / "en-fr.tsv", "Hello\tBonjour\n")
    with pytest.raises(FileNotFoundError) as info:
        corpus_lib.read_directory(str(tmp_path), languages=["de", "sw"])
    message = str(info.value)
    assert "['sw']" in message
    assert "['de', 'fr']" in message
    # A present subset reads only that language.
    only_fr = corpus_lib.read_directory(str(tmp_path), languages=["fr"])
    assert only_fr.languages == ["fr"] and only_fr.other == ["Bonjour"]


def test_read_directory_sorts_languages_and_ids(tmp_path):
    _write(tmp_path / "en-zh.tsv", "a\t甲\nb\t乙\n")
    _write(tmp_path / "en-ar.tsv", "c\tج\n")
    _write(tmp_path / "en-de.tsv", "d\tD\ne\tE\nf\tF\n")
    _write(tmp_path / "README.txt", "not a corpus\n")
    corpus = corpus_lib.read_directory(str(tmp_path))
    assert corpus.languages == ["ar", "de", "zh"]
    assert corpus.language_counts() == {"ar": 1, "de": 3, "zh": 2}
    by_language = {
        lang: [o for o, i in zip(corpus.other, corpus.language_ids) if corpus.languages[i] == lang]
        for lang in corpus.languages
    }
    assert by_language == {"ar": ["ج"], "de": ["D", "E", "F"], "zh": ["甲", "乙"]}
    assert corpus.language_ids.dtype == np.int32


# --- the demo corpus ---------------------------------------------------------------


def test_demo_corpus():
    corpus = corpus_lib.read_corpus("demo")
    assert len(corpus) >= 1000
    assert len(corpus.languages) >= 5
    assert corpus.languages == sorted(corpus.languages)
    assert len(corpus.english) == len(corpus.other) == len(corpus.language_ids)
    assert len(corpus.sources) == len(corpus)
    paths = sorted(glob.glob(os.path.join(corpus_lib.demo_corpus_dir(), "en-*.tsv")))
    expected = {os.path.basename(p)[3:-4]: _count_usable(p)[0] for p in paths}
    assert sorted(expected) == corpus.languages
    # Training sees the files less the pairs held out for the alignment check.
    held_out = corpus_lib.read_demo_corpus(held_out=True).language_counts()
    trained = corpus.language_counts()
    assert all(trained[k] + held_out[k] <= expected[k] for k in expected)
    assert sum(expected.values()) == len(corpus) + corpus.stats.held_out
    # Every pair's language id matches the file its source names.
    for source, language_id in zip(corpus.sources, corpus.language_ids):
        file_name = os.path.basename(source.rsplit(":", 1)[0])
        assert file_name == f"en-{corpus.languages[language_id]}.tsv"


def test_demo_corpus_language_filter():
    corpus = corpus_lib.read_corpus("demo", languages=["fr", "de"])
    assert corpus.languages == ["de", "fr"]
    assert set(corpus.language_counts()) == {"de", "fr"}


@pytest.mark.parametrize("languages", [None, ["fr", "de"]])
def test_streamed_demo_leaves_the_alignment_check_pairs_out(languages):
    # What `prepare --corpus=demo` streams is what `read_corpus("demo")` trains
    # on: never a sentence of the held-out check pairs.
    stream = corpus_lib.stream_corpus("demo", languages=languages)
    streamed = list(stream)
    read = corpus_lib.read_corpus("demo", languages=languages)
    assert [pair.source for pair in streamed] == read.sources
    assert [(p.english, p.other) for p in streamed] == list(zip(read.english, read.other))
    assert [p.language for p in streamed] == [read.languages[i] for i in read.language_ids]
    held_out = corpus_lib.read_demo_corpus(held_out=True)
    check_sentences = set(held_out.english) | set(held_out.other)
    assert not check_sentences & {s for p in streamed for s in (p.english, p.other)}
    assert stream.stats.pairs == len(read) and stream.stats.held_out == read.stats.held_out > 0


# --- epoch_index -------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.7, 1.0])
def test_epoch_index_length_and_membership(alpha):
    for counts in ([100, 10], [60, 30, 15], [200, 200, 200, 200, 200, 200]):
        corpus = _synthetic_corpus(counts)
        index = corpus_lib.epoch_index(corpus, alpha=alpha, seed=3)
        assert len(index) == len(corpus), (counts, alpha)
        assert index.dtype == np.int64
        assert index.min() >= 0 and index.max() < len(corpus)


def test_epoch_index_length_on_demo_corpus():
    corpus = corpus_lib.read_corpus("demo")
    for alpha in (0.0, 0.7, 1.0):
        assert len(corpus_lib.epoch_index(corpus, alpha, seed=0)) == len(corpus)


@pytest.mark.parametrize("counts", [[34, 33, 33], [7, 7, 7, 1]])
def test_epoch_index_length_when_shares_do_not_round_evenly(counts):
    corpus = _synthetic_corpus(counts)
    assert len(corpus_lib.epoch_index(corpus, alpha=0.0, seed=0)) == len(corpus)


def test_epoch_index_alpha_one_keeps_natural_shares():
    corpus = _synthetic_corpus([120, 45, 9])
    index = corpus_lib.epoch_index(corpus, alpha=1.0, seed=0)
    shares = np.bincount(corpus.language_ids[index], minlength=3)
    assert shares.tolist() == [120, 45, 9]
    # With the natural mix every pair appears exactly once.
    assert sorted(index.tolist()) == list(range(len(corpus)))


def test_epoch_index_alpha_zero_makes_languages_equal(tmp_path):
    big = "".join(f"sentence {i}\tSatz {i}\n" for i in range(200))
    small = "".join(f"phrase {i}\tphrase fr {i}\n" for i in range(20))
    _write(tmp_path / "en-de.tsv", big)
    _write(tmp_path / "en-fr.tsv", small)
    corpus = corpus_lib.read_directory(str(tmp_path))
    assert corpus.language_counts() == {"de": 200, "fr": 20}
    index = corpus_lib.epoch_index(corpus, alpha=0.0, seed=1)
    assert len(index) == 220
    shares = np.bincount(corpus.language_ids[index], minlength=2)
    assert abs(int(shares[0]) - int(shares[1])) <= 1
    assert shares.sum() == 220
    # The small language is upsampled: every fr pair appears 5 or 6 times.
    fr = corpus.languages.index("fr")
    fr_members = np.flatnonzero(corpus.language_ids == fr)
    fr_counts = np.bincount(index, minlength=len(corpus))[fr_members]
    assert fr_counts.min() == 5 and fr_counts.max() == 6
    # The big language is downsampled without repeats.
    de_counts = np.bincount(index, minlength=len(corpus))[corpus.language_ids == 0]
    assert de_counts.max() == 1 and de_counts.sum() == 110


def test_epoch_index_intermediate_alpha_between_extremes():
    corpus = _synthetic_corpus([1000, 100])
    small_share = {
        alpha: np.mean(corpus.language_ids[corpus_lib.epoch_index(corpus, alpha, 0)] == 1)
        for alpha in (1.0, 0.7, 0.3, 0.0)
    }
    assert small_share[1.0] < small_share[0.7] < small_share[0.3] < small_share[0.0]
    weights = np.array([1000.0, 100.0]) ** 0.7
    assert small_share[0.7] == pytest.approx(weights[1] / weights.sum(), abs=1 / 1100)


def test_epoch_index_is_deterministic_per_seed():
    corpus = _synthetic_corpus([300, 40, 17])
    first = corpus_lib.epoch_index(corpus, alpha=0.5, seed=7)
    again = corpus_lib.epoch_index(corpus, alpha=0.5, seed=7)
    np.testing.assert_array_equal(first, again)
    others = [corpus_lib.epoch_index(corpus, alpha=0.5, seed=s) for s in (8, 9, 10)]
    assert any(not np.array_equal(first, other) for other in others)
    # Any seed gives the same number of pairs per language.
    for other in others:
        np.testing.assert_array_equal(
            np.bincount(corpus.language_ids[first]), np.bincount(corpus.language_ids[other])
        )


# --- the shared real data --------------------------------------------------------------


def test_shared_parallel_directory(shared_data):
    directory = os.path.join(shared_data, "parallel")
    corpus = corpus_lib.read_directory(directory)
    assert len(corpus.languages) == 14
    expected_languages = sorted(
        "ar bg de el es fr hi ru sw th tr ur vi zh".split()
    )
    assert corpus.languages == expected_languages
    expected_counts, skipped = {}, 0
    for language in expected_languages:
        path = os.path.join(directory, f"en-{language}.tsv")
        with open(path, "rb") as f:
            line_count = f.read().count(b"\n")
        usable, empty = _count_usable(path)
        assert usable + empty == line_count  # every file ends with a newline
        expected_counts[language] = line_count - empty
        skipped += empty
    assert corpus.language_counts() == expected_counts
    assert corpus.stats.skipped_empty == skipped
    assert len(corpus) == sum(expected_counts.values())
    assert len(corpus.stats.files) == 14
    # Sentences holding other Unicode line breaks stay single pairs.
    assert all("\n" not in s for s in corpus.english + corpus.other)
