#!/usr/bin/env bash
# The fault catalogue: bad input as a careless or hostile user gives it (config, data, images, tokenizers,
# checkpoints, output folders). Each case asserts the exit code and that the message names the file or
# key, never hangs (FIFOs, directories), never aborts, and leaves every earlier good checkpoint loadable
# and byte-identical.
set -u
source "$(dirname "$0")/lib.sh"
bin=$1
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
tiny_fixture "$bin" "$tmp" 12 4
cat > run.yaml <<Y
model: {hf_config: config.json}
data: {train_files: [data/train.json], eval_files: [data/eval_conflict.json], image_folder: data,
       tokenizer: data/tokenizer.model, chat_template: vicuna_v1, num_workers: 0}
train: {output_dir: good, max_steps: 2, per_device_train_batch_size: 4, num_threads: 1}
checkpoint: {save_steps: 1}
logging: {progress: plain}
Y
"$bin" train -c run.yaml > good.log 2>&1 || { echo "the good run failed"; cat good.log; exit 1; }
sums() { find good -type f ! -name '.modalign.lock' ! -name train.log ! -name metrics.jsonl -print0 | sort -z | xargs -0 sha256sum; }
sums > good.sha256

# case NAME EXIT REGEX COMMAND...: the exit code, the message, no hang (60 s), the good run untouched.
case_() {
  local name=$1 want=$2 re=$3; shift 3
  out=$(timeout 60 "$@" 2>&1); code=$?
  if [ "$code" = "$want" ] && grep -Eq -- "$re" <<<"$out"; then ok
  else bad "$name: exit $code (want $want), output:"; echo "$out" | tail -5; fi
  sums | cmp -s - good.sha256 || bad "$name: the good checkpoints changed"
}
train=("$bin" train -c run.yaml --set train.output_dir=scratch)  # the cases below fail before any checkpoint
json() { printf '%s' "$2" > "$1"; }

# ---- config
printf 'train:\n  lerning_rate: 1e-4\n' > typo.yaml
case_ config-typo 2 "typo.yaml:2: unknown key 'train.lerning_rate'; did you mean 'train.learning_rate'" "${train[@]}" -c typo.yaml
printf 'train:\n  max_steps: 3\n  max_steps: 4\n' > dup.yaml
case_ config-duplicate-key 2 "dup.yaml:3: duplicate key 'train.max_steps' \(also at line 2\)" "${train[@]}" -c dup.yaml
printf 'losses:\n  - {name: dual_channel, form: capped_log, form: log}\n' > dup2.yaml
case_ config-duplicate-in-list 2 "dup2.yaml:2: duplicate key 'losses.0.form'" "${train[@]}" -c dup2.yaml
case_ config-choice 2 "train.lr_scheduler_type: 'cosin' is not one of" "${train[@]}" --set train.lr_scheduler_type=cosin
case_ config-not-a-number 2 "train.learning_rate" "${train[@]}" --set train.learning_rate=fast
case_ config-range 2 "train.learning_rate: must be" "${train[@]}" --set train.learning_rate=-1
printf 'train: [1, 2\n' > syntax.yaml
case_ config-syntax 2 "syntax.yaml:.*YAML syntax error" "${train[@]}" -c syntax.yaml
case_ config-missing-file 2 "none.yaml: cannot read config file: no such file" "$bin" train -c none.yaml
mkdir conf.d
case_ config-directory 2 "conf.d: cannot read config file: is a directory" "$bin" train -c conf.d
mkfifo fifo.yaml
case_ config-fifo 2 "fifo.yaml: cannot read config file: is a FIFO" "$bin" train -c fifo.yaml
case_ config-bad-set 2 "expected section.key=value" "${train[@]}" --set train.max_steps
case_ config-unknown-loss 2 "losses\[0\].name: 'dual' is not one of: dual_channel" "${train[@]}" --set "losses=[{name: dual}]"
case_ config-cross-field 2 "train.warmup_steps \(9\) exceeds train.max_steps \(2\)" "${train[@]}" --set train.warmup_steps=9
case_ config-regions-missing 2 "losses.0 \(attention_kl\) needs region targets, but .*noregions.json" \
  bash -c "sed 's/\"regions\"/\"boxes\"/' data/train.json > data/noregions.json &&
           $bin train -c run.yaml --set train.output_dir=out-kl --set 'data.train_files=[data/noregions.json]' --set 'losses=[{name: attention_kl}]'"

# ---- data files
case_ data-missing 2 "nope.json: cannot open dataset file: no such file" "${train[@]}" --set "data.train_files=[data/nope.json]"
case_ data-directory 2 "data/images: cannot open dataset file: is a directory" "${train[@]}" --set "data.train_files=[data/images]"
mkfifo data/fifo.json
case_ data-fifo 2 "fifo.json: cannot open dataset file: is a FIFO" "${train[@]}" --set "data.train_files=[data/fifo.json]"
json data/broken.json '[{"id": "a", "conversations": ['
case_ data-invalid-json 2 "broken.json:1: invalid JSON" "${train[@]}" --set "data.train_files=[data/broken.json]"
json data/empty.json '[]'
case_ data-empty 2 "empty.json: the dataset holds no samples" "${train[@]}" --set "data.train_files=[data/empty.json]"
json data/noconv.json '[{"id": "x7"}]'
case_ data-no-conversations 2 "noconv.json\[0\] \(id x7\).*missing \"conversations\"" "${train[@]}" --set "data.train_files=[data/noconv.json]"
json data/badbox.json '[{"id": "b1", "image": "images/train_00000.png", "regions": [[5, 5, 1, 1]], "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]}]'
case_ data-bad-region 2 "badbox.json\[0\] \(id b1\): region \[5,5,1,1\] is empty" "${train[@]}" --set "data.train_files=[data/badbox.json]"
case_ data-bad-eval-file-first 2 "broken.json:1: invalid JSON" "$bin" train -c run.yaml --set train.output_dir=evalfirst \
  --set "data.eval_files=[data/broken.json]" --set train.max_steps=50
ls evalfirst/step-* > /dev/null 2>&1 && bad "data-bad-eval-file-first: training started" || ok

# ---- images (one sample, its image broken in one way each)
image_case() {  # name, image path as the sample gives it, regex
  json data/one.json "[{\"id\": \"img1\", \"image\": \"$2\", \"conversations\": [{\"from\": \"human\", \"value\": \"<image>\\nq\"}, {\"from\": \"gpt\", \"value\": \"red\"}]}]"
  case_ "$1" 2 "$3" "${train[@]}" --set "data.train_files=[data/one.json]" --set "data.eval_files=[]"
}
image_case image-missing images/nope.png "one.json\[0\] \(id img1\).*nope.png: image file not found"
printf 'not a png' > data/images/junk.png
image_case image-corrupt images/junk.png "\(id img1\).*junk.png: not a JPEG, PNG, BMP or GIF image"
printf '\x89\x50\x4e\x47\x0d\x0a\x1a\x0a\x00\x00\x00\x0d\x49\x48\x44\x52\x00\x00\x27\x10\x00\x00\x27\x10\x08\x02\x00\x00\x00\x35\x2c\xf5\x70' > data/images/bomb.png  # a 10000 x 10000 PNG header, no pixels
image_case image-decompression-bomb images/bomb.png "\(id img1\).*bomb.png: image of 10000 x 10000 pixels has a side above the limit of 8192"
mkfifo data/images/fifo.png
image_case image-fifo images/fifo.png "\(id img1\).*fifo.png: cannot read image: is a FIFO"
image_case image-directory images "\(id img1\).*images: cannot read image: is a directory"
image_case image-dotdot ../../../../etc/passwd "\(id img1\): image '../../../../etc/passwd' resolves to /etc/passwd, outside data.image_folder"
image_case image-absolute /etc/passwd "\(id img1\): image '/etc/passwd' resolves to /etc/passwd, outside data.image_folder"
json data/allbad.json '[{"id": "m1", "image": "images/gone1.png", "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]},
  {"id": "m2", "image": "images/gone2.png", "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]}]'
case_ data-skip-nothing-usable 2 "a whole epoch \(1 batches\) gave no usable sample.*gone" \
  "${train[@]}" --set "data.train_files=[data/allbad.json]" --set data.on_bad_sample=skip --set "data.eval_files=[]"

# ---- tokenizers
case_ tokenizer-missing 2 "nope.model: tokenizer file not found" "${train[@]}" --set data.tokenizer=data/nope.model
case_ tokenizer-directory 2 "images: a folder without tokenizer.json or tokenizer.model" "${train[@]}" --set data.tokenizer=data/images
printf '{"model": {"type": "BPE", "vocab": {' > data/cut.json
case_ tokenizer-json-truncated 2 "cut.json: not valid JSON" "${train[@]}" --set data.tokenizer=data/cut.json
printf '{"model": {"type": "Unigram", "vocab": []}}' > data/unigram.json
case_ tokenizer-json-unsupported 2 "unigram.json: unsupported model 'Unigram'" "${train[@]}" --set data.tokenizer=data/unigram.json
printf 'garbage' > data/garbage.model
case_ tokenizer-garbage 2 "garbage.model: not a SentencePiece model" "${train[@]}" --set data.tokenizer=data/garbage.model
mkfifo data/fifo.model
case_ tokenizer-fifo 2 "fifo.model: cannot read the tokenizer: is a FIFO" "${train[@]}" --set data.tokenizer=data/fifo.model

# ---- safetensors and checkpoints
head -c 100 good/step-000001/model.safetensors > trunc.safetensors
case_ inspect-truncated 2 "trunc.safetensors: .*truncated" "$bin" inspect trunc.safetensors
mkfifo fifo.safetensors
case_ inspect-fifo 2 "fifo.safetensors: cannot open: is a FIFO" "$bin" inspect fifo.safetensors
case_ eval-missing-checkpoint 1 "nothing: not a complete checkpoint .*no such folder" "$bin" eval -c run.yaml --checkpoint nothing
cp -r good/step-000001 partial && rm partial/optimizer.safetensors
case_ eval-incomplete-checkpoint 1 "partial: not a complete checkpoint .*lacks optimizer.safetensors" "$bin" eval -c run.yaml --checkpoint partial
cp -r good/step-000001 badstate && printf '{"step": 1}' > badstate/trainer_state.json
case_ resume-bad-state 1 "badstate/trainer_state.json: 'data_cursor/epoch' is missing or malformed" \
  "${train[@]}" --set checkpoint.resume_from_checkpoint=badstate
mkdir -p outside/run && printf '../../good/step-000001\n' > outside/run/latest
case_ latest-outside 2 "latest: names '../../good/step-000001', not a checkpoint folder inside" \
  "${train[@]}" --set model.weights=outside/run
case_ weights-empty-folder 2 "conf.d: folder holds neither model.safetensors" "${train[@]}" --set model.weights=conf.d

# ---- output folders
cp -r good other
case_ fresh-run-over-another 2 "train.output_dir .*other holds checkpoints of another run \(step-000002 and 1 more\).*overwrite_output_dir" \
  "$bin" train -c run.yaml --set train.output_dir=other
case_ fresh-run-overwrite 0 "finished after 2 steps" "$bin" train -c run.yaml --set train.output_dir=other --set train.overwrite_output_dir=true
printf '%s\n' $$ > good/.modalign.lock  # a live process (this shell) holds the folder
case_ output-dir-locked 1 "good is in use by another run \(process $$ holds .*.modalign.lock\)" \
  "$bin" train -c run.yaml --set checkpoint.resume_from_checkpoint=auto --set train.max_steps=3
rm -f good/.modalign.lock
cp -r good stale && printf '999999999\n' > stale/.modalign.lock  # its process is gone
case_ output-dir-stale-lock 0 "finished after 3 steps" "$bin" train -c run.yaml --set train.output_dir=stale \
  --set checkpoint.resume_from_checkpoint=auto --set train.max_steps=3
[ ! -e stale/.modalign.lock ] && ok || bad "the lock outlived the run"
mkdir -p synth-full && printf 'x' > synth-full/keep.txt
case_ synth-not-empty 1 "synth-full is not empty; pick an empty folder or pass --force" "$bin" synth --out synth-full --train 2 --eval 1
case_ synth-huge-image 1 "--image-size above 4096" "$bin" synth --out synth-huge --train 2 --eval 1 --image-size 1000000
case_ diverging-run 1 "non-finite steps in a row .*the last checkpoint \(weights checked finite\) is .*step-0000" \
  "$bin" train -c run.yaml --set train.output_dir=diverging --set train.learning_rate=1e30 --set train.max_steps=40 --set train.max_nonfinite_steps=2 --set "data.eval_files=[]"
# ---- pretrain-tower: a file without synth's "objects", more held out than there are samples
tower=("$bin" pretrain-tower -c run.yaml --set "data.eval_files=[]" --set train.max_steps=2 --out tower.safetensors)
case_ tower-no-objects 2 'train.json\[0\] \(id train-00000\): pretrain-tower needs one image and "objects"' "${tower[@]}"
case_ tower-holdout 2 "captions.json holds 12 samples; it needs 500 held out plus at least one batch" \
  "${tower[@]}" --set "data.train_files=[data/captions.json]"
[ -e tower.safetensors ] && bad "tower: a failed pre-stage wrote its output"
finish
