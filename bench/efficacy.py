#!/usr/bin/env python3
"""The modality-conflict study: does an alignment loss keep the `demo` model answering from the image when
the text hint lies? Two regimes, each setting with paired seeds (same seed = same initial weights and data
order), evaluated at a third, two thirds and the end, the final checkpoint probed on eval_conflict.

    /usr/bin/python3 bench/efficacy.py                  # the whole plan (finished runs are skipped)
    /usr/bin/python3 bench/efficacy.py --regime sees_first --only ce,kl_true --seeds 0-2   # a piece by hand
    /usr/bin/python3 bench/efficacy.py --report         # docs/efficacy.md and the plots from the runs there are

Regimes (both on `medium` images, stage-2 / training data with hints right 98% of the time):
  scratch     the demo model trained from scratch on the hint-heavy split (configs/demo.yaml, 300 steps).
  sees_first  the situation of a real pretrained VLM, which reads both the image and the text. Stage 1 (once,
              CE only): QA whose hints are right half the time (4,000 samples, vision tower frozen), so reading
              the image pays and so does reading the hint. Stage 2 (per setting and seed): fine-tuning from
              that checkpoint on the hint-heavy split, vision tower frozen as in LLaVA's stage 2. CE alone
              drifts to the hint; the question is how much each setting keeps the model reading the image.
              (Measured first: a stage 1 on uninformative hints, `synth --chance-hints`, gives a model that
              never learned to use the hint and did not drift in 300 stage-2 steps: no shortcut to prevent.)
attention_kl's targets are the boxes `synth` writes for the shapes each question is about (`kl_true`), or
boxes of the same size at random places (`kl_random`, the ablation of Shrestha et al., ACL 2020).

The plan: sees_first with the main settings (seeds 0-2), then scratch with SCRATCH_SETTINGS (seeds 0-2).
With --full, then the search (weights, layers, combinations; seed 0, its best two then seeds 1-2; then the
schedules: CE, dual_channel and attention_kl at lr 1e-3 and at 1,000 steps, seed 0), and CE and the two best
settings by paired conflict gain on seeds 3-7. Runs go to --work
(default build/efficacy); each is one `modalign train` with one thread, --jobs side by side (2 on 2 cores).
"""
import argparse
import concurrent.futures as cf
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "configs", "demo.yaml")
SPLITS = ("eval_aligned", "eval_conflict", "eval_nohint")
TYPES = ("colour", "shape", "count")

DC = "{name: dual_channel, weight: %s, form: %s, target: %s}"
KL = "{name: attention_kl, weight: %s, layers: %s, renormalise: %s}"
# name -> (description, losses, extra overrides, train file of the stage-2 / scratch data)
SETTINGS = {
    "ce": ("CE only", [], [], "train.json"),
    "dc_balanced": ("dual_channel capped_log, target balanced", [DC % (0.5, "capped_log", "balanced")], [], "train.json"),
    "dc_capped08": ("dual_channel capped_log, target 0.8", [DC % (0.5, "capped_log", 0.8)], [], "train.json"),
    "dc_hinge": ("dual_channel hinge, target 0.8", [DC % (0.5, "hinge", 0.8)], [], "train.json"),
    "kl_true": ("attention_kl, true regions", [KL % (1.0, "all", "true")], [], "train.json"),
    "kl_random": ("attention_kl, random regions (ablation)", [KL % (1.0, "all", "true")], [], "train_random_regions.json"),
    "aligner": ("causal MODA aligner", [], ["model.moda_aligner=true"], "train.json"),
    "kl_true_dc": ("attention_kl true + dual_channel capped_log 0.8",
                   [KL % (1.0, "all", "true"), DC % (0.5, "capped_log", 0.8)], [], "train.json"),
    # The search (seed 0 first; a setting that wins it gets the full plan): weight, layers, the
    # unrenormalised KL (attention off the region, the hint included, costs too), uncapped log mass.
    "kl_true_w5": ("attention_kl true, weight 5", [KL % (5.0, "all", "true")], [], "train.json"),
    "kl_mass": ("attention_kl true, not renormalised", [KL % (1.0, "all", "false")], [], "train.json"),
    "kl_mass_late": ("attention_kl true, not renormalised, second half of the layers",
                     [KL % (1.0, "second_half", "false")], [], "train.json"),
    "kl_mass_random": ("attention_kl random regions, not renormalised (ablation)", [KL % (1.0, "all", "false")], [],
                       "train_random_regions.json"),
    "kl_mass_late_random": ("attention_kl random regions, not renormalised, second half (ablation)",
                            [KL % (1.0, "second_half", "false")], [], "train_random_regions.json"),
    "dc_log": ("dual_channel log (uncapped)", [DC % (0.5, "log", 0.8)], [], "train.json"),
}
# The plan that fits one 3-hour session on 2 cores (~33 runs of ~5 min, 2 at a time, plus stage 1): every
# family with its ablation. The other settings run by hand (--only) or with --full.
MAIN = ["ce", "dc_capped08", "kl_true", "kl_random", "kl_mass", "kl_mass_random", "aligner"]
SEARCH = ["dc_balanced", "dc_hinge", "kl_true_dc", "kl_true_w5", "kl_mass_late", "dc_log"]
# Schedule variants of the search: "setting@schedule" changes the regime's steps or learning rate, and is
# compared with "ce@schedule" (the same schedule without the loss), seed by seed.
SCHEDULES = {"lr1e-3": {"lr": 1e-3}, "1000steps": {"steps": 1000}}
SCHEDULE_SEARCH = [f"{n}@{s}" for s in SCHEDULES for n in ("ce", "dc_capped08", "kl_true")]
SCRATCH_SETTINGS = ["ce", "dc_capped08", "kl_true", "kl_mass"]
FIRST_SEEDS, MORE_SEEDS = range(3), range(3, 8)
REGIMES = ("sees_first", "scratch")
STAGE1 = {"steps": 2000, "lr": 1e-3}
STAGE2 = {"steps": 300, "lr": 3e-4}
SCRATCH = {"steps": 300, "lr": 1e-3}


def sh(cmd, log=None):
    with open(log, "w") if log else open(os.devnull, "w") as out:
        r = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        raise RuntimeError(f"failed ({r.returncode}): {' '.join(cmd)}" + (f"; see {log}" if log else ""))


def random_regions(data):
    """train_random_regions.json: every box moved to a uniformly random place of the image, same size."""
    out = os.path.join(data, "train_random_regions.json")
    if os.path.exists(out):
        return
    size = json.load(open(os.path.join(data, "synth.json")))["image_size"]
    rng = random.Random(12345)
    samples = json.load(open(os.path.join(data, "train.json")))
    for s in samples:
        moved = []
        for x0, y0, x1, y1 in s["regions"]:
            w, h = x1 - x0, y1 - y0
            nx, ny = rng.uniform(0, size - w), rng.uniform(0, size - h)
            moved.append([round(nx, 2), round(ny, 2), round(nx + w, 2), round(ny + h, 2)])
        s["regions"] = moved
    with open(out + ".tmp", "w") as f:
        json.dump(samples, f, indent=1)
    os.replace(out + ".tmp", out)


def make_data(args):
    """data (hints right 98%: stage 2 and scratch, and every eval split) and data-half (stage 1, hints right 50%)."""
    data, chance = os.path.join(args.work, "data"), os.path.join(args.work, "data-half")
    if not os.path.exists(os.path.join(data, "train.json")):
        sh([args.bin, "synth", "--out", data, "--train", "2000", "--eval", "100", "--hint-agreement", "0.98"])
    random_regions(data)
    if not os.path.exists(os.path.join(chance, "train.json")):
        sh([args.bin, "synth", "--out", chance, "--train", "4000", "--eval", "10", "--seed", "1", "--hint-agreement", "0.5"])
    return data, chance


def overrides(args, data, train_file, out, seed, steps, lr):
    return [
        f"data.train_files=[{data}/{train_file}]",
        "data.eval_files=[%s]" % ", ".join(f"{os.path.join(args.work, 'data')}/{s}.json" for s in SPLITS),
        f"data.image_folder={data}", f"data.tokenizer={data}/tokenizer.model",
        f"train.output_dir={out}", f"train.seed={seed}", f"train.num_threads={args.threads}",
        f"train.max_steps={steps}", f"train.eval_steps={steps // 3}", f"train.learning_rate={lr}",
        "checkpoint.save_steps=0", "checkpoint.save_total_limit=1", "logging.progress=plain",
    ]


def normalised(row):
    """<split>.accuracy -> <split>; every other <split>.* key (hint_rate, accuracy.<type>, loss) kept."""
    return {(k[: -len(".accuracy")] if k.endswith(".accuracy") else k): v for k, v in row.items()}


def read_evals(out):
    evals = {}
    with open(os.path.join(out, "metrics.jsonl")) as f:
        for line in f:
            rec = json.loads(line)
            if rec.get("kind") != "eval":
                continue
            row = evals.setdefault(str(int(rec["step"])), {})
            for key, value in rec.items():
                if key.split(".")[0] in SPLITS:
                    row[key] = value
    return {step: normalised(row) for step, row in evals.items()}


def stage1(args):
    """The sees-first regime's pretrained model: trained once, CE only, on QA with hints right half the time."""
    data, chance = make_data(args)
    out = os.path.join(args.work, "stage1")
    if os.path.exists(os.path.join(out, "result.json")):
        return out
    final_checkpoint = os.path.join(out, "step-%06d" % STAGE1["steps"], "trainer_state.json")
    seconds = None
    if not os.path.exists(final_checkpoint):  # trained already when only its evaluation is missing
        os.makedirs(out, exist_ok=True)  # a stopped stage 1 resumes from its newest checkpoint
        cmd = [args.bin, "train", "-c", DEMO]
        for s in overrides(args, chance, "train.json", out, 0, STAGE1["steps"], STAGE1["lr"]) + [
                "losses=[]", "train.freeze_vision_tower=true", f"train.num_threads={2 * args.threads}",
                "data.eval_files=[]", "train.eval_steps=0", "checkpoint.save_steps=250",
                "checkpoint.resume_from_checkpoint=auto"]:
            cmd += ["--set", s]
        t0 = time.time()
        sh(cmd, os.path.join(out, "stdout.log"))
        seconds = time.time() - t0
    # Evaluated on the eval splits of `data` (their images live there, not in data-half).
    sets = overrides(args, data, "train.json", out, 0, STAGE1["steps"], STAGE1["lr"])
    sh([args.bin, "eval", "-c", DEMO] + sum([["--set", s] for s in sets], []) +
       ["--checkpoint", out, "--out", os.path.join(out, "eval.json")], os.path.join(out, "eval.log"))
    last = {}
    for e in json.load(open(os.path.join(out, "eval.json"))):
        last[e["split"]] = e["accuracy"]
        if e.get("hint_rate", -1) >= 0:
            last[e["split"] + ".hint_rate"] = e["hint_rate"]
        for t, a in e.get("accuracy_by_type", {}).items():
            last[f"{e['split']}.accuracy.{t}"] = a
    result = {"steps": STAGE1["steps"], "seconds": seconds, "evals": {str(STAGE1["steps"]): last}}
    with open(os.path.join(out, "result.json"), "w") as f:
        json.dump(result, f, indent=1)
    return out


def run_one(args, regime, name, seed):
    """Trains, reads the evals, probes the final checkpoint; writes result.json last (its presence = done)."""
    out = os.path.join(args.work, "runs", regime, name, f"seed{seed}")
    result_path = os.path.join(out, "result.json")
    if os.path.exists(result_path):
        return result_path, False
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    data = os.path.join(args.work, "data")
    base, _, schedule = name.partition("@")
    desc, losses, extra, train_file = SETTINGS[base]
    plan = dict(STAGE2 if regime == "sees_first" else SCRATCH, **SCHEDULES.get(schedule, {}))
    sets = overrides(args, data, train_file, out, seed, plan["steps"], plan["lr"]) + [f"losses=[{', '.join(losses)}]"] + extra
    if regime == "sees_first":
        sets += [f"model.weights={os.path.join(args.work, 'stage1')}", "train.freeze_vision_tower=true", "train.warmup_steps=0"]
    cmd = [args.bin, "train", "-c", DEMO] + sum([["--set", s] for s in sets], [])
    t0 = time.time()
    sh(cmd, os.path.join(out, "stdout.log"))
    seconds = time.time() - t0
    probe_dir = os.path.join(out, "probe")
    sh([args.bin, "probe", "-c", DEMO] + sum([["--set", s] for s in sets], []) +
       ["--checkpoint", out, "--data", f"{data}/eval_conflict.json", "--out", probe_dir], os.path.join(out, "probe.log"))
    with open(os.path.join(probe_dir, "probe.json")) as f:
        probe = json.load(f)[0]
    result = {"regime": regime, "setting": name, "seed": seed, "steps": plan["steps"], "seconds": seconds,
              "evals": read_evals(out),
              "vr_response": [l["response"]["image"] for l in probe["layers"]],
              "vr_last_prompt": [l["last_prompt"]["image"] for l in probe["layers"]],
              "mdi_response": [l["response"]["mdi"] for l in probe["layers"]]}
    if seed != 0:  # keep seed 0's checkpoint for probe plots; the rest only cost disk
        for entry in os.listdir(out):
            if entry.startswith("step-"):
                shutil.rmtree(os.path.join(out, entry))
    with open(result_path + ".tmp", "w") as f:
        json.dump(result, f, indent=1)
    os.replace(result_path + ".tmp", result_path)
    return result_path, True


def run_all(args, jobs):
    """Runs the (regime, setting, seed) jobs, --jobs at a time; finished runs are skipped."""
    make_data(args)
    if any(j[0] == "sees_first" for j in jobs):
        stage1(args)
    # Seeds outer, settings inner: a stopped study has every setting at the same depth.
    jobs = sorted(jobs, key=lambda j: (j[2], REGIMES.index(j[0]), order(j[1])))
    t0 = time.time()
    with cf.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(run_one, args, *j): j for j in jobs}
        for done, fut in enumerate(cf.as_completed(futures), 1):
            _, ran = fut.result()
            print(f"[{done}/{len(jobs)}, {time.time() - t0:.0f} s] {'ran' if ran else 'skipped'} "
                  f"{'/'.join(map(str, futures[fut]))}", flush=True)


def final(r, key="eval_conflict"):
    return r["evals"][str(r["steps"])].get(key, float("nan"))


def order(name):
    """Settings in SETTINGS order, each followed by its schedule variants."""
    base, _, schedule = name.partition("@")
    return list(SETTINGS).index(base), ([""] + list(SCHEDULES)).index(schedule)


def names_in(res, regime):
    return sorted({k[1] for k in res if k[0] == regime}, key=order)


def label(name):
    base, _, schedule = name.partition("@")
    return SETTINGS[base][0] + (f" ({schedule})" if schedule else "")


def paired_gains(res, regime, name, key="eval_conflict"):
    """Per seed: the setting's final `key` minus CE's on the same schedule."""
    schedule = name.partition("@")[2]
    reference = "ce@" + schedule if schedule else "ce"
    ce = {k[2]: r for k, r in res.items() if k[0] == regime and k[1] == reference}
    return [final(r, key) - final(ce[k[2]], key) for k, r in sorted(res.items())
            if k[0] == regime and k[1] == name and k[2] in ce]


def best_settings(res, regime, n):
    """The n settings with the largest mean paired conflict gain over CE among those with 3 seeds or more."""
    def gain(name):
        d = paired_gains(res, regime, name)
        return statistics.mean(d) if len(d) >= 3 else float("-inf")
    return sorted((s for s in SETTINGS if s != "ce"), key=gain, reverse=True)[:n]


def parse_seeds(text):
    if "-" in text:
        a, b = text.split("-")
        return list(range(int(a), int(b) + 1))
    return [int(s) for s in text.split(",")]


def load_results(work):
    out = {}
    for root, _, files in os.walk(os.path.join(work, "runs")):
        if "result.json" in files:
            with open(os.path.join(root, "result.json")) as f:
                r = json.load(f)
            r["evals"] = {step: normalised(row) for step, row in r["evals"].items()}
            out[(r["regime"], r["setting"], r["seed"])] = r
    return out


def mean_std(xs, signed=False):
    fmt = "{:+.3f}" if signed else "{:.3f}"
    if not xs:
        return "-"
    if len(xs) == 1:
        return fmt.format(xs[0])
    return (fmt + " ± {:.3f}").format(statistics.mean(xs), statistics.stdev(xs))


def table(res, regime):
    names = names_in(res, regime)
    lines = ["| setting | seeds | aligned | conflict | nohint | Δ conflict (paired) | worst Δ | Δ aligned | hint rate | "
             "conflict colour / shape / count | conflict at 1/3, 2/3 | VR per layer |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in names:
        runs = sorted((r for k, r in res.items() if k[0] == regime and k[1] == name), key=lambda r: r["seed"])
        acc = {s: [final(r, s) for r in runs] for s in SPLITS}
        is_ce = name.partition("@")[0] == "ce"
        gains = paired_gains(res, regime, name) if not is_ce else []
        aligned_gains = paired_gains(res, regime, name, "eval_aligned") if not is_ce else []
        per_type = " / ".join("%.2f" % statistics.mean(final(r, f"eval_conflict.accuracy.{t}") for r in runs) for t in TYPES)
        early = []
        for frac in (1, 2):
            step = str(runs[0]["steps"] // 3 * frac)
            vals = [r["evals"][step]["eval_conflict"] for r in runs if step in r["evals"]]
            early.append(statistics.mean(vals) if vals else float("nan"))
        vr = [statistics.mean(r["vr_response"][l] for r in runs) for l in range(len(runs[0]["vr_response"]))]
        lines.append("| %s | %d | %s | %s | %s | %s | %s | %s | %s | %s | %.3f, %.3f | %s |" % (
            label(name), len(runs), mean_std(acc["eval_aligned"]), mean_std(acc["eval_conflict"]),
            mean_std(acc["eval_nohint"]), mean_std(gains, True) if gains else "-",
            f"{min(gains):+.3f}" if gains else "-", mean_std(aligned_gains, True) if aligned_gains else "-",
            mean_std([final(r, "eval_conflict.hint_rate") for r in runs]), per_type, early[0], early[1],
            " ".join(f"{v:.2f}" for v in vr)))
    return lines


def target_lines(res, regime):
    """The issue's target, setting by setting: +30 points conflict, aligned within 2, no seed worse by > 5,
    and true regions at least 15 points above random ones."""
    out = []
    for name in names_in(res, regime):
        gains = paired_gains(res, regime, name)
        if name.partition("@")[0] == "ce" or not gains:
            continue
        aligned = paired_gains(res, regime, name, "eval_aligned")
        ok = (statistics.mean(gains) >= 0.30, abs(statistics.mean(aligned)) <= 0.02, min(gains) >= -0.05)
        out.append(f"- {name}: conflict {statistics.mean(gains):+.3f} ({'met' if ok[0] else 'not met'}), aligned "
                   f"{statistics.mean(aligned):+.3f} ({'met' if ok[1] else 'not met'}), worst seed {min(gains):+.3f} "
                   f"({'met' if ok[2] else 'not met'})")
    for true, random_ in REGION_ABLATIONS:
        a = {r["seed"]: final(r) for k, r in res.items() if k[:2] == (regime, true)}
        b = {r["seed"]: final(r) for k, r in res.items() if k[:2] == (regime, random_)}
        seeds = sorted(set(a) & set(b))
        if seeds:
            diff = statistics.mean(a[s] - b[s] for s in seeds)
            out.append(f"- {true} (true regions) vs {random_} (random regions), seeds {seeds[0]}-{seeds[-1]}: conflict "
                       f"{diff:+.3f} ({'met' if diff >= 0.15 else 'not met'}; target +0.150)")
    return out


# Each region-supervised setting and its random-region ablation (same loss, boxes moved at random).
REGION_ABLATIONS = [("kl_true", "kl_random"), ("kl_mass", "kl_mass_random"), ("kl_mass_late", "kl_mass_late_random")]


# Pilots run by hand before the plan (same binary and data generator), kept in the report because they
# decided its design; every number is from a single run (seed 0 unless said).
PILOTS = [
    "Stage 1 with a trainable vision tower (vision_lr 2e-4 or 1e-3, 600-2,000 steps) learned colours worse than a "
    "frozen random tower (conflict colour accuracy 0.06-0.13 vs 0.34-0.60); the plan freezes the tower.",
    "Stage 1 on uninformative hints (`synth --chance-hints`, 2,000 steps): aligned 0.40, conflict 0.41, nohint 0.51. "
    "Its CE stage 2 did not drift: after 300 steps at lr 3e-4 aligned 0.43 / conflict 0.39 (hint rate 0.21), at "
    "lr 1e-3 aligned 0.49 / conflict 0.41; only 600 steps at 1e-3 began to (aligned 0.61, conflict 0.26 at step "
    "450). A model that never needed the text learns the shortcut slowly, so there was nothing to prevent: the plan's "
    "stage 1 uses hints right half the time (the issue's own pilot), so the model reads both.",
    "On that chance-hint stage 1 (seed 0, 300 steps, lr 3e-4): dual_channel capped_log balanced / 0.8 / hinge gave "
    "conflict 0.37 / 0.37 / 0.38 against CE's 0.39.",
    "Earlier stage-1 pilot (chance hints without the no-hint option, 2,000 steps): attention_kl true regions "
    "(weight 1, all layers) in stage 2 gave conflict 0.25 against CE's 0.24, aligned 0.61 against 0.63.",
    "Loss spikes of `make demo` (the issue asks for none above 5x the running median after warm-up): the demo's "
    "CE run logs 0.16-0.22 at steps 190, 200, 240, 260 and 290 against a median near 0.01 (ratio up to 20.5; "
    "CE + dual_channel 15.6, at the same steps). The same run on the same data with the 32 training samples "
    "whose hint is wrong (1.6%) given a right hint instead, nothing else changed (same order, same batches): "
    "0.003-0.004 from step 180 on, largest ratio 1.1. The spikes are the batches holding those samples, which "
    "a model that answers from the hint gets wrong: the benchmark's conflict itself, not an unstable optimiser; "
    "the criterion as written cannot hold on this data and the training data stays as documented.",
]


def report(args):
    res = load_results(args.work)
    if not res:
        sys.exit(f"no results under {args.work}/runs")
    lines = ["# The modality-conflict study", "",
             "Generated by `/usr/bin/python3 bench/efficacy.py --report` from the runs under "
             f"`{os.path.relpath(args.work, ROOT)}`. `demo` preset and `configs/demo.yaml` (batch 16, cosine "
             "schedule); `medium` images; training hints right 98% of the time. Accuracy at the final step; "
             "Δ = paired per-seed difference to CE only (same seed = same initial weights and data order); hint "
             "rate = share of conflict answers that repeat the misleading hint; VR = image share of the response "
             "queries' attention per decoder layer (probe on eval_conflict).", ""]
    stage1_result = os.path.join(args.work, "stage1", "result.json")
    for regime in REGIMES:
        if not any(k[0] == regime for k in res):
            continue
        if regime == "sees_first":
            s1 = json.load(open(stage1_result)) if os.path.exists(stage1_result) else None
            start = ""
            if s1:
                last = s1["evals"][str(s1["steps"])]
                start = (f" The stage-1 model (the start of every run) scores aligned {last['eval_aligned']:.3f}, "
                         f"conflict {last['eval_conflict']:.3f} (colour / shape / count "
                         + " / ".join("%.2f" % last.get(f"eval_conflict.accuracy.{t}", float("nan")) for t in TYPES)
                         + f"), nohint {last['eval_nohint']:.3f}, hint rate {last.get('eval_conflict.hint_rate', float('nan')):.3f}.")
            lines += ["## Sees first, then a shortcut", "",
                      f"Stage 1: {STAGE1['steps']} steps, lr {STAGE1['lr']:g}, CE only, hints right 50%, vision tower frozen. "
                      f"Stage 2: {STAGE2['steps']} steps from the stage-1 weights, lr {STAGE2['lr']:g}, no warm-up, tower "
                      f"frozen, hints right 98%.{start}", ""]
        else:
            lines += ["## From scratch", "", f"{SCRATCH['steps']} steps, lr {SCRATCH['lr']:g}, everything trains "
                      "(configs/demo.yaml).", ""]
        lines += table(res, regime) + ["", "Against the target (paired means over the seeds each setting has):", ""]
        lines += target_lines(res, regime) + [""]
    lines += ["## Pilots before the plan", ""] + [f"- {p}" for p in PILOTS] + [""]
    lines += ["Per-seed conflict accuracy (final step):", ""]
    for regime in REGIMES:
        for name in names_in(res, regime):
            runs = sorted((r for k, r in res.items() if k[0] == regime and k[1] == name), key=lambda r: r["seed"])
            if runs:
                lines.append(f"- {regime} / {name}: " + ", ".join(f"s{r['seed']} {final(r):.2f}" for r in runs))
    lines.append("")
    os.makedirs(os.path.join(ROOT, "docs"), exist_ok=True)
    with open(os.path.join(ROOT, "docs", "efficacy.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    plot(res)
    print(os.path.join(ROOT, "docs", "efficacy.md"))


def plot(res):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    regimes = [g for g in REGIMES if any(k[0] == g for k in res)]
    fig, axes = plt.subplots(len(regimes), 2, figsize=(13, 4.2 * len(regimes)), squeeze=False)
    for row, regime in enumerate(regimes):
        names = names_in(res, regime)
        ax = axes[row][0]
        for i, name in enumerate(names):
            ys = [final(r) for k, r in res.items() if k[0] == regime and k[1] == name]
            ax.scatter([i] * len(ys), ys, s=18, alpha=0.7)
            ax.plot([i - 0.25, i + 0.25], [statistics.mean(ys)] * 2, color="black")
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("eval_conflict accuracy (final)")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{regime}: conflict accuracy per seed (bar = mean)", fontsize=9)
        ax = axes[row][1]
        for name in names:
            runs = [r for k, r in res.items() if k[0] == regime and k[1] == name]
            layers = range(len(runs[0]["vr_response"]))
            ax.plot(layers, [statistics.mean(r["vr_response"][l] for r in runs) for l in layers], "-o", ms=3, label=name)
        ax.set_xlabel("decoder layer")
        ax.set_ylabel("VR: image share of response attention")
        ax.set_ylim(0, 1)
        ax.set_title(f"{regime}: per-layer visual attention ratio (probe, eval_conflict)", fontsize=9)
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(os.path.join(ROOT, "docs", "efficacy.png"), dpi=110)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "modalign"))
    ap.add_argument("--work", default=os.path.join(ROOT, "build", "efficacy"))
    ap.add_argument("--regime", choices=REGIMES, default=None, help="one regime (default: the plan's)")
    ap.add_argument("--only", default=None, help="comma-separated settings (default: the plan's)")
    ap.add_argument("--seeds", default=None, help="e.g. 0-7 or 0,3 (default: 0-2)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--full", action="store_true", help="also the search and seeds 3-7 for the best settings")
    ap.add_argument("--report", action="store_true", help="only write the report from existing results")
    args = ap.parse_args()
    args.work = os.path.abspath(args.work)
    if not args.report:
        if args.only or args.seeds or args.regime:  # a hand-picked piece of the study
            regimes = [args.regime] if args.regime else list(REGIMES)
            names = args.only.split(",") if args.only else list(SETTINGS)
            seeds = parse_seeds(args.seeds) if args.seeds else FIRST_SEEDS
            run_all(args, [(g, n, s) for g in regimes for n in names for s in seeds])
        else:
            # 1. sees_first: the main settings with 3 seeds; 2. scratch with its settings, 3 seeds.
            run_all(args, [("sees_first", n, s) for n in MAIN for s in FIRST_SEEDS])
            run_all(args, [("scratch", n, s) for n in SCRATCH_SETTINGS for s in FIRST_SEEDS])
            if args.full:
                # 3. the search on seed 0, its best two on seeds 1-2; CE and the two best settings on seeds 3-7.
                run_all(args, [("sees_first", n, 0) for n in SEARCH])
                res = load_results(args.work)
                searched = sorted(SEARCH, key=lambda n: -statistics.mean(paired_gains(res, "sees_first", n) or [-9]))[:2]
                print(f"sees_first: best two of the search on seed 0: {searched}", flush=True)
                run_all(args, [("sees_first", n, s) for n in searched for s in FIRST_SEEDS])
                run_all(args, [("sees_first", n, 0) for n in SCHEDULE_SEARCH])
                res = load_results(args.work)
                best = best_settings(res, "sees_first", 2)
                print(f"sees_first: best two by paired conflict gain over seeds 0-2: {best}", flush=True)
                run_all(args, [("sees_first", n, s) for n in ["ce"] + best for s in MORE_SEEDS])
    report(args)


if __name__ == "__main__":
    main()
