"""The scaling policy: ``decide(plan, signals, state, now, settings) -> (actions, state)``.

Pure, in the style of Ray Serve's autoscaling policies: the hysteresis (load samples, desired
capacity history, panic deadline) lives in the returned :class:`ScalingState`, never in an object,
and ``now`` comes in, so a test builds a context, calls the function and checks both outputs.

One decision, per model, then per slot:

1. **Measure.** Load = max(arrival rate, concurrency / sojourn) (Little's law, see
   :mod:`packer.scaling.signals`) for streaming models, the arrival rate for batch ones (their
   queues fill by design), appended to the model's samples.
2. **Windows** (Knative). Stable average over 60 s, panic average over 6 s. The stable load is
   projected over the cold start with its trend. Wanted capacity = load / target utilisation.
   Panic when the panic-window want is >= 1.5x the sized capacity, or queue time passes half the
   SLO: then scale up on the panic window and never down, until a stable window passes calm.
3. **Scale up** (fast) each model short of capacity, cheapest safe action first: re-size a
   replica into room of its own slot; add a replica into room of another slot; split it out to a
   free slot (warm standby, unused MIG instance); split it out or copy its whole group onto a new
   GPU. An action is *safe* when the forecast load at the end of its cold start is still within
   today's capacity; when none is, the fastest wins.
4. **Scale down** (slow): a slot is emptied only when every member can be dropped or moved while
   each model keeps 10% above the *highest* want of the last 10 minutes, and only after that much
   history; one slot per decision.
5. **Re-plan** when much paid capacity idles and no single slot can be emptied.

Worked example (``tests/test_scaling_policy.py``): asr-es sized at 2 x 350 rps sees 900 rps
arrive. Want = 900 / 0.7 = 1285.7 rps, short 585.7. Its own two slots have room to grow to
~390 rps each, the rest goes to a free slot as a split-out, costing 0/h and ready in 15 s.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from packer.fleet import Model
from packer.plan import Placement, Plan
from packer.scaling.actions import (Action, AddGroup, AddReplica, Consolidate, RemoveReplica, Replan, Resize, SplitOut, Standby,
                                    apply)
from packer.scaling.room import (SlotRef, can_host, empty_room, fill, free_slots, gpu_price, new_gpu, paid_gpus,
                                 rate_of, ref, room, slot_fraction, standby_gpus)
from packer.scaling.settings import ScalingSettings
from packer.scaling.signals import Signals, load_rps, run_s, sojourn_s
from packer.slot import WHOLE

EPS = 1e-6


@dataclass(frozen=True)
class ModelState:
    """Hysteresis of one model, carried from decision to decision by the caller."""

    samples: tuple[tuple[float, float], ...] = ()
    """(time, load rps) over the stable window."""
    wants: tuple[tuple[float, float], ...] = ()
    """(time, wanted capacity rps) over the scale-down window: scale-down sizes for the highest."""
    panic_until: float | None = None
    last_up: float | None = None
    last_down: float | None = None
    crowd_limit: int | None = None
    """Most members a slot holding this model may have (itself included), learnt when it was late
    in a slot with one more: the slot maths were optimistic there, so it is never put back into
    a group that large. None: no limit seen."""


@dataclass(frozen=True)
class ScalingState:
    models: Mapping[str, ModelState] = field(default_factory=dict)
    since: float | None = None
    """Time of the first decision: no scale-down before a whole stabilisation window was seen."""
    last_replan: float | None = None
    last_down_try: float | None = None
    """Last time a consolidation was looked for (they are looked for every ``scale_down_every_s``)."""
    starting: Mapping[str, float] = field(default_factory=dict)
    """Nodes asked for and not up yet, with the time they will be: a GPU on one is not fast."""


@dataclass(frozen=True)
class Demand:
    """What one model needs now, and whether it may shrink (all rates in rps)."""

    model: str
    capacity: float
    """What its replicas can hold under round-robin (:func:`share_capacity`)."""
    load: float
    """Stable-window load projected over the cold start (the panic load while panicking)."""
    want: float
    """Capacity wanted now: load / target utilisation (never below capacity in panic)."""
    want_down: float
    """Highest calm want over the scale-down window, plus the band: the floor for shrinking."""
    slope: float
    """Trend of the stable-window load, rps per second (>= 0)."""
    panic: bool
    may_shrink: bool
    late: bool = False
    """Requests are missing the SLO now although the maths say the slots hold them."""
    crowd_limit: int | None = None
    """See :attr:`ModelState.crowd_limit`."""

    @property
    def deficit(self) -> float:
        return max(0.0, self.want - self.capacity)


def capacity(plan: Plan, model: str) -> float:
    """What the model is sized for now: the sum of its replicas' rates."""
    return sum(rate_of(p, model) for p in plan.placements_of(model))


def share_capacity(plan: Plan, model: str) -> float:
    """Most the model can serve with requests spread evenly over its replicas (round-robin, as a
    Kubernetes Service or gRPC ``round_robin`` does): ``n`` times its tightest replica's room.

    Example: replicas with room 900 and 300 rps hold 2 x 300 = 600 rps, not 1200: the second
    replica gets half the requests whatever the first could take. Multi-GPU replicas (never
    shared) hold what they were sized for.
    """
    reps = plan.placements_of(model)
    if not reps:
        return 0.0
    m = plan.model(model)
    if m.gpus_per_replica > 1:
        return capacity(plan, model)
    return len(reps) * min(room(plan, p, m) for p in reps)


def crowd_ok(members: list[str], demands: Mapping[str, Demand]) -> bool:
    """No member of a slot with these models would be in a bigger group than it proved to take."""
    return all(demands[n].crowd_limit is None or len(members) <= demands[n].crowd_limit for n in members)


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def _slope(samples: tuple[tuple[float, float], ...]) -> float:
    """Least-squares trend (rps per s) of the samples; 0 with fewer than 3."""
    if len(samples) < 3:
        return 0.0
    ts = [t for t, _ in samples]
    ys = [y for _, y in samples]
    mt, my = _mean(ts), _mean(ys)
    var = sum((t - mt) ** 2 for t in ts)
    return sum((t - mt) * (y - my) for t, y in samples) / var if var > 0 else 0.0


def observe(plan: Plan, signals: Mapping[str, Signals], state: ScalingState, now: float,
            settings: ScalingSettings) -> tuple[dict[str, Demand], ScalingState]:
    """Steps 1-2: fold this snapshot into the windows and say what each model wants.

    Worked numbers: samples 600, 600, 600, 900 rps over 60 s with the last 6 s at 900: the stable
    load is 675, the panic load 900. Capacity 700: stable want 675 / 0.7 = 964 (short), panic want
    900 / 0.7 = 1286 >= 1.5 x 700 = 1050, so panic, and want = 1286.
    """
    w, t, cs = settings.windows, settings.targets, settings.cold_start
    models: dict[str, ModelState] = dict(state.models)
    out: dict[str, Demand] = {}
    history_ok = state.since is not None and now - state.since >= w.scale_down_s
    for m in plan.fleet.models:
        ms = models.get(m.name, ModelState())
        cap = share_capacity(plan, m.name)
        sig = signals.get(m.name)
        samples = ms.samples
        queue_late = late = False
        if sig is not None:
            # A batch model's queue fills toward its preferred batch by design: its concurrency is
            # a sawtooth, not a load. Its overload shows as queue time nearing the SLO instead.
            load_now = load_rps(sig, sojourn_s(plan, m.name), run_s(plan, m.name)) if m.streaming else sig.arrival_rps
            samples = samples + ((now, load_now),)
            queue_late = sig.queue_ms > t.queue_alarm * m.slo_ms
            late = sig.late_share > t.late_alarm and not (ms.last_up is not None and now - ms.last_up < w.stable_s)
        limit = ms.crowd_limit
        if late:
            crowd = max((len(p.models) for p in plan.placements_of(m.name)), default=1)
            if crowd > 1:
                limit = min(limit or crowd, crowd - 1)
        samples = tuple(s for s in samples if s[0] > now - w.stable_s + EPS)
        if not samples:
            models[m.name] = replace(ms, samples=samples, crowd_limit=limit)
            out[m.name] = Demand(m.name, cap, 0.0, cap, cap, 0.0, False, False, False, limit)
            continue
        stable = _mean([y for _, y in samples])
        recent = [y for s, y in samples if s > now - w.panic_s + EPS] or [samples[-1][1]]
        panic_load = _mean(recent)
        slope = max(0.0, _slope(samples))
        # Poisson noise of a rate measured over a window T: sqrt(rate / T).
        span = max(w.stable_s, now - samples[0][0])
        noise = t.noise_z * math.sqrt(max(stable, 0.0) / span)
        pnoise = t.noise_z * math.sqrt(max(panic_load, 0.0) / w.stable_s)
        # The stable mean lags by half a window; new capacity arrives after a cold start.
        horizon = w.stable_s / 2 + cs.weights_s(m.memory_gb)
        forecast = min(stable + slope * horizon, t.max_forecast_factor * max(stable, panic_load))
        calm_want = max(0.0, forecast - noise) / t.target_utilisation
        calm_high = (forecast + noise) / t.target_utilisation
        panic_want = max(0.0, panic_load - pnoise) / t.target_utilisation
        panic_until = ms.panic_until
        if panic_want >= w.panic_threshold * max(cap, EPS) or queue_late or late:
            panic_until = now + w.stable_s
        panic = panic_until is not None and now < panic_until
        if panic:
            want = max(calm_want, panic_want, cap)
            load = max(forecast, panic_load)
        else:
            want, load = calm_want, forecast
            panic_until = None
        wants = tuple(x for x in ms.wants + ((now, max(want, calm_high)),) if x[0] > now - w.scale_down_s + EPS)
        want_down = max(x for _, x in wants) * (1 + w.scale_down_band)
        models[m.name] = replace(ms, samples=samples, wants=wants, panic_until=panic_until, crowd_limit=limit)
        out[m.name] = Demand(m.name, cap, load, want, want_down, slope, panic, history_ok and not panic, late, limit)
    since = now if state.since is None else state.since
    return out, replace(state, models=models, since=since)


# ---------------------------------------------------------------------------------------------
# Scale up


def share_rate(plan: Plan, model: str) -> float:
    """Rate each replica of ``model`` is sized for (equal shares; the smallest if they differ)."""
    rates = [rate_of(p, model) for p in plan.placements_of(model)]
    return min(rates) if rates else 0.0


def reshare(plan: Plan, model: str, total: float, reason: str) -> tuple[Plan, list[Action]]:
    """Size every replica of ``model`` for ``total / n``: the router spreads requests evenly."""
    reps = plan.placements_of(model)
    if not reps:
        return plan, []
    per = total / len(reps)
    acts: list[Action] = [Resize(model=model, slot=ref(p), rate_rps=per, cost_per_hour=0.0, reason=reason)
                          for p in reps if abs(rate_of(p, model) - per) > 1e-6 * max(1.0, per)]
    return (apply(plan, acts) if acts else plan), acts


@dataclass(frozen=True)
class _Candidate:
    action: Action
    after: float
    """Capacity of the model once the action is done."""
    useful: float
    """rps of deficit it covers (summed over members for a group copy)."""


def _lead_new_gpu(settings: ScalingSettings, model_gb: float, fresh_node: bool, node_wait_s: float = 0.0) -> float:
    """Cold start of a replica on a new GPU: node and image for a fresh node (a node already
    serving has the image cached), what is left of a node still starting, then the weights."""
    cs = settings.cold_start
    return (cs.node_s + cs.image_s if fresh_node else node_wait_s) + cs.weights_s(model_gb)


def _candidates(plan: Plan, model: Model, have: float, demands: Mapping[str, Demand],
                settings: ScalingSettings, starting: Mapping[str, float] | None = None) -> list[_Candidate]:
    """Every way to add one replica of ``model`` or move one, with capacity after, cost and lead.

    With ``n`` replicas holding ``have`` (the tightest holds ``have / n``), one more replica in a
    slot with room ``r`` makes the model hold ``(n + 1) * min(have / n, r)``. Moving the tightest
    replica there instead (a split-out) makes it hold ``n * min(r, room of the rest)``: the better
    choice when the tightest replica sits in a crowded group. A late model (see
    :class:`Demand`) is moved out of its most crowded slot, and only into a slot of its own.
    """
    d = demands[model.name]
    reps = plan.placements_of(model.name)
    n = len(reps)
    rooms = {p.id: room(plan, p, model) for p in reps}
    tight = have / n if n else math.inf
    if d.late:
        crowded = [p for p in reps if len(p.models) > 1]
        victim = max(crowded, key=lambda p: (len(p.models), -rooms[p.id], p.id)) if crowded else None
    else:
        victim = min(reps, key=lambda p: (rooms[p.id], -len(p.models), p.id)) if reps else None
    rest = min((rooms[p.id] for p in reps if victim is None or p.id != victim.id), default=math.inf)
    load_s = settings.cold_start.weights_s(model.memory_gb)
    t = settings.targets
    enough = max(t.min_useful_rps, t.min_gain_share * d.deficit)
    out: list[_Candidate] = []
    head = f"{model.name} wants {d.want:.1f} rps, {n} replica(s) hold {have:.1f}"

    def cand(r: float, make, shared: bool) -> None:
        if r < t.min_useful_rps:
            return
        if not d.late:
            after = (n + 1) * min(tight, r)
            if min(after, d.want) - have >= enough:
                out.append(_Candidate(make(min(d.want, after) / (n + 1), after, None), after, min(after, d.want) - have))
        if victim is not None:
            after = n * min(rest, r)
            useful = min(after, d.want) - have
            if d.late and after >= min(have, d.want) - EPS:
                useful = max(useful, enough)  # out of the crowd is the fix, whatever the maths say
            if useful >= enough:
                out.append(_Candidate(make(min(d.want, after) / n, after, ref(victim)), after, useful))

    def why(after: float, replaces: SlotRef | None) -> str:
        if replaces is None:
            return f"{n + 1} replicas hold {after:.1f}"
        if d.late:
            return f"moving it out of {replaces.id}, where it misses its SLO, the {n} replicas hold {after:.1f}"
        return f"moving its tightest replica out of {replaces.id}, the {n} replicas hold {after:.1f}"

    for p in plan.placements:
        if not p.models or any(x.name == model.name for x in p.models):
            continue
        if not crowd_ok([x.name for x in p.models] + [model.name], demands):
            continue
        r = room(plan, p, model)
        cand(r, lambda rate, after, rp, p=p, r=r: AddReplica(
            model=model.name, slot=ref(p), rate_rps=rate, cost_per_hour=0.0, ready_in_s=load_s, replaces=rp,
            reason=f"{head}; {p.id} has room for {r:.1f} rps beside {', '.join(x.name for x in p.models)}: "
                   f"{why(after, rp)}, no new GPU"), shared=True)
    for s in free_slots(plan):
        r = empty_room(plan, s, model)
        what = "warm-standby GPU" if s.slot == WHOLE else f"unused MIG instance {s.slot}"
        cand(r, lambda rate, after, rp, s=s, r=r, what=what: SplitOut(
            model=model.name, slot=s, rate_rps=rate, cost_per_hour=0.0, ready_in_s=load_s, replaces=rp,
            reason=f"{head}; a slot of its own on the {what} {s.id} (paid already) holds {r:.1f} rps: "
                   f"{why(after, rp)}"), shared=False)
    for pool in plan.fleet.pools:
        ng = new_gpu(plan, pool.name, starting)
        if ng is None:
            continue
        price = gpu_price(plan, pool.name)
        where = ("a new node" if ng.fresh_node else f"free GPU {ng.slot.gpu} of {ng.slot.node}"
                 + (f" (node up in {ng.node_wait_s:.0f} s)" if ng.node_wait_s > 0 else ""))
        lead = _lead_new_gpu(settings, model.memory_gb, ng.fresh_node, ng.node_wait_s)
        r = empty_room(plan, ng.slot, model)
        cand(r, lambda rate, after, rp, ng=ng, r=r, where=where, lead=lead, price=price: SplitOut(
            model=model.name, slot=ng.slot, rate_rps=rate, cost_per_hour=price, ready_in_s=lead, new_gpu=True,
            replaces=rp, reason=f"{head}; a {pool.gpu} on {where} holds {r:.1f} rps for {price:.2f}/h, serving in "
                                f"{lead:.0f} s: {why(after, rp)}"), shared=False)
        # A copy of a packed group this model is in: worth it when its other members are short too.
        if d.late:
            continue
        for p in reps:
            if p.pool != pool.name or len(p.models) < 2 or len(p.gpus) > 1:
                continue
            hot = [x.name for x in p.models if demands[x.name].deficit > EPS]
            if len(hot) < 2:
                continue
            rates = tuple((x.name, x.rate_rps) for x in p.models)
            glead = max(_lead_new_gpu(settings, plan.model(x.name).memory_gb, ng.fresh_node, ng.node_wait_s)
                        for x in p.models)
            try:
                tent = apply(plan, [AddGroup(source=ref(p), slot=ng.slot, rates=rates, cost_per_hour=0.0, reason="")])
            except ValueError:
                continue
            gains = {k: min(share_capacity(tent, k), demands[k].want) - demands[k].capacity for k in hot}
            useful = sum(max(0.0, g) for g in gains.values())
            after = share_capacity(tent, model.name)
            if useful < enough or after <= have + t.min_useful_rps:
                continue
            out.append(_Candidate(AddGroup(
                source=ref(p), slot=ng.slot, rates=rates, cost_per_hour=price, ready_in_s=glead,
                reason=f"{len(hot)} members of {p.id} are short ("
                       + ", ".join(f"{k} {demands[k].deficit:.1f} rps" for k in hot)
                       + f"); a copy on {where} covers {useful:.1f} rps of it for {price:.2f}/h, serving in "
                         f"{glead:.0f} s"), after, useful))
    return out


def _pick(cands: list[_Candidate], d: Demand, have: float) -> _Candidate | None:
    """Cheapest per useful rps among actions that land before the forecast load passes what the
    model holds now; if none does, the fastest (SLO risk during the cold start beats cost)."""
    if not cands:
        return None
    if d.late:  # requests are late now: the fastest fix
        return min(cands, key=lambda c: (c.action.ready_in_s, c.action.cost_per_hour / max(c.useful, EPS), -c.useful))
    safe = [c for c in cands if d.load + d.slope * c.action.ready_in_s <= have + EPS]
    if safe:
        return min(safe, key=lambda c: (c.action.cost_per_hour / max(c.useful, EPS), c.action.ready_in_s, -c.useful))
    return min(cands, key=lambda c: (c.action.ready_in_s, c.action.cost_per_hour / max(c.useful, EPS), -c.useful))


def _take(plan: Plan, a: Action, settings: ScalingSettings, starting: dict[str, float] | None) -> Plan:
    """Apply ``a``; a GPU on a node the plan did not have starts that node (noted in ``starting``)."""
    nodes = {k[1] for k in paid_gpus(plan)}
    plan = apply(plan, [a])
    slot = getattr(a, "slot", None)
    if starting is not None and isinstance(slot, SlotRef) and slot.node not in nodes:
        starting[slot.node] = settings.cold_start.node_s + settings.cold_start.image_s
    return plan


def scale_up(plan: Plan, model: Model, demands: Mapping[str, Demand], settings: ScalingSettings,
             starting: dict[str, float] | None = None, max_steps: int = 8) -> tuple[list[Action], Plan]:
    """Cover ``model``'s deficit: room in its own slots first (free, instant), then one replica
    at a time by :func:`_pick`, re-sharing the load evenly after each."""
    d = demands[model.name]
    actions: list[Action] = []
    if d.late:
        max_steps = 0  # the late signal lags a whole interval: one move, then look again
    for _ in range(max_steps + 1):
        have = share_capacity(plan, model.name)
        n = len(plan.placements_of(model.name))
        if have >= d.want - EPS:
            plan, acts = reshare(plan, model.name, d.want,
                                 f"{model.name} wants {d.want:.1f} rps; its {n} slot(s) have room for {have:.1f}")
            return actions + acts, plan
        if model.max_replicas is not None and n >= model.max_replicas:
            break
        c = _pick(_candidates(plan, model, have, demands, settings, starting), d, have)
        if c is None:
            break
        plan = _take(plan, c.action, settings, starting)
        actions.append(c.action)
        if isinstance(c.action, AddGroup):
            for k, _ in c.action.rates:
                if k != model.name:
                    plan, acts = reshare(plan, k, min(share_capacity(plan, k), max(demands[k].want, capacity(plan, k))),
                                         f"{k}: one more replica from the group copy")
                    actions += acts
    have = share_capacity(plan, model.name)
    plan, acts = reshare(plan, model.name, min(have, d.want),
                         f"{model.name} wants {d.want:.1f} rps but only {have:.1f} can be placed "
                         f"(max_replicas, pool limits)")
    return actions + acts, plan


def relieve(plan: Plan, model: Model, demands: Mapping[str, Demand], settings: ScalingSettings,
            starting: dict[str, float] | None = None) -> tuple[list[Action], Plan]:
    """A late model that is not short: move one replica out of its most crowded slot.

    The slot maths said the group holds it, the requests say otherwise; more replicas beside the
    crowd would still send it half the requests, so the replica leaves the crowd instead.
    """
    d = demands[model.name]
    have = share_capacity(plan, model.name)
    moves = [c for c in _candidates(plan, model, have, demands, settings, starting)
             if getattr(c.action, "replaces", None) is not None]
    c = _pick(moves, d, have)
    if c is None:
        return [], plan
    plan = _take(plan, c.action, settings, starting)
    plan, acts = reshare(plan, model.name, min(share_capacity(plan, model.name), max(d.want, have)),
                         f"{model.name}: re-shared after leaving a crowded slot")
    return [c.action] + acts, plan


# ---------------------------------------------------------------------------------------------
# Scale down


def try_empty(plan: Plan, p: Placement, demands: Mapping[str, Demand], settings: ScalingSettings) -> Consolidate | None:
    """A consolidation that empties ``p`` while every model keeps ``want_down``, or None.

    Every model that may shrink is first re-sized to ``want_down`` (lower rates never break a
    slot), which makes room; then each member of ``p`` is dropped if its other replicas hold its
    ``want_down`` evenly, else moved to the slot with the least room that takes it.
    """
    if any(not demands[x.name].may_shrink for x in p.models):
        return None
    t = plan
    for name, d in demands.items():
        if d.may_shrink and plan.placements_of(name) and d.want_down < capacity(plan, name) - EPS:
            t, _ = reshare(t, name, d.want_down, "")
    drops: list[str] = []
    moves: list[tuple[str, SlotRef, float]] = []
    notes: list[str] = []
    members = sorted(p.models, key=lambda x: (len(plan.placements_of(x.name)) > plan.model(x.name).min_replicas,
                                              -x.memory_gb, x.name))
    try:
        for x in members:
            model = plan.model(x.name)
            wd = demands[x.name].want_down
            others = [q for q in t.placements_of(x.name) if q.id != p.id]
            floor = max(model.min_replicas, 1 if wd > EPS else 0)
            if len(others) >= floor and (not others or len(others) * min(room(t, q, model) for q in others) >= wd - EPS):
                t = apply(t, [RemoveReplica(model=x.name, slot=ref(p), cost_per_hour=0.0, reason="")])
                t, _ = reshare(t, x.name, wd, "")
                drops.append(x.name)
                notes.append(f"drop {x.name} ({len(others)} replica(s) hold its {wd:.1f} rps)")
                continue
            per = wd / (len(others) + 1)
            best: tuple[float, Placement] | None = None
            for q in t.placements:
                if q.id == p.id or not q.models or any(y.name == x.name for y in q.models):
                    continue
                if not crowd_ok([y.name for y in q.models] + [x.name], demands):
                    continue
                r = room(t, q, model)
                if r >= per - EPS and (best is None or r < best[0]):
                    best = (r, q)
            if best is None:
                return None
            q = best[1]
            t = apply(t, [AddReplica(model=x.name, slot=ref(q), rate_rps=per, cost_per_hour=0.0, reason=""),
                          RemoveReplica(model=x.name, slot=ref(p), cost_per_hour=0.0, reason="")])
            moves.append((x.name, ref(q), per))
            notes.append(f"move {x.name} to {q.id} ({per:.1f} rps)")
    except ValueError:
        return None
    moved = {(m, r.id) for m, r, _ in moves}
    before = {(x.name, q.id): x.rate_rps for q in plan.placements for x in q.models}
    resizes = tuple((x.name, ref(q), x.rate_rps) for q in t.placements for x in q.models
                    if (x.name, q.id) not in moved and abs(before.get((x.name, q.id), x.rate_rps) - x.rate_rps) > 1e-6)
    on_gpu = [q for q in plan.placements if (q.pool, q.node, q.gpu) == (p.pool, p.node, p.gpu) and q.id != p.id]
    release = not on_gpu
    price = gpu_price(plan, p.pool) if release else 0.0
    load = max((settings.cold_start.weights_s(plan.model(m).memory_gb) for m, _, _ in moves), default=0.0)
    what = (f"releases its {plan.fleet.pool(p.pool).gpu} ({price:.2f}/h)" if release
            else "frees a MIG instance on a GPU still in use")
    a = Consolidate(slot=ref(p), drops=tuple(drops), moves=tuple(moves), resizes=resizes, release_gpu=release,
                    cost_per_hour=-price, ready_in_s=load,
                    reason=f"the highest demand of the last {settings.windows.scale_down_s:.0f} s (+"
                           f"{settings.windows.scale_down_band:.0%}) fits without {p.id}: " + "; ".join(notes)
                           + f"; {what}")
    try:
        apply(plan, [a])
    except ValueError:
        return None
    return a


def scale_down(plan: Plan, demands: Mapping[str, Demand], settings: ScalingSettings) -> tuple[list[Action], Plan]:
    """Empty up to ``max_consolidations`` slots whose GPU then goes, the costliest and emptiest
    first, trying at most ``consolidation_candidates`` slots per decision (bounded work)."""
    actions: list[Action] = []
    for _ in range(settings.max_consolidations):
        solo = [p for p in plan.placements if p.models and len(p.gpus) <= 1
                and not any((q.pool, q.node, q.gpu) == (p.pool, p.node, p.gpu) and q.id != p.id for q in plan.placements)
                and all(demands[x.name].may_shrink for x in p.models)]
        solo.sort(key=lambda p: (-gpu_price(plan, p.pool), fill(plan, p), p.id))
        for p in solo[: settings.consolidation_candidates]:
            a = try_empty(plan, p, demands, settings)
            if a is not None:
                plan = apply(plan, [a])
                actions.append(a)
                break
        else:
            break
    return actions, plan


def fragmentation(plan: Plan, demands: Mapping[str, Demand]) -> float:
    """Share of paid GPU capacity idle at the demanded rates (slot fill x its share of a GPU)."""
    paid = len(paid_gpus(plan))
    if not paid:
        return 0.0
    used = 0.0
    for p in plan.placements:
        over = {}
        for x in p.models:
            d = demands[x.name]
            if d.capacity > EPS:
                over[(x.name, p.id)] = x.rate_rps * min(1.0, max(d.want_down, d.want) / d.capacity)
        used += fill(plan, p, over) * slot_fraction(plan, p) * len(p.gpus or (p.gpu,))
    return max(0.0, 1.0 - used / paid)


# ---------------------------------------------------------------------------------------------


def decide(plan: Plan, signals: Mapping[str, Signals], state: ScalingState | None, now: float,
           settings: ScalingSettings | None = None) -> tuple[list[Action], ScalingState]:
    """One scaling decision for a deployed ``plan``; see the module docstring for the steps.

    Returns the actions in order (each applies to the plan left by the ones before it; pass them
    to :func:`packer.scaling.actions.apply`) and the state to pass to the next call.
    """
    settings = settings or ScalingSettings()
    state = state or ScalingState()
    demands, state = observe(plan, signals, state, now, settings)
    actions: list[Action] = []
    work = plan
    grown: set[str] = set()
    starting = {n: t - now for n, t in state.starting.items() if t > now}
    short = sorted((d for d in demands.values() if d.deficit > EPS),
                   key=lambda d: (-d.deficit / max(d.capacity, EPS), d.model))
    for d in short:
        acts, work = scale_up(work, plan.model(d.model), demands, settings, starting)
        if acts:
            grown.add(d.model)
            actions += acts
    for d in sorted(demands.values(), key=lambda d: d.model):
        if d.late and d.model not in grown:
            acts, work = relieve(work, plan.model(d.model), demands, settings, starting)
            if acts:
                grown.add(d.model)
                actions += acts
    # Keep the optional warm standby topped up, in the cheapest pool.
    pools = sorted(plan.fleet.pools, key=lambda p: (p.cost_per_gpu_hour, p.name))
    want_spare = settings.cold_start.standby_gpus
    if want_spare > 0 and len(standby_gpus(work)) < want_spare:
        ng = new_gpu(work, pools[0].name, starting)
        if ng is not None:
            price = gpu_price(work, pools[0].name)
            a = Standby(slot=ng.slot, cost_per_hour=price, ready_in_s=_lead_new_gpu(settings, 0.0, ng.fresh_node),
                        reason=f"{len(standby_gpus(work))} of {want_spare} warm-standby GPU(s) left; an empty "
                               f"{pools[0].gpu} ({price:.2f}/h) lets the next new slot serve after its weights load "
                               f"instead of a {_lead_new_gpu(settings, 0.0, True):.0f} s node start")
            work = apply(work, [a])
            actions.append(a)
    calm = {k: (replace(d, may_shrink=False) if k in grown else d) for k, d in demands.items()}
    downs: list[Action] = []
    tried = False
    last_try = state.last_down_try
    excess = any(d.may_shrink and d.capacity > d.want_down * (1 + EPS) for d in calm.values())
    if excess and (last_try is None or now - last_try >= settings.scale_down_every_s):
        downs, work = scale_down(work, calm, settings)
        state = replace(state, last_down_try=now)
        tried = True
    actions += downs
    models = dict(state.models)
    for name in grown:
        models[name] = replace(models[name], last_up=now)
    for a in downs:
        for name in _shrunk_models(a):
            models[name] = replace(models[name], last_down=now)
    state = replace(state, models=models, starting={n: now + left for n, left in starting.items()})
    if tried and not downs and all(d.may_shrink for d in calm.values()):
        frag = fragmentation(work, calm)
        last = state.last_replan
        if frag > settings.targets.fragmentation_replan and (last is None or now - last >= settings.targets.replan_cooldown_s):
            actions.append(_replan(work, calm, frag, settings))
            state = replace(state, last_replan=now)
    return actions, state


def _shrunk_models(a: Action) -> list[str]:
    """Models that lose a replica or move in a consolidation (for the flapping record)."""
    if isinstance(a, Consolidate):
        return list(a.drops) + [m for m, _, _ in a.moves]
    return []


def _replan(plan: Plan, demands: Mapping[str, Demand], frag: float, settings: ScalingSettings) -> Replan:
    """A re-plan request with an estimate of what it saves: idle capacity rounded down to GPUs
    at the average price of the paid ones (the planner's answer replaces the estimate)."""
    paid = paid_gpus(plan)
    prices = [gpu_price(plan, k[0]) for k in paid]
    idle = math.floor(frag * len(paid))
    saving = idle * (sum(prices) / len(prices)) if prices else 0.0
    # The load level, not the want: the planner keeps its own headroom on top.
    u = settings.targets.target_utilisation
    traffic = tuple((m.name, round(demands[m.name].want_down * u, 4)) for m in plan.fleet.models)
    return Replan(traffic=traffic, fragmentation=frag, cost_per_hour=-round(saving, 4), ready_in_s=0.0,
                  reason=f"{frag:.0%} of {len(paid)} paid GPUs idle at the demand of the last "
                         f"{settings.windows.scale_down_s:.0f} s and no single slot can be emptied; a fresh packing "
                         f"should free about {idle} GPU(s)")
