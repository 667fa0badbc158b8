"""The suite's file readers: formats, test-file discovery, errors that name file:line."""

import os

import pytest

from tf_mbalign.tasks import readers


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_pairs(tmp_path):
    path = _write(tmp_path / "p.tsv", "A man.\tA person.\tentailment\n\nIt rains.\tDry.\t"
                                      "contradiction\n")
    examples = readers.read_pairs(path)
    assert [(e.premise, e.label) for e in examples] == [("A man.", "entailment"),
                                                        ("It rains.", "contradiction")]
    assert examples[1].source == f"{path}:3"
    with pytest.raises(ValueError, match=r"p2.tsv:2: expected premise<TAB>hypothesis<TAB>label"):
        readers.read_pairs(_write(tmp_path / "p2.tsv", "a\tb\tneutral\na\tb\n"))
    with pytest.raises(ValueError, match=r"p3.tsv:1: label 'maybe'"):
        readers.read_pairs(_write(tmp_path / "p3.tsv", "a\tb\tmaybe\n"))
    with pytest.raises(ValueError, match=r"p4.tsv: no examples"):
        readers.read_pairs(_write(tmp_path / "p4.tsv", "\n"))


def test_tagged_sentences(tmp_path):
    path = _write(tmp_path / "t.tsv", "Anna\tB-PER\nlives\tO\n\n\nNew\tB-LOC\nYork\tI-LOC")
    sentences = readers.read_tagged(path, entity_tags=True)
    assert [s.words for s in sentences] == [("Anna", "lives"), ("New", "York")]
    assert [s.tags for s in sentences] == [("B-PER", "O"), ("B-LOC", "I-LOC")]
    assert sentences[1].source == f"{path}:5"
    with pytest.raises(ValueError, match=r"t2.tsv:3: expected token<TAB>tag, found 3"):
        readers.read_tagged(_write(tmp_path / "t2.tsv", "a\tO\n\nb\tO\tx\n"))
    with pytest.raises(ValueError, match=r"t3.tsv:2: tag 'PER' is not O, B-TYPE or I-TYPE"):
        readers.read_tagged(_write(tmp_path / "t3.tsv", "a\tO\nb\tPER\n"), entity_tags=True)
    assert readers.read_tagged(_write(tmp_path / "t4.tsv", "a\tPROPN\n"))[0].tags == ("PROPN",)
    with pytest.raises(ValueError, match=r"t5.tsv:1: empty token"):
        readers.read_tagged(_write(tmp_path / "t5.tsv", " \tO\n"))


def test_topics(tmp_path):
    path = _write(tmp_path / "s.tsv", "index_id\tcategory\ttext\n7\tsports\tWe won.\n")
    examples = readers.read_topics(path)
    assert [(e.category, e.text, e.source) for e in examples] == [("sports", "We won.",
                                                                   f"{path}:2")]
    with pytest.raises(ValueError, match=r"s2.tsv:2: expected index_id<TAB>category<TAB>text"):
        readers.read_topics(_write(tmp_path / "s2.tsv", "1\tsports\tA.\n2\tsports\n"))
    with pytest.raises(ValueError, match=r"s.tsv:2: label 'sports' does not occur in the "
                                         r"training file train.tsv"):
        readers.check_labels(examples, lambda e: [e.category], {"travel"}, "train.tsv")


def test_test_files_are_the_languages_present(tmp_path):
    for name in ("test-de.tsv", "dev-de.tsv", "dev-sw.tsv", "train-en.tsv", "test-pt_BR.tsv",
                 "notes.txt"):
        _write(tmp_path / name, "x\tO\n")
    found = readers.test_files(str(tmp_path))
    assert found == {"de": os.path.join(str(tmp_path), "test-de.tsv"),
                     "sw": os.path.join(str(tmp_path), "dev-sw.tsv"),
                     "pt_BR": os.path.join(str(tmp_path), "test-pt_BR.tsv")}
    assert list(found) == ["de", "pt_BR", "sw"]  # by language, whatever the split
    assert readers.test_files(str(tmp_path / "absent")) == {}


def test_topic_test_category_unseen_in_training_is_named(tmp_path):
    from tf_mbalign.tasks.budgets import TINY
    from tf_mbalign.tasks.sentence_tasks import TopicTask

    root = tmp_path / "sib200"
    root.mkdir()
    _write(root / "train-en.tsv", "1\tsports\tWe won.\n2\ttravel\tWe flew.\n")
    _write(root / "test-de.tsv", "1\tsports\tWir gewannen.\n2\thealth\tIss Obst.\n")
    task = TopicTask()
    files = task.find_files(str(tmp_path))
    assert files["select"] is None and list(files["tests"]) == ["de"]
    with pytest.raises(ValueError, match=r"test-de.tsv:2: label 'health' does not occur"):
        task.read_data(files, TINY.task("topic"))


def test_real_files_parse(shared_data):
    from tf_mbalign.tasks import budgets, registry

    for name, task in registry.TASKS.items():
        files = task.find_files(shared_data)
        if files is None:
            continue
        assert "en" in files["tests"] and len(files["tests"]) > 1, name
        data = task.read_data(files, budgets.CPU.task(name))
        limit = budgets.CPU.task(name).max_train_examples
        assert len(data.train) == (limit or len(data.train))
        assert all(len(rows) > 0 for rows in data.tests.values())
    ner = registry.TASKS["ner"].read_data(registry.TASKS["ner"].find_files(shared_data),
                                          budgets.TINY.task("ner"))
    assert ner.labels == ("B-LOC", "B-ORG", "B-PER", "I-LOC", "I-ORG", "I-PER", "O")
