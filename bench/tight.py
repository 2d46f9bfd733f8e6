"""Tight pools: does the planner find a packing where one exists, and say "does not fit" only
where it can show it?

    python bench/tight.py --family 24 --max-models 60 --seed 3 --jobs 2
    python bench/tight.py --family 12 --max-models 300 --seed 5 --jobs 2

The family (``bench/family.py``) sizes its pools so that the greedy packing fits: every member
is planned with room to spare. Real pools are often just big enough. For each member this plans
the fleet as it is, then two variants of it:

* ``room``: every pool cut to the GPUs the plan used, rounded up to whole nodes (two at least
  where it had two), pools it did not use dropped. The plan's own packing fits there, so ``does not fit`` is a false claim, and a
  plan dearer than the first one is the planner losing a packing it had.
* ``short``: as ``room``, with the pool of the most GPUs one node smaller. Whether anything fits
  is unknown; the planner must find a packing or say whether it showed that none fits.

Each variant is planned fresh and, as ``room+`` and ``short+``, as a re-plan of the first plan
(``--current``: the pools shrank under a running plan). Every plan is put to ``packer check``.
Prints one line per variant and then the counts: planned, refused with a proof, refused without
one, unsound, and the worst cost against the first plan.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from multiprocessing import Pool
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # this checkout's packer, not an installed one


def tight_docs(doc: dict, used: dict[str, int]) -> dict[str, dict]:
    """The ``room`` and ``short`` variants of a fleet document whose plan used ``used`` GPUs per pool."""
    room = copy.deepcopy(doc)
    room["pools"] = [p for p in room["pools"] if used.get(p["name"], 0) > 0]
    for p in room["pools"]:
        # Two nodes at least where the fleet had them: on a pool of one node the planner keeps a
        # min_replicas >= 2 model's replicas off it (they could not be spread), so the first
        # plan's packing would not be one the planner may choose there.
        p["max_nodes"] = max(math.ceil(used[p["name"]] / p["gpus_per_node"]), min(2, p["max_nodes"]))
    room["name"] = f"{doc['name']}:room"
    out = {"room": room}
    biggest = max(room["pools"], key=lambda p: used[p["name"]], default=None)
    if biggest is not None:
        short = copy.deepcopy(room)
        short["name"] = f"{doc['name']}:short"
        pool = next(p for p in short["pools"] if p["name"] == biggest["name"])
        if pool["max_nodes"] > 1:
            pool["max_nodes"] -= 1
        elif pool["gpus_per_node"] > 1:
            pool["gpus_per_node"] -= 1
        else:
            short["pools"].remove(pool)
        if short["pools"]:
            out["short"] = short
    return out


def _plan(doc: dict, current=None) -> dict:
    """Plan ``doc`` (a re-plan of ``current`` where given): cost, bound, GPUs and what
    ``packer check`` says of it, or the error."""
    from packer.check import check_plan
    from packer.errors import UserError
    from packer.fleet import FleetError
    from packer.fleetfile import parse_fleet
    from packer.planner import PlanSettings, plan_fleet

    t0 = time.perf_counter()
    try:
        fleet = parse_fleet(doc)
        plan = plan_fleet(fleet, PlanSettings(), current=current)
    except (UserError, FleetError) as e:
        msg = str(e)
        return {"error": msg, "proven": "cannot fit" in msg,
                "seconds": time.perf_counter() - t0}
    return {"cost": plan.cost_per_hour, "bound": plan.lower_bound_cost_per_hour, "gpus": dict(plan.gpus),
            "greedy": plan.baselines["greedy"].cost_per_hour, "seconds": time.perf_counter() - t0,
            "unsound": check_plan(plan), "plan": plan if current is None else None}


def run_member(args: tuple[int, int, int]) -> list[dict]:
    """A member as it is, its two variants, and each variant as a re-plan of the first plan
    (``--current``: the pools shrank under a running plan)."""
    from bench.family import member

    i, seed, most = args
    doc = member(i, seed=seed, max_models=most)
    first = _plan(doc)
    plan = first.pop("plan", None)
    rows = [{"fleet": doc["name"], "variant": "as is", "models": len(doc["models"]), **first}]
    if "error" in first:
        return rows
    for variant, tight in tight_docs(doc, first["gpus"]).items():
        for name, current in ((variant, None), (f"{variant}+", plan)):
            got = _plan(tight, current)
            got.pop("plan", None)
            rows.append({"fleet": doc["name"], "variant": name, "models": len(doc["models"]),
                         "first": first["cost"], **got})
    return rows


def _line(r: dict) -> str:
    head = f"{r['fleet'][:44]:<44} {r['variant']:<6} {r['models']:>4}"
    if "error" in r:
        what = "REFUSED, proven" if r["proven"] else "REFUSED, unproven"
        return f"{head}  {what:<18} {r['seconds']:6.1f} s  {r['error'][:110]}"
    gap = 0.0 if r["cost"] <= 0 else (r["cost"] - r["bound"]) / r["cost"]
    vs = f"  {r['cost'] / r['first']:.3f}x first" if "first" in r else ""
    greedy = "" if math.isfinite(r["greedy"]) else "  (greedy baseline: no room)"
    unsound = f"  UNSOUND: {r['unsound'][0]}" if r["unsound"] else ""
    return (f"{head}  {r['cost']:9.2f}/h  bound {r['bound']:9.2f}  gap {gap:6.1%}  {r['seconds']:6.1f} s{vs}"
            f"{greedy}{unsound}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--family", type=int, default=12)
    ap.add_argument("--max-models", type=int, default=60)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--skip-examples", action="store_true", help="generated members only")
    a = ap.parse_args()
    from bench.family import example_docs

    start = len(example_docs(a.max_models)) if a.skip_examples else 0
    work = [(i, a.seed, a.max_models) for i in range(start, start + a.family)]
    rows: list[dict] = []
    with Pool(a.jobs) as pool:
        for got in pool.imap(run_member, work):
            for r in got:
                print(_line(r), flush=True)
            rows += got
    for variant in ("room", "short", "room+", "short+"):
        vs = [r for r in rows if r["variant"] == variant]
        if not vs:
            continue
        planned = [r for r in vs if "error" not in r]
        proven = sum(1 for r in vs if "error" in r and r["proven"])
        unproven = sum(1 for r in vs if "error" in r and not r["proven"])
        no_greedy = sum(1 for r in planned if not math.isfinite(r["greedy"]))
        unsound = sum(1 for r in planned if r["unsound"])
        line = (f"{variant}: {len(vs)} fleets, {len(planned)} planned ({no_greedy} where the greedy baseline "
                f"found no room), {proven} refused with a proof, {unproven} refused without one")
        if planned:
            worst = max(r["cost"] / r["first"] for r in planned)
            dearer = sum(1 for r in planned if r["cost"] > r["first"] + 1e-6)
            line += f"; cost against the first plan: worst {worst:.3f}x, {dearer} dearer; {unsound} unsound"
        print(line)


if __name__ == "__main__":
    main()
