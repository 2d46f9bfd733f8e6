"""The planner's working model: replicas to place, slot types to place them on, and packings.

Kept apart from the solvers so the greedy packer, the CP-SAT model, the lower bound and the
assembly into GPUs share one definition of "this replica fits in that slot".
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from packer.catalog import mig_layouts
from packer.fleet import Fleet, Model, Pool
from packer.settings import PlanSettings
from packer.slot import WHOLE, Item, SlotType, duty_capacity, duty_window, item, single_capacity, slot_types, window


def slot_price(st: SlotType) -> float:
    """What a slot of this type costs if its GPU is split into slots like it, per hour.

    Used only to rank choices in the greedy packer; the real cost is counted per GPU.
    """
    if st.profile == WHOLE:
        return st.pool.cost_per_gpu_hour
    g = st.gpu
    p = g.profile(st.profile)
    return st.pool.cost_per_gpu_hour * max(p.compute_slices / g.compute_slices, p.memory_slices / g.memory_slices)


def on_demand_replicas(model: Model, count: int, pool: Pool | None = None) -> int:
    """How many of ``count`` replicas must stay off the spot ``pool`` (``Model.on_demand_replicas``
    over the pool's ``max_nodes`` and notice; the node assembly spreads the rest over them)."""
    if pool is None:
        return model.on_demand_replicas(count)
    return model.on_demand_replicas(count, pool.max_nodes, pool.notice_s if pool.spot else math.inf)


def allowed(rep: "Rep", st: SlotType) -> bool:
    """May this replica run on a slot of this type? Replicas ``0 .. k-1`` of a model are its
    on-demand floor (:func:`on_demand_replicas`), so they never go to a spot pool. Replicas of
    one model are interchangeable, so fixing which ones are the floor loses no plan."""
    return not st.pool.spot or rep.index >= on_demand_replicas(rep.model, rep.count, st.pool)


def spot_count(model: Model, n: int, pool: Pool) -> int:
    """The fewest replicas, ``n`` or more, of which any may run on the spot ``pool`` (``n`` when
    none can): a model sized for one replica gets a second so that losing one spot node keeps its
    floor, which two spot GPUs often do for less than one on-demand GPU."""
    if not pool.spot or model.on_demand_floor <= 0 or model.on_demand_floor >= 1 or model.spot_loss != "node":
        return n
    for k in range(n, n + 4):
        if model.spot_replicas(k, pool.max_nodes, pool.notice_s) > 0:
            return k
    return n


@dataclass(frozen=True)
class Rep:
    """Replica ``index`` of ``count`` of a model, each sized for ``peak_rps / count``."""

    model: Model
    index: int
    count: int

    @property
    def rate(self) -> float:
        return self.model.traffic.peak_rps / self.count if self.count else 0.0

    @property
    def key(self) -> tuple[str, int]:
        return (self.model.name, self.index)


class Problem:
    """Everything the solvers need about a fleet, computed once."""

    def __init__(self, fleet: Fleet, settings: PlanSettings) -> None:
        self.fleet = fleet
        self.settings = settings
        self.u = settings.u
        self.types: dict[str, list[SlotType]] = {}
        for pool in fleet.pools:
            sts = slot_types(pool) if settings.use_mig else [SlotType(pool)]
            # The full-GPU instance (7g) is a whole GPU with less memory: never the better choice.
            sts = [st for st in sts if st.profile == WHOLE or st.compute_fraction < 1.0]
            self.types[pool.name] = sts
        self._items: dict[tuple[str, int, str], Item] = {}
        self.multi_counts: dict[str, int] = {}
        """Replicas of each multi-GPU model, fixed before packing (``solve.plan_multi``)."""
        self._cap: dict[tuple[str, str], float] = {}
        self._ranked: dict[str, list[int]] = {}
        self.gpu_limit = sum(p.max_gpus for p in fleet.pools)
        """GPUs the pools can give: no model can have more replicas (two never share a GPU)."""
        self.start_counts: dict[str, set[int]] = {}
        """Replica counts a start packing uses (the greedy baseline's, ``solve.greedy_packing``):
        always offered by ``replica_options``, so the search can express, and keep, that start."""
        self.unspread: tuple[float, list[str]] | None = None
        """The cheapest packing a stage found and did not take because it leaves more replicas
        unspread over nodes (``solve._spread_kept``): its shared GPUs' cost and its warnings, so
        the plan can say what the spread costs."""
        self.apart_binding: list[str] = []
        """Where the pattern LP's spread-rule rows bind at its last duals (``model on pool <name>``,
        ``patterns.Patterns.apart_binding``): the plan says the rule may cost something there."""
        self.fewest: dict[tuple, list[list[int]] | None] = {}
        """MIG slots put on the fewest GPUs (``assemble.fewest_gpus``), by the slots asked."""
        self.clock_cuts: list[str] = []
        """Stages the wall clock ended before their counts did (:meth:`past`), in the order it
        happened: the plan names them, since the same seed may plan otherwise on an idle machine."""
        self.packing_work = 0.0
        """Deterministic seconds of greedy packing and consolidation so far (``greedy.SLOT_S``,
        ``solve.LOOK_S``, ``solve.CAN_ADD_S``): how many greedy starts run is counted in these, so
        that it does not depend on the machine's load (``solve.multi_start``)."""

    def past(self, deadline: float, stage: str) -> bool:
        """Whether the wall clock is past ``deadline``, a guard that then ends ``stage`` before
        its count does; where it does, ``stage`` is recorded in :attr:`clock_cuts`. Never with
        ``PlanSettings.reproducible``: the counts alone end every stage there."""
        if self.settings.reproducible or time.monotonic() <= deadline:
            return False
        if stage not in self.clock_cuts:
            self.clock_cuts.append(stage)
        return True

    def limit_s(self, guard_s: float) -> float:
        """A solver's own wall-clock limit, ``guard_s`` against a much slower machine; a day with
        ``PlanSettings.reproducible`` (the solvers want a number, and their counts end them)."""
        return 86_400.0 if self.settings.reproducible else guard_s

    def cp_limits(self, solver: Any, seconds: float, guard_s: float) -> None:
        """A CP-SAT solver's limits: ``seconds`` of deterministic time, which ends it, and
        :meth:`limit_s` of ``guard_s`` on the wall clock."""
        solver.parameters.max_deterministic_time = seconds
        solver.parameters.max_time_in_seconds = self.limit_s(guard_s)

    def cp_stopped(self, solver: Any, stage: str) -> None:
        """Name ``stage`` (:meth:`past`) where CP-SAT's wall-clock guard, not its deterministic
        time, stopped ``solver``'s last solve."""
        if solver.wall_time >= 0.99 * solver.parameters.max_time_in_seconds:
            self.past(-math.inf, stage)

    def guard(self, deadline: float) -> float:
        """``deadline`` on the wall clock, or never (``math.inf``) with
        ``PlanSettings.reproducible``: for a solver's own time limit, which :meth:`past` cannot
        stop."""
        return math.inf if self.settings.reproducible else deadline

    @property
    def shared_models(self) -> list[Model]:
        return [m for m in self.fleet.models if m.gpus_per_replica == 1]

    @property
    def multi_models(self) -> list[Model]:
        return [m for m in self.fleet.models if m.gpus_per_replica > 1]

    def all_types(self) -> list[SlotType]:
        return [st for sts in self.types.values() for st in sts]

    def item(self, rep: Rep, st: SlotType) -> Item:
        k = (rep.model.name, rep.count, st.key)
        it = self._items.get(k)
        if it is None:
            it = self._items[k] = item(rep.model, rep.rate, st, self.u)
        return it

    def fits_alone(self, rep: Rep, st: SlotType) -> bool:
        if rep.model.memory_gb > st.memory_gb + 1e-9 or not allowed(rep, st):
            return False
        return duty_window([self.item(rep, st)], self.u) is not None

    def capacity(self, model: Model, st: SlotType) -> float:
        k = (model.name, st.key)
        if k not in self._cap:
            self._cap[k] = single_capacity(model, st, self.u)
        return self._cap[k]

    def least_replicas(self, model: Model, st: SlotType, *, shared: bool = False) -> int | None:
        """The fewest replicas of ``model`` that hold its peak on slot type ``st``, at least its
        ``min_replicas``; None where it needs none or one cannot run there. The one formula behind
        the counts on offer (:meth:`replica_options`), the bound's (``patterns.count_options``)
        and the search's fallbacks (``solve._count_one_pool_holds``). ``shared``: at rates a duty
        cycle serves, so that each replica may share its slot."""
        peak = model.traffic.peak_rps
        lo = max(model.min_replicas, 1 if peak > 0 else 0)
        if lo == 0:
            return None
        cap = duty_capacity(model, st, self.u) if shared else self.capacity(model, st)
        if cap <= 0:
            return None
        return max(lo, math.ceil(peak / cap - 1e-9)) if peak > 0 else lo

    def replica_options(self, model: Model) -> list[int]:
        """Replica counts worth considering: for each slot type, the fewest replicas that fit, alone
        (each may fill its slot, served as its requests come: ``packer/queue.py``) and shared (each
        at a rate a duty cycle serves, so it may share). With the first alone, long-tail on its MIG
        pools went 110.10 -> 113.77/h and family-600020-multilingual-80 62.28 -> 65.74/h."""
        if max(model.min_replicas, 1 if model.traffic.peak_rps > 0 else 0) == 0:
            return [0]
        ranked = self._ranked.get(model.name)
        if ranked is None:
            ranked = self._ranked[model.name] = self._ranked_options(model)
        if not ranked:
            return []
        return sorted(set(ranked) | self.start_counts.get(model.name, set()))

    def _ranked_options(self, model: Model) -> list[int]:
        """:meth:`replica_options` before the start packing's counts: worked out once a model (a
        3000-model plan asked 15,000 times)."""
        opts = set()
        for st in self.all_types():
            for n in {self.least_replicas(model, st), self.least_replicas(model, st, shared=True)} - {None}:
                for k in {n, spot_count(model, n, st.pool)}:
                    if model.max_replicas is not None and k > model.max_replicas:
                        continue
                    if k > self.gpu_limit:  # two replicas of a model never share a GPU
                        continue
                    opts.add(k)
        if not opts:
            return []
        best = min(opts)
        return sorted(o for o in opts if o <= 3 * best + 2)[: self.settings.max_replica_options]

    def attributable_cost(self, rep: Rep, st: SlotType) -> float:
        """Cost of the share of a slot this replica occupies alone (memory or compute, larger)."""
        if not self.fits_alone(rep, st):
            return math.inf
        it = self.item(rep, st)
        d = it.hi
        compute = it.load(d) / (self.u * d)
        return slot_price(st) * max(rep.model.memory_gb / st.memory_gb, compute)


@dataclass
class Slot:
    """An open slot during packing: its type and the replicas in it."""

    type: SlotType
    reps: list[Rep] = field(default_factory=list)
    gpu: int | None = None
    start: int | None = None

    def models(self) -> set[str]:
        return {r.model.name for r in self.reps}


def can_add(problem: Problem, slot: Slot, rep: Rep) -> bool:
    """Does ``rep`` fit into ``slot`` beside its current members?"""
    return can_add_sums(problem, slot, rep, SlotSums.of(problem, slot))


class SlotSums:
    """Running sums of a slot's members in the linear slot maths (docs/slot-maths.md): what
    :func:`can_add` reads of them. The greedy packing keeps one per open slot and adds to it as
    it places replicas; consolidation keeps one per slot while its members stay as they are."""

    __slots__ = ("mem", "sA", "sB", "hi", "kinds", "names")

    def __init__(self) -> None:
        self.mem = self.sA = self.sB = 0.0
        self.hi = math.inf
        self.kinds: set[str] = set()
        self.names: set[str] = set()

    @classmethod
    def of(cls, problem: Problem, slot: Slot) -> "SlotSums":
        """The slot's sums as its members stand now."""
        a = cls()
        for r in slot.reps:
            a.add(problem.item(r, slot.type), r)
        return a

    def add(self, it: Item, rep: Rep) -> None:
        self.mem += rep.model.memory_gb
        self.sA += it.A
        self.sB += it.B
        self.hi = min(self.hi, it.hi)
        self.kinds.add(rep.model.kind)
        self.names.add(rep.model.name)


def can_add_sums(problem: Problem, slot: Slot, rep: Rep, sums: SlotSums) -> bool:
    """Does ``rep`` fit into ``slot``, whose members' sums are ``sums`` (taken while the members
    are as they are now)? :func:`can_add` is this with the sums taken afresh;
    consolidation keeps them per slot, since it asks of every slot for each replica it moves: on
    family-100007-mixed-401, half a million asks, each passing over the members, were most of
    the greedy stage's 7.6 s."""
    st = slot.type
    if rep.model.name in sums.names or not allowed(rep, st):
        return False
    if not st.pool.time_slicing and sums.kinds and sums.kinds != {rep.model.kind}:
        return False
    if sums.mem + rep.model.memory_gb > st.memory_gb + 1e-9:
        return False
    it = problem.item(rep, st)
    return window(sums.sA + it.A, sums.sB + it.B, min(sums.hi, it.hi), problem.u) is not None


def layout_counters(pool: Pool) -> tuple[tuple[Counter, object], ...]:
    """Profile multisets of the pool's maximal MIG layouts, for sub-multiset validity tests (shared:
    not to be changed)."""
    return _layout_counters(pool.gpu)


@cache
def _layout_counters(gpu: str) -> tuple[tuple[Counter, object], ...]:
    """Built once per GPU type: dealing replicas onto MIG GPUs asks for every slot, and building
    them each time was half of the greedy starts' time on family-600018-long-tail-304 (540,000
    Counters, 2.6 of 6.0 s profiled)."""
    return tuple((Counter(l.profiles), l) for l in mig_layouts(gpu) if len(l.instances) > 1)


def valid_multiset(pool: Pool, profiles: Counter) -> bool:
    return any(all(c[k] >= v for k, v in profiles.items()) for c, _ in layout_counters(pool))


def wide_room(pool: Pool, width: int) -> int:
    """Replicas of ``width`` GPUs the pool's nodes hold at most: a replica's GPUs sit on one node,
    so a node holds ``gpus_per_node // width`` (3-GPU replicas on 8-GPU nodes: two, not 8/3)."""
    return pool.max_nodes * (pool.gpus_per_node // width)


def multi_replicas(problem: Problem, m: Model, pool: Pool) -> int | None:
    """Whole-GPU replicas a multi-GPU model needs in ``pool`` (None: it cannot run there, nor where
    a replica's GPUs exceed a node's: they sit on one node)."""
    if m.gpus_per_replica > pool.gpus_per_node:
        return None
    cap = problem.capacity(m, SlotType(pool))
    if cap <= 0:
        return None
    peak = m.traffic.peak_rps
    return max(m.min_replicas, 1 if peak > 0 else 0, math.ceil(peak / cap - 1e-9) if peak > 0 else 0)
