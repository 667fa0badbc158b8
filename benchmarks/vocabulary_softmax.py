"""The TLM's softmax cross-entropy over e5-small's vocabulary: TensorFlow's op
against `tf_mbalign.modeling.vocabulary_softmax`.

The word-level loss is a softmax over all 250,002 rows of the token table at
each masked token (batch 16 x 20 predictions = 320 rows a step). Two ways,
each the loss, its gradient in the logits (weighted, as the step takes it)
and the top-1 hits of the `tlm_accuracy` metric, in one `tf.function`:

- `keras_loss_and_argmax`: `keras.losses.sparse_categorical_crossentropy`
  (TensorFlow's `SparseSoftmaxCrossEntropyWithLogits`) and an `ArgMax`, what
  the step ran before;
- `one_softmax`: `softmax_cross_entropy`, the product's function (loss,
  gradient and hits read off one `tf.nn.softmax`).

Timed alternately, `--rounds` rounds of `--calls` calls; prints the median
per call, the ratio to `keras_loss_and_argmax` and the largest difference of
the losses and gradients between the two.

    python benchmarks/vocabulary_softmax.py --json OUT.json
"""

import argparse
import statistics

import _common as common
from _common import keras, tf
from tf_mbalign.modeling.vocabulary_softmax import softmax_cross_entropy

ROWS = 320
VOCABULARY = 250_002


def _keras_loss_and_argmax(logits, labels):
    losses = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
    hits = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels), tf.float32)
    return losses, hits


VARIANTS = {"keras_loss_and_argmax": _keras_loss_and_argmax, "one_softmax": softmax_cross_entropy}


def _step(loss_fn):
    @tf.function
    def step(logits, labels, weights):
        with tf.GradientTape() as tape:
            tape.watch(logits)
            losses, hits = loss_fn(logits, labels)
            loss = tf.reduce_sum(losses * weights)
        return loss, tf.reduce_sum(hits), tape.gradient(loss, logits)
    return step


def measure(rounds, calls):
    logits = tf.random.stateless_normal([ROWS, VOCABULARY], (1, 2)) * 3.0
    labels = tf.random.stateless_uniform([ROWS], (3, 4), 0, VOCABULARY, dtype=tf.int32)
    weights = tf.fill([ROWS], 1.0 / ROWS)
    steps = {name: _step(fn) for name, fn in VARIANTS.items()}
    outputs = {name: step(logits, labels, weights) for name, step in steps.items()}
    times = {name: [] for name in steps}
    for r in range(rounds):
        order = list(steps) if r % 2 == 0 else list(reversed(steps))
        for name in order:
            seconds = common.timed(lambda: [steps[name](logits, labels, weights)[0].numpy()
                                            for _ in range(calls)])
            times[name].append(seconds / calls)
    base = statistics.median(times["keras_loss_and_argmax"])
    reference = outputs["keras_loss_and_argmax"]
    rows = []
    for name in steps:
        median = statistics.median(times[name])
        rows.append({
            "variant": name, "median_ms": 1000 * median, "ratio": median / base,
            "all_ms": [1000 * t for t in times[name]],
            "loss_difference": abs(float(outputs[name][0] - reference[0])),
            "largest_gradient_difference": float(tf.reduce_max(tf.abs(outputs[name][2]
                                                                       - reference[2]))),
        })
        print(f"{name:24s} {1000 * median:8.1f} ms  ratio {median / base:.3f}  "
              f"loss diff {rows[-1]['loss_difference']:.2e}  "
              f"gradient diff {rows[-1]['largest_gradient_difference']:.2e}", flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--json")
    args = parser.parse_args()
    machine = common.machine_info()
    common.print_machine(machine)
    rows = measure(args.rounds, args.calls)
    common.write_json(args.json, {"machine": machine, "rows_of_logits": ROWS,
                                  "vocabulary": VOCABULARY, "rounds": args.rounds,
                                  "calls": args.calls, "rows": rows})


if __name__ == "__main__":
    main()
