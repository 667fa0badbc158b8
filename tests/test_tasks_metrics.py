"""Word-level metrics on hand-computed cases: entity F1 (seqeval) and POS accuracy.

The sub-word cases run the real input pipeline (`encode_words`) with a
hand-made WordPiece vocabulary and a fake model whose prediction at each
position is a fixed function of the token id, so what the evaluation reads
at the first sub-token, and what it ignores, is known exactly.
"""

import numpy as np
import pytest
from seqeval.metrics import f1_score

from tf_mbalign.tasks import intervals, tagging_metrics
from tf_mbalign.tasks.readers import TaggedSentence


def _f1(gold, predicted):
    return intervals.metric_value("f1", tagging_metrics.entity_counts(gold, predicted))


def test_partial_span_is_a_miss_on_both_sides():
    gold = [["B-PER", "I-PER", "O", "B-LOC"]]
    predicted = [["B-PER", "O", "O", "B-LOC"]]  # PER cut short: a wrong entity, a missed one
    assert tagging_metrics.entity_counts(gold, predicted).tolist() == [[1, 2, 2]]
    assert _f1(gold, predicted) == pytest.approx(2 * 1 / (2 + 2))


def test_b_i_mismatches_follow_conlleval():
    # An entity starting with I- is still an entity (seqeval's default mode):
    # same span and type as the gold B-ORG I-ORG, so it counts.
    assert tagging_metrics.entity_counts([["B-ORG", "I-ORG"]],
                                         [["I-ORG", "I-ORG"]]).tolist() == [[1, 1, 1]]
    # B- B- is two entities; B- I- over the same words is one other entity.
    assert tagging_metrics.entity_counts([["B-ORG", "B-ORG"]],
                                         [["B-ORG", "I-ORG"]]).tolist() == [[0, 1, 2]]
    # Same span, other type: no match.
    assert tagging_metrics.entity_counts([["B-PER", "I-PER"]],
                                         [["B-ORG", "I-ORG"]]).tolist() == [[0, 1, 1]]


def test_entity_at_the_end_of_a_sentence_is_closed():
    gold = [["O", "B-LOC", "I-LOC"], ["B-PER", "O"]]
    predicted = [["O", "B-LOC", "I-LOC"], ["B-PER", "O"]]
    assert tagging_metrics.entity_counts(gold, predicted).tolist() == [[1, 1, 1], [1, 1, 1]]
    # Ends one word early: the span differs.
    assert tagging_metrics.entity_counts([["O", "B-LOC", "I-LOC"]],
                                         [["O", "B-LOC", "O"]]).tolist() == [[0, 1, 1]]


def test_micro_f1_from_counts_equals_seqeval():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "B-ORG"], ["O", "B-LOC", "I-LOC"],
            ["O", "O"]]
    predicted = [["B-PER", "O", "O", "B-LOC"], ["B-ORG", "I-ORG"], ["O", "B-LOC", "I-LOC"],
                 ["B-MISC", "O"]]
    # By hand: tp = 1 + 0 + 1 + 0 = 2; predicted = 2 + 1 + 1 + 1 = 5; gold = 2 + 2 + 1 = 5.
    assert _f1(gold, predicted) == pytest.approx(2 * 2 / (5 + 5))
    assert _f1(gold, predicted) == pytest.approx(f1_score(gold, predicted))


def test_tag_counts():
    counts = tagging_metrics.tag_counts([["DET", "NOUN", "VERB"], ["PRON"]],
                                        [["DET", "VERB", "VERB"], ["NOUN"]])
    assert counts.tolist() == [[2, 3], [0, 1]]
    assert intervals.metric_value("accuracy", counts) == pytest.approx(2 / 4)
    with pytest.raises(ValueError, match="sentence 0: 1 gold tags but 2"):
        tagging_metrics.tag_counts([["DET"]], [["DET", "NOUN"]])


# === Sub-words: only the first sub-token of a word is labelled and read ===

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "Anna", "lives", "in", "Ber", "##lin",
         "New", "York", "big", "##gish"]


class FakeTuner:
    """Predicts, at each position, the tag `tag_of_token[token id]`."""

    def __init__(self, tag_of_token, labels):
        self.table = np.zeros(len(VOCAB), np.int64)
        for token, tag in tag_of_token.items():
            self.table[VOCAB.index(token)] = labels.index(tag)
        self.num_labels = len(labels)

    def predict(self, batch):
        return np.eye(self.num_labels)[self.table[batch["token_ids"]]] * 10.0


@pytest.fixture
def tokenizer(tmp_path):
    from tf_mbalign.data.tokenizers import WordPieceTokenizer

    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    return WordPieceTokenizer(str(path))


def test_sub_word_split_labels_and_reads_the_first_piece(tokenizer):
    from tf_mbalign.modeling.classifiers import IGNORED
    from tf_mbalign.tasks.tagging_tasks import NerTask, encode_words

    labels = ("B-LOC", "B-PER", "I-LOC", "O")
    sentence = TaggedSentence(("Anna", "lives", "in", "Berlin"), ("B-PER", "O", "O", "B-LOC"),
                              "x:1")
    encoded = encode_words([sentence], labels, tokenizer, max_length=32)
    ids = [VOCAB.index(t) for t in ("[CLS]", "Anna", "lives", "in", "Ber", "##lin", "[SEP]")]
    assert encoded.rows == [ids]
    assert encoded.labels[0].tolist() == [IGNORED, 1, 3, 3, 0, IGNORED, IGNORED]
    assert encoded.extra["first_positions"][0].tolist() == [1, 2, 3, 4]
    # "##lin" predicted I-LOC would extend the entity if it were read; it is not.
    tuner = FakeTuner({"Anna": "B-PER", "lives": "O", "in": "O", "Ber": "B-LOC",
                       "##lin": "B-PER"}, labels)
    task = NerTask()
    assert task.predicted_tags(tuner, encoded, labels, 0) == [["B-PER", "O", "O", "B-LOC"]]
    assert task.evaluate(tuner, encoded, labels, 0).tolist() == [[2, 2, 2]]
    # Wrong first piece, right second piece: the word is wrong.
    tuner = FakeTuner({"Anna": "B-PER", "lives": "O", "in": "O", "Ber": "O",
                       "##lin": "B-LOC"}, labels)
    assert task.evaluate(tuner, encoded, labels, 0).tolist() == [[1, 1, 2]]


def test_pos_accuracy_counts_words_not_sub_words(tokenizer):
    from tf_mbalign.tasks.tagging_tasks import PosTask, encode_words

    labels = ("ADJ", "NOUN", "PROPN", "VERB")
    sentence = TaggedSentence(("New", "York", "biggish"), ("PROPN", "PROPN", "ADJ"), "x:1")
    encoded = encode_words([sentence], labels, tokenizer, max_length=32)
    # "biggish" is two pieces; its second piece predicts a wrong tag, unread.
    tuner = FakeTuner({"New": "PROPN", "York": "NOUN", "big": "ADJ", "##gish": "VERB"}, labels)
    counts = PosTask().evaluate(tuner, encoded, labels, 0)
    assert counts.tolist() == [[2, 3]]  # 3 words, not 4 sub-tokens; York wrong


def test_words_cut_off_by_the_length_limit_count(tokenizer):
    from tf_mbalign.tasks.tagging_tasks import NerTask, PosTask, encode_words

    labels = ("B-LOC", "O")
    sentence = TaggedSentence(("in", "Berlin", "in", "Berlin"), ("O", "B-LOC", "O", "B-LOC"),
                              "x:1")
    # [CLS] in Ber ##lin in [SEP]: the last word does not fit in 6 tokens.
    encoded = encode_words([sentence], labels, tokenizer, max_length=6)
    assert len(encoded.rows[0]) == 6
    tuner = FakeTuner({"in": "O", "Ber": "B-LOC"}, labels)
    assert NerTask().evaluate(tuner, encoded, labels, 0).tolist() == [[1, 1, 2]]
    assert PosTask().evaluate(tuner, encoded, labels, 0).tolist() == [[3, 4]]


def test_retrieval_counts_by_hand():
    from tf_mbalign.tasks.runner import retrieval_counts

    foreign = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    english = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    # Cosines of foreign 1 with en 0, 1, 2: 0.8, 0.96, 0.6: every row finds its own line.
    counts = retrieval_counts(foreign, english)
    assert counts["xx_to_en"][:, 0].tolist() == [1, 1, 1]
    english[1] = [0.0, 1.0]  # en 1 = en 2 now: foreign 1 -> en 0 (0.8 > 0.6)
    counts = retrieval_counts(foreign, english)
    assert counts["xx_to_en"][:, 0].tolist() == [1, 0, 0]  # ties go to the first: row 2 -> en 1
    assert counts["en_to_xx"][:, 0].tolist() == [1, 0, 1]  # en 1 -> foreign 2, en 2 -> foreign 2
    assert counts["en_to_xx"][:, 1].tolist() == [1, 1, 1]


class _PiecesTokenizer:
    """A SentencePiece-like tokenizer: fixed pieces per word, a word-start id."""

    cls_id, sep_id, pad_id, unk_id, word_start_id = 0, 2, 1, 3, 6
    PIECES = {"中国": [6, 100], "人民": [6, 101, 102], "Hello": [200], "▁": [6]}

    def tokenize(self, strings):
        import tensorflow as tf

        return tf.ragged.constant([self.PIECES[s.decode()] for s in strings.numpy()],
                                  dtype=tf.int32)


def test_a_lone_word_start_piece_never_carries_the_label():
    """SentencePiece puts "▁" before each word tokenized on its own; for words
    it does not merge with (Chinese) the label goes to the first real piece."""
    from tf_mbalign.modeling.classifiers import IGNORED
    from tf_mbalign.tasks.tagging_tasks import encode_words

    labels = ("NOUN", "PROPN", "X")
    sentence = TaggedSentence(("中国", "人民", "Hello", "▁"), ("PROPN", "NOUN", "X", "X"), "x:1")
    encoded = encode_words([sentence], labels, _PiecesTokenizer(), max_length=32)
    # "▁" is dropped where other pieces follow; a word that is only "▁" keeps it.
    assert encoded.rows == [[0, 100, 101, 102, 200, 6, 2]]
    assert encoded.extra["first_positions"][0].tolist() == [1, 2, 4, 5]
    assert encoded.labels[0].tolist() == [IGNORED, 1, 0, IGNORED, 2, 2, IGNORED]
