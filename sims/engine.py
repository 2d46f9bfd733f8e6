"""The simulation loop: traffic in, slots serving, a policy scaling, the cluster slow to obey.

One clock, one event heap keyed ``(time, priority, seq)`` for the cluster's discrete events (slot
ready, preemption notice, node lost, policy tick). Between two events nothing about the cluster
changes, so the loop serves that whole window at once: it draws every model's arrivals for the
window, routes them to the replicas serving then, and lets each slot run its batches up to the
window's end (``SlotServer.advance``). Windows are at most one policy interval (15 s by default).

Events are typed (:data:`Event`); each handler returns the events it schedules next. Around the
loop, each in its own module: the nodes and slots and where a new slot fits (``sims/cluster.py``),
routing over the serving replicas (``sims/routing.py``: round-robin, sticky streams, or weighted),
and billing (``sims/billing.py``: a GPU costs its pool's price while any slot on it exists).
Replicas on a slot under a preemption notice, draining or still starting get nothing.
"""

from __future__ import annotations

import heapq
import math
import resource
import time
from collections import deque
from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np

from packer.catalog import gpu_type
from packer.errors import UserError
from packer.fleet import Model, Pool
from packer.plan import Plan, node_parts
from packer.slot import WHOLE, SlotType, evaluate, item
from sims.billing import Billing
from sims.cluster import Node, Slot, free_place
from sims.metrics import Stats, hist_percentile, hist_percentiles
from sims.policies import (StartReplica, AddSlot, ClusterView, ModelSignals, Policy, PoolView, StopReplica,
                           RemoveSlot, ReplicaView, SlotConfig, SlotView, Configure)
from sims.registry import get_policy
from sims.routing import Router, weighted_split  # noqa: F401 -- weighted_split: imported from here too
from sims.scenario import Scenario
from sims.server import BatcherConfig, Member, SlotServer, batcher_config
from sims.traffic import at_most, check_load, fmt_duration, model_rng, sources

# Event priorities at equal times: losses first, then notices, readiness, and the policy last so it
# sees the cluster as it is at that instant.
KILL, NOTICE, READY, TICK = 0, 1, 2, 3


@dataclass(frozen=True)
class Ready:
    """A new slot's node, image and weights are in: it serves."""

    slot: str


@dataclass(frozen=True)
class Notice:
    """A spot node's preemption notice."""

    node: str


@dataclass(frozen=True)
class Kill:
    """The cloud takes a noticed spot node, with whatever still runs on it."""

    node: str


@dataclass(frozen=True)
class Tick:
    """The policy looks at the cluster."""


@dataclass(frozen=True)
class End:
    """The run's end: nothing to do, it bounds the last window."""


Event = Ready | Notice | Kill | Tick | End
Scheduled = list[tuple[float, int, Event]]
"""(time, priority, event) a handler schedules next."""
HISTORY = 40
CDF_POINTS = (1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 97, 98, 99, 99.5, 99.9, 99.99)
Progress = Callable[[float, float], None]
MAX_MODEL_TICKS = 5_000_000
"""Most policy intervals × (models + 1) one run may take: a duration absurd on its own, whatever
the traffic. Each interval costs ~30 µs plus 27-65 µs per model (the policy's view, a point of
every model's series). At the default 15 s interval the cap is 173 days of a 4-model fleet, 4 days
of a 200-model one; the shipped scenarios run at most a day. Measured: ``small`` (4 models) with
no traffic, 43 days (a quarter of the cap) in 68 s at 400 MB peak RSS, so ~4.5 minutes and
~0.9 GB at the cap."""
MAX_QUEUED = 50_000_000
"""Most requests the run's queues may hold at once. Queues are the memory that grows with the run
(a plan far below its traffic, with no queue timeouts: the queue is one float64 per request, and
each window copies it). Measured: ``small`` at ×40 peak traffic reached the cap at t=210 s: 8 s,
1.36 GB peak RSS."""


@dataclass
class Result:
    """Everything a report needs; ``to_dict`` is the JSON form."""

    plan_id: str
    policy: str
    scenario: str
    seed: int
    duration_s: float
    models: list[dict[str, Any]]
    slots: list[dict[str, Any]]
    fleet: dict[str, Any]
    series: dict[str, Any]
    actions: list[dict[str, Any]]
    perf: dict[str, Any]
    policy_about: str = ""
    """What the policy scales on, where it says (``about``): a comparison names its baseline."""

    def to_dict(self) -> dict[str, Any]:
        return {"plan": self.plan_id, "policy": self.policy, "policy_about": self.policy_about,
                "scenario": self.scenario, "seed": self.seed,
                "duration_s": self.duration_s, "fleet": self.fleet, "models": self.models, "slots": self.slots,
                "series": self.series, "actions": self.actions, "perf": self.perf}


class Simulation:
    def __init__(self, plan: Plan, scenario: Scenario, *, seed: int = 0, policy: Policy | str | None = None,
                 u: float | None = None) -> None:
        # The slot maths run at the plan's headroom (``u`` overrides it, for experiments).
        self.plan, self.scenario, self.seed = plan, scenario, seed
        self.u = plan.settings.u if u is None else u
        self.fleet = plan.fleet
        self.names = [m.name for m in self.fleet.models]
        self.index = {n: i for i, n in enumerate(self.names)}
        self.sources = sources(self.fleet, scenario, seed)
        self.stats = Stats(self.names, [m.slo_ms for m in self.fleet.models])
        if policy is None or isinstance(policy, str):
            self.policy_name = policy or scenario.policy
            self.policy = get_policy(self.policy_name, plan, scenario.policy_options)
        else:
            self.policy_name = type(policy).__name__
            self.policy = policy
        self.now = 0.0
        self.heap: list[tuple[float, int, int, Event]] = []
        self._seq = 0
        self.nodes: dict[str, Node] = {}
        self.slots: dict[str, Slot] = {}
        self.replicas: list[list[Member]] = [[] for _ in self.names]
        self.rate_hist = [deque(maxlen=HISTORY) for _ in self.names]
        self.last_tick = 0.0
        self.new_count = 0
        self.billing = Billing(self.fleet.pools)
        self.actions: list[dict[str, Any]] = []
        self.series: dict[str, Any] = {"t": [], "gpus": [], "cost_per_hour": [],
                                       "models": {n: {"rate": [], "p50": [], "p99": [], "rejected": [],
                                                      "replicas": []} for n in self.names}}
        self.gone: list[Slot] = []
        self.router = Router(self.fleet, self.u, scenario.server.routing == "weighted")
        self.duration_name = "duration"
        """Where the run's duration was set (``run`` sets it), for the errors that name it."""
        self._build(plan)

    # -- setup ---------------------------------------------------------------------------------

    def _push(self, t: float, prio: int, what: Event) -> None:
        heapq.heappush(self.heap, (t, prio, self._seq, what))
        self._seq += 1

    def _node(self, name: str, pool: Pool, ready_at: float) -> Node:
        """A node; a name a gone node had is taken again (its notice and end have passed), with
        a preemption drawn afresh."""
        again = name in self.nodes
        n = Node(name, pool, ready_at, pool.spot, {g: [] for g in range(pool.gpus_per_node)})
        self.nodes[name] = n
        rate = self._preemption_rate(pool)
        if pool.spot and rate > 0:
            rng = model_rng(self.seed, "node:" + name + (f"@{self.now:.3f}" if again else ""), 2)
            self._push(self.now + float(rng.exponential(3600.0 / rate)), NOTICE, Notice(name))
        return n

    def _preemption_rate(self, pool: Pool) -> float:
        """The scenario's rate when it sets one (a what-if), else the pool's expected rate."""
        rate = self.scenario.cluster.spot_preemptions_per_node_hour
        return rate if rate > 0 else (pool.preemptions_per_node_hour or 0.0)

    def _notice_s(self, pool: Pool) -> float:
        """The pool's stated notice (``preemption_notice_s``), else the scenario's."""
        n = pool.preemption_notice_s
        return self.scenario.cluster.preemption_notice_s if n is None else n

    def _build(self, plan: Plan) -> None:
        for p in plan.placements:
            pool = self.fleet.pool(p.pool)
            node = self.nodes.get(p.node) or self._node(p.node, pool, 0.0)
            node.pulled = True
            sid = p.id
            slot = Slot(sid, pool, p.slot, node, p.gpu, max(1, len(p.gpus)), self._server(sid), 0.0, 0.0, ready=True)
            for g in (p.gpus or (p.gpu,)):
                node.gpus.setdefault(g, []).append(sid)
            st = slot.st
            for mem in p.models:
                model = self.fleet.model(mem.name)
                cfg = self._batcher(model, st, mem.batch_size, p.duty_cycle_ms)
                self._add_member(slot, mem.name, self._measured(mem.name, cfg), 0.0)
            self.slots[sid] = slot
        self._push(self.policy.interval_s, TICK, Tick())

    def _measured(self, name: str, cfg: BatcherConfig) -> BatcherConfig:
        """``cfg`` with the scenario's measured run time for ``name`` (``server.run_ms``), if any."""
        rt = self.scenario.server.run_time(name)
        return cfg if rt is None else replace(cfg, base_s=rt.base_ms / 1000.0, per_item_s=rt.per_item_ms / 1000.0)

    def _server(self, sid: str) -> SlotServer:
        sv = self.scenario.server
        return SlotServer(sid, sv.noise_cv, model_rng(self.seed, "slot:" + sid, 3), sv.missed_wake,
                          model_rng(self.seed, "slot:" + sid, 4))

    def _add_member(self, slot: Slot, name: str, cfg: Any, ready_at: float) -> Member:
        i = self.index[name]
        m = Member(name, i, len(self.replicas[i]), cfg, ready_at)
        slot.server.members.append(m)
        self.replicas[i].append(m)
        m.slot = slot
        return m

    # -- the loop ------------------------------------------------------------------------------

    def run(self, duration_s: float, progress: Progress | None = None, *, duration_name: str = "duration") -> Result:
        """Simulate ``duration_s`` seconds; ``duration_name`` is the field the user set it with
        (``--duration``, the scenario's ``duration``), for the errors that name it.

        Refused before anything is drawn when the run would pass the simulator's limits
        (:meth:`check`); while it runs, when its queues hold more than :data:`MAX_QUEUED` requests."""
        self.duration_name = duration_name
        self.check(duration_s, duration_name)
        wall0, cpu0 = time.perf_counter(), time.process_time()
        T = float(duration_s)
        self._push(T, TICK, End())
        while self.now < T:
            tn = min(self.heap[0][0], T)
            if tn > self.now:
                self._advance(self.now, tn)
                self.now = tn
            while self.heap and self.heap[0][0] <= self.now:
                _, _, _, ev = heapq.heappop(self.heap)
                for t, prio, nxt in self._handle(ev):
                    self._push(t, prio, nxt)
            if progress is not None:
                progress(self.now, T)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        return self._result(T, wall, cpu)

    def check(self, duration_s: float, duration_name: str = "duration") -> None:
        """Refuse a run that could not finish in bounded time and memory, naming the field to change:
        more than :data:`MAX_MODEL_TICKS` policy intervals × (models + 1) (a duration absurd on its
        own), or traffic past ``sims.traffic``'s caps (:func:`sims.traffic.check_load`)."""
        iv = float(getattr(self.policy, "interval_s", 15.0))
        if not (math.isfinite(iv) and iv > 0):
            raise UserError(f"policy_options.interval_s: {iv:g} must be a positive number of seconds. Fix: e.g. 15")
        T = float(duration_s)
        ticks = T / iv
        width = len(self.names) + 1
        if not ticks * width <= MAX_MODEL_TICKS:
            most = MAX_MODEL_TICKS / width * iv
            raise UserError(f"{duration_name}: {fmt_duration(T)} is too long to simulate: {ticks:,.0f} policy "
                            f"intervals of {iv:g} s for {len(self.names)} models, over the simulator's cap of "
                            f"{MAX_MODEL_TICKS:,} intervals × (models + 1). Fix: at most {at_most(most)} "
                            f"for this fleet, or a longer policy_options.interval_s")
        check_load(self.fleet, self.scenario, T, duration_name, window_s=iv)

    def _check_queues(self, t: float) -> None:
        """Refuse to go on once the queues hold more than :data:`MAX_QUEUED` requests: they are the
        memory that grows with the run, without bound when the plan serves far less than arrives."""
        q = sum(m.queued for s in self.slots.values() for m in s.server.members)
        if q > MAX_QUEUED:
            worst = max((m for s in self.slots.values() for m in s.server.members), key=lambda m: m.queued)
            raise UserError(f"{self.duration_name}: at t={t:.0f} s {q:,} requests are queued ({worst.model} "
                            f"{worst.queued:,}), over the simulator's cap of {MAX_QUEUED:,}: this plan serves far "
                            f"less than arrives. Fix: a shorter {self.duration_name}, less traffic, or "
                            f"server.queue_timeouts: true")

    def _advance(self, t0: float, t1: float) -> None:
        st = self.stats
        for i, src in enumerate(self.sources):
            a = src.take(t0, t1)
            n = a.times.size
            if not n:
                continue
            st.arrived(i, n)
            live = [m for m in self.replicas[i] if not m.draining and not m.removed and m.ready_at <= t0
                    and not m.slot.preempting and m.slot.ready]  # type: ignore[attr-defined]
            k = len(live)
            if k == 0:
                st.rejected(i, a.times, a.times, "no-replica")
            else:
                self.router.route(i, a, live)
        for s in self.slots.values():
            s.server.advance(t1)
            s.server.commit(t1, st)
        self._check_queues(t1)
        self.billing.accrue(self.nodes.values(), t1 - t0)
        for s in list(self.slots.values()):
            self._reap(s, t1)

    def _reap(self, s: Slot, t: float) -> None:
        """Forget drained replicas, and the slot once it has none (as of its last batch's end)."""
        for m in s.server.members:
            if m.draining and not m.removed and (m.ready_at > t or (m.queued == 0 and not m.inflight)):
                m.removed = True
        if all(m.removed for m in s.server.members) and s.server.free_at <= t:
            at = max(s.server.free_at, s.drain_from)
            held = [g for g, ids in s.node.gpus.items() if s.id in ids]
            self._remove_slot(s, at)
            emptied = sum(1 for g in held if not s.node.gpus[g])
            self.billing.refund(s.pool.name, (t - at) * emptied)  # billed to t above; they ended at `at`

    def _remove_slot(self, s: Slot, t: float) -> None:
        if s.id not in self.slots:
            return
        del self.slots[s.id]
        s.removed_at = t
        for m in s.server.members:
            m.removed = True
        for i in {m.idx for m in s.server.members}:
            self.replicas[i] = [m for m in self.replicas[i] if not m.removed]
        for ids in s.node.gpus.values():
            if s.id in ids:
                ids.remove(s.id)
        self.gone.append(s)

    def _handle(self, ev: Event) -> Scheduled:
        if isinstance(ev, Ready):
            return self._ready(ev)
        if isinstance(ev, Notice):
            return self._notice(ev)
        if isinstance(ev, Kill):
            return self._kill(ev)
        if isinstance(ev, Tick):
            return self._tick()
        return []

    def _ready(self, ev: Ready) -> Scheduled:
        s = self.slots.get(ev.slot)
        if s is not None:
            s.ready = True
            s.node.pulled = True
        return []

    def _notice(self, ev: Notice) -> Scheduled:
        n = self.nodes.get(ev.node)
        if n is None or not n.alive:
            return []
        n.preempting = True
        for ids in n.gpus.values():
            for sid in ids:
                self.slots[sid].preempting = True
        notice = self._notice_s(n.pool)
        n.gone_at = self.now + notice
        self._log(None, f"spot node {n.name} preempted, {notice:g} s notice", "applied")
        return [(n.gone_at, KILL, Kill(n.name))]

    def _kill(self, ev: Kill) -> Scheduled:
        n = self.nodes[ev.node]
        n.alive = False
        for ids in list(n.gpus.values()):
            for sid in list(ids):
                s = self.slots[sid]
                s.server.drop(self.now, self.stats, "preempted")
                self._remove_slot(s, self.now)
        return []

    # -- policy --------------------------------------------------------------------------------

    def _tick(self) -> Scheduled:
        """Series for the report, the policy's view, its actions applied; the next look."""
        now = self.now
        dt = max(now - self.last_tick, 1e-9)
        ser = self.series
        ser["t"].append(round(now, 3))
        gpus = self.billing.in_use(self.nodes.values())
        ser["gpus"].append(sum(gpus.values()))
        ser["cost_per_hour"].append(self.billing.cost_per_hour(gpus))
        signals: dict[str, ModelSignals] = {}
        for i, name in enumerate(self.names):
            arr, qms, p50, p99, rej = self.stats.end_tick(i)
            self.rate_hist[i].append(arr / dt)
            reps = tuple(ReplicaView(name, m.slot.id, m.slot.ready and m.ready_at <= now, m.ready_at,  # type: ignore
                                     m.draining) for m in self.replicas[i] if not m.removed)
            ms = ser["models"][name]
            ms["rate"].append(round(arr / dt, 3))
            ms["p50"].append(round(p50, 3))
            ms["p99"].append(round(p99, 3))
            ms["rejected"].append(rej)
            ms["replicas"].append(sum(1 for r in reps if r.ready and not r.draining))
            model = self.fleet.models[i]
            live = [m for m in self.replicas[i] if not m.removed]
            signals[name] = ModelSignals(name, model.kind, model.slo_ms, tuple(self.rate_hist[i]),
                                         sum(m.queued for m in live), sum(m.in_flight for m in live), qms, p99, rej,
                                         reps)
        slots: dict[str, SlotView] = {}
        for s in self.slots.values():
            busy = min(1.0, (s.server.busy_s - s.busy_mark) / dt)
            s.busy_mark = s.server.busy_s
            s.busy_last = busy
            live = s.live
            slots[s.id] = SlotView(s.id, s.pool.name, s.profile, s.node.name, s.node.spot,
                                   tuple(m.model for m in live if not m.draining), busy,
                                   sum(self.fleet.models[m.idx].memory_gb for m in live), s.st.memory_gb,
                                   s.ready, s.preempting, s.node.gone_at, s.gpu)
        pools = {p.name: PoolView(p.name, gpus[p.name], p.max_gpus, p.cost_per_gpu_hour, p.spot)
                 for p in self.fleet.pools}
        self.last_tick = now
        view = ClusterView(now, self.policy.interval_s, self.plan, signals, slots, pools)
        for a in self.policy.decide(view, now):
            self._apply(a)
        return [(now + self.policy.interval_s, TICK, Tick())]

    def _log(self, action: Any, text: str, outcome: str) -> None:
        self.actions.append({"t": round(self.now, 3), "action": text, "outcome": outcome,
                             "reason": getattr(action, "reason", "") if action is not None else ""})

    def _apply(self, a: Any) -> None:
        try:
            if isinstance(a, AddSlot):
                text = f"add slot {a.pool}/{a.profile} with {'+'.join(a.models)}"
                self._log(a, text, self._add_slot(a))
            elif isinstance(a, StartReplica):
                self._log(a, f"add {a.model} to {a.slot}", self._add_replica(a))
            elif isinstance(a, StopReplica):
                self._log(a, f"remove {a.model} from {a.slot}", self._remove_replica(a.model, a.slot, a.config))
            elif isinstance(a, Configure):
                self._log(a, f"configure {a.slot}", self._configure(a))
            elif isinstance(a, RemoveSlot):
                s = self.slots.get(a.slot)
                if s is None:
                    self._log(a, f"remove slot {a.slot}", "refused: no such slot")
                else:
                    for m in s.live:
                        m.draining = True
                    s.drain_from = self.now
                    self._log(a, f"remove slot {a.slot}", "applied")
            else:
                self._log(None, repr(a), "refused: not an action")
        except KeyError as e:
            self._log(a, repr(a), f"refused: unknown {e}")

    def _group(self, st: SlotType, names: list[str]) -> list[Any]:
        """Batcher configs for a new group, from the planner's slot maths at each model's peak share."""
        models = [self.fleet.model(n) for n in names]
        rates = [m.traffic.peak_rps / (len([r for r in self.replicas[self.index[m.name]] if not r.removed]) + 1)
                 for m in models]
        try:
            res = evaluate([item(m, r, st, self.u) for m, r in zip(models, rates)], math.inf, self.u)
            return [self._batcher(m, st, mr.batch_size, res.duty_cycle_ms) for m, mr in zip(models, res.members)]
        except ValueError:
            # No duty cycle meets every SLO at those rates: serve full batches, one after another.
            d = sum(item(m, 0.0, st, self.u).run_ms(m.max_batch) for m in models)
            return [self._batcher(m, st, m.max_batch, d) for m in models]

    def _batcher(self, model: Model, st: SlotType, batch: int, duty_cycle_ms: float) -> BatcherConfig:
        """What the Triton writer renders for one member, under the scenario's server settings."""
        sv = self.scenario.server
        return batcher_config(model, st, batch, duty_cycle_ms, queue_delay_ms=sv.queue_delay_ms,
                              timeouts=sv.queue_timeouts, queue_bound=sv.queue_bound)

    def _weights(self, names: list[str]) -> float:
        return max(self.scenario.cluster.cold_start.weights_s(self.fleet.model(n).memory_gb) for n in names)

    def _add_slot(self, a: AddSlot) -> str:
        pool = self.fleet.pool(a.pool)
        if not a.models:
            return "refused: a slot needs at least one model"
        gt = gpu_type(pool.gpu)
        if a.profile != WHOLE and (not pool.mig or a.profile not in {p.name for p in gt.mig_profiles}):
            return f"refused: pool {pool.name} has no MIG profile {a.profile}"
        st = SlotType(pool, a.profile)
        models = [self.fleet.model(n) for n in a.models]
        width = max(m.gpus_per_replica for m in models)
        if width > 1 and (len(models) > 1 or a.profile != WHOLE):
            return f"refused: a {width}-GPU replica takes whole GPUs alone"
        if width > pool.gpus_per_node:
            return f"refused: {width} GPUs per replica, but {pool.name} has {pool.gpus_per_node} per node"
        mem = sum(m.memory_gb for m in models)
        if mem > st.memory_gb * width + 1e-9:
            return f"refused: {mem:.1f} GB does not fit a {a.profile} slot ({st.memory_gb:.1f} GB)"
        nodes = list(self.nodes.values())
        if pool.spot:  # as the plan's new_gpu does: a spot node running none of these models first
            mine = [n for n in nodes if n.pool.name == pool.name and n.alive]
            clash = [n for n in mine if self._runs(n, a.models)]
            nodes = [n for n in mine if n not in clash] + ([] if len(mine) < pool.max_nodes else clash)
        hinted = self.nodes.get(a.node) if a.node else None
        fresh = (a.node is not None and (hinted is None or not hinted.alive)
                 and node_parts(a.node)[0] == pool.name)  # a new node by the plan's name (a gone one's too)
        place = None
        if hinted is not None and not fresh:
            if a.gpu is not None:
                place = free_place([hinted], self.slots, pool, a.profile, width, gpu=a.gpu)
            place = place or free_place([hinted], self.slots, pool, a.profile, width)
        if place is None and not fresh:
            place = free_place(nodes, self.slots, pool, a.profile, width)
        if place is None:
            alive = sum(1 for n in self.nodes.values() if n.pool.name == pool.name and n.alive)
            if alive >= pool.max_nodes:
                return f"refused: pool {pool.name} is at max_nodes {pool.max_nodes} with no free GPU"
            k = sum(1 for n in self.nodes if n.startswith(f"{pool.name}-new"))
            name = a.node if fresh else f"{pool.name}-new{k}"
            node = self._node(name, pool, self.now + self.scenario.cluster.cold_start.node_s)  # type: ignore[arg-type]
            place = (node, list(range(width)))
        node, gs = place
        cs = self.scenario.cluster.cold_start
        ready_at = max(self.now, node.ready_at) + (0.0 if node.pulled else cs.image_s) + self._weights(
            list(a.models))
        self.new_count += 1
        sid = f"{pool.name}-new{self.new_count}-{a.profile}"
        slot = Slot(sid, pool, a.profile, node, gs[0], width, self._server(sid), ready_at, self.now)
        slot.server.free_at = ready_at
        for g in gs:
            node.gpus[g].append(sid)
        given = self._configured(st, a.config, list(a.models))
        cfgs = [given[n] for n in a.models] if given is not None else self._group(st, list(a.models))
        for name, cfg in zip(a.models, cfgs):
            self._add_member(slot, name, self._measured(name, cfg), ready_at)
        self.slots[sid] = slot
        self._push(ready_at, READY, Ready(sid))
        return f"applied: {sid} serves at t={ready_at:.0f} s"

    def _runs(self, node: Any, models: tuple[str, ...]) -> bool:
        """Does a live slot on ``node`` run one of ``models``?"""
        return any(m.model in models and not m.removed for ids in node.gpus.values() for i in ids
                   for m in self.slots[i].server.members)

    def _add_replica(self, a: StartReplica) -> str:
        s = self.slots.get(a.slot)
        if s is None:
            return "refused: no such slot"
        if s.preempting:
            return "refused: slot is being preempted"
        names = [m.model for m in s.live if not m.draining] + [a.model]
        mem = sum(self.fleet.model(n).memory_gb for n in names)
        if mem > s.st.memory_gb + 1e-9:
            return f"refused: {mem:.1f} GB over the slot's {s.st.memory_gb:.1f} GB"
        ready_at = max(self.now, s.ready_at) + self._weights([a.model])
        given = self._configured(s.st, a.config, [a.model])
        if given is not None:
            self._tell(s, given)  # the group changed: every member is told the slot's new config
            cfg = given[a.model]
        else:
            cfg = self._group(s.st, names)[-1]
        self._add_member(s, a.model, self._measured(a.model, cfg), ready_at)
        return f"applied: serves at t={ready_at:.0f} s"

    def _configure(self, a: Configure) -> str:
        s = self.slots.get(a.slot)
        if s is None:
            return "refused: no such slot"
        given = self._configured(s.st, a.config, [])
        if given is None or not any(m.model in given for m in s.live if not m.draining):
            return "refused: the config names no member of the slot"
        self._tell(s, given)  # a member it does not name is leaving: it keeps its config until it goes
        return "applied"

    def _configured(self, st: SlotType, config: SlotConfig | None, names: list[str]) -> dict[str, Any] | None:
        """Batcher configs from a policy's :class:`SlotConfig`, one per model it names, or None
        where it gives none or does not name every one of ``names``. A member it does not name
        keeps its config (it is leaving the slot)."""
        if config is None:
            return None
        batches = dict(config.batches)
        if any(n not in batches for n in names):
            return None
        return {n: self._batcher(self.fleet.model(n), st, b, config.duty_cycle_ms) for n, b in batches.items()}

    def _tell(self, s: Slot, given: dict[str, Any]) -> None:
        """Every member of ``s`` that stays and that ``given`` names takes its config from it."""
        for m in s.live:
            if not m.draining and m.model in given:
                m.cfg = self._measured(m.model, given[m.model])

    def _remove_replica(self, model: str, slot: str, config: SlotConfig | None = None) -> str:
        s = self.slots.get(slot)
        if s is None:
            return "refused: no such slot"
        for m in s.live:
            if m.model == model and not m.draining:
                m.draining = True
                s.drain_from = self.now
                given = self._configured(s.st, config, [])
                if given is not None:
                    self._tell(s, given)
                return "applied"
        return f"refused: no replica of {model} in {slot}"

    # -- results -------------------------------------------------------------------------------

    def _result(self, T: float, wall: float, cpu: float) -> Result:
        models = []
        total_arr = 0
        for i, s in enumerate(self.stats.models):
            self.stats.flush(i)
            hist = s.hist + s.tick_hist  # the last, unfinished interval too
            top = np.maximum(s.top, s.tick_top)
            live = [m for m in self.replicas[i] if not m.removed]
            queued = sum(m.queued for m in live)
            inflight = sum(m.in_flight for m in live)
            rej = sum(s.rejected.values())
            total_arr += s.arrivals
            finished = s.completed + rej
            models.append({
                "name": s.name, "kind": self.fleet.models[i].kind, "slo_ms": s.slo_ms, "arrivals": s.arrivals,
                "completed": s.completed, "rejected": dict(s.rejected), "queued_at_end": queued,
                "in_flight_at_end": inflight,
                "p50_ms": round(hist_percentile(hist, 50, top), 3), "p95_ms": round(hist_percentile(hist, 95, top), 3),
                "p99_ms": round(hist_percentile(hist, 99, top), 3),
                "mean_ms": round(s.latency_sum_ms / s.completed, 3) if s.completed else 0.0,
                "mean_queue_ms": round(s.queue_sum_ms / s.completed, 3) if s.completed else 0.0,
                # Undefined (None, JSON null) with no request finished: no number would be true.
                "slo_attainment": round(s.slo_ok / finished, 6) if finished else None,
                "cdf": [[q, round(x, 3)] for q, x in zip(CDF_POINTS, hist_percentiles(hist, CDF_POINTS, top))]
                if s.completed else [],
            })
        slots = []
        for s in list(self.slots.values()) + self.gone:
            end = s.removed_at if s.removed_at is not None else T
            life = max(end - s.created, 1e-9)
            slots.append({"id": s.id, "pool": s.pool.name, "profile": s.profile, "node": s.node.name,
                          "models": [m.model for m in s.server.members], "created_s": s.created,
                          "removed_s": s.removed_at, "utilisation": round(min(1.0, s.server.busy_s / life), 4)})
        done = sum(s.completed + sum(s.rejected.values()) for s in self.stats.models)
        fleet = {**self.billing.totals(T), "plan_cost_per_hour": self.plan.cost_per_hour, "requests": total_arr,
                 "slo_attainment": round(sum(s.slo_ok for s in self.stats.models) / done, 6) if done else None}
        perf = {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
                "requests_per_wall_s": round(total_arr / wall) if wall > 0 else 0,
                "requests_per_cpu_s": round(total_arr / cpu) if cpu > 0 else 0,
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)}
        return Result(self.plan.id, self.policy_name, self.scenario.name, self.seed, T, models, slots, fleet,
                      self.series, self.actions, perf, policy_about=getattr(self.policy, "about", ""))


def simulate(plan: Plan, scenario: Scenario, *, duration_s: float, seed: int = 0, policy: Policy | str | None = None,
             progress: Progress | None = None, duration_name: str = "duration") -> Result:
    """Replay ``scenario``'s traffic against ``plan`` for ``duration_s`` simulated seconds
    (``duration_name``: where the user set it, for errors; see :meth:`Simulation.run`)."""
    return Simulation(plan, scenario, seed=seed, policy=policy).run(duration_s, progress, duration_name=duration_name)
