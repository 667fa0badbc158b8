"""The one reader of per-language directories: selection and its error messages."""

import re

import pytest

from tf_mbalign.data.language_files import FileLayout, find_language_files

PAIRS = FileLayout(re.compile(r"^en-(?P<language>[a-z]+)\.tsv$"), "en-XX.tsv",
                   expected=lambda language: f"en-{language}.tsv")
SPLITS = FileLayout(
    re.compile(r"^(?P<split>dev|test)-context-(?P<context>[a-z]+)-question-(?P<question>[a-z]+)$"),
    "dev-context-C-question-Q", expected=lambda pair: f"dev-context-{pair[0]}-question-{pair[1]}",
    example="../shared/data/mlqa", what="context-question pair")


def _touch(directory, *names):
    for name in names:
        (directory / name).write_text("x\n")
    return str(directory)


def test_all_found_files_sorted_and_requested_ones_in_order(tmp_path):
    directory = _touch(tmp_path, "en-fr.tsv", "en-de.tsv", "notes.txt", "en-DE.tsv")
    assert list(find_language_files(directory, PAIRS)) == ["de", "fr"]
    assert find_language_files(directory, PAIRS)["de"] == str(tmp_path / "en-de.tsv")
    assert list(find_language_files(directory, PAIRS, ["fr", "de"])) == ["fr", "de"]


def test_missing_languages_name_directory_files_and_what_was_found(tmp_path):
    directory = _touch(tmp_path, "en-de.tsv", "en-fr.tsv")
    with pytest.raises(FileNotFoundError) as info:
        find_language_files(directory, PAIRS, ["de", "sw", "ar"])
    message = str(info.value)
    assert message.startswith(directory + ":")
    assert "['sw', 'ar']" in message and "en-sw.tsv, en-ar.tsv" in message
    assert "found language(s) ['de', 'fr']" in message


def test_no_matching_file_raises_the_callers_type(tmp_path):
    directory = _touch(tmp_path, "README.txt")
    with pytest.raises(LookupError, match="no en-XX.tsv files"):
        find_language_files(directory, PAIRS, none_found=LookupError)
    # A requested language is missing, not "nothing found": FileNotFoundError.
    with pytest.raises(FileNotFoundError, match=r"\['de'\].*found language\(s\) \[\]"):
        find_language_files(directory, PAIRS, ["de"], none_found=LookupError)


def test_missing_directory_names_the_layout_and_an_example(tmp_path):
    with pytest.raises(FileNotFoundError,
                       match=r"nowhere: no such directory \(expected dev-context-C-question-Q "
                             r"files, e.g. \.\./shared/data/mlqa\)"):
        find_language_files(str(tmp_path / "nowhere"), SPLITS)


def test_split_group_and_tuple_keys(tmp_path):
    directory = _touch(tmp_path, "dev-context-de-question-en", "test-context-en-question-en",
                       "dev-context-en-question-en")
    files = find_language_files(directory, SPLITS)
    assert list(files) == [("de", "en"), ("en", "en")]
    assert sorted(files[("en", "en")]) == ["dev", "test"]
    with pytest.raises(FileNotFoundError) as info:
        find_language_files(directory, SPLITS, [("en", "en"), ("zh", "en")])
    assert "context-question pair(s) ['zh-en']" in str(info.value)
    assert "dev-context-zh-question-en" in str(info.value)
    assert "found context-question pair(s) ['de-en', 'en-en']" in str(info.value)
