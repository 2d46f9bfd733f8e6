"""``planner.mip``: integer programs stated with OR-Tools and solved by HiGHS through highspy, so that
a master stopped by its node limit still gives its incumbent and its best bound."""

from __future__ import annotations

import math
import random
import subprocess
import sys

from ortools.linear_solver import pywraplp

from packer.planner.mip import solve_mip


def _cover(seed: int, rows: int = 40, cols: int = 120):
    """A weighted covering program (odd rows covered twice), up to two copies of a column: the
    masters' shape, and not closed at HiGHS's root node at these seeds."""
    rng = random.Random(seed)
    solver = pywraplp.Solver.CreateSolver("HIGHS")
    x = [solver.IntVar(0, 2, f"x[{j}]") for j in range(cols)]
    sets = [rng.sample(range(rows), rng.randint(3, 6)) for _ in range(cols)]
    need = [1 + i % 2 for i in range(rows)]
    for i in range(rows):
        solver.Add(sum(x[j] for j in range(cols) if i in sets[j]) >= need[i])
    prices = [rng.uniform(1, 3) for _ in range(cols)]
    solver.Minimize(sum(p * v for p, v in zip(prices, x)))
    return solver, x, sets, need, prices


def test_a_master_stopped_by_its_node_limit_keeps_its_incumbent_and_its_best_bound() -> None:
    """Through OR-Tools' wrapper, HiGHS stopped by ``mip_max_nodes`` reports an unknown status and
    gives neither; here, after one node, a covering solution and a bound on the optimum."""
    for seed in (1, 4):
        solver, x, sets, need, prices = _cover(seed)
        cut = solve_mip(solver, 1, 30.0)
        assert not cut.proven and cut.values is not None
        values = [round(cut.value(v)) for v in x]
        for i, n in enumerate(need):
            assert sum(values[j] for j in range(len(x)) if i in sets[j]) >= n
        assert math.isclose(sum(p * v for p, v in zip(prices, values)), cut.objective, abs_tol=1e-6)
        full = solve_mip(solver, 10**6, 60.0, exact=True)
        assert full.proven
        assert cut.bound <= full.objective + 1e-9 <= cut.objective + 1e-9
        assert cut.bound < full.bound - 1e-6  # the node limit did stop it short


def test_an_infeasible_master_has_no_solution_and_bounds_everything() -> None:
    solver = pywraplp.Solver.CreateSolver("HIGHS")
    x = solver.IntVar(0, 3, "x")
    solver.Add(2 * x >= 7)
    solver.Minimize(x)
    found = solve_mip(solver, 100, 5.0)
    assert found.values is None and found.bound == math.inf and not found.proven


def test_solving_prints_nothing_on_standard_output() -> None:
    """The first HiGHS instance in a process prints a banner on standard output (highspy 1.16),
    which ``packer plan --format json`` printed ahead of its JSON; a fresh process solving a
    master writes nothing there."""
    code = ("from ortools.linear_solver import pywraplp\n"
            "from packer.planner.mip import solve_mip\n"
            "s = pywraplp.Solver.CreateSolver('HIGHS')\n"
            "x = s.IntVar(0, 3, 'x')\n"
            "s.Add(2 * x >= 3)\n"
            "s.Minimize(x)\n"
            "assert solve_mip(s, 10, 5.0).objective == 2\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
