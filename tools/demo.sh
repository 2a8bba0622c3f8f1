#!/usr/bin/env bash
# `make demo`: synthesise the modality-conflict benchmark (once), then train the `demo` model from scratch
# twice side by side, one thread each: CE only (DIR/run-ce) and CE + the alignment loss of
# configs/demo.yaml (DIR/run); print both final evaluations in one table and draw the aligned run's curves.
#   tools/demo.sh BUILD_DIR DEMO_DIR PYTHON
set -euo pipefail
bin=$1/modalign; dir=$2; py=$3
cd "$(dirname "$0")/.."
[ -f "$dir/data/train.json" ] || "$bin" synth --out "$dir/data" --train 2000 --eval 100
rm -rf "$dir/run" "$dir/run-ce"
mkdir -p "$dir"
common=(--set "data.train_files=[$dir/data/train.json]" --set "data.image_folder=$dir/data"
        --set "data.tokenizer=$dir/data/tokenizer.model" --set train.num_threads=1 --set logging.progress=plain
        --set "data.eval_files=[$dir/data/eval_aligned.json, $dir/data/eval_conflict.json, $dir/data/eval_nohint.json]")
"$bin" train -c configs/demo.yaml "${common[@]}" --set "train.output_dir=$dir/run" > "$dir/run.log" 2>&1 & aligned=$!
"$bin" train -c configs/demo.yaml "${common[@]}" --set "train.output_dir=$dir/run-ce" --set "losses=[]" \
  > "$dir/run-ce.log" 2>&1 & ce=$!
trap 'kill $aligned $ce 2>/dev/null || true' INT TERM
echo "demo: training CE only ($dir/run-ce) and CE + alignment ($dir/run) side by side, one thread each"
while kill -0 $aligned 2>/dev/null || kill -0 $ce 2>/dev/null; do
  sleep 20
  for log in "$dir/run-ce.log" "$dir/run.log"; do
    line=$(grep -E 'step [0-9]+/|eval ' "$log" | tail -n 1 | sed 's/^.* info //') || true
    [ -n "$line" ] && echo "  $(basename "$log" .log): $line"
  done
done
status=0
wait $aligned || { echo "demo: the aligned run failed, see $dir/run.log"; status=1; }
wait $ce || { echo "demo: the CE run failed, see $dir/run-ce.log"; status=1; }
[ $status = 0 ] || exit $status
losses=$(grep -A3 '^losses:' configs/demo.yaml | grep -oE 'name: [a-z_]+' | cut -d' ' -f2 | paste -sd+ -)
echo
"$py" tools/compare_runs.py "CE only=$dir/run-ce" "CE + ${losses:-alignment}=$dir/run"
"$py" tools/plot_metrics.py "$dir/run/metrics.jsonl" > /dev/null && echo "curves: $dir/run/curves.png" ||
  echo "demo: no curves (needs /usr/bin/python3 with matplotlib)"
echo "demo: data in $dir/data; checkpoints, train.log and metrics.jsonl in $dir/run and $dir/run-ce"
