#!/usr/bin/env bash
# `modalign train --nproc 2` on loopback: killing one worker ends the whole run with a clear message
# well within the timeout, the launcher's exit code is non-zero, and rerunning resumes from the last
# checkpoint and finishes; a hung (stopped) worker ends the run after distributed.timeout_s.
set -u
source "$(dirname "$0")/lib.sh"
bin=$1
tmp=$(mktemp -d); trap 'kill -9 $(jobs -p) 2>/dev/null; rm -rf "$tmp"' EXIT
tiny_fixture "$bin" "$tmp" 64 4
port=$((20000 + RANDOM % 12000))  # below the ephemeral range (32768+), where Gloo pairs bind
cat > "$tmp/run.yaml" <<Y
model: {hf_config: config.json}
data: {train_files: [data/train.json], image_folder: data, tokenizer: data/tokenizer.model, chat_template: plain}
train: {output_dir: out, max_steps: 100000, per_device_train_batch_size: 2, num_threads: 1, freeze_vision_tower: false}
losses: [{name: dual_channel}]
checkpoint: {save_steps: 20, save_total_limit: 2, resume_from_checkpoint: auto}
logging: {logging_steps: 1000, progress: plain}
distributed: {nproc: 2, master_port: $port, timeout_s: 60}
Y
"$bin" train -c "$tmp/run.yaml" > "$tmp/run.log" 2>&1 &
launcher=$!
for _ in $(seq 1 300); do [ -s "$tmp/out/latest" ] && break; sleep 0.1; done
[ -s "$tmp/out/latest" ] && ok || bad "no checkpoint after 30 s"
victim=""
for p in $(pgrep -P $launcher); do tr '\0' '\n' < /proc/$p/environ | grep -qx 'RANK=1' && victim=$p; done
[ -n "$victim" ] && ok || bad "no rank-1 worker found under launcher $launcher"
start=$(date +%s)
kill -9 "$victim"
wait $launcher; code=$?; took=$(( $(date +%s) - start ))
if [ $code -ne 0 ] && grep -q "worker rank 1 was killed by signal 9" "$tmp/run.log" && [ $took -lt 60 ]; then ok
else bad "after kill -9 of rank 1: exit $code after ${took}s"; tail -5 "$tmp/run.log"; fi
[ -z "$(pgrep -P $launcher)" ] && ok || bad "workers left running"
# Resume: the newest complete checkpoint, 10 more steps.
last=$(sed 's/step-0*//' "$tmp/out/latest")
"$bin" train -c "$tmp/run.yaml" --set train.max_steps=$((last + 10)) --set distributed.master_port=$((port + 1)) > "$tmp/resume.log" 2>&1
code=$?
if [ $code = 0 ] && grep -q "resumed from .*step-0*$last at step $last" "$tmp/resume.log" && grep -q "finished after $((last + 10)) steps" "$tmp/resume.log"; then ok
else bad "resume after the kill: exit $code"; tail -5 "$tmp/resume.log"; fi

# A hung peer: rank 1 stopped (SIGSTOP); rank 0's next collective fails after timeout_s = 5 and the launcher
# ends the run (the stopped worker is killed after the grace period).
rm -rf "$tmp/out"
"$bin" train -c "$tmp/run.yaml" --set distributed.timeout_s=5 --set distributed.master_port=$((port + 2)) > "$tmp/hang.log" 2>&1 &
launcher=$!
for _ in $(seq 1 300); do [ -s "$tmp/out/latest" ] && break; sleep 0.1; done
victim=""
for p in $(pgrep -P $launcher); do tr '\0' '\n' < /proc/$p/environ | grep -qx 'RANK=1' && victim=$p; done
start=$(date +%s)
kill -STOP "$victim"
wait $launcher; code=$?; took=$(( $(date +%s) - start ))
if [ $code -ne 0 ] && grep -q "worker rank 0 exited with code" "$tmp/hang.log" && [ $took -lt 40 ]; then ok
else bad "hung rank 1: exit $code after ${took}s"; tail -5 "$tmp/hang.log"; fi
finish
