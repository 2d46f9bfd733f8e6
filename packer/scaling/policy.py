"""The scaling policy: ``decide(plan, signals, state, now, settings) -> (actions, state)``.

Pure, in the style of Ray Serve's autoscaling policies: the hysteresis (load samples, desired
capacity history, panic deadline) lives in the returned :class:`ScalingState`, never in an object,
and ``now`` comes in, so a test builds a context, calls the function and checks both outputs.

One decision, per model, then per slot:

1. **Measure.** Load = max(arrival rate, concurrency / sojourn) (Little's law, see
   :mod:`packer.scaling.signals`), appended to the model's samples.
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
from packer.scaling.actions import (Action, AddGroup, AddReplica, Consolidate, Replan, Resize, SplitOut, Standby,
                                    apply)
from packer.scaling.room import (SlotRef, can_host, empty_room, fill, free_slots, gpu_price, new_gpu, paid_gpus,
                                 rate_of, ref, room, slot_fraction, standby_gpus)
from packer.scaling.settings import ScalingSettings
from packer.scaling.signals import Signals, load_rps, sojourn_s
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


@dataclass(frozen=True)
class ScalingState:
    models: Mapping[str, ModelState] = field(default_factory=dict)
    since: float | None = None
    """Time of the first decision: no scale-down before a whole stabilisation window was seen."""
    last_replan: float | None = None


@dataclass(frozen=True)
class Demand:
    """What one model needs now, and whether it may shrink (all rates in rps)."""

    model: str
    capacity: float
    """Sum of its replicas' sized rates."""
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

    @property
    def deficit(self) -> float:
        return max(0.0, self.want - self.capacity)


def capacity(plan: Plan, model: str) -> float:
    return sum(rate_of(p, model) for p in plan.placements_of(model))


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
        cap = capacity(plan, m.name)
        sig = signals.get(m.name)
        samples = ms.samples
        queue_late = False
        if sig is not None:
            samples = samples + ((now, load_rps(sig, sojourn_s(plan, m.name))),)
            queue_late = sig.queue_ms > t.queue_alarm * m.slo_ms
        samples = tuple(s for s in samples if s[0] > now - w.stable_s - EPS)
        if not samples:
            models[m.name] = replace(ms, samples=samples)
            out[m.name] = Demand(m.name, cap, 0.0, cap, cap, 0.0, False, False)
            continue
        stable = _mean([y for _, y in samples])
        recent = [y for s, y in samples if s > now - w.panic_s - EPS] or [samples[-1][1]]
        panic_load = _mean(recent)
        slope = max(0.0, _slope(samples))
        # The stable mean lags by half a window; new capacity arrives after a cold start.
        horizon = w.stable_s / 2 + cs.weights_s
        forecast = min(stable + slope * horizon, t.max_forecast_factor * max(stable, panic_load))
        calm_want = forecast / t.target_utilisation
        panic_want = panic_load / t.target_utilisation
        panic_until = ms.panic_until
        if panic_want >= w.panic_threshold * max(cap, EPS) or queue_late:
            panic_until = now + w.stable_s
        panic = panic_until is not None and now < panic_until
        if panic:
            want = max(calm_want, panic_want, cap)
            load = max(forecast, panic_load)
        else:
            want, load = calm_want, forecast
            panic_until = None
        wants = tuple(x for x in ms.wants + ((now, want),) if x[0] > now - w.scale_down_s - EPS)
        want_down = max(x for _, x in wants) * (1 + w.scale_down_band)
        models[m.name] = replace(ms, samples=samples, wants=wants, panic_until=panic_until)
        out[m.name] = Demand(m.name, cap, load, want, want_down, slope, panic, history_ok and not panic)
    since = now if state.since is None else state.since
    return out, replace(state, models=models, since=since)


# ---------------------------------------------------------------------------------------------
# Scale up


@dataclass(frozen=True)
class _Candidate:
    action: Action
    useful: float
    """rps of deficit it covers (summed over members for a group copy)."""


def _lead_new_gpu(settings: ScalingSettings, fresh_node: bool) -> float:
    cs = settings.cold_start
    return (cs.node_s if fresh_node else 0.0) + cs.image_s + cs.weights_s


def _candidates(plan: Plan, model: Model, need: float, demands: Mapping[str, Demand],
                settings: ScalingSettings) -> list[_Candidate]:
    """Every way to add capacity for ``model`` outside its own slots, with cost and lead."""
    cs, tiny = settings.cold_start, settings.targets.min_useful_rps
    out: list[_Candidate] = []
    d = demands[model.name]
    for p in plan.placements:
        if any(x.name == model.name for x in p.models) or not p.models:
            continue
        r = room(plan, p, model)
        if r >= tiny:
            rate = min(r, need)
            out.append(_Candidate(AddReplica(
                model=model.name, slot=ref(p), rate_rps=rate, cost_per_hour=0.0, ready_in_s=cs.weights_s,
                reason=f"{model.name} wants {d.want:.1f} rps, has {d.capacity:.1f}; {p.id} has room for "
                       f"{r:.1f} rps beside {', '.join(x.name for x in p.models)} (no new GPU)"), rate))
    for s in free_slots(plan):
        r = empty_room(plan, s, model)
        if r >= tiny:
            rate = min(r, need)
            what = "warm-standby GPU" if s.slot == WHOLE else f"unused MIG instance {s.slot}"
            out.append(_Candidate(SplitOut(
                model=model.name, slot=s, rate_rps=rate, cost_per_hour=0.0, ready_in_s=cs.weights_s,
                reason=f"{model.name} wants {d.want:.1f} rps, has {d.capacity:.1f}; its own slot on the {what} "
                       f"{s.id} holds {r:.1f} rps, already paid for"), rate))
    for pool in plan.fleet.pools:
        ng = new_gpu(plan, pool.name)
        if ng is None:
            continue
        lead = _lead_new_gpu(settings, ng.fresh_node)
        price = gpu_price(plan, pool.name)
        r = empty_room(plan, ng.slot, model)
        where = "a new node" if ng.fresh_node else f"free GPU {ng.slot.gpu} of {ng.slot.node}"
        if r >= tiny:
            rate = min(r, need)
            out.append(_Candidate(SplitOut(
                model=model.name, slot=ng.slot, rate_rps=rate, cost_per_hour=price, ready_in_s=lead, new_gpu=True,
                reason=f"{model.name} wants {d.want:.1f} rps, has {d.capacity:.1f}; no paid room left, a {pool.gpu} "
                       f"on {where} holds {r:.1f} rps for {price:.2f}/h, serving in {lead:.0f} s"), rate))
        # A copy of a group this model is in: worth it when its other members are short too.
        for p in plan.placements_of(model.name):
            if p.pool != pool.name or len(p.models) < 2 or len(p.gpus) > 1:
                continue
            hot = [x for x in p.models if demands[x.name].deficit > EPS]
            if len(hot) < 2:
                continue
            rates = tuple((x.name, x.rate_rps) for x in p.models)
            useful = sum(min(x.rate_rps, demands[x.name].deficit) for x in hot)
            out.append(_Candidate(AddGroup(
                source=ref(p), slot=ng.slot, rates=rates, cost_per_hour=price, ready_in_s=lead,
                reason=f"{len(hot)} members of {p.id} are short ({', '.join(f'{x.name} {demands[x.name].deficit:.1f} rps' for x in hot)}); "
                       f"a copy on {where} adds {useful:.1f} useful rps for {price:.2f}/h, serving in {lead:.0f} s"),
                useful))
    return out


def _pick(cands: list[_Candidate], d: Demand, have: float) -> _Candidate | None:
    """Cheapest per useful rps among actions that land before the forecast load passes what the
    model has; if none does, the fastest (SLO risk during the cold start beats cost)."""
    if not cands:
        return None
    safe = [c for c in cands if d.load + d.slope * c.action.ready_in_s <= have + EPS]
    if safe:
        return min(safe, key=lambda c: (c.action.cost_per_hour / max(c.useful, EPS), c.action.ready_in_s, -c.useful))
    return min(cands, key=lambda c: (c.action.ready_in_s, c.action.cost_per_hour / max(c.useful, EPS), -c.useful))


def scale_up(plan: Plan, model: Model, demands: Mapping[str, Demand], settings: ScalingSettings,
             max_steps: int = 8) -> tuple[list[Action], Plan]:
    """Cover ``model``'s deficit: grow in place first (free, instant), then the best candidates."""
    d = demands[model.name]
    need = d.deficit
    actions: list[Action] = []
    for p in sorted(plan.placements_of(model.name), key=lambda p: p.id):
        if need <= EPS:
            break
        cur_rate = rate_of(p, model.name)
        r = room(plan, p, model)
        if r > cur_rate + settings.targets.min_useful_rps:
            new = min(r, cur_rate + need)
            a = Resize(model=model.name, slot=ref(p), rate_rps=new, cost_per_hour=0.0, ready_in_s=0.0,
                       reason=f"{model.name} wants {d.want:.1f} rps, has {d.capacity:.1f}; {p.id} has room: "
                              f"{cur_rate:.1f} -> {new:.1f} rps (slot was bound by {p.binding})")
            plan = apply(plan, [a])
            actions.append(a)
            need -= new - cur_rate
    for _ in range(max_steps):
        if need <= EPS:
            break
        if model.max_replicas is not None and len(plan.placements_of(model.name)) >= model.max_replicas:
            break
        have = capacity(plan, model.name)
        c = _pick(_candidates(plan, model, need, demands, settings), d, have)
        if c is None:
            break
        plan = apply(plan, [c.action])
        actions.append(c.action)
        need = d.want - capacity(plan, model.name)
    return actions, plan


# ---------------------------------------------------------------------------------------------
# Scale down


def _shrunk(plan: Plan, q: Placement, leaving: str, demands: Mapping[str, Demand]) -> dict[tuple[str, str], float]:
    """Rates of ``q``'s members cut so each model keeps exactly ``want_down`` (never raised).

    Each model's replicas outside the slot ``leaving`` hold ``have``; its member in ``q`` is cut by
    the factor ``want_down / have``. Cutting one replica by that factor keeps the total at or above
    ``want_down`` because the replica is part of ``have``.
    """
    out = {}
    for x in q.models:
        d = demands[x.name]
        have = sum(rate_of(o, x.name) for o in plan.placements_of(x.name) if o.id != leaving)
        if d.may_shrink and have > d.want_down + EPS:
            out[(x.name, q.id)] = x.rate_rps * d.want_down / have
    return out


def try_empty(plan: Plan, p: Placement, demands: Mapping[str, Demand], settings: ScalingSettings,
              keep_standby: bool) -> Consolidate | None:
    """A consolidation that empties ``p`` keeping every model at ``want_down``, or None."""
    if any(not demands[x.name].may_shrink for x in p.models):
        return None
    tentative = plan
    drops: list[str] = []
    moves: list[tuple[str, SlotRef, float]] = []
    resizes: dict[tuple[str, str], tuple[SlotRef, float]] = {}
    notes: list[str] = []
    for x in sorted(p.models, key=lambda x: -x.memory_gb):
        model = plan.model(x.name)
        d = demands[x.name]
        others = [q for q in tentative.placements_of(x.name) if q.id != p.id]
        have = sum(rate_of(q, x.name) for q in others)
        floor = max(model.min_replicas, 1 if d.want_down > EPS else 0)
        if len(others) >= floor and have >= d.want_down - EPS:
            drops.append(x.name)
            notes.append(f"drop {x.name} (others hold {have:.1f} of {d.want_down:.1f} rps)")
            continue
        want = max(d.want_down - have, d.want_down / (len(others) + 1), settings.targets.min_useful_rps)
        best: tuple[float, Placement, dict] | None = None
        for q in tentative.placements:
            if q.id == p.id or any(y.name == x.name for y in q.models) or not q.models or not can_host(tentative, q, model):
                continue
            over = _shrunk(tentative, q, p.id, demands)
            r = room(tentative, q, model, over)
            if r >= want and (best is None or r < best[0]):
                best = (r, q, over)
        if best is None:
            return None
        _, q, over = best
        acts: list[Action] = [Resize(model=k[0], slot=ref(q), rate_rps=v, cost_per_hour=0.0, reason="")
                              for k, v in over.items()]
        acts.append(AddReplica(model=x.name, slot=ref(q), rate_rps=want, cost_per_hour=0.0, reason=""))
        try:
            tentative = apply(tentative, acts)
        except ValueError:
            return None
        for k, v in over.items():
            resizes[(k[0], q.id)] = (ref(q), v)
        moves.append((x.name, ref(q), want))
        notes.append(f"move {x.name} to {q.id} at {want:.1f} rps")
    on_gpu = [q for q in plan.placements if (q.pool, q.node, q.gpu) == (p.pool, p.node, p.gpu) and q.id != p.id]
    release = not on_gpu and not (keep_standby and p.slot == WHOLE)
    price = gpu_price(plan, p.pool) if release else 0.0
    what = (f"releases its {plan.fleet.pool(p.pool).gpu} ({price:.2f}/h)" if release else
            "keeps the GPU as warm standby" if not on_gpu else "frees a MIG instance on a GPU still in use")
    a = Consolidate(slot=ref(p), drops=tuple(drops), moves=tuple(moves),
                    resizes=tuple((m, r, v) for (m, _), (r, v) in resizes.items()), release_gpu=release,
                    cost_per_hour=-price, ready_in_s=settings.cold_start.weights_s if moves else 0.0,
                    reason=f"demand over the last {settings.windows.scale_down_s:.0f} s fits without {p.id}: "
                           + "; ".join(notes) + f"; {what}")
    try:
        apply(plan, [a])
    except ValueError:
        return None
    return a


def scale_down(plan: Plan, demands: Mapping[str, Demand], settings: ScalingSettings,
               standby_pool: str | None) -> tuple[list[Action], Plan]:
    """Empty up to ``max_consolidations`` slots, the most expensive GPUs and emptiest slots first."""
    actions: list[Action] = []
    for _ in range(settings.max_consolidations):
        keep = standby_pool is not None and len(standby_gpus(plan)) < settings.cold_start.standby_gpus
        order = sorted((p for p in plan.placements if p.models and len(p.gpus) <= 1),
                       key=lambda p: (-gpu_price(plan, p.pool) * slot_fraction(plan, p), fill(plan, p), p.id))
        for p in order:
            solo = not any((q.pool, q.node, q.gpu) == (p.pool, p.node, p.gpu) and q.id != p.id for q in plan.placements)
            if not solo:
                continue  # emptying one MIG instance of a busy GPU saves nothing
            a = try_empty(plan, p, demands, settings, keep and p.pool == standby_pool)
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
    short = sorted((d for d in demands.values() if d.deficit > EPS),
                   key=lambda d: (-d.deficit / max(d.capacity, EPS), d.model))
    for d in short:
        acts, work = scale_up(work, plan.model(d.model), demands, settings)
        if acts:
            grown.add(d.model)
            actions += acts
    # Keep the warm standby topped up, in the cheapest pool that can host a single-GPU model.
    pools = sorted(plan.fleet.pools, key=lambda p: (p.cost_per_gpu_hour, p.name))
    standby_pool = pools[0].name if pools and settings.cold_start.standby_gpus > 0 else None
    if standby_pool is not None and len(standby_gpus(work)) < settings.cold_start.standby_gpus and grown:
        ng = new_gpu(work, standby_pool)
        if ng is not None:
            price = gpu_price(work, standby_pool)
            a = Standby(slot=ng.slot, cost_per_hour=price, ready_in_s=_lead_new_gpu(settings, ng.fresh_node),
                        reason=f"the warm standby was used for a scale-up; an empty {plan.fleet.pool(standby_pool).gpu} "
                               f"({price:.2f}/h) keeps the next one at {settings.cold_start.weights_s:.0f} s instead of "
                               f"{_lead_new_gpu(settings, True):.0f} s")
            work = apply(work, [a])
            actions.append(a)
    calm = {k: (replace(d, may_shrink=False) if k in grown else d) for k, d in demands.items()}
    downs, work = scale_down(work, calm, settings, standby_pool)
    actions += downs
    models = dict(state.models)
    for a in actions:
        for name, up in _touched(a):
            ms = models[name]
            models[name] = replace(ms, last_up=now) if up else replace(ms, last_down=now)
    state = replace(state, models=models)
    if not downs and all(d.may_shrink for d in calm.values()):
        frag = fragmentation(work, calm)
        last = state.last_replan
        if frag > settings.targets.fragmentation_replan and (last is None or now - last >= settings.targets.replan_cooldown_s):
            a = _replan(work, calm, frag, settings)
            actions.append(a)
            state = replace(state, last_replan=now)
    return actions, state


def _touched(a: Action) -> list[tuple[str, bool]]:
    """(model, scaled up?) for each model an action changes the capacity of."""
    if isinstance(a, (AddReplica, SplitOut)):
        return [(a.model, True)]
    if isinstance(a, Resize):
        return [(a.model, True)] if a.reason else []
    if isinstance(a, AddGroup):
        return [(m, True) for m, _ in a.rates]
    if isinstance(a, Consolidate):
        return [(m, False) for m in a.drops] + [(m, False) for m, _, _ in a.moves]
    return []


def _replan(plan: Plan, demands: Mapping[str, Demand], frag: float, settings: ScalingSettings) -> Replan:
    """A re-plan request with an estimate of what it saves: idle capacity rounded down to GPUs
    at the average price of the paid ones (the planner's answer replaces the estimate)."""
    paid = paid_gpus(plan)
    prices = [gpu_price(plan, k[0]) for k in paid]
    idle = math.floor(frag * len(paid))
    saving = idle * (sum(prices) / len(prices)) if prices else 0.0
    traffic = tuple((m.name, round(demands[m.name].want_down, 4)) for m in plan.fleet.models)
    return Replan(traffic=traffic, fragmentation=frag, cost_per_hour=-round(saving, 4), ready_in_s=0.0,
                  reason=f"{frag:.0%} of {len(paid)} paid GPUs idle at the demand of the last "
                         f"{settings.windows.scale_down_s:.0f} s and no single slot can be emptied; a fresh packing "
                         f"should free about {idle} GPU(s)")
