#!/usr/bin/env python3
"""Cuts a byte-level BPE tokenizer.json down to what a set of strings needs, with ids unchanged.

    /usr/bin/python3 tests/golden/tokenizers/make_subset.py ../shared/tokenizers/qwen2/tokenizer.json \
        tests/golden/tokenizers/qwen2_subset.json ../shared/tokenizers/qwen2/encode_cases.inp \
        demo/data/train.json demo/data/eval_*.json

Kept: the 256 byte characters, every vocabulary token that occurs in one of the strings (NFC-normalised and
mapped to GPT-2's byte characters), the merges that build such a token, in their original order, and every
added token. Encoding any of the strings gives the same ids as the full file: every symbol BPE forms while
encoding a word is a substring of that word, so a merge whose result occurs in none of the strings can never
apply, and dropping it leaves the order of the others (their ranks relative to each other) unchanged.
Strings come from llama.cpp-style .inp files (cases separated by a __ggml_vocab_test__ line), from LLaVA
JSON datasets (every conversation turn) and from the ChatML template's fixed text.
"""
import json
import sys
import unicodedata

SEPARATOR = "\n__ggml_vocab_test__\n"
CHATML = ["system\nYou are a helpful assistant.", "\n", "user\n", "assistant\n"]


def byte_chars():
    printable = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def strings_of(path):
    if path.endswith(".json"):
        return [t["value"].replace("<image>", "") for s in json.load(open(path)) for t in s["conversations"]]
    return open(path, encoding="utf-8").read().split(SEPARATOR)


def main():
    source, out, inputs = sys.argv[1], sys.argv[2], sys.argv[3:]
    tok = json.load(open(source, encoding="utf-8"))
    table = byte_chars()
    texts = CHATML + [s for p in inputs for s in strings_of(p)]
    mapped = "\x00".join("".join(table[b] for b in unicodedata.normalize("NFC", t).encode("utf-8")) for t in texts)
    model = tok["model"]
    keep = {t for t in model["vocab"] if t in mapped} | set(table.values())
    model["vocab"] = {t: i for t, i in model["vocab"].items() if t in keep}
    merges = [m if isinstance(m, list) else m.split(" ", 1) for m in model["merges"]]
    model["merges"] = [m for m in merges if m[0] + m[1] in keep]
    with open(out, "w", encoding="utf-8") as f:
        json.dump(tok, f, ensure_ascii=False, separators=(",", ":"))
    print(f"{out}: {len(model['vocab'])} tokens, {len(model['merges'])} merges, {len(tok['added_tokens'])} added")


if __name__ == "__main__":
    main()
