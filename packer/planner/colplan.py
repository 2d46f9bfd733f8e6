"""A packing from the pattern LP's columns: the integer master over the patterns it generated.

The pattern LP (``patterns.py``) ends with a few thousand groups that ``slot.feasible`` admits,
among them the ones its optimum uses. Choosing whole numbers of them (price and branch) is a
packing of the whole fleet that the greedy starts, which place one replica at a time, often miss:
it sees every model's replica count and every group at once. The result is dealt onto GPUs by
``assemble.to_gpus`` (valid MIG layouts, one replica of a model per GPU) and kept only where it
fits the pools and is cheaper than the incumbent.
"""

from __future__ import annotations

import math
from collections import defaultdict

from ortools.linear_solver import pywraplp

from packer.planner.assemble import Gpu, to_gpus
from packer.planner.build import cost_of, gpu_counts
from packer.planner.model import Problem, Rep, Slot, can_add
from packer.planner.patterns import Patterns


def integer_master(problem: Problem, pat: Patterns, reserved: dict[str, int], time_limit: float,
                   upper: float) -> list[Gpu] | None:
    """The cheapest choice of whole patterns (HiGHS MIP, ``time_limit`` seconds) holding every
    shared model at one of its counts, within the pools' sizes less ``reserved`` GPUs and below
    ``upper`` (the incumbent's shared cost); as GPUs, or None where none is found or it does not
    deal onto the pools."""
    fleet = problem.fleet
    solver = pywraplp.Solver.CreateSolver("HIGHS")
    if solver is None:  # pragma: no cover - OR-Tools ships HiGHS
        return None
    solver.SuppressOutput()
    solver.SetSolverSpecificParametersAsString("output_flag=false\nlog_to_console=false\nthreads=1\n")
    solver.SetTimeLimit(int(max(0.1, time_limit) * 1000))

    # --- variables: GPUs per layout, slots per pattern, one replica count per model
    cost = 0
    slots_of: dict[str, list] = defaultdict(list)
    for p in fleet.pools:
        zs = []
        for i, (cnt, _) in enumerate(pat.layouts[p.name]):
            z = solver.IntVar(0, max(0, p.max_gpus - reserved.get(p.name, 0)), f"z[{p.name},{i}]")
            zs.append(z)
            cost += p.cost_per_gpu_hour * z
            for prof, n in cnt.items():
                slots_of[f"{p.name}/{prof}"].append(n * z)
        # The pool's size, less what the multi-GPU replicas took.
        solver.Add(sum(zs) <= max(0, p.max_gpus - reserved.get(p.name, 0)))
    x = [solver.IntVar(0, min(pat.reps[k][1] for k in reps), f"x[{j}]") for j, (_, reps) in enumerate(pat.columns)]
    y = {k: solver.BoolVar(f"y[{k}]") for k in range(len(pat.reps))}

    # --- constraints
    used: dict[str, list] = defaultdict(list)
    holds: dict[int, list] = defaultdict(list)
    for j, (key, reps) in enumerate(pat.columns):
        used[key].append(x[j])
        for k in reps:
            holds[k].append(x[j])
    for key, xs in used.items():
        solver.Add(sum(xs) <= sum(slots_of[key]))  # patterns run on slots the layouts provide
    for name in pat.models:
        solver.Add(sum(y[k] for k in pat.model_reps[name]) == 1)  # one replica count per model
    for k, (name, n) in enumerate(pat.reps):
        solver.Add(sum(holds[k]) >= n * y[k])  # every replica of the chosen count has a slot
    if math.isfinite(upper):
        solver.Add(cost <= upper - 1e-6)  # only a cheaper packing is of use

    # --- objective and solve
    solver.Minimize(cost)
    status = solver.Solve()
    if status not in (pywraplp.Solver.OPTIMAL, pywraplp.Solver.FEASIBLE):
        return None
    chosen = {pat.reps[k][0]: pat.reps[k][1] for k in y if y[k].solution_value() > 0.5}
    return _deal(problem, pat, [round(v.solution_value()) for v in x], chosen, reserved)


def _deal(problem: Problem, pat: Patterns, copies: list[int], counts: dict[str, int],
          reserved: dict[str, int]) -> list[Gpu] | None:
    """Slots from the chosen patterns, each replica of the chosen counts in one of them (a
    pattern's extra members are dropped: fewer members never break a group), then GPUs."""
    types = {st.key: st for st in problem.all_types()}
    next_index: dict[str, int] = defaultdict(int)
    slots: list[Slot] = []
    for (key, reps), n in zip(pat.columns, copies):
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
    gpus = to_gpus(problem, slots)
    over = [p for p, n in gpu_counts(problem, gpus).items()
            if n > problem.fleet.pool(p).max_gpus - reserved.get(p, 0)]
    return None if over else gpus


def shared_cost(problem: Problem, gpus: list[Gpu]) -> float:
    return cost_of(problem, gpu_counts(problem, [g for g in gpus if not g.multi]))
