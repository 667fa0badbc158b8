#!/usr/bin/env bash
# The recipe grid (ablations) on e5-small: each row aligns on ../shared/data/parallel
# (configs/recipe.flags plus the row's flags), then the transfer suite (cpu
# budget, NLI, POS, retrieval, 2 seeds) scores its export against the unaligned
# model on one half of the test rows. Each finished row is committed (its
# training summary, flags, metrics, alignment check and suite jobs), so a
# session that ends mid-grid loses at most the row in progress.
#
#   bash benchmarks/recipe_grid.sh ROW [ROW ...]         # rows: see row_flags
#   HALF=odd FIRST_SEED=100 bash benchmarks/recipe_grid.sh ROW   # confirm
#
# Run it alone: the rows' wall times are figures of the grid table.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
HALF=${HALF:-even}
FIRST_SEED=${FIRST_SEED:-0}
OUT=${OUT:-docs/results/grid_choose}
COMMIT=${COMMIT:-1}
# Every row sets --tlm_weight, --head_warmup_steps and --contrastive_negatives
# (recipe.flags leaves them to the checkpoint; the grid ran while
# recipe.flags still set --tlm_weight=1.0 and --contrastive_negatives=queue).
# The grid's common schedule: 150 encoder steps (2,400 pairs) after the row's
# head warm-up; about 10 min a row on a 2-vCPU Zen 4.
COMMON=(--flagfile=configs/recipe.flags --train_steps=150 --warmup_steps=15
        --checkpoint_every=150 --keep_checkpoints=1)

row_flags() {
  case "$1" in
    tlm_moco)   echo "--tlm_weight=1 --head_warmup_steps=50 --contrastive_negatives=queue" ;;
    moco_only)  echo "--tlm_weight=0 --head_warmup_steps=0 --contrastive_negatives=queue" ;;
    in_batch)   echo "--tlm_weight=1 --head_warmup_steps=50 --contrastive_negatives=in_batch" ;;
    no_shuffle) echo "--tlm_weight=1 --head_warmup_steps=50 --contrastive_negatives=queue --shuffle_inputs=false" ;;
    warmup200)  echo "--tlm_weight=1 --head_warmup_steps=200 --contrastive_negatives=queue" ;;
    in_batch_only) echo "--tlm_weight=0 --head_warmup_steps=0 --contrastive_negatives=in_batch" ;;
    *) echo "unknown row $1 (tlm_moco moco_only in_batch no_shuffle warmup200 in_batch_only)" >&2
       return 2 ;;
  esac
}

for row in "$@"; do
  flags=$(row_flags "$row")
  model_dir=runs/grid/$row
  if [[ ! -f $model_dir/summary.json ]] || ! grep -q '"outcome": "finished"' $model_dir/summary.json; then
    echo "== $row: aligning ($flags)"
    # shellcheck disable=SC2086
    $PY -m tf_mbalign.train "${COMMON[@]}" --model_dir="$model_dir" $flags
  fi
  mkdir -p runs/grid/exports "$OUT/$row/training"
  ln -sfn "../$row/export" "runs/grid/exports/$row"
  for f in flags.json summary.json summary.md metrics.jsonl alignment_check.json; do
    [[ -f $model_dir/$f ]] && cp "$model_dir/$f" "$OUT/$row/training/"
  done
  echo "== $row: scoring on the $HALF half (first seed $FIRST_SEED)"
  $PY -m tf_mbalign.evaluate suite --encoder=e5-small --against="runs/grid/exports/$row" \
      --data_root=../shared/data --budget=cpu --seeds=2 --first_seed="$FIRST_SEED" \
      --tasks=nli,pos,retrieval --test_rows="$HALF" --output_dir="$OUT" --quiet
  mkdir -p "$OUT/compare_$row"
  mv "$OUT"/suite.json "$OUT"/suite.md "$OUT"/*.png "$OUT/compare_$row/"
  if [[ $COMMIT == 1 ]]; then
    git add "$OUT"
    git commit -q -m "Recipe grid row $row ($HALF half, first seed $FIRST_SEED): $flags" -- "$OUT"
    echo "== $row: committed"
  fi
done
