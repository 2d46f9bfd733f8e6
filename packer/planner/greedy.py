"""Nexus-style squishy best-fit-decreasing: fast, feasible, and the solver's warm start.

Replicas go largest first into the open slot they fill best; a replica that fits nowhere opens the
slot type where it costs least for the share it takes. On its own this is the *greedy* baseline
(with ``use_mig=False``: whole GPUs and time-slicing only); with MIG it seeds the CP-SAT search.
"""

from __future__ import annotations

import math

from packer.planner.model import Problem, Rep, Slot, can_add, fill
from packer.slot import WHOLE, SlotType


def choose_counts(problem: Problem) -> dict[str, int]:
    """Replica count per model: the option whose replicas cost least when each sits on its best slot."""
    counts = {}
    for m in problem.shared_models:
        best, best_cost = None, math.inf
        for n in problem.replica_options(m):
            if n == 0:
                best, best_cost = 0, 0.0
                break
            rep = Rep(m, 0, n)
            c = n * min((problem.attributable_cost(rep, st) for st in problem.all_types()), default=math.inf)
            if c < best_cost - 1e-12:
                best, best_cost = n, c
        if best is None:
            raise ValueError(f"model {m.name} fits no slot type of this fleet")
        counts[m.name] = best
    return counts


def reps_for(problem: Problem, counts: dict[str, int]) -> list[Rep]:
    return [Rep(m, i, counts[m.name]) for m in problem.shared_models for i in range(counts[m.name])]


def gpus_implied(slots: list[Slot], pool: str) -> float:
    """GPUs a set of slots needs at least (MIG slices by compute share, whole slots one each)."""
    total = 0.0
    for s in slots:
        if s.type.pool.name != pool:
            continue
        total += 1.0 if s.type.profile == WHOLE else s.type.compute_fraction
    return total


def pack(problem: Problem, reps: list[Rep], slots: list[Slot] | None = None,
         reserved: dict[str, int] | None = None, gpu_of: dict[int, object] | None = None) -> list[Slot]:
    """Insert ``reps`` into ``slots`` (which may hold replicas already), opening slots as needed.

    ``gpu_of`` maps existing slots to their GPUs, so that a replica never joins a GPU that already
    runs its model.
    """
    gpu_of = gpu_of or {}
    slots = list(slots or [])
    reserved = reserved or {}
    types = problem.all_types()

    def size(rep: Rep) -> float:
        return min((problem.attributable_cost(rep, st) for st in types), default=math.inf)

    for rep in sorted(reps, key=lambda r: (-size(r), r.model.name, r.index)):
        best, best_fill = None, -1.0
        for s in slots:
            g = gpu_of.get(id(s))
            if g is not None and rep.model.name in g.models():  # type: ignore[attr-defined]
                continue
            if can_add(problem, s, rep):
                s.reps.append(rep)
                f = fill(problem, s)
                s.reps.pop()
                if f > best_fill + 1e-12:
                    best, best_fill = s, f
        if best is not None:
            best.reps.append(rep)
            continue
        choice, choice_cost = None, math.inf
        for st in types:
            limit = st.pool.max_gpus - reserved.get(st.pool.name, 0)
            add = 1.0 if st.profile == WHOLE else st.compute_fraction
            if gpus_implied(slots, st.pool.name) + add > limit + 1e-9:
                continue
            c = problem.attributable_cost(rep, st)
            if c < choice_cost - 1e-12:
                choice, choice_cost = st, c
        if choice is None:
            raise NoRoom(rep)
        slots.append(Slot(choice, [rep]))
    return slots


class NoRoom(Exception):
    """The pools are full: no slot type with room left can take this replica."""

    def __init__(self, rep: Rep) -> None:
        self.rep = rep
        super().__init__(f"no pool has room left for a replica of {rep.model.name}")


def open_type(problem: Problem, pool: str, profile: str) -> SlotType:
    return next(st for st in problem.types[pool] if st.profile == profile)
