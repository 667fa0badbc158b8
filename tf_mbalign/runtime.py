"""Start-up of the command-line tools: TensorFlow without its native noise.

On CPU-only machines TensorFlow's C++ side writes CUDA and absl messages
straight to file descriptor 2 at import and at first device use, before any
Python logging setting can apply. The binaries import TensorFlow through
`import_tensorflow_quietly()`, which points fd 2 at a temporary file for that
moment and shows what was written there only if the import fails.

`flags_parser` gives a binary's absl flags the exit codes the docs promise:
`--help` prints the binary's help and exits 0; an unknown or malformed flag
prints absl's message (with its "Did you mean" suggestions) and exits 2
(absl itself exits 1 for both). An unknown flag also gets the flags whose
names contain it (`--batch_size` -> `--global_batch_size`), which absl's
spelling suggestions miss.
"""

import contextlib
import os
import sys
import tempfile

# `app.run(main, flags_parser=flags_parser(...))`: these print the help, exit 0.
HELP_ARGUMENTS = frozenset({"--help", "-help", "-h", "-?", "--helpshort", "--helpfull"})
BAD_FLAGS_EXIT_CODE = 2

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


def flags_parser(help_text):
    """A `flags_parser` for `absl.app.run`: help arguments print
    `help_text()` and exit 0; flag errors print the error and exit 2.

    Args:
        help_text: a callable returning the help (called only when asked).
    """
    def parse(argv):
        from absl import flags

        asked = {argument.split("=", 1)[0] for argument in argv[1:]} & HELP_ARGUMENTS
        if asked:
            print(help_text())
            if "--helpfull" in asked:
                print("\nevery flag, absl's own included:\n" + flags.FLAGS.get_help())
            sys.exit(0)
        try:
            return flags.FLAGS(argv)
        except flags.Error as error:
            hint = ""
            if isinstance(error, flags.UnrecognizedFlagError):
                hint = containing_flags_hint(error.flagname, flags.FLAGS)
            print(f"error: {error}{hint}\nRun with --help to list the flags.", file=sys.stderr)
            sys.exit(BAD_FLAGS_EXIT_CODE)
    return parse


def flags_containing(name, flag_values):
    """The binary's own flags (absl's left out) whose names contain `name`,
    e.g. `global_batch_size` for `batch_size`; a `--noNAME` boolean is looked
    up as `NAME`."""
    wanted = name.lower()
    own = [flag for flag in flag_values
           if not flag_values.find_module_defining_flag(flag, "").startswith("absl.")]
    found = sorted(flag for flag in own if wanted in flag.lower() and flag != name)
    if not found and wanted.startswith("no"):
        found = sorted(flag for flag in own if wanted[2:] and wanted[2:] in flag.lower())
    return found


def containing_flags_hint(name, flag_values):
    """". Flags whose names contain it: --a, --b" for an unknown flag `name`
    ("" when none does)."""
    found = flags_containing(name, flag_values)
    return ". Flags whose names contain it: " + ", ".join(f"--{f}" for f in found) if found else ""
