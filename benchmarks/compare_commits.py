"""Is a commit slower than another? The training step of two checkouts,
timed in alternating processes.

Each round runs `benchmarks/train_step.py` of the base commit (a temporary
`git worktree`), then that of the working tree (or the other way round on
odd rounds), each in a fresh process with its own checkout first on
`PYTHONPATH`, so each side runs its own library and benchmark. Two code
versions cannot share a process, so the alternation is between processes:
drift of the machine (a shared cloud VM moves by ~10% over minutes) falls on
both sides alike. Prints, and writes to `--json`, every timing, each round's
ratio of medians (this tree / base) and the median ratio over the rounds.

Used for the goal "on a machine without bf16 instructions, `auto` picks
float32 and nothing gets slower": the base is the last commit before the
`--precision=auto` changes (BENCHMARKS.md, "Goals and results").

Usage:
  python benchmarks/compare_commits.py --base d8103bf --rounds 4 \\
      --json docs/results/auto_float32_zen3.json -- --shapes e5-small --precisions float32 \\
      --xla off --no_torch --pairs 3
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def add_worktree(commit, parent):
    path = os.path.join(parent, "base")
    subprocess.run(["git", "-C", REPO_ROOT, "worktree", "add", "--detach", "-q", path, commit],
                   check=True)
    return path


def remove_worktree(path):
    subprocess.run(["git", "-C", REPO_ROOT, "worktree", "remove", "--force", path], check=False)


def commit_of(checkout):
    result = subprocess.run(["git", "-C", checkout, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True, check=True)
    dirty = subprocess.run(["git", "-C", checkout, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, check=True).stdout.strip()
    return result.stdout.strip() + ("+uncommitted" if dirty else "")


def run_side(checkout, step_args, json_path, log_path):
    """One `train_step.py` run of `checkout`: its JSON."""
    env = dict(os.environ, PYTHONPATH=checkout)
    command = [sys.executable, os.path.join(checkout, "benchmarks", "train_step.py"),
               *step_args, "--json", json_path]
    with open(log_path, "w", encoding="utf-8") as log:
        subprocess.run(command, cwd=checkout, env=env, stdout=log, stderr=subprocess.STDOUT,
                       check=True)
    with open(json_path, encoding="utf-8") as f:
        return json.load(f)


def step_times(result):
    """{row label: [seconds per step, ...]} of one train_step.py JSON."""
    return {f"{r['shape']}/{r['precision']}/xla={r['xla']}": r["ours"]["all_s"]
            for r in result["rows"]}


def compare(rounds):
    """Per row: each round's median ratio (this tree / base) and their median."""
    labels = rounds[0]["base"].keys()
    summary = {}
    for label in labels:
        ratios = [statistics.median(r["this"][label]) / statistics.median(r["base"][label])
                  for r in rounds]
        summary[label] = {
            "base_median_s": statistics.median(s for r in rounds for s in r["base"][label]),
            "this_median_s": statistics.median(s for r in rounds for s in r["this"][label]),
            "round_ratios": ratios, "median_ratio": statistics.median(ratios),
            "min_ratio": min(ratios), "max_ratio": max(ratios)}
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", required=True, help="the commit to compare against")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--json", default="")
    parser.add_argument("--keep_logs", default="", help="folder for each run's log and JSON")
    parser.add_argument("step_args", nargs="*", help="train_step.py's arguments (after --)")
    args = parser.parse_args(argv)
    scratch = tempfile.mkdtemp(prefix="compare_commits_")
    logs = args.keep_logs or scratch
    os.makedirs(logs, exist_ok=True)
    base = add_worktree(args.base, scratch)
    sides = {"base": base, "this": REPO_ROOT}
    commits = {name: commit_of(path) for name, path in sides.items()}
    print(f"base {commits['base']} vs this tree {commits['this']}, {args.rounds} rounds: "
          f"train_step.py {' '.join(args.step_args)}", flush=True)
    rounds, machine = [], None
    try:
        for i in range(args.rounds):
            order = ("base", "this") if i % 2 == 0 else ("this", "base")
            times = {}
            for name in order:
                stem = os.path.join(logs, f"round{i + 1}_{name}")
                result = run_side(sides[name], args.step_args, stem + ".json", stem + ".log")
                machine = machine or result["machine"]
                times[name] = step_times(result)
                print(f"round {i + 1} {name}: " + "; ".join(
                    f"{label} {', '.join(f'{s:.3f}' for s in seconds)} s"
                    for label, seconds in times[name].items()) +
                    f" (load at start {result['machine'].get('load_average_at_start')})",
                    flush=True)
            rounds.append(times)
    finally:
        remove_worktree(base)
    summary = compare(rounds)
    for label, row in summary.items():
        print(f"{label}: base {row['base_median_s']:.3f} s, this {row['this_median_s']:.3f} s; "
              f"this / base per round {', '.join(f'{x:.3f}' for x in row['round_ratios'])}; "
              f"median {row['median_ratio']:.3f}")
    report = {"benchmark": "benchmarks/compare_commits.py", "argv": sys.argv[1:] if argv is None
              else argv, "commits": commits, "machine": machine, "rounds": rounds,
              "summary": summary}
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    main()
