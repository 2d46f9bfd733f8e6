"""Column generation run far past the plan's budget: is a gap the bound's or the plan's?

    python bench/converge.py 2000 1200          # bench/plan.py's generated 2000-model fleet
    python bench/converge.py FLEET.yaml 60 240  # a fleet file, at two budgets
    python bench/converge.py family:11:13:500 300 --pricing
                                                # a member of bench/family.py's family (the 12th of
                                                # seed 13, up to 500 models) and, per slot type at
                                                # the last duals, the best group the pricing's
                                                # search finds against HiGHS's

For each budget (deterministic seconds, ``patterns.pattern_bound``) it prints the Lagrangian bound
(a lower bound on every plan, over the replica counts the planner offers), the restricted LP's
optimum when column generation stopped (not a bound: the pricing is a heuristic; converged, it is
the LP's optimum only as far as the pricing can tell), the columns, rounds, whether it converged,
and the wall-clock seconds. A plan far above a converged restricted LP has a gap of its own; a
plan near it, with a bound far below, has a gap that is the bound's.

``--pricing`` says whether "converged" is so: per slot type at the last duals, the slot's dual,
the best group the pricing's search finds (``PRICE_NODES``, as column generation searches, and
``DEEP_NODES``), the best group HiGHS's MIP finds over the same cells with its proven bound
(``Patterns.best_group``), and the pricing bound the Lagrangian took. A MIP group worth more than
the dual is a column that column generation missed: its LP is not the pattern LP's optimum.
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

    pricing = "--pricing" in argv
    argv = [a for a in argv if a != "--pricing"]
    if len(argv) < 2:
        raise SystemExit(__doc__)
    if argv[0].isdigit():
        from plan import generated_fleet

        fleet = parse_fleet(generated_fleet(int(argv[0])))
    elif argv[0].startswith("family:"):  # family:INDEX:SEED:MAX_MODELS, as bench/plan.py --one names them
        from family import member

        i, seed, most = (int(x) for x in argv[0].split(":")[1:])
        fleet = parse_fleet(member(i, seed=seed, max_models=most))
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
        if pricing:
            _pricing(found)


def _pricing(found) -> None:
    """Per slot type at the last duals: the dual, the search's best groups, HiGHS's, the bound."""
    from packer.planner.patterns import DEEP_NODES, PRICE_NODES

    pat = found.patterns
    if pat is None or pat.duals is None:
        return
    mu, pi = pat.duals
    bounds = pat.last_values(mu, deep=found.converged)
    for key, ti in pat.types.items():
        v = pat.values(ti, mu)
        at = {k: i for i, k in enumerate(ti.keys)}
        searched = []
        for nodes in (PRICE_NODES, DEEP_NODES):
            cols, _ = pat.search(key, mu, floor=0.0, node_limit=nodes)
            searched.append(max((sum(v[at[k]] for k in col) for col in cols), default=0.0))
        t = time.monotonic()
        best, group, upper = pat.best_group(key, mu)
        print(f"  {key}: dual {pi.get(key, 0.0):.4f}, search {searched[0]:.4f} ({PRICE_NODES} nodes) "
              f"{searched[1]:.4f} ({DEEP_NODES}), MIP {best:.4f} ({len(group)} replicas, bound {upper:.4f}, "
              f"{time.monotonic() - t:.1f} s), pricing bound {bounds[key]:.4f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
