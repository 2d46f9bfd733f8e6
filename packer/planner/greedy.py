"""Nexus-style squishy best-fit-decreasing: fast, feasible, and the solver's warm start.

Replicas go largest first into the open slot they fill best; a replica that fits nowhere opens the
slot type where it costs least for the share it takes. On its own this is the *greedy* baseline
(with ``use_mig=False``: whole GPUs and time-slicing only); with MIG it seeds the CP-SAT search.

The *priced* variant weighs fills by what the slot costs, and opens a new slot when that costs less
than the share the replica would take of an open one: a 20 GB model then takes a fresh L4 rather
than a quarter of an A100 whose memory the 30 GB models, which fit nowhere else, need.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from typing import Callable

from packer.errors import UserError
from packer.fleet import FleetError
from packer.planner.model import Problem, Rep, Slot, SlotSums, allowed, slot_price
from packer.slot import WHOLE, SlotType, window


SLOT_S = 3e-6
"""Deterministic seconds per open slot a replica is weighed against in :func:`pack` (the running
sums' fit test and score), with what dealing the slots onto GPUs costs: fitted on a start's whole
work over generated-500, long-tail and three family fleets (2,598-GPU to 16-GPU plans)."""


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
            cap = max((problem.capacity(m, st) for st in problem.all_types()), default=0.0)
            need = math.ceil(m.traffic.peak_rps / cap) if cap > 0 else 0
            if m.min_replicas > problem.gpu_limit:  # not the SLO's fault: one replica of a model a GPU
                raise FleetError(f"models ({m.name}).min_replicas",
                                 f"is {m.min_replicas}, but the pools hold {problem.gpu_limit} GPUs and two replicas "
                                 "of a model never share one",
                                 f"lower min_replicas to {problem.gpu_limit} or less, or raise the pools' max_nodes")
            if cap > 0 and need > problem.gpu_limit:
                raise FleetError(f"models ({m.name}).traffic.peak_rps",
                                 f"{m.traffic.peak_rps:g} rps needs {need} replicas (one serves at most {cap:.1f} rps "
                                 f"within its SLO) but the pools hold {problem.gpu_limit} GPUs",
                                 "raise the pools' max_nodes, add a faster pool, or raise max_batch or slo_ms")
            raise UserError(f"models: {m.name} fits no slot of this fleet at headroom {problem.settings.headroom:g} "
                            "(a slot keeps that share of its time free). Fix: lower headroom, relax the model's "
                            "slo_ms, or add a pool with faster or larger GPUs")
        counts[m.name] = best
    return counts


def reps_for(problem: Problem, counts: dict[str, int]) -> list[Rep]:
    return [Rep(m, i, counts[m.name]) for m in problem.shared_models for i in range(counts[m.name])]


Order = Callable[[Rep], tuple]


def replica_size(problem: Problem, rep: Rep) -> float:
    """What a replica costs on the slot type where it is cheapest: the largest-first key."""
    return min((problem.attributable_cost(rep, st) for st in problem.all_types()), default=math.inf)


def orderings(problem: Problem, reps: list[Rep], count: int, seed: int) -> list[Order | None]:
    """Insertion orders for a multi-start greedy; ``None`` is the plain largest-first order.

    Largest-first packs memory well but mixes duty cycles: a 100 ms model joining a group of
    300 ms ones shortens everyone's cycle. Orders that insert replicas by duty-cycle class
    (tightest first, largest first within a class) keep classes apart; measured on long-tail
    27.20/h against 28.80/h, on generated-2000 420.20/h against 432.07/h. Which order wins
    depends on the fleet, so several are tried, some with seeded noise on the class boundaries
    or the sizes; the seed makes the set of orders, and so the plan, reproducible.
    """
    types = problem.all_types()
    size = {id(r): replica_size(problem, r) for r in reps}
    hi = {id(r): max((problem.item(r, st).hi for st in types if problem.fits_alone(r, st)), default=1.0)
          for r in reps}

    def by_class(width: float, noise: dict[int, float] | None) -> Order:
        def key(r: Rep) -> tuple:
            h = math.log(max(hi[id(r)], 1.0)) / width
            if noise is not None:
                h *= 1 + 0.5 * noise[id(r)]
            return (round(h), -size[id(r)], r.model.name, r.index)
        return key

    def noisy(noise: dict[int, float]) -> Order:
        return lambda r: (-size[id(r)] * (1 + 0.4 * noise[id(r)]), r.model.name, r.index)

    out: list[Order | None] = [None, by_class(1.0, None), by_class(0.5, None)]
    rng = random.Random(seed)
    i = 0
    while len(out) < count:
        noise = {id(r): rng.random() for r in reps}
        out.append(by_class(1.0, noise) if i % 2 == 0 else noisy(noise))
        i += 1
    return out[:count]


def pack(problem: Problem, reps: list[Rep], slots: list[Slot] | None = None,
         reserved: dict[str, int] | None = None, gpu_of: dict[int, object] | None = None,
         order: Order | None = None, priced: bool = False) -> list[Slot]:
    """Insert ``reps`` into ``slots`` (which may hold replicas already), opening slots as needed.

    ``gpu_of`` maps existing slots to their GPUs, so that a replica never joins a GPU that already
    runs its model. ``order`` is the insertion order's sort key (``orderings``); by default the
    largest replica first. ``priced`` selects the priced variant (module docstring): it packs
    fleets with a few large models that fit only an expensive pool far better (the plans of
    ``bench/plan.py``: generated-500 99.10/h against 102.40/h, generated-2000 403.80/h against
    418.60/h) and some others worse (long-tail, greedy alone: 31.20/h against 27.20/h), so
    ``solve.multi_start`` tries both.
    """
    gpu_of = gpu_of or {}
    slots = list(slots or [])
    reserved = reserved or {}
    types = problem.all_types()
    # Running sums per slot (memory, sum A, sum B, min hi, kinds, models) make each "does it fit,
    # and how full would it be" test O(1): the same test as can_add + fill, without re-summing.
    agg = {id(sl): SlotSums.of(problem, sl) for sl in slots}
    implied: dict[str, float] = defaultdict(float)
    for sl in slots:
        implied[sl.type.pool.name] += 1.0 if sl.type.profile == WHOLE else sl.type.compute_fraction
    pools_of: dict[str, list[str]] = defaultdict(list)  # pools of each model's replicas placed so far
    for sl in slots:
        for r in sl.reps:
            pools_of[r.model.name].append(sl.type.pool.name)
    full = _Full(problem, reps)
    live = [sl for sl in slots if not full(sl, agg[id(sl)])]  # the slots some replica may still join
    for rep in sorted(reps, key=order or (lambda r: (-replica_size(problem, r), r.model.name, r.index))):
        problem.packing_work += len(slots) * SLOT_S
        avoid = _lone_pool(problem, rep, pools_of[rep.model.name], types)
        best, best_fill = _best_slot(problem, rep, live, agg, gpu_of, priced, avoid)
        opened = _cheapest_new(problem, rep, types, implied, reserved, avoid) if best is None or priced else None
        if avoid is not None and best is None and opened is None:  # nowhere else: the spread gives way
            best, best_fill = _best_slot(problem, rep, live, agg, gpu_of, priced)
            opened = _cheapest_new(problem, rep, types, implied, reserved) if best is None or priced else None
        if best is not None and opened is not None and opened[1] < best_fill - 1e-9:
            best = None  # priced: a new slot costs less than the share this one would take
        if best is not None:
            best.reps.append(rep)
            agg[id(best)].add(problem.item(rep, best.type), rep)
            pools_of[rep.model.name].append(best.type.pool.name)
            if full(best, agg[id(best)]):
                live.remove(best)
            continue
        if opened is None:
            raise NoRoom(rep)
        choice = opened[0]
        pools_of[rep.model.name].append(choice.pool.name)
        new = Slot(choice, [rep])
        slots.append(new)
        agg[id(new)] = SlotSums.of(problem, new)
        if not full(new, agg[id(new)]):
            live.append(new)
        implied[choice.pool.name] += 1.0 if choice.profile == WHOLE else choice.compute_fraction
    return slots


class _Full:
    """Whether a slot can take none of the replicas being packed: its memory or its time (the slot
    maths' window on its running sums) has no room for the least of them on its slot type. Sums
    only grow and ``hi`` only falls, so a full slot stays full, and :func:`pack` stops weighing it:
    on family-500020-mixed-228 (2,155 GPUs, most held by one replica) weighing every open slot
    for each of its 4,994 replicas took 8 of the plan's 38 s. The same slots are chosen (the
    packing's count still charges every open slot)."""

    def __init__(self, problem: Problem, reps: list[Rep]) -> None:
        self.problem, self.reps = problem, reps
        self.least: dict[str, tuple[float, float]] = {}

    def _least(self, st: SlotType) -> tuple[float, float]:
        """The least memory and the least ``A`` of the replicas that ``st`` can hold at all."""
        got = self.least.get(st.key)
        if got is None:
            fit = [r for r in self.reps if r.model.memory_gb <= st.memory_gb + 1e-9 and allowed(r, st)]
            got = self.least[st.key] = (min((r.model.memory_gb for r in fit), default=math.inf),
                                        min((self.problem.item(r, st).A for r in fit), default=math.inf))
        return got

    def __call__(self, sl: Slot, a: SlotSums) -> bool:
        mem, A = self._least(sl.type)
        return a.mem + mem > sl.type.memory_gb + 1e-9 or window(a.sA + A, a.sB, a.hi, self.problem.u) is None


def _lone_pool(problem: Problem, rep: Rep, placed: list[str], types: list[SlotType]) -> str | None:
    """The pool the last replica of a ``min_replicas >= 2`` model must avoid: the one-node pool
    that holds every other replica, where another pool's slot holds it alone. One set of rules
    for the greedy baseline and the plan (issue 14): the plan's stages never take a packing that
    puts every replica on one node of a one-node pool (``solve._spread_kept``)."""
    if rep.model.min_replicas < 2 or len(placed) != rep.count - 1 or len(set(placed)) != 1:
        return None
    pool = placed[0]
    if problem.fleet.pool(pool).max_nodes != 1:
        return None
    if not any(st.pool.name != pool and problem.fits_alone(rep, st) for st in types):
        return None
    return pool


def _best_slot(problem: Problem, rep: Rep, slots: list[Slot], agg: dict[int, SlotSums], gpu_of: dict[int, object],
               priced: bool, avoid: str | None = None) -> tuple[Slot | None, float]:
    """The open slot ``rep`` fits into that it makes least fuller (priced: at the slot's price),
    and that score, outside pool ``avoid``; (None, inf) when it fits none."""
    u = problem.u
    best, best_fill = None, math.inf
    name, kind, mem = rep.model.name, rep.model.kind, rep.model.memory_gb
    for sl in slots:
        if sl.type.pool.name == avoid:
            continue
        a = agg[id(sl)]
        if name in a.names or a.mem + mem > sl.type.memory_gb + 1e-9 or not allowed(rep, sl.type):
            continue
        if a.kinds and kind not in a.kinds and not sl.type.pool.time_slicing:
            continue
        g = gpu_of.get(id(sl))
        if g is not None and name in g.models():  # type: ignore[attr-defined]
            continue
        it = problem.item(rep, sl.type)
        sb, hi = a.sB + it.B, min(a.hi, it.hi)
        if window(a.sA + it.A, sb, hi, u) is None:  # the slot maths' own test, on running sums
            continue
        f = max((a.sA + it.A + sb * hi) / (u * hi), (a.mem + mem) / sl.type.memory_gb)
        # Squishy best fit: the slot this replica makes least fuller. Joining a group with a
        # tighter SLO shortens everyone's cycle and costs more than the replica's own work.
        before = max((a.sA + a.sB * a.hi) / (u * a.hi), a.mem / sl.type.memory_gb) if a.names else 0.0
        score = (f - before) * (slot_price(sl.type) if priced else sl.type.compute_fraction) - 1e-6 * f
        if score < best_fill - 1e-12:
            best, best_fill = sl, score
    return best, best_fill


def _cheapest_new(problem: Problem, rep: Rep, types: list[SlotType], implied: dict[str, float],
                  reserved: dict[str, int], avoid: str | None = None) -> tuple[SlotType, float] | None:
    """The slot type where a new slot for ``rep`` costs least (for the share it takes), among
    pools with room left other than ``avoid``, and that cost; None when every pool is full."""
    choice, choice_cost = None, math.inf
    for st in types:
        if st.pool.name == avoid:
            continue
        limit = st.pool.max_gpus - reserved.get(st.pool.name, 0)
        add = 1.0 if st.profile == WHOLE else st.compute_fraction
        if implied[st.pool.name] + add > limit + 1e-9:
            continue
        c = problem.attributable_cost(rep, st)
        if c < choice_cost - 1e-12:
            choice, choice_cost = st, c
    return None if choice is None else (choice, choice_cost)


class NoRoom(Exception):
    """The pools are full: no slot type with room left can take this replica."""

    def __init__(self, rep: Rep) -> None:
        self.rep = rep
        super().__init__(f"no pool has room left for a replica of {rep.model.name}")
