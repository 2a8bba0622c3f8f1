# Sourced by the shell tests: pass/fail counting (`ok`, `bad MESSAGE`, `finish` prints the counts and
# fails the script if anything failed), and `tiny_fixture BIN DIR TRAIN EVAL`, which writes DIR/data (the
# synthetic benchmark with 16-pixel images and a 200-piece tokenizer) and DIR/config.json (the golden
# shapes, vocabulary 300).
fails=0; passes=0
ok() { passes=$((passes+1)); }
bad() { fails=$((fails+1)); echo "FAIL: $*"; }
finish() {
  echo "$passes passed, $fails failed"
  [ "$fails" = 0 ]
}

tiny_fixture() {
  "$1" synth --out "$2/data" --train "$3" --eval "$4" --image-size 16 --vocab-size 200 >/dev/null 2>&1 ||
    { echo "synth failed"; exit 1; }
  cat > "$2/config.json" <<'J'
{"vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 2,
 "image_size": 16, "patch_size": 4}, "text_config": {"vocab_size": 300, "hidden_size": 32, "intermediate_size": 48,
 "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}, "image_token_index": 3}
J
}
