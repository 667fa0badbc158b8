"""The TF-Hub BERT encoder contract for an aligned `BertEncoder`.

Called with a dict of int32 [batch, seq] tensors

    input_word_ids, input_mask, input_type_ids

the reloaded object returns

    pooled_output [batch, width], sequence_output [batch, seq, width],
    encoder_outputs (one [batch, seq, width] per layer), default (= pooled)

with `training=False` and `training=True` both traced, and `.variables`,
`.trainable_variables`, `.regularization_losses` for fine-tuning, as TF-Hub's
mBERT / LaBSE encoders do. `.mlm` (when an MLM head is given) takes the same
dict plus `masked_lm_positions` [batch, n] and adds `mlm_logits`
[batch, n, vocab]. Signatures for `saved_model_cli` / TF Serving:
`serving_default` (the three inputs -> pooled_output, sequence_output,
default, encoder_output_<i>); Keras' `TFSMLayer` uses the `serve` /
`serve_training` functions (a dict in, as above).
"""

import tensorflow as tf

from tf_mbalign.modeling.bert_encoder import dropout_rng_states

INPUT_NAMES = ("input_word_ids", "input_mask", "input_type_ids")


class Untracked:
    """Holds an object out of TensorFlow's object tracking."""

    def __init__(self, value):
        self.value = value


def raw_variables(keras_variables):
    """The `tf.Variable`s that Keras 3 variables wrap.

    Saved through the Keras variables, a SavedModel holds a second
    `tf.Variable` per weight (Keras' `Variable._export_to_saved_model_graph`
    copies the wrapped one); its restore op restores the copy while the traced
    functions read the original. `tf.saved_model.load` restores both, but
    session-based loaders (TF Serving, `saved_model_cli run`, the C API) run
    only the restore op and fail with "Could not find variable ...". Exports
    track these instead, with the Keras objects held in `Untracked`.
    """
    return [variable.value for variable in keras_variables]


def _specs():
    return {name: tf.TensorSpec([None, None], tf.int32, name=name) for name in INPUT_NAMES}


def encoder_inputs(inputs):
    """TF-Hub input names -> `BertEncoder` input names."""
    return {
        "token_ids": inputs["input_word_ids"],
        "segment_ids": inputs["input_type_ids"],
        "padding_mask": inputs["input_mask"],
    }


def check_inputs(inputs, max_sequence_length):
    """Clear errors for malformed requests, inside the graph."""
    # Signatures do not check shapes at run time; EnsureShape does.
    inputs = {k: tf.ensure_shape(v, [None, None], name=f"{k}_must_be_batch_by_seq")
              for k, v in inputs.items()}
    ids = inputs["input_word_ids"]
    checks = [
        tf.debugging.assert_equal(tf.shape(ids), tf.shape(inputs["input_mask"]),
                                  message="input_mask must have the shape of input_word_ids"),
        tf.debugging.assert_equal(tf.shape(ids), tf.shape(inputs["input_type_ids"]),
                                  message="input_type_ids must have the shape of input_word_ids"),
        tf.debugging.assert_positive(tf.shape(ids)[0], message="empty batch"),
        tf.debugging.assert_less_equal(
            tf.shape(ids)[1], max_sequence_length,
            message=f"sequence longer than the model's {max_sequence_length} positions"),
    ]
    with tf.control_dependencies(checks):
        return {k: tf.identity(v) for k, v in inputs.items()}


class HubEncoder(tf.__internal__.tracking.AutoTrackable):
    """A saveable TF-Hub-style wrapper; see the module docstring.

    Args:
        encoder: a `BertEncoder`.
        mlm_head: optional keras-hub `MaskedLMHead` tied to the encoder.

    Example:
    ```python
    tf.saved_model.save(HubEncoder(encoder), path,
                        signatures=HubEncoder(encoder).signatures())
    reloaded = tf.saved_model.load(path)
    outputs = reloaded(dict(input_word_ids=ids, input_mask=mask,
                            input_type_ids=types), training=False)
    ```
    """

    def __init__(self, encoder, mlm_head=None):
        super().__init__()
        # The Keras model is held out of tracking and its wrapped tf.Variables
        # are tracked instead: each weight is saved once, where the functions
        # read it, so session-based loaders (TF Serving, `saved_model_cli
        # run`) restore it too (see `raw_variables`).
        self._held = Untracked(encoder)
        self.max_sequence_length = encoder.max_sequence_length
        self.variables = raw_variables(encoder.weights)
        self.trainable_variables = raw_variables(encoder.trainable_weights)
        self.regularization_losses = []
        # Dropout RNG states: the training=True trace reads them.
        self._rng_states = dropout_rng_states(encoder)
        self.__call__ = tf.function(self._call)
        for training in (False, True):
            self.__call__.get_concrete_function(_specs(), training=training)
        self.serve = tf.function(lambda inputs: self._call(inputs, training=False),
                                 input_signature=[_specs()])
        self.serve_training = tf.function(lambda inputs: self._call(inputs, training=True),
                                          input_signature=[_specs()])
        if mlm_head is not None:
            self.mlm = _HubMaskedLM(self, mlm_head)

    @property
    def _encoder(self):
        return self._held.value

    def _call(self, inputs, training=False):
        inputs = check_inputs(inputs, self.max_sequence_length)
        outputs = self._encoder(encoder_inputs(inputs), training=training)
        # float32 whatever the export's policy (a bf16 export computes in bf16).
        pooled = tf.cast(outputs["pooled_output"], tf.float32)
        return {
            "pooled_output": pooled,
            "sequence_output": tf.cast(outputs["sequence_output"], tf.float32),
            "encoder_outputs": [tf.cast(x, tf.float32) for x in outputs["encoder_outputs"]],
            "default": pooled,
        }

    def signatures(self):
        @tf.function(input_signature=[_specs()[name] for name in INPUT_NAMES])
        def serving_default(input_word_ids, input_mask, input_type_ids):
            outputs = self._call(dict(input_word_ids=input_word_ids, input_mask=input_mask,
                                      input_type_ids=input_type_ids))
            flat = {k: outputs[k] for k in ("pooled_output", "sequence_output", "default")}
            for i, layer in enumerate(outputs["encoder_outputs"]):
                flat[f"encoder_output_{i}"] = layer
            return flat

        return {"serving_default": serving_default}


class _HubMaskedLM(tf.__internal__.tracking.AutoTrackable):
    """`.mlm`: the encoder plus the MLM head at `masked_lm_positions`."""

    def __init__(self, hub_encoder, mlm_head):
        super().__init__()
        self._hub_encoder = hub_encoder
        self._held_head = Untracked(mlm_head)
        encoder_variables = {id(v) for v in hub_encoder.variables}
        # The head's own weights (its decoder is the encoder's token embedding).
        self._head_variables = [v for v in raw_variables(mlm_head.weights)
                                if id(v) not in encoder_variables]
        specs = dict(_specs(), masked_lm_positions=tf.TensorSpec([None, None], tf.int32,
                                                                 name="masked_lm_positions"))
        self.__call__ = tf.function(self._call)
        for training in (False, True):
            self.__call__.get_concrete_function(specs, training=training)

    def _call(self, inputs, training=False):
        outputs = self._hub_encoder._call(
            {k: inputs[k] for k in INPUT_NAMES}, training=training
        )
        head = self._held_head.value
        logits = head(outputs["sequence_output"], mask_positions=inputs["masked_lm_positions"])
        return dict(outputs, mlm_logits=tf.cast(logits, tf.float32))
