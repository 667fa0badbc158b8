"""Fine-tuning an exported encoder from Keras 3.

`keras.layers.TFSMLayer(path, call_endpoint="serve",
call_training_endpoint="serve_training")` wraps the exported encoder, and a
`fit` step updates its weights with optimizers that keep no per-variable
slots (SGD). Keras 3.15 names the wrapped weights after their TF names
(`token_embedding/embeddings:0` -> `token_embedding_embeddings:0`), and the
`:` makes Adam/AdamW fail to create their slot variables ("not a valid scope
name"). `SavedEncoderLayer` is TFSMLayer with that one character replaced.

Example:
```python
layer = SavedEncoderLayer("exports/align/encoder")
inputs = {k: keras.Input((None,), dtype="int32", name=k)
          for k in ("input_word_ids", "input_mask", "input_type_ids")}
logits = keras.layers.Dense(3)(layer(inputs)["pooled_output"])
model = keras.Model(inputs, logits)
model.compile(optimizer="adamw", loss=...)
```
"""

import keras


class SavedEncoderLayer(keras.layers.TFSMLayer):
    """TFSMLayer over a tf_mbalign / TF-Hub encoder export, fine-tunable."""

    def __init__(self, filepath, trainable=True, name=None, **kwargs):
        kwargs.setdefault("call_endpoint", "serve")
        kwargs.setdefault("call_training_endpoint", "serve_training")
        super().__init__(filepath, trainable=trainable, name=name, **kwargs)

    def _add_existing_weight(self, weight):
        variable = keras.Variable(
            initializer=weight,
            trainable=weight.trainable,
            dtype=weight.dtype,
            shape=weight.shape,
            name=weight.name.replace("/", "_").replace(":", "_"),
        )
        self._track_variable(variable)
