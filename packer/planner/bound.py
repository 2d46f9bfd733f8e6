"""A lower bound on the cost of any plan: the aggregate relaxation, solved as an LP and a MIP.

Every feasible plan satisfies these constraints, so their optimum can only be cheaper:

* ``z[p, L]`` GPUs of pool ``p`` with layout ``L`` (integer); ``N[p, k] = sum_L cnt_L(k) z[p, L]``
  instances of profile ``k`` exist;
* model ``m`` puts ``q[m, t]`` replicas (integer in the MIP, continuous in the LP) and
  ``v[m, t]`` rps on slot type ``t``:
  ``sum_t v = peak``, ``v <= cap_t q`` (no replica serves more than it can alone),
  ``sum_t q >= n_lb`` and ``q <= N`` (one replica of a model per slot);
* per slot type, memory ``sum mem q <= mem_t N`` and time ``sum T <= u N``: in any slot, a
  member at rate ``r`` takes at least ``A / d + per r`` of the duty cycle ``d``, and ``d`` is at
  most ``(slo - A) / (1 + per r)`` and ``(max_batch - 1) / r``; each gives a lower bound on the
  share that is linear in ``r``, so ``T >= A/(slo-A) q + slo/(slo-A) per v`` and
  ``T >= (A/(max_batch-1) + per) v`` hold for the sums over a model's replicas.

Slots are further split by duty-cycle class (``docs/planner.md``); in the MIP the number of slots
of each type and class is an integer too, since every slot runs one cycle. Multi-GPU replicas are
never shared, so their exact cheapest cost is added as a constant. ``docs/planner.md`` gives the
argument in full. A MIP that does not finish in time gives no bound (HiGHS reports none), and the
LP bounds stand.
"""

from __future__ import annotations

import itertools
import math
import time
from collections import defaultdict

from ortools.linear_solver import pywraplp

from packer.planner.cpsat import _layouts
from packer.planner.model import Problem
from packer.slot import latency_scale

MAX_CLASSES = 5
"""Duty-cycle classes: a slot's cycle lies in exactly one class [b_j, b_(j+1)), and its members'
shares are bounded below by A / b_(j+1). More classes give a tighter bound and a larger LP. On
long-tail 4 classes prove 24.41, 5 prove 25.37 (3.0 s with interior point), 8 and 16 no more."""
LP_SOLVER = "HIGHS"
MIP_SOLVER = "HIGHS"
CLASSES_UP_TO = 250
"""Above this many models the duty-class LP takes minutes; the one-class LP is used alone."""
MIP_CLASSES = 3
"""The MIP's integer slot counts do most of its work; fewer classes keep it to a few seconds."""
MIP_UP_TO = 60
"""Up to this many models the duty-class MIP usually finishes within a few seconds."""


def lower_bound(problem: Problem, multi_cost: float, time_limit: float) -> tuple[float, str]:
    """The relaxation's LP bound (always), raised by its duty-class MIP or LP where time allows,
    then to the cheapest whole-GPU purchase that costs at least as much.

    ``multi_cost`` must be a lower bound on what the multi-GPU models cost (``solve.multi_floor``);
    the shared models may use every GPU of a pool, since where the multi-GPU models sit is open.
    """
    # The LPs are small and finish. For small fleets the MIP (integer layouts,
    # replica and slot counts per duty class) is far tighter: it sees that a slot runs one duty
    # cycle, so a streaming model cannot use the idle half of a slot whose batch members run
    # seconds-long cycles. Cheapest first, so a slow machine still gets the LP bounds.
    start = time.monotonic()
    n = len(problem.shared_models)

    def left() -> float:
        return time_limit - (time.monotonic() - start)

    # The duty-class LP is at least as tight as the one-class LP (summing its classes gives a
    # one-class solution), so the one-class LP runs only where the other is not tried or fails.
    found = []
    if n <= CLASSES_UP_TO:
        found.append(_solve(problem, time_limit, integer=False, max_classes=MAX_CLASSES))
    if not found or found[-1] is None:
        found.append(_solve(problem, max(1.0, left()), integer=False, max_classes=1))
    if n <= MIP_UP_TO and left() > 0.2:
        found.append(_solve(problem, left(), integer=True, max_classes=MIP_CLASSES))
    best = max((b for b in found if b is not None), key=lambda b: b[0], default=(0.0, "no bound in time"))
    limits = [(p.cost_per_gpu_hour, p.max_gpus) for p in problem.fleet.pools]
    whole = whole_gpus(limits, best[0])
    if whole > best[0] + 1e-6:
        return multi_cost + whole, best[1] + f", {best[0]:.2f} rounded up to whole GPUs"
    return multi_cost + best[0], best[1]


def whole_gpus(pools: list[tuple[float, int]], target: float, max_steps: int = 1_000_000) -> float:
    """The cheapest purchase of whole GPUs (``(price, at most)`` per pool) costing ``target`` or more.

    Every plan pays for whole GPUs, so a bound between two purchasable costs rises to the upper one
    (multilingual: 1 A100 + 6 L4 = 8.90 is purchasable; long-tail's 25.37 rises to 3 A100 + 18 L4 =
    25.41). Returns ``target`` itself when the search would take more than ``max_steps``.
    """
    pools = [(p, n) for p, n in pools if n > 0 and p > 0]
    if target <= 0 or not pools:
        return target
    pools.sort(key=lambda pn: pn[1])
    *rest, (p_last, n_last) = pools
    if math.prod(n + 1 for _, n in rest) > max_steps:
        return target
    best = math.inf
    for combo in itertools.product(*(range(n + 1) for _, n in rest)):
        c = sum(k * p for k, (p, _) in zip(combo, rest))
        need = target - 1e-6 - c
        k = max(0, math.ceil(need / p_last)) if need > 0 else 0
        if k <= n_last:
            best = min(best, c + k * p_last)
    return best if math.isfinite(best) and best >= target - 1e-6 else target


def _class_bounds(problem: Problem, k: int) -> list[float]:
    """A partition of duty cycles (ms) into at most ``k`` classes, cut at the models' own limits.

    A slot's cycle is at most its tightest member's limit. The first cuts go into the widest gaps
    between the models' limits (log scale), which separate groups that cannot share a slot, such as
    streaming models (cycles of ms) and batch models (seconds); the rest at quantiles.
    """
    if k <= 1:
        return [0.0, math.inf]
    his = sorted(m.slo_ms - sum(latency_scale(m, st)) for m in problem.shared_models for st in problem.all_types()
                 if problem.capacity(m, st) > 0)
    if not his:
        return [0.0, math.inf]
    gaps = sorted(((math.log(b / a), math.sqrt(a * b)) for a, b in zip(his, his[1:]) if a > 0 and b > 2 * a),
                  reverse=True)
    cuts = {c for _, c in gaps[: max(1, (k - 1) // 2)]}
    for i in range(1, k):
        if len(cuts) >= k - 1:
            break
        cuts.add(his[min(len(his) - 1, int(len(his) * i / k))])
    return [0.0] + sorted(cuts) + [math.inf]


def _solve(problem: Problem, time_limit: float, *, integer: bool, max_classes: int) -> tuple[float, str] | None:
    fleet = problem.fleet
    backend = MIP_SOLVER if integer else LP_SOLVER
    solver = pywraplp.Solver.CreateSolver(backend)
    if solver is None:  # pragma: no cover - OR-Tools always ships both
        return None
    solver.SuppressOutput()
    if backend == "HIGHS":
        # Interior point (with crossover) solves the duty-class LPs 2-3x faster than simplex:
        # long-tail's 8-class LP in 5.4 s instead of 14 s.
        # The one-class LP stays on simplex: at 2000 models interior point did not finish in time.
        ipm = "solver=ipm\n" if not integer and max_classes > 1 else ""
        solver.SetSolverSpecificParametersAsString("output_flag=false\nlog_to_console=false\n" + ipm)
    solver.SetTimeLimit(int(time_limit * 1000))
    inf = solver.infinity()
    var = solver.IntVar if integer else solver.NumVar
    N: dict = {}  # slot type -> instances (from layouts); (type, class) -> slots in that class
    cost = 0
    for p in fleet.pools:
        layouts = _layouts(problem, p.name)
        zs = []
        for lname, cnt, _ in layouts:
            zv = var(0, p.max_gpus, f"z[{p.name},{lname}]")
            zs.append((zv, cnt))
            cost += p.cost_per_gpu_hour * zv
        solver.Add(sum(zv for zv, _ in zs) <= p.max_gpus)
        for st in problem.types[p.name]:
            N[st.key] = sum(cnt[st.profile] * zv for zv, cnt in zs if cnt[st.profile])
    bounds = _class_bounds(problem, max_classes)
    mem_terms: dict[tuple[str, int], list] = defaultdict(list)
    time_terms: dict[tuple[str, int], list] = defaultdict(list)
    for m in problem.shared_models:
        peak = m.traffic.peak_rps
        caps = {st.key: (st, problem.capacity(m, st)) for st in problem.all_types()}
        caps = {k: v for k, v in caps.items() if v[1] > 0 and k in N}
        capmax = max((c for _, c in caps.values()), default=0.0)
        n_lb = max(m.min_replicas, 1 if peak > 0 else 0)
        if peak > 0 and capmax > 0:
            n_lb = max(n_lb, math.ceil(peak / capmax - 1e-9))
        if n_lb == 0:
            continue
        qs, vs = [], []
        mbl = max(m.max_batch - 1, 1)
        for key, (st, cap) in caps.items():
            base, per = latency_scale(m, st)
            A = base + per
            d_lo, d_hi = A / problem.u, m.slo_ms - A
            for j in range(len(bounds) - 1):
                # Classes are one partition of all cycles, shared by every model, so a slot is
                # counted in exactly one class whoever its members are.
                c_lo, c_hi = max(bounds[j], d_lo), min(bounds[j + 1], d_hi)
                if c_lo > c_hi:
                    continue
                # The most one replica can serve with its cycle in [c_lo, c_hi]: SLO, max_batch
                # and compute each cap the rate (per ms), as in docs/slot-maths.md.
                cap_c = min(cap, mbl * 1000.0 / c_lo)
                if per > 0:
                    cap_c = min(cap_c, 1000.0 * min((m.slo_ms - A) / c_lo - 1, problem.u - A / c_hi) / per)
                if cap_c <= 0:
                    continue
                # In any plan a replica count and a slot count are whole numbers.
                q = var(0, inf, f"q[{m.name},{key},{j}]")
                v = solver.NumVar(0, inf, f"v[{m.name},{key},{j}]")
                solver.Add(v <= cap_c * q)
                if (key, j) not in N:
                    N[(key, j)] = var(0, inf, f"N[{key},{j}]")
                solver.Add(q <= N[(key, j)])
                # A replica at rate r with cycle d takes A / d + per r of it; d <= c_hi, and d is
                # below the SLO and max_batch limits, each linear in r (module docstring).
                t = solver.NumVar(0, inf, f"t[{m.name},{key},{j}]")
                solver.Add(t >= (A / c_hi) * q + (per / 1000.0) * v)
                solver.Add(t >= (A / (m.slo_ms - A)) * q + (m.slo_ms / (m.slo_ms - A)) * (per / 1000.0) * v)
                solver.Add(t >= (A / (mbl * 1000.0) + per / 1000.0) * v)
                mem_terms[(key, j)].append(m.memory_gb * q)
                time_terms[(key, j)].append(t)
                qs.append(q)
                vs.append(v)
        solver.Add(sum(vs) >= peak)
        solver.Add(sum(qs) >= n_lb)
    # Slots of a type are split over duty classes; each class holds its members' memory and time.
    by_type: dict[str, list] = defaultdict(list)
    mem_of = {st.key: st.memory_gb for st in problem.all_types()}
    for k in [k for k in N if isinstance(k, tuple)]:
        by_type[k[0]].append(N[k])
        solver.Add(sum(mem_terms[k]) <= mem_of[k[0]] * N[k])
        solver.Add(sum(time_terms[k]) <= problem.u * N[k])
    for k, parts in by_type.items():
        solver.Add(sum(parts) <= N[k])
    solver.Minimize(cost)
    status = solver.Solve()
    name = ("aggregate MIP" if integer else "aggregate LP") + (f", {max_classes} duty classes" if max_classes > 1 else "")
    if status == pywraplp.Solver.OPTIMAL:
        return solver.Objective().Value(), f"{name} (optimal)"
    if integer and status == pywraplp.Solver.FEASIBLE:
        bound = solver.Objective().BestBound()
        if math.isfinite(bound):
            return max(0.0, bound), f"{name} (proven bound at time limit)"
    return None
