"""Integer programs built with OR-Tools' linear solver and solved by HiGHS through ``highspy``.

The planner's integer masters (``colplan.integer_master``, ``allgroups.exact_master``) end on a
node limit, not the clock, so that a seed gives one plan on any machine load. Through OR-Tools'
wrapper, HiGHS stopped by its node limit reports an unknown status and neither its incumbent nor
its best bound can be read: family-800039-long-tail-34's master had a 25.99/h packing and a
bound of 24.89/h after 100 nodes, and the planner got nothing. ``highspy`` gives both. The model
is still written with ``pywraplp`` (one way to state a master) and handed over as its proto.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import highspy
import numpy as np
from ortools.linear_solver import linear_solver_pb2, pywraplp


@dataclass(frozen=True)
class Mip:
    """What HiGHS left: ``values`` per variable of the ``pywraplp`` solver (its order), None where
    it found no solution; ``proven`` where it closed the gap; ``bound`` its best bound (dual side),
    a lower bound on every solution of a minimisation whatever stopped it."""

    values: np.ndarray | None
    objective: float
    bound: float
    proven: bool

    def value(self, var: pywraplp.Variable) -> float:
        assert self.values is not None
        return float(self.values[var.index()])


_quiet = False


@contextmanager
def quiet_stdout() -> Iterator[None]:
    """Standard output pointed at the null device meanwhile: HiGHS prints from C++, past Python's
    ``sys.stdout`` and before (or regardless of) its ``output_flag``."""
    sys.stdout.flush()
    saved, null = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(null)


def highs() -> highspy.Highs:
    """A HiGHS instance. From highspy 1.13 or so the first one in a process prints a two-line
    banner on standard output from C++, before any option can be set: ``packer plan --format
    json`` then printed it ahead of its JSON. The first is made with standard output pointed at
    the null device; later ones print nothing."""
    global _quiet
    if _quiet:
        return highspy.Highs()
    with quiet_stdout():
        h = highspy.Highs()
    _quiet = True
    return h


def run_quiet(h: highspy.Highs) -> None:
    """``h.run()`` with standard output pointed at the null device: HiGHS's MIP prints a debugging
    line from C++ when a heuristic's solution is transformed ("HighsMipSolverData::
    transformNewIntegerFeasibleSolution tmpSolver.run();"), whatever its ``output_flag``, and
    ``packer plan --format json`` printed it ahead of its JSON (a multilingual family fleet cut
    to its plan's GPUs at headroom 0.3, found by ``bench/tight.py``'s property runs)."""
    with quiet_stdout():
        h.run()


def highs_lp(proto: linear_solver_pb2.MPModelProto) -> highspy.HighsLp:
    """An OR-Tools model (``pywraplp``'s, exported) as HiGHS's, rows stored row by row; integer
    where any variable is. The planner's masters are written once, with ``pywraplp``, and solved
    through this (:func:`run_exported`) by HiGHS's MIP (:func:`solve_mip`) or interior point
    method (``patterns._Master``)."""
    lp = highspy.HighsLp()
    n, m = len(proto.variable), len(proto.constraint)
    lp.num_col_, lp.num_row_ = n, m
    lp.col_cost_ = np.array([v.objective_coefficient for v in proto.variable], dtype=float)
    lp.col_lower_ = np.array([v.lower_bound for v in proto.variable], dtype=float)
    lp.col_upper_ = np.array([v.upper_bound for v in proto.variable], dtype=float)
    lp.row_lower_ = np.array([c.lower_bound for c in proto.constraint], dtype=float)
    lp.row_upper_ = np.array([c.upper_bound for c in proto.constraint], dtype=float)
    lp.offset_ = proto.objective_offset
    lp.sense_ = highspy.ObjSense.kMaximize if proto.maximize else highspy.ObjSense.kMinimize
    if any(v.is_integer for v in proto.variable):
        lp.integrality_ = [highspy.HighsVarType.kInteger if v.is_integer else highspy.HighsVarType.kContinuous
                           for v in proto.variable]
    starts, index, value = [0], [], []
    for c in proto.constraint:
        index.extend(c.var_index)
        value.extend(c.coefficient)
        starts.append(len(index))
    lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
    lp.a_matrix_.num_col_, lp.a_matrix_.num_row_ = n, m
    lp.a_matrix_.start_ = np.array(starts, dtype=np.int32)
    lp.a_matrix_.index_ = np.array(index, dtype=np.int32)
    lp.a_matrix_.value_ = np.array(value, dtype=float)
    return lp


def run_exported(solver: pywraplp.Solver, options: tuple[tuple[str, object], ...]) -> tuple[highspy.Highs, highspy.HighsLp]:
    """``solver``'s model (written with ``pywraplp``) exported, handed to a fresh quiet HiGHS with
    ``options`` and run: (the solver, to read, and the model as HiGHS got it). The one way the
    planner's masters, its interior-point LP and a small LP GLOP gave up on reach HiGHS."""
    proto = linear_solver_pb2.MPModelProto()
    solver.ExportModelToProto(proto)
    lp = highs_lp(proto)
    h = highs()
    for key, val in options:
        h.setOptionValue(key, val)
    h.passModel(lp)
    run_quiet(h)
    return h, lp


def solve_mip(solver: pywraplp.Solver, nodes: int, seconds: float, exact: bool = False) -> Mip:
    """Minimise ``solver``'s model with HiGHS, one thread, at most ``nodes`` branch-and-bound
    nodes; ``seconds`` of wall clock is the guard against a much slower machine. ``exact``: no
    relative or absolute gap tolerance (HiGHS's default 1e-4 lets a solution 0.01 % above the
    optimum stand as optimal)."""
    options: tuple[tuple[str, object], ...] = (("output_flag", False), ("threads", 1), ("mip_max_nodes", int(nodes)),
                                               ("time_limit", max(0.1, float(seconds))))
    if exact:
        options += (("mip_rel_gap", 0.0), ("mip_abs_gap", 1e-7))
    h, _ = run_exported(solver, options)
    status = h.getModelStatus()
    info = h.getInfo()
    found = info.primal_solution_status == highspy.SolutionStatus.kSolutionStatusFeasible
    # Infeasible: every bound holds (none is a solution); else its best bound, -inf before any.
    bound = math.inf if status == highspy.HighsModelStatus.kInfeasible else float(info.mip_dual_bound)
    values = np.array(h.getSolution().col_value, dtype=float) if found else None
    objective = float(info.objective_function_value) if found else math.inf
    return Mip(values, objective, bound, status == highspy.HighsModelStatus.kOptimal)


def knapsack_mip(v: np.ndarray, w: np.ndarray, mm: np.ndarray, model: np.ndarray, cap: float,
                 nodes: int) -> tuple[float, np.ndarray | None, float]:
    """The pricing problem of one cell (the most ``v`` within ``cap`` in both ``w`` and ``mm``, at
    most one item of each ``model``) as HiGHS's MIP, one thread, at most ``nodes`` nodes: (the best
    worth found, which items it takes or None, HiGHS's bound on the optimum). Its cuts and
    heuristics find groups that the compiled branch and bound (``knapsack.branch_and_bound``) does
    not reach in its nodes; a check on that search, not part of column generation."""
    n = int(v.size)
    if n == 0:
        return 0.0, None, 0.0
    groups = {m: r for r, m in enumerate(dict.fromkeys(int(x) for x in model))}
    rows = 2 + len(groups)
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = n, rows
    lp.col_cost_ = np.asarray(v, dtype=float)
    lp.col_lower_, lp.col_upper_ = np.zeros(n), np.ones(n)
    lp.row_lower_ = np.full(rows, -highspy.kHighsInf)
    lp.row_upper_ = np.array([cap, cap] + [1.0] * len(groups))
    lp.sense_ = highspy.ObjSense.kMaximize
    lp.integrality_ = [highspy.HighsVarType.kInteger] * n
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.num_col_, lp.a_matrix_.num_row_ = n, rows
    lp.a_matrix_.start_ = np.arange(0, 3 * n + 1, 3, dtype=np.int32)
    lp.a_matrix_.index_ = np.array([r for j in range(n) for r in (0, 1, 2 + groups[int(model[j])])], dtype=np.int32)
    lp.a_matrix_.value_ = np.array([x for j in range(n) for x in (float(w[j]), float(mm[j]), 1.0)])
    h = highs()
    for key, val in (("output_flag", False), ("threads", 1), ("mip_max_nodes", int(nodes))):
        h.setOptionValue(key, val)
    h.passModel(lp)
    run_quiet(h)
    info = h.getInfo()
    if info.primal_solution_status != highspy.SolutionStatus.kSolutionStatusFeasible:
        return 0.0, None, float(info.mip_dual_bound)
    x = np.asarray(h.getSolution().col_value, dtype=float) > 0.5
    return float(np.asarray(v, dtype=float)[x].sum()), x, float(info.mip_dual_bound)
