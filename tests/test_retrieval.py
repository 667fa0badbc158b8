"""Tatoeba-style retrieval: the metric, the data layout, the embedder, the callback."""

import json
import os

import numpy as np
import pytest

from tf_mbalign.evaluation import retrieval
from tf_mbalign.evaluation.sentence_embedding import SentenceEmbedder

from conftest import tiny_train_config


def _write_bitext(directory, language, foreign, english):
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, f"{language}-en.{language}"), "w", encoding="utf-8") as f:
        f.write("\n".join(foreign) + "\n")
    with open(os.path.join(directory, f"{language}-en.en"), "w", encoding="utf-8") as f:
        f.write("\n".join(english) + "\n")


def _unit(rows):
    rows = np.asarray(rows, np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_retrieval_accuracy_hand_checked():
    # foreign 0 is nearest English 0 (right), foreign 1 nearest English 2 (wrong),
    # foreign 2 nearest English 2 (right): XX->en = 2/3.
    # English 0 -> foreign 0 (right); English 1 -> cosines with foreign rows
    # [0, .6, 0]... computed below: English 1 = (0, 1, 0) vs foreign 1 = (0, .6, .8): .6,
    # foreign 0: 0, foreign 2: (0, 0, 1): 0 -> foreign 1 (right); English 2 = (0, 0, 1)
    # vs foreign 1: .8, foreign 2: 1 -> foreign 2 (right): en->XX = 3/3.
    foreign = _unit([[1, 0, 0], [0, 0.6, 0.8], [0, 0, 1]])
    english = _unit([[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    xx_to_en, en_to_xx = retrieval.retrieval_accuracy(foreign, english)
    assert xx_to_en == pytest.approx(2 / 3)
    assert en_to_xx == pytest.approx(1.0)


def test_any_language_with_the_layout_is_read(tmp_path):
    _write_bitext(tmp_path, "sw", ["habari", "asante"], ["hello", "thanks"])
    _write_bitext(tmp_path, "de", ["hallo"], ["hello"])
    data = retrieval.read_bitext_dir(str(tmp_path))
    assert sorted(data) == ["de", "sw"]
    assert data["sw"].foreign == ["habari", "asante"] and data["sw"].english == ["hello", "thanks"]
    assert list(retrieval.read_bitext_dir(str(tmp_path), ["sw"])) == ["sw"]
    with pytest.raises(FileNotFoundError, match="fr-en.fr"):
        retrieval.read_bitext_dir(str(tmp_path), ["fr"])


def test_bad_bitext_files_are_named(tmp_path):
    _write_bitext(tmp_path, "de", ["eins", "zwei"], ["one"])
    with pytest.raises(ValueError, match=r"de-en\.de has 2 lines but .*de-en\.en has 1"):
        retrieval.read_bitext_dir(str(tmp_path))
    _write_bitext(tmp_path, "de", ["eins", " "], ["one", "two"])
    with pytest.raises(ValueError, match=r"de-en\.de:2: empty line"):
        retrieval.read_bitext_dir(str(tmp_path))


# tolerance: other batch shapes, unit vectors: atol 1e-5 ~100 ulps.
@pytest.mark.numerics
@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_embedder_batching_does_not_change_vectors(pooling):
    from tf_mbalign.modeling import encoders

    bundle = encoders.load_encoder("tiny:demo", dropout=0.0)
    sentences = ["a", "a much longer sentence than the first one", "mittel lang", "中文句子",
                 "x y z"] * 3
    batched = SentenceEmbedder(bundle.encoder, bundle.tokenizer, pooling, batch_size=4)(sentences)
    one_by_one = np.concatenate([
        SentenceEmbedder(bundle.encoder, bundle.tokenizer, pooling, batch_size=1)([s])
        for s in sentences])
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(batched[0], batched[1])


# tolerance: the same batches, graphs fused differently, unit vectors: atol 1e-5 ~100 ulps.
@pytest.mark.numerics
def test_each_pooling_in_one_pass_matches_one_pooling_at_a_time():
    from tf_mbalign.modeling import encoders

    bundle = encoders.load_encoder("tiny:demo", dropout=0.0)
    sentences = ["a", "a much longer sentence than the first one", "mittel lang", "x y z"] * 3
    both = SentenceEmbedder(bundle.encoder, bundle.tokenizer, batch_size=4).each_pooling(
        sentences)
    assert set(both) == {"cls", "mean"}
    for pooling, vectors in both.items():
        alone = SentenceEmbedder(bundle.encoder, bundle.tokenizer, pooling, batch_size=4)(
            sentences)
        # The same batches through the same encoder; float32 kernels may fuse the two
        # graphs differently: 1e-5, as batching above.
        np.testing.assert_allclose(vectors, alone, atol=1e-5)
    assert not np.allclose(both["cls"], both["mean"])


def test_alignment_training_logs_retrieval_per_language(tmp_path):
    from tf_mbalign.evaluation.retrieval_callback import RetrievalCallback
    from tf_mbalign.training.trainer import AlignmentRun

    data = tmp_path / "tatoeba"
    _write_bitext(data, "de", ["Hallo Welt", "Guten Morgen", "Danke"],
                  ["Hello world", "Good morning", "Thanks"])
    _write_bitext(data, "fr", ["Bonjour", "Merci"], ["Hello", "Thanks"])
    config = tiny_train_config(tmp_path / "run", train_steps=4, retrieval_data=str(data),
                               retrieval_every=2)
    AlignmentRun(config, log=lambda *_: None,
                 callbacks=[RetrievalCallback.for_alignment_run(config)]).run()
    lines = [json.loads(x) for x in open(tmp_path / "run" / "metrics.jsonl")]
    evaluated = [x for x in lines if "retrieval/xx_to_en/de" in x]
    assert [x["step"] for x in evaluated] == [2, 4]
    for row in evaluated:
        for key in ("retrieval/xx_to_en/fr", "retrieval/en_to_xx/de", "retrieval/xx_to_en/average"):
            assert 0.0 <= row[key] <= 1.0
    events = [f for f in os.listdir(tmp_path / "run" / "tensorboard") if "tfevents" in f]
    tags = set()
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    for name in events:
        for event in EventFileLoader(str(tmp_path / "run" / "tensorboard" / name)).Load():
            tags.update(v.tag for v in event.summary.value)
    assert {"retrieval/xx_to_en/de", "retrieval/en_to_xx/fr"} <= tags


def test_missing_retrieval_data_fails_before_training(tmp_path):
    from tf_mbalign.evaluation.retrieval_callback import RetrievalCallback

    config = tiny_train_config(tmp_path / "run", retrieval_data=str(tmp_path / "nowhere"))
    # The binary builds its callbacks before the run: the data is read there.
    with pytest.raises(FileNotFoundError, match="nowhere"):
        RetrievalCallback.for_alignment_run(config)


def test_real_tatoeba_layout(shared_data):
    data = retrieval.read_bitext_dir(os.path.join(shared_data, "tatoeba"))
    assert sorted(data) == ["ar", "de", "es", "fr", "hi", "ru", "zh"]
    assert all(len(b.foreign) == len(b.english) == 1000 for b in data.values())


@pytest.mark.slow
def test_e5_retrieval_on_real_tatoeba(shared_data):
    """The embedded e5-small finds most German translations (a broken embedder would not)."""
    from tf_mbalign.modeling import encoders

    bundle = encoders.load_encoder("e5-small", dropout=0.0)
    data = retrieval.read_bitext_dir(os.path.join(shared_data, "tatoeba"), ["de"], 200)
    embedder = SentenceEmbedder(bundle.encoder, bundle.tokenizer, "mean", max_length=64)
    result = retrieval.evaluate_retrieval(embedder, data)["languages"]["de"]
    print(f"e5-small Tatoeba de (200 pairs, mean pooling): {result}")
    assert result["xx_to_en"] > 0.8 and result["en_to_xx"] > 0.8


def test_callback_in_model_fit_counts_global_steps(tmp_path):
    import keras

    from tf_mbalign.evaluation.retrieval_callback import RetrievalCallback
    from tf_mbalign.modeling import encoders

    bundle = encoders.load_encoder("tiny:demo", dropout=0.0)
    _write_bitext(tmp_path / "data", "de", ["Hallo", "Danke"], ["Hello", "Thanks"])
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile("sgd", "mse")
    callback = RetrievalCallback(str(tmp_path / "data"), bundle.tokenizer,
                                 str(tmp_path / "tb"), every_n_steps=3, encoder=bundle.encoder)
    model.fit(np.zeros((8, 4)), np.zeros((8, 1)), batch_size=2, epochs=2, verbose=0,
              callbacks=[callback])
    # 4 batches an epoch, 2 epochs = steps 1..8: evaluated at 3 and 6 (not per epoch index).
    assert [h["step"] for h in callback.history] == [3, 6]
    assert os.listdir(tmp_path / "tb")
