"""SIGKILL a training run N times at random moments, resume, compare.

Trains the tiny test encoder on the demo corpus with the training binary,
kills it N times with SIGKILL (every 4th kill inside a checkpoint commit,
the others a random 0-60 ms after a randomly chosen step), resumes it to the
end and compares it with an uninterrupted run of the same flags (run beside
the first attempt). Prints the figures; exits 1 if the runs differ.

With --prepared the demo corpus is first prepared (`tf_mbalign.prepare`'s
library, 4 shards per language) and both runs stream it; --workers 2 runs
every attempt as two local MultiWorkerMirroredStrategy workers.

Usage:
  python benchmarks/kill_resume.py [--kills 20] [--seed S] [--work_dir DIR]
      [--prepared] [--workers 2]
"""

import argparse
import os
import random
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "tests"))

from tf_mbalign import runtime  # noqa: E402

runtime.import_tensorflow_quietly()  # The harness reads checkpoints with TensorFlow.

import kill_harness  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--checkpoint_every", type=int, default=3)
    parser.add_argument("--work_dir", default=None)
    parser.add_argument("--prepared", action="store_true",
                        help="stream a prepared copy of the demo corpus")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10**6)
    train_steps = 4 * args.kills  # room for every kill: each lands <= 6 steps past a checkpoint
    total = train_steps + 2
    work_dir = args.work_dir or tempfile.mkdtemp(prefix="kill_resume_")
    os.makedirs(work_dir, exist_ok=True)
    print(f"seed {seed}; {args.kills} kills over {total} steps (checkpoint every "
          f"{args.checkpoint_every}); work dir {work_dir}", flush=True)

    corpus = kill_harness.prepare_demo(os.path.join(work_dir, "prepared")) if args.prepared \
        else "demo"
    started = time.time()
    reference = kill_harness.start_training(os.path.join(work_dir, "reference"), train_steps,
                                            args.checkpoint_every,
                                            os.path.join(work_dir, "reference.log"),
                                            corpus=corpus, workers=args.workers)
    kinds = ["save" if i % 4 == 3 else "step" for i in range(args.kills)]
    model_dir, attempts = kill_harness.run_with_kills(
        work_dir, kinds, train_steps, args.checkpoint_every, seed, max_ahead=6, corpus=corpus,
        workers=args.workers)
    if reference.wait() != 0:
        print(f"the reference run failed; see {work_dir}/reference.log")
        return 1
    wall = time.time() - started
    report = kill_harness.compare_runs(os.path.join(work_dir, "reference"), model_dir, total)

    for number, attempt in enumerate(attempts[:-1], start=1):
        outcome = ("SIGKILLed" if attempt["killed"]
                   else f"NOT killed (exit {attempt['returncode']})")
        print(f"kill {number:2d}: {attempt['kind']:4s} target step {attempt['target']:3d}, "
              f"resumed from {attempt['resumed_from']:3d}, "
              f"last logged {attempt['last_logged_step']:3d}, "
              f"committed after {attempt['committed_after']:3d}, {outcome}, "
              f"{attempt['seconds']:.1f}s")
    killed = sum(a["killed"] for a in attempts[:-1])
    in_save = sum(a["killed"] and a["kind"] == "save" for a in attempts[:-1])
    recomputed = sum(max(0, a["last_logged_step"] - a["committed_after"]) for a in attempts[:-1])
    print(f"kills: {killed} of {args.kills} landed ({in_save} inside a checkpoint commit)")
    print(f"steps trained again after a kill (logged but not checkpointed): {recomputed}")
    print(f"steps logged in order 1..{total}: {report['steps_in_order']}; "
          f"data positions in order: {report['positions_in_order']}")
    print(f"batch fingerprints equal to the uninterrupted run: {report['fingerprints_equal']}; "
          f"batches repeated: {report['batches_repeated']}, skipped: {report['batches_skipped']}")
    print(f"max per-step loss difference (relative): {report['max_loss_rel_diff']:.3g}")
    print(f"max final-state difference over {report['variables_compared']} checkpoint "
          f"variables: {report['max_weight_diff']:.3g}; other mismatches: "
          f"{report['mismatched_variables'] or 'none'}")
    print(f"wall time: {wall:.0f}s (reference run in parallel with the first attempt)")
    same = (killed == args.kills and report["steps_in_order"] and report["fingerprints_equal"]
            and report["max_loss_rel_diff"] <= 1e-6 and report["max_weight_diff"] <= 1e-6
            and not report["mismatched_variables"])
    if args.work_dir is None and same:
        shutil.rmtree(work_dir, ignore_errors=True)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
