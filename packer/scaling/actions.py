"""Scaling actions, each with its reason and expected cost per hour, and ``apply`` to a plan.

An action is data: the policy decides, the caller acts (the reconciler on a cluster, the simulator
on its model of one). ``cost_per_hour`` is the change of the fleet's hourly bill once the action
is done: positive when a GPU is added, negative when one is released, 0 when it only uses room
already paid for. ``ready_in_s`` is the cold start before the new capacity serves.

:func:`apply` turns a plan and actions into the next plan, so the deployed state stays one type
from planner to cluster; the slot maths re-evaluates every changed slot, and an action that would
break a slot's memory, compute or SLO is refused with an error rather than deployed.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace
from typing import ClassVar

from packer.plan import GpuLayout, Member, Move, Placement, Plan, node_parts, round_cost
from packer.scaling.room import SlotRef, headroom_u, paid_gpus, ref, slot_type
from packer.slot import WHOLE, evaluate, item

ModelRate = tuple[str, float]


@dataclass(frozen=True, kw_only=True)
class Action:
    """One change the scaling policy makes to the plan, with its reason, cost and delay.

    The one meaning of ``Action`` in packer: a cluster write is a :class:`k8s.diff.Change`, a
    Triton model-control step a :class:`serving.control.ControlStep`, and the simulator's lowered
    form a ``sims.policies.ClusterAction``."""

    kind: ClassVar[str] = "action"
    reason: str
    """Why, in words a person on call can check: the numbers that triggered it."""
    cost_per_hour: float
    """Change of the hourly bill once done (negative saves)."""
    ready_in_s: float = 0.0
    """Cold start until the added capacity serves (0 for pure re-sizing and removals)."""

    def summary(self) -> str:
        return self.kind


@dataclass(frozen=True, kw_only=True)
class Resize(Action):
    """Size an existing replica for another rate: its slot had room (or it needs less)."""

    kind: ClassVar[str] = "resize"
    model: str
    slot: SlotRef
    rate_rps: float

    def summary(self) -> str:
        return f"resize {self.model} in {self.slot.id} to {self.rate_rps:.1f} rps"


@dataclass(frozen=True, kw_only=True)
class AddReplica(Action):
    """One more replica of one model in spare room of a slot that already runs: no new GPU."""

    kind: ClassVar[str] = "add_replica"
    model: str
    slot: SlotRef
    rate_rps: float
    replaces: SlotRef | None = None
    """The replica this one replaces (a move), removed once the new one serves."""

    def summary(self) -> str:
        tail = f", replacing the one in {self.replaces.id}" if self.replaces else ""
        return f"add {self.model} to {self.slot.id} at {self.rate_rps:.1f} rps{tail}"


@dataclass(frozen=True, kw_only=True)
class RemoveReplica(Action):
    """Stop one replica (after its queue drains); a slot left empty goes, and so does its GPU
    once nothing else runs on it."""

    kind: ClassVar[str] = "remove_replica"
    model: str
    slot: SlotRef

    def summary(self) -> str:
        return f"remove {self.model} from {self.slot.id}"


@dataclass(frozen=True, kw_only=True)
class AddGroup(Action):
    """A copy of a whole packed group on a new slot: every member gains capacity at once."""

    kind: ClassVar[str] = "add_group"
    source: SlotRef
    slot: SlotRef
    rates: tuple[ModelRate, ...]
    new_gpu: bool = True

    def summary(self) -> str:
        return f"copy group {self.source.id} ({', '.join(m for m, _ in self.rates)}) to {self.slot.id}"


@dataclass(frozen=True, kw_only=True)
class SplitOut(Action):
    """A hot model on a slot of its own (a free slot, or a new GPU)."""

    kind: ClassVar[str] = "split_out"
    model: str
    slot: SlotRef
    rate_rps: float
    new_gpu: bool = False
    replaces: SlotRef | None = None
    """The replica in a packed group this one takes over from, removed once the new one serves
    (None adds a replica and leaves the group as it is)."""

    def summary(self) -> str:
        tail = f", out of {self.replaces.id}" if self.replaces else ""
        return f"split {self.model} out to {'new GPU ' if self.new_gpu else ''}{self.slot.id} at {self.rate_rps:.1f} rps{tail}"


@dataclass(frozen=True, kw_only=True)
class Consolidate(Action):
    """Empty one slot: drop replicas no longer needed, move the rest into room elsewhere."""

    kind: ClassVar[str] = "consolidate"
    slot: SlotRef
    drops: tuple[str, ...] = ()
    moves: tuple[tuple[str, SlotRef, float], ...] = ()
    """(model, destination, rate) for replicas that must survive (``min_replicas``, load)."""
    resizes: tuple[tuple[str, SlotRef, float], ...] = ()
    """Replicas elsewhere re-sized to the demand, making the room the moves use."""
    release_gpu: bool = True
    """False keeps the emptied GPU as warm standby (or it still holds other MIG instances)."""

    def summary(self) -> str:
        parts = [f"drop {m}" for m in self.drops] + [f"move {m} to {d.id}" for m, d, _ in self.moves]
        what = "release GPU" if self.release_gpu else "keep as standby"
        return f"empty {self.slot.id} ({'; '.join(parts) or 'nothing on it'}), {what}"


@dataclass(frozen=True, kw_only=True)
class Standby(Action):
    """Provision an empty whole GPU so the next new slot waits only for weights."""

    kind: ClassVar[str] = "standby"
    slot: SlotRef

    def summary(self) -> str:
        return f"keep {self.slot.id} as warm standby"


@dataclass(frozen=True, kw_only=True)
class Replan(Action):
    """Ask the planner for a migration-aware re-plan at these rates. Not applied by
    :func:`apply`: the caller runs ``plan_fleet(fleet.with_traffic(...), current=plan)``."""

    kind: ClassVar[str] = "replan"
    traffic: tuple[ModelRate, ...]
    """Peak rate per model the new plan must hold (:attr:`Demand.replan_want`; the planner's
    capacity is the same slot maths as the policy's)."""
    fragmentation: float
    headroom: float | None = None
    """Duty-cycle headroom to plan with (None: the deployed plan's)."""

    def summary(self) -> str:
        return f"re-plan ({self.fragmentation:.0%} of paid capacity idle)"


# ---------------------------------------------------------------------------------------------


@dataclass
class _Slot:
    ref: SlotRef
    members: dict[str, tuple[int, float]]
    """model -> (replica index, rate)."""
    original: Placement | None = None


def flaps(log: list[tuple[float, Action]], window_s: float) -> list[tuple[str, float, float]]:
    """(model, down at, up at) for every scale-up of a model within ``window_s`` after a
    scale-down of it, in a time-ordered action log: the issue's definition of flapping.

    Up: ``AddReplica``/``SplitOut`` of the model, or an ``AddGroup`` holding it. Down:
    ``RemoveReplica`` of it, or a ``Consolidate`` that drops or moves it.
    """
    last_down: dict[str, float] = {}
    out = []
    for t, a in log:
        if isinstance(a, (AddReplica, SplitOut)):
            ups = [a.model]
        elif isinstance(a, AddGroup):
            ups = [m for m, _ in a.rates]
        else:
            ups = []
        for m in ups:
            if m in last_down and 0 <= t - last_down[m] <= window_s:
                out.append((m, last_down[m], t))
        if isinstance(a, Consolidate):
            for m in list(a.drops) + [m for m, _, _ in a.moves]:
                last_down[m] = t
        elif isinstance(a, RemoveReplica):
            last_down[a.model] = t
    return out


NO_BOUND = "no bound"
"""How a scaled plan's ``bound_method`` begins: its lower bound (0) bounds nothing (:func:`apply`)."""


def apply(plan: Plan, actions: list[Action] | tuple[Action, ...]) -> Plan:
    """The plan after ``actions`` (in order). Raises ValueError if one would break a slot.

    ``Replan`` is skipped: it needs the planner, which the caller injects.
    """
    e = _Edit.of(plan)
    for a in actions:
        if isinstance(a, Resize):
            e.resize(a.slot, a.model, a.rate_rps)
        elif isinstance(a, AddReplica):
            if a.slot.id not in e.slots:
                raise ValueError(f"add_replica needs an existing slot, {a.slot.id} is not one")
            e.add(a.slot, a.model, a.rate_rps)
            if a.replaces is not None:
                e.remove(a.replaces, a.model)
        elif isinstance(a, AddGroup):
            for model, rate in a.rates:
                e.add(a.slot, model, rate)
        elif isinstance(a, SplitOut):
            e.add(a.slot, a.model, a.rate_rps)
            if a.replaces is not None:
                e.remove(a.replaces, a.model)
        elif isinstance(a, RemoveReplica):
            e.remove(a.slot, a.model)
        elif isinstance(a, Standby):
            e.slot_at(a.slot)
        elif isinstance(a, Consolidate):
            e.consolidate(a)
        elif isinstance(a, Replan):
            continue
        else:  # pragma: no cover - a new action type must be taught to apply
            raise TypeError(f"unknown action {a!r}")
    return _rebuild(plan, e.slots, e.layouts, tuple(e.moves))


@dataclass
class _Edit:
    """A plan being edited by :func:`apply`: its slots and paid GPUs by key, the next replica
    index of each model, and the moves so far."""

    slots: dict[str, _Slot]
    layouts: dict[tuple[str, str, int], GpuLayout]
    next_idx: dict[str, int]
    moves: list[Move]

    @classmethod
    def of(cls, plan: Plan) -> "_Edit":
        slots: dict[str, _Slot] = {}
        for p in plan.placements:
            slots[p.id] = _Slot(ref(p), {m.name: (m.replica, m.rate_rps) for m in p.models}, p)
        layouts = {(l.pool, l.node, l.gpu): l for l in plan.layouts}
        for k, lay in paid_gpus(plan).items():
            if k not in layouts:
                layouts[k] = GpuLayout(k[0], k[1], k[2], lay)
        next_idx: dict[str, int] = defaultdict(int)
        for p in plan.placements:
            for m in p.models:
                next_idx[m.name] = max(next_idx[m.name], m.replica + 1)
        return cls(slots, layouts, next_idx, [])

    def slot_at(self, r: SlotRef) -> _Slot:
        if r.id not in self.slots:
            for g in range(r.gpu, r.gpu + r.span):  # a multi-GPU replica's new slot pays all its GPUs
                if (r.pool, r.node, g) not in self.layouts:
                    self.layouts[(r.pool, r.node, g)] = GpuLayout(r.pool, r.node, g, WHOLE)
            self.slots[r.id] = _Slot(r, {})
        return self.slots[r.id]

    def add(self, r: SlotRef, model: str, rate: float, idx: int | None = None, src: str | None = None) -> None:
        s = self.slot_at(r)
        if model in s.members:
            raise ValueError(f"{model} already has a replica in {r.id}")
        if idx is None:
            idx = self.next_idx[model]
            self.next_idx[model] += 1
        s.members[model] = (idx, rate)
        self.moves.append(Move(model, idx, src, r.id))

    def resize(self, r: SlotRef, model: str, rate: float) -> None:
        s = self.slots.get(r.id)
        if s is None or model not in s.members:
            raise ValueError(f"no replica of {model} in {r.id} to resize")
        s.members[model] = (s.members[model][0], rate)

    def remove(self, r: SlotRef, model: str) -> None:
        s = self.slots.get(r.id)
        if s is None or model not in s.members:
            raise ValueError(f"no replica of {model} in {r.id} to remove")
        self.moves.append(Move(model, s.members.pop(model)[0], r.id, None))
        if not s.members:
            del self.slots[r.id]
            # A multi-GPU replica's slot frees every GPU it spans, not just its first.
            for g in _gpus_of(s):
                if not any(o.ref.pool == r.pool and o.ref.node == r.node and g in _gpus_of(o)
                           for o in self.slots.values()):
                    self.layouts.pop((r.pool, r.node, g), None)

    def consolidate(self, a: Consolidate) -> None:
        """Empty a slot: its members dropped, moved (keeping their replica index) or resized
        elsewhere, every one accounted for; its GPU released if asked and nothing else is on it."""
        gone = self.slots.pop(a.slot.id, None)
        if gone is None:
            raise ValueError(f"no slot {a.slot.id} to empty")
        for model in a.drops:
            self.moves.append(Move(model, gone.members[model][0], a.slot.id, None))
        for model, dst, rate in a.moves:
            self.add(dst, model, rate, gone.members[model][0], a.slot.id)
        for model, dst, rate in a.resizes:
            self.resize(dst, model, rate)
        left = set(gone.members) - set(a.drops) - {m for m, _, _ in a.moves}
        if left:
            raise ValueError(f"emptying {a.slot.id} leaves {sorted(left)} without a place")
        if a.release_gpu and not any(s.ref.gpu_key == a.slot.gpu_key for s in self.slots.values()):
            self.layouts.pop(a.slot.gpu_key, None)


def _rebuild(plan: Plan, slots: dict[str, _Slot], layouts: dict[tuple[str, str, int], GpuLayout],
             moves: tuple[Move, ...]) -> Plan:
    u = headroom_u(plan)
    placements = []
    for s in slots.values():
        if not s.members:
            continue
        o = s.original
        if o is not None and {m.name: (m.replica, m.rate_rps) for m in o.models} == s.members:
            placements.append(o)
            continue
        st = slot_type(plan, s.ref)
        names = sorted(s.members)
        cap = st.memory_gb * s.ref.span if o is None else o.memory_capacity_gb
        its = [item(plan.model(n), s.members[n][1], st, u) for n in names]
        if sum(i.model.memory_gb for i in its) > cap + 1e-9:
            raise ValueError(f"{s.ref.id}: {', '.join(names)} need more than its {cap:.1f} GB")
        try:
            res = evaluate(its, cap, u)
        except ValueError:
            raise ValueError(f"{s.ref.id}: {', '.join(f'{n} at {s.members[n][1]:.1f} rps' for n in names)} "
                             "cannot all meet their SLOs in one duty cycle") from None
        members = tuple(
            Member(n, plan.model(n).kind, s.members[n][0], r.batch_size, round(r.share, 4), plan.model(n).memory_gb,
                   round(r.p99_bound_ms, 2), plan.model(n).slo_ms, s.members[n][1])
            for n, r in zip(names, res.members)
        )
        placements.append(Placement(
            pool=s.ref.pool, node=s.ref.node, gpu=s.ref.gpu, slot=s.ref.slot, models=members,
            duty_cycle_ms=round(res.duty_cycle_ms, 3), memory_gb=round(res.memory_gb, 3),
            memory_capacity_gb=round(cap, 2), compute_share=round(res.compute_share, 4), binding=res.binding,
            reason=res.reason, mig_start=s.ref.mig_start,
            gpus=o.gpus if o is not None else tuple(range(s.ref.gpu, s.ref.gpu + s.ref.span))))
    placements.sort(key=lambda p: (p.pool, _node_key(p.node), p.gpu, p.mig_start or 0, p.slot))
    lays = tuple(sorted(layouts.values(), key=lambda l: (l.pool, _node_key(l.node), l.gpu)))
    gpus: dict[str, int] = defaultdict(int)
    for l in lays:
        gpus[l.pool] += 1
    cost = sum(plan.fleet.pool(k).cost_per_gpu_hour * n for k, n in gpus.items())
    replicas: dict[str, int] = defaultdict(int)
    for p in placements:
        for m in p.models:
            replicas[m.name] += 1
    return replace(plan, status="scaled", cost_per_hour=round_cost(cost), gpus=dict(gpus),
                   placements=tuple(placements), layouts=lays,
                   replicas={m.name: replicas.get(m.name, 0) for m in plan.fleet.models}, moves=moves,
                   # The plan's bound was over plans of the fleet at its declared peak; these actions
                   # serve the load seen, so it bounds nothing here (a gap of 6.2 % against it read as
                   # a measure of this plan). No bound, said so, until a re-plan makes one.
                   lower_bound_cost_per_hour=0.0, bound_method=f"{NO_BOUND}: plan {plan.id} with scaling actions "
                   "applied to the load seen; `packer plan --current` re-plans it with a bound")


def _gpus_of(s: _Slot) -> tuple[int, ...]:
    if s.original is not None and s.original.gpus:
        return s.original.gpus
    return tuple(range(s.ref.gpu, s.ref.gpu + s.ref.span))


def _node_key(node: str) -> tuple[str, int]:
    pool, k = node_parts(node)
    return pool, 0 if k is None else k
