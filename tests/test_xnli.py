"""XNLI: the data protocol, the three settings, the accuracy, a tiny end-to-end run."""

import os

import numpy as np
import pytest

from tf_mbalign.tasks import xnli

ROWS = {
    "en": [("A man sleeps.", "A person rests.", "entailment"),
           ("A dog runs.", "A cat sleeps.", "neutral"),
           ("It rains.", "It is dry.", "contradiction"),
           ("Kids play.", "Children play.", "entailment"),
           ("She sings.", "She is silent.", "contradiction"),
           ("He reads.", "He reads a book.", "neutral")],
}
ROWS["de"] = [(f"[de] {p}", f"[de] {h}", y) for p, h, y in ROWS["en"]]
ROWS["zh"] = [(f"[zh] {p}", f"[zh] {h}", y) for p, h, y in ROWS["en"]]


def _write(directory, rows=ROWS):
    os.makedirs(directory, exist_ok=True)
    for lang, lines in rows.items():
        with open(os.path.join(directory, f"dev-{lang}.tsv"), "w", encoding="utf-8") as f:
            f.write("".join(f"{p}\t{h}\t{y}\n" for p, h, y in lines))
    return str(directory)


def test_mini_protocol_split(tmp_path):
    data = xnli.read_xnli_dir(_write(tmp_path))
    # Rows 0, 1, 3, 4 train (i % 3 != 2); rows 2, 5 test.
    assert [r[0] for r in data.train["en"]] == ["A man sleeps.", "A dog runs.", "Kids play.",
                                                "She sings."]
    assert [r[0] for r in data.test["de"]] == ["[de] It rains.", "[de] He reads."]
    assert [r[2] for r in data.test["zh"]] == [2, 1]
    assert data.test["de"][0][3].endswith("dev-de.tsv:3")


def test_bad_files_are_named(tmp_path):
    rows = dict(ROWS, de=[*ROWS["de"][:2], ("x", "y", "maybe"), *ROWS["de"][3:]])
    with pytest.raises(ValueError, match=r"dev-de.tsv:3: label 'maybe'"):
        xnli.read_xnli_dir(_write(tmp_path / "a", rows))
    swapped = dict(ROWS, de=[ROWS["de"][1], ROWS["de"][0], *ROWS["de"][2:]])
    with pytest.raises(ValueError, match=r"dev-de.tsv:1: label neutral differs .*not line-aligned"):
        xnli.read_xnli_dir(_write(tmp_path / "b", swapped))
    with pytest.raises(FileNotFoundError, match="English"):
        xnli.read_xnli_dir(_write(tmp_path / "c", {"de": ROWS["de"]}))


def test_settings_use_only_training_rows(tmp_path):
    data = xnli.read_xnli_dir(_write(tmp_path))
    rng = np.random.RandomState(0)
    zero_shot = xnli.training_examples(data, "zero_shot", ["en", "de", "zh"], 0.5, rng)
    assert [e[0] for e in zero_shot] == [r[0] for r in data.train["en"]]
    translate = xnli.training_examples(data, "translate_train", ["en", "de", "zh"], 0.5, rng)
    assert len(translate) == 3 * 4
    test_premises = {r[0] for rows in data.test.values() for r in rows}
    assert not test_premises & {e[0] for e in translate}
    untouched = xnli.training_examples(data, "code_switch", ["en", "de", "zh"], 0.0, rng)
    assert untouched == translate
    switched = xnli.training_examples(data, "code_switch", ["en", "de", "zh"], 1.0, rng)
    for (p, h, y), (p0, h0, y0) in zip(switched, translate):
        assert y == y0
        if p0.startswith("["):  # de / zh example: both segments become the row's English
            assert not p.startswith("[") and p0.endswith(p) and h0.endswith(h)
        else:  # English example: both segments become the same row in de or zh
            assert p.startswith("[") and p.endswith(p0) and h.endswith(h0)


class _FakeTuner:
    """Predicts label = (number of tokens) % 3, so accuracy can be worked out by hand."""

    def predict(self, inputs):
        lengths = inputs["padding_mask"].sum(axis=1)
        return np.eye(3)[lengths % 3]


def test_accuracy_by_hand_survives_length_sorted_batches():
    rows = [[1] * n for n in (5, 3, 4, 7, 6, 2)]  # predicted labels: 2, 0, 1, 1, 0, 2
    gold = [2, 0, 0, 1, 1, 1]  # right: rows 0, 1, 3 -> 3/6
    assert xnli.accuracy(_FakeTuner(), rows, gold, pad_id=0, batch_size=4) == pytest.approx(0.5)
    assert xnli.predict_labels(_FakeTuner(), rows, 0, 2).tolist() == [2, 0, 1, 1, 0, 2]


def test_tiny_run_reports_every_language_and_seed(tmp_path):
    from tf_mbalign.evaluation.trained_encoders import load_trained_encoder
    from tf_mbalign.training.finetuning import FinetuneConfig

    data = xnli.read_xnli_dir(_write(tmp_path))
    trained = load_trained_encoder("tiny:demo", dropout=0.0)
    before = [w.copy() for w in trained.encoder.get_weights()]
    report = xnli.run_xnli(trained, data, xnli.XnliConfig(setting="code_switch", seeds=(0, 1),
                                                          max_seq_length=32),
                           FinetuneConfig(max_steps=3, batch_size=4), log=lambda *_: None,
                           progress=False)
    assert sorted(report["metrics"]["accuracy"]) == ["de", "en", "zh"]
    for stats in report["metrics"]["accuracy"].values():
        assert len(stats["values"]) == 2 and all(v in (0.0, 0.5, 1.0) for v in stats["values"])
    assert report["steps"] == 3 and report["train_examples"] == 12
    # Each seed starts from the same encoder, and the caller gets it back unchanged.
    for a, b in zip(before, trained.encoder.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_real_xnli_mini(shared_data):
    data = xnli.read_xnli_dir(os.path.join(shared_data, "xnli"))
    assert sorted(data.train) == ["ar", "de", "en", "es", "fr", "hi", "ru", "zh"]
    assert {len(rows) for rows in data.train.values()} == {1660}
    assert {len(rows) for rows in data.test.values()} == {830}


def test_tfds_examples_become_aligned_rows():
    """The TFDS xnli / xtreme_xnli feature layout (as tfds.as_numpy yields it)."""
    example = {
        "premise": {"en": b"A man sleeps.", "de": "Ein Mann schl\u00e4ft.".encode(),
                    "zh": "\u4e00\u4e2a\u4eba\u7761\u89c9\u3002".encode()},
        "hypothesis": {"language": np.array([b"de", b"en", b"zh"]),
                       "translation": np.array(["Jemand ruht.".encode(), b"Someone rests.",
                                                "\u6709\u4eba\u4f11\u606f\u3002".encode()])},
        "label": np.int64(0),
    }
    rows = xnli.translated_rows(example, ["en", "de"], "xnli:test:7")
    assert rows == [("A man sleeps.", "Someone rests.", 0, "xnli:test:7"),
                    ("Ein Mann schl\u00e4ft.", "Jemand ruht.", 0, "xnli:test:7")]
    with pytest.raises(ValueError, match="xnli:test:7: no fr translation"):
        xnli.translated_rows(example, ["en", "fr"], "xnli:test:7")
