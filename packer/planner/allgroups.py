"""Every group of a small fleet: the pattern LP's integer master over all of them is exact.

Column generation (``patterns.py``) ends with the groups its LP optimum uses; whole numbers of
those (``colplan``) are a packing, and the Lagrangian is a bound, but the integer optimum can need
groups the LP never priced in. On family-300014-multilingual-16 the plan cost 19.78/h against a
bound of 16.28/h: the integer master over its 198 generated columns found nothing cheaper, while
over all 2,579 groups its optimum is 16.28/h, and it deals onto 4 A100s and 3 L4s. So where a
fleet's groups are few enough to list (``EXACT_LIST``), they are all listed, and the integer
master is solved (HiGHS, ``EXACT_NODES``) over all of them where they are at most
``EXACT_COLUMNS``, else over those that reduced-cost fixing leaves (:func:`_reduced_costs`):
those a plan cheaper than the best so far may use where they are few enough, else those a plan
cheaper than a lower target may use (:func:`_fixing_target`), where the master either finds every
plan's optimum or shows that nothing costs less than the target. The master gives:

* its solution, dealt onto GPUs with the fewest MIG GPUs (``assemble.fewest_gpus``), is a packing;
* its bound (the optimum, or HiGHS's best bound where the node limit ends it) is a lower bound on
  every plan at the replica counts the planner offers: every plan's groups are among those listed,
  and every plan satisfies the master's rows, with one more than the pattern LP's: a model has at
  most one replica on each MIG GPU (``colplan._master(spread=True)``). Dropped: which slots share
  a GPU beyond that, so a master solution may not deal at its own cost.

The groups are listed by the planner's own rules (``model.can_add`` less the spot floors, which
the master keeps as rows): one replica of a model per slot, memory, workload kinds on pools that
do not time-slice, and the slot maths' duty window (``slot.duty_window``). Adding a member never
makes an infeasible group feasible, so a depth-first walk that stops at the first infeasible
extension lists every feasible group once.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
from ortools.linear_solver import pywraplp

from packer.jit import njit
from packer.planner.assemble import Gpu
from packer.planner.build import cost_of, gpu_counts
from packer.planner.colplan import _master, deal_fewest
from packer.planner.mip import Mip, solve_mip
from packer.planner.model import Problem, Rep
from packer.planner.patterns import Patterns
from packer.slot import WHOLE, _window, window

EXACT_COLUMNS = 5000
"""Most columns of the integer master: over 4,581 (multilingual-meetings) took 1.1-1.7 s of
HiGHS on this project's 2-core machine; family-300012-mixed-29's 15,805 took 23 s."""
EXACT_NODES = 500
"""Branch-and-bound nodes of the integer master: the node count, not the clock, ends it, so a
fleet gets one plan on any machine load; the clock (``WALL_FACTOR``) only guards a slower one."""
EXACT_LIST = 250_000
"""Most groups listed (about 5 µs each). Past ``EXACT_COLUMNS``, the LP over all of them (GLOP:
building and solving it took 5.2 s for family-1000043-multilingual-28's 222,871) keeps the
groups a plan below a target may use (reduced-cost fixing)."""
EXACT_S_PER_COLUMN, LIST_S_PER_GROUP, LP_S_PER_GROUP = 5e-4, 5e-6, 2.5e-5
"""Seconds charged per column of the integer master (measured: 0.1-2.3 s for 600-4,600), per
group listed, and per group in the LP that fixes them."""
LP_ITERATIONS_PER_ROW = 20
"""Most simplex iterations GLOP gets on the LP over every group (:func:`_reduced_costs`), per row:
a count, so that an LP it cycles on (as the Lagrangian's GPU part did:
``patterns.POOLS_PART_ITERATIONS``) cannot hang the plan. Measured 1.2-1.9 a row
(family-0-multilingual-32: 249 over 168,524 groups and 132 rows, 0.95 s)."""
TARGET_COLUMNS = 2500
"""Most columns of the master below a lower target (``_fixing_target``): family-1000043-
multilingual-28's 500 nodes over 4,927 took 12 s, over 2,482 7.3 s, to the same bound once
whole GPUs round it (28.85/h) and the same plan (30.21/h)."""
WALL_FACTOR = 4.0
FIX_TOL = 1e-6
"""Slack of reduced-cost fixing against the LP's rounding."""


@dataclass
class Exact:
    """What the integer master over every group gave."""

    columns: int
    """Groups listed (the master may have run over fewer: ``_reduced_costs``)."""
    bound: float | None
    """A lower bound on the shared models' GPUs in every plan (None: not solved)."""
    proven: bool
    """The master was solved to optimality (or shown to have nothing below ``upper``)."""
    gpus: list[Gpu] | None
    """The master's solution on GPUs, where it dealt within the pools. It can cost more than
    ``value``: the master's rows do not see two groups on one MIG GPU's slots holding the same
    model (family-300026-multilingual-12: 15.79/h dealt at 19.64/h). Where it does, the master
    over the whole-GPU groups alone is solved and dealt too (:func:`_whole_dealt`), and the
    cheaper dealing kept. Such a packing is still a start for the search where it is cheaper than
    the one before."""
    value: float = math.inf
    """The cost of the master's solution (its shared models' GPUs)."""
    kept: int = 0
    """Groups the master ran over: all of them, or those reduced-cost fixing left."""
    lp_only: bool = False
    """Too many groups were left for the master: ``bound`` is the LP's optimum over all of them."""
    apart_bound: float | None = None
    """Without multi-GPU models, the packing master's bound where it kept ``min_replicas >= 2``
    models off the one-node pools (``apart``): a bound on the plans that keep them so, the only
    ones the planner takes once its packing does (``solve._spread_kept``)."""
    apart_proven: bool = False
    target: float = math.inf
    """The cost below which the master looked (``_fixing_target``): the best plan's so far, or
    less where too many groups could make a plan below that."""


def every_group(problem: Problem, cap: int = EXACT_COLUMNS) -> Patterns | None:
    """The pattern LP of ``problem`` with every feasible group as a column; None past ``cap``.

    The groups are counted first (:func:`count_groups`, compiled, by the same rules): a fleet
    with more than ``cap`` is given up before any is listed. family-3800115-mixed-41 listed
    250,000 groups in 4.7 s, every one of them dropped (the plan 29.4 s of issue 14's 30)."""
    pat = Patterns(problem)
    fleet = problem.fleet
    per_type = {}
    counted = 0
    for key, ti in pat.types.items():
        st = ti.st
        items = []
        for k in ti.keys:
            name, n = pat.reps[k]
            m = fleet.model(name)
            items.append((k, m, problem.item(Rep(m, 0, n), st)))
        per_type[key] = items
        counted += _count(items, st, problem.u, cap - counted)
        if counted > cap:
            return None
    listed = 0
    for key, ti in pat.types.items():
        st = ti.st
        items = per_type[key]
        # (next item, group, memory, kinds, models, sums of A and B, least hi): a stack, not
        # recursion; the slot maths' window from running sums, as duty_window computes it
        stack = [(0, (), 0.0, frozenset(), frozenset(), 0.0, 0.0, math.inf)]
        while stack:
            start, group, mem, kinds, models, sa, sb, hi = stack.pop()
            for j in range(start, len(items)):
                k, m, it = items[j]
                if m.name in models or mem + m.memory_gb > st.memory_gb + 1e-9:
                    continue
                if not st.pool.time_slicing and kinds and m.kind not in kinds:
                    continue
                low = min(hi, it.hi)
                if window(sa + it.A, sb + it.B, low, problem.u) is None:
                    continue
                listed += 1
                if listed > cap:
                    return None
                pat.add(key, group + (k,))
                stack.append((j + 1, group + (k,), mem + m.memory_gb, kinds | {m.kind}, models | {m.name},
                              sa + it.A, sb + it.B, low))
    return pat


def _count(items: list, st, u: float, most: int) -> int:
    """:func:`count_groups` over one slot type's items (``every_group``'s ``(k, model, item)``)."""
    if not items:
        return 0
    names: dict[str, int] = {}
    kinds: dict[str, int] = {}
    model = np.array([names.setdefault(m.name, len(names)) for _, m, _ in items], dtype=np.int64)
    kind = np.array([kinds.setdefault(m.kind, len(kinds)) for _, m, _ in items], dtype=np.int64)
    return int(count_groups(np.array([m.memory_gb for _, m, _ in items], dtype=float), kind, model,
                            np.array([it.A for _, _, it in items], dtype=float),
                            np.array([it.B for _, _, it in items], dtype=float),
                            np.array([it.hi for _, _, it in items], dtype=float),
                            float(st.memory_gb), bool(st.pool.time_slicing), float(u), len(names), int(most)))


@njit(cache=True)
def count_groups(mem: np.ndarray, kind: np.ndarray, model: np.ndarray, A: np.ndarray, B: np.ndarray,
                 hi: np.ndarray, room: float, slicing: bool, u: float, models: int, most: int) -> int:
    """The groups of one slot type :func:`every_group` lists (one replica of a model, memory
    within ``room``, one workload kind where the pool does not time-slice, the slot maths' window
    from running sums, each sum in the listing's order, by ``slot.window`` compiled), stopping past
    ``most``: a depth-first walk over arrays, statement for statement the listing's rules."""
    n = mem.size
    used = np.zeros(models, dtype=np.bool_)
    pos = np.zeros(n + 1, dtype=np.int64)
    chosen = np.zeros(n + 1, dtype=np.int64)
    s_mem = np.zeros(n + 1)
    s_a = np.zeros(n + 1)
    s_b = np.zeros(n + 1)
    s_hi = np.full(n + 1, np.inf)
    s_kind = np.full(n + 1, -1, dtype=np.int64)
    count = 0
    d = 0
    while d >= 0:
        j = pos[d]
        if j >= n:
            d -= 1
            if d >= 0:
                used[model[chosen[d]]] = False
            continue
        pos[d] = j + 1
        if used[model[j]] or s_mem[d] + mem[j] > room + 1e-9:
            continue
        if not slicing and s_kind[d] >= 0 and kind[j] != s_kind[d]:
            continue
        low = min(s_hi[d], hi[j])
        sa = s_a[d] + A[j]
        sb = s_b[d] + B[j]
        if _window(sa, sb, low, u) is None:
            continue
        count += 1
        if count > most:
            return count
        chosen[d] = j
        used[model[j]] = True
        d += 1
        pos[d] = j + 1
        s_mem[d] = s_mem[d - 1] + mem[j]
        s_a[d] = sa
        s_b[d] = sb
        s_hi[d] = low
        s_kind[d] = kind[j] if s_kind[d - 1] < 0 else s_kind[d - 1]
    return count


def warm() -> None:
    """Compile :func:`count_groups` (or load it from numba's cache) before a plan's clock starts."""
    one = np.ones(2)
    count_groups(one, np.zeros(2, dtype=np.int64), np.arange(2), 0.1 * one, 0.1 * one, one, 4.0, True, 0.9, 2, 10)


def exact_master(problem: Problem, pat: Patterns, reserved: dict[str, int], upper: float,
                 seconds: float, deal: bool = True, apart: bool = False) -> Exact:
    """The integer master over ``pat``'s columns (all groups, :func:`every_group`), its bound no
    more than ``upper`` (the shared models' cost in the best plan so far), within the pools less
    ``reserved``. With ``reserved`` empty, its bound holds for every plan; with it, for the plans
    that keep the multi-GPU replicas where they are; with ``apart`` (``colplan._master``), for
    none: it is a packing rule, not a relaxation."""
    # No row ``cost < upper``: with it HiGHS found nothing in 500 nodes on
    # family-600024-multilingual-16 (7.6 s) where without it it proves 30.58/h in 2.1 s, and
    # multilingual-meetings took 3.3 s to no answer where 1.1 s proves its plan optimal.
    built = _master(problem, pat, reserved, math.inf, integer=True, spread=True, apart=apart)
    if built is None:
        return Exact(len(pat.columns), None, False, None)
    solver, x, y = built
    # No gap tolerance (``exact``); the bound is HiGHS's best bound (the dual side) in every case,
    # at its node limit too (``mip.solve_mip``: through OR-Tools both were lost there).
    found = solve_mip(solver, EXACT_NODES, max(0.5, WALL_FACTOR * seconds), exact=True)
    cols = len(pat.columns)
    # Above ``upper`` only where the plan so far uses replica counts the master is not offered,
    # or (after reduced-cost fixing) where no cheaper plan exists: either way ``upper`` bounds it.
    bound = min(found.bound, found.objective, upper)
    gpus = None
    if deal and found.values is not None:
        gpus = _dealt(problem, pat, found, x, y, reserved, seconds)
        dealt = math.inf if gpus is None else cost_of(problem, gpu_counts(problem, gpus))
        if dealt > found.objective + 1e-6:
            whole = _whole_dealt(problem, pat, reserved, seconds, apart)
            if whole is not None and cost_of(problem, gpu_counts(problem, whole)) < dealt - 1e-9:
                gpus = whole
    return Exact(cols, bound if math.isfinite(bound) else None, found.proven, gpus, found.objective)


def _whole_dealt(problem: Problem, pat: Patterns, reserved: dict[str, int], seconds: float,
                 apart: bool) -> list[Gpu] | None:
    """The master over the whole-GPU groups alone, dealt: where the master's MIG slots dealt onto
    more GPUs than its layouts counted (two replicas of a model in one GPU's slices, which its
    relaxed rule admits: family-13100401-llm-14's master at 55.58/h dealt at 64.30/h), a packing
    whose dealing is exact. The bound stays the first master's."""
    columns = [c for c in pat.columns if pat.types[c[0]].st.profile == WHOLE]
    if not columns or len(columns) == len(pat.columns):
        return None
    built = _master(problem, pat, reserved, math.inf, integer=True, columns=columns, spread=True, apart=apart)
    if built is None:
        return None
    solver, x, y = built
    found = solve_mip(solver, EXACT_NODES, max(0.5, WALL_FACTOR * seconds / 2), exact=True)
    return None if found.values is None else _dealt(problem, pat, found, x, y, reserved, seconds, columns)


def _dealt(problem: Problem, pat: Patterns, found: Mip, x: list, y: dict, reserved: dict[str, int], seconds: float,
           columns: list | None = None) -> list[Gpu] | None:
    """A solved master's columns (``columns``, default ``pat.columns``) at its chosen replica
    counts, dealt onto GPUs (``colplan.deal_fewest``)."""
    counts = {pat.reps[k][0]: pat.reps[k][1] for k in y if found.value(y[k]) > 0.5}
    return deal_fewest(problem, pat, [round(found.value(v)) for v in x], counts, reserved, seconds, columns)


def exact_groups(problem: Problem, reserved: dict[str, int], upper: float, seconds: float,
                 cap: int = EXACT_COLUMNS, listed: int = EXACT_LIST) -> tuple[Exact | None, float]:
    """Every group listed and the integer master over them (:func:`exact_master`): its packing
    within the pools less ``reserved`` and a bound over every plan (with multi-GPU models, a second
    master over the whole pools gives the bound). Past ``cap`` groups (up to ``listed``), the LP
    over all of them first (:func:`_reduced_costs`): the master then runs over the groups a
    plan below ``upper`` may use where those are at most ``cap``, else over those a plan below a
    lower target may use (``Exact.target``); where reduced costs leave no such target above the
    LP's optimum, that optimum is the bound (``Exact.lp_only``). Returns (None where the groups are too many to list, seconds to
    charge), the charge counted by the groups listed and the master's columns, not the clock."""
    began = time.monotonic()
    pat = every_group(problem, listed)
    if pat is None:
        return None, 0.0
    total = len(pat.columns)
    charge = LIST_S_PER_GROUP * total
    target = upper
    if total > cap:
        if not math.isfinite(upper):
            return None, charge
        lp, rc = _reduced_costs(problem, pat)
        charge += LP_S_PER_GROUP * total
        if lp is None:
            return None, charge
        target = _fixing_target(lp, rc, upper, cap, min(cap, TARGET_COLUMNS))
        if target <= lp + FIX_TOL:
            return Exact(total, lp, False, None, lp_only=True), charge
        pat.columns = [pat.columns[j] for j in _kept(lp, rc, target)]
    charge += EXACT_S_PER_COLUMN * len(pat.columns)
    # A min_replicas >= 2 model with every replica on a pool of one node cannot be spread over
    # nodes: the planner keeps the spread it has (``solve._spread_kept``), so the packing keeps a
    # replica apart (family-300014-multilingual-16: 16.28/h with both asr-2 replicas on the one
    # L4 node); the bound, over every plan, does not.
    apart = any(p.max_nodes == 1 for p in problem.fleet.pools) and any(
        m.min_replicas >= 2 for m in problem.shared_models)
    # The stage's wall-clock guard (``WALL_FACTOR`` times ``seconds``) covers the listing and the
    # LP too, down to half of it for the master: family-1000043-multilingual-28 spent 9 s listing
    # 222,871 groups and fixing them, and its master, ended by the guard, then took 8.8 s more
    # (the plan 27-28 s in all); with 4.4 s it ends at the same packing and bound.
    packed = exact_master(problem, pat, reserved, target,
                          max(seconds / 2, seconds - (time.monotonic() - began) / WALL_FACTOR), apart=apart)
    if problem.multi_models or apart:
        left = max(0.5, seconds - (time.monotonic() - began))
        whole = exact_master(problem, pat, {}, target, left, deal=False)
        if apart and not problem.multi_models:
            packed.apart_bound, packed.apart_proven = packed.bound, packed.proven
        packed.bound, packed.proven = whole.bound, whole.proven
        charge += EXACT_S_PER_COLUMN * len(pat.columns)
    packed.columns, packed.kept, packed.target = total, len(pat.columns), target
    if target < upper:
        # The master's optimum is every plan's only where it lies below the target; else what it
        # shows is that nothing costs less than the target (its bound is at most the target).
        packed.proven = packed.proven and packed.bound is not None and packed.bound < target - FIX_TOL
        packed.apart_proven = packed.apart_proven and packed.apart_bound is not None \
            and packed.apart_bound < target - FIX_TOL
    return packed, charge


def _reduced_costs(problem: Problem, pat: Patterns) -> tuple[float | None, np.ndarray]:
    """The LP over every group (the master's LP, ``spread`` rows, the whole pools: a bound on
    every plan) and each group's reduced cost at its optimum. A plan is an integer solution, and
    its cost is at least the LP's optimum plus the reduced cost of any group it uses (every other
    term of the LP's optimality conditions is non-negative), so a group whose reduced cost is
    more than ``T`` less the optimum is in no plan cheaper than ``T`` (reduced-cost fixing). On
    family-300022-multilingual-28, 2,226 of 54,131 groups are left below its plan's cost, and the
    master over them proves its plan (33.86/h) optimal. Returns (None, []) where GLOP does not
    solve it."""
    built = _master(problem, pat, {}, math.inf, integer=False, spread=True)
    if built is None:
        return None, np.zeros(0)
    solver, x, _ = built
    solver.SetSolverSpecificParametersAsString(
        f"max_number_of_iterations: {max(1, round(LP_ITERATIONS_PER_ROW * solver.NumConstraints()))}")
    if solver.Solve() != pywraplp.Solver.OPTIMAL:
        return None, np.zeros(0)
    return solver.Objective().Value(), np.array([v.reduced_cost() for v in x])


def _fixing_target(lp: float, rc: np.ndarray, upper: float, cap: int, lower_cap: int) -> float:
    """The cost ``T`` below which the master looks: ``upper`` (the best plan so far) where the
    groups a cheaper plan may use are at most ``cap``; else just below the reduced cost of the
    ``lower_cap + 1``-th group, so that at most ``lower_cap`` are left. The master then either finds its
    optimum below ``T`` (the optimum of every plan) or shows that no plan costs less than ``T``:
    family-300020-multilingual-28 keeps 64,885 of 64,894 groups below its plan (37.88/h), too
    many, and 2,486 below 33.65/h, over which HiGHS finds nothing cheaper than that in 1.0 s, and
    a packing at 33.95/h, the cheapest purchase above it: the plan is proven optimal."""
    if len(_kept(lp, rc, upper)) <= cap:
        return upper
    if rc.size <= lower_cap:
        return upper
    return min(upper, lp + float(np.partition(rc, lower_cap)[lower_cap]) - 2 * FIX_TOL)


def _kept(lp: float, rc: np.ndarray, target: float) -> list[int]:
    """The groups a plan cheaper than ``target`` may use (:func:`_reduced_costs`)."""
    return np.flatnonzero(rc <= target - lp + FIX_TOL).tolist()
