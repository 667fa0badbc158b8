"""Where a profiled step's time goes: TensorFlow ops by self time, by kind.

Reads the traces that `tf.profiler.experimental` wrote (`*.xplane.pb`, e.g.
from `benchmarks/train_step.py --profile_dir DIR`) and prints, for each:

- kinds: matmul, cast, transpose, gather / scatter / embedding, optimizer and
  variable updates (AdamW, the EMA, the queue write), softmax / cross-entropy,
  reductions, element-wise, variable reads, other; their summed self time
  and share;
- the top op types (`Mul`, `Erf`, `Cast`, ...) by self time, with their kind
  and event count: where the element-wise time goes;
- the top ops (by name, e.g. `.../mlm_head_1/Cast:Cast`) by self time;
- the element-wise, reduction, cast and transpose time by the part of the
  model whose name scope the op carries (`PARTS`: dropout, layer norm, the
  feed-forward with its GELU, attention, the optimizer, other), forward and
  backward (an op under a `gradient` scope): where the non-matmul time goes.

Self time of an op event = its duration minus the op events nested inside
it on the same thread (a `While` or function call contains its body's ops).
Op events come from TensorFlow's executor threads; an op's parallel work on
the intra-op pool (Eigen, oneDNN) is inside its event's duration. Ops on
different executor threads can overlap, so the summed self time may exceed
the wall time; shares are of the summed self time. Time per step = summed
self time / the steps profiled (from the `profile_steps.json` that
train_step.py writes beside each trace, else `--steps`).

Usage:
  python benchmarks/profile_summary.py results/profile_bf16 [--top 25] [--json out.json]
"""

import argparse
import collections
import glob
import json
import os
import re

MATMUL = re.compile(r"(MatMul|Einsum|Conv)")
KINDS = (
    ("matmul", lambda t: bool(MATMUL.search(t))),
    ("cast", lambda t: t in {"Cast", "_MklCast", "Bitcast"}),
    ("transpose", lambda t: "Transpose" in t),
    ("gather / scatter / embedding", lambda t: any(
        w in t for w in ("Gather", "Scatter", "SegmentSum", "SegmentMean", "TakeAlong",
                         "SparseSegment", "UnsortedSegment", "DynamicStitch"))),
    ("optimizer / variable updates", lambda t: t.startswith("ResourceApply") or t in {
        "AssignSubVariableOp", "AssignAddVariableOp", "AssignVariableOp"}),
    ("softmax / cross-entropy", lambda t: "Softmax" in t),
    ("reduction", lambda t: t in {"Sum", "Mean", "Max", "Min", "Prod", "ArgMax", "ArgMin",
                                  "All", "Any", "BiasAddGrad", "L2Loss"}),
    ("variable reads", lambda t: t in {"ReadVariableOp", "VarHandleOp"}),
    ("other", lambda t: t in {
        "While", "StatefulPartitionedCall", "PartitionedCall", "If", "StatelessIf", "Identity",
        "IdentityN", "NoOp", "Const", "_Send", "_Recv", "_HostSend", "_HostRecv",
        "IteratorGetNext", "Enter", "Exit", "Merge", "Switch", "NextIteration", "LoopCond",
        "Shape", "ShapeN", "Reshape", "Size", "Rank", "StridedSlice", "Pack", "Unpack",
        "ConcatV2", "Fill", "Range", "ZerosLike", "OnesLike", "ExpandDims", "Squeeze",
        "BroadcastTo", "Slice", "Split", "SplitV", "TensorListFromTensor", "TensorListGetItem",
        "TensorListSetItem", "TensorListStack", "TensorListReserve", "TensorListLength",
        "StopGradient", "EnsureShape", "Assert", "Where", "Tile"}),
)
ELEMENT_WISE = "element-wise"
# The non-matmul kinds `PARTS` splits, and the parts, by the first pattern
# found in the lower-cased op name (keras-hub's layer names).
PART_KINDS = (ELEMENT_WISE, "reduction", "cast", "transpose")
PARTS = (
    ("dropout", ("dropout",)),
    ("layer norm", ("layer_norm", "layernorm")),
    ("feed-forward and GELU", ("feedforward_intermediate", "gelu", "erf")),
    ("attention", ("attention", "softmax")),
    ("optimizer", ("adam", "optimizer", "apply")),
)


def kind_of(op_type):
    for kind, test in KINDS:
        if test(op_type):
            return kind
    return ELEMENT_WISE


def part_of(op_name):
    """(the model part, "forward" or "backward") of an op, by its name scope."""
    lowered = op_name.lower()
    part = next((p for p, patterns in PARTS if any(w in lowered for w in patterns)), "other")
    return part, "backward" if "gradient" in lowered else "forward"


def find_traces(directory):
    """Every `*.xplane.pb` under `directory`, grouped by the folder above
    `plugins/profile/` (one group per profiled row)."""
    groups = {}
    for path in sorted(glob.glob(os.path.join(directory, "**", "*.xplane.pb"), recursive=True)):
        parts = os.path.normpath(path).split(os.sep)
        root = os.sep.join(parts[:parts.index("plugins")]) if "plugins" in parts else \
            os.path.dirname(path)
        groups.setdefault(root, []).append(path)
    return groups


def recorded_steps(root, default):
    """The steps train_step.py profiled into `root` (its profile_steps.json)."""
    try:
        with open(os.path.join(root, "profile_steps.json"), encoding="utf-8") as f:
            return int(json.load(f)["steps"])
    except (OSError, ValueError, KeyError):
        return default


def op_events(path):
    """[(thread, name, op type, start ps, duration ps)] of the TensorFlow op
    events (named `name:Type`) in one xplane file."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    events = []
    for plane in space.planes:
        if not plane.name.startswith("/host:") and not plane.name.startswith("/device:"):
            continue
        for line in plane.lines:
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if ":" not in name or "::" in name:
                    continue
                op_name, op_type = name.rsplit(":", 1)
                if not op_type or not op_type[0].isalpha() and op_type[0] != "_":
                    continue
                start = line.timestamp_ns * 1000 + event.offset_ps
                events.append((f"{plane.name}/{line.id}", op_name, op_type, start,
                               event.duration_ps))
    return events


def self_times(events):
    """[(name, op type, self ps)]: each event's duration minus its direct
    children's (events nested inside it on the same thread)."""
    by_thread = collections.defaultdict(list)
    for thread, name, op_type, start, duration in events:
        by_thread[thread].append((start, -duration, name, op_type))
    result = []
    for items in by_thread.values():
        items.sort()
        stack = []  # [end, name, type, self]
        for start, negative_duration, name, op_type in items:
            duration = -negative_duration
            while stack and stack[-1][0] <= start:
                result.append(tuple(stack.pop()[1:]))
            if stack:
                stack[-1][3] -= min(duration, stack[-1][0] - start)
            stack.append([start + duration, name, op_type, duration])
        result.extend(tuple(entry[1:]) for entry in stack)
    return result


def summarize(paths, steps=1, top=25):
    """Per kind and top ops, in milliseconds per step."""
    rows = [r for path in paths for r in self_times(op_events(path))]
    total = sum(r[2] for r in rows) or 1
    kinds = collections.Counter()
    ops = collections.Counter()
    types = collections.Counter()
    type_events = collections.Counter()
    op_kinds = {}
    parts = collections.Counter()
    for name, op_type, self_ps in rows:
        if kind_of(op_type) in PART_KINDS:
            parts[part_of(name)] += self_ps
        kinds[kind_of(op_type)] += self_ps
        types[op_type] += self_ps
        type_events[op_type] += 1
        ops[f"{name}:{op_type}"] += self_ps
        op_kinds[f"{name}:{op_type}"] = kind_of(op_type)

    def ms(ps):
        return ps / 1e9 / steps

    return {
        "traces": paths, "steps": steps, "op_events": len(rows),
        "self_ms_per_step": ms(total),
        "kinds": [{"kind": k, "self_ms_per_step": ms(v), "share": v / total}
                  for k, v in kinds.most_common()],
        "non_matmul_by_part": [{"part": p, "pass": d, "self_ms_per_step": ms(v)}
                               for (p, d), v in parts.most_common()],
        "top_op_types": [{"op_type": t, "kind": kind_of(t), "events_per_step": type_events[t] / steps,
                          "self_ms_per_step": ms(v), "share": v / total}
                         for t, v in types.most_common(top)],
        "top_ops": [{"op": k, "kind": op_kinds[k], "self_ms_per_step": ms(v), "share": v / total}
                    for k, v in ops.most_common(top)],
    }


def print_summary(name, summary):
    print(f"\n== {name}: {summary['op_events']} op events, "
          f"{summary['self_ms_per_step']:.1f} ms self time per step "
          f"({summary['steps']} step(s) profiled)")
    width = max(len(k["kind"]) for k in summary["kinds"]) if summary["kinds"] else 10
    print(f"{'kind':<{width}}  {'ms/step':>9}  share")
    for k in summary["kinds"]:
        print(f"{k['kind']:<{width}}  {k['self_ms_per_step']:9.2f}  {k['share']:6.1%}")
    parts = summary.get("non_matmul_by_part", [])
    if parts:
        print(f"{', '.join(PART_KINDS)} by model part (ms/step):")
        for p in parts:
            print(f"  {p['part']:<24} {p['pass']:<8} {p['self_ms_per_step']:9.2f}")
    types = summary.get("top_op_types", [])
    print(f"top {len(types)} op types by self time:")
    for t in types:
        print(f"  {t['self_ms_per_step']:9.2f} ms {t['share']:6.1%}  {t['op_type']:<34} "
              f"[{t['kind']}] {t['events_per_step']:.0f} events/step")
    print(f"top {len(summary['top_ops'])} ops by self time:")
    for op in summary["top_ops"]:
        print(f"  {op['self_ms_per_step']:9.2f} ms {op['share']:6.1%}  [{op['kind']}] "
              f"{op['op'][-110:]}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("profile_dir")
    parser.add_argument("--steps", type=int, default=1,
                        help="steps a trace holds where no profile_steps.json says")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)
    groups = find_traces(args.profile_dir)
    if not groups:
        raise SystemExit(f"no *.xplane.pb under {args.profile_dir}")
    result = {}
    for root, paths in groups.items():
        result[root] = summarize(paths, recorded_steps(root, args.steps), args.top)
        print_summary(os.path.relpath(root, args.profile_dir), result[root])
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
