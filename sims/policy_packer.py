"""The packer scaling policy (``packer.scaling``) in the simulator: ``--policy packer``.

The pure policy decides on a :class:`~packer.plan.Plan`; the simulator speaks slots and replicas.
This adapter keeps a *shadow plan* (the deployment as the policy last left it), feeds the policy
the simulator's signals, applies the actions to the shadow and translates them:

* ``AddReplica`` -> ``StartReplica``; ``SplitOut``/``AddGroup`` -> ``AddSlot`` (the simulator picks
  the GPU; the new slot's id is learnt from the next view);
* ``Consolidate`` -> ``StartReplica`` at each destination now, and ``RemoveSlot`` of the emptied slot
  once those replicas serve (make before break, as the reconciler does);
* ``Resize`` -> nothing: the simulator routes round-robin, which the policy already assumes; every
  slot whose configuration the decision changed is told it (``Configure``), as the reconciler renders it;
* ``Replan`` -> run and judged by the core's step (:func:`packer.scaling.step`, the reconciler's
  too) with the injected re-planner (``plan_fleet`` with ``current=`` the shadow, so replicas stay
  where they still fit, then from scratch if that packing is refused), then a migration: slots whose group is unchanged
  stay, new groups are added, and the old slots go once every new replica serves.

A slot under a spot preemption notice, or one the policy knew that vanished from a spot node
(a notice shorter than a tick), is handed to the policy as a *notice* for its node
(``decide(..., notices=)``): the policy replaces its replicas make before break and drops them
from the shadow itself. Other slots that vanish (a refused action) are dropped from the shadow at
the next view, so the policy re-decides from what really runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from packer.catalog import is_valid_combination
from packer.errors import UserError
from packer.plan import Plan
from packer.scaling import (Action, AddGroup, AddReplica, Consolidate, RemoveReplica, Replan, Replanner, ReplanOutcome,
                            Resize, ScalingSettings, ScalingState, Signals, SplitOut, Standby, apply, flaps,
                            planner_replanner, step)
from packer.scaling.demand import share_capacity
from packer.scaling.room import paid_gpus, ref
from packer.slot import WHOLE
from sims import policies as sp

OPTIONS = {"replan", "replan_time_limit_s", "interval_s", "target_utilisation", "replan_every_s", "replan_headroom", "stable_s", "panic_s", "panic_threshold", "scale_down_s",
           "scale_down_band", "node_s", "image_s", "weights_base_s", "weights_gb_per_s", "standby_gpus"}


def settings_from(options: Mapping[str, Any]) -> ScalingSettings:
    """Scaling settings from a scenario's ``policy_options`` (unknown keys are an error)."""
    extra = set(options) - OPTIONS
    if extra:
        raise UserError(f"policy packer: unknown options {sorted(extra)}; it takes {sorted(OPTIONS)}")
    d = ScalingSettings()
    w = {k: float(options[k]) for k in ("stable_s", "panic_s", "panic_threshold", "scale_down_s", "scale_down_band")
         if k in options}
    c = {k: float(options[k]) for k in ("node_s", "image_s", "weights_base_s", "weights_gb_per_s")
                         if k in options}
    t: dict[str, Any] = {k: float(options[k]) for k in ("target_utilisation", "replan_every_s") if k in options}
    if "replan_headroom" in options:
        t["replan_headroom"] = None if options["replan_headroom"] is None else float(options["replan_headroom"])
    return replace(d, windows=replace(d.windows, **w), cold_start=replace(d.cold_start, **c),
                   targets=replace(d.targets, **t), standby_gpus=int(options.get("standby_gpus", d.standby_gpus)))


@dataclass
class _Removal:
    sim_slot: str
    waits_for: list[tuple[str, str]]
    """(model, shadow slot id) replicas that must serve before the slot (or replica) goes."""
    reason: str
    model: str | None = None
    """Remove only this model's replica; None removes the whole slot."""


@dataclass
class PackerPolicy:
    plan: Plan
    settings: ScalingSettings = field(default_factory=ScalingSettings)
    interval_s: float = 15.0
    replanner: Replanner | None = None
    state: ScalingState | None = None
    ids: dict[str, str] = field(default_factory=dict)
    """Shadow slot id -> simulator slot id."""
    removals: list[_Removal] = field(default_factory=list)
    log: list[tuple[float, Action]] = field(default_factory=list)
    """Every action the policy took, with its time (for flapping checks and reports)."""
    replans: list[tuple[float, bool, str, dict[str, int], dict[str, int], dict[str, float]]] = field(
        default_factory=list)
    """(time, migrated, why, GPUs before, GPUs of the planner's answer, rates asked) per re-plan request."""

    def __post_init__(self) -> None:
        self.ids = {p.id: p.id for p in self.plan.placements}
        self._seen: set[str] = set(self.ids.values())
        """Every simulator slot the shadow has mapped: none of them is a new one."""
        self._told: dict[str, sp.SlotConfig] = {p.id: sp.SlotConfig.of(p) for p in self.plan.placements}
        """Simulator slot id -> the configuration it was last told."""
        self._pending: list[tuple[str, str, str, tuple[str, ...], sp.SlotConfig | None]] = []
        """(shadow id, pool, profile, models, configuration) of slots asked for but not seen yet."""

    # -- view -> shadow --------------------------------------------------------------------------

    def _sync(self, view: sp.ClusterView) -> dict[str, float]:
        """Match new simulator slots to the shadow, drop what vanished, and return the spot
        notices (node -> seconds left) for the shadow's replicas on preempted nodes."""
        # A slot the shadow let go of (a move emptied it) is not new: matched to a request for the
        # same models, a doomed replica's slot stood for its replacement, and the notice of its
        # node was read as one for the replacement's (three healthy spot nodes evacuated for one
        # preemption; asr-en 96.6 % within SLO, bench/spot.py multilingual seed 9).
        self._seen |= set(self.ids.values())
        fresh = [s for s in view.slots.values() if s.id not in self._seen]
        for sid, pool, profile, models, told in self._pending:
            node = next((p.node for p in self.plan.placements if p.id == sid), None)
            for s in sorted(fresh, key=lambda s: s.node != node):  # on the node asked for, first
                if (s.pool, s.profile) == (pool, profile) and set(s.models) == set(models):
                    self.ids[sid] = s.id
                    if told is not None:
                        self._told[s.id] = told
                    fresh.remove(s)
                    break
        self._pending = []
        drop: list[Action] = []
        notices: dict[str, float] = {}
        for p in self.plan.placements:
            sim = view.slots.get(self.ids.get(p.id, ""))
            if sim is not None and sim.preempting:
                notices[p.node] = max(0.0, (sim.gone_at if sim.gone_at is not None else view.now) - view.now)
                continue
            if sim is None and p.id in self.ids and self.plan.fleet.pool(p.pool).spot:
                notices.setdefault(p.node, 0.0)  # preempted between two looks: no notice left
                continue
            present = set(sim.models) if sim is not None else set()
            for m in p.models:
                if m.name not in present:
                    drop.append(RemoveReplica(model=m.name, slot=_ref(p), cost_per_hour=0.0,
                                              reason="gone in the simulator"))
        if drop:
            self.plan = apply(self.plan, drop)
        live = {p.id for p in self.plan.placements}
        self.ids = {k: v for k, v in self.ids.items() if k in live}
        return notices

    # -- the policy ------------------------------------------------------------------------------

    def decide(self, view: sp.ClusterView, now: float) -> list[sp.ClusterAction]:
        notices = self._sync(view)
        self._view = view
        signals = {n: _signals(s, view.interval_s) for n, s in view.models.items()}
        # A migration or move still loading: no re-plan now; it is asked again from where it lands.
        replanner = None if self.removals else self.replanner
        result = step(self.plan, signals, self.state, now, self.settings, replanner, notices=notices,
                      retry_fresh=True)
        self.state = result.state
        new_slots: dict[str, sp.AddSlot] = {}
        out: list[sp.ClusterAction] = []
        for a in result.actions:
            self.log.append((now, a))
            if isinstance(a, Replan):
                out += self._replanned(a, result.replan, now, new_slots)
                continue
            self.plan = apply(self.plan, [a])
            out += self._translate(a, new_slots)
        self._realign(view, new_slots)
        out += [replace(s, config=self._config(sid)) for sid, s in new_slots.items()]
        self._pending += [(sid, s.pool, s.profile, s.models, self._config(sid)) for sid, s in new_slots.items()]
        out += self._due(view)
        out += self._retell(new_slots)
        for a in out:
            if isinstance(a, (sp.StartReplica, sp.StopReplica, sp.Configure)) and a.config is not None:
                self._told[a.slot] = a.config
        return out

    def _realign(self, view: sp.ClusterView, new_slots: dict[str, sp.AddSlot]) -> None:
        """Move one slot that runs on another GPU than its plan says back where the plan puts it,
        make before break, once that GPU has room: a migration that re-lays out a MIG GPU builds
        the new slices while the old ones still serve, so they start on a second GPU, and they
        stayed there. The shadow plan counted one A100 (12.90/h) while the simulator billed two
        (17.00/h) for the rest of the diurnal day (seed 1). Not while a move is under way."""
        if self.removals or self._pending:
            return
        used: dict[tuple[str, int], list[str]] = {}
        for v in view.slots.values():
            if v.memory_gb > 0:  # draining replicas still hold their slot
                used.setdefault((v.node, v.gpu), []).append(v.profile)
        for p in self.plan.placements:
            sim = self.ids.get(p.id)
            v = view.slots.get(sim or "")
            if v is None or not v.ready or v.preempting or len(p.gpus) > 1 or p.id in new_slots:
                continue
            if (v.node, v.gpu) == (p.node, p.gpu):
                continue
            there = used.get((p.node, p.gpu), [])
            gpu = self.plan.fleet.pool(p.pool).gpu
            if there if p.slot == WHOLE else (WHOLE in there or not is_valid_combination(gpu, there + [p.slot])):
                continue
            why = f"{p.id} runs on {v.node}/gpu{v.gpu}; its plan's GPU has room again"
            new_slots[p.id] = sp.AddSlot(p.pool, p.slot, tuple(m.name for m in p.models), reason=why, node=p.node,
                                         gpu=p.gpu)
            self.removals.append(_Removal(v.id, [(m.name, p.id) for m in p.models], why))
            return

    def _retell(self, new_slots: Mapping[str, sp.AddSlot]) -> list[sp.ClusterAction]:
        """A ``Configure`` for every running slot whose configuration in the shadow plan is not the
        one it was last told: a scale-up, a move or a re-plan re-spreads a model's rate over its
        replicas and re-sizes every slot it is in (the reconciler re-renders their configs). Told
        nothing, the simulated slots kept their first batches and duty cycle all day."""
        out: list[sp.ClusterAction] = []
        for p in self.plan.placements:
            sim = self.ids.get(p.id)
            if sim is None or p.id in new_slots:
                continue
            cfg = sp.SlotConfig.of(p)
            if self._told.get(sim) != cfg:
                out.append(sp.Configure(sim, cfg, reason="the plan re-sized this slot's replicas"))
        return out

    def _replanned(self, a: Replan, rp: ReplanOutcome | None, now: float,
                   new_slots: dict[str, sp.AddSlot]) -> list[sp.ClusterAction]:
        """Record the step's re-plan (or why none ran) and migrate when the packing was taken."""
        if self.replanner is None:
            return []
        if rp is None:
            self.replans.append((now, False, "a migration is still under way", _gpus(self.plan), {}, dict(a.traffic)))
            return []
        self.replans.append((now, rp.taken, rp.why, _gpus(self.plan), _gpus(rp.answer), dict(a.traffic)))
        if not rp.taken:
            return []
        self.log += _lowered(self.plan, rp.answer, now)
        return self._migrate(rp.answer, f"{a.reason}; {rp.why}", new_slots)

    def _alive(self, sim_slot: str) -> bool:
        """The simulator slot still runs and is not under a preemption notice."""
        view = getattr(self, "_view", None)
        s = view.slots.get(sim_slot) if view is not None else None
        return s is not None and not s.preempting

    def _into(self, model: str, slot_id: str, reason: str, new_slots: dict[str, sp.AddSlot]) -> sp.ClusterAction | None:
        if slot_id in new_slots:  # a slot asked for in this same decision: one AddSlot with both
            s = new_slots[slot_id]
            new_slots[slot_id] = replace(s, models=s.models + (model,))
            return None
        return sp.StartReplica(model, self.ids[slot_id], reason=reason, config=self._config(slot_id))

    def _config(self, slot_id: str) -> sp.SlotConfig | None:
        """The shadow plan's configuration of a slot (its duty cycle and every member's batch), as
        the reconciler would render it. Without it the simulator configured a joining member at
        its model's peak share: a group the policy packed at night rates was infeasible there, fell
        back to full batches one after another, and punct-fr served a p99 of 150-170 ms against a
        100 ms SLO in a slot whose plan bound it at 94 (diurnal day, seed 0)."""
        p = next((q for q in self.plan.placements if q.id == slot_id), None)
        return None if p is None else sp.SlotConfig.of(p)

    def _translate(self, a: Action, new_slots: dict[str, sp.AddSlot]) -> list[sp.ClusterAction]:
        out: list[sp.ClusterAction | None] = []
        if isinstance(a, (AddReplica, SplitOut)) and a.replaces is not None:
            old = self.ids.get(a.replaces.id, a.replaces.id)
            if not any(p.id == a.replaces.id for p in self.plan.placements):
                self.ids.pop(a.replaces.id, None)  # the move emptied it
            self.removals.append(_Removal(old, [(a.model, a.slot.id)], a.reason, a.model))
        if isinstance(a, AddReplica):
            out.append(self._into(a.model, a.slot.id, a.reason, new_slots))
        elif isinstance(a, SplitOut):
            new_slots[a.slot.id] = sp.AddSlot(a.slot.pool, a.slot.slot, (a.model,), reason=a.reason, node=a.slot.node,
                                              gpu=a.slot.gpu)
        elif isinstance(a, AddGroup):
            new_slots[a.slot.id] = sp.AddSlot(a.slot.pool, WHOLE, tuple(m for m, _ in a.rates), reason=a.reason,
                                              node=a.slot.node, gpu=a.slot.gpu)
        elif isinstance(a, RemoveReplica):
            sim_slot = self.ids.get(a.slot.id, a.slot.id)
            if not any(p.id == a.slot.id for p in self.plan.placements):
                self.ids.pop(a.slot.id, None)
            if self._alive(sim_slot):  # a preempted slot goes by itself
                out.append(sp.StopReplica(a.model, sim_slot, reason=a.reason, config=self._config(a.slot.id)))
        elif isinstance(a, Consolidate):
            sim_src = self.ids.pop(a.slot.id, a.slot.id)
            for model, dst, _ in a.moves:
                out.append(self._into(model, dst.id, a.reason, new_slots))
            self.removals.append(_Removal(sim_src, [(m, d.id) for m, d, _ in a.moves], a.reason))
        elif isinstance(a, (Resize, Standby)):
            pass  # round-robin needs no resize (:meth:`_retell` tells the slots); no empty slots
        return [x for x in out if x is not None]

    def _migrate(self, new: Plan, reason: str, new_slots: dict[str, sp.AddSlot]) -> list[sp.ClusterAction]:
        """Move from the shadow plan to ``new``: unchanged groups stay, the rest is rebuilt, and the
        old slots go once every new replica serves (make before break)."""
        def key(p: Any) -> tuple[str, str, frozenset[str]]:
            return (p.pool, p.slot, frozenset(m.name for m in p.models))

        old = {p.id: p for p in self.plan.placements}
        ids: dict[str, str] = {}
        built: list[Any] = []
        for p in new.placements:
            match = next((o for o in old.values() if key(o) == key(p)), None)
            if match is not None and match.id in self.ids:
                ids[p.id] = self.ids[match.id]
                del old[match.id]
            else:
                built.append(p)
        if not built and not old:
            return []
        waits = [(m.name, p.id) for p in built for m in p.models]
        for o in old.values():
            if o.id in self.ids:
                self.removals.append(_Removal(self.ids[o.id], waits, "re-plan: " + reason))
        for p in built:
            new_slots[p.id] = sp.AddSlot(p.pool, p.slot, tuple(m.name for m in p.models), reason="re-plan: " + reason,
                                         node=p.node, gpu=p.gpu)
        self.ids = ids
        self.plan = new
        return []

    def _due(self, view: sp.ClusterView) -> list[sp.ClusterAction]:
        """Remove emptied slots once the replicas moved out of them serve elsewhere."""
        out: list[sp.ClusterAction] = []
        keep: list[_Removal] = []
        # What each shadow slot holds now: a later action (a relief, a consolidation) may have
        # moved a waited-for replica on from its destination, which then never serves there. Waited
        # for, it kept a re-plan's migration "under way" from 10.2 h to the end of the diurnal day
        # (seed 0): no re-plan ran for 13 hours and the fleet grew to 28 GPUs.
        live = {p.id: {m.name for m in p.models} for p in self.plan.placements}
        for r in self.removals:
            ready = True
            for model, dst in r.waits_for:
                sim_dst = self.ids.get(dst)
                ms = view.models.get(model)
                if model not in live.get(dst, ()) or ms is None:
                    continue  # destination gone, or the replica moved on: nothing to wait for
                if sim_dst is None or sim_dst == r.sim_slot:
                    ready = False  # asked for, not seen yet (a slot never waits for itself)
                    continue
                if not any(rv.slot == sim_dst and rv.ready for rv in ms.replicas):
                    ready = False
            if ready and not self._alive(r.sim_slot):
                continue  # preempted meanwhile: the cloud took it
            if ready:
                shadow = next((k for k, v in self.ids.items() if v == r.sim_slot), None)
                out.append(sp.RemoveSlot(r.sim_slot, reason=r.reason) if r.model is None
                           else sp.StopReplica(r.model, r.sim_slot, reason=r.reason,
                                               config=self._config(shadow) if shadow else None))
            else:
                keep.append(r)
        self.removals = keep
        return out


def _signals(s: sp.ModelSignals, interval_s: float) -> Signals:
    """The simulator's per-model signals as the policy's: late share from rejections and p99."""
    arrived = max(1.0, s.rate_rps * interval_s)
    late = s.rejected / arrived
    if s.p99_ms > s.slo_ms:
        late = max(late, 0.01)  # at least 1% over the SLO
    return Signals(s.name, in_flight=float(s.in_flight), queued=float(s.queued), arrival_rps=s.rate_rps,
                   queue_ms=s.queue_ms_mean, late_share=late)


def _lowered(old: Plan, new: Plan, now: float) -> list[tuple[float, Action]]:
    """A migration that lowers a model's capacity is a scale-down of it: one ``RemoveReplica`` per
    such model in the action log, so that :func:`packer.scaling.flaps` counts a scale-up of it
    soon after a re-plan as a flap, as it does after a consolidation."""
    out: list[tuple[float, Action]] = []
    for m in old.fleet.models:
        before, after = share_capacity(old, m.name), share_capacity(new, m.name)
        reps = old.placements_of(m.name)
        if reps and after < before * (1 - 1e-6):
            out.append((now, RemoveReplica(model=m.name, slot=_ref(reps[0]), cost_per_hour=0.0,
                                           reason=f"re-plan migration: capacity {before:.1f} -> {after:.1f} rps")))
    return out


def flaps_free(log: list[tuple[float, Action]], window_s: float) -> bool:
    """No model scaled up within ``window_s`` after it was scaled down (the issue's flapping)."""
    return not flaps(log, window_s)


def _gpus(plan: Plan) -> dict[str, int]:
    """GPUs paid per pool."""
    out: dict[str, int] = {}
    for pool, _, _ in paid_gpus(plan):
        out[pool] = out.get(pool, 0) + 1
    return out


def _ref(p: Any) -> Any:
    return ref(p)


def make(plan: Plan, options: Mapping[str, Any]) -> PackerPolicy:
    options = dict(options or {})
    interval = float(options.pop("interval_s", 15.0))
    replan = bool(options.pop("replan", True))
    limit = float(options.pop("replan_time_limit_s", 2.0))
    return PackerPolicy(plan, settings_from(options), interval, planner_replanner(limit) if replan else None)

