"""An exact search for a cheaper plan: when it finds none, the plan is proven optimal.

The aggregate relaxation (``bound.py``) pools the time and memory of all slots of a kind, so it
does not see bin packing: on the multilingual example it lets six L4s carry streaming load that no
packing fits onto six, and reports a gap that may or may not be real. This module asks CP-SAT the
exact question for fleets small enough to answer it: *can any plan be bought for less?*

Every plan buys whole GPUs, so a cheaper plan fits inside one of the *maximal purchases* that cost
less than the plan (GPU counts per pool where one more GPU of any pool would cost as much as the
plan, or exceed the pool). Purchases cheaper than the relaxation's bound need no search. For each
other one, a CP-SAT model asks whether the fleet fits on it. The model is a relaxation of the
planning problem, so an infeasible answer is a proof:

* a model runs ``n`` replicas, any ``n`` from ``min_replicas`` up to one per GPU, each at the rate
  ``rho = peak / n`` the router gives it: one integer ``n`` and one integer rate per model,
  linked by ``n * rho >= Q - n`` (``rho`` in ``peak / Q`` units, rounded down). Replicas of a model
  are one Boolean per slot, not one per replica, so no permutations of them are searched, and no
  replica count has to be enumerated;
* the GPUs of the purchase, each cut into the whole GPU or a maximal MIG layout (a smaller layout's
  instances are a subset of a maximal one's);
* per slot: memory (weights rounded down, capacity up); one replica of a model; mixed workload
  kinds only where the pool time-slices; the duty cycle lies in one cell ``(D_(k-1), D_k]`` of a
  geometric grid; a member's rate must let its own cycle limit exceed ``D_(k-1)`` (SLO, and
  the turns its ``max_batch`` allows: ``slot.own_limit``), and it is charged
  ``A / D_k + per * rho`` of the cycle, never more than at the real cycle, rounded down;
* replicas of a model in a pool at most the pool's GPUs; slots of one type are interchangeable, so
  they are ordered by memory.

Whatever a real plan satisfies, this model satisfies too, so "infeasible" on every purchase means
no plan costs less. The proof covers the planning problem as the planner states it: the slot maths
of ``docs/slot-maths.md`` and traffic spread evenly over a model's replicas.
"""

from __future__ import annotations

import itertools
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field

from ortools.sat.python import cp_model

from packer.fleet import Model
from packer.planner.cpsat import _layouts
from packer.planner.model import Problem
from packer.slot import (LONE_RELAXED_HI, SlotType, duty_window, item, latency_scale, lone_capacity, relaxed_limit,
                         turn_table)

GRID = 1.02
"""Ratio of the duty-cycle grid: a member is charged at the top of its cell, so at most 2 % of
its fixed per-batch time goes uncounted; a finer grid makes the model larger."""
SCALE = 1_000_000
"""Compute units per duty cycle."""
Q = 10_000
"""Rate units per model: ``rho = Q`` is the model's whole peak."""
MAX_SLOTS = 60
MAX_MODELS = 60
MAX_PURCHASES = 12
WALL_GUARD = 4
"""Wall-clock seconds allowed per deterministic second before a search is cut short: only a much
slower or busier machine than this one (about 1 : 1 here) reaches it."""
EXACT = "the exact search"
"""The stage ``Problem.past`` names where the wall clock ends it before its deterministic time."""
QUICK_LOOK = 0.5
"""Deterministic seconds of the first look at each purchase: most are settled within it (on
multilingual two of three in 0.5 s), and the hard ones share what is left."""


@dataclass(frozen=True)
class Proof:
    bound: float
    """A lower bound on what the shared models' GPUs cost in every plan (per hour)."""
    optimal: bool
    """No plan costs less than the one given."""
    ruled_out: tuple[dict[str, int], ...] = ()
    """Purchases shown too small for the fleet."""
    open: tuple[dict[str, int], ...] = ()
    """Purchases the search could not settle in its time."""
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def _cell(hi: float) -> int:
    """The grid cell ``k`` with ``hi`` in ``(GRID^(k-1), GRID^k]``."""
    k = math.ceil(math.log(hi) / math.log(GRID))
    while GRID ** k < hi:
        k += 1
    while GRID ** (k - 1) >= hi:
        k -= 1
    return k


def maximal_purchases(prices: dict[str, float], limits: dict[str, int], below: float) -> list[dict[str, int]]:
    """GPU counts per pool costing less than ``below`` to which no GPU can be added."""
    names = [n for n in prices if limits.get(n, 0) > 0]
    out = []
    for combo in itertools.product(*(range(limits[n] + 1) for n in names)):
        c = sum(k * prices[n] for k, n in zip(combo, names))
        if c >= below - 1e-9:
            continue
        if all(k == limits[n] or c + prices[n] >= below - 1e-9 for k, n in zip(combo, names)):
            out.append(dict(zip(names, combo)))
    return out


def purchase_cost(prices: dict[str, float], counts: dict[str, int]) -> float:
    return sum(prices[n] * k for n, k in counts.items())


def prove(problem: Problem, cost: float, lower: float, time_limit: float, *,
          max_purchases: int = MAX_PURCHASES, stop_on_fit: bool = False,
          wall_s: float | None = None) -> Proof | None:
    """Look for a packing of the shared models on GPUs that cost less than ``cost``.

    ``cost`` and ``lower`` count the shared models' GPUs only: the caller takes off a lower bound
    on the multi-GPU models' cost (``solve.multi_floor``), and every pool is searched whole, since
    where the multi-GPU models sit is not fixed by any one plan. Returns None when the fleet is too
    large for the exact model or has more than ``max_purchases`` purchases to rule out (``why_not``). With
    ``stop_on_fit`` the look at the maximal purchases ends at the first the fleet fits on: no proof
    is possible. The time left then goes to the purchases inside those left open, cheapest first
    (:func:`_cheapest_left`): each shown too small raises the bound, up to the first the fleet fits
    on or that is not settled. On three 450-rps models of L4s, the two L4s the fleet fits on
    were the whole search, and the bound stayed at the relaxation's 0.80/h; one L4 is ruled out
    below them, and the bound is 1.60/h.
    """
    t0 = time.monotonic()
    todo, reason = _searchable(problem, cost, lower, max_purchases)
    if reason is not None:
        return None
    prices = {p.name: p.cost_per_gpu_hour for p in problem.fleet.pools}
    ruled, open_, fitted = [], [], []
    # Two rounds: a short look at every purchase settles the easy ones, the rest share what is left.
    # Time is CP-SAT's deterministic time, so the verdicts do not depend on the machine's load; the
    # wall clock only stops a much slower machine.
    spent: list[float] = []
    # A default search inside a plan's budget gets a wall-clock cap of its own (``wall_s``): on a
    # busy machine deterministic seconds ran 8x slower than the wall clock (47 s for 6).
    wall = wall_s if wall_s is not None else WALL_GUARD * time_limit + 5
    pending = sorted(todo, key=lambda c: purchase_cost(prices, c))
    for rnd in (0, 1):
        still = []
        for i, counts in enumerate(pending):
            left = time_limit - sum(spent)
            share = left / (len(pending) - i)
            if rnd == 0 and len(pending) > 1:
                share = min(share / 4, QUICK_LOOK)
            elapsed = time.monotonic() - t0
            slow = problem.past(t0 + wall, EXACT)
            verdict = (fits(problem, counts, share, spent, wall_s=max(0.1, wall - elapsed))
                       if share > 0.05 and not slow else None)
            if verdict is False:
                ruled.append(counts)
            elif verdict is True:
                open_.append(counts)
                fitted.append(counts)
                if stop_on_fit:
                    still += pending[i + 1:]
                    break
            else:
                still.append(counts)
        pending = still
        if not pending or stop_on_fit and open_:
            break
    open_ += pending
    # Below the purchases left open: the cheapest purchase inside one of them and inside no
    # ruled-out one bounds every plan; each such purchase shown too small raises the bound.
    known = {_key(c) for c in open_}
    while True:
        below = _cheapest_left(prices, open_, ruled, lower)
        if below is None or _key(below[1]) in known:
            break
        left, elapsed = time_limit - sum(spent), time.monotonic() - t0
        if left <= 0.05 or problem.past(t0 + wall, EXACT):
            break
        counts = below[1]
        known.add(_key(counts))
        verdict = fits(problem, counts, left, spent, wall_s=max(0.1, wall - elapsed))
        if verdict is not False:
            if verdict is True:
                fitted.append(counts)
            break
        ruled.append(counts)
    # ``below`` is still the cheapest purchase left: only a purchase ruled out moves it.
    bound = cost if below is None else max(lower, below[0])
    notes = ["the exact model fits the fleet on " + " and on ".join(_fmt(c) for c in fitted)
             + "; a cheaper plan may exist"] if fitted else []
    return Proof(bound, below is None, tuple(ruled), tuple(open_), time.monotonic() - t0, notes)


LEFT_FOR_PROOF = "left for the exact search (`--prove`)"
"""How a bound's description says that ``--prove`` could settle the gap; ``packer plan`` hints at
it then, and only then."""


def why_not(problem: Problem, cost: float, lower: float, max_purchases: int = MAX_PURCHASES) -> str | None:
    """Why ``prove`` would not search (its words for the plan's bound), or None when it would."""
    return _searchable(problem, cost, lower, max_purchases)[1]


def purchases_left(problem: Problem, cost: float, lower: float) -> int | None:
    """How many cheaper purchases ``prove`` would have to rule out; None where it would not search."""
    todo, reason = _searchable(problem, cost, lower, MAX_PURCHASES)
    return None if reason is not None else len(todo)


def _searchable(problem: Problem, cost: float, lower: float,
                max_purchases: int) -> tuple[list[dict[str, int]], str | None]:
    """The purchases ``prove`` would rule out, and why it would not search (None: it would). One
    enumeration of the purchases serves both, and the search itself."""
    shared = len(problem.shared_models)
    if shared > MAX_MODELS:
        return [], f"{shared} shared models, more than the exact model's {MAX_MODELS}"
    todo = _to_rule_out(problem, {p.name: p.cost_per_gpu_hour for p in problem.fleet.pools}, cost, lower)
    if todo is None:
        return [], "too many GPU combinations below the plan's cost to enumerate"
    if len(todo) > max_purchases:
        return todo, f"{len(todo)} cheaper GPU purchases to rule out, more than its {max_purchases}"
    slots = [len(_slots(problem, c)) for c in todo]
    if slots and min(slots) > MAX_SLOTS:
        return todo, (f"the cheaper purchases cut into {min(slots)} or more slots (every MIG profile counted), "
                      f"more than the exact model's {MAX_SLOTS}")
    return todo, None


def _to_rule_out(problem: Problem, prices: dict[str, float], cost: float, lower: float) -> list[dict[str, int]] | None:
    """The maximal purchases cheaper than ``cost`` that the relaxation does not already rule out
    (a plan on them would cost less than its bound ``lower``); None when there are too many GPU
    combinations to enumerate."""
    limits = {p.name: min(p.max_gpus, int(cost / p.cost_per_gpu_hour + 1e-9))
              for p in problem.fleet.pools}
    if math.prod(v + 1 for v in limits.values()) > 100_000:
        return None
    return [c for c in maximal_purchases(prices, limits, cost) if purchase_cost(prices, c) >= lower - 1e-9]


def _cheapest_left(prices: dict[str, float], open_: list[dict[str, int]], ruled: list[dict[str, int]],
                   lower: float) -> tuple[float, dict[str, int]] | None:
    """The cheapest purchase costing ``lower`` or more inside some unsettled (or fitting) one and
    inside no ruled-out one, with its cost: a lower bound on every plan. None where there is none:
    then no plan costs less than the plan searched below. A purchase inside a ruled-out one is
    ruled out too (fewer GPUs of every pool fit no more)."""
    best: tuple[float, dict[str, int]] | None = None
    for o in open_:
        names = list(o)
        for combo in itertools.product(*(range(o[n] + 1) for n in names)):
            c = purchase_cost(prices, dict(zip(names, combo)))
            if c < lower - 1e-9 or (best is not None and c >= best[0] - 1e-12):
                continue
            if any(all(k <= r.get(n, 0) for n, k in zip(names, combo)) for r in ruled):
                continue
            best = (c, dict(zip(names, combo)))
    return best


def _key(counts: dict[str, int]) -> tuple[tuple[str, int], ...]:
    return tuple(sorted((n, k) for n, k in counts.items() if k))


def _fmt(counts: dict[str, int]) -> str:
    return " + ".join(f"{k} {n}" for n, k in counts.items() if k) or "no GPUs"


def _slots(problem: Problem, counts: dict[str, int]) -> list[tuple[SlotType, int]]:
    slots = []
    for name, g in counts.items():
        if g <= 0:
            continue
        layouts = _layouts(problem, name)
        for st in problem.types[name]:
            per_gpu = max(c[st.profile] for _, c, _ in layouts)
            slots += [(st, j) for j in range(g * per_gpu)]
    return slots


def _can_host(m: Model, st: SlotType, u: float) -> bool:
    """Could a replica of ``m`` at a vanishing rate fit this slot alone? (The slot maths' own test,
    tolerance included: a replica the planner places must never be excluded here.)"""
    if m.memory_gb > st.memory_gb + 1e-9:
        return False
    return duty_window([item(m, 0.0, st, u)], u) is not None


@dataclass
class _Exact:
    """The exact feasibility model of one purchase: data and variables, filled in by the steps of
    :func:`fits` in a fixed order (CP-SAT's search depends on the order things are added)."""

    problem: Problem
    mdl: cp_model.CpModel
    slots: list[tuple[SlotType, int]]
    gpus: int
    """GPUs in the purchase: the most replicas a model can run."""
    z: dict[tuple[str, str], cp_model.IntVar] = field(default_factory=dict)
    """``z[p, L]``: GPUs of pool ``p`` cut to layout ``L``."""
    layouts_of: dict[str, list] = field(default_factory=dict)
    active: dict[str, list] = field(default_factory=lambda: defaultdict(list))
    """``a`` per slot type: slot ``j + 1`` in use implies slot ``j`` is."""
    x: dict[tuple[str, int], cp_model.IntVar] = field(default_factory=dict)
    """``x[m, s]``: model ``m`` has a replica in slot ``s``."""
    rho: dict[str, cp_model.IntVar] = field(default_factory=dict)
    """Each model's per-replica rate, in ``peak / Q`` units."""
    mem_used: dict[int, object] = field(default_factory=dict)


def fits(problem: Problem, counts: dict[str, int], time_limit: float,
         spent: list[float] | None = None, wall_s: float | None = None) -> bool | None:
    """Does the relaxed exact model fit the shared models on these GPUs? None: not settled.

    ``time_limit`` is in CP-SAT's deterministic seconds; the time used is appended to ``spent``.
    The steps follow the module docstring's model: layouts and slots, replica counts and rates,
    per-slot constraints, symmetry, spread; then solve.
    """
    slots = _slots(problem, counts)
    if len(slots) > MAX_SLOTS:
        return None
    e = _Exact(problem, cp_model.CpModel(), slots, sum(g for g in counts.values() if g > 0))
    _exact_layouts(e, counts)
    if not _exact_replicas(e):
        return False
    by_slot: dict[int, list[str]] = defaultdict(list)
    for name, si in e.x:
        by_slot[si].append(name)
    for si in range(len(slots)):
        _exact_slot(e, si, by_slot.get(si, []))
    _exact_symmetry_and_spread(e)

    solver = cp_model.CpSolver()
    problem.cp_limits(solver, time_limit, min(WALL_GUARD * time_limit + 1, wall_s or math.inf))
    solver.parameters.num_workers = 1
    # Without the LP relaxation CP-SAT settles these feasibility questions far faster: multilingual's
    # 1 A100 + 6 L4 in 3.8 s instead of 60-75 s (its LP is weak here, and only slows propagation).
    solver.parameters.linearization_level = 0
    code = solver.Solve(e.mdl)
    problem.cp_stopped(solver, EXACT)
    if spent is not None:
        spent.append(solver.deterministic_time)
    if code == cp_model.INFEASIBLE:
        return False
    if code in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return True
    return None


def _exact_layouts(e: _Exact, counts: dict[str, int]) -> None:
    """Variables ``z`` (each GPU of the purchase whole or in a maximal MIG layout) and ``a``;
    constraint: slots in use <= the instances the layouts provide."""
    mdl = e.mdl
    for name, g in counts.items():
        if g <= 0:
            continue
        e.layouts_of[name] = _layouts(e.problem, name)
        for lname, _, _ in e.layouts_of[name]:
            e.z[(name, lname)] = mdl.NewIntVar(0, g, f"z[{name},{lname}]")
        mdl.Add(sum(e.z[(name, l)] for l, _, _ in e.layouts_of[name]) <= g)
    for st, j in e.slots:
        e.active[st.key].append(mdl.NewBoolVar(f"a[{st.key},{j}]"))
    for key, acts in e.active.items():
        for a, b in zip(acts, acts[1:]):
            mdl.AddImplication(b, a)
        st = next(s for s, _ in e.slots if s.key == key)
        mdl.Add(sum(acts) <= sum(c[st.profile] * e.z[(st.pool.name, l)] for l, c, _ in e.layouts_of[st.pool.name]))


def _exact_replicas(e: _Exact) -> bool:
    """Variables ``x``, the replica count ``n`` and rate ``rho`` of each model with traffic or a
    floor; constraint ``n * rho >= Q - n``. False when a model cannot get its least replicas."""
    mdl = e.mdl
    for m in e.problem.shared_models:
        peak = m.traffic.peak_rps
        lo = max(m.min_replicas, 1 if peak > 0 else 0)
        if lo == 0:
            continue
        xs = []
        for si, (st, _) in enumerate(e.slots):
            if _can_host(m, st, e.problem.u):
                e.x[(m.name, si)] = v = mdl.NewBoolVar(f"x[{m.name},{si}]")
                xs.append(v)
        hi = min(e.gpus, len(xs), m.max_replicas or e.gpus)
        if hi < lo:
            return False
        n = mdl.NewIntVar(lo, hi, f"n[{m.name}]")
        mdl.Add(sum(xs) == n)
        e.rho[m.name] = r = mdl.NewIntVar(0, Q // lo, f"rho[{m.name}]")
        if peak > 0:
            # rho = floor(Q / n) in a real plan, so n * rho >= Q - n.
            prod = mdl.NewIntVar(0, Q * hi, "")
            mdl.AddMultiplicationEquality(prod, [n, r])
            mdl.Add(prod >= Q - n)
    return True


def _exact_slot(e: _Exact, si: int, names: list[str]) -> None:
    """One slot: in use if anyone sits in it; memory; workload kinds; the duty cycle in one grid
    cell, each member charged ``A / D_k + per * rho`` of it and its rate within its own limit."""
    mdl, x, fleet = e.mdl, e.x, e.problem.fleet
    st, j = e.slots[si]
    a = e.active[st.key][j]
    u_cap = math.floor(SCALE * e.problem.u) + 1
    if not names:
        mdl.Add(a == 0)
        e.mem_used[si] = 0
        return
    for name in names:
        mdl.AddImplication(x[(name, si)], a)
    mem = sum(math.floor(fleet.model(name).memory_gb * 1000) * x[(name, si)] for name in names)
    mdl.Add(mem <= math.floor(st.memory_gb * 1000 + 1e-6))
    e.mem_used[si] = mem
    if not st.pool.time_slicing:
        kinds = {fleet.model(name).kind for name in names}
        if len(kinds) > 1:
            kb = mdl.NewBoolVar("")
            for name in names:
                mdl.AddImplication(x[(name, si)], kb if fleet.model(name).kind == "batch" else kb.Not())
    # The slot's cycle is at most its tightest member's limit, which is some member's limit at
    # some replica count: one cell per such limit.
    prof = {}
    cells: set[int] = set()
    for name in names:
        m = fleet.model(name)
        # The relaxation of the slot maths (packer.slot.relaxed_limit) admits every group the
        # planner's test admits, so "fits on none" still proves the plan optimal.
        its = [relaxed_limit(m, m.traffic.peak_rps / k, st, e.problem.u)
               for k in range(max(m.min_replicas, 1), e.gpus + 1)]
        prof[name] = (m, its[0][0], latency_scale(m, st)[1])
        cells |= {_cell(hi) for _, _, hi in its if hi > 0}
    cv = {k: mdl.NewBoolVar("") for k in sorted(cells)}
    mdl.Add(sum(cv.values()) == a)
    w = {}
    for name, (m, A, per) in prof.items():
        peak = m.traffic.peak_rps
        xv, r = x[(name, si)], e.rho[name]
        coef = math.floor(SCALE * per * peak / (Q * 1000.0))
        if coef > 0:
            w[name] = mdl.NewIntVar(0, SCALE, "")
            mdl.Add(w[name] >= coef * r - coef * Q * (1 - xv))
        allow = []
        lone = lone_capacity(m, st, e.problem.u)
        for k, c in cv.items():
            rmax = _max_rate(m, A, per, GRID ** (k - 1), e.problem.u, lone)
            if rmax <= 0 or math.floor(SCALE * A / GRID ** k) > u_cap:
                mdl.AddImplication(xv, c.Not())
                continue
            allow.append((k, c, min(Q, math.floor(rmax * Q / peak)) if peak > 0 else Q))
        if not allow:
            mdl.Add(xv == 0)
            continue
        mdl.Add(r <= sum(cap * c for _, c, cap in allow) + Q * (1 - xv))
    for k, c in cv.items():
        fixed = sum(math.floor(SCALE * prof[n][1] / GRID ** k) * x[(n, si)] for n in names)
        mdl.Add(fixed + sum(w.values()) <= u_cap).OnlyEnforceIf(c)


def _exact_symmetry_and_spread(e: _Exact) -> None:
    """Slots of one type are interchangeable: ordered by memory. Replicas of a model in a pool:
    at most the pool's GPUs."""
    mdl, slots, x = e.mdl, e.slots, e.x
    for si in range(len(slots) - 1):
        if slots[si][0].key == slots[si + 1][0].key and not isinstance(e.mem_used[si + 1], int):
            mdl.Add(e.mem_used[si] >= e.mem_used[si + 1])
    for name in e.layouts_of:
        gp = sum(e.z[(name, l)] for l, _, _ in e.layouts_of[name])
        per_model: dict[str, list] = defaultdict(list)
        for (mname, si), v in x.items():
            if slots[si][0].pool.name == name:
                per_model[mname].append(v)
        for vs in per_model.values():
            if len(vs) > 1:
                mdl.Add(sum(vs) <= gp)


def _max_rate(m: Model, A: float, per: float, d: float, u: float, lone: float) -> float:
    """The largest rate (rps) at which a replica's own limit exceeds ``d`` ms: the SLO (``d`` plus
    one batch), and the turns (``slot.own_limit``: some ``k`` with ``(1 + k u) d <= slo`` whose
    window ``r (1 + k u) d`` its ``k`` full batches cover). In the cell of ``slot.relaxed_limit``'s
    unbounded cycle (a replica served alone as its requests come, ``packer/queue.py``), ``lone``:
    its capacity that way (``slot.lone_capacity``, the number ``relaxed_limit`` decides by)."""
    if d <= 0:
        return math.inf
    if d * GRID >= LONE_RELAXED_HI:
        return lone
    room = (m.slo_ms - A) / d - 1.0
    if room <= 0 and room > -1e-9:  # a limit that equals the cell's floor up to rounding: keep it
        room = 1e-12
    r = room * 1000.0 / per if per > 0 else (math.inf if room > 0 else 0.0)
    mb = 0.0
    for lat, cover, sk, rounds in turn_table(m.slo_ms, m.max_batch, u).tolist():
        if lat < d * (1 - 1e-9):  # the latency limit only falls with k
            break
        mb = max(mb, cover * 1000.0 / (sk * rounds * d))
    return min(r, mb)
