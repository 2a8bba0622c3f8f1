#!/usr/bin/python3
"""Where a step's time goes: self time per operator from a Chrome trace of LibTorch's profiler.

    build/bench/step_bench train bench/configs/demo.yaml --warmup 2 --steps 3 --profile /tmp/trace.json
    /usr/bin/python3 bench/profile_summary.py /tmp/trace.json [--top 25]

Self time = an event's duration minus that of the events nested in it on the same thread; the table
shows each operator's share of all self time (which includes the profiled warm-up steps).
"""
import argparse
import collections
import json


def self_times(events):
    by_thread = collections.defaultdict(list)
    for e in events:
        if e.get("ph") == "X":
            by_thread[e.get("tid")].append(e)
    totals, calls = collections.Counter(), collections.Counter()
    for evs in by_thread.values():
        evs.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack = []  # [end, name, child time]
        for e in evs:
            while stack and stack[-1][0] <= e["ts"]:
                end, name, child, dur = stack.pop()
                totals[name] += dur - child
            if stack:
                stack[-1][2] += e["dur"]
            stack.append([e["ts"] + e["dur"], e["name"], 0.0, e["dur"]])
            calls[e["name"]] += 1
        while stack:
            end, name, child, dur = stack.pop()
            totals[name] += dur - child
    return totals, calls


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("trace")
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    data = json.load(open(args.trace))
    events = data["traceEvents"] if isinstance(data, dict) else data
    totals, calls = self_times(events)
    whole = sum(totals.values())
    print(f"{'operator':44s} {'self ms':>10s} {'share':>7s} {'calls':>7s}")
    for name, us in totals.most_common(args.top):
        print(f"{name[:44]:44s} {us / 1e3:10.1f} {100 * us / whole:6.1f}% {calls[name]:7d}")
    print(f"{'all':44s} {whole / 1e3:10.1f}")


if __name__ == "__main__":
    main()
