"""Simulator vs a real Triton: p50 and p99 at the serving benchmark's load levels.

``bench/triton.py --json triton.json`` serves one slot (a stand-in model alone, or a packed group)
at ~30/60/85 % of its capacity under open-loop arrivals and records every parameter. This script
replays each level in the simulator (same fleet, members, slot, placement via
``serving.group.placement``, rates, stream counts, seconds, seed) and prints both beside each other
per model with the relative error; the issue's target is within 10 % for p50 and p99.

    python bench/triton.py --json /tmp/triton.json          # needs tritonserver
    python bench/fidelity.py /tmp/triton.json [--json out.json]
    python bench/fidelity.py --simulate-only                # the simulator's side alone, default levels

The real numbers are client-side (gRPC included); ``--overhead-ms`` adds a fixed per-request
client/transport cost to the simulated latencies (0 by default: the raw simulator is compared).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def simulate_level(fleet_name: str, slot: str, rates: dict[str, float], seconds: float, seed: int, *,
                   streams: dict[str, int | None] | None = None, arrivals: str = "poisson",
                   overhead_ms: float = 0.0, replications: int = 5) -> dict[str, dict[str, float]]:
    """The simulator's p50/p99 per model for one benchmark level (mean over ``replications`` seeds).

    ``rates``: each member's rps in the slot (one model, or a packed group). ``arrivals``:
    ``poisson`` (per request, or per stream, which sums to Poisson), or ``periodic per stream``
    (streams sending evenly spaced chunks, random phases; the simulator's stream count is Poisson
    around the bench's fixed count).
    """
    import numpy as np

    from packer.fleet import load_fleet
    from serving.group import placement, plan_of
    from sims.engine import simulate
    from sims.scenario import Scenario

    path = Path(fleet_name)
    fleet = load_fleet(path if path.suffix in (".yaml", ".yml") else ROOT / "packer" / "examples" / f"{fleet_name}.yaml")
    pool, _, profile = slot.partition("/")
    models = []
    for name, rate in rates.items():
        m = fleet.model(name)
        n = (streams or {}).get(name) or m.traffic.streams
        models.append(replace(m, traffic=replace(m.traffic, rps=rate, peak_rps=rate, streams=n), min_replicas=1,
                              max_replicas=None))
    sub = replace(fleet, models=tuple(models))
    plan = plan_of(sub, [placement(sub, pool, list(rates.items()), profile=profile or "whole")])
    periodic = arrivals.startswith("periodic")
    sc = Scenario(process="poisson", policy="static", stream_arrivals="sessions" if periodic else "poisson",
                  session_s=1e9)
    acc: dict[str, dict[str, list[float]]] = {n: {"p50": [], "p99": [], "rej": []} for n in rates}
    for k in range(replications):
        r = simulate(plan, sc, duration_s=seconds, seed=seed + 1000 * k)
        for mm in r.models:
            acc[mm["name"]]["p50"].append(mm["p50_ms"] + overhead_ms)
            acc[mm["name"]]["p99"].append(mm["p99_ms"] + overhead_ms)
            acc[mm["name"]]["rej"].append(sum(mm["rejected"].values()))
    return {n: {"sim_p50_ms": float(np.mean(a["p50"])), "sim_p99_ms": float(np.mean(a["p99"])),
                "sim_p99_spread_ms": float(np.std(a["p99"])), "sim_rejected": float(np.mean(a["rej"]))}
            for n, a in acc.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("triton_json", nargs="?", help="output of bench/triton.py --json")
    ap.add_argument("--simulate-only", action="store_true", help="no Triton results: print the simulator's side")
    ap.add_argument("--fleet", default="long-tail")
    ap.add_argument("--model", default="ft-0002")
    ap.add_argument("--slot", default="l4/whole")
    ap.add_argument("--loads", default="0.3,0.6,0.85")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--overhead-ms", type=float, default=0.0)
    ap.add_argument("--json", dest="json_path")
    a = ap.parse_args(argv)
    if a.triton_json:
        rows = json.loads(Path(a.triton_json).read_text())["results"]
    elif a.simulate_only:
        from packer.fleet import load_fleet
        from packer.slot import SlotType, single_capacity

        fleet = load_fleet(ROOT / "packer" / "examples" / f"{a.fleet}.yaml")
        pool, _, profile = a.slot.partition("/")
        cap = single_capacity(fleet.model(a.model), SlotType(fleet.pool(pool), profile or "whole"), 0.85)
        rows = [{"fleet": a.fleet, "model": a.model, "slot": a.slot, "load": float(x), "rate_rps": cap * float(x),
                 "seconds": a.seconds, "seed": i, "arrivals": "poisson"} for i, x in enumerate(a.loads.split(","))]
    else:
        ap.error("give the JSON of bench/triton.py, or --simulate-only")
    out = []
    print(f"{'model':<12}{'slot':<16}{'load':>5}{'rate':>8}  {'p50 real':>9}{'p50 sim':>9}{'err':>7}  "
          f"{'p99 real':>9}{'p99 sim':>9}{'err':>7}")
    levels: dict[tuple, list[dict]] = {}
    for row in rows:  # one level = one slot at one load: a model alone, or every member of a group
        key = (row["fleet"], row["slot"], row["load"], row["seed"], tuple(row.get("group") or [row["model"]]))
        levels.setdefault(key, []).append(row)
    for (fleet_name, slot, _, seed, _), members in levels.items():
        sims = simulate_level(fleet_name, slot, {r["model"]: r["rate_rps"] for r in members}, members[0]["seconds"],
                              seed, streams={r["model"]: r.get("streams") for r in members},
                              arrivals=str(members[0].get("arrivals", "poisson")), overhead_ms=a.overhead_ms)
        for row in members:
            sim = sims[row["model"]]
            res = {**row, **sim}
            for q in ("p50", "p99"):
                real = row.get(f"{q}_ms")
                res[f"{q}_err"] = (sim[f"sim_{q}_ms"] - real) / real if real else None
            out.append(res)
            f = lambda v: f"{v:9.1f}" if v is not None else "        -"  # noqa: E731
            e = lambda v: f"{v:+7.1%}" if v is not None else "      -"  # noqa: E731
            print(f"{row['model']:<12}{row['slot']:<16}{row['load']:>5.0%}{row['rate_rps']:>8.1f}  "
                  f"{f(row.get('p50_ms'))}{f(sim['sim_p50_ms'])}{e(res['p50_err'])}  {f(row.get('p99_ms'))}"
                  f"{f(sim['sim_p99_ms'])}{e(res['p99_err'])}", flush=True)
    if a.json_path:
        Path(a.json_path).write_text(json.dumps({"bench": "fidelity", "rows": out}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
