#!/usr/bin/env bash
# Data-parallel scaling on this machine: the `demo` preset, global batch 16, CE + dual_channel.
# Step time = (wall of a 50-step run - wall of a 10-step run) / 40, so start-up and the final save cancel.
#   bash bench/dp_scaling.sh [build/modalign]
set -eu
bin=${1:-build/modalign}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
"$bin" synth --out "$tmp/data" --train 2000 --eval 10 >/dev/null 2>&1
common=(-c configs/demo_scratch.yaml --set "data.train_files=[$tmp/data/train.json]" --set data.eval_files=[]
        --set "data.image_folder=$tmp/data" --set "data.tokenizer=$tmp/data/tokenizer.model"
        --set train.eval_steps=0 --set train.warmup_steps=0 --set checkpoint.save_steps=0 --set logging.progress=plain --set logging.logging_steps=1000)
wall() {  # steps nproc batch threads -> seconds
  local out="$tmp/run-$1-$2-$3-$4"
  local t0=$(date +%s.%N)
  "$bin" train "${common[@]}" --nproc "$2" --set train.max_steps="$1" --set train.per_device_train_batch_size="$3" \
    --set train.num_threads="$4" --set train.output_dir="$out" --set distributed.master_port=$((29600 + RANDOM % 1000)) \
    > "$out.log" 2>&1 || { echo "run failed: $out.log" >&2; tail -3 "$out.log" >&2; exit 1; }
  echo "$(date +%s.%N) - $t0" | bc
}
printf "%-34s %12s %10s\n" "setup (global batch 16)" "ms/step" "speed-up"
base=""
for cfg in "1 16 1" "1 16 2" "2 8 1"; do
  set -- $cfg
  short=$(wall 10 "$1" "$2" "$3"); long=$(wall 50 "$1" "$2" "$3")
  ms=$(echo "($long - $short) * 1000 / 40" | bc -l)
  [ -z "$base" ] && base=$ms
  printf "%-34s %12.0f %10.2f\n" "$1 process(es) x batch $2, $3 thread(s)" "$ms" "$(echo "$base / $ms" | bc -l)"
done
