"""A lower bound on the cost of any plan: the aggregate relaxation, solved as a small MIP.

Every feasible plan satisfies these constraints, so their optimum can only be cheaper:

* ``z[p, L]`` GPUs of pool ``p`` with layout ``L`` (integer); ``N[p, k] = sum_L cnt_L(k) z[p, L]``
  instances of profile ``k`` exist;
* model ``m`` puts ``q[m, t]`` replicas (continuous) and ``v[m, t]`` rps on slot type ``t``:
  ``sum_t v = peak``, ``v <= cap_t q`` (no replica serves more than it can alone),
  ``sum_t q >= n_lb`` and ``q <= N`` (one replica of a model per slot);
* per slot type, memory ``sum mem q <= mem_t N`` and time ``sum T <= u N``: in any slot, a
  member at rate ``r`` takes at least ``A / d + per r`` of the duty cycle ``d``, and ``d`` is at
  most ``(slo - A) / (1 + per r)`` and ``(max_batch - 1) / r``; each gives a lower bound on the
  share that is linear in ``r``, so ``T >= A/(slo-A) q + slo/(slo-A) per v`` and
  ``T >= (A/(max_batch-1) + per) v`` hold for the sums over a model's replicas.

Multi-GPU replicas are never shared, so their exact cheapest cost is added as a constant.
``docs/planner.md`` gives the argument in full. The MIP's proven bound is used even when SCIP
stops at its time limit, so the number is always a valid bound.
"""

from __future__ import annotations

import math

from ortools.linear_solver import pywraplp

from packer.planner.cpsat import _layouts
from packer.planner.model import Problem
from packer.slot import latency_scale


def lower_bound(problem: Problem, multi_cost: float, time_limit: float) -> tuple[float, str]:
    """The relaxation's LP bound (always quick), raised by its MIP bound when SCIP gets further."""
    lp = _solve(problem, time_limit, integer=False)
    mip = _solve(problem, time_limit, integer=True)
    best = max((b for b in (lp, mip) if b is not None), key=lambda b: b[0], default=(0.0, "none"))
    return multi_cost + best[0], best[1]


def _solve(problem: Problem, time_limit: float, *, integer: bool) -> tuple[float, str] | None:
    fleet = problem.fleet
    solver = pywraplp.Solver.CreateSolver("SCIP" if integer else "GLOP")
    if solver is None:  # pragma: no cover - OR-Tools always ships both
        return None
    solver.SetTimeLimit(int(time_limit * 1000))
    inf = solver.infinity()
    var = solver.IntVar if integer else solver.NumVar
    N: dict[str, object] = {}
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
    mem_terms: dict[str, list] = {k: [] for k in N}
    time_terms: dict[str, list] = {k: [] for k in N}
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
        for key, (st, cap) in caps.items():
            q = solver.NumVar(0, inf, "")
            v = solver.NumVar(0, inf, "")
            solver.Add(v <= cap * q)
            solver.Add(q <= N[key])
            base, per = latency_scale(m, st)
            A = base + per
            # Per replica at rate r the cycle d obeys d <= (slo - A) / (1 + per r) and
            # d <= (max_batch - 1) / r, and it takes A / d + per r of it: both lower bounds are
            # linear in r, so their sums over replicas are too (see the module docstring).
            t = solver.NumVar(0, inf, "")
            solver.Add(t >= (A / (m.slo_ms - A)) * q + (m.slo_ms / (m.slo_ms - A)) * (per / 1000.0) * v)
            if m.max_batch > 1:
                solver.Add(t >= (A / ((m.max_batch - 1) * 1000.0) + per / 1000.0) * v)
            mem_terms[key].append(m.memory_gb * q)
            time_terms[key].append(t)
            qs.append(q)
            vs.append(v)
        solver.Add(sum(vs) >= peak)
        solver.Add(sum(qs) >= n_lb)
    for p in fleet.pools:
        for st in problem.types[p.name]:
            if mem_terms[st.key]:
                solver.Add(sum(mem_terms[st.key]) <= st.memory_gb * N[st.key])
                solver.Add(sum(time_terms[st.key]) <= problem.u * N[st.key])
    solver.Minimize(cost)
    status = solver.Solve()
    name = "aggregate MIP" if integer else "aggregate LP"
    if status == pywraplp.Solver.OPTIMAL:
        return solver.Objective().Value(), f"{name} (optimal)"
    if integer and status == pywraplp.Solver.FEASIBLE:
        bound = solver.Objective().BestBound()
        if math.isfinite(bound):
            return max(0.0, bound), f"{name} (proven bound at time limit)"
    return None
