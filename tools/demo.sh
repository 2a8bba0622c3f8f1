#!/usr/bin/env bash
# `make demo`: stage 2 of the seeing benchmark in under 10 minutes on 2 cores. Synthesise the study's stage-2
# data (once), evaluate the seeing stage-1 model kept in bench/seeing, then fine-tune it twice side by side, one
# thread each, on data whose hints are right 98% of the time: CE only (DIR/run-ce) and CE + the loss of
# configs/demo.yaml (DIR/run); print the three evaluations in one table and draw the aligned run's curves.
# The stage-1 model itself takes about 70 min of 2 cores to make: `/usr/bin/python3 bench/efficacy.py`.
#   tools/demo.sh BUILD_DIR DEMO_DIR PYTHON
set -euo pipefail
bin=$1/modalign; dir=$2; py=$3
cd "$(dirname "$0")/.."
# The study's stage-2 data (made again unless an earlier demo left exactly them: same synth.json).
cmp -s "$dir/data/synth.json" bench/seeing/data/synth.json && [ -f "$dir/data/train.json" ] ||
  "$bin" synth --out "$dir/data" --train 2000 --eval 200 --hint-agreement 0.98 --force > /dev/null
rm -rf "$dir/run" "$dir/run-ce"
common=(--set "data.train_files=[$dir/data/train.json]" --set "data.image_folder=$dir/data"
        --set "data.tokenizer=$dir/data/tokenizer.model" --set train.num_threads=1 --set logging.progress=plain
        --set "data.eval_files=[$dir/data/eval_aligned.json, $dir/data/eval_conflict.json, $dir/data/eval_nohint.json]")
echo "demo: evaluating the seeing stage-1 model (bench/seeing/stage1) before stage 2"
"$bin" eval -c configs/demo.yaml "${common[@]}" --set train.num_threads=2 --out "$dir/stage1.json" > "$dir/stage1.log" 2>&1 ||
  { echo "demo: the stage-1 evaluation failed, see $dir/stage1.log"; exit 1; }
"$bin" train -c configs/demo.yaml "${common[@]}" --set "train.output_dir=$dir/run" > "$dir/run.log" 2>&1 & aligned=$!
"$bin" train -c configs/demo.yaml "${common[@]}" --set "train.output_dir=$dir/run-ce" --set "losses=[]" \
  > "$dir/run-ce.log" 2>&1 & ce=$!
trap 'kill $aligned $ce 2>/dev/null || true' INT TERM
echo "demo: stage 2, CE only ($dir/run-ce) and CE + alignment ($dir/run) side by side, one thread each"
declare -A shown  # each run's last progress line printed, so a run that has not moved prints nothing
while kill -0 $aligned 2>/dev/null || kill -0 $ce 2>/dev/null; do
  sleep 20
  for log in "$dir/run-ce.log" "$dir/run.log"; do
    line=$(grep -E 'step [0-9]+/|eval ' "$log" | tail -n 1 | sed 's/^.* info //') || true
    [ -n "$line" ] && [ "$line" != "${shown[$log]:-}" ] && echo "  $(basename "$log" .log): $line"
    shown[$log]=$line
  done
done
status=0
wait $aligned || { echo "demo: the aligned run failed, see $dir/run.log"; status=1; }
wait $ce || { echo "demo: the CE run failed, see $dir/run-ce.log"; status=1; }
[ $status = 0 ] || exit $status
losses=$(grep -A3 '^losses:' configs/demo.yaml | grep -oE 'name: [a-z_]+' | cut -d' ' -f2 | paste -sd+ -)
echo
"$py" tools/compare_runs.py "stage 1 (sees)=$dir/stage1.json" "CE only=$dir/run-ce" "CE + ${losses:-alignment}=$dir/run"
"$py" tools/plot_metrics.py "$dir/run/metrics.jsonl" > /dev/null && echo "curves: $dir/run/curves.png" ||
  echo "demo: no curves (needs /usr/bin/python3 with matplotlib)"
echo "demo: data in $dir/data; checkpoints, train.log and metrics.jsonl in $dir/run and $dir/run-ce"
