"""Spot capacity (issue 18): cost against the on-demand floor, SLOs under preemptions, crashes.

    python bench/spot.py                                   # both fleets, 20 seeds, 20 min each
    python bench/spot.py --fleets llm-platform --seeds 3 --duration 10m --floors 0,0.5
    python bench/spot.py --json /tmp/spot.json

Fleets: the shipped ``llm-platform`` example (its ``h100-spot`` pool as it is) and the shipped
``multilingual-meetings`` example with a spot twin of every pool added (same GPUs and node limits,
``--spot-price`` of the on-demand price, 0.4 by default: spot is "a third to a half" of on-demand).
Every model of a fleet gets the same spot policy per row: floor 0 is ``free`` (the spot-unaware,
cheapest plan), 1 is ``never``, anything between is ``floor`` with that ``on_demand_floor``.

Each row is planned once, then simulated on the shipped ``spot`` scenario (peak traffic, 0.5
preemptions per spot node-hour, 30 s notice, default cold starts) with ``--policy packer`` for each
seed; the reference is the all-on-demand plan (the fleet without spot pools) under ``static`` on
the same traffic. A run that raises counts as a crash and its traceback's last line is kept.

The reference is planned here, not quoted: issue 18 gives llm-platform 88.20/h all on-demand and
30.60/h all spot, 9 H100s at 9.80/h and 3.40/h; this tree's planner sizes the same fleet's peaks
on 19 H100s (186.20/h, ``packer plan`` on the fleet without its spot pool), so 0.7x means 130.34/h.
The right comparison is the same planner on the same traffic; the all-spot ratio, 3.40 / 9.80 =
0.35, is the same either way.
Prints, per fleet, the simulated cost per hour over seeds (median and mean; the cost target is
judged on the mean, what a buyer pays), the cost-vs-floor curve, the SLO distribution over seeds
(and how many seeds saw a preemption at all: at 0.5 per node-hour a 20-minute run often sees none,
so ``--preemptions-per-node-hour 3`` stresses every seed), and the issue's three targets with
PASS/FAIL.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from packer.fleet import Fleet
from packer.fleetfile import load_fleet  # noqa: E402
from packer.plan import Plan  # noqa: E402
from packer.planner import PlanSettings, plan_fleet  # noqa: E402
from packer.planner.spot import exposure, on_demand_only  # noqa: E402

EXAMPLES = ROOT / "packer" / "examples"


def with_spot_twins(fleet: Fleet, price: float) -> Fleet:
    """Every pool plus a spot copy of it (``<name>-spot``) at ``price`` x its hourly price."""
    twins = tuple(replace(p, name=f"{p.name}-spot"[:63], spot=True, cost_per_gpu_hour=round(p.cost_per_gpu_hour * price, 4))
                  for p in fleet.pools if not p.spot)
    return replace(fleet, pools=fleet.pools + twins)


def with_floor(fleet: Fleet, floor: float) -> Fleet:
    """Every model with the spot policy this floor stands for (0 free, 1 never, else floor)."""
    policy = "free" if floor <= 0 else "never" if floor >= 1 else "floor"
    share = 0.0 if floor <= 0 else min(1.0, floor)
    return replace(fleet, models=tuple(replace(m, spot_policy=policy, on_demand_floor=share) for m in fleet.models))


def fleets(names: list[str], spot_price: float) -> dict[str, Fleet]:
    out = {}
    for n in names:
        if n == "llm-platform":
            out[n] = load_fleet(EXAMPLES / "llm-platform.yaml")
        elif n == "multilingual":
            out[n] = with_spot_twins(load_fleet(EXAMPLES / "multilingual-meetings.yaml"), spot_price)
        else:
            raise SystemExit(f"--fleets: unknown fleet {n!r}; use llm-platform, multilingual")
    return out


def simulate_one(args: tuple[Plan, str, float, int, float | None]) -> dict[str, Any]:
    """One seed: per-model SLO attainment and cost, or the crash."""
    from sims.engine import Simulation
    from sims.scenario import load_scenario

    plan, policy, duration_s, seed, rate = args
    sc = load_scenario("spot")
    if rate is not None:
        sc = replace(sc, cluster=replace(sc.cluster, spot_preemptions_per_node_hour=rate))
    t0 = time.perf_counter()
    try:
        r = Simulation(plan, sc, seed=seed, policy=policy).run(duration_s).to_dict()
    except Exception as e:  # noqa: BLE001 - a crash is a result here
        return {"seed": seed, "crash": f"{type(e).__name__}: {e}",
                "where": traceback.format_exc().strip().splitlines()[-3].strip()}
    lost = sum(1 for a in r["actions"] if "preempted" in a["action"] and "notice" in a["action"])
    return {"seed": seed, "crash": None, "cost_per_hour": r["fleet"]["mean_cost_per_hour"],
            "attainment": {m["name"]: m["slo_attainment"] for m in r["models"] if m["arrivals"] > 0},
            "preemptions": lost, "wall_s": round(time.perf_counter() - t0, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fleets", default="llm-platform,multilingual")
    ap.add_argument("--floors", default="0,0.25,0.5,0.75,1", help="on-demand floors, shares of peak")
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--duration", default="20m", help="simulated time per seed")
    ap.add_argument("--spot-price", type=float, default=0.4, help="spot twins' price, share of on-demand")
    ap.add_argument("--time-limit", type=float, default=None, help="planner seconds per plan (default: auto)")
    ap.add_argument("--preemptions-per-node-hour", dest="rate", type=float, default=None,
                    help="override the spot scenario's 0.5 (a stress test: every seed sees preemptions)")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--json", dest="json_path")
    a = ap.parse_args(argv)
    from sims.scenario import parse_duration

    dur = parse_duration(a.duration, "--duration")
    floors = [float(x) for x in a.floors.split(",") if x.strip()]
    settings = PlanSettings(time_limit_s=a.time_limit)
    seeds = list(range(a.seeds))
    report: dict[str, Any] = {"duration_s": dur, "seeds": a.seeds, "spot_price": a.spot_price,
                              "preemptions_per_node_hour": a.rate, "fleets": {}}
    ok_crash, ok_slo, ok_cost = True, True, True
    for name, fleet in fleets(a.fleets.split(","), a.spot_price).items():
        od = plan_fleet(on_demand_only(fleet), settings)
        rows: list[tuple[str, Plan, str]] = [("all-on-demand", od, "static")]
        for f in floors:
            p = plan_fleet(with_floor(fleet, f), settings)
            rows.append((f"floor {f:g}", p, "packer"))
            if f >= 1 and p.cost_per_hour < od.cost_per_hour:
                # ``never`` is an all-on-demand plan too; the planner's wall-clock guards can find
                # a cheaper one on a loaded machine, and the reference is the cheapest found.
                od = replace(p, fleet=od.fleet)
                rows[0] = ("all-on-demand", od, "static")
        rows.append(("floor 0 static", rows[1 + floors.index(min(floors))][1], "static"))
        jobs = [(p, pol, dur, s, a.rate) for _, p, pol in rows for s in seeds]
        t0 = time.perf_counter()
        if a.jobs > 1:
            with ProcessPoolExecutor(a.jobs) as ex:
                results = list(ex.map(simulate_one, jobs))
        else:
            results = [simulate_one(j) for j in jobs]
        print(f"\n== {name}: {len(jobs)} runs of {dur / 60:g} min in {time.perf_counter() - t0:.0f} s; "
              f"all-on-demand plan {od.cost_per_hour:.2f}/h")
        print(f"{'row':<16}{'policy':<8}{'plan/h':>9}{'÷ od':>7}{'sim/h':>9}{'÷ od':>7}{'mean/h':>9}{'÷ od':>7}  {'crash':>5}"
              f"{'worst model, per seed: min':>29}{'p10':>8}{'median':>8}  {'seeds all ≥99%':>14}  "
              f"{'preempted':>9}  keeps one node")
        out_rows = []
        for i, (label, p, pol) in enumerate(rows):
            rs = results[i * len(seeds):(i + 1) * len(seeds)]
            crashes = [r for r in rs if r["crash"]]
            good = [r for r in rs if not r["crash"]]
            worst = sorted(min(r["attainment"].values()) for r in good)
            cost = statistics.median(r["cost_per_hour"] for r in good) if good else float("nan")
            mean = statistics.mean(r["cost_per_hour"] for r in good) if good else float("nan")
            held = sum(1 for w in worst if w >= 0.99)
            keeps = min((e.keeps_one_node for e in exposure(p)), default=1.0)
            q = (lambda k: worst[min(len(worst) - 1, int(k * len(worst)))]) if worst else (lambda k: float("nan"))
            print(f"{label:<16}{pol:<8}{p.cost_per_hour:>9.2f}{p.cost_per_hour / od.cost_per_hour:>7.2f}"
                  f"{cost:>9.2f}{cost / od.cost_per_hour:>7.2f}{mean:>9.2f}{mean / od.cost_per_hour:>7.2f}  {len(crashes):>5}"
                  f"{(worst[0] if worst else float('nan')):>29.2%}{q(0.1):>8.2%}{q(0.5):>8.2%}  "
                  f"{held:>6}/{len(rs):<7}  {sum(1 for r in good if r['preemptions']):>6}/{len(rs):<2}  {keeps:.0%}")
            worst_models: dict[str, int] = {}
            for r in good:
                m = min(r["attainment"], key=r["attainment"].get)
                if r["attainment"][m] < 0.99:
                    worst_models[m] = worst_models.get(m, 0) + 1
            if worst_models:
                print(f"{'':<16}below 99 % (seeds): " + ", ".join(f"{m} {n}" for m, n in sorted(
                    worst_models.items(), key=lambda t: -t[1])))
            for c in crashes[:3]:
                print(f"{'':<16}crash, seed {c['seed']}: {c['crash']} ({c['where']})")
            ok_crash &= not crashes
            out_rows.append({"row": label, "policy": pol, "plan_cost_per_hour": p.cost_per_hour,
                             "gpus": dict(p.gpus),
                             "plan_vs_on_demand": p.cost_per_hour / od.cost_per_hour, "sim_cost_per_hour": cost,
                             "sim_vs_on_demand": cost / od.cost_per_hour, "sim_mean_cost_per_hour": mean,
                             "sim_mean_vs_on_demand": mean / od.cost_per_hour, "crashes": len(crashes),
                             "worst_model_attainment": worst, "seeds_all_models_99": held,
                             "keeps_one_spot_node": keeps, "runs": rs})
        aware = [r for r in out_rows if r["policy"] == "packer"]
        best = [r for r in aware if r["seeds_all_models_99"] == len(seeds)]
        # A buyer pays the mean over seeds, not the median: the target is judged on the mean.
        cheapest_held = min(best, key=lambda r: r["sim_mean_cost_per_hour"]) if best else None
        ok_slo &= cheapest_held is not None
        ok_cost &= cheapest_held is not None and cheapest_held["sim_mean_vs_on_demand"] <= 0.7
        print("cost against the on-demand floor (simulated, mean over seeds, ÷ all-on-demand; median in brackets):")
        for r in aware:
            bar = "#" * int(round(40 * min(1.5, r["sim_mean_vs_on_demand"]) / 1.5))
            print(f"  {r['row']:<10} {r['sim_mean_vs_on_demand']:>5.2f} ({r['sim_vs_on_demand']:.2f}) {bar}")
        if cheapest_held:
            print(f"cheapest row with every model ≥ 99 % on every seed: {cheapest_held['row']}, mean "
                  f"{cheapest_held['sim_mean_cost_per_hour']:.2f}/h = {cheapest_held['sim_mean_vs_on_demand']:.2f}x "
                  f"all-on-demand (median {cheapest_held['sim_vs_on_demand']:.2f}x)")
        else:
            print("no row kept every model ≥ 99 % on every seed")
        report["fleets"][name] = {"on_demand_plan": od.cost_per_hour, "rows": out_rows}
    print(f"\ntargets: 0 crashes {'PASS' if ok_crash else 'FAIL'}; every model ≥ 99 % with packer "
          f"{'PASS' if ok_slo else 'FAIL'}; at ≤ 0.7x all-on-demand {'PASS' if ok_cost else 'FAIL'}")
    if a.json_path:
        Path(a.json_path).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
