#!/usr/bin/python3
"""modalign vs a plain PyTorch-Python step on the same work, plus the machine's GEMM limit (`make bench`).

    /usr/bin/python3 bench/compare.py [--presets demo qwen2_5_vl small] [--bf16-presets demo small] [--rounds 3]
                                      [--build build]

The GEMM rate is measured at the start and at the end; the higher counts. Per preset (bench/configs/<preset>.yaml): `step_bench export` writes the initial weights, the batches the
trainer will draw and spec.json; then, for each round, CE only and CE + dual_channel run on both sides
alternately (modalign, PyTorch, modalign, PyTorch, ...), each in a fresh process with untimed warm-up
steps. First-step losses must agree (1e-4 relative). Prints a markdown table and writes it with the raw
results to <build>/bench/compare.md and compare.json.

Mixed precision (--bf16-presets): in the same rounds, CE + dual_channel also runs as modalign with
train.bf16 and as the PyTorch peer under torch.autocast("cpu", bfloat16); a second table gives bf16 against
float32 (modalign) and modalign bf16 against PyTorch bf16, paired by round, and the loss gap after the
timed steps.

FLOPs: one formula for both sides, the matmul work of the plain implementation (forward, and twice that
backward where parameters train): vision layers (all of them, as output_hidden_states runs them; backward
only up to the feature layer and only when the tower trains), projector, decoder projections and
attention products, and the LM head at every position; for Qwen2.5-VL the tower's blocks with attention
per image or per window, as configured, and the merger.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = "/usr/bin/python3"
SETTINGS = {"demo": {"warmup": 3, "steps": 10}, "qwen2_5_vl": {"warmup": 3, "steps": 10},
            "small": {"warmup": 2, "steps": 4}}


def run_json(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def batch_shapes(path):
    """[(samples, tokens, images, Qwen grids or None)] per step, from step_bench's batches."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        body = f.read()
    steps = sorted({int(k.split(".")[0]) for k in header if k != "__metadata__"})
    out = []
    for i in steps:
        grids = None
        if f"{i}.image_grid_thw" in header:
            entry = header[f"{i}.image_grid_thw"]
            begin, end = entry["data_offsets"]
            flat = [int.from_bytes(body[k:k + 8], "little") for k in range(begin, end, 8)]
            grids = [flat[k:k + 3] for k in range(0, len(flat), 3)]
        ids = header[f"{i}.input_ids"]["shape"]
        out.append((ids[0], ids[1], len(grids) if grids is not None else header[f"{i}.pixel_values"]["shape"][0], grids))
    return out


def qwen_vision_flops(spec, grids):
    """Qwen2.5-VL tower: patch embed, blocks (attention per image in full blocks, per window in the others)
    and merger; forward, plus twice that backward when the tower trains (the merger always trains here)."""
    v, frozen = spec["shapes"]["qwen_vision"], spec["freeze"]
    c, i, m = v["hidden_size"], v["intermediate_size"], v["spatial_merge_size"]
    ws = v["window_size"] // m // v["patch_size"]
    n = sum(t * h * w for t, h, w in grids)
    full = sum(t * (h * w) ** 2 for t, h, w in grids)
    windowed = 0
    for t, h, w in grids:
        sides = [[min(ws, g // m - k) * m for k in range(0, g // m, ws)] for g in (h, w)]
        windowed += t * sum((a * b) ** 2 for a in sides[0] for b in sides[1])
    vt = 1 if frozen["vision_tower"] else 3
    patch = 2 * n * v["in_channels"] * v["temporal_patch_size"] * v["patch_size"] ** 2 * c
    blocks = sum(2 * n * (4 * c * c + 3 * c * i) + 4 * c * (full if k in v["fullatt_block_indexes"] else windowed)
                 for k in range(v["depth"]))
    merger = 2 * (n // (m * m)) * (m * m * c) * (m * m * c + v["out_hidden_size"])
    return (patch + blocks) * vt + merger * (1 if frozen["projector"] else 3)


def plain_flops(spec, b, seq, images, grids=None):
    """Matmul FLOPs of one step of the plain implementation (see the module docstring)."""
    s, frozen = spec["shapes"], spec["freeze"]
    if s.get("family") == "qwen2_5_vl":
        return qwen_vision_flops(spec, grids) + decoder_flops(s["text"], frozen, b, seq)
    v, t = s["vision"], s["text"]
    p = (v["image_size"] // v["patch_size"]) ** 2
    dv, iv, lv = v["hidden_size"], v["intermediate_size"], v["num_hidden_layers"]
    used = lv + 1 + s["vision_feature_layer"] if s["vision_feature_layer"] < 0 else s["vision_feature_layer"]
    vt = 1 if frozen["vision_tower"] else 3
    patch = 2 * images * p * v["num_channels"] * v["patch_size"] ** 2 * dv
    layer = 2 * images * (p + 1) * (4 * dv * dv + 2 * dv * iv) + 4 * images * (p + 1) ** 2 * dv
    vision = patch * vt + layer * (used * vt + (lv - used))
    d = t["hidden_size"]
    proj = 2 * images * p * (dv * d + (d * d if s["projector"] == "mlp2x_gelu" else 0)) * (1 if frozen["projector"] else 3)
    return vision + proj + decoder_flops(t, frozen, b, seq)


def decoder_flops(t, frozen, b, seq):
    """Decoder projections, attention products and the LM head at every position."""
    d, i, h, g = t["hidden_size"], t["intermediate_size"], t["num_attention_heads"], t["num_key_value_heads"]
    hd = d // h
    rows = b * seq
    lm = 1 if frozen["language_model"] else 3
    dec = t["num_hidden_layers"] * (2 * rows * (2 * d * h * hd + 2 * d * g * hd + 3 * d * i) + 4 * b * h * seq * seq * hd)
    head = 2 * rows * d * t["vocab_size"]
    return (dec + head) * lm


def native_bf16():
    """The rule of lib/util/cpu_features: a bf16 dot-product flag on a flags (x86) or Features (aarch64) line."""
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return False
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.startswith(("flags", "Features")) and {"avx512_bf16", "amx_bf16", "bf16"} & set(value.split()):
            return True
    return False


def summary(xs):
    return statistics.median(xs), min(xs), max(xs)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--presets", nargs="+", default=["demo", "qwen2_5_vl", "small"])
    ap.add_argument("--bf16-presets", nargs="*", default=["demo", "small"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--build", default="build")
    ap.add_argument("--bf16-anyway", action="store_true",
                    help="run the bf16 rows on a CPU without native bf16 too (20-30x slower there)")
    args = ap.parse_args()
    if args.bf16_presets and not native_bf16() and not args.bf16_anyway:
        print("bf16 rows skipped: /proc/cpuinfo lists no avx512_bf16, amx_bf16 or bf16, so LibTorch's bf16 products "
              "run far slower than float32 here (--bf16-anyway to measure them)", flush=True)
        args.bf16_presets = []
    bench = os.path.join(args.build, "bench", "step_bench")
    out_dir = os.path.join(args.build, "bench")
    gemm_start = run_json([bench, "gemm", "--threads", "2"])["gflops"]
    print(f"fp32 GEMM rate (2048^3, 2 threads, median of 10): {gemm_start:.0f} GFLOP/s", flush=True)
    results = {"presets": {}}
    for preset in args.presets:
        config = f"bench/configs/{preset}.yaml"
        warm, steps = SETTINGS[preset]["warmup"], SETTINGS[preset]["steps"]
        ref_dir = os.path.join(out_dir, f"ref_{preset}")
        subprocess.run([bench, "export", config, "--steps", str(warm + steps), "--out", ref_dir], check=True, cwd=ROOT)
        spec = json.load(open(os.path.join(ROOT, ref_dir, "spec.json")))
        runs = {}
        for r in range(args.rounds):
            for losses in ("ce", "config"):
                bf16 = losses == "config" and preset in args.bf16_presets
                for side in ("modalign", "pytorch") + (("modalign_bf16", "pytorch_bf16") if bf16 else ()):
                    cmd = ([bench, "train", config, "--losses", losses] if side.startswith("modalign") else
                           [PYTHON, "bench/pytorch_reference.py", ref_dir, "--losses", losses])
                    if side.endswith("bf16"):
                        cmd += ["--set", "train.bf16=true"] if side.startswith("modalign") else ["--bf16"]
                    res = run_json(cmd + ["--warmup", str(warm), "--steps", str(steps)])
                    print(f"{preset} round {r + 1} {losses:6s} {side:13s} "
                          f"{statistics.median(res['step_ms']):8.1f} ms/step  loss {res['first_loss']:.6f}", flush=True)
                    acc = runs.setdefault((losses, side), {"step_ms": [], "tok_s": [], "rss": [], "first": [], "last": [],
                                                           "round_ms": []})
                    acc["step_ms"] += res["step_ms"]
                    acc["round_ms"].append(statistics.median(res["step_ms"]))
                    acc["tok_s"] += [tok / (ms / 1e3) for tok, ms in zip(res["step_tokens"], res["step_ms"])]
                    acc["rss"].append(res["peak_rss_mb"])
                    acc["first"].append(res["first_loss"])
                    acc["last"].append(res["last_loss"])
        timed = batch_shapes(os.path.join(ROOT, ref_dir, "batches.safetensors"))[warm:]
        flops = statistics.mean(plain_flops(spec, *shape) for shape in timed)
        results["presets"][preset] = {"runs": {f"{k[0]}/{k[1]}": v for k, v in runs.items()}, "plain_flops": flops,
                                      "batches": timed}
    # The limit is the best rate the machine shows: measured again at the end, the higher one counts.
    gemm_end = run_json([bench, "gemm", "--threads", "2"])["gflops"]
    gemm = results["gemm_gflops"] = max(gemm_start, gemm_end)
    print(f"fp32 GEMM rate again at the end: {gemm_end:.0f} GFLOP/s; using {gemm:.0f}", flush=True)
    text = report(results)
    loader = run_json([bench, "loader", f"bench/configs/{args.presets[0]}.yaml"])
    first = results["presets"][args.presets[0]]
    samples = first["batches"][0][0]
    consumed = samples / (statistics.median(first["runs"]["config/modalign"]["step_ms"]) / 1e3)
    text += (f"\n\nData loader (`{args.presets[0]}` config): {loader['samples_per_s']['0']:.0f} samples/s in the "
             f"calling thread, {max(loader['samples_per_s'].values()):.0f} with its worker threads; the trainer "
             f"consumes {consumed:.1f} samples/s (CE + dual_channel).")
    print(text.split("\n")[-1])
    results["loader"] = loader
    # Eval generation: the KV-cached path against full re-forwards (the evaluator before the cache).
    gen = run_json([bench, "generate", f"bench/configs/{args.presets[0]}.yaml", "--split", "demo/data/eval_conflict.json"])
    cached, uncached = statistics.median(gen["cached_samples_per_s"]), statistics.median(gen["uncached_samples_per_s"])
    text += (f"\n\nEval generation (`{args.presets[0]}`, {gen['samples']} prompts of eval_conflict, untrained model: "
             f"{gen['mean_answer_tokens']:.1f} tokens per answer): {cached:.0f} samples/s with the KV cache, "
             f"{uncached:.0f} with full re-forwards ({cached / uncached:.1f}x; medians of 3 alternating rounds, same answers).")
    print(text.split("\n")[-1])
    results["generate"] = gen
    with open(os.path.join(ROOT, out_dir, "compare.md"), "w") as f:
        f.write(f"fp32 GEMM rate: {gemm:.0f} GFLOP/s (start {gemm_start:.0f}, end {gemm_end:.0f})\n{text}\n")
    with open(os.path.join(ROOT, out_dir, "compare.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(f"\nwritten: {out_dir}/compare.md, {out_dir}/compare.json")


def report(results):
    gemm = results["gemm_gflops"]
    lines = ["", "| preset | losses | side | ms/step median (min-max) | tokens/s median (min-max) | modalign / PyTorch: "
             "median of paired rounds (range) | peak RSS MB | first loss | plain GFLOP/step | GFLOP/s | of GEMM rate |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    notes = []
    for preset, p in results["presets"].items():
        runs = p["runs"]
        for losses in ("ce", "config"):
            for side in ("modalign", "pytorch"):
                r = runs[f"{losses}/{side}"]
                ms, tk = summary(r["step_ms"]), summary(r["tok_s"])
                gflops = p["plain_flops"] / 1e9
                rate = gflops / (ms[0] / 1e3)
                # Both sides see the same batches, so the tokens/s ratio is the inverse time ratio; each round's
                # modalign run is paired with the PyTorch run right after it (drift on a shared machine cancels).
                paired = [p_ms / m_ms for m_ms, p_ms in zip(runs[f"{losses}/modalign"]["round_ms"],
                                                            runs[f"{losses}/pytorch"]["round_ms"])]
                ratio = (f"**{statistics.median(paired):.2f}x** ({min(paired):.2f}-{max(paired):.2f})"
                         if side == "modalign" else "")
                label = "CE" if losses == "ce" else "CE + dual_channel"
                lines.append(f"| {preset} | {label} | {side} | {ms[0]:.0f} ({ms[1]:.0f}-{ms[2]:.0f}) | {tk[0]:.0f} "
                             f"({tk[1]:.0f}-{tk[2]:.0f}) | {ratio} | {max(r['rss']):.0f} | {r['first'][0]:.6f} | "
                             f"{gflops:.1f} | {rate:.0f} | {100 * rate / gemm:.0f}% |")
            a, b = runs[f"{losses}/modalign"]["first"][0], runs[f"{losses}/pytorch"]["first"][0]
            if abs(a - b) > 1e-4 * max(1.0, abs(b)):
                notes.append(f"WARNING: {preset} {losses}: first-step losses differ: {a} vs {b}")
        ce, dc = runs["ce/modalign"], runs["config/modalign"]
        # Paired by round too: each round's CE + dual_channel run against the CE run two runs before it.
        dts = [d / c - 1 for c, d in zip(ce["round_ms"], dc["round_ms"])]
        dr = max(dc["rss"]) / max(ce["rss"]) - 1
        notes.append(f"{preset}: dual_channel overhead in modalign: step time {100 * statistics.median(dts):+.1f}% "
                     f"(median of paired rounds; range {100 * min(dts):+.1f}% to {100 * max(dts):+.1f}%), "
                     f"peak RSS {100 * dr:+.1f}%")
    text = "\n".join(lines + [""] + notes) + bf16_report(results)
    print(text)
    return text


def bf16_report(results):
    """Mixed precision rows: modalign float32, modalign bf16, PyTorch bf16 (CE + dual_channel)."""
    lines = ["", "", "Mixed precision (CE + dual_channel; bf16 = modalign train.bf16 / PyTorch torch.autocast):", "",
             "| preset | side | ms/step median (min-max) | tokens/s median | peak RSS MB | first loss | last loss | "
             "vs modalign float32 (paired rounds) | modalign bf16 / PyTorch bf16 (paired rounds) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    any_rows = False
    for preset, p in results["presets"].items():
        runs = p["runs"]
        if "config/modalign_bf16" not in runs:
            continue
        any_rows = True
        base = runs["config/modalign"]["round_ms"]
        for side in ("modalign", "modalign_bf16", "pytorch", "pytorch_bf16"):
            r = runs[f"config/{side}"]
            ms, tk = summary(r["step_ms"]), summary(r["tok_s"])
            speed = [b / m for b, m in zip(base, r["round_ms"])]
            vs = f"{statistics.median(speed):.2f}x ({min(speed):.2f}-{max(speed):.2f})" if side != "modalign" else ""
            peer = ""
            if side == "modalign_bf16":
                paired = [q / m for m, q in zip(r["round_ms"], runs["config/pytorch_bf16"]["round_ms"])]
                peer = f"**{statistics.median(paired):.2f}x** ({min(paired):.2f}-{max(paired):.2f})"
            lines.append(f"| {preset} | {side.replace('_', ' ')} | {ms[0]:.0f} ({ms[1]:.0f}-{ms[2]:.0f}) | {tk[0]:.0f} | "
                         f"{max(r['rss']):.0f} | {r['first'][0]:.6f} | {r['last'][0]:.6f} | {vs} | {peer} |")
    return "\n".join(lines) if any_rows else ""


if __name__ == "__main__":
    sys.exit(main())
