"""Do planned fleets hold their bounds at peak? Plan random family fleets, replay them at peak.

    python bench/peak.py --fleets 30 --seed 0               # about 6 min on 2 cores
    python bench/peak.py --fleets 20 --seed 1 --shape multilingual --headroom 0.3

Every member's ``p99_bound_ms`` is a promise at the model's ``peak_rps``. Each fleet
(``bench/family.py``, up to ``--max-models``, a random shape unless one is given) is planned with
the default settings (``--headroom`` and ``--time-limit`` to vary them) and simulated with the
``peak`` scenario (every model at its peak, streams as sessions of five minutes whose chunks stick
to the replica they started on) for ``--seconds``. Per model, the simulated p99 is set against the
largest bound among its replicas, and sorted by how its slots are served: ``lone`` (a replica alone,
its batches sent as the slot frees, ``packer/queue.py``) or ``duty`` (a duty cycle).

One line per fleet, then per kind of slot: models, how many went over their bound (by more than
the simulator's histogram resolution, ``sims/metrics.py``: 0.78 %), the median and worst ratio, and
the worst model. A model over its bound is a defect of the slot model, the planner or the simulator.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # this checkout's packer, not an installed one

from bench.family import SHAPES, family_fleet  # noqa: E402
from packer.check import check_plan  # noqa: E402
from packer.errors import UserError  # noqa: E402
from packer.fleetfile import parse_fleet  # noqa: E402
from packer.planner import PlanSettings, plan_fleet  # noqa: E402
from sims.engine import simulate  # noqa: E402
from sims.scenario import load_scenario  # noqa: E402

RESOLUTION = 1.008
"""A simulated percentile is read as its histogram bin's largest latency: never below the exact
one, at most 0.78 % above it (``sims/metrics.py``)."""


def run(seed: int, shape: str | None, max_models: int, headroom: float, limit: float | None,
        seconds: float) -> list[tuple[float, str, str, str]] | None:
    """(simulated p99 / bound, kind of slot, fleet, model) per model with requests; None if the
    fleet is refused."""
    try:
        fleet = parse_fleet(family_fleet(seed, max_models=max_models, min_models=4, shape=shape))
        plan = plan_fleet(fleet, PlanSettings(headroom=headroom, time_limit_s=limit))
    except UserError as e:
        print(f"{seed}: refused: {str(e)[:100]}", flush=True)
        return None
    problems = check_plan(plan)
    if problems:
        print(f"{seed} {fleet.name}: CHECK {problems[:2]}", flush=True)
    bound: dict[str, float] = {}
    lone: dict[str, bool] = {}
    for p in plan.placements:
        for m in p.models:
            bound[m.name] = max(bound.get(m.name, 0.0), m.p99_bound_ms)
            lone[m.name] = lone.get(m.name, False) or (p.duty_cycle_ms == 0 and len(p.models) == 1)
    t0 = time.perf_counter()
    res = simulate(plan, load_scenario("peak"), duration_s=seconds, seed=seed)
    out = []
    for m in res.models:
        b = bound.get(m["name"])
        if b and m["completed"]:
            out.append((m["p99_ms"] / b, "lone" if lone[m["name"]] else "duty", fleet.name, m["name"]))
    worst = max(out, default=(0.0, "", "", ""))
    print(f"{seed} {fleet.name}: {plan.cost_per_hour:.2f}/h, {len(out)} models, "
          f"{sum(r[0] > RESOLUTION for r in out)} over, worst {worst[0]:.3f} ({worst[3]}, {worst[1]}), "
          f"simulated in {time.perf_counter() - t0:.1f} s", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fleets", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-models", type=int, default=40)
    ap.add_argument("--shape", choices=sorted(set(SHAPES)))
    ap.add_argument("--headroom", type=float, default=PlanSettings().headroom)
    ap.add_argument("--time-limit", type=float, default=6.0, help="planner budget per fleet (s)")
    ap.add_argument("--seconds", type=float, default=600.0, help="simulated seconds at peak")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    rows: list[tuple[float, str, str, str]] = []
    for _ in range(args.fleets):
        got = run(rng.randrange(2**31), args.shape, args.max_models, args.headroom, args.time_limit, args.seconds)
        rows += got or []
    print()
    print(f"{'slots':6} {'models':>7} {'over':>5} {'median':>7} {'worst':>7}  worst model")
    for kind in ("lone", "duty"):
        r = sorted((x for x in rows if x[1] == kind), reverse=True)
        if not r:
            continue
        over = sum(x[0] > RESOLUTION for x in r)
        print(f"{kind:6} {len(r):7d} {over:5d} {statistics.median(x[0] for x in r):7.3f} {r[0][0]:7.3f}  "
              f"{r[0][3]} of {r[0][2]}")


if __name__ == "__main__":
    main()
