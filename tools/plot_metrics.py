#!/usr/bin/env python3
"""Draws training curves from a modalign metrics.jsonl: loss terms, learning rate, visual attention
share per layer, and eval accuracy per split. Run with Debian's /usr/bin/python3 (matplotlib).

    /usr/bin/python3 tools/plot_metrics.py runs/x/metrics.jsonl [--out runs/x/curves.png]
"""
import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("metrics")
    ap.add_argument("--out", default=None, help="PNG path (default: next to metrics.jsonl)")
    args = ap.parse_args()
    train, evals = [], []
    with open(args.metrics) as f:
        for line in f:
            if line.strip():
                rec = json.loads(line)
                (train if rec.get("kind") == "train" else evals).append(rec)
    if not train:
        raise SystemExit(f"{args.metrics}: no training records")
    steps = [r["step"] for r in train]
    fig, ax = plt.subplots(1, 4, figsize=(18, 4))
    skip = {"kind", "step", "epoch", "lr", "grad_norm", "tokens_per_s"}
    for key in [k for k in train[-1] if k not in skip and not k.startswith("visual_share")]:
        ax[0].plot(steps, [r.get(key) for r in train], label=key)
    ax[0].set_title("loss terms")
    ax[0].set_yscale("symlog", linthresh=1e-2)
    ax[1].plot(steps, [r["lr"] for r in train])
    ax[1].set_title("learning rate")
    layers = sorted({k for r in train for k in r if k.startswith("visual_share")}, key=lambda k: int(k.split(".l")[1]))
    for key in layers:
        pts = [(r["step"], r[key]) for r in train if key in r and r[key] is not None]
        ax[2].plot([p[0] for p in pts], [p[1] for p in pts], label=key.replace("visual_share.", "layer "))
    ax[2].set_title("response->image attention share")
    for key in sorted({k for r in evals for k in r if k.endswith(".accuracy")}):
        pts = [(r["step"], r[key]) for r in evals if key in r]
        ax[3].plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=key.replace(".accuracy", ""))
    ax[3].set_title("eval accuracy")
    ax[3].set_ylim(0, 1.05)
    for a in ax:
        a.set_xlabel("step")
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=7)
    fig.tight_layout()
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.metrics)), "curves.png")
    fig.savefig(out, dpi=90)
    print(f"plot: {out}")


if __name__ == "__main__":
    main()
