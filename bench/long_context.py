#!/usr/bin/python3
"""Peak memory of one training step against sequence length: configs/qwen2_5_vl_demo.yaml (the tower trains)
on one image of growing size, batch 1, CE + dual_channel, one thread; a second binary (say, a build of an
older commit) is measured beside it when given.

    make build && /usr/bin/python3 bench/long_context.py [--old /path/to/old/modalign] [--sizes 256,512,1024]

Image side S px gives (S/16)^2 decoder image tokens and 4x as many tower patches. Each run is
`modalign train --set train.max_steps=1 ...` under /usr/bin/time; a run killed by the kernel or past
--limit-gib (ulimit -v) is reported as such. Writes build/bench/long_context/{results.json,long_context.md,
long_context.png}.
"""
import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_data(folder, side):
    from PIL import Image
    os.makedirs(folder, exist_ok=True)
    src = os.path.join(ROOT, "demo", "data", "images", "train_00000.png")
    img = Image.open(src).convert("RGB").resize((side, side), Image.NEAREST) if os.path.exists(src) else \
        Image.new("RGB", (side, side), (200, 40, 40))
    img.save(os.path.join(folder, "image.png"))
    sample = {"id": "long-0", "image": "image.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat colour is the circle?"}, {"from": "gpt", "value": "red"}]}
    with open(os.path.join(folder, "train.json"), "w") as f:
        json.dump([sample], f)


def run(name, binary, folder, side, limit_gib, timeout):
    tokens = (side // 16) ** 2
    out = os.path.join(folder, "run-" + name)
    subprocess.run(["rm", "-rf", out])
    cmd = [binary, "train", "-c", os.path.join(ROOT, "configs", "qwen2_5_vl_demo.yaml"),
           "--set", f"data.train_files=[{folder}/train.json]", "--set", f"data.image_folder={folder}",
           "--set", "data.eval_files=[]", "--set", f"data.image_max_pixels={side * side}",
           "--set", f"data.model_max_length={tokens + 256}", "--set", "train.per_device_train_batch_size=1",
           "--set", "train.max_steps=1", "--set", "train.warmup_steps=0", "--set", "train.eval_steps=0",
           "--set", "train.num_threads=1", "--set", "checkpoint.save_steps=0", "--set", f"train.output_dir={out}"]
    shell = f"ulimit -v {int(limit_gib * 1024 * 1024)}; exec /usr/bin/time -f 'MAXRSS %M' " + " ".join(
        f"'{c}'" for c in cmd)
    try:
        p = subprocess.run(["sh", "-c", shell], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"tokens": tokens, "status": f"timeout {timeout} s"}
    rss = [int(line.split()[1]) for line in p.stderr.splitlines() if line.startswith("MAXRSS")]
    status = "ok" if p.returncode == 0 else f"failed ({p.returncode})"
    if p.returncode != 0 and ("bad_alloc" in p.stderr + p.stdout or "memory" in (p.stderr + p.stdout).lower()):
        status = f"out of memory (limit {limit_gib} GiB)"
    return {"tokens": tokens, "status": status, "peak_gib": rss[0] / 1024 / 1024 if rss else None}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--new", default=os.path.join(ROOT, "build", "modalign"))
    ap.add_argument("--old", help="a second modalign binary to measure beside it")
    ap.add_argument("--sizes", default="256,512,768,1024,1536")
    ap.add_argument("--limit-gib", type=float, default=20.0)
    ap.add_argument("--timeout", type=int, default=1800)
    ap.add_argument("--out", default=os.path.join(ROOT, "build", "bench", "long_context"))
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    binaries = {"new": a.new} | ({"old": a.old} if a.old else {})
    results = {name: [] for name in binaries}
    for side in [int(s) for s in a.sizes.split(",")]:
        folder = os.path.join(a.out, f"side{side}")
        make_data(folder, side)
        for name, binary in binaries.items():
            r = run(name, binary, folder, side, a.limit_gib, a.timeout) | {"side": side}
            results[name].append(r)
            print(name, json.dumps(r), flush=True)
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    names = list(binaries)
    lines = ["| image | image tokens | " + " | ".join(f"{n} peak RSS" for n in names) + " |",
             "|---|---|" + "---|" * len(names)]
    for i, r in enumerate(results[names[0]]):
        cells = []
        for n in names:
            x = results[n][i]
            cells.append(f"{x['peak_gib']:.2f} GiB" if x["status"] == "ok" else x["status"])
        lines.append(f"| {r['side']} x {r['side']} | {r['tokens']} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    with open(os.path.join(a.out, "long_context.md"), "w") as f:
        f.write(table + "\n")
    print(table)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6, 4))
        for n in names:
            ok = [x for x in results[n] if x["status"] == "ok"]
            ax.plot([x["tokens"] for x in ok], [x["peak_gib"] for x in ok], "o-", label=n)
        ax.set_xlabel("decoder image tokens (tower patches: 4x)")
        ax.set_ylabel("peak RSS of one training step (GiB)")
        ax.set_title("qwen2_5_vl_demo, batch 1, tower training")
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(a.out, "long_context.png"), dpi=120)
    except ImportError:
        print("matplotlib missing: no plot", file=sys.stderr)


if __name__ == "__main__":
    main()
