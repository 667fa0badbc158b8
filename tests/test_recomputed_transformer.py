"""`recompute_activations`: a transformer layer that runs its forward pass again
in the backward pass gives the same outputs, gradients and dropout masks as
one that keeps its activations, and does recompute."""

import io
import zipfile

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import largest_relative_difference
from tf_mbalign.data import corpus as corpus_lib
from tf_mbalign.data import pipeline
from tf_mbalign.modeling import encoders
from tf_mbalign.modeling.aligner import Aligner
from tf_mbalign.modeling.bert_encoder import dropout_rng_states
from tf_mbalign.modeling.recomputed_transformer import TransformerEncoder
from tf_mbalign.modeling.sixteen_bit_dropout import set_dropout_mask_bits

# Relative to each array's own largest entry, however small (no floor).
_FLOOR = 1e-30
_PIPELINE = pipeline.PipelineConfig(max_seq_length=48, max_sentence_length=24,
                                    max_predictions_per_seq=8)


def _layer(dropout=0.3):
    keras.utils.set_random_seed(3)
    layer = TransformerEncoder(num_heads=2, intermediate_dim=32, dropout=dropout,
                                           name="layer")
    inputs = tf.random.stateless_normal((4, 6, 16), seed=(1, 2))
    mask = tf.constant([[1] * 6, [1] * 4 + [0] * 2, [1] * 6, [1] * 3 + [0] * 3])
    layer(inputs, padding_mask=mask)  # builds
    return layer, inputs, mask


def _seed_states(layer):
    return [d.seed_generator.state for d in layer.active_dropouts()]


def _loss_and_gradients(layer, inputs, mask, call=None):
    """Loss, d loss / d (inputs, weights), and the seed states after, from
    the same starting seed states every time."""
    call = call or (lambda x: layer(x, padding_mask=mask, training=True))
    start = [s.numpy() for s in _seed_states(layer)]

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            outputs = call(x)
            loss = tf.reduce_sum(tf.sin(outputs))  # a loss whose gradient depends on the outputs
        return (outputs, tape.gradient(loss, [x] + layer.trainable_variables),
                [s.value for s in _seed_states(layer)])

    outputs, gradients, states_after = step(inputs)
    for state, value in zip(_seed_states(layer), start):
        state.assign(value)
    return outputs.numpy(), [g.numpy() for g in gradients], [s.numpy() for s in states_after]


# tolerance: the same ops on the same inputs in another graph; oneDNN may fuse them otherwise:
# 1e-5 of each gradient's largest entry (~100 float32 ulps over sums of <= 32 terms).
@pytest.mark.numerics
@pytest.mark.parametrize("dropout_mask_bits", [32, 16])
def test_a_recomputed_layer_gives_the_gradients_and_masks_of_a_plain_one(dropout_mask_bits):
    layer, inputs, mask = _layer()
    set_dropout_mask_bits(layer, dropout_mask_bits)
    assert len(layer.active_dropouts()) == 3  # attention, after attention, after feed-forward
    outputs, gradients, states = _loss_and_gradients(layer, inputs, mask)
    layer.recompute_activations = True
    outputs_r, gradients_r, states_r = _loss_and_gradients(layer, inputs, mask)

    np.testing.assert_allclose(outputs_r, outputs, rtol=0, atol=1e-5 * np.abs(outputs).max())
    assert largest_relative_difference(gradients, gradients_r, floor=_FLOOR) < 1e-5
    # Each generator advanced as a plain call advances it: the random stream
    # of a run is the same with recomputation on or off.
    for after, after_r in zip(states, states_r):
        np.testing.assert_array_equal(after_r, after)
    # Dropout is on: the masks matter (training and inference outputs differ).
    inference = layer(inputs, padding_mask=mask, training=False).numpy()
    assert np.abs(inference - outputs).max() > 100 * 1e-5 * np.abs(outputs).max()


# tolerance: the control must differ by far more than the test's bound (1e-5 relative).
@pytest.mark.numerics
def test_plain_recompute_grad_redraws_dropout_masks_so_its_gradients_differ():
    """Why the layer draws its seeds itself: `tf.recompute_grad` around the
    keras-hub call (what `keras.RematScope` does on TensorFlow) recomputes
    with new masks, so its gradients are not the loss's."""
    layer, inputs, mask = _layer()
    _, gradients, _ = _loss_and_gradients(layer, inputs, mask)
    plain = tf.recompute_grad(lambda x: keras_hub_call(layer, x, mask))
    _, gradients_plain, _ = _loss_and_gradients(layer, inputs, mask, call=plain)
    assert largest_relative_difference(gradients, gradients_plain, floor=_FLOOR) > 1e-2


def keras_hub_call(layer, x, mask):
    return super(TransformerEncoder, layer).call(x, padding_mask=mask,
                                                              training=True)


def test_a_recomputed_training_call_runs_the_layer_twice_and_inference_once():
    layer, inputs, mask = _layer()

    def matmuls(recompute, training):
        layer.recompute_activations = recompute

        @tf.function
        def step(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = tf.reduce_sum(layer(x, padding_mask=mask, training=training))
            return tape.gradient(loss, x)

        graph = step.get_concrete_function(inputs).graph
        return sum(op.type in ("MatMul", "BatchMatMulV2", "Einsum")
                   for op in graph.get_operations())

    # Recomputation adds the forward's matmuls once more to the backward's.
    plain = matmuls(False, True)
    assert matmuls(True, True) > plain
    # Without training there is nothing to recompute for: the plain graph.
    assert matmuls(True, False) == matmuls(False, False)


def _tiny_aligner_and_batch(recompute):
    keras.utils.set_random_seed(5)
    bundle = encoders.load_encoder("tiny:demo", dropout=0.2)
    aligner = Aligner(bundle.encoder, contrastive_negatives="in_batch",
                      recompute_activations=recompute)
    dataset = pipeline.build_dataset(corpus_lib.read_corpus("demo"), bundle.tokenizer,
                                     _PIPELINE, 8)
    return aligner, next(iter(dataset))


# tolerance: as the layer test, through two layers, TLM and the in-batch loss: 1e-4 of each
# gradient's largest entry, 1e-5 relative on the loss.
@pytest.mark.numerics
def test_an_aligner_with_recomputation_has_the_losses_and_gradients_of_one_without():
    results = []
    for recompute in (False, True):
        aligner, batch = _tiny_aligner_and_batch(recompute)
        assert all(layer.recompute_activations == recompute
                   for layer in aligner.encoder.transformer_layers)
        variables = aligner.trained_variables(True)

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                losses, _ = aligner.compute_losses(batch, aligner.momentum_keys(batch), training=True)
            return losses, tape.gradient(losses["loss"], variables)

        losses, gradients = step()
        # Variables the losses do not reach (e.g. the pooler under mean pooling) get None.
        results.append((losses, [None if g is None else tf.convert_to_tensor(g).numpy()
                                 for g in gradients],
                        [s.numpy() for s in dropout_rng_states(aligner)]))
    (plain_losses, plain_gradients, plain_states), (losses, gradients, states) = results
    for name in ("loss", "tlm_loss", "moco_loss"):
        assert float(losses[name]) == pytest.approx(float(plain_losses[name]), rel=1e-5)
    assert [g is None for g in gradients] == [g is None for g in plain_gradients]
    reached = [(p, g) for g, p in zip(gradients, plain_gradients) if p is not None]
    assert len(reached) > 10
    assert largest_relative_difference(*zip(*reached), floor=_FLOOR) < 1e-4
    for state, plain_state in zip(states, plain_states):
        np.testing.assert_array_equal(state, plain_state)


def test_recomputation_is_not_part_of_the_encoders_config():
    aligner, _ = _tiny_aligner_and_batch(True)
    config = aligner.encoder.get_config()
    assert "recompute_activations" not in config
    assert aligner.get_config()["recompute_activations"] is True


def _keras_file_weight_paths(model, path):
    model.save(path)
    with zipfile.ZipFile(path) as archive, h5py.File(io.BytesIO(archive.read("model.weights.h5"))) as f:
        paths = []
        f.visititems(lambda name, item: paths.append(name) if isinstance(item, h5py.Dataset) else None)
    return sorted(p for p in paths if "transformer_encoder" in p)


def test_the_layers_keras_file_weight_paths_are_keras_hubs(tmp_path):
    """A `.keras` file names a list's layers by class: the recomputable layer
    must write its weights where keras-hub's layer does, or every encoder
    exported before it stops loading."""
    import keras_hub

    from tf_mbalign.modeling.bert_encoder import BertEncoder

    shape = dict(vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=8, intermediate_dim=16,
                 max_sequence_length=16)
    ours = _keras_file_weight_paths(BertEncoder(**shape), str(tmp_path / "ours.keras"))
    theirs = _keras_file_weight_paths(keras_hub.models.BertBackbone(**shape),
                                      str(tmp_path / "keras_hub.keras"))
    assert len(ours) > 20 and ours == theirs


def test_a_run_resumes_with_recomputation_switched(tmp_path):
    """Recomputation adds no variable and draws what a plain call draws, so it
    is not among the checkpoint-shaping flags: a run resumes with it on or off."""
    from conftest import tiny_train_config
    from tf_mbalign.training.trainer import AlignmentRun

    def run(steps, recompute):
        config = tiny_train_config(tmp_path / "run", train_steps=steps, head_warmup_steps=1,
                                   dropout=0.1, recompute_activations=recompute)
        alignment_run = AlignmentRun(config, log=lambda *_: None)
        alignment_run.run()
        return alignment_run

    first = run(1, True)
    assert all(layer.recompute_activations for layer in first.aligner.encoder.transformer_layers)
    resumed = run(2, False)
    assert int(resumed.step.numpy()) == 3  # 1 head warm-up step + 2 encoder steps
    assert not any(layer.recompute_activations
                   for layer in resumed.aligner.encoder.transformer_layers)
