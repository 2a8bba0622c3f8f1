#!/usr/bin/env bash
# Runs every libFuzzer target of tests/fuzz for SECONDS each, seeded from tests/fuzz/corpus/<name>/.
# New inputs go to a scratch corpus (the checked-in seeds stay as they are); a crash leaves its input in
# build-fuzz/crashes/ and fails the run.  Usage: [FUZZ_SEED=N] run.sh BIN_DIR SECONDS (seed 0 = random)
set -euo pipefail
bin=$1 seconds=$2
here=$(cd "$(dirname "$0")" && pwd)
out=$(dirname "$bin")
mkdir -p "$out/crashes"
for name in safetensors config dataset image tokenizer; do
  work="$out/corpus/$name"
  mkdir -p "$work"
  echo "fuzz: $name for ${seconds}s (seeds: tests/fuzz/corpus/$name)"
  # rss_limit bounds a single input's memory; max_len keeps inputs small enough to run thousands per second.
  "$bin/${name}_fuzz" "$work" "$here/corpus/$name" -max_total_time="$seconds" -seed="${FUZZ_SEED:-0}" -rss_limit_mb=3072 \
    -max_len=65536 -timeout=20 -artifact_prefix="$out/crashes/$name-" -print_final_stats=1 2>"$out/$name.log" \
    || { tail -40 "$out/$name.log"; echo "fuzz: $name FAILED (input in $out/crashes/)"; exit 1; }
  grep -E "stat::number_of_executed_units|cov:" "$out/$name.log" | tail -2
done
echo "fuzz: all targets ran ${seconds}s each without a finding"
