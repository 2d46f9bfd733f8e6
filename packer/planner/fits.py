"""Whether a fleet fits its pools, where the planner found no packing that does.

The greedy starts place one replica at a time and give up when a replica finds no room; the
pattern LP's packings (``colplan``) see every group at once and often fit where they do not
(``bench/tight.py``: pools cut to the GPUs a plan used, rounded up to whole nodes, refused as
"does not fit" on 5 of 16 fleets, with that plan's packing right there). Where neither finds a
packing, "does not fit" is a claim about every packing, and it is made only where it is shown:

* the pattern LP's Lagrangian bound is a bound on every plan's cost; above what all the pools
  together cost, no plan fits;
* else the pattern LP at the pools' full sizes, branched on replica counts
  (``purchases.rules_out_pools``), may rule that one purchase out.

Otherwise the error says that nothing was found and nothing was shown, and what more time or
more GPUs would try.
"""

from __future__ import annotations

from packer.errors import UserError
from packer.planner.model import Problem
from packer.planner.purchases import pools_cost, rules_out_pools

FIX = "Fix: raise max_nodes of a pool, add a pool, or lower headroom"
MIN_RULE_OUT_S = 0.5
"""Fewer deterministic seconds than this left of the plan's time: the pools are not put to the LP."""


def above_pools(problem: Problem, bound: float) -> bool:
    """Whether ``bound``, a bound on every plan's cost, is above what all the pools' GPUs cost:
    then no plan fits them."""
    total = pools_cost(problem)
    return bound > total + 1e-6 * max(1.0, total)


def no_fit_error(problem: Problem, bound: float, failed: str, seconds: float, rule_out_s: float) -> UserError:
    """The error for a fleet none of whose packings was found to fit: proven where the bound
    (``bound``, on every plan's cost) is above the pools' cost or the pattern LP at the pools'
    sizes rules them out within ``rule_out_s`` deterministic seconds; else an error that says it
    is not proven. ``failed``: what the greedy starts ran into; ``seconds``: the time spent."""
    total = pools_cost(problem)
    if above_pools(problem, bound):
        # Not the bound itself: where nothing fits, the LP's cost is its dear artificial
        # variables', not a price of GPUs (one L40S at 1.90/h, the fleet fitting two: "39.90/h").
        gpus = sum(p.max_gpus for p in problem.fleet.pools)
        return UserError(f"pools: the fleet cannot fit ({failed} first): the pattern LP's bound shows that every "
                         f"packing needs more than the pools' {gpus} GPU{'s' if gpus != 1 else ''} "
                         f"({total:.2f}/h). {FIX}")
    if rule_out_s >= MIN_RULE_OUT_S and rules_out_pools(problem, rule_out_s):
        return UserError(f"pools: the fleet cannot fit ({failed} first): the pattern LP at the pools' sizes, "
                         f"branched on replica counts, admits no packing of its replicas. {FIX}")
    return UserError(f"pools: no packing that fits the pools was found in {seconds:.0f} s ({failed}), and "
                     f"none was shown impossible (the pattern LP's bound is {bound:.2f}/h against the "
                     f"{total:.2f}/h all the pools cost). Fix: raise max_nodes of a pool or add a pool, "
                     f"or give --time-limit more seconds")
