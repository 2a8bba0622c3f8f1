#!/usr/bin/env python3
"""Prints the final evaluation of several runs side by side, from their metrics.jsonl (or a `modalign eval
--out` file): accuracy per split, the conflict split's hint rate and accuracy per question type. `make demo`
uses it for the stage-1 model, CE and the aligned run.

    /usr/bin/python3 tools/compare_runs.py "stage 1=demo/stage1.json" "CE only=demo/run-ce" "CE + alignment=demo/run"
"""
import json
import os
import sys


def final_eval(run):
    """(step, split -> {key: value}) of the last eval records in run/metrics.jsonl, or of an eval --out file."""
    if run.endswith(".json"):
        out = {}
        for e in json.load(open(run)):
            row = out.setdefault(e["split"], {"accuracy": e["accuracy"]})
            if e.get("hint_rate", -1) >= 0:
                row["hint_rate"] = e["hint_rate"]
            row.update({f"accuracy.{t}": a for t, a in e.get("accuracy_by_type", {}).items()})
        return "-", out
    last_step, out = None, {}
    with open(os.path.join(run, "metrics.jsonl")) as f:
        for line in f:
            rec = json.loads(line)
            if rec.get("kind") != "eval":
                continue
            if rec["step"] != last_step:
                last_step, out = rec["step"], {}
            for key, value in rec.items():
                if "." in key:
                    split, _, name = key.partition(".")
                    out.setdefault(split, {})[name] = value
    return last_step, out


def main():
    runs = [arg.split("=", 1) for arg in sys.argv[1:]]
    if not runs or any(len(r) != 2 for r in runs):
        sys.exit(__doc__)
    results = [(label, *final_eval(path)) for label, path in runs]
    splits = sorted({s for _, _, ev in results for s in ev})
    types = sorted({k.split(".", 1)[1] for _, _, ev in results for s in ev.values() for k in s if k.startswith("accuracy.")})
    header = ["run", "step"] + [f"{s} acc" for s in splits] + ["conflict hint rate"] + [f"conflict {t}" for t in types]
    rows = []
    for label, step, ev in results:
        conflict = ev.get("eval_conflict", {})
        row = [label, str(step)] + ["%.3f" % ev[s]["accuracy"] if s in ev else "-" for s in splits]
        row.append("%.3f" % conflict["hint_rate"] if "hint_rate" in conflict else "-")
        row += ["%.3f" % conflict[f"accuracy.{t}"] if f"accuracy.{t}" in conflict else "-" for t in types]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    for r in [header] + rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))


if __name__ == "__main__":
    main()
