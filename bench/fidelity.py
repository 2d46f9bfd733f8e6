"""Simulator vs a real Triton: p50 and p99 at the serving benchmark's load levels.

``bench/triton.py --json triton.json`` serves one stand-in model alone in one slot at ~30/60/85 % of
the slot's capacity under open-loop Poisson arrivals and records every parameter. This script
replays each of those levels in the simulator (same fleet, model, slot, placement via
``serving.group.placement``, rate, seconds, seed) and prints both beside each other with the
relative error; the issue's target is within 10 % for p50 and p99.

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


def simulate_level(fleet_name: str, model_name: str, slot: str, rate: float, seconds: float, seed: int,
                   overhead_ms: float = 0.0, replications: int = 5) -> dict:
    """The simulator's p50/p99 for one benchmark level (mean over ``replications`` seeds)."""
    import numpy as np

    from packer.fleet import load_fleet
    from serving.group import placement, plan_of
    from sims.engine import simulate
    from sims.scenario import Scenario

    path = Path(fleet_name)
    fleet = load_fleet(path if path.suffix in (".yaml", ".yml") else ROOT / "packer" / "examples" / f"{fleet_name}.yaml")
    pool, _, profile = slot.partition("/")
    m = fleet.model(model_name)
    m = replace(m, traffic=replace(m.traffic, rps=rate, peak_rps=rate), min_replicas=1, max_replicas=None)
    sub = replace(fleet, models=(m,))
    plan = plan_of(sub, [placement(sub, pool, [(model_name, rate)], profile=profile or "whole")])
    p50s, p99s, rej = [], [], []
    for k in range(replications):
        r = simulate(plan, Scenario(process="poisson", policy="static"), duration_s=seconds, seed=seed + 1000 * k)
        mm = r.models[0]
        p50s.append(mm["p50_ms"] + overhead_ms)
        p99s.append(mm["p99_ms"] + overhead_ms)
        rej.append(sum(mm["rejected"].values()))
    return {"sim_p50_ms": float(np.mean(p50s)), "sim_p99_ms": float(np.mean(p99s)),
            "sim_p99_spread_ms": float(np.std(p99s)), "sim_rejected": float(np.mean(rej))}


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
                 "seconds": a.seconds, "seed": i} for i, x in enumerate(a.loads.split(","))]
    else:
        ap.error("give the JSON of bench/triton.py, or --simulate-only")
    out = []
    print(f"{'model':<10}{'slot':<16}{'load':>5}{'rate':>8}  {'p50 real':>9}{'p50 sim':>9}{'err':>7}  "
          f"{'p99 real':>9}{'p99 sim':>9}{'err':>7}")
    for row in rows:
        sim = simulate_level(row["fleet"], row["model"], row["slot"], row["rate_rps"], row["seconds"], row["seed"],
                             a.overhead_ms)
        res = {**row, **sim}
        for q in ("p50", "p99"):
            real = row.get(f"{q}_ms")
            res[f"{q}_err"] = (sim[f"sim_{q}_ms"] - real) / real if real else None
        out.append(res)
        f = lambda v: f"{v:9.1f}" if v is not None else "        -"  # noqa: E731
        e = lambda v: f"{v:+7.1%}" if v is not None else "      -"  # noqa: E731
        print(f"{row['model']:<10}{row['slot']:<16}{row['load']:>5.0%}{row['rate_rps']:>8.1f}  {f(row.get('p50_ms'))}"
              f"{f(sim['sim_p50_ms'])}{e(res['p50_err'])}  {f(row.get('p99_ms'))}{f(sim['sim_p99_ms'])}"
              f"{e(res['p99_err'])}", flush=True)
    if a.json_path:
        Path(a.json_path).write_text(json.dumps({"bench": "fidelity", "rows": out}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
