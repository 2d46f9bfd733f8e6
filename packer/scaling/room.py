"""Room in a deployed plan: how much more rate a slot can take, which slots and GPUs are free.

Everything here reads a :class:`~packer.plan.Plan` as the deployed state: a GPU listed in
``plan.layouts`` is paid for; a placement's member ``rate_rps`` is the rate that replica is sized
(and routed) for. Feasibility is the planner's own slot maths (:mod:`packer.slot`), so a slot the
policy fills is one the planner would accept.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from packer.catalog import gpu_type, mig_layouts
from packer.fleet import Model
from packer.plan import Placement, Plan, node_parts
from packer.slot import WHOLE, Item, SlotType, duty_window, item, largest

Rates = Mapping[tuple[str, str], float]
"""Sized rate per (model, slot id), overriding the plan's ``rate_rps``."""


def headroom_u(plan: Plan) -> float:
    """Usable share of a duty cycle, as the plan was made with (``plan.settings.u``): a slot's
    room is what it holds at the plan's headroom, so "enough" means what the planner meant."""
    return plan.settings.u


def slot_type(plan: Plan, p: Placement | "SlotRef") -> SlotType:
    return SlotType(plan.fleet.pool(p.pool), p.slot)


@dataclass(frozen=True)
class SlotRef:
    """A slot by address: an existing placement's, a free MIG instance's or a new GPU's."""

    pool: str
    node: str
    gpu: int
    slot: str = WHOLE
    mig_start: int | None = None
    span: int = 1
    """GPUs a multi-GPU replica's slot covers (``gpus_per_replica``); its id is then ``…-xN``,
    as :attr:`Placement.id` names it, so an action on it finds it."""

    @property
    def id(self) -> str:
        tail = "whole" if self.slot == WHOLE else f"{self.slot}@{self.mig_start}"
        if self.span > 1:
            tail = f"x{self.span}"
        return f"{self.node}-g{self.gpu}-{tail}"

    @property
    def gpu_key(self) -> tuple[str, str, int]:
        return (self.pool, self.node, self.gpu)


def ref(p: Placement) -> SlotRef:
    return SlotRef(p.pool, p.node, p.gpu, p.slot, p.mig_start, max(1, len(p.gpus)))


def rate_of(p: Placement, model: str, rates: Rates | None = None) -> float:
    for m in p.models:
        if m.name == model:
            if rates is not None and (model, p.id) in rates:
                return rates[(model, p.id)]
            return m.rate_rps
    return 0.0


def items_of(plan: Plan, p: Placement, rates: Rates | None = None, *, exclude: str | None = None) -> list[Item]:
    st = slot_type(plan, p)
    return [item(plan.model(m.name), rate_of(p, m.name, rates), st, headroom_u(plan)) for m in p.models if m.name != exclude]


def can_host(plan: Plan, p: Placement, model: Model) -> bool:
    """Memory and kind allow ``model`` here (rate aside); never a second replica in one slot."""
    if len(p.gpus) > 1 or model.gpus_per_replica > 1:
        return False
    others = [m for m in p.models if m.name != model.name]
    pool = plan.fleet.pool(p.pool)
    if others and not pool.time_slicing and any(m.kind != model.kind for m in others):
        return False
    return sum(m.memory_gb for m in others) + model.memory_gb <= p.memory_capacity_gb + 1e-9


def room(plan: Plan, p: Placement, model: Model, rates: Rates | None = None) -> float:
    """Highest rate (rps) ``model`` can be sized for in ``p``, the other members at their rates.

    Works for a slot that hosts the model (its own replica is left out and re-added) and for one
    that does not. Bisection on the slot maths' O(n) feasibility test; 0.0 when it cannot fit.
    Example: an L4 slot with asr-en at 1562.5 rps and three small punct replicas has compute as
    its binding constraint; its room for asr-en is a little above 1562.5 (the planner left the
    headroom), and for asr-es, which is not there, whatever compute is left after asr-en.
    """
    if not can_host(plan, p, model):
        return 0.0
    u = headroom_u(plan)
    st = slot_type(plan, p)
    others = items_of(plan, p, rates, exclude=model.name)
    # The slot maths' own O(n) test (``packer.slot.duty_window``) with this model at rate ``r``:
    # feasibility only shrinks as ``r`` grows, so the feasible rates are [0, r*].

    def ok(r: float) -> bool:
        return duty_window(others + [item(model, r, st, u)], u) is not None

    if not ok(1e-6):
        return 0.0
    return largest(ok, ceiling=1e8, steps=40)


def empty_room(plan: Plan, slot: SlotRef, model: Model) -> float:
    """Room for ``model`` alone in an empty slot of this address's type."""
    st = slot_type(plan, slot)
    if model.gpus_per_replica > 1 or model.memory_gb > st.memory_gb + 1e-9:
        return 0.0
    empty = Placement(slot.pool, slot.node, slot.gpu, slot.slot, (), 0.0, 0.0, st.memory_gb, 0.0, "", "",
                      slot.mig_start, (slot.gpu,))
    return room(plan, empty, model)


# ---------------------------------------------------------------------------------------------
# GPUs: paid, free slots on them, and where a new one would go


def paid_gpus(plan: Plan) -> dict[tuple[str, str, int], str]:
    """GPUs the plan pays for, keyed (pool, node, index), with their layout (``whole`` or MIG)."""
    out = {(l.pool, l.node, l.gpu): l.layout for l in plan.layouts}
    for p in plan.placements:  # a plan without layouts still pays for what it places
        for g in p.gpus or (p.gpu,):
            out.setdefault((p.pool, p.node, g), WHOLE if p.slot == WHOLE else "?")
    return out


def free_slots(plan: Plan) -> list[SlotRef]:
    """Slots on paid GPUs that host nothing: empty whole GPUs (warm standby) and unused MIG
    instances. A replica placed there costs nothing more and waits only for its weights."""
    used = {(p.pool, p.node, g) for p in plan.placements for g in (p.gpus or (p.gpu,))}
    used_inst = {(p.pool, p.node, p.gpu, p.slot, p.mig_start) for p in plan.placements}
    out = []
    for (pool, node, g), layout in sorted(paid_gpus(plan).items()):
        if layout == WHOLE:
            if (pool, node, g) not in used:
                out.append(SlotRef(pool, node, g))
            continue
        gt = plan.fleet.pool(pool).gpu
        lay = next((l for l in mig_layouts(gt) if l.name == layout), None)
        if lay is None:
            continue
        for prof, start in lay.instances:
            if (pool, node, g, prof, start) not in used_inst:
                out.append(SlotRef(pool, node, g, prof, start))
    return out


def standby_gpus(plan: Plan) -> list[SlotRef]:
    """Paid whole GPUs with nothing on them: the warm standby."""
    return [s for s in free_slots(plan) if s.slot == WHOLE]


@dataclass(frozen=True)
class NewGpu:
    slot: SlotRef
    fresh_node: bool
    """True when the GPU needs a node that does not exist yet (the long cold start)."""
    node_wait_s: float = 0.0
    """Seconds until its node is up, for a node that exists but is still starting."""


def new_gpu(plan: Plan, pool_name: str, starting: Mapping[str, float] | None = None, *, width: int = 1,
            avoid: frozenset[str] = frozenset()) -> NewGpu | None:
    """Where one more whole GPU of ``pool_name`` would go: a free index on a node that exists
    (``starting`` gives the seconds left for nodes still coming up), else a new node; None when
    the pool is at ``max_nodes`` x ``gpus_per_node``. ``width`` > 1 asks for that many adjacent
    GPUs on one node (a multi-GPU replica); nodes in ``avoid`` (under a preemption notice) are
    neither used nor their names reused. Only this pool's nodes in ``avoid`` count: ``avoid``
    may name nodes of every pool, and l4-spot-n0 under notice once kept a100-n0, the only node an
    A100 pool of one node may have, from being started."""
    pool = plan.fleet.pool(pool_name)
    avoid = frozenset(n for n in avoid if node_parts(n)[0] == pool_name)
    if width > pool.gpus_per_node:
        return None
    paid = [k for k in paid_gpus(plan) if k[0] == pool_name]
    nodes: dict[str, set[int]] = {}
    for _, node, g in paid:
        nodes.setdefault(node, set()).add(g)
    for p in plan.placements:  # multi-GPU replicas occupy their whole span
        if p.pool == pool_name:
            nodes.setdefault(p.node, set()).update(p.gpus or (p.gpu,))
    starting = starting or {}
    for node in sorted(nodes, key=lambda n: (starting.get(n, 0.0), _node_index(n))):
        if node in avoid:
            continue
        free = [i for i in range(pool.gpus_per_node - width + 1)
                if not any(i + k in nodes[node] for k in range(width))]
        if free:
            return NewGpu(SlotRef(pool_name, node, free[0], span=width), False, max(0.0, starting.get(node, 0.0)))
    taken = {_node_index(n) for n in set(nodes) | set(avoid)}
    for k in range(pool.max_nodes):
        if k not in taken:
            return NewGpu(SlotRef(pool_name, f"{pool_name}-n{k}", 0, span=width), True)
    return None


def _node_index(node: str) -> int:
    k = node_parts(node)[1]
    return 1 << 30 if k is None else k


def gpu_price(plan: Plan, pool: str) -> float:
    return plan.fleet.pool(pool).cost_per_gpu_hour


def fill(plan: Plan, p: Placement, rates: Rates | None = None) -> float:
    """How full a slot is, 0..1: the larger of memory and compute at its largest duty cycle."""
    if not p.models:
        return 0.0
    its = items_of(plan, p, rates)
    u = headroom_u(plan)
    win = duty_window(its, u)
    if win is None:
        return 1.0
    d = win[1] if math.isfinite(win[1]) else win[0]
    comp = sum(i.load(d) for i in its) / (u * d) if d > 0 else 0.0
    return min(1.0, max(comp, p.memory_gb / p.memory_capacity_gb if p.memory_capacity_gb else 0.0))


def slot_fraction(plan: Plan, slot: SlotRef | Placement) -> float:
    """Share of its GPU a slot is (1 for whole GPUs, g/7-ish for MIG instances)."""
    if slot.slot == WHOLE:
        return 1.0
    g = gpu_type(plan.fleet.pool(slot.pool).gpu)
    p = g.profile(slot.slot)
    return max(p.compute_slices / g.compute_slices, p.memory_slices / g.memory_slices)
