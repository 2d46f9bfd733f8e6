"""Cross-run soundness of the planner's numbers on random small family fleets.

    python bench/soundness.py --fleets 40 --seed 31        # about 8 min on 2 cores

A bound is a promise about every plan, so no run may print a bound above a plan that another run
finds for the same fleet. Each fleet (``bench/family.py``, 4-30 models, a random shape, headroom
0, 0.15 or 0.3, now and then without MIG) is planned four ways: seeds 0-3, the default budget and
3-s and 6-s limits, and once without the exact stage (``prove_s=0``). The script prints one line
per fleet (its cheapest and dearest plan, its lowest and highest bound) and flags:

* BAD: the highest bound above the cheapest plan, a zero bound, or a plan dearer than its greedy
  baseline;
* CHECK: a plan that ``packer.check.check_plan`` rejects.

It ends with the count of each. Fleets the pools cannot hold at that headroom are skipped (a
``UserError`` line).
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # this checkout's packer, not an installed one

from bench.family import SHAPES, family_fleet  # noqa: E402
from packer.check import check_plan  # noqa: E402
from packer.errors import UserError  # noqa: E402
from packer.fleetfile import parse_fleet  # noqa: E402
from packer.planner import PlanSettings, plan_fleet  # noqa: E402

RUNS = ((0, None, None), (1, 3.0, None), (2, None, 0.0), (3, 6.0, None))
"""(seed, time limit, prove_s) of each fleet's runs: None is the default."""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fleets", type=int, default=40)
    ap.add_argument("--seed", type=int, default=17)
    ap.add_argument("--max-models", type=int, default=30)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    bad = checked = done = 0
    for _ in range(args.fleets):
        seed, shape = rng.randrange(2**31), rng.choice(sorted(set(SHAPES)))
        headroom, mig = rng.choice([0.0, 0.15, 0.3]), rng.random() >= 0.2
        try:
            fleet = parse_fleet(family_fleet(seed, max_models=args.max_models, min_models=4, shape=shape))
        except UserError:
            continue
        runs = []
        for run_seed, limit, prove_s in RUNS:
            settings = PlanSettings(headroom=headroom, seed=run_seed, time_limit_s=limit, prove_s=prove_s,
                                    use_mig=mig)
            try:
                plan = plan_fleet(fleet, settings)
            except UserError as e:
                print(f"UserError {seed} {shape} headroom {headroom}: {str(e)[:100]}", flush=True)
                break
            problems = check_plan(plan)
            if problems:
                checked += 1
                print(f"CHECK {seed} {shape} headroom {headroom}: {problems[:2]}", flush=True)
            runs.append((plan.cost_per_hour, plan.lower_bound_cost_per_hour, plan.baselines["greedy"].cost_per_hour))
        if len(runs) < len(RUNS):
            continue
        done += 1
        cheapest, highest = min(r[0] for r in runs), max(r[1] for r in runs)
        line = (f"{seed} {shape} {len(fleet.models)} models, headroom {headroom}, mig {mig}: "
                f"cost {cheapest:.2f}..{max(r[0] for r in runs):.2f}, bound {min(r[1] for r in runs):.2f}..{highest:.2f}")
        if highest > cheapest + 1e-6 or any(b <= 0 or c > g + 1e-9 for c, b, g in runs):
            bad += 1
            print("BAD", line, runs, flush=True)
        else:
            print("ok ", line, flush=True)
    print(f"{done} fleets planned {len(RUNS)} ways: {bad} BAD, {checked} plans check_plan rejects")


if __name__ == "__main__":
    main()
