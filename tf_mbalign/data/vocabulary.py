"""Small WordPiece vocabularies built from text, for tiny test encoders."""

import os

from tf_mbalign.atomic_files import write_text_atomic

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def character_wordpiece_vocab(texts):
    """A character-level WordPiece vocabulary: specials, each `c`, each `##c`.

    Every text the characters came from tokenizes without [UNK].
    """
    chars = sorted({c for text in texts for c in text if not c.isspace()})
    return list(SPECIAL_TOKENS) + chars + [f"##{c}" for c in chars]


def write_vocab(tokens, path):
    write_text_atomic(path, "\n".join(tokens) + "\n")
    return path


def demo_vocab_path(cache_dir=None):
    """A character vocabulary of the demo corpus, cached on disk."""
    from tf_mbalign.data import corpus as corpus_lib

    cache_dir = cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "tf_mbalign")
    path = os.path.join(cache_dir, "demo_char_vocab.txt")
    if not os.path.exists(path):
        demo = corpus_lib.read_corpus("demo")
        write_vocab(character_wordpiece_vocab(demo.english + demo.other), path)
    return path
