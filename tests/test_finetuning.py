"""The per-seed loop shared by XNLI and MLQA (`training.finetuning.run_per_seed`)."""

import numpy as np
import pytest

from tf_mbalign.training.finetuning import SeedRun, run_per_seed


class _Encoder:
    def __init__(self):
        self.weights = [np.zeros(2)]

    def get_weights(self):
        return [w.copy() for w in self.weights]

    def set_weights(self, weights):
        self.weights = [w.copy() for w in weights]


class _Tokenizer:
    def after_reseed(self):
        return _Tokenizer()


def test_every_seed_starts_alike_and_scores_are_collected_per_seed():
    encoder, tokenizer = _Encoder(), _Tokenizer()
    seen = []

    def run_seed(seed, seed_tokenizer, rng):
        seen.append((encoder.weights[0].tolist(), seed_tokenizer is not tokenizer))
        encoder.weights[0] += seed + 1  # Training moves the weights.
        return SeedRun([float(seed)] * 30, {"f1": {"de": seed / 10, "en": 1.0}},
                       {"steps": 30 + seed})

    runs = run_per_seed((3, 5), encoder, tokenizer, run_seed)
    assert seen == [([0.0, 0.0], True), ([0.0, 0.0], True)]
    assert encoder.weights[0].tolist() == [0.0, 0.0]
    assert runs.scores == {"f1": {"de": [0.3, 0.5], "en": [1.0, 1.0]}}
    assert runs.training_loss == {"first_20": [3.0, 5.0], "last_20": [3.0, 5.0]}
    assert runs.sizes == {"steps": 35}


def test_weights_come_back_when_a_seed_fails_and_no_seed_is_an_error():
    encoder = _Encoder()

    def failing(seed, tokenizer, rng):
        encoder.weights[0] += 1
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run_per_seed((0,), encoder, _Tokenizer(), failing)
    assert encoder.weights[0].tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="no fine-tuning seeds"):
        run_per_seed((), encoder, _Tokenizer(), failing)
