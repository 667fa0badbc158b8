"""Start-up of the command-line tools: TensorFlow without its native noise.

On CPU-only machines TensorFlow's C++ side writes CUDA and absl messages
straight to file descriptor 2 at import and at first device use, before any
Python logging setting can apply. The binaries import TensorFlow through
`import_tensorflow_quietly()`, which points fd 2 at a temporary file for that
moment and shows what was written there only if the import fails.
"""

import contextlib
import os
import sys
import tempfile

# Set before TensorFlow is imported (a value the user already set is kept):
TENSORFLOW_ENVIRONMENT_DEFAULTS = {
    # Hides the CUDA/absl/oneDNN noise TF prints on CPU-only machines.
    "TF_CPP_MIN_LOG_LEVEL": "3",
    # oneDNN kernels, which TF leaves off on some x86 CPUs (AMD: float32
    # matmul measured 146 vs 77 GFLOP/s with and without).
    "TF_ENABLE_ONEDNN_OPTS": "1",
    # Keras 3 on TensorFlow.
    "KERAS_BACKEND": "tensorflow",
}


def set_tensorflow_environment_defaults():
    """Sets `TENSORFLOW_ENVIRONMENT_DEFAULTS` where unset; call before
    TensorFlow is imported (later calls cannot change a loaded TF)."""
    for name, value in TENSORFLOW_ENVIRONMENT_DEFAULTS.items():
        os.environ.setdefault(name, value)


@contextlib.contextmanager
def _native_stderr_captured():
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield capture
        except BaseException:
            os.dup2(saved, 2)
            capture.seek(0)
            sys.stderr.write(capture.read().decode("utf-8", "replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def import_tensorflow_quietly():
    """Sets the environment defaults, then imports TensorFlow with fd 2 silenced."""
    set_tensorflow_environment_defaults()

    with _native_stderr_captured():
        import tensorflow as tf

        tf.get_logger().setLevel("ERROR")
    # Devices are not initialized here: MultiWorkerMirroredStrategy must
    # configure collective ops before that happens.
    from absl import logging

    logging.set_verbosity(logging.WARNING)
    return tf
