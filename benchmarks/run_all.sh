#!/usr/bin/env bash
# Every benchmark, one after another, on a quiet machine; JSON + console
# output into OUT (default results/). About 55-65 minutes on 2 CPU cores.
#
#   pip install -e '.[e5]' -r benchmarks/requirements.txt
#   bash benchmarks/run_all.sh [OUT]
#
# mBERT-base runs without XLA on CPU: its XLA compile went past 24 GB of RAM
# and was killed (BENCHMARKS.md); likewise the scaling script is split. A failed script is reported and the others
# still run; the exit status is non-zero if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-results}
python=${PYTHON:-python}
mkdir -p "$out"
failed=()
run() {  # name, output name, args...
  local name=$1 output=$2
  shift 2
  echo "=== $output: $python benchmarks/$name.py $*" | tee "$out/$output.txt"
  if ! "$python" "benchmarks/$name.py" "$@" --json "$out/$output.json" 2>&1 \
      | tee -a "$out/$output.txt"; then
    echo "=== $output FAILED (see $out/$output.txt)" | tee -a "$out/$output.txt"
    failed+=("$output")
  fi
}
run train_step train_step --shapes tiny,e5-small
run train_step train_step_mbert --shapes mbert-base --xla off
run input_pipeline input_pipeline --step_json "$out/train_step.json,$out/train_step_mbert.json"
run parameter_passes parameter_passes --shape e5-small
run serving_latency serving_latency
# The sweeps keep several models in one process (TensorFlow keeps the freed
# memory): the per-size peak-RSS children run from a fresh parent.
run scaling scaling --parts queue_ops,queue,length
run scaling scaling_memory --parts memory
echo "results in $out/"
if [ ${#failed[@]} -gt 0 ]; then
  echo "failed: ${failed[*]}" >&2
  exit 1
fi
