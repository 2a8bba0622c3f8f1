#!/usr/bin/env python3
"""Draws a `modalign probe` result: per decoder layer, stacked bars of where response queries put their
attention (image / system / text), one panel per checkpoint (two side by side with --compare), and the
modality dominance index per layer. Run with Debian's /usr/bin/python3 (matplotlib).

    /usr/bin/python3 tools/plot_probe.py out/probe.json [--out out/probe.png] [--queries last_prompt]
"""
import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

def label(checkpoint):
    """The checkpoint's last three path parts (run/seed/step), enough to tell two runs apart."""
    return "/".join(os.path.normpath(checkpoint).split(os.sep)[-3:])


COLOURS = {"image": "#d95f02", "system": "#7570b3", "text": "#1b9e77"}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("probe")
    ap.add_argument("--out", default=None, help="PNG path (default: probe.png next to probe.json)")
    ap.add_argument("--queries", default="response", choices=["response", "last_prompt"])
    args = ap.parse_args()
    with open(args.probe) as f:
        reports = json.load(f)
    if not reports:
        raise SystemExit(f"{args.probe}: no reports")
    fig, axes = plt.subplots(1, len(reports) + 1, figsize=(4.2 * (len(reports) + 1), 3.8), squeeze=False)
    for ax, rep in zip(axes[0], reports):
        layers = [l["layer"] for l in rep["layers"]]
        bottom = [0.0] * len(layers)
        for group in ("image", "system", "text"):
            vals = [l[args.queries][group] for l in rep["layers"]]
            ax.bar(layers, vals, bottom=bottom, color=COLOURS[group], label=group)
            bottom = [b + v for b, v in zip(bottom, vals)]
        ax.set_ylim(0, 1)
        ax.set_xlabel("decoder layer")
        ax.set_ylabel(f"attention share ({args.queries} queries)")
        ax.set_title(f"{label(rep['checkpoint'])}\n{rep['split']} (n={rep['samples']})", fontsize=9)
        ax.legend(fontsize=7, loc="lower left", framealpha=0.9)
    ax = axes[0][-1]
    for rep, style in zip(reports, ("-o", "--s")):
        layers = [l["layer"] for l in rep["layers"]]
        ax.plot(layers, [l[args.queries]["mdi"] for l in rep["layers"]], style,
                label=label(rep["checkpoint"]))
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("MDI (text / image, per token)")
    ax.set_title("modality dominance index", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.probe)), "probe.png")
    fig.savefig(out, dpi=110)
    print(out)


if __name__ == "__main__":
    main()
