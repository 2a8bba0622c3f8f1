#!/usr/bin/env python3
"""The modality-conflict study: does an alignment loss make the `demo` model answer from the image when the
text hint lies? Trains every setting with paired seeds (same seed = same initial weights and data order),
evaluates at a third, two thirds and the end, probes the final checkpoint, and writes the table and plots.

    /usr/bin/python3 bench/efficacy.py                 # the whole plan (skips runs whose results exist)
    /usr/bin/python3 bench/efficacy.py --only ce,dc_log --seeds 8-9 [--difficulty easy]   # a piece by hand
    /usr/bin/python3 bench/efficacy.py --report        # table + plots from the results there are

The plan: every setting with seeds 0-2 on `medium`; CE and the two settings with the best paired conflict gain
then get seeds 3-7; finally `easy` (the control) with CE and the best setting, seeds 0-2.

Runs go to --work (default build/efficacy); the report to docs/efficacy.md and docs/efficacy_*.png. Each run
is one `modalign train` with one thread; --jobs of them run side by side (2 on 2 cores: ~1.5x the
throughput of one run with 2 threads).
"""
import argparse
import concurrent.futures as cf
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> (description, --set overrides on top of configs/demo.yaml)
DC = "name: dual_channel, weight: {w}, form: {form}, target: {target}"
SETTINGS = {
    "ce": ("CE only", ["losses=[]"]),
    "dc_balanced": ("CE + dual_channel capped_log, target balanced",
                    ["losses=[{%s}]" % DC.format(w=0.5, form="capped_log", target="balanced")]),
    "dc_capped08": ("CE + dual_channel capped_log, target 0.8",
                    ["losses=[{%s}]" % DC.format(w=0.5, form="capped_log", target=0.8)]),
    "dc_hinge": ("CE + dual_channel hinge, target 0.8",
                 ["losses=[{%s}]" % DC.format(w=0.5, form="hinge", target=0.8)]),
    "dc_log": ("CE + dual_channel log (uncapped)",
               ["losses=[{%s}]" % DC.format(w=0.5, form="log", target=0.8)]),
    "dc_decay": ("CE + dual_channel capped_log 0.8 + layer_decay",
                 ["losses=[{%s}, {name: layer_decay, weight: 0.5}]" % DC.format(w=0.5, form="capped_log", target=0.8)]),
    "aligner": ("CE + MODA duplex aligner", ["losses=[]", "model.moda_aligner=true"]),
    "aligner_dc": ("CE + aligner + dual_channel capped_log 0.8",
                   ["losses=[{%s}]" % DC.format(w=0.5, form="capped_log", target=0.8), "model.moda_aligner=true"]),
}
# The plan (the minimum): every setting with 3 seeds on `medium`; then CE and the two settings with
# the best paired conflict gain extended to 8 seeds; then `easy` as a control with CE and the best one.
FIRST_SEEDS, MORE_SEEDS, EASY_SEEDS = range(3), range(3, 8), range(3)
SPLITS = ("eval_aligned", "eval_conflict", "eval_nohint")


def sh(cmd, log=None):
    with open(log, "w") if log else open(os.devnull, "w") as out:
        r = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        raise RuntimeError(f"failed ({r.returncode}): {' '.join(cmd)}" + (f"; see {log}" if log else ""))


def make_data(args, difficulty):
    data = os.path.join(args.work, f"data-{difficulty}")
    if not os.path.exists(os.path.join(data, "train.json")):
        sh([args.bin, "synth", "--out", data, "--train", "2000", "--eval", "100", "--difficulty", difficulty,
            "--hint-agreement", "0.98"])
    return data


def run_one(args, difficulty, name, seed):
    """Trains, reads the evals, probes the final checkpoint; writes result.json last (its presence = done)."""
    out = os.path.join(args.work, "runs", difficulty, name, f"seed{seed}")
    result_path = os.path.join(out, "result.json")
    if os.path.exists(result_path):
        return result_path, False
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    data = os.path.join(args.work, f"data-{difficulty}")
    steps = args.steps
    common = [
        f"data.train_files=[{data}/train.json]",
        "data.eval_files=[%s]" % ", ".join(f"{data}/{s}.json" for s in SPLITS),
        f"data.image_folder={data}", f"data.tokenizer={data}/tokenizer.model",
        f"train.output_dir={out}", f"train.seed={seed}", f"train.num_threads={args.threads}",
        f"train.max_steps={steps}", f"train.eval_steps={steps // 3}", "checkpoint.save_steps=0",
        "checkpoint.save_total_limit=1", "logging.progress=plain",
    ]
    cmd = [args.bin, "train", "-c", os.path.join(ROOT, "configs", "demo.yaml")]
    for s in common + SETTINGS[name][1]:
        cmd += ["--set", s]
    t0 = time.time()
    sh(cmd, os.path.join(out, "stdout.log"))
    seconds = time.time() - t0
    evals = {}
    with open(os.path.join(out, "metrics.jsonl")) as f:
        for line in f:
            rec = json.loads(line)
            if rec.get("kind") != "eval":
                continue
            row = evals.setdefault(int(rec["step"]), {})
            for s in SPLITS:
                if f"{s}.accuracy" in rec:
                    row[s] = rec[f"{s}.accuracy"]
                if f"{s}.hint_rate" in rec:
                    row[s + ".hint_rate"] = rec[f"{s}.hint_rate"]
    latest = open(os.path.join(out, "latest")).read().strip()
    ckpt = os.path.join(out, latest)
    probe_dir = os.path.join(out, "probe")
    sh([args.bin, "probe", "-c", os.path.join(ROOT, "configs", "demo.yaml")] +
       sum([["--set", s] for s in common + SETTINGS[name][1]], []) +
       ["--checkpoint", ckpt, "--data", f"{data}/eval_conflict.json", "--out", probe_dir],
       os.path.join(out, "probe.log"))
    with open(os.path.join(probe_dir, "probe.json")) as f:
        probe = json.load(f)[0]
    result = {"difficulty": difficulty, "setting": name, "seed": seed, "steps": steps, "seconds": seconds,
              "evals": {str(k): v for k, v in sorted(evals.items())},
              "vr_response": [l["response"]["image"] for l in probe["layers"]],
              "vr_last_prompt": [l["last_prompt"]["image"] for l in probe["layers"]],
              "mdi_response": [l["response"]["mdi"] for l in probe["layers"]]}
    if seed != 0:  # keep seed 0's checkpoint for probe plots; the rest only cost disk
        shutil.rmtree(ckpt)
    tmp = result_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1)
    os.replace(tmp, result_path)
    return result_path, True


def run_all(args, jobs):
    """Runs the (difficulty, setting, seed) jobs, --jobs at a time; finished runs are skipped."""
    for difficulty in sorted({j[0] for j in jobs}):
        make_data(args, difficulty)
    # Seeds outer, settings inner: a stopped study has every setting at the same depth.
    jobs = sorted(jobs, key=lambda j: (j[2], j[0], list(SETTINGS).index(j[1])))
    t0 = time.time()
    with cf.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(run_one, args, *j): j for j in jobs}
        for done, fut in enumerate(cf.as_completed(futures), 1):
            _, ran = fut.result()
            print(f"[{done}/{len(jobs)}, {time.time() - t0:.0f} s] {'ran' if ran else 'skipped'} "
                  f"{'/'.join(map(str, futures[fut]))}", flush=True)


def best_settings(res, n):
    """The n settings with the largest mean paired conflict gain over CE on medium (first seeds)."""
    def gain(name):
        d = [r["evals"][str(r["steps"])]["eval_conflict"] - res[("medium", "ce", k[2])]["evals"][str(r["steps"])]["eval_conflict"]
             for k, r in res.items() if k[0] == "medium" and k[1] == name and ("medium", "ce", k[2]) in res]
        return statistics.mean(d) if d else float("-inf")
    return sorted((s for s in SETTINGS if s != "ce"), key=gain, reverse=True)[:n]


def parse_seeds(text):
    if "-" in text:
        a, b = text.split("-")
        return list(range(int(a), int(b) + 1))
    return [int(s) for s in text.split(",")]


def load_results(work):
    out = {}
    base = os.path.join(work, "runs")
    for root, _, files in os.walk(base):
        if "result.json" in files:
            with open(os.path.join(root, "result.json")) as f:
                r = json.load(f)
            out[(r["difficulty"], r["setting"], r["seed"])] = r
    return out


def mean_std(xs):
    if not xs:
        return "-"
    if len(xs) == 1:
        return f"{xs[0]:.3f}"
    return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs):.3f}"


def report(args):
    res = load_results(args.work)
    if not res:
        sys.exit(f"no results under {args.work}/runs")
    lines = ["# The modality-conflict study", "",
             "Generated by `/usr/bin/python3 bench/efficacy.py --report` from the runs under "
             f"`{os.path.relpath(args.work, ROOT)}`. `demo` preset, `configs/demo.yaml` training settings "
             "(batch 16, lr 1e-3 cosine, %d steps), built-in benchmark with hint agreement 0.98. Accuracy at the "
             "final step; Δ conflict = paired per-seed difference to CE only (same seed = same initial weights and "
             "data order); hint rate = share of conflict answers that repeat the misleading hint; VR = image share "
             "of the response queries' attention per decoder layer (probe on eval_conflict)." % args.steps, ""]
    for difficulty in ("medium", "easy"):
        names = [n for n in SETTINGS if any(k[0] == difficulty and k[1] == n for k in res)]
        if not names:
            continue
        lines += [f"## {difficulty}", "",
                  "| setting | seeds | aligned | conflict | nohint | Δ conflict (paired) | worst Δ | hint rate | "
                  "conflict at 1/3, 2/3 | VR per layer |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        ce = {k[2]: r for k, r in res.items() if k[0] == difficulty and k[1] == "ce"}
        for name in names:
            runs = sorted((r for k, r in res.items() if k[0] == difficulty and k[1] == name), key=lambda r: r["seed"])
            final = [r["evals"][str(r["steps"])] for r in runs]
            acc = {s: [f[s] for f in final] for s in SPLITS}
            deltas = [r["evals"][str(r["steps"])]["eval_conflict"] - ce[r["seed"]]["evals"][str(r["steps"])]["eval_conflict"]
                      for r in runs if r["seed"] in ce and name != "ce"]
            early = []
            for frac in (1, 2):
                step = str(runs[0]["steps"] * frac // 3)
                early.append(statistics.mean(r["evals"][step]["eval_conflict"] for r in runs if step in r["evals"]))
            vr = [statistics.mean(r["vr_response"][l] for r in runs) for l in range(len(runs[0]["vr_response"]))]
            hint = [f.get("eval_conflict.hint_rate", float("nan")) for f in final]
            lines.append("| %s | %d | %s | %s | %s | %s | %s | %s | %.3f, %.3f | %s |" % (
                SETTINGS[name][0], len(runs), mean_std(acc["eval_aligned"]), mean_std(acc["eval_conflict"]),
                mean_std(acc["eval_nohint"]), mean_std(deltas) if deltas else "-",
                f"{min(deltas):+.3f}" if deltas else "-", mean_std(hint), early[0], early[1],
                " ".join(f"{v:.2f}" for v in vr)))
        lines.append("")
    lines += ["Per-seed conflict accuracy (final step):", ""]
    for difficulty in ("medium", "easy"):
        for name in SETTINGS:
            runs = sorted((r for k, r in res.items() if k[0] == difficulty and k[1] == name), key=lambda r: r["seed"])
            if runs:
                lines.append(f"- {difficulty} / {name}: " + ", ".join(
                    f"s{r['seed']} {r['evals'][str(r['steps'])]['eval_conflict']:.2f}" for r in runs))
    lines.append("")
    os.makedirs(os.path.join(ROOT, "docs"), exist_ok=True)
    with open(os.path.join(ROOT, "docs", "efficacy.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    plot(res, args)
    print(os.path.join(ROOT, "docs", "efficacy.md"))


def plot(res, args):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = [n for n in SETTINGS if any(k[0] == "medium" and k[1] == n for k in res)]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    ax = axes[0]
    for i, name in enumerate(names):
        runs = [r for k, r in res.items() if k[0] == "medium" and k[1] == name]
        ys = [r["evals"][str(r["steps"])]["eval_conflict"] for r in runs]
        ax.scatter([i] * len(ys), ys, s=18, alpha=0.7)
        ax.plot([i - 0.25, i + 0.25], [statistics.mean(ys)] * 2, color="black")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("eval_conflict accuracy (final)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("medium: conflict accuracy per seed (bar = mean)", fontsize=9)
    ax = axes[1]
    for name in names:
        runs = [r for k, r in res.items() if k[0] == "medium" and k[1] == name]
        layers = range(len(runs[0]["vr_response"]))
        ax.plot(layers, [statistics.mean(r["vr_response"][l] for r in runs) for l in layers], "-o", ms=3, label=name)
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("VR: image share of response attention")
    ax.set_ylim(0, 1)
    ax.set_title("medium: per-layer visual attention ratio (probe, eval_conflict)", fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(os.path.join(ROOT, "docs", "efficacy_medium.png"), dpi=110)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "modalign"))
    ap.add_argument("--work", default=os.path.join(ROOT, "build", "efficacy"))
    ap.add_argument("--difficulty", default=None, help="medium or easy (default: the plan's)")
    ap.add_argument("--only", default=None, help="comma-separated settings (default: the plan's)")
    ap.add_argument("--seeds", default=None, help="e.g. 0-7 or 0,3 (default: the plan's count)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--report", action="store_true", help="only write the report from existing results")
    args = ap.parse_args()
    args.work = os.path.abspath(args.work)
    if not args.report:
        if args.only or args.seeds or args.difficulty:  # a hand-picked piece of the study
            difficulty = args.difficulty or "medium"
            names = args.only.split(",") if args.only else list(SETTINGS)
            run_all(args, [(difficulty, n, seed) for n in names
                           for seed in (parse_seeds(args.seeds) if args.seeds else FIRST_SEEDS)])
        else:
            run_all(args, [("medium", n, seed) for n in SETTINGS for seed in FIRST_SEEDS])
            best = best_settings(load_results(args.work), 2)
            print(f"best two on medium (paired conflict gain over seeds 0-2): {best}", flush=True)
            run_all(args, [("medium", n, seed) for n in ["ce"] + best for seed in MORE_SEEDS])
            run_all(args, [("easy", n, seed) for n in ["ce", best[0]] for seed in EASY_SEEDS])
    report(args)


if __name__ == "__main__":
    main()
