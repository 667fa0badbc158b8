"""Tatoeba XX->en top-1 retrieval of the unaligned e5-small vs an aligned export.

A quick check that an alignment run moved sentence representations the right
way (the full evaluation suite is separate). Both models see the same
sentences; [CLS] (what MoCo trains by default) and mean pooling are reported.

Usage:
  python benchmarks/retrieval_before_after.py runs/align/export \
      [--data ../shared/data/tatoeba] [--pairs 200]
"""

import argparse
import os

from tf_mbalign import runtime  # noqa: E402

runtime.set_tensorflow_environment_defaults()  # before TensorFlow loads

import numpy as np
import tensorflow as tf

from tf_mbalign.data.data_root import default_data_root
from tf_mbalign.export import encoder_export
from tf_mbalign.modeling import encoders

LANGUAGES = ["ar", "de", "es", "fr", "hi", "ru", "zh"]


def embed(model, tokenizer, sentences, pooling, max_length=64, batch=64):
    out = []
    for i in range(0, len(sentences), batch):
        ids = tokenizer.tokenize(tf.constant(sentences[i:i + batch]))[:, : max_length - 2]
        lengths = ids.row_lengths() + 2
        rows = tf.shape(lengths)[0]
        x = tf.concat([tf.fill([rows, 1], tokenizer.cls_id), ids.to_tensor(tokenizer.pad_id),
                       tf.fill([rows, 1], tokenizer.pad_id)], 1)
        width = tf.shape(x)[1]
        mask = tf.sequence_mask(lengths, width, tf.int32)
        x = tf.where(tf.one_hot(lengths - 1, width, dtype=tf.int32) == 1, tokenizer.sep_id, x)
        x = tf.where(mask == 1, x, tokenizer.pad_id)
        hidden = model({"token_ids": x, "segment_ids": tf.zeros_like(x),
                        "padding_mask": mask})["sequence_output"].numpy()
        m = mask.numpy()[:, :, None]
        v = hidden[:, 0] if pooling == "cls" else (hidden * m).sum(1) / m.sum(1)
        out.append(v / np.linalg.norm(v, axis=1, keepdims=True))
    return np.concatenate(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("export_dir")
    parser.add_argument("--data", default=os.path.join(default_data_root(), "tatoeba"))
    parser.add_argument("--pairs", type=int, default=200)
    args = parser.parse_args()
    bundle = encoders.load_embedded_e5(dropout=0.0)
    models = {"unaligned": bundle.encoder, "aligned": encoder_export.load_encoder(args.export_dir)}
    for pooling in ("cls", "mean"):
        means = {}
        for name, model in models.items():
            accuracies = []
            for lang in LANGUAGES:
                with open(os.path.join(args.data, f"{lang}-en.{lang}"), encoding="utf-8") as f:
                    xx = f.read().split("\n")[: args.pairs]
                with open(os.path.join(args.data, f"{lang}-en.en"), encoding="utf-8") as f:
                    en = f.read().split("\n")[: args.pairs]
                a = embed(model, bundle.tokenizer, xx, pooling)
                b = embed(model, bundle.tokenizer, en, pooling)
                accuracies.append(float(np.mean(np.argmax(a @ b.T, 1) == np.arange(len(xx)))))
            means[name] = float(np.mean(accuracies))
            row = " ".join(f"{l}={x:.3f}" for l, x in zip(LANGUAGES, accuracies))
            print(f"{pooling:4s} {name:9s} {row} mean={means[name]:.3f}", flush=True)
        print(f"{pooling:4s} aligned/unaligned mean top-1: "
              f"{means['aligned'] / means['unaligned']:.3f}", flush=True)


if __name__ == "__main__":
    main()
