"""Runs one suite job in its own process: `python -m tf_mbalign.tasks JOB.json`.

JOB.json is written by `tf_mbalign.tasks.suite`: {"record": the job record,
"output": where its result JSON goes, "progress": bool}.
"""

import json
import sys

from tf_mbalign import runtime


def main(argv):
    if len(argv) != 2:
        print("usage: python -m tf_mbalign.tasks JOB.json", file=sys.stderr)
        return 2
    runtime.import_tensorflow_quietly()
    from tf_mbalign.tasks import suite

    with open(argv[1], encoding="utf-8") as f:
        job = json.load(f)
    try:
        suite.run_job(job["record"], job["output"], job.get("progress", True))
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
