#!/usr/bin/python3
"""Does bf16 mixed precision train like float32? The `demo` preset (configs/demo_scratch.yaml: 300 steps, CE +
dual_channel, the tower training) run from the same seed in float32 and with train.bf16, side by side with
one thread each, logging the loss at every step; then a control: float32 again on 2 threads, whose only
difference is the order of some float32 sums (thread-partitioned reductions). Once the loss nears zero the
model memorises and any perturbation sends runs on their own trajectories, so relative gaps of tiny losses
say little by themselves: the control shows how far float32 drifts from itself. Prints, for bf16 and the
control against float32, the largest relative gap of the per-step losses and of their 10-step moving
averages over steps 1-50, 51-100 and 101-300, the largest absolute gap after step 100, the final losses, and
the final evaluations of all three (tools/compare_runs.py).

    /usr/bin/python3 bench/bf16_curve.py [--build build] [--out build/bench/bf16_curve] [--data demo/data]

Resumable: a run whose metrics.jsonl already holds its final evaluation is not run again.
"""
import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def done(run):
    path = os.path.join(run, "metrics.jsonl")
    if not os.path.exists(path):
        return False
    with open(path) as f:
        return any(json.loads(line).get("kind") == "eval" and json.loads(line)["step"] == 300 for line in f)


def losses(run):
    out = {}
    with open(os.path.join(run, "metrics.jsonl")) as f:
        for line in f:
            rec = json.loads(line)
            if rec.get("kind") == "train":
                out[rec["step"]] = rec["loss"]
    return out


def moving(xs, k=10):
    return [sum(xs[max(0, i - k + 1):i + 1]) / len(xs[max(0, i - k + 1):i + 1]) for i in range(len(xs))]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default="build")
    ap.add_argument("--out", default="build/bench/bf16_curve")
    ap.add_argument("--data", default="demo/data")
    args = ap.parse_args()
    binary = os.path.join(ROOT, args.build, "modalign")
    data = os.path.join(ROOT, args.data)
    if not os.path.exists(os.path.join(data, "train.json")):
        subprocess.run([binary, "synth", "--out", data, "--train", "2000", "--eval", "100"], check=True)
    runs = {name: os.path.join(ROOT, args.out, name) for name in ("float32", "bf16", "float32_2threads")}

    def start(name, threads, bf16):
        run = runs[name]
        if done(run):
            print(f"{name}: already complete in {run}")
            return None
        cmd = [binary, "train", "-c", "configs/demo_scratch.yaml", "--set", f"data.train_files=[{data}/train.json]",
               "--set", f"data.image_folder={data}", "--set", f"data.tokenizer={data}/tokenizer.model",
               "--set", f"data.eval_files=[{data}/eval_aligned.json, {data}/eval_conflict.json, {data}/eval_nohint.json]",
               "--set", f"train.num_threads={threads}", "--set", "logging.logging_steps=1",
               "--set", "logging.progress=plain", "--set", f"train.output_dir={run}",
               "--set", "train.overwrite_output_dir=true", "--set", f"train.bf16={'true' if bf16 else 'false'}"]
        os.makedirs(run, exist_ok=True)
        print(f"{name}: training in {run}", flush=True)
        return name, subprocess.Popen(cmd, cwd=ROOT, stdout=open(os.path.join(run, "train.stdout.log"), "w"),
                                      stderr=subprocess.STDOUT)

    def wait(procs):
        for name, p in filter(None, procs):
            if p.wait() != 0:
                sys.exit(f"{name} run failed: see {runs[name]}/train.stdout.log")

    wait([start("float32", 1, False), start("bf16", 1, True)])
    wait([start("float32_2threads", 2, False)])
    base = losses(runs["float32"])
    print()
    for name in ("bf16", "float32_2threads"):
        other = losses(runs[name])
        steps = sorted(set(base) & set(other))
        fa, fb = [base[s] for s in steps], [other[s] for s in steps]
        ma, mb = moving(fa), moving(fb)
        parts = []
        for lo, hi in ((1, 50), (51, 100), (101, 300)):
            idx = [i for i, s in enumerate(steps) if lo <= s <= hi]
            gap = max(abs(fb[i] - fa[i]) / fa[i] for i in idx)
            smooth = max(abs(mb[i] - ma[i]) / ma[i] for i in idx)
            parts.append(f"steps {lo}-{hi}: {100 * gap:.1f}% per step, {100 * smooth:.1f}% moving average")
        late = max(abs(fb[i] - fa[i]) for i, s in enumerate(steps) if s > 100)
        print(f"{name} vs float32: largest relative gap, {'; '.join(parts)}; largest absolute gap after step 100 "
              f"{late:.3f}; final loss {fb[-1]:.4f} vs {fa[-1]:.4f}, mean of the last 50 steps "
              f"{sum(fb[-50:]) / 50:.4f} vs {sum(fa[-50:]) / 50:.4f}")
    print()
    subprocess.run([sys.executable, "tools/compare_runs.py"] + [f"{name}={run}" for name, run in runs.items()],
                   check=True, cwd=ROOT)


if __name__ == "__main__":
    main()
