"""Scaling policies the simulator can run, and the contract between them and the simulator.

The contract
============
Every ``interval_s`` simulated seconds the simulator builds a :class:`ClusterView` (what a
controller could observe: per-model signals and per-slot state) and calls::

    actions = policy.decide(view, now)

``now`` is the simulated time in seconds since the start (it is also ``view.now``; passing it keeps
policies free of any clock). ``decide`` returns a list of actions, each with a human-readable
``reason``:

* :class:`AddSlot` ``(pool, profile, models)``: a new slot (a whole GPU, ``profile="whole"``, or
  one MIG instance) hosting one replica of each named model. It serves only after a cold start:
  node provisioning (only if no node of the pool has room), then image pull, then weight load.
* :class:`StartReplica` ``(model, slot)``: one more replica of ``model`` in an existing slot (memory
  must fit). Cold start: weight load only; the slot's other members keep serving.
* :class:`StopReplica` ``(model, slot)``: stop routing to that replica; its queue drains, then it
  is gone. A slot left with no members is released (its GPU stops costing money once the GPU is
  empty).
* :class:`RemoveSlot` ``(slot)``: every member of the slot, as above.

The simulator applies what it can and records every action with its outcome (``applied`` or
``refused: <why>``, e.g. a pool at ``max_nodes``) in the result's action log. Policies never
mutate the view. State a policy keeps between calls (hysteresis, stabilisation windows) lives in
the policy object; a pure ``decide(plan, signals, state, now, settings) -> (actions, state)``
function is wrapped by keeping ``state`` on the adapter (see :class:`FunctionPolicy`).

Registry
========
Policies are found by name in :mod:`sims.registry`, which lists ``static`` and ``hpa`` (here) and
``packer`` (:mod:`sims.policy_packer`, the real scaling policy) explicitly;
``register_policy(name, factory)`` there adds one, ``get_policy(name, plan, options)`` builds one.

Worked example: with ``interval_s = 15`` a 1 h run calls ``decide`` 240 times; an ``AddSlot`` at
``now = 600`` on a pool with a free GPU serves from ``600 + image_s + weights_s`` (the scenario's ``cluster.cold_start``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Union, runtime_checkable

from packer.errors import UserError
from packer.plan import Plan

# ---------------------------------------------------------------------------------------------
# What a policy sees


@dataclass(frozen=True)
class ReplicaView:
    """One replica of a model: where it runs and whether it serves yet."""

    model: str
    slot: str
    """Slot id (``Placement.id`` for slots of the starting plan, ``<pool>-new<k>-<profile>`` for
    slots the simulator created)."""
    ready: bool
    ready_at: float
    """Simulated second at which it serves (past for ready replicas)."""
    draining: bool = False


@dataclass(frozen=True)
class SlotView:
    """One slot (whole GPU or MIG instance) and what runs in it."""

    id: str
    pool: str
    profile: str
    """``whole`` or a MIG profile name (``3g.40gb``)."""
    node: str
    spot: bool
    models: tuple[str, ...]
    """Models with a (ready or starting) replica here, in slot order."""
    busy: float
    """Fraction of the last interval the slot spent running batches (0..1)."""
    memory_gb: float
    """Memory of the resident replicas."""
    memory_capacity_gb: float
    ready: bool
    preempting: bool = False
    """A spot preemption notice arrived: the slot dies at the end of the notice."""
    gone_at: float | None = None
    """When a notice takes it (simulated second), None without a notice."""
    gpu: int = 0
    """Index of its (first) GPU on the node."""


@dataclass(frozen=True)
class ModelSignals:
    """What a metrics pipeline would report for one model over recent intervals."""

    name: str
    kind: str
    slo_ms: float
    rate_history_rps: tuple[float, ...]
    """Arrival rate of each of the last (up to 40) intervals, oldest first; the last is the most
    recent interval. With 15 s intervals, ``mean(rate_history_rps[-4:])`` is the 1-minute rate."""
    queued: int
    """Requests waiting in batcher queues now."""
    in_flight: int
    """Requests in batches running now."""
    queue_ms_mean: float
    """Mean time requests dispatched in the last interval spent queued."""
    p99_ms: float
    """p99 latency of requests completed in the last interval (0 if none)."""
    rejected: int
    """Requests rejected (queue timeout, no replica, preemption) in the last interval."""
    replicas: tuple[ReplicaView, ...]

    @property
    def rate_rps(self) -> float:
        return self.rate_history_rps[-1] if self.rate_history_rps else 0.0

    @property
    def ready_replicas(self) -> int:
        return sum(1 for r in self.replicas if r.ready and not r.draining)

    @property
    def pending_replicas(self) -> int:
        return sum(1 for r in self.replicas if not r.ready)


@dataclass(frozen=True)
class PoolView:
    name: str
    gpus_in_use: int
    max_gpus: int
    cost_per_gpu_hour: float
    spot: bool


@dataclass(frozen=True)
class ClusterView:
    now: float
    interval_s: float
    plan: Plan
    """The starting plan; ``plan.fleet`` has every model's profile, SLO and traffic figures."""
    models: Mapping[str, ModelSignals]
    slots: Mapping[str, SlotView]
    pools: Mapping[str, PoolView]


# ---------------------------------------------------------------------------------------------
# What a policy may do


@dataclass(frozen=True)
class SlotConfig:
    """What a slot's members are told, as a plan says it (the Triton writer renders the same):
    the duty cycle and each member's batch. A policy that has a plan for the slot passes it, so
    the simulated slot is the one the cluster would run; without it the simulator works one out
    at each model's peak share."""

    duty_cycle_ms: float
    batches: tuple[tuple[str, int], ...]
    """(model, batch size) of every member the slot runs."""

    @classmethod
    def of(cls, p: Any) -> "SlotConfig":
        """A plan placement's duty cycle and every member's batch: what the Triton writer renders."""
        return cls(p.duty_cycle_ms, tuple((m.name, m.batch_size) for m in p.models))


@dataclass(frozen=True)
class AddSlot:
    pool: str
    profile: str
    models: tuple[str, ...]
    reason: str = ""
    config: SlotConfig | None = None
    node: str | None = None
    """The node a policy with a plan put it on: taken when that node has room for it, or made
    when no node has that name yet (a new node by the plan's name), so that a notice for a node
    means the same node to the policy and the simulator. None, or no room there: the first
    node with room, else a new one."""
    gpu: int | None = None
    """The GPU on ``node`` the plan put it on, taken first: a MIG slice the plan put in a paid
    A100's free instance went to the first GPU with a valid combination, and the simulator billed
    a second A100 the plan did not have (17.0/h against the plan's 12.90/h all evening)."""


@dataclass(frozen=True)
class StartReplica:
    model: str
    slot: str
    reason: str = ""
    config: SlotConfig | None = None
    """The slot's configuration with this replica in it: every member is told it (a reconciler
    re-renders the whole slot's configs when its group changes)."""


@dataclass(frozen=True)
class StopReplica:
    model: str
    slot: str
    reason: str = ""
    config: SlotConfig | None = None
    """The slot's configuration without this replica, told to the members that stay."""


@dataclass(frozen=True)
class RemoveSlot:
    slot: str
    reason: str = ""


@dataclass(frozen=True)
class Configure:
    """Tell a running slot's members a new configuration (a policy re-sized its replicas for other
    rates: the reconciler re-renders their configs)."""

    slot: str
    config: SlotConfig
    reason: str = ""


ClusterAction = Union[AddSlot, StartReplica, StopReplica, RemoveSlot, Configure]
"""What a simulator policy asks of the cluster (the scaling policy's own decisions are
:class:`packer.scaling.Action`; ``sims/policy_packer.py`` translates one into the other)."""


@runtime_checkable
class Policy(Protocol):
    interval_s: float
    """How often ``decide`` runs, in simulated seconds."""

    def decide(self, view: ClusterView, now: float) -> list[ClusterAction]: ...


PolicyFactory = Callable[[Plan, Mapping[str, Any]], Policy]

# ---------------------------------------------------------------------------------------------
# Built-in policies


class StaticPolicy:
    """Keep the plan: never scale, but replace every slot lost to a spot preemption.

    A lost slot is re-created with the same pool, profile and members (same cold start as any new
    slot), which is what a Kubernetes Deployment does for a killed pod.
    """

    def __init__(self, plan: Plan, options: Mapping[str, Any] | None = None) -> None:
        options = dict(options or {})
        self.interval_s = float(options.pop("interval_s", 15.0))
        if options:
            raise UserError(f"policy static: unknown options {sorted(options)}; it takes interval_s only")
        # Desired state: the plan's groups as (pool, profile, members) with a multiplicity.
        self.want: dict[tuple[str, str, tuple[str, ...]], int] = {}
        self.template: dict[tuple[str, str, tuple[str, ...]], SlotConfig] = {}
        for p in plan.placements:
            key = (p.pool, p.slot, tuple(m.name for m in p.models))
            self.want[key] = self.want.get(key, 0) + 1
            # A replacement is the group's pod template: configured as the plan configured it.
            self.template.setdefault(key, SlotConfig.of(p))

    def decide(self, view: ClusterView, now: float) -> list[ClusterAction]:
        have: dict[tuple[str, str, tuple[str, ...]], int] = {}
        for s in view.slots.values():
            if s.preempting:
                continue
            key = (s.pool, s.profile, s.models)
            have[key] = have.get(key, 0) + 1
        out: list[ClusterAction] = []
        for key, n in self.want.items():
            for _ in range(n - have.get(key, 0)):
                out.append(AddSlot(key[0], key[1], key[2], config=self.template[key],
                                   reason=f"replace lost slot of {'+'.join(key[2])} ({have.get(key, 0)}/{n} alive)"))
        return out


@dataclass
class _Deployment:
    pool: str
    profile: str
    models: tuple[str, ...]
    min_slots: int
    last_up: float = -math.inf
    history: list[tuple[float, int]] = field(default_factory=list)


class HpaPolicy:
    """Kubernetes HPA, one "deployment" per packed group of the plan.

    Each distinct group (pool, profile, member models) of the starting plan scales as a unit, as a
    Deployment of Triton pods would, by HPA's rule ``desired = ceil(ready * ratio)``, skipped when
    ``|ratio - 1| <= tolerance`` (HPA's 10 %). Scale-down takes the highest recommendation of the
    last ``downscale_window_s`` (HPA's 300 s stabilisation), never below the plan's count nor above
    ``max_factor`` times it. A new pod is the Deployment's pod template: the slot is configured as
    the plan configured the group (its duty cycle and batches), not worked out afresh.

    ``metric`` (what ``ratio`` is):

    * ``rps`` (default): each member's arrivals per ready replica over the last minute against
      ``target`` times the rate the plan sized a replica of it for at peak (a Pods metric of
      requests per second; with several members, the largest ratio, as HPA takes the largest
      recommendation of several metrics). Target 1.0: scale when a replica carries more than its
      planned share of the peak.
    * ``busy``: the mean busy fraction of the group's ready slots against ``target`` (GPU
      utilisation). A slot whose batcher has no queue delay starts its next batch the moment it
      frees, so it reads about 100 % busy at any load past a trickle: on the multilingual example's
      spike hour this HPA grew asr-en 4 -> 16 slots on flat traffic (its cap, ``max_factor``) and
      cost 30.13/h where the static plan held every SLO at 12.10/h. Kept to show that: GPU
      utilisation is not a signal for a batcher (NVIDIA's Triton autoscaling guide scales on queue
      time; GKE's inference guide on queue size or batch size).

    Worked numbers (``busy``): 2 slots of ``asr-en`` 80 % busy with target 0.6 give ``ceil(2 * 0.8
    / 0.6) = 3``; one new slot is requested and serves after its cold start (~3 min by default).
    Slots still starting count as current, so the policy does not ask again while it waits.
    """

    METRICS = ("rps", "busy")

    def __init__(self, plan: Plan, options: Mapping[str, Any] | None = None) -> None:
        options = dict(options or {})
        self.interval_s = float(options.pop("interval_s", 15.0))
        self.metric = str(options.pop("metric", "rps"))
        if self.metric not in self.METRICS:
            raise UserError(f"policy hpa: metric {self.metric!r} is not one of {', '.join(self.METRICS)}")
        self.target = float(options.pop("target", 1.0 if self.metric == "rps" else 0.6))
        self.tolerance = float(options.pop("tolerance", 0.1))
        self.downscale_window_s = float(options.pop("downscale_window_s", 300.0))
        self.max_factor = float(options.pop("max_factor", 4.0))
        if options:
            raise UserError(f"policy hpa: unknown options {sorted(options)}; it takes interval_s, metric, target, "
                            "tolerance, downscale_window_s, max_factor")
        if not 0 < self.target <= (4.0 if self.metric == "rps" else 1.0):
            raise UserError(f"policy hpa: target {self.target} must be in (0, {4 if self.metric == 'rps' else 1}]")
        self.groups: dict[tuple[str, str, tuple[str, ...]], _Deployment] = {}
        self.template: dict[tuple[str, str, tuple[str, ...]], SlotConfig] = {}
        self.planned: dict[tuple[str, str, tuple[str, ...]], dict[str, float]] = {}
        for p in plan.placements:
            key = (p.pool, p.slot, tuple(m.name for m in p.models))
            g = self.groups.setdefault(key, _Deployment(*key, min_slots=0))
            g.min_slots += 1
            self.template.setdefault(key, SlotConfig.of(p))
            self.planned.setdefault(key, {m.name: m.rate_rps for m in p.models})
        self.about = (f"HPA per packed group on requests a ready replica, target {self.target:.0%} of the rate the "
                      f"plan sized it for" if self.metric == "rps" else
                      f"HPA per packed group on GPU busy time, target {self.target:.0%}") + \
            f", up to {self.max_factor:g}x the plan's slots"

    def _ratio(self, view: ClusterView, key: tuple[str, str, tuple[str, ...]], ready: list) -> tuple[float, str]:
        """The metric over its target, and how it reads (for the action's reason)."""
        if self.metric == "busy":
            busy = sum(s.busy for s in ready) / len(ready) if ready else 0.0
            return busy / self.target, f"busy {busy:.0%} vs target {self.target:.0%}"
        worst, said = 0.0, ""
        for name, planned in self.planned[key].items():
            sig = view.models.get(name)
            if sig is None or planned <= 0:
                continue
            minute = sig.rate_history_rps[-4:]
            per = (sum(minute) / len(minute) if minute else 0.0) / max(1, sig.ready_replicas)
            ratio = per / (self.target * planned)
            if ratio > worst:
                worst, said = ratio, f"{name} {per:.1f} rps a replica vs target {self.target * planned:.1f}"
        return worst, said

    def decide(self, view: ClusterView, now: float) -> list[ClusterAction]:
        out: list[ClusterAction] = []
        for key, g in self.groups.items():
            slots = [s for s in view.slots.values()
                     if (s.pool, s.profile, s.models) == key and not s.preempting]
            current = len(slots)
            ready = [s for s in slots if s.ready]
            ratio, reads = self._ratio(view, key, ready)
            if ready and abs(ratio - 1.0) > self.tolerance:
                desired = math.ceil(len(ready) * ratio - 1e-9)
            else:
                desired = current
            desired = max(g.min_slots, min(desired, math.ceil(g.min_slots * self.max_factor)))
            g.history = [(t, d) for t, d in g.history if t > now - self.downscale_window_s] + [(now, desired)]
            if desired < current:
                desired = max(d for _, d in g.history)
            label = "+".join(g.models)
            if desired > current:
                for _ in range(desired - current):
                    out.append(AddSlot(g.pool, g.profile, g.models, config=self.template[key],
                                       reason=f"{label}: {reads} on {len(ready)} ready, want {desired}"))
            elif desired < current:
                # Remove slots still starting first (as a ReplicaSet deletes pending pods first): removing
                # a ready slot while its replacement starts would leave the group nothing to serve on.
                # Then the least busy ready slots that the plan did not need.
                starting = sorted((s for s in slots if not s.ready), key=lambda s: s.id)
                for s in (starting + sorted(ready, key=lambda s: (s.busy, s.id)))[: current - desired]:
                    out.append(RemoveSlot(s.id, reason=f"{label}: {reads}, below it for "
                                                       f"{self.downscale_window_s:g} s"))
        return out


class FunctionPolicy:
    """Adapter for a pure ``fn(view, state, now) -> (actions, state)`` policy: keeps ``state``."""

    def __init__(self, fn: Callable[[ClusterView, Any, float], tuple[list[ClusterAction], Any]], state: Any = None,
                 *, interval_s: float = 15.0) -> None:
        self.fn, self.state, self.interval_s = fn, state, interval_s

    def decide(self, view: ClusterView, now: float) -> list[ClusterAction]:
        actions, self.state = self.fn(view, self.state, now)
        return list(actions)
