#!/usr/bin/env bash
# The modalign command line: help lists every subcommand, config prints and errors, tokenize; probe, eval --out,
# generate and convert end to end on a tiny run (weights named by a step folder, the run folder or `latest`).
set -u
source "$(dirname "$0")/lib.sh"
bin=$1; src=$2
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
check() {  # name, expected exit code, regex the output must match, command...
  local name=$1 want=$2 re=$3; shift 3
  out=$("$@" 2>&1); code=$?
  if [ "$code" = "$want" ] && grep -Eq -- "$re" <<<"$out"; then ok
  else bad "$name: exit $code (want $want), output:"; echo "$out" | head -20; fi
}
check help 0 'train.*fine-tune' "$bin" --help
for sub in train eval probe generate synth inspect convert config tokenize plan; do check "help-$sub" 0 "^ *$sub " "$bin" --help; done
check version 0 'modalign 0\.1\.0' "$bin" --version
check defaults 0 'learning_rate: 2e-05  # peak learning rate' "$bin" config --defaults
printf 'train:\n  learning_rate: 1e-4\n' > "$tmp/a.yaml"
check dump 0 'learning_rate: 5e-05' "$bin" config -c "$tmp/a.yaml" --set train.learning_rate=5e-5 --dump
printf 'train:\n  lerning_rate: 1e-4\n' > "$tmp/bad.yaml"
check bad-key 2 "bad.yaml:2: unknown key 'train.lerning_rate'; did you mean 'train.learning_rate'" \
  "$bin" config -c "$tmp/bad.yaml" --dump
printf "train:\n  max_steps: 3\n" > "$tmp/nodata.yaml"
check train-nodata 2 "data error: data.tokenizer is not set" "$bin" train -c "$tmp/nodata.yaml"
check inspect 0 'language_model.model.norm.weight +F64 +\[32\] 256 bytes' "$bin" inspect "$src/tests/golden/llava_tiny_golden.safetensors"
printf 'abc' > "$tmp/trunc.safetensors"
check inspect-bad 2 'bad safetensors: .*trunc.safetensors: truncated: 3 bytes' "$bin" inspect "$tmp/trunc.safetensors"
check inspect-missing 2 'cannot open' "$bin" inspect "$tmp/none.safetensors"
check no-subcommand 106 'A subcommand is required' "$bin"
# tokenize: Hugging Face ids of the real Qwen2 vocabulary (subset), pieces, --json, --decode, a folder as the tokenizer.
qwen=$src/tests/golden/tokenizers/qwen2_subset.json
check tokenize 0 '^9707 11 1879 0$' "$bin" tokenize --tokenizer "$qwen" --text 'Hello, world!'
check tokenize-pieces 0 '^\["Hello",",","Ġworld","!"\]$' "$bin" tokenize --tokenizer "$qwen" --text 'Hello, world!' --pieces
printf '["Hello world", " Hello World!"]' > "$tmp/strings.json"
check tokenize-json 0 '^\[\[9707,1879\],\[21927,4337,0\]\]$' "$bin" tokenize --tokenizer "$qwen" --json "$tmp/strings.json"
check tokenize-decode 0 '^Hello, world!$' "$bin" tokenize --tokenizer "$qwen" --decode --text '151644 9707,11 1879 0'
mkdir -p "$tmp/qwen" && cp "$qwen" "$tmp/qwen/tokenizer.json"
check tokenize-folder 0 '^21927 4337$' "$bin" tokenize --tokenizer "$tmp/qwen" --text ' Hello World'
check tokenize-usage 2 'give either --text or --json' "$bin" tokenize --tokenizer "$qwen"
check tokenize-bad-id 2 "'x1' is not an id" "$bin" tokenize --tokenizer "$qwen" --decode --text '1 x1'
check tokenize-missing 2 'tokenizer error: .*none.json: tokenizer file not found' "$bin" tokenize --tokenizer "$tmp/none.json" --text a
for f in "$src"/configs/*.yaml; do [ -e "$f" ] && check "preset-$(basename "$f")" 0 'learning_rate' "$bin" config -c "$f" --dump; done

# probe: a 2-step tiny run, then two checkpoints on one split; table, json, csv (and a plot when python is there).
tiny_fixture "$bin" "$tmp" 16 6
cat > "$tmp/probe.yaml" <<Y
model: {hf_config: config.json}
data: {train_files: [data/train.json], image_folder: data, tokenizer: data/tokenizer.model, chat_template: vicuna_v1}
train: {output_dir: run, max_steps: 2, per_device_train_batch_size: 4, num_threads: 1}
checkpoint: {save_steps: 1, save_total_limit: 3}
logging: {progress: plain}
Y
"$bin" train -c "$tmp/probe.yaml" > "$tmp/train.log" 2>&1 || { echo "tiny train failed"; cat "$tmp/train.log"; }
check probe 0 'step-000002 on eval_conflict \(6 samples with an image\)' \
  "$bin" probe -c "$tmp/probe.yaml" --checkpoint "$tmp/run/step-000001" --compare "$tmp/run/step-000002" \
  --data "$tmp/data/eval_conflict.json" --out "$tmp/probe"
check probe-csv 0 '^.*step-000001,eval_conflict,0,response,0\.[0-9]+,' cat "$tmp/probe/probe.csv"
check probe-json 0 '"last_prompt"' cat "$tmp/probe/probe.json"
check probe-missing 1 'not a complete checkpoint' "$bin" probe -c "$tmp/probe.yaml" --checkpoint "$tmp/none" \
  --data "$tmp/data/eval_conflict.json" --out "$tmp/probe2"
check probe-bad-data 2 'data error: .*nothing.json' "$bin" probe -c "$tmp/probe.yaml" --checkpoint "$tmp/run/step-000001" \
  --data "$tmp/nothing.json" --out "$tmp/probe2"

# eval --out: the printed table and a JSON file with per-type accuracy; the run folder stands for `latest`.
check eval 0 'eval_conflict +[0-9.]+ +[0-9.]+ +[0-9.]+ +6' "$bin" eval -c "$tmp/probe.yaml" --checkpoint "$tmp/run" \
  --set "data.eval_files=[$tmp/data/eval_conflict.json]" --out "$tmp/eval.json"
check eval-json 0 '"accuracy_by_type"' cat "$tmp/eval.json"
# eval without --checkpoint: the config's model.weights, the same numbers as that checkpoint given as --checkpoint.
check eval-weights 0 "results: $tmp/eval_weights.json" "$bin" eval -c "$tmp/probe.yaml" --set "model.weights=$tmp/run/step-000002" \
  --set "data.eval_files=[$tmp/data/eval_conflict.json]" --out "$tmp/eval_weights.json"
cmp -s "$tmp/eval.json" "$tmp/eval_weights.json" && ok || bad "eval with model.weights differs from eval --checkpoint"
# generate: one prompt about one image, and a whole split as JSON lines (the same answers as eval would give).
check generate-prompt 0 '.' "$bin" generate -c "$tmp/probe.yaml" --checkpoint "$tmp/run/latest" \
  --image "$tmp/data/images/eval_conflict_00000.png" --prompt "What colour is the circle?"
check generate-data 0 "answers: $tmp/answers.jsonl" "$bin" generate -c "$tmp/probe.yaml" --checkpoint "$tmp/run" \
  --data "$tmp/data/eval_conflict.json" --out "$tmp/answers.jsonl"
[ "$(wc -l < "$tmp/answers.jsonl")" = 6 ] && grep -q '"reference":' "$tmp/answers.jsonl" && ok || bad "answers.jsonl: 6 lines with references"
check generate-usage 2 'give either --prompt or --data' "$bin" generate -c "$tmp/probe.yaml" --checkpoint "$tmp/run"
# convert needs the model section only: no tokenizer, no data, a losses list it never reads.
printf 'model: {hf_config: %s/config.json}\nlosses: [{name: attention_kl}]\n' "$tmp" > "$tmp/model_only.yaml"
check convert 0 "wrote $tmp/export.safetensors" "$bin" convert -c "$tmp/model_only.yaml" --checkpoint "$tmp/run" \
  --out "$tmp/export.safetensors" --merge-lora
check convert-inspect 0 'language_model.model.norm.weight' "$bin" inspect "$tmp/export.safetensors"
# The Qwen2.5-VL family through the CLI: a 2-step run of the qwen2_5_vl_demo preset (the real Qwen vocabulary,
# the Qwen2 tokenizer.json subset and ChatML; the 16-pixel images become 64 x 64 by min_pixels: 16 image
# tokens), probe, generate, and convert writing the Hub names.
cat > "$tmp/qwen.yaml" <<Y
model: {preset: qwen2_5_vl_demo}
data: {train_files: [data/train.json], image_folder: data, tokenizer: $qwen, chat_template: qwen2_vl}
train: {output_dir: run-qwen, max_steps: 2, per_device_train_batch_size: 4, num_threads: 1}
losses: [{name: dual_channel}, {name: attention_kl}]
logging: {progress: plain}
Y
check qwen-train 0 'finished after 2 steps' "$bin" train -c "$tmp/qwen.yaml"
check qwen-probe 0 'on eval_conflict \(6 samples with an image\)' "$bin" probe -c "$tmp/qwen.yaml" \
  --checkpoint "$tmp/run-qwen" --data "$tmp/data/eval_conflict.json" --out "$tmp/probe-qwen"
check qwen-generate 0 "answers: $tmp/answers-qwen.jsonl" "$bin" generate -c "$tmp/qwen.yaml" --checkpoint "$tmp/run-qwen" \
  --data "$tmp/data/eval_conflict.json" --out "$tmp/answers-qwen.jsonl"
check qwen-convert 0 "wrote $tmp/qwen.safetensors" "$bin" convert -c "$tmp/qwen.yaml" --checkpoint "$tmp/run-qwen" \
  --out "$tmp/qwen.safetensors"
check qwen-convert-names 0 '^  model\.layers\.0\.self_attn\.q_proj\.bias ' "$bin" inspect "$tmp/qwen.safetensors"
check qwen-convert-merger 0 '^  visual\.merger\.mlp\.0\.weight ' "$bin" inspect "$tmp/qwen.safetensors"
# plan: the 7B Qwen shapes from the preset alone (no weights), LoRA on a bfloat16 base (the merger trains too),
# 2,048 tokens per sample.
printf 'model: {preset: qwen2_5_vl_7b, dtype: bfloat16}\ntrain: {lora_rank: 8, per_device_train_batch_size: 1}\ndata: {model_max_length: 2048}\n' > "$tmp/plan7b.yaml"
check plan-7b 0 '^parameters: 8312351744 \(vision tower 631975680, projector 44574464, language model 7615616512, LoRA 20185088\); trainable: 64759552' \
  "$bin" plan -c "$tmp/plan7b.yaml"
check plan-fits-with-checkpointing 0 'fits in 24 GiB per rank as configured \(gradient_checkpointing: false\): no; with gradient_checkpointing: true it would' \
  "$bin" plan -c "$tmp/plan7b.yaml" --memory-gib 24
check plan-too-small 0 'fits in 8 GiB per rank as configured \(gradient_checkpointing: false\): no$' "$bin" plan -c "$tmp/plan7b.yaml" --memory-gib 8
# A preset named on the command line is enough to plan before the checkpoint exists (llava_stage2.yaml names an
# hf_config under ../models that is not there), and the plan says which shapes it used.
check plan-preset-wins 0 '^shapes: preset llava-1.5-7b \(named on the command line; model.hf_config .*not read\)' \
  "$bin" plan -c "$src/configs/llava_stage2.yaml" --set model.preset=llava-1.5-7b
# tokenize with the fixture's SentencePiece model: --add-special puts BOS (1) first; the ids decode back.
check tokenize-spm 0 '^1 [0-9 ]+$' "$bin" tokenize --tokenizer "$tmp/data/tokenizer.model" --text 'What colour is the circle?' --add-special
ids=$("$bin" tokenize --tokenizer "$tmp/data/tokenizer.model" --text 'What colour is the circle?')
check tokenize-spm-decode 0 '^What colour is the circle\?$' "$bin" tokenize --tokenizer "$tmp/data" --decode --text "$ids"
finish
