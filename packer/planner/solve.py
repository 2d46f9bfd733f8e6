"""``plan_fleet``: greedy warm start, local consolidation, CP-SAT improvement, bound, baselines.

Small fleets are solved as one CP-SAT model, which may prove optimality. Large ones are improved
by large-neighbourhood search: a seeded choice of a few GPUs is emptied and re-packed optimally,
and kept only when cheaper. With a current plan, replicas stay where they are unless their slot no
longer holds them, so a small traffic change moves few replicas.
"""

from __future__ import annotations

import itertools
import math
import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, replace
from functools import partial
from typing import Callable, Iterator

from packer.catalog import layout_named
from packer.fleet import Fleet, Pool
from packer.plan import Baseline, Move, Plan, fleet_to_dict, node_parts, round_cost
from packer.planner.allgroups import EXACT_NODES, exact_groups, warm as warm_groups
from packer.planner.assemble import Gpu, assign_nodes, copy_gpus, fits_nodes, spare_slots, to_gpus
from packer.planner.bound import MIP_MIN_S, SPREAD_RULE, _whole_gpus_plus, closed_form, lower_bound, refined_bound
from packer.planner.fits import above_pools, no_fit_error
from packer.planner.colplan import DIVE_COLUMNS, DIVE_SHARES, MASTER_COLUMNS, dive, integer_master, sequential, shared_cost
from packer.planner.patterns import count_options
from packer.planner.build import cost_of, gpu_counts, make_plan
from packer.planner.cpsat import solve_window
from packer.planner.greedy import NoRoom, choose_counts, orderings, pack, reps_for
from packer.planner.model import (PlanSettings, Problem, Rep, Slot, SlotSums, allowed, can_add, can_add_sums,
                                  multi_replicas, wide_room)
from packer.planner.multi import choose_pools, multi_floor, plan_multi, replica_gpus
from packer.planner.purchases import inside_purchases, open_purchases, rule_out
from packer.planner.prove import (LEFT_FOR_PROOF, MAX_MODELS as PROVE_MODELS, prove, purchase_cost, purchases_left,
                                  why_not)
from packer.planner.spot import respread, spot_aware, spot_unaware
from packer.errors import UserError
from packer.planner.knapsack import warm as warm_pricing
from packer.queue import warm as warm_queue
from packer.slot import WHOLE, SlotType, duty_window, warm as warm_duty

Progress = Callable[[str, float], None]


LARGE_S = 26.0
"""The default budget from 222 to 586 models. Issue 14 asks 30 s of a plan there, and the stages
run past their shares by a few seconds (the greedy stage's first fifth is free; the bound's last
evaluation, the dive and the windows each go a little over): at 30, family-100007-mixed-401 took
29.1-31.4 s and generated-500 29.6-33.5 s from run to run on the 2-core machine. At 28 their plans
and bounds were the same, and family-600025-long-tail-326's; family-900003-mixed-251 (limit 28.9
before) 193.57/183.47 -> 193.57/186.38/h. At 28, family-100007-mixed-401 still took 27.7-31.1 s
from run to run; at 27, 27.0 s, its plan 1,067.34 -> 1,064.07/h and bound 1,009.59 ->
1,010.43/h. With the pools' caps and the relocating windows (nineteenth session) family-100007
took 30.4 s and generated-500 28.5-31.2 s at 27; at 26, 27.0-31.2 and 27.4-27.8 s, their plans
and bounds 1,067.34/1,011.54 and 136.97/126.62/h (family-100007's plan 0.3 % dearer than at 27);
family-600018-long-tail-304 and family-600025-long-tail-326 keep theirs (170.89/165.47 and
684.65/677.45/h, 19.2 and 22.0 s)."""


def auto_time_limit(fleet: Fleet) -> float:
    """Whole budget from fleet size: 8.6 s at 20 models, 23.8 s at 200, ``LARGE_S`` (26 s) from
    222 to 586 models, 89.6 s at 2000.

    The pattern LP's column generation (``patterns.py``) needs a few seconds to converge on
    150-250 models (long-tail: 6 s leaves it short, 57.3/h against 49.0/h), hence more time there
    than the 8.5 s before it; issue 14 allows 30 s up to 500 models. The budget counts
    deterministic seconds, which run ahead of this project's 2-core machine: at 30, the largest
    family fleets took 17-23 s (family-100007-mixed-401: 23.3 s), and column generation converged
    where at the 22 s cap it did not (family-700023-mixed-299's gap 22.0 -> 6.9 %,
    family-600025-long-tail-326's 11.4 -> 8.8 %).

    Up to 60 models 45% goes to improving the plan and 45% to the lower bound; above, 30% and 60%
    (``_budget``: the pattern LP's columns give the bound and the packing). Baselines take the
    rest. The search counts CP-SAT's deterministic
    time, which runs ahead of the wall clock, so a plan takes up to about 1.2x this budget: above
    100 models it grows slowly, and long-tail (200 models, 23.8 s) plans in 10-13 s. Where the
    counts fall behind the clock, past ``PATTERN_FIRST`` models the packing steps and the
    windows stop at ``WALL_CAP`` times the budget on the wall clock. A small
    fleet's default exact search (``_prove(first=True)``) comes on top, up to ``PROVE_FIRST_S``; when it
    proves the greedy plan optimal, the search's share is not spent.
    """
    n = len(fleet.models)
    if n <= 60:
        return 8.0 + 0.03 * n
    return min(LARGE_S, 9.8 + 0.1 * (n - 60)) if n <= 500 else min(100.0, max(LARGE_S, 22.1 + 0.045 * (n - 500)))


def _fill_of(problem: Problem, g: Gpu) -> float:
    total = 0.0
    for s in g.slots:
        if s.reps:
            items = [problem.item(r, s.type) for r in s.reps]
            win = duty_window(items, problem.u)
            d = win[1] if win else 1.0
            comp = sum(i.load(d) for i in items) / (problem.u * d)
            mem = sum(r.model.memory_gb for r in s.reps) / s.type.memory_gb
            total += max(comp, mem) * s.type.compute_fraction
    return total


def _cached_fill(problem: Problem, g: Gpu, fills: dict[int, tuple[Gpu, float]]) -> float:
    """``_fill_of(g)``, remembered in ``fills`` by ``id`` with the GPU itself, so that a GPU made
    later at a freed GPU's address is not given its fill. A caller drops the entry of a GPU whose
    slots it changes."""
    got = fills.get(id(g))
    if got is None or got[0] is not g:
        got = fills[id(g)] = (g, _fill_of(problem, g))
    return got[1]


def consolidate(problem: Problem, gpus: list[Gpu], deadline: float) -> list[Gpu]:
    """Empty GPUs whose replicas fit into room elsewhere (spare MIG instances included).

    Each pass tries the GPUs emptiest first and ends at the first one emptied. Within a pass the
    slots do not change (a GPU that cannot be emptied gives its replicas back), so whether a slot
    takes a model's replica at a given count is asked once: on a fleet of 2,598 GPUs mostly
    holding one model's replicas, asking again for every GPU took 85 s. The answers are kept
    across passes but for the slots an emptied GPU filled: a pass that empties one GPU changes
    only those (family-600025-long-tail-326: a start's consolidation stopped at the deadline after
    8.5 s, where each pass asked again). A GPU that could not be emptied is not tried again:
    later passes only fill slots and take GPUs away (over 40 family fleets the result is the one
    of asking everything afresh). The deadline is checked before each GPU. The slots a (model,
    count) is known not to go to (the memo's no, its model already on the GPU, an emptied GPU)
    are skipped without a look (``_unknown``); the work is counted as the scan of every slot."""
    gpus = list(gpus)
    spare_slots(problem, gpus)
    takes: dict[int, dict[tuple[str, int], bool]] = {}  # per slot (id): can_add per (model, count)
    sums: dict[int, SlotSums] = {}  # per slot (id) outside ``filled``: its members' sums, as ``takes``
    every = [(s, h) for h in gpus for s in h.slots]  # in the order the GPUs keep while some go
    at = {id(s): i for i, (s, _) in enumerate(every)}
    gone = bytearray(len(every))  # 1 where the slot's GPU was emptied
    known: dict[tuple[str, int], bytearray] = {}  # per (model, count), per slot: 1 where it cannot go
    live = len(every)
    stuck: set[int] = set()  # GPUs that could not be emptied: later passes only take room away
    fills: dict[int, tuple[Gpu, float]] = {}  # each GPU's fill, until a pass fills one of its slots
    changed = True
    while changed and not problem.past(deadline, CONSOLIDATION):
        changed = False
        order = sorted(gpus, key=lambda g: (_cached_fill(problem, g, fills) - g.pool.cost_per_gpu_hour, g.pool.name))
        names = {id(h): h.models() for h in gpus}  # kept up to date as replicas move
        for g in order:
            if problem.past(deadline, CONSOLIDATION):
                break
            if id(g) in stuck:
                continue
            reps = [r for s in g.slots for r in s.reps]
            placed: list[tuple[Slot, Rep, Gpu]] = []
            filled: set[int] = set()
            ok = True
            for r in sorted(reps, key=lambda r: -r.model.memory_gb):
                best = None
                problem.packing_work += live * LOOK_S  # counted as the scan of every slot it was
                key = (r.model.name, r.count)
                no = known.get(key)
                if no is None:
                    no = known[key] = bytearray(gone)
                for i in _unknown(no, sorted(at[sid] for sid in filled)):
                    s, h = every[i]
                    if h is g:
                        continue
                    if r.model.name in names[id(h)]:
                        # There for good: a GPU only gains replicas while others empty, and what
                        # this try gave h is of g's other models (one replica of a model a GPU).
                        no[i] = 1
                        continue
                    if not allowed(r, s.type):
                        # Before the memo: replicas of one model and count differ here alone (a
                        # floor replica may not go to a spot pool where a later one may).
                        fits = False
                    elif id(s) in filled:  # a slot this GPU just filled is not what it was
                        fits = can_add(problem, s, r)
                        problem.packing_work += CAN_ADD_S
                    else:
                        memo = takes.setdefault(id(s), {})
                        fits = memo.get(key)
                        if fits is None:
                            got = sums.get(id(s))
                            if got is None:
                                got = sums[id(s)] = SlotSums.of(problem, s)
                            fits = memo[key] = can_add_sums(problem, s, r, got)
                            problem.packing_work += CAN_ADD_S
                        if not fits:
                            no[i] = 1
                    if fits:
                        best = (s, h)
                        break
                if best is None:
                    ok = False
                    break
                best[0].reps.append(r)
                names[id(best[1])].add(r.model.name)
                placed.append((best[0], r, best[1]))
                filled.add(id(best[0]))
            if ok and _lost_spread(problem, gpus, g, placed):
                ok = False  # the one spread rule (_spread_kept): emptying g would take it
            if ok:
                gpus.remove(g)
                for sid in filled:
                    takes.pop(sid, None)
                    sums.pop(sid, None)
                    for no in known.values():  # its answers are asked again
                        no[at[sid]] = 0
                for s in g.slots:
                    gone[at[id(s)]] = 1
                    for no in known.values():
                        no[at[id(s)]] = 1
                live -= len(g.slots)
                for _, _, h in placed:
                    fills.pop(id(h), None)
                changed = True
                break
            for s, r, h in placed:
                s.reps.remove(r)
                names[id(h)] = h.models()
            stuck.add(id(g))
    return gpus


def _unknown(no: bytearray, filled: list[int]) -> Iterator[int]:
    """Positions of the slots to ask, in order: those not known to refuse (0 in ``no``; found at
    C speed, where most slots of a large fleet refuse most replicas) and those in ``filled``
    (sorted), which are asked afresh whatever was known of them. Skipping only slots that would
    have answered no from the memo, the first that fits and what is counted are those of asking
    every slot in turn: on family-1700075-mixed-498 (4,000-GPU pools) that scan in Python took
    20 of the plan's 29 s."""
    i, f, n = 0, 0, len(no)
    while True:
        j = no.find(0, i)
        if j < 0:
            j = n
        while f < len(filled) and filled[f] < i:
            f += 1
        if f < len(filled) and filled[f] < j:
            j = filled[f]
        if j >= n:
            return
        yield j
        i = j + 1


def _lost_spread(problem: Problem, gpus: list[Gpu], emptied: Gpu, placed: list) -> bool:
    """Whether moving ``placed`` ((slot, replica, GPU) each) off ``emptied`` leaves every replica of
    a ``min_replicas >= 2`` model on one pool of one node, where one of them was elsewhere: the
    spread rule (:func:`_spread_kept`) in consolidation, which took it (a start at 1.6/h with both
    replicas on a one-node pool, where the greedy packing had spread them at 2.4/h)."""
    if not any(r.model.min_replicas >= 2 and h.pool.max_nodes == 1 for _, r, h in placed):
        return False  # the rule cannot bind: no need to look at every GPU
    # ``gpus`` still holds ``emptied`` with its replicas, so it counts as the packing before.
    return len(_one_node(problem, [x for x in gpus if x is not emptied])) > len(_one_node(problem, gpus))


STARTS_SHARE = 0.4
"""Share of the span from the plan's start to the greedy stage's deadline that the starts may take,
in counted work (``Problem.packing_work``)."""
LOOK_S, CAN_ADD_S = 1e-6, 6e-6
"""Deterministic seconds per slot :func:`consolidate` looks at (mostly a remembered answer) and per
slot maths test it makes (``can_add``): fitted with ``greedy.SLOT_S`` on the same starts. Counted
work ends the starts: the wall clock did, at 40 %, and family-600018-long-tail-304 ran 4 of its
8 starts, or 5, as the machine was busy, its plan costing 172.28/h or 172.74/h from run to run."""


def restarts(n_models: int) -> int:
    """Greedy starts by fleet size: one start takes 0.02 s at 50 models and 2-4 s at 2000."""
    return 16 if n_models <= 250 else 8 if n_models <= 1000 else 5


def multi_start(problem: Problem, reps: list[Rep], reserved: dict[str, int], t0: float,
                deadline: float, extra: list[Gpu] | None = None) -> list[Gpu]:
    """The cheapest of several greedy packings (``greedy.orderings``), each consolidated.

    On large fleets this finds more than LNS does in the same time: LNS windows see a few GPUs,
    while a different insertion order regroups the whole fleet by duty cycle. The number of starts
    is fixed by fleet size, and counted work (``Problem.packing_work``) ends them early on a large
    fleet, so the result depends on the seed, not on the machine; the wall clock only stops them
    on a much slower machine.

    ``extra`` is a feasible packing of the shared models found elsewhere (the greedy baseline's,
    ``greedy_packing``); it is the incumbent the starts must beat, whatever the clock says, so the
    result never costs more than it.
    """
    best, best_cost = None, math.inf
    count = restarts(len(problem.fleet.models))
    # Each order is packed plain and priced (greedy.pack): which variant wins depends on the fleet.
    starts = [(order, priced) for order in orderings(problem, reps, (count + 1) // 2, problem.settings.seed)
              for priced in (False, True)][:count]
    failed: NoRoom | None = None
    work0 = problem.packing_work
    for i, (order, priced) in enumerate(starts):
        # Counted work ends the starts, so that their number does not depend on the machine's load;
        # the wall clock, at twice that, guards against a much slower machine.
        spent = problem.packing_work - work0
        # Failed starts stop so too: on pools just big enough, 96 failing starts of a 228-model fleet
        # took 71 s of a 31-s plan, and the pattern LP's packing (``_from_columns_alone``) follows.
        if i > 0 and (spent > STARTS_SHARE * (deadline - t0)
                      or problem.past(t0 + 2 * STARTS_SHARE * (deadline - t0), STARTS)):
            break
        try:
            gpus = to_gpus(problem, pack(problem, reps, reserved=reserved, order=order, priced=priced))
            # pack counts MIG slots by their share of a GPU; dealing them onto GPUs (valid layouts,
            # one replica of a model per GPU) may take more GPUs than the pool has left.
            over = _over_pools(problem, gpus, reserved)
            if over:
                raise NoRoom(next(r for g in gpus if g.pool.name == over[0] for s in g.slots for r in s.reps))
        except NoRoom as e:
            # Small pools: a start that opens slots more readily (priced) may run out of GPUs
            # where another fits; the fleet does not fit only when every start fails.
            failed = failed or e
            continue
        gpus = consolidate(problem, gpus, deadline)
        cost = cost_of(problem, gpu_counts(problem, gpus))
        if cost < best_cost - 1e-9:
            best, best_cost = gpus, cost
    if extra is not None:  # whatever the clock says: the result must not cost more than it
        gpus = consolidate(problem, copy_gpus(extra), max(deadline, time.monotonic() + 1.0))
        if cost_of(problem, gpu_counts(problem, gpus)) < best_cost - 1e-9:
            best = gpus
    if best is None:
        assert failed is not None
        raise failed
    return best


def _start_packing(problem: Problem, counts: dict[str, int], reserved: dict[str, int], t0: float,
                   deadline: float, start: list[Gpu] | None) -> tuple[list[Gpu], dict[str, int]]:
    """The greedy starts (``multi_start``) at the chosen replica counts; where none fits the pools,
    at each model's fewest replicas, then its most. The cheapest-looking counts can take more
    slots than small pools have (a family fleet at headroom 0: ft-0001 at 5 replicas of 136 rps
    left no room, where 2 of 340 fit whole A100s): the fleet does not fit only when every set of
    counts fails, or the starts' time (``deadline``) is up. Raises the first NoRoom."""
    first: NoRoom | None = None
    work0 = problem.packing_work
    for c, outside in _count_tries(problem, counts, reserved):
        # Counted work, so that a seed gives one plan on any load; the clock guards a slow machine.
        # Each set of counts runs one start at least; past twice the starts' share, no more sets.
        if first is not None and (problem.packing_work - work0 > 2 * STARTS_SHARE * (deadline - t0)
                                  or problem.past(deadline, STARTS)):
            break  # the starts' time is up: the pattern LP's packing is tried next (_first_packing)
        try:
            gpus = multi_start(problem, reps_for(problem, c), reserved, t0, deadline, extra=start)
        except NoRoom as e:
            first = first or e
            continue
        if outside:
            _offer(problem, c)
        return gpus, c
    assert first is not None
    raise first


def _offer(problem: Problem, counts: dict[str, int]) -> None:
    """Counts a first packing took from outside those on offer: the search may keep them."""
    for name, n in counts.items():
        problem.start_counts.setdefault(name, set()).add(n)


def _over_pools(problem: Problem, gpus: list[Gpu], reserved: dict[str, int]) -> list[str]:
    """Pools whose GPUs, beside the multi-GPU replicas' (``reserved``), exceed their size."""
    return [p for p, n in gpu_counts(problem, gpus).items() if n > problem.fleet.pool(p).max_gpus - reserved.get(p, 0)]


def _count_tries(problem: Problem, counts: dict[str, int], reserved: dict[str, int]
                 ) -> Iterator[tuple[dict[str, int], bool]]:
    """The replica counts a first packing tries in turn, each once: the chosen ones, each model's
    fewest and most on offer, then the fewest one pool has GPUs for and the roomiest pool's
    (:func:`_count_one_pool_holds`), then the fewest the pools that hold them have room for
    together (:func:`_count_pools_hold`); with whether they come from outside the counts on
    offer. Worked out only as far as the tries go: most fleets pack at the first."""
    def tries() -> Iterator[tuple[dict[str, int], bool]]:
        yield counts, False
        opts = {m.name: [n for n in problem.replica_options(m) if n > 0] for m in problem.shared_models}
        yield {k: (min(opts[k]) if opts.get(k) else n) for k, n in counts.items()}, False
        yield {k: (max(opts[k]) if opts.get(k) else n) for k, n in counts.items()}, False
        for pick in (partial(_count_one_pool_holds, roomiest=False), partial(_count_one_pool_holds, roomiest=True),
                     _count_pools_hold):
            other = {m.name: n for m in problem.shared_models if (n := pick(problem, m, reserved))}
            yield {k: other.get(k, n) for k, n in counts.items()}, True

    seen: list[dict[str, int]] = []
    for c, outside in tries():
        if c not in seen:
            seen.append(c)
            yield c, outside


def _count_pools_hold(problem: Problem, m, reserved: dict[str, int]) -> int | None:
    """The fewest replicas of ``m`` (among ``count_options``) for which the pools whose slots
    hold one such replica alone have, together, a GPU for each; None where no count has. A
    model's replicas may span pools: 29 A30s on demand and 1 spot A30 hold 30 replicas that no
    one pool has room for, and with a 1-GPU H200 pool setting the counts on offer (7), that fleet
    was refused though a plan on exactly those GPUs exists (found by fuzzing)."""
    peak = m.traffic.peak_rps
    room = {p.name: max(0, p.max_gpus - reserved.get(p.name, 0)) for p in problem.fleet.pools}
    for n in sorted(count_options(problem, m)):
        if n <= 0 or (m.max_replicas is not None and n > m.max_replicas):
            continue
        rate = peak / n
        pools = {st.pool.name for st in problem.all_types()
                 if (cap := problem.capacity(m, st)) > 0 and rate <= cap * (1 + 1e-9)}
        if n <= sum(room[p] for p in pools):
            return n
    return None


def _count_one_pool_holds(problem: Problem, m, reserved: dict[str, int], roomiest: bool = False) -> int | None:
    """The fewest replicas of ``m`` that hold its peak on one slot type whose pool has a GPU for
    each of them (two replicas never share a GPU); ``roomiest``: on the pool with the most GPUs
    left among those; None where no pool does. The counts the search offers stay near the least
    over all slot types, which a small fast pool can set: a 19,500 rps model needs 5 H200s of a
    2-GPU pool or 79 T4s of a 240-GPU one, and with only counts near 5 on offer the fleet was
    refused as not fitting. Where several models each fit the small pool alone but not together,
    the roomiest pool's counts are the next try."""
    best: tuple[tuple[int, int], int] | None = None  # (key, count)
    for st in problem.all_types():
        n = problem.least_replicas(m, st)
        if n is None:
            continue
        room = st.pool.max_gpus - reserved.get(st.pool.name, 0)
        if n > room or (m.max_replicas is not None and n > m.max_replicas):
            continue
        key = (-room, n) if roomiest else (n, 0)
        if best is None or key < best[0]:
            best = (key, n)
    return None if best is None else best[1]


TARGETS, TARGET_SHARE, TARGET_TRY_S, TARGET_REPS = 4, 0.25, 5.0, 1500
"""With ``--prove``, the cheaper purchases the search tries to pack a small fleet into, the most
share of the proof's seconds they take (:func:`_purchase_targets`; the exact search gets the rest),
CP-SAT's deterministic seconds per try, and the most replicas (over every count offered) a try's
model holds (:func:`_target_counts`)."""
TARGET_MIN_S = 0.05
"""Least deterministic seconds a try inside a purchase is charged: where CP-SAT shows at once that
the purchase cannot hold the fleet, a try counted 0.0003 s and its model took 6 ms to build, and
a fuzzed fleet's ``--prove 30`` ran 14,000 tries in 90 s (``_purchase_targets``)."""
REFINE_SHARE = 0.9
"""Share of the bound's budget that column generation and its resumption (``bound.refined_bound``)
take together, in deterministic seconds."""
FULL_MODEL_S = 1.0
"""Deterministic seconds of the whole-fleet CP-SAT model after the windows, on small fleets (on
top of the search's share; the windows take all of it). The windows used to get half the
search's budget and the whole model the other half; over 48 fleets
of 8-40 models (``bench/plan.py --family 24 --max-models 40``, seeds 3 and 4) the whole model
never found a cheaper packing, while the windows' second half did on two (18.58/h -> 15.79/h,
proven optimal, and 13.29/h -> 13.18/h)."""
INSIDE_SHARE = 0.2
"""Share of the limit the search inside cheaper purchases (``purchases.py``) may take in column
generation, on fleets of up to ``PATTERN_FIRST`` shared models (on 200 models a master over
their columns takes tens of seconds a hundred nodes)."""


def improve(problem: Problem, gpus: list[Gpu], reserved: dict[str, int], budget_s: float,
            progress: Progress | None, *, full: bool, lower: float = 0.0,
            targets_s: float = 0.0, targets_spent: list[float] | None = None,
            inside_s: float = 0.0, until: float = math.inf) -> tuple[list[Gpu], str]:
    """CP-SAT: LNS windows first, then (small fleets) one model of the whole fleet, then (small
    fleets, ``targets_s`` deterministic seconds, ``--prove``) the whole model inside each cheaper
    purchase that the bound ``lower`` (on the whole plan) leaves open (:func:`_purchase_targets`);
    the seconds those take are appended to ``targets_spent``.

    Returns (gpus, status); ``optimal`` means CP-SAT found no cheaper packing in its own model,
    which is not a proof over all plans. Windows find local merges fast (two GPUs half used become
    one MIG-split GPU); the whole model then improves from there. ``budget_s`` is in CP-SAT's
    deterministic seconds, so that a seed gives one plan whatever the machine's load; the wall
    clock only guards (twice the budget) against a much slower machine.
    """
    s = problem.settings
    shared = [g for g in gpus if not g.multi]
    multi = [g for g in gpus if g.multi]
    limit = {p.name: p.max_gpus - reserved.get(p.name, 0) for p in problem.fleet.pools}
    n_reps = sum(len(problem.replica_options(m)) * max(problem.replica_options(m) or [0])
                 for m in problem.shared_models)
    small = full and n_reps <= 160
    total = max(0.0, budget_s)
    spent: list[float] = []
    lower_shared = lower - sum(g.pool.cost_per_gpu_hour * g.width for g in multi)  # the bound, less the multi-GPU replicas
    shared = _lns(problem, shared, limit, total, min(until, time.monotonic() + 2 * total + 1.0), progress,
                  reshuffle=full, spent=spent)
    if inside_s > 0:
        new = inside_purchases(problem, shared, reserved, lower_shared, inside_s, seeds=_groups(shared))
        if new is not shared:
            new = consolidate(problem, new, math.inf)
            if shared_cost(problem, new) < shared_cost(problem, shared) - 1e-9 and _spread_kept(problem, new, shared):
                shared = new
    if not small:
        return shared + multi, "feasible"
    budget = max(FULL_MODEL_S, total - sum(spent))
    res = solve_window(problem, free_models={m.name: problem.replica_options(m) for m in problem.shared_models},
                       fixed_reps=[], gpu_limit=limit, hint=shared, upper_cost=None, time_limit=budget,
                       seed=s.seed)
    if res is None:
        return shared + multi, "feasible"
    new, cost, status = res
    if cost <= sum(g.pool.cost_per_gpu_hour for g in shared) + 1e-9 and _spread_kept(problem, new, shared):
        shared = new
    else:
        status = "feasible"
    if targets_s > 0:
        targeted = _purchase_targets(problem, shared, limit, lower_shared, targets_s, s.seed, targets_spent)
        if targeted is not shared:
            shared, status = targeted, "feasible"
    return shared + multi, status


def _purchase_targets(problem: Problem, shared: list[Gpu], limit: dict[str, int], lower: float,
                      seconds: float, seed: int, spent_out: list[float] | None = None) -> list[Gpu]:
    """A cheaper packing searched inside each cheaper purchase in turn: the whole model, its pools
    cut to the purchase and given no hint. The same model hinted with the packing stays beside it:
    family-300014-multilingual-16 (16 models) keeps 5 A100s and 3 L4s (19.78/h) however long it
    searches, where cut to 5 A100s and 2 L4s it finds 5 A100s and 1 L4 (18.26/h). Purchases tried:
    the maximal ones below the packing's cost that ``lower`` (a bound on the shared GPUs' cost)
    leaves open, dearest first (nearest the packing), at most ``TARGETS``, in turn for
    ``TARGET_TRY_S`` each within ``seconds`` of CP-SAT's deterministic time (appended to
    ``spent_out``), first at the search's replica counts, then at every count
    (:func:`_target_counts`). A packing found is kept where it is cheaper, not under ``lower``, and
    spreads replicas over nodes as well (:func:`_spread_kept`); else the packing given."""
    prices = {p.name: p.cost_per_gpu_hour for p in problem.fleet.pools}
    cost = sum(g.pool.cost_per_gpu_hour for g in shared)
    buys = open_purchases(prices, limit, cost, lower, 100_000)
    buys = sorted(buys, key=lambda b: -purchase_cost(prices, b))[:TARGETS]
    best, spent, attempt = shared, 0.0, 0
    # Round robin, a fresh seed each try: without a hint CP-SAT's first solution depends on its
    # seed (family-300014's 4 A100s: found on seeds 0, 3 and 4 of 0-4 within 5 s, none on 1 and 2).
    while buys and spent + 0.5 < seconds:
        buy = buys[attempt % len(buys)]
        attempt += 1
        if purchase_cost(prices, buy) >= cost - 1e-6:
            buys.remove(buy)  # a cheaper packing found in a dearer purchase already beats this one
            continue
        took: list[float] = []
        # The first round offers the search's own replica counts (a smaller model: family-300014's
        # 18.26/h is found there), later rounds every count (family-800031's 20.04/h).
        counts = (_target_counts(problem, sum(buy.values())) if (attempt - 1) // len(buys) % 2
                  else {m.name: problem.replica_options(m) for m in problem.shared_models})
        res = solve_window(problem, free_models=counts, fixed_reps=[], gpu_limit=buy, hint=None, upper_cost=cost,
                           time_limit=min(TARGET_TRY_S, seconds - spent), seed=seed + attempt, spent=took)
        spent += max(sum(took), TARGET_MIN_S) if took else TARGET_TRY_S
        if spent_out is not None:
            spent_out.append(sum(took))
        if (res is not None and lower - 1e-6 <= res[1] < cost - 1e-6
                and _spread_kept(problem, res[0], shared)):
            best, cost = res[0], res[1]
    return best


def _target_counts(problem: Problem, gpus: int) -> dict[str, list[int]]:
    """Replica counts the search inside a purchase of ``gpus`` GPUs offers each shared model: every
    count from its least to one a GPU (``max_replicas`` kept), or, past ``TARGET_REPS`` replicas
    in all, the pattern LP's (``patterns.count_options``). The search proper offers a few counts
    per model; family-800031-long-tail-10 fits 4 A100-40s and 4 L4s (18.24/h, the bound, against a
    plan of 20.64/h) only at counts it does not offer. A packing costing less than the bound is not
    taken: the bound is over the counts the planner offers."""
    out = {}
    for m in problem.shared_models:
        lo = max(m.min_replicas, 1 if m.traffic.peak_rps > 0 else 0)
        hi = min(gpus, m.max_replicas if m.max_replicas is not None else gpus)
        out[m.name] = list(range(max(lo, 1), hi + 1)) if lo <= hi else []
    if sum(sum(ns) for ns in out.values()) > TARGET_REPS:
        out = {m.name: sorted(count_options(problem, m)) for m in problem.shared_models}
    return {name: ns for name, ns in out.items() if ns}


def _spread_kept(problem: Problem, new: list[Gpu], old: list[Gpu]) -> bool:
    """Whether ``new`` leaves no more ``min_replicas >= 2`` models unspreadable than ``old``:
    every replica on one pool of one node (:func:`_one_node`), where no
    placement of GPUs on nodes can spread them. The planner's one spread rule for every stage that
    replaces a packing (the windows, the whole model, the pattern LP's packings, the exact
    searches), as ``colplan._master(apart=True)`` is the exact master's: the search models spread
    a model's replicas over GPUs, not nodes, and a packing that puts both replicas on the one node
    trades the availability the user asked for for cost (family-400031-long-tail-13: a dive's
    12.65/h put both ft-0000 replicas on its one L4 node; spread, 14.70/h). Replicas on one node of
    a larger pool are a placement matter (``assemble.assign_nodes`` warns that an extra node would
    spread them), not a reason to refuse a packing: with every such warning counted, generated-500
    refused a dive's 136.60/h for 155.81/h. A packing refused is remembered where it is the
    cheapest so far (``Problem.unspread``): the plan says what the spread costs."""
    found = _one_node(problem, new)
    if len(found) <= len(_one_node(problem, old)):
        return True
    _refused(problem, new, found)
    return False


def _one_node(problem: Problem, gpus: list[Gpu]) -> list[str]:
    """Models with ``min_replicas >= 2`` and two replicas or more, every one on a single pool of
    one node (``max_nodes: 1``)."""
    pools: dict[str, set[str]] = defaultdict(set)
    count: Counter = Counter()
    for g in gpus:
        for name in g.models():
            pools[name].add(g.pool.name)
            count[name] += 1
    out = []
    for m in problem.fleet.models:
        if m.min_replicas >= 2 and count[m.name] >= 2 and len(pools[m.name]) == 1:
            pool = problem.fleet.pool(next(iter(pools[m.name])))
            if pool.max_nodes == 1:
                out.append(f"{m.name} on pool {pool.name}")
    return out


def _refused(problem: Problem, gpus: list[Gpu], found: list[str]) -> None:
    """Remember a packing refused for its spread (``found``: :func:`_one_node`) where it is the
    cheapest refused so far."""
    cost = cost_of(problem, gpu_counts(problem, [g for g in gpus if not g.multi]))
    if problem.unspread is None or cost < problem.unspread[0] - 1e-9:
        problem.unspread = (cost, found)


def _spread_cost(problem: Problem, gpus: list[Gpu]) -> list[str]:
    """A warning where a stage found a cheaper packing than the plan's and refused it for its
    spread (``Problem.unspread``): what the spread costs, and the pools whose one node it would
    have put every replica of a model on; where none was found, the models and pools whose
    spread-rule rows bind in the pattern LP (``Problem.apart_binding``)."""
    shared = cost_of(problem, gpu_counts(problem, [g for g in gpus if not g.multi]))
    if problem.unspread is None or problem.unspread[0] >= shared - 1e-6:
        if problem.apart_binding and not _one_node(problem, gpus):
            # No such packing was made (the columns keep the rule too), but the LP says it binds.
            return [f"spread: the rule that keeps a replica of every min_replicas >= 2 model off each pool of one "
                    f"node binds for {', '.join(problem.apart_binding)} in the bound's LP; with max_nodes 2 or more "
                    "there, a cheaper plan may exist"]
        return []
    cheaper, found = problem.unspread
    return [f"spread: a plan {shared - cheaper:.2f}/h cheaper was found and not taken: it puts every replica of "
            f"{', '.join(found)} (min_replicas >= 2) on that pool's one node; with max_nodes 2 or more there, "
            "the planner would take it"]


def _lns(problem: Problem, shared: list[Gpu], limit: dict[str, int], budget: float, guard: float,
         progress: Progress | None, reshuffle: bool = True, spent: list[float] | None = None) -> list[Gpu]:
    """Large-neighbourhood search: re-pack windows of a few GPUs, keep what is cheaper.

    Two kinds of window, alternating. *Emptying* windows: the emptiest GPU and the next emptiest
    of its pool, re-packed on that pool alone. An equally cheap packing is kept when it moves
    load onto fewer GPUs (a larger sum of squared fills), so a GPU empties over several windows
    where no single window can drop one, as on memory-bound fleets at 94 % fill. *Pair* windows
    across pools: two half-used GPUs may become one MIG-split GPU. A re-plan (``reshuffle`` off)
    keeps only cheaper packings: moving replicas at equal cost is what it must avoid. No window is
    kept that leaves more models unspreadable over nodes (:func:`_spread_kept`). ``budget``:
    counted seconds for all windows (``CPSAT_CLOCK``, ``WINDOW_S``); ``guard``: the wall-clock
    time past which no window starts; ``spent`` gets each window's deterministic seconds.
    """
    s = problem.settings
    rng = random.Random(s.seed)
    it = 0
    # A fixed number of windows, each with a deterministic-time budget, keeps the result a
    # function of the seed; the deadline only guards against a much slower machine.
    window_budget = 0.5
    left = budget
    spent = [] if spent is None else spent  # deterministic seconds used by the windows so far
    tried: set[frozenset[int]] = set()
    fills: dict[int, tuple[Gpu, float]] = {}  # per GPU (id, the GPU kept so the id stays its own)
    warned: int | None = None  # models ``shared`` leaves unspreadable (:func:`_one_node`), once needed
    relocations = 0
    while CPSAT_CLOCK * sum(spent) + WINDOW_S * it < left and not problem.past(guard, WINDOWS) and len(shared) > 1:
        it += 1
        window = _relocating_window(problem, shared, limit, tried, fills) if relocations < RELOCATE_WINDOWS else None
        if window is not None:
            relocations, emptying = relocations + 1, False
        else:
            # Emptying and pair windows alternate while both kinds are left: MIG pools gain from pairs.
            window, emptying = _choose_window(problem, shared, tried, rng, emptying_first=it % 2 == 1, fills=fills)
        inside = {id(g) for g in window}
        tried.add(frozenset(inside))
        reps = [r for g in window for sl in g.slots for r in sl.reps]
        names = {r.model.name for r in reps}
        outside_names = {r.model.name for g in shared if id(g) not in inside for sl in g.slots for r in sl.reps}
        free = {n: problem.replica_options(problem.fleet.model(n)) for n in names - outside_names}
        fixed = [r for r in reps if r.model.name in outside_names]
        # Models kept outside need distinct GPUs too; window GPUs are new GPUs, so that holds.
        win_limit = {p: limit[p] - sum(1 for g in shared if id(g) not in inside and g.pool.name == p) for p in limit}
        if emptying:
            # Its own pool only: another pool's MIG profiles would multiply the model's size.
            win_limit = {p: (v if p == window[0].pool.name else 0) for p, v in win_limit.items()}
        upper = sum(g.pool.cost_per_gpu_hour for g in window)
        res = solve_window(problem, free_models=free, fixed_reps=fixed, gpu_limit=win_limit, hint=window,
                           upper_cost=upper, time_limit=window_budget, seed=s.seed + it, spent=spent,
                           concentrate=emptying)
        if res is not None and (res[1] < upper - 1e-9 or (
                reshuffle and res[1] < upper + 1e-9 and _spread(problem, res[0]) > _spread(problem, window) + 1e-6)):
            new = res[0]
            spare_slots(problem, new)
            candidate = [g for g in shared if id(g) not in inside] + new
            if warned is None:
                warned = len(_one_node(problem, shared))
            found = _one_node(problem, candidate)
            if len(found) > warned:  # cheaper by putting replicas the user wants apart on one node
                _refused(problem, candidate, found)
                continue
            shared, warned = candidate, len(found)
            if progress:
                progress(f"LNS {it}: {sum(g.pool.cost_per_gpu_hour for g in shared):.2f}/h", 0)
    return shared


CPSAT_CLOCK, WINDOW_S = 1.4, 0.025
"""What an LNS window counts against the search's share: seconds per deterministic second of
CP-SAT, and seconds per window besides (building its model, reading its solution back). Both are
fixed numbers, so the windows a seed gets do not depend on the load. Measured on this project's
2-core machine: generated-500's 28 windows took 5.96 s in CP-SAT for 4.27 deterministic s (1.40)
and 0.62 s around it (22 ms a window); family-600025-long-tail-326's 128 took 3.34 s in all for
1.31 deterministic s. Counted as 1.0 and 10 ms, the windows ran 2.1 s past a 4.5-s share on
generated-500; counted so, 48 family fleets (``--family 12`` at ``--max-models 500``, seeds 0, 6
and 9, and at 40, seed 8) and generated-500 keep every plan and bound, and long-tail takes
15.5 -> 12.7 s."""
EMPTYING_PARTNERS = 3
"""GPUs re-packed with the emptiest one. Larger windows rarely beat their hint within the 0.5 s
budget (generated-500: 3 partners 101.60/h, 7 partners no gain over 103.20/h)."""


RELOCATE_WINDOWS = 4
"""Windows of one GPU alone, re-packed onto any pool's free GPUs, that the windows start with
(:func:`_relocating_window`)."""


def _relocating_window(problem: Problem, gpus: list[Gpu], limit: dict[str, int], tried: set[frozenset[int]],
                       fills: dict[int, tuple[Gpu, float]]) -> list[Gpu] | None:
    """One GPU alone, dearest for what it holds first (its price over its fill), of a pool where
    a cheaper pool has GPUs free: its replicas may move there. generated-500's plan kept an
    A100-40 (3.67/h) whose 13 replicas fit 3 of the L4 pool's free GPUs (2.40/h), which no
    emptying window (its own pool) or pair window (two half-used GPUs) tries."""
    used = gpu_counts(problem, gpus)
    room = {p.name: p.cost_per_gpu_hour for p in problem.fleet.pools if limit.get(p.name, 0) > used[p.name]}
    candidates = [g for g in gpus if any(price < g.pool.cost_per_gpu_hour for price in room.values())
                  and frozenset((id(g),)) not in tried]
    if not candidates:
        return None
    return [max(candidates, key=lambda g: g.pool.cost_per_gpu_hour / max(_cached_fill(problem, g, fills), 0.05))]


def _choose_window(problem: Problem, gpus: list[Gpu], tried: set[frozenset[int]], rng: random.Random,
                   emptying_first: bool, fills: dict[int, tuple[Gpu, float]] | None = None) -> tuple[list[Gpu], bool]:
    """The next window and whether it is an emptying one; seeded random windows when both kinds
    are used up. ``fills`` keeps each GPU's fill across calls: a window replaces its GPUs with new
    ones and leaves the others as they were (on 324 GPUs, working every fill out afresh for each of
    180 windows was a quarter of the search's time outside CP-SAT)."""
    fills = {} if fills is None else fills
    fill = {id(g): _cached_fill(problem, g, fills) for g in gpus}
    order = sorted(gpus, key=lambda g: (fill[id(g)], g.pool.name))
    kinds = [(_emptying_window(problem, order, tried), True), (_next_pair(order, fill, tried), False)]
    for window, emptying in (kinds if emptying_first else kinds[::-1]):
        if window is not None:
            return window, emptying
    return _pick_window(problem, gpus, rng), False


def _spread(problem: Problem, gpus: list[Gpu]) -> float:
    """Sum of squared fills: higher when load sits on fewer GPUs, so the emptiest one can go."""
    return sum(_fill_of(problem, g) ** 2 for g in gpus)


def _emptying_window(problem: Problem, order: list[Gpu], tried: set[frozenset[int]]) -> list[Gpu] | None:
    """The emptiest GPU of a whole-GPU pool not yet tried with these partners (of the 30 emptiest)
    and the next emptiest GPUs of its pool; ``order`` is the GPUs, emptiest first."""
    for t in order[:30]:
        if t.pool.mig and problem.settings.use_mig:
            # MIG pools: a window with every layout's instances grows large and slow, and pair
            # windows (two half-used GPUs into one MIG-split GPU) do better there: with emptying
            # windows taking turns, multilingual on its MIG pool ended at 20.50/h, not 16.40/h.
            continue
        partners = [g for g in order if g is not t and g.pool.name == t.pool.name][:EMPTYING_PARTNERS]
        if not partners:
            continue
        w = [t] + partners
        if frozenset(id(g) for g in w) not in tried:
            return w
    return None


def _next_pair(order: list[Gpu], fill: dict[int, float], tried: set[frozenset[int]]) -> list[Gpu] | None:
    """The emptiest pair of GPUs not tried yet (among the 40 emptiest): the likeliest merge.
    ``order`` is the GPUs emptiest first, ``fill`` their fills by ``id``."""
    few = order[:40]
    pairs = sorted(((a, b) for i, a in enumerate(few) for b in few[i + 1:]),
                   key=lambda ab: fill[id(ab[0])] + fill[id(ab[1])])
    for a, b in pairs:
        if frozenset((id(a), id(b))) not in tried:
            return [a, b]
    return None


def _pick_window(problem: Problem, gpus: list[Gpu], rng: random.Random) -> list[Gpu]:
    """A few GPUs to re-pack: a random seed GPU plus the emptiest others, across pools."""
    k = min(len(gpus), rng.choice((3, 4, 5, 6)))
    seed = rng.choice(gpus)
    rest = sorted((g for g in gpus if g is not seed), key=lambda g: (_fill_of(problem, g) + rng.random() * 0.3))
    return [seed] + rest[: k - 1]


def _from_current(problem: Problem, current: Plan, counts: dict[str, int],
                  reserved: dict[str, int]) -> tuple[list[Gpu], list[Rep]]:
    """Rebuild the current plan's GPUs and keep each replica where it is while it still fits."""
    fleet = problem.fleet
    gpus: dict[tuple[str, str, int], Gpu] = {}
    for lay in current.layouts:
        if lay.pool not in {p.name for p in fleet.pools}:
            continue
        pool = fleet.pool(lay.pool)
        layout = layout_named(pool.gpu, lay.layout) if lay.layout != WHOLE else None
        if layout is not None and not set(layout.profiles) <= {t.profile for t in problem.types[pool.name]}:
            # MIG no longer allowed there (--no-mig, or ``sharing`` without ``mig``): the GPU is
            # whole now, and the replicas in its instances are packed again.
            layout = None
        node = node_parts(lay.node)[1]
        if not _in_pool(pool, node, lay.gpu, 1):
            # The pool is smaller now (max_nodes or gpus_per_node cut): a GPU past its end is gone,
            # and its replicas are packed again. Kept, a re-plan onto a T4 pool cut from 27 nodes to
            # 26 kept a GPU on the 27th, and ``packer check`` rejected the plan (bench/tight.py's
            # family-300021-mixed-27).
            continue
        gpus[(lay.pool, lay.node, lay.gpu)] = Gpu(pool, [], layout, node=node, index=lay.gpu)
    placed: set[tuple[str, int]] = set()
    for p in current.placements:
        if len(p.gpus) > 1 or (p.pool, p.node, p.gpu) not in gpus:
            continue
        g = gpus[(p.pool, p.node, p.gpu)]
        if p.slot != WHOLE and (g.layout is None or p.slot not in g.layout.profiles):
            continue
        st = next((t for t in problem.types[p.pool] if t.profile == p.slot), None)
        if st is None:
            continue
        slot = Slot(st, [], start=p.mig_start)
        g.slots.append(slot)
        for mem in sorted(p.models, key=lambda x: x.name):
            if mem.name not in counts or mem.replica >= counts[mem.name]:
                continue
            rep = Rep(fleet.model(mem.name), mem.replica, counts[mem.name])
            if rep.model.gpus_per_replica == 1 and can_add(problem, slot, rep):
                slot.reps.append(rep)
                placed.add(rep.key)
    kept = [g for g in gpus.values() if g.layout is not None or any(s.reps for s in g.slots)]
    # The multi-GPU replicas are placed first (``reserved``): where they and the kept GPUs would
    # overfill a pool (a spot re-plan: 19 GPUs in 16), the emptiest kept GPUs give way and their
    # replicas are packed again.
    for pool in fleet.pools:
        mine = sorted((g for g in kept if g.pool.name == pool.name), key=lambda g: _fill_of(problem, g))
        over = len(mine) - max(0, pool.max_gpus - reserved.get(pool.name, 0))
        for g in mine[:max(0, over)]:
            kept.remove(g)
            placed -= {r.key for sl in g.slots for r in sl.reps}
    for g in kept:
        g.pinned = True
    spare_slots(problem, [g for g in kept if g.layout is not None])
    todo = [r for r in reps_for(problem, counts) if r.key not in placed]
    return kept, todo


def _in_pool(pool: Pool, node: int | None, gpu: int, width: int) -> bool:
    """Whether GPUs ``gpu .. gpu + width - 1`` of node ``node`` of the current plan are still in
    ``pool``, whose ``max_nodes`` or ``gpus_per_node`` a re-plan's fleet may have cut."""
    return node is not None and node < pool.max_nodes and gpu + width <= pool.gpus_per_node


def _keep_multi(multi: list[Gpu], current: Plan) -> None:
    """A re-plan's multi-GPU replicas kept on the GPUs they run on: each new replica in a pool
    takes the place of one the current plan runs there (pinned: ``assign_nodes`` lays the rest out
    around it), under its current replica number where that is free. Placed afresh, a re-plan of
    family-3400110-llm-12 at 12 % more traffic moved all 81 replicas of its 70B model (60 when a
    model took one pool), each a reload of 140 GB, to add 9. A model beside a spot pool keeps its
    numbering (its on-demand floor is its first replicas), so only a replica whose number stays
    in its pool's part keeps its place."""
    for name in {g.multi[0].name for g in multi if g.multi}:
        mine = [g for g in multi if g.multi and g.multi[0].name == name]
        n = len(mine)
        width = mine[0].width
        held: dict[str, list] = {}
        for p in current.placements:
            if len(p.gpus) == width and p.models[0].name == name:
                held.setdefault(p.pool, []).append(p)
        numbered = any(g.pool.spot for g in mine)
        taken: set[int] = set()
        for pool_name, places in held.items():
            places.sort(key=lambda p: p.models[0].replica)
            part = [g for g in mine if g.pool.name == pool_name]
            if numbered:
                by_number = {p.models[0].replica: p for p in places}
                pairs = [(g, by_number[g.multi[1]]) for g in part if g.multi[1] in by_number]
            else:
                pairs = list(zip(part, [p for p in places if p.models[0].replica < n]))
            for g, p in pairs:
                node = node_parts(p.node)[1]
                if not _in_pool(g.pool, node, p.gpu, width):
                    continue  # the pool is smaller now: its replica is placed afresh
                g.node, g.index, g.pinned = node, p.gpu, True
                if not numbered:
                    g.multi = (g.multi[0], p.models[0].replica)
                    taken.add(p.models[0].replica)
        if not numbered:
            free = iter(i for i in range(n) if i not in taken)
            for g in mine:
                if not g.pinned:
                    g.multi = (g.multi[0], next(free))


def _moves(current: Plan, new: Plan) -> tuple[Move, ...]:
    def where(plan: Plan) -> dict[tuple[str, int], str]:
        return {(m.name, m.replica): p.id for p in plan.placements for m in p.models}

    a, b = where(current), where(new)
    moves = []
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            moves.append(Move(k[0], k[1], a.get(k), b.get(k)))
    return tuple(moves)


DEDICATED_S = 2.0
"""Deterministic seconds for choosing the dedicated baseline's pools when they run short."""


def dedicated_baseline(problem: Problem, chosen: tuple | None = None) -> Baseline:
    """Each replica on a whole GPU of its own, no sharing: every model in one pool, the cheapest
    total that the pools' sizes hold (:func:`_dedicated_choice`, or ``chosen``, its answer)."""
    choice, note = chosen or _dedicated_choice(problem)
    if choice is None:
        return Baseline(math.inf, {}, note)
    return Baseline(round_cost(sum(c for c, _, _ in choice.values())), _per_pool(choice), note)


def _per_pool(choice: dict[str, tuple[float, str, int]]) -> dict[str, int]:
    """GPUs per pool of a dedicated choice."""
    gpus: dict[str, int] = defaultdict(int)
    for _, pool, k in choice.values():
        gpus[pool] += k
    return dict(gpus)


def _dedicated_choice(problem: Problem) -> tuple[dict[str, tuple[float, str, int]] | None, str]:
    """Per model, the dedicated baseline's (cost, pool, GPUs), and what it is; None and why where
    it cannot be bought.

    Without the pools' sizes it could not be bought: on family-200008-mixed-15 it put 37 GPUs'
    worth of replicas on the cheapest pool, at 72.89/h, under the plan's proven lower bound of
    75.92/h. Each model takes its cheapest pool; where that overfills a pool or its multi-GPU
    replicas do not fit the nodes, CP-SAT chooses the pools (``multi.choose_pools``: a generalised
    assignment with the nodes' bin packing, within ``DEDICATED_S``; its best, said when not proven
    least).
    A model with an on-demand floor takes on-demand pools only, and no pool where it would need more
    than ``max_replicas``.
    """
    options: dict[str, list[tuple[float, str, int]]] = {}
    for m in problem.fleet.models:
        opts = []
        for p in problem.fleet.pools:
            if p.spot and m.on_demand_floor > 0:  # a model with a floor: on-demand GPUs only
                continue
            n = multi_replicas(problem, m, p)  # whole GPUs alone, on one node (None: not there)
            if n is None or m.max_replicas is not None and n > m.max_replicas:
                continue
            if m.gpus_per_replica > 1 and n > wide_room(p, m.gpus_per_replica):
                continue  # more replicas than the pool's nodes hold
            opts.append((n * m.gpus_per_replica * p.cost_per_gpu_hour, p.name, n * m.gpus_per_replica))
        if opts:
            options[m.name] = sorted(opts)
        elif m.traffic.peak_rps > 0 or m.min_replicas > 0:  # left out, the baseline would look cheap
            return None, f"one whole GPU per replica, no sharing: {m.name} has no pool it can run alone in"

    room = {p.name: p.max_gpus for p in problem.fleet.pools}
    choice = {name: opts[0] for name, opts in options.items()}
    note = "one whole GPU per replica, no sharing"

    def on_nodes(choice: dict[str, tuple[float, str, int]]) -> bool:
        # GPUs are counted per pool; multi-GPU replicas of different sizes must also fit its nodes
        # (3+3, 4, 4, 2+3 GPUs on three 5-GPU nodes: 15 GPUs, but no node takes a 4 and anything).
        return fits_nodes(problem, [g for g in dedicated_packing(problem, (choice, note)) if g.multi])

    if any(n > room[p] for p, n in _per_pool(choice).items()) or not on_nodes(choice):
        need, have = sum(min(k for _, _, k in opts) for opts in options.values()), sum(room.values())
        width = {name: problem.fleet.model(name).gpus_per_replica for name in options}
        chosen, status = (choose_pools(problem, {name: [(c, [(pool, k // width[name], width[name])])
                                                        for c, pool, k in opts]
                                                 for name, opts in options.items()}, DEDICATED_S)
                          if need <= have else (None, "short"))
        if chosen is None:
            why = {"short": f"needs at least {need} GPUs, the pools hold {have}",
                   "infeasible": "no choice of one pool per model holds it",
                   "unknown": f"no choice of pools holding it was found in {DEDICATED_S:.0f} s"}[status]
            return None, f"{note}: does not fit the pools ({why})"
        choice = {name: options[name][i] for name, i in chosen.items()}
        note += ", pools chosen to fit their sizes" + ("" if status == "optimal" else " (the best found, not proven least)")
        if not on_nodes(choice):
            return None, f"{note}: its multi-GPU replicas do not fit the pools' nodes"
    return choice, note


def dedicated_packing(problem: Problem, chosen: tuple | None = None) -> list[Gpu] | None:
    """The dedicated baseline as a packing: each replica alone on a whole GPU of its model's pool
    (a multi-GPU replica on ``gpus_per_replica`` of them), at ``peak / n`` each, which its count
    was chosen to hold. None where the baseline cannot be bought. ``chosen``: as for
    :func:`dedicated_baseline`."""
    choice, _ = chosen or _dedicated_choice(problem)
    if choice is None:
        return None
    gpus: list[Gpu] = []
    for name, (_, pool_name, k) in sorted(choice.items()):
        m, pool = problem.fleet.model(name), problem.fleet.pool(pool_name)
        if m.gpus_per_replica > 1:
            gpus += replica_gpus(m, [(pool, k // m.gpus_per_replica)])
        else:
            whole = next(st for st in problem.types[pool_name] if st.profile == WHOLE)
            gpus += [Gpu(pool, [Slot(whole, [Rep(m, i, k)])]) for i in range(k)]
    return gpus


def _no_dearer_than_dedicated(problem: Problem, gpus: list[Gpu], seconds: float,
                              chosen: tuple) -> list[Gpu] | None:
    """The dedicated baseline's packing, consolidated, where it costs less than ``gpus`` (the
    search's packing); else None. The search starts from the greedy packing and the pattern LP's,
    and its multi-GPU replicas are placed before it, so it can end dearer than one whole GPU per
    replica: over 130 family fleets five did, family-800037-llm-36 by 4 % (239.62/h with three
    on-demand H100s, where the baseline's 230.20/h takes A100s). A plan is never dearer than a
    packing the planner printed under it. ``seconds``: the consolidation's wall-clock limit;
    ``chosen``: the baseline's choice of pools (:func:`_dedicated_choice`)."""
    alt = dedicated_packing(problem, chosen)
    if alt is None or cost_of(problem, gpu_counts(problem, alt)) >= cost_of(problem, gpu_counts(problem, gpus)) - 1e-9:
        return None
    shared = consolidate(problem, [g for g in alt if not g.multi], time.monotonic() + seconds)
    alt = shared + [g for g in alt if g.multi]
    # The baseline counts GPUs, not nodes: multi-GPU replicas may not fit the pools' nodes.
    return alt if fits_nodes(problem, alt) else None


GREEDY_NOTE = "best-fit-decreasing squishy packing, whole GPUs, time-slicing only"


def greedy_packing(fleet: Fleet, settings: PlanSettings) -> tuple[list[Gpu], list[Gpu]] | None:
    """The greedy baseline's packing: (shared GPUs, multi-GPU replicas), or None where it does not fit.

    Nexus-style squishy best-fit-decreasing on whole GPUs with time-slicing, no MIG, no solver.
    It obeys the plan's rules, since it is both the printed baseline and a start of the plan's
    search: the plan's headroom, the pools' sizes (multi-GPU replicas placed as the plan places
    them), one replica of a model per GPU, the replica counts the plan may choose, and the same
    node assignment (``assign_nodes``), which it must pass. Its slot types are the plan's whole-GPU
    types, so the plan can take the packing as it is.
    """
    problem = Problem(fleet, replace(settings, use_mig=False))
    try:
        multi, _, _ = plan_multi(problem)
    except UserError:
        return None
    reserved = gpu_counts(problem, multi)
    slots = None
    for c, _ in _count_tries(problem, choose_counts(problem), reserved):  # the plan's fallbacks too
        try:
            slots = pack(problem, reps_for(problem, c), reserved=reserved)
            break
        except NoRoom:
            continue
    if slots is None:
        return None
    shared = to_gpus(problem, slots)
    if not fits_nodes(problem, shared + multi):  # its GPUs do not fit the pool's nodes: no baseline, not no plan
        return None
    return shared, multi


def greedy_baseline(fleet: Fleet, settings: PlanSettings,
                    packing: tuple[list[Gpu], list[Gpu]] | None | bool = False) -> Baseline:
    """The greedy packing's cost (``greedy_packing``; pass it as ``packing`` when already made)."""
    if packing is False:
        packing = greedy_packing(fleet, settings)
    if not packing:
        return Baseline(math.inf, {}, "ran out of room in the pools (best fit, one replica at a time, whole GPUs without MIG)")
    shared, multi = packing
    problem = Problem(fleet, replace(settings, use_mig=False))
    counts = gpu_counts(problem, shared + multi)
    return Baseline(round_cost(cost_of(problem, counts)), {k: v for k, v in counts.items() if v}, GREEDY_NOTE)


PROVE_FIRST_PURCHASES = 3
"""The greedy plan is put to the exact search by default only when at most this many GPU
purchases between the bound and its cost are left to rule out (multilingual: 3); more take longer
than a default plan should (generated-50: 10, not settled in 3 minutes)."""
PROVE_FIRST_S = 6.0
"""Deterministic seconds for that search (at most the plan's time limit); multilingual's hardest
purchase needs about 4."""


def _shared_lower(problem: Problem, lb: float, multi_cost: float) -> float:
    """A bound on what the shared models' GPUs cost in any plan, from ``lb`` (on the whole plan)
    and ``multi_cost`` (the multi-GPU models' floor): where the exact search starts. ``lb -
    multi_cost`` bounds them only where the multi-GPU models cost their floor; where they cost
    more, the shared GPUs can cost less, and a fuzzed fleet (2-GPU models split over two H200
    pools) was "bounded" at 444.19/h beside a plan of 441.21/h whose shared GPUs cost 32.03/h,
    under the 48.67/h searched from. With multi-GPU models, the shared models' closed-form bound
    where it is lower."""
    if not problem.multi_models:
        return lb - multi_cost
    return min(lb - multi_cost, closed_form(problem)[0])


def _prove(problem: Problem, cost: float, multi_cost: float, lb: float, method: str,
           seconds: float, progress: Progress | None, t0: float, *, first: bool = False) -> tuple[float, str]:
    """Raise the bound by the exact search for a cheaper plan (``prove.py``), where it can run.

    ``multi_cost`` is a lower bound on the multi-GPU models' cost (``multi_floor``), and the pools
    are searched whole: where those models sit is not taken from this plan. ``first`` is the
    default short search on the greedy plan: only where few purchases are left, it stops at the
    first purchase the fleet fits on, and unless it raises the bound it leaves the bound and its
    description as they were, since the search for a cheaper plan follows.
    """

    if lb >= cost - 1e-6:
        return lb, method
    if progress:
        progress("proving", time.monotonic() - t0)
    limits = ({"max_purchases": PROVE_FIRST_PURCHASES, "stop_on_fit": True, "wall_s": 1.5 * seconds + 1.0}
              if first else {})
    shared_lb = _shared_lower(problem, lb, multi_cost)
    proof = prove(problem, cost - multi_cost, shared_lb, seconds, **limits)
    if first and (proof is None or not proof.optimal and proof.bound + multi_cost <= lb + 1e-6):
        return lb, method  # a cheaper plan may exist: the search looks for it
    if proof is None:
        return lb, method + f"; exact search skipped: {why_not(problem, cost - multi_cost, shared_lb)}"
    ruled = len(proof.ruled_out)
    if proof.optimal:
        return proof.bound + multi_cost, (f"exact search: no cheaper plan exists ({ruled} cheaper GPU "
                                          f"purchase(s) ruled out by CP-SAT in {proof.seconds:.0f} s)")
    if proof.bound + multi_cost > lb + 1e-6:
        return proof.bound + multi_cost, (f"exact search: {ruled} cheaper purchase(s) ruled out, "
                                          f"{len(proof.open)} open after {proof.seconds:.0f} s")
    extra = "; ".join(proof.notes) or f"{len(proof.open)} purchase(s) not settled in {proof.seconds:.0f} s"
    return lb, method + f"; exact search: {extra}"


def _carried_bound(current: Plan, fleet: Fleet, settings: PlanSettings) -> tuple[float, str] | None:
    """The current plan's lower bound, when it was proven for this very problem; else None.

    A bound depends only on the fleet and the settings that shape the slots and replica counts,
    never on the plan, so re-planning an unchanged fleet keeps the proof the current plan carries.
    With a current plan the default exact search on the greedy plan does not run, so without this
    ``plan FLEET --current PLAN`` on the same fleet reported the kept, proven-optimal plan as
    ``feasible`` with the relaxation's gap (multilingual: 8.2 %).
    The plan file is trusted as the fleet file is: it is the user's own output of ``packer plan``.
    """

    same = (fleet_to_dict(current.fleet) == fleet_to_dict(fleet)
            and (current.settings.headroom, current.settings.use_mig, current.settings.max_replica_options)
            == (settings.headroom, settings.use_mig, settings.max_replica_options))
    if not same or not current.bound_method or current.lower_bound_cost_per_hour <= 0:
        return None
    return (current.lower_bound_cost_per_hour,
            f"{current.bound_method}; carried from the current plan (same fleet and settings)")


MASTER_SHARE = 0.25
"""Share of the plan's time limit the integer master over the pattern LP's columns may take."""


def _from_patterns(problem: Problem, pat, gpus: list[Gpu] | None, reserved: dict[str, int],
                   seconds: float, until: float = math.inf) -> list[Gpu] | None:
    """A packing from the pattern LP's columns (``colplan``): the sequential fill by the duals
    (past ``PATTERN_FIRST`` shared models), the dives (``DIVE_SHARES``), then the integer master
    below their cost with the time left of its share; consolidated, where it is cheaper than
    ``gpus`` (the shared GPUs so far); else ``gpus``. With no ``gpus`` (no greedy start fit the
    pools) every step runs, for any packing that fits, until the wall clock passes ``until``,
    and None is returned where none does; with ``gpus``, ``until`` is the plan's wall-clock cap
    (``WALL_CAP``), which no step runs past (a step cut there gives nothing)."""

    now = math.inf if gpus is None else cost_of(problem, gpu_counts(problem, gpus))
    best, best_cost = gpus, now
    # The sequential fill only past PATTERN_FIRST models: below, the exact master and the whole
    # model improve on whatever start they get, and a different start moved them to worse and
    # better plans alike (family-300026-multilingual-12: 15.79/h, proven, from the dive's start;
    # 19.11/h from the fill's cheaper one), where past it the columns' packing is what the plan
    # is (family-700023-mixed-299: 136.20 -> 133.93/h; 700024 and 700028 too, none dearer).
    anything = gpus is None
    small = len(problem.shared_models) <= PATTERN_FIRST
    if anything:
        # For any packing at all, every step, the quick ones first: the fill's first pass may take
        # its whole share and end stuck (family-300010-mixed-24 cut to its plan's GPUs: 16 s,
        # nothing), where a dive or the master finds one in a second or two.
        steps = [partial(dive, share=s) for s in DIVE_SHARES] + [integer_master, sequential]
    else:
        steps = [sequential] if not small else []
        steps += [partial(dive, share=s) for s in DIVE_SHARES if s > 0 or len(pat.columns) <= DIVE_COLUMNS]
        # The master's nodes are LPs over every column it keeps: on 200 models a hundred of them
        # take longer than its share (long-tail, 3,000 columns: 100 nodes in 20 s, nothing found),
        # so past ``PATTERN_FIRST`` shared models it runs only up to ``colplan.MASTER_COLUMNS``.
        steps += [integer_master] if small or len(pat.columns) <= MASTER_COLUMNS else []
    for i, step in enumerate(steps):
        # The fill's first pass, where it comes first, runs past the cap: it is what turns the
        # columns into a packing, and cut there the plan was the greedy start's (generated-500 on a
        # machine a little slower than the counts assume: 152.08/h, where it makes 137.50/h).
        first = i == 0 and step is sequential and not anything
        if not first and problem.past(until, COLUMNS_PACKING):
            break
        if anything and step is sequential and best is not None and small:
            break  # found: past this, as for a start from the greedy packing
        # Each ends on its own (the fill at its counted share, the dive when all is whole, the
        # master at its node limit): the clock is a guard against a much slower machine, not what
        # ends them.
        new = step(problem, pat, reserved, seconds, best_cost, until=math.inf if anything else until,
                   **({"first_until": math.inf} if first else {}))
        if new is None:
            continue
        # Consolidating is part of the step, and stops at the cap with it: on 3,779 GPUs
        # (family-13100408-mixed-471) each took 8 s, and two took the plan to 34-36 s.
        new = consolidate(problem, new, math.inf if anything else until)
        cost = cost_of(problem, gpu_counts(problem, new))
        if cost < best_cost - 1e-9 and (best is None or _spread_kept(problem, new, best)):
            best, best_cost = new, cost
    return best


def _groups(gpus: list[Gpu]) -> list[tuple[str, list[tuple[str, int]]]]:
    """The packing's groups (slot type, [(model, replica count)]): first columns of the pattern LP."""
    return [(sl.type.key, [(r.model.name, r.count) for r in sl.reps]) for g in gpus for sl in g.slots if sl.reps]


@dataclass
class _Budget:
    """A plan's time, split between its stages (``auto_time_limit`` says why so)."""

    limit: float
    search_s: float
    """The search's own budget, in deterministic seconds (CP-SAT's, the dive's steps): a seed gives
    one plan whatever else runs on the machine."""
    bound_s: float
    mip_s: float
    """With the default budget, a small fleet's MIP gets the time it needs; an explicit limit is kept."""
    deadline: float
    """Wall clock: it bounds the greedy starts."""
    wall_end: float = math.inf
    """Wall clock past which no packing step or window starts or goes on (``WALL_CAP``)."""
    master_s: float = 0.0
    """The pattern LP's dive and integer master (``_from_patterns``), taken from ``search_s``; the
    sequential fill takes up to ``colplan.SEQUENTIAL_SHARE`` of it besides (not charged): set
    from the search's share before the greedy stage is charged (:func:`_charge_greedy`), since a
    dive ends only when all is whole and the clock (``colplan.DIVE_GUARD`` times this) is just its
    guard; cut with the
    charge, generated-2000's dive ran past its guard (22.4 s of 22.2) and the plan cost 563.07/h,
    not 533.34/h."""


PATTERN_FIRST = 60
"""Fleets above this many models split their budget in favour of the pattern LP (``_budget``)."""
STARTS, CONSOLIDATION, WINDOWS, COLUMNS_PACKING = (
    "the greedy starts", "consolidation", "the LNS windows", "the packing from the pattern LP's columns")
"""Stages that :meth:`Problem.past` names where the wall clock ends them before their counts."""
WALL_CAP = 1.12
"""Past ``PATTERN_FIRST`` models, the packing steps from the pattern LP's columns and the LNS
windows stop at this multiple of the limit on the wall clock (``_Budget.wall_end``). Each stage
ends on its own count so that a seed gives one plan whatever the load, but the counts are fitted
to some fleets and fall behind the clock on others: family-7700261-mixed-497 (497 models, two MIG
pools, 19 slot types) took 37.3 s of a 26-s limit on an idle 2-core machine (3.0 s of replica
counts before any stage, column generation 18.6 s for 15.4 counted, the dive 6.1 s), past issue
14's 30 s. The cap binds only where the counts run that far behind; below it the plan is the
count's."""


def _budget(fleet: Fleet, settings: PlanSettings, t0: float) -> _Budget:
    """Past ``PATTERN_FIRST`` models the bound gets 60 % of the budget and the search 30 %: the
    pattern LP's columns give both the bound and, by diving, the packing the search starts from
    (generated-500: 139.47/h and a bound of 108.7 where the even split gave 145.17/h and 97.03),
    and the search's windows rarely move a packing that size much. Below, 45 % each."""
    limit = settings.time_limit_s if settings.time_limit_s is not None else auto_time_limit(fleet)
    large = len(fleet.models) > PATTERN_FIRST
    share = 0.3 if large else 0.45
    # The greedy starts stop on the wall clock at 40 % of the deadline's span (a guard for slow
    # machines): half the limit, whatever the search's share, or a start more or fewer depends on
    # the load (family-0-long-tail-194 at 30 %: 474.27/h or 476.47/h from run to run).
    return _Budget(limit, share * limit, max(1.5, (0.6 if large else 0.45) * limit),
                   MIP_MIN_S if settings.time_limit_s is None else 0.0, t0 + 0.5 * limit,
                   t0 + WALL_CAP * limit if large and not settings.reproducible else math.inf, min(MASTER_SHARE * limit, 0.5 * share * limit))



def _first_packing(problem: Problem, settings: PlanSettings, current: Plan | None, counts: dict[str, int],
                   reserved: dict[str, int], t0: float, budget: _Budget
                   ) -> tuple[list[Gpu], dict[str, int], tuple | None, list[Gpu] | None, tuple | None]:
    """The packing the search starts from, the replica counts, the greedy baseline's packing,
    for a fresh plan that packing as the start to beat, and where no greedy start fitted the
    pools, the bound and columns the pattern LP's packing came from (:func:`_from_columns_alone`).
    The greedy baseline obeys the plan's rules (``greedy_packing``), so it is a start the plan
    keeps unless it finds a cheaper one: a plan never costs more than its printed baseline. A
    re-plan starts from what it keeps."""
    fleet = problem.fleet
    began = time.monotonic()
    baseline_packing = greedy_packing(fleet, settings)
    # It used to be packed after the search, outside its budget (2-4 s at 2000 models): so it stays.
    starts_from = t0 + (time.monotonic() - began)
    budget.deadline += time.monotonic() - began
    start = baseline_packing[0] if baseline_packing and current is None else None
    if start is not None:
        for g in start:
            for sl in g.slots:
                for r in sl.reps:
                    problem.start_counts.setdefault(r.model.name, set()).add(r.count)
    known = None
    try:
        if current is None:
            gpus, counts = _start_packing(problem, counts, reserved, starts_from, budget.deadline, start)
        else:
            gpus, counts = _kept_packing(problem, current, counts, reserved, starts_from, budget.deadline)
    except NoRoom as e:
        gpus, known = _from_columns_alone(problem, reserved, budget, str(e), t0)
        counts = {r.model.name: r.count for g in gpus for sl in g.slots for r in sl.reps}
        _offer(problem, counts)
    _charge_greedy(problem, budget)
    return gpus, counts, baseline_packing, start, known


FALLBACK_GUARD_S = 5.0
"""Wall-clock seconds past twice the plan's limit after which :func:`_from_columns_alone` tries
no more of the pattern LP's packings (its guard against a much slower machine)."""


def _from_columns_alone(problem: Problem, reserved: dict[str, int], budget: _Budget, failed: str,
                        t0: float) -> tuple[list[Gpu], tuple[tuple[float, str], list]]:
    """Where no greedy start fits the pools: the pattern LP's packing (every step of
    ``_from_patterns``, for any packing that fits), and the bound with its columns, which the
    plan's bound stage then uses as it is (``_bound_first``). Pools cut to the GPUs a plan used
    were refused as "does not fit" on 5 of 16 fleets (``bench/tight.py``) while that plan's packing
    fitted them. Where none is found, the error says whether the pools are shown too small
    (``fits.no_fit_error``)."""
    floor = multi_floor(problem)
    keep: list = []
    bound = lower_bound(problem, floor, time_limit=budget.bound_s, mip_s=budget.mip_s, keep=keep)
    gpus = None
    # Shown not to fit (the bound above the pools' cost): no packing to look for.
    if keep and keep[0].patterns is not None and not above_pools(problem, bound[0]):
        master_s = max(1.0, min(budget.master_s, budget.search_s))
        # A guard for the wall clock, not what ends the steps (each ends on its own count): at the
        # limit itself, a 1-s plan on a loaded machine skipped them and refused a fleet that fits.
        gpus = _from_patterns(problem, keep[0].patterns, None, reserved, master_s,
                              until=t0 + 2.0 * budget.limit + FALLBACK_GUARD_S)
        budget.search_s = max(0.0, budget.search_s - master_s)
    if gpus is None:
        # The proof's time up to one and a half times the limit: past it, the error says "not shown".
        left = min(RULE_OUT_SHARE * budget.limit, t0 + 1.5 * budget.limit - time.monotonic())
        raise no_fit_error(problem, bound[0], failed, time.monotonic() - t0, left)
    return gpus, (bound, keep)


GREEDY_SHARE, GREEDY_KEEP = 0.2, 0.5
"""Past ``PATTERN_FIRST`` models, the share of the limit the greedy stage's counted work
(``Problem.packing_work``) may take before the rest comes off the bound's and the search's shares,
and the least share of them it leaves (:func:`_charge_greedy`)."""


def _charge_greedy(problem: Problem, budget: _Budget) -> None:
    """Take the greedy stage's counted work past ``GREEDY_SHARE`` of the limit off the search's
    share (the LNS windows'; the dive keeps ``budget.master_s``), then the bound's (each keeps
    ``GREEDY_KEEP`` of its own), on fleets past
    ``PATTERN_FIRST`` models. The starts stop on counted work at 20 % of the limit, but a start
    begun just under it runs to its end and the greedy baseline's packing comes on top:
    family-100007-mixed-401 (401 models, 324 GPUs) spent 6.7 deterministic seconds there on top of
    a 22-s limit's 19.8 for the bound and the search, and took 25-34 s from run to run, over issue
    14's 30 s. The search's share goes first: taken from both in proportion, that fleet's bound fell
    from 925.41/h to 912.12/h; from the search, its plan and bound stay as they were (the pattern
    LP's dive finds its packing). Counted work, not the clock, so a seed gives one plan whatever
    the machine's load. Small fleets keep their shares: they plan in under 15 s, and their exact
    search needs what it has."""
    if len(problem.fleet.models) <= PATTERN_FIRST:
        return
    excess = problem.packing_work - GREEDY_SHARE * budget.limit
    if excess <= 0:
        return
    # The dive's share (``budget.master_s``) stays whole: what is taken comes off the windows'.
    off = min(excess, (1.0 - GREEDY_KEEP) * budget.search_s)
    budget.search_s -= off
    budget.bound_s -= min(excess - off, (1.0 - GREEDY_KEEP) * budget.bound_s)


def _kept_packing(problem: Problem, current: Plan, counts: dict[str, int], reserved: dict[str, int], t0: float,
                  deadline: float) -> tuple[list[Gpu], dict[str, int]]:
    """A re-plan's start and its replica counts: a model keeps its replica count while that many
    replicas still hold its traffic, the current GPUs keep what still fits, and the rest is packed
    into spare room first. Where that does not fit, the counts of a fresh plan's tries
    (:func:`_count_tries`) around what is kept, then a fresh start (every replica may move): a
    model whose 37 A30 replicas no longer held its peak kept 37, as one H100 (a pool of 1) would
    hold each, and the re-plan was refused though a fresh plan fits 51 A30s (found by fuzzing)."""
    fleet = problem.fleet
    kept_counts = dict(counts)
    for name, n in current.replicas.items():
        if name not in counts or n < min(problem.replica_options(fleet.model(name)) or [n]):
            continue
        if any(problem.fits_alone(Rep(fleet.model(name), 0, n), st) for st in problem.all_types()):
            kept_counts[name] = n
    first: NoRoom | None = None
    tries = itertools.chain([(kept_counts, False)],
                            (t for t in _count_tries(problem, counts, reserved) if t[0] != kept_counts))
    for c, outside in tries:
        try:
            kept, todo = _from_current(problem, current, c, reserved)
            slots_before = [s for g in kept for s in g.slots]
            gpu_of = {id(s): g for g in kept for s in g.slots}
            slots = pack(problem, todo, slots_before, reserved=reserved, gpu_of=gpu_of)
        except NoRoom as e:
            first = first or e
            continue
        if outside:
            _offer(problem, c)
        new_slots = [s for s in slots if id(s) not in gpu_of]
        gpus = consolidate(problem, kept + to_gpus(problem, new_slots), deadline)
        # The greedy fill counts MIG slots in fractions of a GPU; dealt onto GPUs beside the kept
        # ones they can overfill a pool (9 A100s in a pool of 8; found by fuzzing), as multi_start
        # checks for a fresh plan.
        if _over_pools(problem, gpus, reserved):
            continue
        return gpus, c
    try:
        return _start_packing(problem, counts, reserved, t0, deadline, None)
    except NoRoom:
        assert first is not None
        raise first from None


def _bound_first(problem: Problem, gpus: list[Gpu], multi: list[Gpu], reserved: dict[str, int], floor: float,
                 budget: _Budget, progress: Progress | None, t0: float,
                 short_proof: bool = True, known: tuple | None = None) -> tuple[list[Gpu], tuple[float, str] | None]:
    """A fresh plan's bound before its search, a packing from the pattern LP's columns, and the
    short exact search. Small fleets: the greedy plan is often optimal already, and the exact
    search can show it in a few seconds (multilingual: 9.70/h proven in about 5 s), when the search
    for a cheaper plan would spend its budget finding none. The bound does not depend on the plan.
    Returns the packing (the columns' where cheaper) and the bound if proven; takes the columns'
    share from ``budget.search_s``. Where column generation converged within part of its share,
    it is resumed with deeper pricing for the rest (``bound.refined_bound``), after the packing is
    made: family-600018-long-tail-304's bound rose from 163.02/h to 165.47/h, its plan the same.
    ``known``: the bound and columns ``gpus`` came from, where no greedy start fitted the pools
    (:func:`_from_columns_alone`): not worked out again."""
    if progress:
        progress("bound", time.monotonic() - t0)
    greedy_cost = cost_of(problem, gpu_counts(problem, gpus + multi))
    if known is not None:
        bound, keep = known
    else:
        keep = []
        # Over the plans that obey the spread rule, as every stage's packing does (_spread_kept); where
        # the plan does not, plan_fleet takes the bound again over every plan.
        bound = lower_bound(problem, floor, time_limit=budget.bound_s, mip_s=budget.mip_s, upper=greedy_cost,
                            seeds=_groups(gpus), keep=keep, apart=True)
    if keep and keep[0].patterns is not None:
        problem.apart_binding = keep[0].patterns.apart_binding()
    # Whole numbers of the pattern LP's columns: a packing that sees every group at once
    # (colplan.py). It takes part of the search's share.
    master_s = min(budget.master_s, budget.search_s)
    if (keep and keep[0].patterns is not None and bound[0] < greedy_cost - 1e-6 and master_s >= 0.3
            and known is None):
        gpus = _from_patterns(problem, keep[0].patterns, gpus, reserved, master_s, until=budget.wall_end)
        budget.search_s -= master_s
        greedy_cost = cost_of(problem, gpu_counts(problem, gpus + multi))
    exact = False  # the integer master over every group was solved: no LP bound can beat it
    if bound[0] < greedy_cost - 1e-6 and len(problem.shared_models) <= PATTERN_FIRST:
        gpus, bound, exact = _from_every_group(problem, gpus, reserved, floor, bound, budget)
        greedy_cost = cost_of(problem, gpu_counts(problem, gpus + multi))
    if keep and bound[0] < greedy_cost - 1e-6 and not exact:
        # What the bound's budget has left where column generation converged early: more columns,
        # for the bound only (the packing from them is made), so the plan is the same.
        bound = refined_bound(problem, keep[0], bound, REFINE_SHARE * budget.bound_s - keep[0].spent, greedy_cost)
    if not short_proof:  # ``--prove``: the long exact search runs after the search
        return gpus, bound
    return gpus, _prove(problem, greedy_cost, floor, *bound, min(PROVE_FIRST_S, budget.limit), progress, t0,
                        first=True)


EXACT_SHARE = 0.25
"""Share of the limit the integer master over every group (``allgroups``) may take: its guard;
its node limit ends it."""


def _from_every_group(problem: Problem, gpus: list[Gpu], reserved: dict[str, int], floor: float,
                      bound: tuple[float, str], budget: _Budget) -> tuple[list[Gpu], tuple[float, str], bool]:
    """A small fleet's packing and bound from the integer master over every group it has
    (``allgroups``), where they are few enough to list: the packing where cheaper than ``gpus``,
    the bound (``floor`` added for the multi-GPU models) where above ``bound``, and whether the
    master was solved (then the pattern LP's resumed column generation, a weaker bound, is not run).
    Its seconds, counted by the groups listed, come off the bound's share, which that resumed
    column generation would have used: taken from the search's, family-300026-multilingual-12's
    search found 18.58/h instead of 15.79/h."""
    shared = cost_of(problem, gpu_counts(problem, gpus))
    exact, charge = exact_groups(problem, reserved, shared, EXACT_SHARE * budget.limit)
    if exact is None:
        return gpus, bound, False
    budget.bound_s = max(0.0, budget.bound_s - charge)
    if exact.gpus is not None:
        new = consolidate(problem, exact.gpus, math.inf)
        if cost_of(problem, gpu_counts(problem, new)) < shared - 1e-9 and _spread_kept(problem, new, gpus):
            gpus = new
    if exact.bound is not None:
        kind = (", over the replica counts the planner offers, one replica of a model per MIG GPU"
                + (", multi-GPU models at their cheapest" if problem.multi_models else ""))
        if exact.lp_only:  # an LP: raised to what whole GPUs can cost, as the aggregate bounds are
            found = _whole_gpus_plus(problem, (exact.bound, f"LP over every group the slot maths admits "
                                                            f"({exact.columns}){kind}"), floor)
        else:
            # The master's cost is a purchase of whole GPUs; a bound at its target is not.
            found = _whole_gpus_plus(problem, (exact.bound, _master_words(exact, exact.bound, exact.proven) + kind),
                                     floor)
        if found[0] > bound[0] + 1e-6:
            bound = found
    proven = exact.proven
    if exact.apart_bound is not None and exact.apart_bound > bound[0] + 1e-6 and not _one_node(problem, gpus):
        # The packing keeps every min_replicas >= 2 model off the one-node pools, and no later stage
        # takes one that does not (_spread_kept): the plans it can end at are the master's.
        bound = _whole_gpus_plus(problem, (
            exact.apart_bound, _master_words(exact, exact.apart_bound, exact.apart_proven)
            + f", over the plans that keep a replica of every min_replicas >= 2 model off each pool of one "
            f"node ({SPREAD_RULE}), at the replica counts the planner offers, one replica of a model per MIG GPU"), 0.0)
        proven = exact.apart_proven
    return gpus, bound, proven


RULE_OUT_SHARE = 0.4
"""Share of the limit (deterministic seconds of column generation) for ruling out the cheaper
purchases one at a time (``purchases.rule_out``), on fleets of up to ``PATTERN_FIRST`` shared
models."""


def _ruled_out(problem: Problem, gpus: list[Gpu], cost: float, bound: tuple[float, str],
               seconds: float) -> tuple[tuple[float, str], bool]:
    """``bound`` (value, words) raised by ruling out the purchases between it and ``cost``, that
    of the packing ``gpus``, at their own sizes (``purchases.rule_out``), and whether time ran out
    before a purchase it could not rule out; over the replica counts offered and those ``gpus``
    uses (a re-plan's may be others)."""
    lb, method = bound
    if lb >= cost - 1e-6:
        return bound, False
    found, ruled, cut = rule_out(problem, cost, lb, seconds, counts=_counts_used(gpus))
    if found <= lb + 1e-6:
        return bound, cut
    what = (f"all {ruled} cheaper GPU purchases" if found >= cost - 1e-6
            else f"the {ruled} GPU purchases below {found:.2f}/h")
    return (found, f"{method}; raised to {found:.2f}: the pattern LP at each purchase's own pool sizes, with "
                   f"one replica of a model per MIG GPU, branched on replica counts, rules out "
                   f"{what}"), cut


def _master_words(exact, value: float, proven: bool) -> str:
    """How a bound ``value`` from the integer master over every group (``exact``) names itself:
    the groups listed and those reduced-cost fixing left, and what HiGHS showed."""
    left = ""
    if exact.kept < exact.columns:
        below = f" below {exact.target:.2f}/h" if math.isfinite(exact.target) else ""
        left = f", {exact.kept} of them able to be in a plan{below}"
    if proven:
        how = "solved to optimality"
    elif math.isfinite(exact.target) and value >= exact.target - 1e-6:
        how = f"none of their choices costs less than {exact.target:.2f}/h"
    else:
        how = f"its bound after {EXACT_NODES} nodes of branch and bound"
    # In a user's words: the groups (which models share a slot) and what was shown, not the
    # solver's names ("integer master", "HiGHS optimum", "reduced-cost fixing").
    return f"an integer programme over every group of models the slot maths admits ({exact.columns} groups{left}; {how})"


def _bound_after(problem: Problem, gpus: list[Gpu], floor: float, budget: _Budget) -> tuple[float, str]:
    """The bound after the search (re-plans, ``--prove``): over the replica counts offered and the
    ones the plan uses (a re-plan may keep counts the search does not offer)."""
    return lower_bound(problem, floor, time_limit=budget.bound_s, mip_s=budget.mip_s,
                       upper=cost_of(problem, gpu_counts(problem, gpus)), seeds=_groups(gpus),
                       counts=_counts_used(gpus))


def _clock_cuts(problem: Problem) -> list[str]:
    """The plan's word that the wall clock, not a count, ended some stages (``Problem.past``): on
    a machine slower or busier than the counts assume, the same seed may plan otherwise on an
    idle one, and the user who diffs plans, or buys on one, should know."""
    if not problem.clock_cuts:
        return []
    return [f"the wall clock ended {', '.join(problem.clock_cuts)} before the counted time ran out (this machine ran "
            "slower or busier than the counts assume): the same seed may give another plan on an idle machine; "
            "--reproducible lets the counts alone end every stage"]


def _dearer_than_fresh(plan: Plan) -> list[str]:
    """A re-plan keeps what runs where it runs, and can cost more than planning afresh: the bundled
    example's plan as the current one for multilingual-10 gave 37.30/h, 1.29x the greedy baseline,
    where a fresh plan costs 27.30/h, and said nothing of it. A fresh plan never costs more than
    its greedy baseline (``plan_fleet``'s guard), so a re-plan dearer than the baseline is one a
    fresh plan beats: said, with the cost of the moves it saves."""
    greedy = plan.baselines.get("greedy")
    if greedy is None or not math.isfinite(greedy.cost_per_hour) or plan.cost_per_hour <= greedy.cost_per_hour + 1e-6:
        return []
    moved = sum(1 for mv in plan.moves if mv.src is not None and mv.dst is not None)
    return [f"this re-plan costs {plan.cost_per_hour:.2f}/h, {plan.cost_per_hour / greedy.cost_per_hour:.2f}x the "
            f"greedy baseline's {greedy.cost_per_hour:.2f}/h, to keep replicas where they run ({moved} moved); "
            "`packer plan` without --current plans afresh for at most the baseline's cost (it may move more)"]


def _kept_surplus(gpus: list[Gpu], current: Plan | None, fresh: dict[str, int]) -> list[str]:
    """A re-plan keeps a model's replica count while that many replicas hold its peak, so the
    replicas a scale-up added stay (the scaling policy, which sees live traffic, removes them; the
    planner sees only the fleet's, and a fleet edited during a surge must not drop them). Said,
    since the plan then costs more than a fresh one: a plan scaled for a surge, re-planned, kept 13
    replicas of asr-en where 5 hold its peak, at 1.30x the greedy baseline, without a word why.
    ``fresh``: a fresh plan's counts (``choose_counts``, as the plan started from)."""
    if current is None:
        return []
    now: Counter[str] = Counter(r.model.name for g in gpus for sl in g.slots for r in sl.reps)
    more = [(m, now[m], fresh[m]) for m in sorted(fresh) if now[m] > fresh[m] and current.replicas.get(m) == now[m]]
    if not more:
        return []
    said = ", ".join(f"{m} {n} (a fresh plan: {k})" for m, n, k in more[:3])
    said += f" and {len(more) - 3} more" if len(more) > 3 else ""
    return [f"kept replica counts above what the fleet's traffic needs, from the current plan: {said}. The "
            "scaling policy removes them as live traffic allows; `packer plan` without --current plans afresh"]


def _counts_used(gpus: list[Gpu]) -> dict[str, set[int]]:
    """Per model, the replica counts a packing uses."""
    used: dict[str, set[int]] = defaultdict(set)
    for g in gpus:
        for sl in g.slots:
            for r in sl.reps:
                used[r.model.name].add(r.count)
    return dict(used)


def _compile() -> None:
    """numba's kernels (the pricing search, a lone replica's queue bound, the duty cycle's capacity)
    compiled, or loaded from numba's cache, before a plan's clock starts: the first plan on a
    machine compiles them (11 s on this project's machine), and counted on the plan's wall clock
    that changed the plan (generated-500 first on a cold cache: 152.08/h, against 136.17/h)."""
    warm_pricing()
    warm_queue()
    warm_duty()
    warm_groups()


def plan_fleet(fleet: Fleet, settings: PlanSettings | None = None, current: Plan | None = None,
               progress: Progress | None = None) -> Plan:
    """Plan a fleet: the cheapest packing found within the time limit, with a bound and baselines.
    Stages: the budget, the multi-GPU replicas, the first packing, the bound (before the search on
    a fresh plan, after it on a re-plan), the search, the guard against the greedy baseline, GPUs
    to nodes, and the plan."""
    settings = settings or PlanSettings()
    started = time.monotonic()  # the plan's reported seconds include the compiling; its budget does not
    _compile()
    t0 = time.monotonic()
    budget = _budget(fleet, settings, t0)
    problem = Problem(fleet, settings)
    multi, multi_counts, multi_cost = plan_multi(problem)
    if current is not None:
        _keep_multi(multi, current)
    reserved = gpu_counts(problem, multi)
    fresh = choose_counts(problem)
    gpus, counts, baseline_packing, start, known = _first_packing(problem, settings, current, dict(fresh),
                                                                  reserved, t0, budget)
    if progress:
        progress("greedy", time.monotonic() - t0)
        progress("consolidated", time.monotonic() - t0)
    floor = multi_floor(problem)
    first = None
    targets_spent: list[float] = []  # --prove: the search inside cheaper purchases takes part of its seconds
    if current is None:
        # ``--prove 0`` turns off the exact search alone: without the bound and the columns'
        # packing first it was slower and worse (multilingual-meetings: 6.5 s, gap 5.8 %, where the
        # default proves 13.70/h optimal in 2.7 s).
        # With ``--prove`` too: its plan starts from the pattern LP's packing as the default plan
        # does (family-200008-mixed-15 without it: 88.93/h, where the default plan costs 82.20/h).
        gpus, first = _bound_first(problem, gpus, multi, reserved, floor, budget, progress, t0,
                                   short_proof=settings.prove_s is None, known=known)
    elif current is not None:
        first = _carried_bound(current, fleet, settings)  # None: the bound is computed below
    small = len(problem.shared_models) <= PATTERN_FIRST
    ruled_cut = True  # whether purchases may be left for ruling out after the search
    cost_now = cost_of(problem, gpu_counts(problem, gpus + multi))
    if first is not None and small:
        # Before the search: a purchase ruled out is one the search need not look inside, and
        # where all are, the search does not run (multilingual-10: 28.90/h proven before it).
        first, ruled_cut = _ruled_out(problem, gpus + multi, cost_now, first, RULE_OUT_SHARE * budget.limit)
    if first is not None and first[0] >= cost_now - 1e-6:
        gpus, status = gpus + multi, "optimal"
    else:
        targets_s = TARGET_SHARE * settings.prove_s if settings.prove_s and first is not None else 0.0
        # Not on a re-plan: a packing from fresh columns would move nearly every replica.
        inside_s = INSIDE_SHARE * budget.limit if current is None and small else 0.0
        gpus, status = improve(problem, gpus + multi, reserved, budget.search_s, progress, full=current is None,
                               lower=first[0] if first is not None else 0.0, targets_s=targets_s,
                               targets_spent=targets_spent, inside_s=inside_s, until=budget.wall_end)
    gpus = [g for g in gpus if g.multi or any(s.reps for s in g.slots)]
    baseline = greedy_baseline(fleet, settings, baseline_packing)
    if start is not None and cost_of(problem, gpu_counts(problem, gpus)) > baseline.cost_per_hour + 1e-9:
        # Never reached while multi_start keeps the start and every later step keeps the cheaper
        # packing; a guard, so that the invariant does not rest on those steps alone.
        gpus, status = copy_gpus(start) + multi, "feasible"
    chosen = _dedicated_choice(problem)
    if current is None:
        cheaper = _no_dearer_than_dedicated(problem, gpus, 0.1 * budget.limit, chosen)
        if cheaper is not None:
            gpus, status = cheaper, "feasible"
            multi_counts = dict(Counter(g.multi[0].name for g in gpus if g.multi))
            problem.multi_counts = dict(multi_counts)
    warnings = assign_nodes(problem, gpus) + _spread_cost(problem, gpus) + _kept_surplus(gpus, current, fresh)
    if first is not None and SPREAD_RULE in first[1] and _one_node(problem, gpus):
        first = None  # a bound over spread plans, and this plan is not one (never, while every stage keeps it)
    if first is None:
        if progress:
            progress("bound", time.monotonic() - t0)
        first, ruled_cut = _bound_after(problem, gpus, floor, budget), True
    cost = cost_of(problem, gpu_counts(problem, gpus))
    if small and ruled_cut:
        first, _ = _ruled_out(problem, gpus, cost, first, RULE_OUT_SHARE * budget.limit)
    lb, method = first
    if settings.prove_s and lb < cost - 1e-6:
        lb, method = _prove(problem, cost, floor, lb, method, max(0.0, settings.prove_s - sum(targets_spent)),
                            progress, t0)
    # The improving CP-SAT model's own bound holds only over the packings it can express (the
    # replica counts it is offered, compute in thousandths rounded up), not over every plan, so it
    # is reported but never taken as the lower bound: only the relaxation and the exact search
    # (whose model relaxes planning, prove.py) prove a plan optimal.
    if status == "optimal" and lb < cost - 1e-6:
        method += "; CP-SAT found no cheaper packing among the replica counts it searched"
    if lb < cost - 1e-6 and "exact search" not in method and len(problem.shared_models) <= PROVE_MODELS:
        left = purchases_left(problem, cost - floor, _shared_lower(problem, lb, floor))
        if left:
            method += f"; {left} cheaper GPU purchase(s) {LEFT_FOR_PROOF}"
    status = "optimal" if lb >= cost - 1e-6 else "feasible"
    replicas = {m.name: 0 for m in fleet.models} | dict(multi_counts)
    for g in gpus:  # the solver may have chosen other replica counts than the warm start
        for sl in g.slots:
            for r in sl.reps:
                replicas[r.model.name] += 1
    warnings += _clock_cuts(problem)  # last: the bound's stages can be cut too
    plan = make_plan(problem, gpus, status=status, lower_bound=lb, bound_method=method,
                     solve_seconds=time.monotonic() - started,
                     baselines={"dedicated": dedicated_baseline(problem, chosen), "greedy": baseline},
                     replicas=replicas, warnings=warnings)
    if current is not None:
        plan = replace(plan, moves=_moves(current, plan))
        plan = replace(plan, warnings=plan.warnings + tuple(_dearer_than_fresh(plan)))
    return respread(plan, lambda f: plan_fleet(f, settings, current, progress))  # spot floors the nodes could not spread


def with_insurance(plan: Plan, settings: "PlanSettings") -> Plan:
    """``plan`` with a ``spot-unaware`` baseline: the plan of the same fleet with every model free
    to run on spot, at the same settings. Its cost against the plan's is the price of the
    on-demand floors. Planning twice doubles the solve time, so only spot-aware fleets pay it."""
    if not spot_aware(plan.fleet):
        return plan
    cheap = plan_fleet(spot_unaware(plan.fleet), settings)
    note = "every model free to run on spot; the difference is the price of the on-demand floors"
    return replace(plan, baselines={**plan.baselines,
                                    "spot-unaware": Baseline(cheap.cost_per_hour, dict(cheap.gpus), note)})
