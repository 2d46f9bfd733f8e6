"""A packing from the pattern LP's columns: the integer master over the patterns it generated.

The pattern LP (``patterns.py``) ends with a few thousand groups that ``slot.feasible`` admits,
among them the ones its optimum uses. Choosing whole numbers of them (price and branch) is a
packing of the whole fleet that the greedy starts, which place one replica at a time, often miss:
it sees every model's replica count and every group at once. The result is dealt onto GPUs by
``assemble.to_gpus`` (valid MIG layouts, one replica of a model per GPU) and kept only where it
fits the pools and is cheaper than the incumbent.

Three ways to whole numbers: :func:`sequential` (fill one slot at a time with the group the duals
value most per dollar among the replicas left: about a second on 300 models), :func:`dive` (fix
what the LP makes whole, then its most-used fractional column, and solve again: a second or two)
and :func:`integer_master` (a MIP over all the columns: it can prove, but on 200 models and 3000
columns it rarely finds a packing in seconds). The planner (``solve._from_patterns``) runs the
fill past 60 shared models, the dives, and the master up to 1,500 columns, and keeps the cheapest.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict

import numpy as np
from ortools.linear_solver import linear_solver_pb2, pywraplp

from packer.planner.assemble import Gpu, fewest_gpus, to_gpus
from packer.planner.build import cost_of, gpu_counts
from packer.planner.mip import solve_mip
from packer.planner.model import Problem, Rep, Slot, can_add, slot_price
from packer.planner.patterns import Patterns
from packer.slot import WHOLE


MASTER_NODES = 100
"""Branch-and-bound nodes the integer master may take (HiGHS)."""
MASTER_COLUMNS = 1500
"""Most columns the integer master keeps (:func:`kept_columns`)."""
DEAL_FEWEST_S = 1.0
"""Deterministic seconds CP-SAT may take to put a pool's MIG slots on fewer GPUs than first fit
(:func:`_deal`)."""
DIVE_COLUMNS = 3000
"""Most columns a dive keeps (:func:`kept_columns`): past a few thousand each of its LPs takes tenths
of a second."""
DIVE_GUARD = 3.0
"""Wall-clock seconds a dive may take per second of its share before it gives up (None)."""
DIVE_WORK = 1.5
"""Counted seconds a dive may take per second of its share before it gives up (None). Without a
count the clock alone (``DIVE_GUARD``) ended it: generated-2000's dive took 25.8 s of a 13.4-s
share for a packing (579.61/h) dearer than the sequential fill's (545.98/h). At 1.5 the dives of
the family's large fleets end as before (family-100007-mixed-401's, the longest measured against
its share: 5.7 counted s of 4.5)."""
DIVE_ITER_S, DIVE_SOLVE_S = 6e-8, 1.5e-6
"""Counted seconds per simplex iteration and row of a dive's LP, and per LP and variable or row
(the step's own work over the solution): fitted to generated-500, generated-2000, long-tail,
family-0-long-tail-194, family-600025-long-tail-326 and family-100007-mixed-401 on this
project's 2-core machine, where the count is 0.6 to 1.6 times the wall clock (25 to 100 us an
iteration at 440 to 4,300 rows)."""
DIVE_FIRST_TIMES = 10.0
"""A dive whose first LP, times this, passes its count does not go on: dives took 6.6 to 34 times
their first LP's count (the seven measured above), so it would end cut short; generated-2000's
first LP counts 2.35 s of a 20.1-s cap, and the dive that went on was cut at 19.3 s."""
DIVE_SHARES = (0.05, 0.0)
"""Where nothing in a dive's LP is whole, this share of its fractional columns is rounded up at
once (0: one column a step). The planner dives at each and keeps the cheapest packing; which wins
depends on the fleet (long-tail: one a step 60.61/h, 5 % at once 61.41/h), and on thousands of
columns one a step takes hundreds of LPs, so it runs only up to ``DIVE_COLUMNS``."""


FILL, DIVE, MASTER = "the sequential fill", "a dive", "the integer master"
"""Stages that ``Problem.past`` names where the wall clock ends them before their counts."""


SEQUENTIAL_SHARE, SEQUENTIAL_NOISE, SEQUENTIAL_NODES = 0.3, 0.3, 300
"""Share of the columns' seconds :func:`sequential` may take (counted by its searches' work), how
far its later passes perturb the duals (each value times 1 to 1.3, seeded), and each search's
node limit."""
FIRST_PASS_SHARE = 1.0
"""Share of the columns' seconds the fill may take until a pass has packed every replica within
the pools. With 30 % for the first pass too, family-900004-mixed-218's projected past it and
stopped whenever the column generation ended a few columns elsewhere (its counted seconds
recalibrated), the dive failed on the same columns, and the plan was the greedy start's: 668.85/h
where a pass that ends gives 556.35/h."""


def sequential(problem: Problem, pat: Patterns, reserved: dict[str, int], time_limit: float,
               upper: float, until: float = math.inf, first_until: float | None = None) -> list[Gpu] | None:
    """A packing built one slot at a time, each the group of left replicas that the column
    generation's last duals value most per dollar of slot (``Patterns.search``, the pricing's own
    search), at the replica counts the restricted LP leans to (``Patterns.shares``); then again with the duals perturbed (seeded), for
    ``SEQUENTIAL_SHARE`` of ``time_limit`` counted seconds. The cheapest as GPUs, or None.

    The dive rounds a fractional LP up column by column, and where the LP spreads every model over
    several columns at a fifth each (family-700023-mixed-299: 296 columns in use, 9 of them whole)
    most rounded columns duplicate replicas that others hold: 65 GPUs against the LP's 56.4. Filled
    by the duals, which price what each replica costs the fleet, the same columns' search packed
    58 (Gilmore and Gomory's sequential heuristic for cutting stock, with the LP's prices). The
    duals are an upper bound's prices, so a slot's group never needs them exact; a replica the LP
    prices at 0 is still placed, at a small value. ``upper`` is not used (the caller compares).
    ``until``: the plan's wall-clock cap (``solve.WALL_CAP``); no pass runs past it, but the first
    where ``first_until`` says otherwise (``solve._from_patterns``: the first packing from the
    columns is worth more than the seconds)."""
    if pat.duals is None or pat.shares is None:
        return None
    counts = {name: pat.reps[max(ks, key=lambda k: pat.shares[k])][1] for name, ks in pat.model_reps.items()}
    mu = np.maximum(pat.duals[0][:len(pat.reps)], 1e-4)
    types = {key: ti.st for key, ti in pat.types.items()}
    rng = np.random.default_rng(problem.settings.seed)
    start = pat.work
    cap = start + SEQUENTIAL_SHARE * time_limit
    began, guard, dealt = time.monotonic(), DIVE_GUARD * SEQUENTIAL_SHARE * time_limit, 0.0
    end = min(until, began + guard)
    first_cap = start + FIRST_PASS_SHARE * time_limit
    first_end = min(until if first_until is None else first_until, began + DIVE_GUARD * FIRST_PASS_SHARE * time_limit)
    best, best_cost, noise = None, math.inf, 0.0
    while best is None or (pat.work < cap and not problem.past(end, FILL)):
        values = mu * (1.0 + noise * rng.random(mu.size))
        columns = _fill_by_value(problem, pat, counts, values, types, reserved,
                                 *((cap, end) if best is not None else (first_cap, first_end)))
        if columns is _OUT_OF_TIME:
            break  # a later pass, with less of the share left, would stop sooner still
        t = time.monotonic()
        gpus = None if columns is None else _deal(problem, pat, [1] * len(columns), counts, reserved, columns)
        # The dealing's CP-SAT (``assemble.fewest_gpus``) runs to its own deterministic limit and is
        # not in the count, so its clock does not use up the guard (up to the guard once more): on
        # long-tail's MIG pools it took 1.8 s of the guard's 3.2, the 106.43/h pass came at 2.8 s,
        # and a machine 12 % slower or busier ended the fill before it (110.10/h).
        dealt += time.monotonic() - t
        end = min(until, began + guard + min(guard, dealt))
        if gpus is not None and (cost := cost_of(problem, gpu_counts(problem, gpus))) < best_cost - 1e-9:
            best, best_cost = gpus, cost
        noise = SEQUENTIAL_NOISE
    return best


_OUT_OF_TIME: list = []
"""What :func:`_fill_by_value` returns where its share runs out (None: it is stuck, a pool full
before every replica has a slot, which a pass at other values may not be)."""


def _fill_by_value(problem: Problem, pat: Patterns, counts: dict[str, int], values: np.ndarray,
                   types: dict, reserved: dict[str, int], cap: float, end: float) -> list[tuple[str, tuple[int, ...]]] | None:
    """Groups (slot type key, replica classes), one a slot, until every replica of ``counts`` has
    one: each the best group per dollar of slot at ``values`` among the models not yet placed in
    full, on slot types whose pool has room left (MIG slots counted by their share of the GPU,
    checked whole when dealt) and, on a spot pool, only replicas that pool's floor row leaves room
    for (per pool, as the dive's master: with two spot pools the dealing may still refuse). None
    where no slot type with room holds a group of what is left; ``_OUT_OF_TIME`` where the
    counted work passes ``cap`` (or the clock ``end``) first, or where, a twentieth of the
    replicas placed after the first step (which builds every slot type's cells), the work per
    replica since says it would: generated-2000's passes (over a
    thousand slots, 2,000 items a slot type) never finished within the share and spent 10 s each.

    A slot type's best group stays its best while none of its members runs out (placing replicas
    only takes groups away), so a step searches again only the types whose group lost a member,
    and those that had none (a search stops at its node limit, and with fewer items may find one),
    not every slot type."""
    left = np.zeros(len(pat.reps), dtype=int)
    for k, (name, n) in enumerate(pat.reps):
        if counts.get(name) == n:
            left[k] = n
    owner = [pat.model_index[name] for name, _ in pat.reps]  # each replica class's model
    v = np.where(left > 0, values, 0.0)
    cells: dict[str, list] = {}  # per slot type, its cell problems at ``v``: upper bounds still as replicas go
    best_of: dict[str, tuple[float, tuple[int, ...]] | None] = {}  # per slot type, its best group now
    on_floor: dict[tuple[int, str], int] = defaultdict(int)
    room = {p.name: float(p.max_gpus - reserved.get(p.name, 0)) for p in problem.fleet.pools}
    price = {key: slot_price(st) for key, st in types.items()}
    share = {key: price[key] / st.pool.cost_per_gpu_hour for key, st in types.items()}
    done: set[int] = set()  # models placed in full
    full_on: dict[str, set[int]] = defaultdict(set)  # per pool, models at their floor row's most there
    columns = []
    total = int(left.sum())
    base: tuple[float, float] | None = None  # work and share placed after the first step, which builds every cell
    while left.any():
        placed = 1.0 - left.sum() / total
        if base is None and columns:
            base = (pat.work, placed)
        if pat.work > cap or problem.past(end, FILL) or (
                base is not None and placed - base[1] >= 0.05
                and pat.work + (pat.work - base[0]) / (placed - base[1]) * (1.0 - placed) > cap):
            return _OUT_OF_TIME
        for key, st in types.items():
            if key in best_of or room[st.pool.name] < share[key] - 1e-9:
                continue
            skip = sorted(done | full_on[st.pool.name])
            found, cells[key] = pat.search(key, v, max_cols=1, node_limit=SEQUENTIAL_NODES, cells=cells.get(key),
                                           skip=np.array(skip, dtype=int) if skip else None)
            best_of[key] = (float(v[list(found[-1])].sum()) / price[key], found[-1]) if found else None
        open_ = [(got[0], key) for key, got in best_of.items()
                 if got is not None and room[types[key].pool.name] >= share[key] - 1e-9]
        if not open_:
            return None
        _, key = max(open_)
        group = best_of[key][1]
        pool = types[key].pool.name
        room[pool] -= share[key]
        gone = set()  # models whose groups are no longer open: placed in full, or at a spot floor row's most
        for k in group:
            left[k] -= 1
            if left[k] == 0:
                done.add(owner[k])
                gone.add(owner[k])
            if (k, pool) in pat._floor_index:
                on_floor[k, pool] += 1
                if on_floor[k, pool] >= pat.floor_rows[pat._floor_index[k, pool]][2]:
                    full_on[pool].add(owner[k])
                    gone.add(owner[k])  # on this pool only; its groups elsewhere are searched again
        columns.append((key, group))
        for other, got in list(best_of.items()):
            if got is None or any(owner[k] in gone for k in got[1]):
                del best_of[other]
    return columns


def integer_master(problem: Problem, pat: Patterns, reserved: dict[str, int], time_limit: float,
                   upper: float, until: float = math.inf) -> list[Gpu] | None:
    """The cheapest choice of whole patterns (HiGHS MIP, ``time_limit`` seconds) holding every
    shared model at one of its counts, within the pools' sizes less ``reserved`` GPUs and below
    ``upper`` (the incumbent's shared cost); as GPUs, or None where none is found or it does not
    deal onto the pools.

    Over at most ``MASTER_COLUMNS`` columns (:func:`kept_columns`): its nodes are LPs over every
    column kept, and on long-tail's 3,000 a hundred of them took 20 s and found nothing. Where its
    choice deals onto dearer GPUs than it paid for (or none), it is solved again with a model's
    replicas in a pool's MIG slots at most the pool's MIG GPUs (``_master(spread=True)``), as the
    dealing needs: family-4-mixed-33's master chose 75.56/h of columns that dealt onto a second
    H200 (83.80/h), two replicas of a model in one GPU's slots; with the rule from the start,
    family-400028-llm-38's found nothing in its nodes (230.60/h without)."""
    kept = kept_columns(pat, MASTER_COLUMNS)
    columns = None if kept is None else [pat.columns[j] for j in kept]
    end = problem.guard(min(until, time.monotonic() + 2 * max(0.1, time_limit)))  # a guard for a much slower machine
    best: list[Gpu] | None = None
    best_cost = math.inf
    for spread in (False, True):
        built = _master(problem, pat, reserved, upper, integer=True, columns=columns, spread=spread)
        if built is None or problem.past(end, MASTER):
            break
        solver, x, y = built
        # A node limit, not the clock, ends the search, so that a seed gives one plan on any machine
        # load; the clock is the guard against a much slower machine. At the node limit HiGHS's
        # incumbent is taken (``mip.solve_mip``; through OR-Tools it was lost there).
        found = solve_mip(solver, MASTER_NODES, end - time.monotonic())
        if not found.proven:
            problem.past(end, MASTER)  # its node limit or the clock's guard ended it: named if the clock
        if found.values is None:
            continue
        chosen = {pat.reps[k][0]: pat.reps[k][1] for k in y if found.value(y[k]) > 0.5}
        paid = found.objective
        gpus = _deal(problem, pat, [round(found.value(v)) for v in x], chosen, reserved, columns, target=paid)
        cost = math.inf if gpus is None else shared_cost(problem, gpus)
        if cost < best_cost - 1e-9:
            best, best_cost = gpus, cost
        if best_cost <= paid + 1e-6:
            break  # dealt at what it paid: the rule cannot make it cheaper
    return best


def _deal(problem: Problem, pat: Patterns, copies: list[int], counts: dict[str, int],
          reserved: dict[str, int], columns: list | None = None, target: float = math.inf) -> list[Gpu] | None:
    """Slots from the chosen patterns (:func:`_slots`), then GPUs (``assemble.to_gpus``), kept
    where they fit the pools less ``reserved``. Where first fit overfills a pool or costs more than
    ``target`` (what the integer master paid for the slots' layouts), each pool's MIG slots go on
    the fewest GPUs CP-SAT finds in ``DEAL_FEWEST_S`` deterministic seconds
    (``assemble.fewest_gpus``), where that is cheaper and fits: family-300020-multilingual-40's
    master chose slots worth 38.35/h, its bound, that first fit dealt onto 43.38/h of GPUs. A dive
    ends on layouts the LP may still split, so it has no such target: given its layouts rounded
    up, on family-300015-mixed-53 it took 1.1-1.5 s a dive there for 497.52/h (506.86/h without),
    and the master then found 475.42/h."""
    slots = _slots(problem, pat, copies, counts, columns)
    if slots is None:
        return None
    gpus = _within_pools(problem, to_gpus(problem, slots), reserved)
    if gpus is not None and shared_cost(problem, gpus) <= target + 1e-6:
        return gpus
    fewer = _within_pools(problem, fewest_gpus(problem, slots, DEAL_FEWEST_S), reserved)
    if fewer is not None and (gpus is None or shared_cost(problem, fewer) < shared_cost(problem, gpus) - 1e-9):
        return fewer
    return gpus


def deal_fewest(problem: Problem, pat: Patterns, copies: list[int], counts: dict[str, int],
                reserved: dict[str, int], seconds: float, columns: list | None = None) -> list[Gpu] | None:
    """:func:`_deal` with each pool's MIG slots on the fewest GPUs CP-SAT finds in ``seconds``
    (deterministic; ``assemble.fewest_gpus``), where first fit may open more: the exact master's
    solutions (``allgroups``) use MIG layouts to the last instance. ``copies`` are per column of
    ``columns`` (default ``pat.columns``)."""
    slots = _slots(problem, pat, copies, counts, columns)
    return None if slots is None else _within_pools(problem, fewest_gpus(problem, slots, seconds), reserved)


def _within_pools(problem: Problem, gpus: list[Gpu], reserved: dict[str, int]) -> list[Gpu] | None:
    over = [p for p, n in gpu_counts(problem, gpus).items()
            if n > problem.fleet.pool(p).max_gpus - reserved.get(p, 0)]
    return None if over else gpus


def _slots(problem: Problem, pat: Patterns, copies: list[int], counts: dict[str, int],
           columns: list | None) -> list[Slot] | None:
    """Slots from the chosen patterns, each replica of the chosen counts in one of them (a
    pattern's extra members are dropped: fewer members never break a group); None where some
    replica finds no slot."""
    types = {st.key: st for st in problem.all_types()}
    next_index: dict[str, int] = defaultdict(int)
    slots: list[Slot] = []
    # Spot slots last: replicas take indices in the order dealt, and a model's first replicas are
    # its on-demand floor (model.allowed), which the columns, a relaxation, do not keep apart.
    dealt = sorted(zip(pat.columns if columns is None else columns, copies), key=lambda cn: types[cn[0][0]].pool.spot)
    for (key, reps), n in dealt:
        for _ in range(n):
            slot = Slot(types[key])
            for k in reps:
                name, count = pat.reps[k]
                if counts.get(name) != count or next_index[name] >= count:
                    continue
                rep = Rep(problem.fleet.model(name), next_index[name], count)
                if not can_add(problem, slot, rep):
                    return None  # never: the pattern was admitted whole
                slot.reps.append(rep)
                next_index[name] += 1
            if slot.reps:
                slots.append(slot)
    if any(next_index[name] < n for name, n in counts.items()):
        return None
    return slots


def shared_cost(problem: Problem, gpus: list[Gpu]) -> float:
    return cost_of(problem, gpu_counts(problem, [g for g in gpus if not g.multi]))


def _master(problem: Problem, pat: Patterns, reserved: dict[str, int], upper: float, integer: bool,
            columns: list | None = None, spread: bool = False, apart: bool = False):
    """The master problem over the columns (``columns``: some of ``pat.columns``, default all):
    (solver, x per column, y per replica class). ``integer``: a MIP (HiGHS), else an LP (GLOP)
    to dive on. ``spread``: a model's replicas in a pool's MIG slots are at most the pool's MIG
    GPUs (one replica of a model per GPU); a relaxation of the plan only where the columns hold
    every group (``allgroups``), since a column's dropped extra member is counted too; for a dive
    (:func:`dive`'s second try), a packing rule the dealing needs, where that count only makes it
    stricter. ``apart``:
    a model with ``min_replicas >= 2`` keeps a replica outside each pool of one node, where
    ``assemble.assign_nodes`` could not spread them (a packing rule, not a relaxation: only for
    the packing, and only over every group, where a column without the model exists)."""
    fleet = problem.fleet
    solver = pywraplp.Solver.CreateSolver("HIGHS" if integer else "GLOP")
    if solver is None:  # pragma: no cover - OR-Tools ships both
        return None
    # Written straight into OR-Tools' model proto (``_Program``) and loaded whole: through
    # pywraplp's natural API, 222,871 groups' master (family-1000043-multilingual-28) took 19 s to
    # build for a 2-s LP, and 7.7 s term by term.
    lp = _Program()
    mig_gpus: dict[str, list] = defaultdict(list)
    cost: list[tuple[int, float]] = []
    slots_of: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for p in fleet.pools:
        zs = []
        room = max(0, p.max_gpus - reserved.get(p.name, 0))  # the pool, less the multi-GPU replicas
        for cnt, _ in pat.layouts[p.name]:
            z = lp.var(0, room, integer, cost=p.cost_per_gpu_hour)
            zs.append((z, 1.0))
            cost.append((z, p.cost_per_gpu_hour))
            if WHOLE not in cnt:
                mig_gpus[p.name].append((z, -1.0))
            for prof, n in cnt.items():
                slots_of[f"{p.name}/{prof}"].append((z, -float(n)))
        lp.row(-math.inf, room, zs)
    cols = pat.columns if columns is None else columns
    count = [n for _, n in pat.reps]
    x = [lp.var(0, min(map(count.__getitem__, reps)), integer) for _, reps in cols]
    y = {k: lp.var(0, 1, integer) for k in range(len(pat.reps))}
    used: dict[str, list] = defaultdict(list)
    holds: dict[int, list] = defaultdict(list)
    on_floor: dict[int, list] = defaultdict(list)  # per floor row (Patterns.floor_rows)
    floors = pat._floor_index
    for j, (key, reps) in enumerate(cols):
        term = (x[j], 1.0)
        used[key].append(term)
        pool = pat.types[key].st.pool.name
        for k in reps:
            holds[k].append(term)
            if floors and (k, pool) in floors:
                on_floor[floors[k, pool]].append(term)
    for key, xs in used.items():
        lp.row(-math.inf, 0.0, xs + slots_of[key])  # patterns run on slots the layouts provide
    if spread:
        on_mig: dict[tuple[str, str], list] = defaultdict(list)
        for j, (key, reps) in enumerate(cols):
            st = pat.types[key].st
            if st.profile != WHOLE:
                for k in reps:
                    on_mig[pat.reps[k][0], st.pool.name].append((x[j], 1.0))
        for (name, pool), xs in on_mig.items():
            if len(xs) > 1:
                lp.row(-math.inf, 0.0, xs + mig_gpus[pool])
    for name in pat.models:
        lp.row(1.0, 1.0, [(y[k], 1.0) for k in pat.model_reps[name]])  # one replica count per model
    for k, (name, n) in enumerate(pat.reps):
        lp.row(0.0, math.inf, holds[k] + [(y[k], -float(n))])  # every replica of the chosen count has a slot
    if apart:
        for k, (name, n) in enumerate(pat.reps):
            if fleet.model(name).min_replicas < 2:
                continue
            in_pool: dict[str, list] = defaultdict(list)
            for j, (key, reps) in enumerate(cols):
                pool = pat.types[key].st.pool
                if pool.max_nodes == 1 and k in reps:
                    in_pool[pool.name].append((x[j], 1.0))
            for xs in in_pool.values():
                lp.row(-math.inf, 0.0, xs + [(y[k], -float(n - 1))])
    # Floor rows (Patterns.floor_rows): at most ``most`` replicas of the count on a spot pool, or
    # the dealing (floor replicas first, on-demand slots first) finds a floor replica on spot; on a
    # pool of one node, the spread rule's (``Patterns.apart``, the ``apart`` rows above restated
    # for a master over columns of both kinds of plan, ``allgroups``).
    for r, (k, _, most) in enumerate(pat.floor_rows):
        if on_floor[r]:
            lp.row(-math.inf, 0.0, on_floor[r] + [(y[k], -float(most))])
    if math.isfinite(upper):
        lp.row(-math.inf, upper - 1e-6, cost)  # only a cheaper packing is of use
    solver.LoadModelFromProto(lp.proto)
    v = solver.variables()
    return solver, [v[j] for j in x], {k: v[j] for k, j in y.items()}


class _Program:
    """A linear program written into OR-Tools' model proto (a minimisation): variables by index,
    rows as terms; a variable named twice in a row gets the sum of its terms."""

    def __init__(self) -> None:
        self.proto = linear_solver_pb2.MPModelProto()
        self.n = 0

    def var(self, lo: float, hi: float, integer: bool, cost: float = 0.0) -> int:
        v = self.proto.variable.add()
        v.lower_bound, v.upper_bound, v.is_integer, v.objective_coefficient = lo, hi, integer, cost
        self.n += 1
        return self.n - 1

    def row(self, lo: float, hi: float, terms: list[tuple[int, float]]) -> None:
        r = self.proto.constraint.add()
        r.lower_bound, r.upper_bound = lo, hi
        if len(terms) > ROW_ARRAYS:
            # A row over every group (a replica class's, the budget's) has up to 10^5 terms: summed
            # with numpy, in the same order as below, so the proto is the same (family-1000043's
            # master: 3.4 s of row building before, over 222,871 groups).
            index = np.fromiter((i for i, _ in terms), dtype=np.int64, count=len(terms))
            value = np.fromiter((c for _, c in terms), dtype=float, count=len(terms))
            distinct, where = np.unique(index, return_inverse=True)
            summed = np.bincount(where, weights=value, minlength=distinct.size)
            kept = summed != 0.0
            r.var_index.extend(distinct[kept].tolist())
            r.coefficient.extend(summed[kept].tolist())
            return
        coef: dict[int, float] = {}
        for i, c in terms:
            coef[i] = coef.get(i, 0.0) + c
        kept = sorted((i, c) for i, c in coef.items() if c != 0.0)
        r.var_index.extend([i for i, _ in kept])
        r.coefficient.extend([c for _, c in kept])


ROW_ARRAYS = 64
"""Terms past which :meth:`_Program.row` sums a row with numpy rather than a dict."""


def dive(problem: Problem, pat: Patterns, reserved: dict[str, int], time_limit: float,
         upper: float, share: float = DIVE_SHARES[0], until: float = math.inf) -> list[Gpu] | None:
    """A packing by diving on the master LP (:func:`_dive_lp`), dealt onto GPUs (:func:`_deal`).
    The LP counts a pool's slots against its GPUs, but the dealing puts one replica of a model on
    a MIG GPU, and can need more GPUs than the pool has: family-3600116-mixed-81's dives ended on
    slots that took 21 GPUs of a 20-GPU pool, and their packing (237.90/h, the LP's value) was
    dropped for one of 261.12/h. Where the dealing finds no room, the dive runs once more with that
    rule in its LP (``_master(spread=True)``), within what is left of its count and its clock, so
    that a dive takes no more time than it did. As GPUs, or None; ``upper`` is not used (same
    signature as :func:`integer_master`): the caller compares costs.

    long-tail (200 models, 3,300 columns): 62.21/h in 1.7 s where the greedy starts and CP-SAT
    reached 65.08/h and the MIP over the same columns found nothing in 60 s (LP 58.07/h).
    """
    # The dive ends when all is whole, or at its count (``DIVE_WORK``); the clock is a guard for a
    # much slower machine. At twice its share and no count, generated-2000's dive (26.1 s of a
    # 26.9-s guard on an idle 2-core machine) gave up on a machine a little busier, and the plan
    # cost 563.07/h, not 533.34/h: the plan hung on the load.
    end = problem.guard(min(until, time.monotonic() + DIVE_GUARD * time_limit))  # ``until``: the plan's wall-clock cap
    kept = kept_columns(pat, DIVE_COLUMNS)
    columns = None if kept is None else [pat.columns[j] for j in kept]
    left = DIVE_WORK * time_limit
    for spread in (False, True):
        found = _dive_lp(problem, pat, reserved, columns, share, end, left, spread)
        if found is None:
            return None
        copies, chosen, work = found
        dealt = _deal(problem, pat, copies, chosen, reserved, columns)
        if dealt is not None:
            return dealt
        left -= work
    return None


def _dive_lp(problem: Problem, pat: Patterns, reserved: dict[str, int], columns: list | None, share: float,
             end: float, allowed: float, spread: bool) -> tuple[list[int], dict[str, int], float] | None:
    """The dive itself: solve the master LP; fix every column's whole part and every model whose
    replica count the LP decided; where nothing is whole, the most-used fractional count, else the
    most-used fractional column; solve again, until slots and counts are whole. Each step
    re-solves a warm LP over the same columns. Raising a column's lower bound never uncovers a
    model (covering is ``>=``); a forced fix that leaves no room in the pools is undone and the
    column (or count) held where it was. (copies per column, the replica counts, the counted
    seconds taken), or None where the count ``allowed`` or the clock ``end`` runs out first.
    Re-pricing columns at each step's duals was tried: slower, and on long-tail no cheaper."""
    # No cost cap in the LP: a dive pushed past ``upper`` midway may still end below it (the
    # caller keeps only a cheaper packing); with the cap, such a dive just failed.
    built = _master(problem, pat, reserved, math.inf, integer=False, columns=columns, spread=spread)
    if built is None:
        return None
    solver, x, y = built
    eps = 1e-6
    forced: list = []  # the last fixes the LP did not already hold (var, its lower bound before)
    one_at_a_time = False
    rows, size = solver.NumConstraints(), solver.NumVariables() + solver.NumConstraints()
    work = 0.0  # counted seconds: a dive ends at a number of steps that does not hang on the load
    while True:
        now = time.monotonic()
        if work > allowed or problem.past(end, DIVE):
            return None
        first = work == 0.0
        # One LP gets the iterations its count has left (the first: what lets the dive go on), and
        # the clock's: without them one LP GLOP cycles on would hang the plan, as the Lagrangian's
        # GPU part did (``patterns.POOLS_PART_ITERATIONS``).
        most = _iterations_left((allowed / max(1.0, DIVE_FIRST_TIMES) if first else allowed) - work, size, rows)
        solver.SetSolverSpecificParametersAsString(f"max_number_of_iterations: {most}")
        solver.SetTimeLimit(max(1, int(1000 * min(end - now, 1e6))))
        status = solver.Solve()
        ran = solver.iterations()
        work += DIVE_SOLVE_S * size + DIVE_ITER_S * rows * ran
        if first and DIVE_FIRST_TIMES * work > allowed:
            return None  # the first LP alone says the dive cannot end within its count
        if status != pywraplp.Solver.OPTIMAL and (ran >= most or problem.past(end, DIVE)):
            return None  # stopped by its count or the clock, not shown infeasible
        if status != pywraplp.Solver.OPTIMAL:
            if not forced:
                return None
            for var, lb in forced:
                var.SetLb(lb)
            if len(forced) == 1:
                forced[0][0].SetUb(forced[0][1])  # that fix left no room in the pools: never again
            one_at_a_time = one_at_a_time or len(forced) > 1  # several left none: one by one now
            forced = []
            continue
        xv = [v.solution_value() for v in x]
        yv = {k: v.solution_value() for k, v in y.items()}
        frac_x = [(v - math.floor(v), j) for j, v in enumerate(xv) if v - math.floor(v + eps) > eps]
        frac_y = [(yv[k], k) for k in yv if eps < yv[k] < 1 - eps]
        if not frac_x and not frac_y:
            break
        fixed = False  # fixes the LP's solution already holds: they never make it infeasible
        for j, v in enumerate(xv):
            if math.floor(v + eps) > x[j].lb() + 0.5:
                x[j].SetLb(math.floor(v + eps))
                fixed = True
        for k, v in yv.items():
            if v > 1 - eps and y[k].lb() < 0.5:
                y[k].SetLb(1.0)
                fixed = True
        forced = []
        if fixed:
            continue
        if frac_y:
            todo = [(y[max(frac_y)[1]], 1.0)]
        else:
            # The most-used fractional columns rounded up together (a share of them, so that a
            # dive over thousands of columns takes tens of LPs, not hundreds).
            most = sorted(frac_x, reverse=True)[:1 if one_at_a_time else max(1, int(share * len(frac_x)))]
            todo = [(x[j], math.ceil(xv[j])) for _, j in most]
        for var, value in todo:
            forced.append((var, var.lb()))
            var.SetLb(value)
    chosen = {pat.reps[k][0]: pat.reps[k][1] for k in y if yv[k] > 0.5}
    return [round(v) for v in xv], chosen, work


def _iterations_left(left: float, size: int, rows: int) -> int:
    """Simplex iterations a dive's LP may take with ``left`` counted seconds
    (``DIVE_SOLVE_S``, ``DIVE_ITER_S``), at least one."""
    return max(1, math.ceil((left - DIVE_SOLVE_S * size) / (DIVE_ITER_S * max(1, rows))))


def kept_columns(pat: Patterns, most: int) -> list[int] | None:
    """The columns a dive (``most``: ``DIVE_COLUMNS``) or the integer master (``MASTER_COLUMNS``)
    keeps: all up to ``most``; past that, those of least reduced
    cost at the column generation's last duals (the LP's own columns have none), and each
    replica's two best columns, so that every replica can still be covered. None: all.
    generated-500's 12,000 columns took 0.24 s an LP and 32 s a dive."""
    if len(pat.columns) <= most or pat.duals is None:
        return None
    mu, pi = pat.duals
    rc = np.array([pi.get(key, 0.0) - float(mu[list(reps)].sum()) for key, reps in pat.columns])
    order = np.argsort(rc, kind="stable")
    keep = set(order[:most].tolist())
    holders: dict[int, list[int]] = defaultdict(list)  # replica class: its columns, least reduced cost first
    for j in order.tolist():
        for k in pat.columns[j][1]:
            holders[k].append(j)
    for k in range(len(pat.reps)):
        have = sum(1 for j in holders[k] if j in keep)
        for j in holders[k]:
            if have >= 2:
                break
            if j not in keep:
                keep.add(j)
                have += 1
    return sorted(keep)
