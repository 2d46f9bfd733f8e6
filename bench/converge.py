"""Column generation run far past the plan's budget: is a gap the bound's or the plan's?

    python bench/converge.py 2000 1200          # bench/plan.py's generated 2000-model fleet
    python bench/converge.py FLEET.yaml 60 240  # a fleet file, at two budgets

For each budget (deterministic seconds, ``patterns.pattern_bound``) it prints the Lagrangian bound
(a lower bound on every plan, over the replica counts the planner offers), the restricted LP's
optimum when column generation stopped (not a bound: the pricing is a heuristic; converged, it is
the LP's optimum only as far as the pricing can tell), the columns, rounds, whether it converged,
and the wall-clock seconds. A plan far above a converged restricted LP has a gap of its own; a
plan near it, with a bound far below, has a gap that is the bound's.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "bench"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))


def main(argv: list[str]) -> None:
    from packer.fleetfile import load_fleet, parse_fleet
    from packer.planner.model import Problem
    from packer.planner.patterns import pattern_bound
    from packer.settings import PlanSettings

    if len(argv) < 2:
        raise SystemExit(__doc__)
    if argv[0].isdigit():
        from plan import generated_fleet

        fleet = parse_fleet(generated_fleet(int(argv[0])))
    else:
        fleet = load_fleet(argv[0])
    problem = Problem(fleet, PlanSettings())
    for seconds in (float(x) for x in argv[1:]):
        t = time.monotonic()
        found = pattern_bound(problem, seconds)
        if found is None:
            print(f"{fleet.name}: nothing needs a GPU")
            return
        print(f"{fleet.name}: budget {seconds:g} det-s: bound {found.value:.2f}/h, restricted LP {found.lp:.2f}/h, "
              f"{found.columns} columns, {found.rounds} rounds, converged {found.converged}, "
              f"{time.monotonic() - t:.0f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
