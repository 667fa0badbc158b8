"""Every binary's flags, and dry parses of command lines, without running a binary.

A helper of `tests/test_docs.py` and `tests/test_flag_suggestions.py`:
`collect(request)` runs this file in a fresh process from the repository root
(`python tests/binary_flags.py < request.json`). The request is
{"parse": {module: [[argument, ...], ...]}, "bad": {module: [[argument, ...], ...]}};
the answer:

    {"absl": [absl's own flags],
     "binaries": {module: {"flags": [...], "booleans": [...],
                           "parses": [{"error": str or null, "positional": [...]}, ...],
                           "bad": [{"exit_code": int, "stderr": str}, ...]}}}

Each binary module is imported (that defines its flags and imports
TensorFlow; `main` is not called), its flags are read from absl's registry,
each "parse" argument list is parsed the way `app.run` parses it before
`main` (`FLAGS(argv)`: flag files read, names, types and choices checked,
required flags present), each "bad" one goes through the binaries' own
parser (`runtime.flags_parser`: its exit code and message), and the binary's
flags are removed again so that the next binary can define flags of the
same names.
"""

import contextlib
import importlib
import io
import json
import os
import subprocess
import sys

BINARIES = ("tf_mbalign.train", "tf_mbalign.evaluate", "tf_mbalign.finetune",
            "tf_mbalign.prepare", "tf_mbalign.export.__main__")
# Names absl's flag parser reads itself (never registered as flags).
PARSER_FLAGS = ("flagfile", "undefok")


def dry_parse(flag_values, arguments):
    """{"error": absl's message or None, "positional": what is left over}.
    A help flag (absl prints the help and exits while parsing) counts as parsed."""
    from absl import flags

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            left = flag_values(["binary", *arguments])
        return {"error": None, "positional": left[1:]}
    except flags.Error as error:
        return {"error": str(error), "positional": []}
    except SystemExit:
        return {"error": None, "positional": []}
    finally:
        flag_values.unparse_flags()


def binaries_parser(flag_values, arguments):
    """{"exit_code", "stderr"} of `runtime.flags_parser`, the parser every
    binary passes to `app.run`, on `arguments` (help text left empty)."""
    from tf_mbalign import runtime

    stderr = io.StringIO()
    code = 0
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            runtime.flags_parser(lambda: "")(["binary", *arguments])
        except SystemExit as exit_:
            code = exit_.code
        finally:
            flag_values.unparse_flags()
    return {"exit_code": code, "stderr": stderr.getvalue()}


def binary_flags(module, flag_values, before, request):
    """Imports `module`; its flags, booleans, dry parses and bad-flag answers;
    then forgets its flags."""
    importlib.import_module(module)
    own = sorted(set(flag_values) - before)
    booleans = sorted(name for name in own if flag_values[name].boolean)
    parses = [dry_parse(flag_values, arguments)
              for arguments in request.get("parse", {}).get(module, [])]
    bad = [binaries_parser(flag_values, arguments)
           for arguments in request.get("bad", {}).get(module, [])]
    for name in own:
        delattr(flag_values, name)
    return {"flags": own, "booleans": booleans, "parses": parses, "bad": bad}


def collect(request):
    """The answer to `request` (see the module docstring), from a fresh process."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    process = subprocess.run(
        [sys.executable, os.path.abspath(__file__)], input=json.dumps(request), cwd=root,
        env=dict(os.environ, PYTHONPATH=root), text=True, capture_output=True, timeout=300)
    if process.returncode != 0:
        raise RuntimeError(f"{__file__} failed:\n{process.stderr[-3000:]}")
    return json.loads(process.stdout)


def main():
    from tf_mbalign import runtime

    runtime.import_tensorflow_quietly()
    from absl import app, flags

    app.define_help_flags()  # --help, --helpfull, ...: what app.run defines
    request = json.load(sys.stdin)
    before = set(flags.FLAGS)
    binaries = {module: binary_flags(module, flags.FLAGS, before, request)
                for module in BINARIES}
    print(json.dumps({"absl": sorted(before | set(PARSER_FLAGS)), "binaries": binaries}))


if __name__ == "__main__":
    main()
