"""The cheaper GPU purchases, each at its own pool sizes: a packing inside them
(:func:`inside_purchases`) and a bound that rules them out (:func:`rule_out`).

A plan buys some purchase (GPUs per pool) and costs exactly that. The pattern LP's columns are
generated at the pools' full sizes, where the LP's optimum leans on whatever pool is cheapest per
unit of work; the integer master over them (``colplan.integer_master``) then looks for whole
groups near that optimum. Inside a smaller purchase other groups are the useful ones: the pool the
LP leaned on is short, and the groups that fill the dearer GPUs tightly are the ones the master
needs. Generated at the purchase's sizes (``pattern_bound(sizes=...)``), the columns hold them:
family-800039-long-tail-34's plan bought 2 A100s, 8 L4s and an H100 (25.99/h); the columns at
2 A100s, 7 L4s and an H100 gave HiGHS a packing at 24.89/h in half a second.

Purchases tried: the maximal ones below the packing's cost that the bound leaves open (no GPU can
be added without reaching the cost), cheapest first: the bound has just ruled out those below it
(``rule_out``, before the search), so the cheapest left is where the optimum may be, and a packing
found there leaves only the purchases cheaper than it. Column generation at each is counted in
deterministic seconds and the master ends at its node limit, so a seed gives one plan whatever the
machine's load.
"""

from __future__ import annotations

import math

import numpy as np

from packer.planner.assemble import Gpu
from packer.planner.colplan import integer_master, shared_cost
from packer.planner.model import Problem
from packer.planner.patterns import pattern_bound, purchase_lagrangians, purchases_between
from packer.planner.prove import maximal_purchases, purchase_cost

INSIDE_BUYS = 10
"""Most purchases tried: each costs a column generation, and a master where its LP is cheaper."""
MASTER_CHARGE, MASTER_GUARD_S = 0.5, 5.0
"""Deterministic seconds a master is charged, and the wall clock its guard is made from (twice
this, ``colplan.integer_master``): its node limit ends it, not the clock. With a guard of 4 s,
family-800039-long-tail-34's master at 2 A100s, 7 L4s and an H100 (about 5 s on a busy machine,
both of its variants) was cut off, and the plan cost 25.99/h, not 24.89/h."""
INSIDE_COLUMN_S = 2.0
"""Deterministic seconds of column generation at one purchase's sizes (at most)."""
INSIDE_LIST = 20_000
"""Most purchases listed before the maximal ones are picked: past it, none is tried."""


def inside_purchases(problem: Problem, shared: list[Gpu], reserved: dict[str, int], lower: float,
                     seconds: float, seeds: list[tuple[str, list[tuple[str, int]]]] = ()) -> list[Gpu]:
    """The cheapest packing of the shared models found inside the maximal purchases below the
    cost of ``shared`` (the shared GPUs so far) and not below ``lower`` (a bound on their cost),
    within ``seconds`` deterministic seconds of column generation; else ``shared``. ``reserved``:
    GPUs per pool the multi-GPU replicas take. ``seeds``: groups of a known packing, first columns
    at every purchase. The packing returned fits the pools less ``reserved``; its columns keep the
    spread rule (``Patterns.apart``), as the plan's do, and the caller checks the packing does.
    Without those rows, family-800039-long-tail-34's (under ``tests/conftest.uncapped``) put both
    replicas of ft-0001 on the one A100 node at 24.89/h, refused, and the plan stayed at 25.99/h."""
    pools = problem.fleet.pools
    prices = {p.name: p.cost_per_gpu_hour for p in pools}
    room = {p.name: max(0, p.max_gpus - reserved.get(p.name, 0)) for p in pools}
    cost = shared_cost(problem, shared)
    buys = sorted(open_purchases(prices, room, cost, lower, INSIDE_LIST), key=lambda b: purchase_cost(prices, b))
    best, spent = shared, 0.0
    for buy in buys[:INSIDE_BUYS]:
        if spent >= seconds or purchase_cost(prices, buy) >= cost - 1e-6:
            break  # a packing found costs less than the purchases left
        # Pools without a price (none in practice) keep their room; the rest are cut to the purchase.
        size = {n: buy.get(n, room[n]) for n in room}
        found = pattern_bound(problem, min(INSIDE_COLUMN_S, seconds - spent), upper=cost, seeds=seeds,
                              sizes={n: k + reserved.get(n, 0) for n, k in size.items()}, spread=True, apart=True)
        if found is None or found.patterns is None:
            break
        spent += found.spent
        if found.lp >= cost - 1e-6 or found.value >= cost - 1e-6:
            continue  # the LP at this purchase is no cheaper (or cannot hold the fleet): nothing to find
        cut = {p.name: p.max_gpus - size[p.name] for p in pools}
        new = integer_master(problem, found.patterns, cut, MASTER_GUARD_S, cost)
        spent += MASTER_CHARGE
        if new is not None and lower - 1e-6 <= shared_cost(problem, new) < cost - 1e-6:
            best, cost = new, shared_cost(problem, new)
    return best


def open_purchases(prices: dict[str, float], room: dict[str, int], cost: float, lower: float,
                   most: int) -> list[dict[str, int]]:
    """The maximal purchases (GPUs per priced pool, within ``room``) below ``cost`` that the bound
    ``lower`` leaves open: where a packing cheaper than ``cost`` may be. None where ``cost`` is
    at the bound, or where more than ``most`` purchases would be listed to find them."""
    limits = {n: min(room.get(n, 0), int(cost / c + 1e-9)) for n, c in prices.items() if c > 0}
    if cost <= lower + 1e-6 or math.prod(v + 1 for v in limits.values()) > most:
        return []
    return [b for b in maximal_purchases(prices, limits, cost - 1e-6) if purchase_cost(prices, b) >= lower - 1e-6]


RULE_OUT_COLUMN_S = 1.0
"""Deterministic seconds of column generation at one purchase's sizes when ruling it out."""
RULE_OUT_NODES = 64
"""Most LPs at one purchase: the first, then branches on replica counts (``_rules_out``)."""


def rule_out(problem: Problem, cost: float, lower: float, seconds: float,
             counts: dict[str, set[int]] | None = None) -> tuple[float, int, bool]:
    """A bound on every plan from the purchases costing at least ``lower`` (a bound) and less
    than ``cost`` (the plan's): the cheapest that column generation at its own sizes, with the
    spread rows and branches on replica counts (``_rules_out``), does not rule out, or ``cost``
    where it rules out all; how many purchases it ruled out (all of those
    below it); and whether ``seconds`` ran out first (the bound is then the next purchase's
    cost). Within ``seconds`` deterministic seconds, cheapest first; a purchase inside one ruled
    out is ruled out with it, and so is one that the Lagrangians of its branches put above its
    cost. Over the replica counts the planner offers and ``counts`` (those the plan uses, which
    a re-plan may keep).

    A plan buys some purchase ``P`` and costs exactly its cost. The Lagrangian of the pattern LP at
    ``P``'s sizes bounds every plan that fits in ``P``, so where it exceeds ``P``'s cost no plan
    fits there. The bound's own Lagrangian (``PatternBound.cheapest_purchase``) tests every
    purchase at once with the duals of the pools' full sizes; duals of ``P``'s own sizes price the
    pool that is short: on family-800039-long-tail-34 they rule out all 18 purchases between the
    bound's 21.59/h and the plan's 24.89/h, where the full sizes' duals ruled out none."""
    pools = [p for p in problem.fleet.pools if p.max_gpus > 0]
    listed = purchases_between([(p.cost_per_gpu_hour, p.max_gpus) for p in pools], lower, cost, INSIDE_LIST)
    if listed is None:
        return lower, 0, False
    buys, costs = listed
    gone = np.zeros(costs.size, dtype=bool)
    spent = 0.0
    seeds: list[tuple[str, list[tuple[str, int]]]] = []
    for i in np.argsort(costs, kind="stable").tolist():
        if gone[i]:
            continue
        if spent >= seconds:
            return float(costs[i]), int((costs < costs[i] - 1e-6).sum()), True
        at = float(costs[i]) + 1e-6 * max(1.0, float(costs[i]))
        sizes = {p.name: int(n) for p, n in zip(pools, buys[i])}
        out, used, seeds, leaves = _rules_out(problem, sizes, at, seconds - spent, seeds, counts)
        spent += used
        if not out:
            return float(costs[i]), int((costs < costs[i] - 1e-6).sum()), bool(out is False and spent >= seconds)
        gone |= (buys <= buys[i]).all(axis=1)  # inside it: ruled out with it
        if leaves:
            # A purchase that every branch's duals put above its cost is ruled out too, without an LP.
            over = np.ones(costs.size, dtype=bool)
            for leaf in leaves:
                over &= purchase_lagrangians(buys, pools, *leaf) > costs + 1e-6 * np.maximum(1.0, costs)
            gone |= over
    return cost, costs.size, False


def pools_cost(problem: Problem) -> float:
    """The purchase of every GPU of every pool, an hour: no plan costs more."""
    return sum(p.cost_per_gpu_hour * p.max_gpus for p in problem.fleet.pools)


def rules_out_pools(problem: Problem, seconds: float) -> bool:
    """Whether the pattern LP at the pools' full sizes, with the spread rows and branched on replica
    counts (``_rules_out``), shows that no plan fits the pools at all, within ``seconds``
    deterministic seconds (``fits.no_fit_error``: a "cannot fit" it can stand on)."""
    sizes = {p.name: p.max_gpus for p in problem.fleet.pools}
    total = pools_cost(problem)
    out, _, _, _ = _rules_out(problem, sizes, total + 1e-6 * max(1.0, total), seconds, [], None)
    return out is True


def _rules_out(problem: Problem, sizes: dict[str, int], at: float, seconds: float,
               seeds: list[tuple[str, list[tuple[str, int]]]], counts: dict[str, set[int]] | None
               ) -> tuple[bool | None, float, list[tuple[str, list[tuple[str, int]]]], list[tuple]]:
    """Whether no plan that fits in the purchase ``sizes`` costs ``at`` or less (None where
    column generation could not run), the deterministic seconds spent, the columns of the first
    LP (they start the next purchase's: purchases a GPU apart need much the same), and, where it
    is ruled out by Lagrangians, each branch's duals (``Patterns.best_duals`` less its value, and
    the multi-GPU models), which test other purchases (``patterns.purchase_lagrangians``).

    The pattern LP runs each model at a mix of its replica counts (``y[m, n]``); a plan runs it at
    one. Where the LP at the purchase is not above ``at``, a model it runs at a mix is branched on
    (``_branches``: its counts up to a threshold, and above it), and
    each branch's LP bounds the plans that run the model so; the purchase is ruled out when every
    branch is, up to ``RULE_OUT_NODES`` LPs. family-900031-mixed-26's LP at 8 H100s and 295 T4s
    (186.73/h) ran its biggest model 57 % at 7 replicas (on H100s alone) and 43 % at 186 (on T4s):
    neither half fits there (LPs of 4,350/h and 345.64/h), and the purchase is ruled out."""
    pending: list[dict[str, frozenset]] = [{}]
    spent, nodes, first = 0.0, 0, seeds
    leaves: list[tuple] = []
    linear = True  # every branch ruled out by its Lagrangian, whose duals test other purchases
    while pending:
        only = pending.pop()
        if nodes >= RULE_OUT_NODES or spent >= seconds:
            return False, spent, first, []
        found = pattern_bound(problem, min(RULE_OUT_COLUMN_S, seconds - spent), seeds=seeds, counts=counts,
                              sizes=sizes, spread=True, stop_above=at, only=only or None)
        if found is None or found.patterns is None:
            return (None if nodes == 0 else False), spent, first, []
        nodes += 1
        spent += found.spent
        seeds = [(key, [found.patterns.reps[k] for k in reps]) for key, reps in found.patterns.columns]
        if nodes == 1:
            first = seeds
        if found.value > at:
            value, fixed, worth, scales, caps = found.patterns.best_duals
            linear = linear and value > at
            leaves.append((fixed, worth, scales, found.patterns.multi, caps))
            continue
        split = _branches(found.patterns, only)
        if split is None:
            return False, spent, first, []
        pending.extend(split)
    return True, spent, first, leaves if linear else []


def _branches(pat, only: dict[str, frozenset]) -> list[dict[str, frozenset]] | None:
    """Two branches of ``only`` on one shared model the restricted LP runs at a mix of replica
    counts a plan cannot make: those up to a threshold, and those above it. The model and threshold
    leave the most of the mix on the smaller side, weighed by how far apart its counts are (the
    ratio of the most to the fewest it uses: a mix of 7 and 186 replicas is one the plans cannot
    make, one of 2 and 3 is nearly one they can). None where every model runs as a plan can run it.

    A multi-GPU model the LP spreads over pools is not branched on: a plan may split its replicas
    over two pools too (``spot.multi_options``), and the LP's mix of pools, each at the GPUs it
    needs there alone, costs no more than any such split. (Branches on a pool and on the others
    were sound while a model took one pool unless a spot pool took some: they lifted the bound of
    a 4-model fleet, soundness seed 1924780762, from 126.78/h to its plan's 162.00/h, a plan that
    now splits its 70B model over two H100 pools.)"""
    if pat.shares is None:
        return None  # the restricted LP never solved
    best: tuple[float, str, int] | None = None
    for name in pat.models:
        used = sorted((pat.reps[k][1], float(pat.shares[k])) for k in pat.model_reps[name] if pat.shares[k] > 1e-6)
        if len(used) < 2:
            continue
        total = sum(s for _, s in used)
        spread = used[-1][0] / used[0][0]
        below = 0.0
        for n, s in used[:-1]:
            below += s
            score = min(below, total - below) / total * spread
            if best is None or score > best[0] + 1e-9:
                best = (score, name, n)
    if best is None or best[0] < 1e-3:
        return None
    _, name, t = best
    offered = [pat.reps[k][1] for k in pat.model_reps[name]]
    return [{**only, name: frozenset(n for n in offered if n <= t)},
            {**only, name: frozenset(n for n in offered if n > t)}]
