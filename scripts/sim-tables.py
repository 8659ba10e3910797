#!/usr/bin/env python3
"""Markdown tables for BENCHMARKS.md from `postern sim` outputs.

usage: scripts/sim-tables.py full OUT/summary.json
       scripts/sim-tables.py range FIELD OUT1/summary.json OUT2/summary.json ...
       scripts/sim-tables.py ceiling CAPACITY DISTRIBUTOR OUT1/steps.csv ...
       scripts/sim-tables.py cutoff SPLIT DISTRIBUTOR OUT1/steps.csv ...

`full` prints every distributor and strategy of one run; `range` prints,
per distributor and strategy, the range of FIELD (for instance
honest_connected_mean) over several runs (seeds) of one scenario.
`ceiling` prints, per strategy and run, the distributor's measured mean
connectivity next to the most the relays it had left unblocked allow when
each serves at most CAPACITY members: the mean over steps of
min(1, CAPACITY * unblocked relays / honest members).
`cutoff` prints, per strategy and run, the honest members the distributor
left cut off before step SPLIT and from it on (mean share of the honest
members a step), each with its three main reasons (mean members a step;
the `cut_off_*` columns).
"""
import csv
import json
import sys

PERCENT = {
    "honest_connected_mean",
    "honest_connected_min",
    "honest_connected_final",
    "relays_unblocked_mean",
    "served_within_1_step",
    "served_within_2_steps",
}


def fmt(field, v):
    return f"{v * 100:.1f}%" if field in PERCENT else f"{v:.2f}"


def full(path):
    d = json.load(open(path))
    print("| distributor | strategy | connected mean | connected min | relays unblocked "
          "| learned / censor identity | served ≤1 step | served ≤2 steps | cut off at end "
          "| honest refused |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for dist in order(d["distributors"], DISTRIBUTORS):
        runs = d["distributors"][dist]
        for strat in order(runs, STRATEGIES):
            s = runs[strat]
            print(f"| {dist} | {strat} | "
                  f"{s['honest_connected_mean'] * 100:.1f}% | {s['honest_connected_min'] * 100:.1f}% "
                  f"| {s['relays_unblocked_mean'] * 100:.1f}% | {s['relays_learned_per_censor_identity']:.2f} "
                  f"| {s['served_within_1_step'] * 100:.1f}% | {s['served_within_2_steps'] * 100:.1f}% "
                  f"| {(1 - s['honest_connected_final']) * 100:.1f}% "
                  f"| {s['honest_refused']} of {s['honest']} |")


DISTRIBUTORS = ["postern", "public", "random-k", "hashring", "rbridge"]
STRATEGIES = ["none", "aggressive", "conservative", "sweep", "zigzag",
              "profiling-5-10", "profiling-3-3", "insider"]


def order(names, preferred):
    """Names in the preferred order, then the others sorted."""
    rank = {n: i for i, n in enumerate(preferred)}

    def key(n):
        base, _, share = n.partition("@")
        return (rank.get(base, len(rank)), float(share.rstrip("%") or 0), n)

    return sorted(names, key=key)


def ranges(field, paths):
    runs = [json.load(open(p)) for p in paths]
    first = runs[0]["distributors"]
    strategies = order(next(iter(first.values())).keys(), STRATEGIES)
    print("| distributor | " + " | ".join(strategies) + " |")
    print("|---|" + "---|" * len(strategies))
    for dist in order(first, DISTRIBUTORS):
        cells = []
        for strat in strategies:
            vals = [r["distributors"][dist][strat][field] for r in runs]
            lo, hi = min(vals), max(vals)
            cells.append(f"{fmt(field, lo)}–{fmt(field, hi)}")
        print(f"| {dist} | " + " | ".join(cells) + " |")


def ceiling(capacity, distributor, paths):
    print("| run | strategy | connected mean | ceiling (mean) | connected, last step | ceiling, last step |")
    print("|---|---|---|---|---|---|")
    for path in paths:
        rows = [r for r in csv.DictReader(open(path)) if r["distributor"] == distributor]
        strategies = order({r["strategy"] for r in rows}, STRATEGIES)
        for strat in strategies:
            rs = [r for r in rows if r["strategy"] == strat]
            meas = [float(r["honest_connected"]) for r in rs]
            ceil = []
            for r in rs:
                honest = int(r["honest"])
                live = float(r["relays"]) * float(r["relays_unblocked"])
                ceil.append(min(1.0, capacity * live / honest) if honest else 1.0)
            print(f"| {path} | {strat} | {sum(meas) / len(meas) * 100:.1f}% "
                  f"| {sum(ceil) / len(ceil) * 100:.1f}% | {meas[-1] * 100:.1f}% | {ceil[-1] * 100:.1f}% |")


def cutoff(split, distributor, paths):
    print(f"| run | strategy | cut off, steps < {split} | main reasons | "
          f"cut off, steps ≥ {split} | main reasons |")
    print("|---|---|---|---|---|---|")
    for path in paths:
        rows = [r for r in csv.DictReader(open(path)) if r["distributor"] == distributor]
        reasons = [k for k in rows[0] if k.startswith("cut_off_")] if rows else []
        for strat in order({r["strategy"] for r in rows}, STRATEGIES):
            cells = []
            for part in ([r for r in rows if r["strategy"] == strat and int(r["step"]) < split],
                         [r for r in rows if r["strategy"] == strat and int(r["step"]) >= split]):
                n = max(len(part), 1)
                share = sum(1 - float(r["honest_connected"]) for r in part) / n
                means = {k[len("cut_off_"):]: sum(int(r[k]) for r in part) / n for k in reasons}
                main = sorted(((v, k) for k, v in means.items() if v >= 0.05), reverse=True)[:3]
                cells.append(f"{share * 100:.1f}%")
                cells.append(", ".join(f"{k} {v:.0f}" for v, k in main) or "—")
            print(f"| {path} | {strat} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "full":
        full(sys.argv[2])
    elif len(sys.argv) >= 5 and sys.argv[1] == "ceiling":
        ceiling(int(sys.argv[2]), sys.argv[3], sys.argv[4:])
    elif len(sys.argv) >= 5 and sys.argv[1] == "cutoff":
        cutoff(int(sys.argv[2]), sys.argv[3], sys.argv[4:])
    elif len(sys.argv) >= 4 and sys.argv[1] == "range":
        ranges(sys.argv[2], sys.argv[3:])
    else:
        sys.exit(__doc__)
