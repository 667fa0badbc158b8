#!/usr/bin/env bash
# Every benchmark, one after another, on a quiet machine; JSON + console
# output into OUT (default results/). About 50-60 minutes on 2 CPU cores.
#
#   pip install -e '.[e5]' -r benchmarks/requirements.txt
#   bash benchmarks/run_all.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-results}
python=${PYTHON:-python}
mkdir -p "$out"
run() {  # name, args...
  local name=$1
  shift
  echo "=== $name: $python benchmarks/$name.py $*" | tee "$out/$name.txt"
  "$python" "benchmarks/$name.py" "$@" --json "$out/$name.json" 2>&1 | tee -a "$out/$name.txt"
}
run train_step
run input_pipeline --step_json "$out/train_step.json"
run serving_latency
run scaling
echo "results in $out/"
