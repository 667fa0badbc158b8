"""Many command lines of one binary, in one process.

A binary's error paths (bad flags, bad input, `--help`) each cost a fresh
process a TensorFlow start-up (~7 s of CPU on 2 cores) before they print
their one line. `run_many(module, requests)` runs them all in one process
(`python tests/binary_runs.py < request.json`): the binary module is
imported once, then for each request `sys.argv` is set and the binary's own
`run_main()` runs (`absl.app.run` with the binary's flags parser, as
`python -m MODULE ...` does), its exit code, stdout and stderr captured; absl's
flags are reset between requests. What a fresh process alone shows (clean
start-up output, signals) is tested with real processes elsewhere.

A request is {"argv": [...], "cwd": optional directory}; the answer for each
is {"exit_code": int, "stdout": str, "stderr": str} (an exception that
escapes `run_main` is exit code 1 with its traceback in stderr).
"""

import contextlib
import importlib
import io
import json
import os
import sys
import traceback

from conftest import REPO_ROOT, run_module


def run_many(module, requests, env=None):
    """[{"exit_code", "stdout", "stderr"}] of each request, in one process."""
    request = json.dumps({"module": module, "requests": requests})
    result = run_module([os.path.join(REPO_ROOT, "tests", "binary_runs.py")], env=env,
                        input_text=request)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _run_one(binary, request):
    from absl import flags

    out, err = io.StringIO(), io.StringIO()
    sys.argv = [binary.__name__, *request["argv"]]
    here = os.getcwd()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            os.chdir(request.get("cwd") or here)
            binary.run_main()
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        except Exception:  # noqa: BLE001 - reported as a crash, as a process would show it
            traceback.print_exc()
            code = 1
        finally:
            os.chdir(here)
            flags.FLAGS.unparse_flags()
    return {"exit_code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}


def main():
    from tf_mbalign import runtime

    request = json.load(sys.stdin)
    stdout = sys.stdout
    with contextlib.redirect_stdout(io.StringIO()):
        runtime.import_tensorflow_quietly()
        binary = importlib.import_module(request["module"])
    answers = [_run_one(binary, r) for r in request["requests"]]
    print(json.dumps(answers), file=stdout)


if __name__ == "__main__":
    main()
