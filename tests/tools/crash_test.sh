#!/usr/bin/env bash
# Process-level checkpoint safety with the real binary: SIGTERM writes a checkpoint and exits 0;
# kill -9 at 20 random moments (saving every step, so many land in a save) never leaves a checkpoint that
# resume would pick up broken, every rerun resumes from the newest complete one, and the run that finishes
# ends with weights bitwise equal to a run that was never interrupted.
set -u
source "$(dirname "$0")/lib.sh"
bin=$1
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
tiny_fixture "$bin" "$tmp" 60 4
cat > "$tmp/run.yaml" <<Y
model: {hf_config: config.json}
data: {train_files: [data/train.json], image_folder: data, tokenizer: data/tokenizer.model, chat_template: plain}
train: {output_dir: out, max_steps: 300, per_device_train_batch_size: 4, learning_rate: 1.0e-3, num_threads: 1,
        freeze_vision_tower: false}
losses: [{name: dual_channel}]
checkpoint: {save_steps: 1, save_total_limit: 3, resume_from_checkpoint: auto}
logging: {logging_steps: 50, progress: plain}
Y
latest_step() { cat "$tmp/out/latest" 2>/dev/null | tr -d '\n'; }

# SIGTERM: finish the step, save, exit 0.
"$bin" train -c "$tmp/run.yaml" --set train.output_dir="$tmp/term" > "$tmp/term.log" 2>&1 &
pid=$!; sleep 3; kill -TERM $pid; wait $pid; code=$?
if [ $code = 0 ] && grep -q "stopped by signal" "$tmp/term.log" && [ -d "$tmp/term/$(cat "$tmp/term/latest" 2>/dev/null | tr -d '\n')" ]; then ok
else bad "SIGTERM: exit $code"; tail -5 "$tmp/term.log"; fi

# kill -9 at random moments.
prev=-1
for i in $(seq 1 20); do
  "$bin" train -c "$tmp/run.yaml" > "$tmp/kill$i.log" 2>&1 &
  pid=$!
  # The random moment counts from the start of training, not of the process: loading LibTorch takes 1-2 s
  # on a busy machine, and a kill before the first step proves nothing.
  for _ in $(seq 1 300); do grep -q "training [0-9]* of" "$tmp/kill$i.log" 2>/dev/null && break; sleep 0.1; done
  sleep "$(awk -v s=$RANDOM 'BEGIN { printf "%.2f", 0.1 + (s % 100) / 80 }')"
  kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null
  name=$(latest_step)
  [ -z "$name" ] && { [ $i -le 2 ] && continue; bad "run $i: no checkpoint yet"; continue; }
  step=$((10#${name#step-}))
  if "$bin" inspect "$tmp/out/$name" >/dev/null 2>&1 && [ -f "$tmp/out/$name/trainer_state.json" ]; then ok
  else bad "run $i: latest checkpoint $name is not readable"; fi
  if [ $step -ge $prev ]; then ok; else bad "run $i: latest went back from $prev to $step"; fi
  # A run that wrote a newer checkpoint must have resumed (one killed before it got that far proves nothing).
  if [ $i -gt 1 ] && [ $prev -ge 0 ] && [ $step -gt $prev ] && ! grep -q "resumed from" "$tmp/kill$i.log"; then
    bad "run $i did not resume"; tail -3 "$tmp/kill$i.log"
  fi
  prev=$step
done
# Finish, then compare with a run that never stopped.
"$bin" train -c "$tmp/run.yaml" > "$tmp/final.log" 2>&1 || bad "the final resume failed: $(tail -2 "$tmp/final.log")"
"$bin" train -c "$tmp/run.yaml" --set train.output_dir="$tmp/straight" --set "checkpoint.resume_from_checkpoint=\"\"" \
  > "$tmp/straight.log" 2>&1 || bad "the uninterrupted run failed"
if cmp -s "$tmp/out/step-000300/model.safetensors" "$tmp/straight/step-000300/model.safetensors"; then ok
else bad "after 20 kills the final weights differ from the uninterrupted run's"; fi
finish
