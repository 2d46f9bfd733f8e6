"""Slot maths: can these models share one slot, and with what batches, shares and latency bound?

A *slot* is a whole GPU or one MIG instance. Following Nexus's "squishy bin packing" (SOSP'19),
the models of a slot take turns in a *duty cycle* of ``d`` ms: each runs one batch per cycle, of
``b_i = ceil(r_i * d)`` requests (its arrivals during one cycle). A request may arrive just after
its model's batch was cut, wait one whole cycle and then run, so its worst-case latency is
``d + l_i(b_i)``; that must stay within the model's SLO. The batches of all members must fit in the
cycle: ``sum_i l_i(b_i) <= u * d`` with ``u = 1 - headroom``.

Bounding ``ceil(r d) <= r d + 1`` makes every constraint linear in ``d``::

    l_i(b_i) <= A_i + B_i d        A_i = s_i (base_i + per_i),  B_i = s_i per_i r_i
    SLO:     d <= hi_i = (slo_i - A_i) / (1 + B_i)        (and d <= (max_batch_i - 1) / r_i)
    compute: d >= lo   = sum A_i / (u - sum B_i)

so a group is feasible iff ``lo <= min_i hi_i``: an O(n) test the planner uses everywhere, and a
linear constraint once the cycle is fixed. ``docs/slot-maths.md`` works an example.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from packer.catalog import GpuType, gpu_type
from packer.fleet import FleetError, Fleet, Model, Pool

WHOLE = "whole"


@dataclass(frozen=True)
class SlotType:
    """A kind of slot a pool can offer: its whole GPU, or one MIG profile of it."""

    pool: Pool
    profile: str = WHOLE

    @property
    def gpu(self) -> GpuType:
        return gpu_type(self.pool.gpu)

    @property
    def memory_gb(self) -> float:
        g = self.gpu
        return g.usable_gb if self.profile == WHOLE else g.profile(self.profile).memory_gb

    @property
    def compute_fraction(self) -> float:
        g = self.gpu
        return 1.0 if self.profile == WHOLE else g.profile(self.profile).compute_slices / g.compute_slices

    @property
    def key(self) -> str:
        return f"{self.pool.name}/{self.profile}"


def slot_types(pool: Pool) -> list[SlotType]:
    out = [SlotType(pool)]
    if pool.mig:
        out += [SlotType(pool, p.name) for p in gpu_type(pool.gpu).mig_profiles]
    return out


def latency_scale(model: Model, st: SlotType) -> tuple[float, float]:
    """(base, per_item) in ms of this model on this slot type.

    A measured profile for the exact slot wins; else one for the whole GPU type scaled by 7/g
    for a MIG slice; else the first profile scaled by relative speed (and its own slice size).
    """
    target = st.pool.gpu if st.profile == WHOLE else f"{st.pool.gpu}/{st.profile}"
    for lp in model.latency:
        if lp.gpu == target:
            return lp.base, lp.per_item
    whole = next((lp for lp in model.latency if lp.gpu == st.pool.gpu), None)
    if whole is not None:
        s = 1.0 / st.compute_fraction
        return whole.base * s, whole.per_item * s
    ref = model.latency[0]
    rname, _, rprof = ref.gpu.partition("/")
    rgpu = gpu_type(rname)
    s = rgpu.speed / st.gpu.speed / st.compute_fraction
    if rprof:
        s *= rgpu.profile(rprof).compute_slices / rgpu.compute_slices
    return ref.base * s, ref.per_item * s


@dataclass(frozen=True)
class Item:
    """One replica's demand on one slot type, in the linear form above (ms and ms per ms)."""

    model: Model
    rate: float
    """Requests per second this replica must serve at peak."""
    base: float
    per_item: float
    """The profile scaled to this slot type (ms)."""
    A: float
    B: float
    hi: float
    """Largest duty cycle (ms) at which this replica meets its SLO and max_batch."""

    def load(self, d: float) -> float:
        """Conservative run time (ms) of one batch at duty cycle ``d``."""
        return self.A + self.B * d

    def run_ms(self, batch: int) -> float:
        return self.base + self.per_item * batch


def item(model: Model, rate: float, st: SlotType) -> Item:
    base, per = latency_scale(model, st)
    A = base + per
    B = per * rate / 1000.0
    hi = (model.slo_ms - A) / (1.0 + B)
    if rate > 0:
        hi = min(hi, (model.max_batch - 1) * 1000.0 / rate) if model.max_batch > 1 else min(hi, 1000.0 / rate)
    return Item(model, rate, base, per, A, B, hi)


def feasible(items: list[Item], memory_gb: float, u: float) -> bool:
    """The O(n) test: memory fits and some duty cycle satisfies compute and every SLO."""
    if sum(i.model.memory_gb for i in items) > memory_gb + 1e-9:
        return False
    return duty_window(items, u) is not None


def duty_window(items: list[Item], u: float) -> tuple[float, float] | None:
    """The feasible range ``[lo, hi]`` of duty cycles (ms), or None."""
    if not items:
        return (0.0, math.inf)
    sb = sum(i.B for i in items)
    if sb >= u:
        return None
    lo = sum(i.A for i in items) / (u - sb)
    hi = min(i.hi for i in items)
    if lo > hi + 1e-9 or hi <= 0:
        return None
    return (lo, max(lo, hi))


@dataclass(frozen=True)
class MemberResult:
    name: str
    batch_size: int
    share: float
    """Fraction of the slot's time this member's batches take at the chosen duty cycle."""
    memory_gb: float
    p99_bound_ms: float
    slo_ms: float
    rate: float


@dataclass(frozen=True)
class SlotResult:
    duty_cycle_ms: float
    members: tuple[MemberResult, ...]
    memory_gb: float
    memory_capacity_gb: float
    compute_share: float
    binding: str
    """Which constraint is closest to its limit: ``memory``, ``compute`` or ``slo:<model>``."""
    reason: str


def evaluate(items: list[Item], memory_gb: float, u: float) -> SlotResult:
    """Choose the duty cycle of a feasible group and report batches, shares and p99 bounds.

    The cycle minimises the larger of the compute load (relative to ``u``) and the worst member's
    latency bound (relative to its SLO): equal headroom on both sides, where neither traffic growth
    nor a slow batch tips the slot over first.
    """
    win = duty_window(items, u)
    if win is None:
        raise ValueError("infeasible group: " + ", ".join(i.model.name for i in items))
    lo, hi = win

    def pressure(d: float) -> tuple[float, float]:
        comp = sum(i.load(d) for i in items) / (u * d) if d > 0 else math.inf
        lat = max((d + i.load(d)) / i.model.slo_ms for i in items)
        return comp, lat

    # compute pressure falls and latency pressure rises with d: bisect for the crossing.
    a, b = lo, hi
    if pressure(b)[0] >= pressure(b)[1]:
        d = b
    elif pressure(a)[1] >= pressure(a)[0]:
        d = a
    else:
        for _ in range(60):
            m = (a + b) / 2
            c, l = pressure(m)
            if c > l:
                a = m
            else:
                b = m
        d = b
    members = []
    for it in items:
        b_ = max(1, math.ceil(it.rate * d / 1000.0 - 1e-9))
        run = it.run_ms(b_)
        members.append(MemberResult(it.model.name, b_, run / d, it.model.memory_gb, d + run, it.model.slo_ms, it.rate))
    mem = sum(i.model.memory_gb for i in items)
    comp = sum(m.share for m in members)
    pressures = {"memory": mem / memory_gb, "compute": comp / u}
    for m in members:
        pressures[f"slo:{m.name}"] = m.p99_bound_ms / m.slo_ms
    binding = max(pressures, key=lambda k: pressures[k])
    if binding == "memory":
        reason = f"memory {mem:.1f}/{memory_gb:.1f} GB is the limit"
    elif binding == "compute":
        reason = f"batches take {comp:.0%} of a {d:.1f} ms duty cycle (cap {u:.0%})"
    else:
        m = next(m for m in members if f"slo:{m.name}" == binding)
        reason = f"{m.name}: wait {d:.1f} ms + run {m.p99_bound_ms - d:.1f} ms = {m.p99_bound_ms:.1f} ms of its {m.slo_ms:g} ms SLO"
    return SlotResult(d, tuple(members), mem, memory_gb, comp, binding, reason)


def single_capacity(model: Model, st: SlotType, u: float) -> float:
    """Highest rate (rps) one replica alone on this slot type can serve within SLO; 0 if none.

    Closed form of ``lo <= hi`` for one item (docs/slot-maths.md), with ``B = beta r``:
    the SLO side gives ``r <= (u (slo - A) - A) / (beta slo)`` and the max_batch side
    ``r <= u M / (A + beta M)`` with ``M = (max_batch - 1)`` seconds-per-ms units (1 for max_batch 1).
    """
    if model.memory_gb > st.memory_gb * model.gpus_per_replica + 1e-9:
        return 0.0
    base, per = latency_scale(model, st)
    A = base + per
    slo = model.slo_ms
    if u * (slo - A) < A - 1e-12:
        return 0.0
    beta = per / 1000.0
    M = 1000.0 * (model.max_batch - 1 if model.max_batch > 1 else 1)
    caps = [u * M / (A + beta * M)]
    if beta > 0:
        caps.append((u * (slo - A) - A) / (beta * slo))
    return max(0.0, min(caps)) * (1 - 1e-9)


def model_slot_types(fleet: Fleet, model: Model) -> list[SlotType]:
    """Slot types that could host a replica of this model (memory only; SLO checked elsewhere)."""
    out = []
    for pool in fleet.pools:
        if model.gpus_per_replica > 1:
            st = SlotType(pool)
            if model.memory_gb / model.gpus_per_replica <= st.memory_gb and pool.max_gpus >= model.gpus_per_replica \
                    and model.gpus_per_replica <= pool.gpus_per_node:
                out.append(st)
            continue
        for st in slot_types(pool):
            if model.memory_gb <= st.memory_gb:
                out.append(st)
    return out


def check_model_servable(fleet: Fleet, model: Model, where: str, u: float = 0.85) -> None:
    """Raise a FleetError naming the model if no slot of any pool can serve it at all."""
    if model.gpus_per_replica > 1:
        fits = [p for p in fleet.pools if model.memory_gb / model.gpus_per_replica <= gpu_type(p.gpu).usable_gb]
        if not fits:
            best = max(gpu_type(p.gpu).usable_gb for p in fleet.pools)
            raise FleetError(f"{where}.memory_gb", f"{model.memory_gb} GB over {model.gpus_per_replica} GPUs needs "
                             f"{model.memory_gb / model.gpus_per_replica:.1f} GB per GPU, more than any pool offers "
                             f"({best} GB usable)", "raise gpus_per_replica or add a pool with larger GPUs")
        if not any(p.gpus_per_node >= model.gpus_per_replica for p in fits):
            raise FleetError(f"{where}.gpus_per_replica", f"{model.gpus_per_replica} GPUs on one node, but no pool "
                             "has that many per node", "lower gpus_per_replica or add a pool with larger nodes")
    sts = model_slot_types(fleet, model)
    if not sts:
        best = max(gpu_type(p.gpu).usable_gb for p in fleet.pools)
        raise FleetError(f"{where}.memory_gb", f"{model.memory_gb} GB is larger than any slot ({best} GB usable "
                         "on the largest GPU)", "reduce the model's memory (quantise, smaller max_batch), set "
                         "gpus_per_replica, or add a pool with larger GPUs")
    caps = [(single_capacity(model, st, u), st) for st in sts]
    if all(c == 0 for c, _ in caps):
        fastest = min(sts, key=lambda st: sum(latency_scale(model, st)))
        A = sum(latency_scale(model, fastest))
        need = A + A / u
        raise FleetError(f"{where}.slo_ms", f"{model.slo_ms:g} ms cannot be met by any batch size: even one "
                         f"request takes {A:.1f} ms on the fastest slot ({fastest.key}) and may wait a duty "
                         f"cycle first, a worst case of {need:.1f} ms",
                         f"raise slo_ms to at least {math.ceil(need)} or add a faster GPU pool")
    if model.max_replicas is not None and model.traffic.peak_rps > 0:
        best = max(c for c, _ in caps)
        if best * model.max_replicas < model.traffic.peak_rps:
            raise FleetError(f"{where}.max_replicas", f"{model.max_replicas} replicas serve at most "
                             f"{best * model.max_replicas:.1f} rps within the SLO, below peak_rps "
                             f"{model.traffic.peak_rps:g}", f"raise max_replicas to at least "
                             f"{math.ceil(model.traffic.peak_rps / best)} or relax slo_ms")


def servable(budget_ms: float, base: float, per_item: float, max_batch: int) -> int:
    """Most requests one instance can finish within ``budget_ms``: ``k`` batches of ``n`` each,
    ``k * (base + per_item * n) <= budget_ms``, ``n <= max_batch``, best ``k * n`` over ``k``.

    The queue bound of a Triton model: the Triton writer sets ``max_queue_size`` from it and the
    simulator refuses arrivals past it, so both read it from here.
    """
    best = 0
    for k in range(1, 100_000):
        slot = budget_ms / k - base
        if slot < per_item or (per_item == 0 and slot < 0):
            break
        n = max_batch if per_item == 0 else min(max_batch, math.floor(slot / per_item))
        best = max(best, k * n)
    return best
