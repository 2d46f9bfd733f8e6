"""Planner benchmark: cost, bound, gap, solve time, peak memory and both baselines.

    python bench/plan.py                     # the examples (also on their MIG pools alone) and
                                             # generated 50/500/2000-model fleets
    python bench/plan.py --only 50,500       # a subset
    python bench/plan.py --json out.json
    python bench/plan.py --prove 180 --only multilingual-meetings,multilingual-meetings:mig-only
                                             # with the exact search that can prove optimality
    python bench/plan.py --family 12 --max-models 500
                                             # the first 12 members of bench/family.py's family
                                             # (the examples, then generated fleets): one line
                                             # each, then the distribution of gap, cost/greedy,
                                             # time and peak memory
    python bench/plan.py --only zipf-2000    # issue 14's 2000-model Zipf fleet (A100-80, H100, L4)
    python bench/plan.py --family 40 --max-models 500 --min-models 340 --seed 15
                                             # only the members of 340-500 models among the first
                                             # 40: the large fleets, where column generation is
                                             # cut short

    python bench/plan.py --only 500 --reproducible
                                             # the counts alone end every stage (packer plan
                                             # --reproducible): the plan of an idle machine

Each fleet is planned in a fresh process so that its peak resident memory (ru_maxrss, which
includes OR-Tools' C++ heap) is its own. A ``*`` after a time: the wall clock ended a stage of
that plan before its count (the plan's warning), so a faster or idler machine may plan it otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # this checkout's packer, not an installed one
EXAMPLES = ["multilingual-meetings", "llm-platform", "long-tail", "multilingual-10"]
MIG_ONLY = ["multilingual-meetings:mig-only", "long-tail:mig-only"]


def generated_fleet(n: int, seed: int = 0) -> dict:
    """A long-tail fleet of ``n`` fine-tuned models: Zipf traffic, mixed SLOs, MIG A100s and L4s."""
    rng = random.Random(seed)
    gpus_needed = max(8, n // 6)
    pools = [
        {"name": "a100-80", "gpu": "a100-80gb", "gpus_per_node": 8, "max_nodes": math.ceil(gpus_needed / 8) + 2,
         "cost_per_gpu_hour": 4.1, "sharing": ["mig", "time-slicing"]},
        {"name": "a100-40", "gpu": "a100-40gb", "gpus_per_node": 8, "max_nodes": math.ceil(gpus_needed / 8) + 2,
         "cost_per_gpu_hour": 3.67, "sharing": ["mig", "time-slicing"]},
        {"name": "l4", "gpu": "l4-24gb", "gpus_per_node": 4, "max_nodes": math.ceil(gpus_needed / 4) + 4,
         "cost_per_gpu_hour": 0.8, "sharing": ["time-slicing"]},
    ]
    models = []
    for i in range(n):
        kind = "batch" if rng.random() < 0.25 else "streaming"
        rps = 300.0 / (i + 1) ** 0.9
        big = rng.random() < 0.08
        models.append({
            "name": f"m-{i:04d}", "kind": kind,
            "memory_gb": round(rng.uniform(12, 30) if big else rng.uniform(0.4, 6), 2),
            "traffic": {"rps": round(rps, 4), "peak_rps": round(rps * rng.uniform(1.5, 2.5), 4)},
            "slo_ms": 5000 if kind == "batch" else rng.choice([100, 200, 300]),
            "latency_ms": {"gpu": "a100-80gb", "base": round(rng.uniform(2, 6), 2),
                           "per_item": round(rng.uniform(0.2, 1.2), 3)},
            "max_batch": 128 if kind == "batch" else 32,
            "min_replicas": 2 if i < n // 10 else 1,
        })
    return {"name": f"generated-{n}", "pools": pools, "models": models}


def run_one(name: str, prove_s: float | None = None, reproducible: bool = False) -> dict:
    from packer.fleetfile import load_fleet, parse_fleet
    from packer.planner import PlanSettings, plan_fleet

    base, _, variant = name.partition(":")
    if base == "family":  # family:INDEX:SEED:MAX_MODELS[:SMALL_BATCHES]
        from bench.family import member

        i, seed, most, *small = variant.split(":")
        fleet = parse_fleet(member(int(i), seed=int(seed), max_models=int(most),
                                   small_batches=float(small[0]) if small else 0.0))
        variant = ""
    elif base.startswith("zipf-"):
        from bench.family import zipf_fleet

        fleet = parse_fleet(zipf_fleet(int(base.split("-")[1])))
    elif base.isdigit():
        fleet = parse_fleet(generated_fleet(int(base)))
    else:
        fleet = load_fleet(ROOT / "packer" / "examples" / f"{base}.yaml")
    if variant == "mig-only":  # the same models on the MIG-capable pools alone: where MIG must pay
        from dataclasses import replace

        fleet = replace(fleet, name=f"{fleet.name} (MIG pools)", pools=tuple(p for p in fleet.pools if p.mig))
    t0 = time.perf_counter()
    plan = plan_fleet(fleet, PlanSettings(prove_s=prove_s, reproducible=reproducible))
    wall = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "fleet": fleet.name, "models": len(fleet.models), "replicas": sum(plan.replicas.values()),
        "cost": plan.cost_per_hour, "lower_bound": plan.lower_bound_cost_per_hour, "gap": plan.gap,
        "status": plan.status, "bound": plan.bound_method, "seconds": round(wall, 1), "peak_mb": round(peak_mb),
        "gpus": sum(plan.gpus.values()),
        "mig_slots": sum(1 for p in plan.placements if p.slot != "whole"),
        "dedicated": plan.baselines["dedicated"].cost_per_hour, "greedy": plan.baselines["greedy"].cost_per_hour,
        "pools": len(fleet.pools),
        "spread_warnings": sum(1 for w in plan.warnings if "fewer than min_replicas" in w),
        # Stages the wall clock ended before their counts (the plan's warning): this machine's plan,
        # which an idle one may not make.
        "clock_cut": [w for w in plan.warnings if w.startswith("the wall clock ended")],
    }


def clock_rate() -> dict:
    """Wall seconds per counted second on this machine now: column generation on long-tail for up
    to 3 counted seconds (``patterns.pattern_bound``; its work constants were measured so that
    this is about 1.0 on the project's 2-core machine). Plans count work, not the clock, so their
    costs do not move with the machine's speed and their times do: this says how far a row's
    seconds stand from that machine's."""
    from packer.fleetfile import load_fleet
    from packer.planner import PlanSettings
    from packer.planner.model import Problem
    from packer.planner.patterns import pattern_bound

    found = pattern_bound(Problem(load_fleet(ROOT / "packer" / "examples" / "long-tail.yaml"), PlanSettings()), 3.0)
    assert found is not None
    return {"wall": found.seconds, "counted": found.spent}


def summarise(rows: list[dict], asked: int) -> None:
    """The distribution over the fleets planned: gap, cost against greedy, time, peak memory."""
    def median(xs: list[float]) -> float:
        xs = sorted(xs)
        k = len(xs) // 2
        return xs[k] if len(xs) % 2 else (xs[k - 1] + xs[k]) / 2

    gaps = [r["gap"] for r in rows]
    ratio = [r["cost"] / r["greedy"] for r in rows]
    secs = [r["seconds"] for r in rows]
    worst_gap = max(rows, key=lambda r: r["gap"])
    worst_ratio = max(rows, key=lambda r: r["cost"] / r["greedy"])
    print(f"\n{len(rows)} of {asked} fleets planned, {min(r['models'] for r in rows)}-{max(r['models'] for r in rows)} "
          f"models, 1-{max(r['pools'] for r in rows)} pools")
    print(f"gap: median {median(gaps):.1%}, worst {worst_gap['gap']:.1%} ({worst_gap['fleet']}); "
          f"zero bounds: {sum(1 for r in rows if r['lower_bound'] <= 0)}")
    print(f"cost/greedy: worst {max(ratio):.3f}x ({worst_ratio['fleet']}), median {median(ratio):.3f}x; "
          f"fleets dearer than greedy: {sum(1 for x in ratio if x > 1 + 1e-9)}, "
          f"than dedicated: {sum(1 for r in rows if r['cost'] > r['dedicated'] + 1e-9)}")
    spread = [r for r in rows if r.get("spread_warnings")]
    print(f"models not spread over min_replicas nodes: {sum(r['spread_warnings'] for r in rows)}, on "
          f"{len(spread)} fleet(s)" + (f" ({', '.join(r['fleet'] for r in spread[:4])})" if spread else ""))
    print(f"time: median {median(secs):.1f} s, worst {max(secs):.1f} s; "
          f"peak memory: worst {max(r['peak_mb'] for r in rows)} MB")
    cut = [r["fleet"] for r in rows if r.get("clock_cut")]
    print(f"plans the wall clock cut (* after the time): {len(cut)}" + (f" ({', '.join(cut[:6])})" if cut else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="comma-separated example names or model counts")
    ap.add_argument("--json", help="write the rows here too")
    ap.add_argument("--prove", type=float, default=None, metavar="SECONDS",
                    help="give the exact search (packer plan --prove) up to SECONDS per fleet; by default "
                         "it runs within the time budget on fleets small enough for it, 0 skips it")
    ap.add_argument("--family", type=int, metavar="N", help="plan the first N fleets of bench/family.py")
    ap.add_argument("--max-models", type=int, default=2000, metavar="M", help="family fleets up to M models")
    ap.add_argument("--min-models", type=int, default=0, metavar="M",
                    help="with --family, only the members of at least M models (the large ones a short sample misses)")
    ap.add_argument("--seed", type=int, default=0, help="the family's seed")
    ap.add_argument("--small-batches", type=float, default=0.0, metavar="SHARE",
                    help="with --family, that share of the generated members' single-GPU models at max_batch 1-4")
    ap.add_argument("--reproducible", action="store_true",
                    help="plan with packer plan --reproducible: the counts alone end every stage, whatever the clock")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(clock_rate() if args.one == "clock" else run_one(args.one, args.prove, args.reproducible)))
        return
    if args.family:
        small = f":{args.small_batches}" if args.small_batches else ""
        names = [f"family:{i}:{args.seed}:{args.max_models}{small}" for i in range(args.family)]
        if args.min_models:
            from bench.family import family

            members = family(args.family, seed=args.seed, max_models=args.max_models,
                             small_batches=args.small_batches)
            names = [n for n, f in zip(names, members) if len(f["models"]) >= args.min_models]
    else:
        names = args.only.split(",") if args.only else EXAMPLES + MIG_ONLY + ["50", "500", "2000"]
    rows = []
    hdr = (f"{'fleet':<30} {'models':>6} {'GPUs':>5} {'cost/h':>9} {'bound/h':>9} {'gap':>6} {'solve s':>8} "
           f"{'peak MB':>8} {'dedicated':>10} {'greedy':>9} {'vs greedy':>9}")
    if args.family:
        hdr += f" {'bound method':<30}"
    print(hdr)
    for n in names:
        prove = [] if args.prove is None else ["--prove", str(args.prove)]
        prove += ["--reproducible"] if args.reproducible else []
        out = subprocess.run([sys.executable, __file__, "--one", n, *prove], capture_output=True, text=True, cwd=ROOT)
        if out.returncode:
            print(f"{n}: failed\n{out.stderr[-2000:]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(r)
        print(f"{r['fleet'][:30]:<30} {r['models']:>6} {r['gpus']:>5} {r['cost']:>9.2f} {r['lower_bound']:>9.2f} "
              f"{r['gap']:>6.1%} {r['seconds']:>7.1f}{'*' if r.get('clock_cut') else ' '} {r['peak_mb']:>8} {r['dedicated']:>10.2f} {r['greedy']:>9.2f} "
              f"{r['cost'] / r['greedy']:>8.2f}x" + (f" {r['bound'][:30]:<30}" if args.family else ""), flush=True)
    if args.family and rows:
        summarise(rows, len(names))
    out = subprocess.run([sys.executable, __file__, "--one", "clock"], capture_output=True, text=True, cwd=ROOT)
    if out.returncode == 0:
        c = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"clock: {c['wall'] / c['counted']:.2f} wall s per counted s (column generation on long-tail, "
              f"{c['counted']:.1f} counted s in {c['wall']:.1f} s; about 1.00 on the machine the work constants "
              "were measured on)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
