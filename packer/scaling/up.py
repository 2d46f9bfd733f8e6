"""Scale up: every way to add (or move) a replica, with its cost and cold start, and the choice.

With round-robin routing a model holds ``n`` times its tightest replica's room; the candidates
below say what each action would make that, what it costs per hour and when it would serve.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from packer.fleet import Model
from packer.plan import Plan
from packer.scaling.actions import Action, AddGroup, AddReplica, Replan, Resize, SplitOut, apply
from packer.scaling.demand import EPS, Demand, ScalingState, capacity, crowd_ok, share_capacity
from packer.scaling.room import (SlotRef, bill, empty_room, free_slots, gpu_price, new_gpu, paid_gpus, rate_of, ref,
                                 room)
from packer.scaling.settings import ScalingSettings
from packer.slot import WHOLE


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
    if not acts:
        return plan, []
    try:
        return apply(plan, acts), acts
    except ValueError:  # a slot at its limit (rounding, another member grown meanwhile): keep the sizing
        return plan, []


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

    def cand(r: float, make, shared: bool, bought: bool = False) -> None:
        if r < t.min_useful_rps:
            return
        # A bought GPU must add at least this much capacity: round-robin caps a new replica at
        # the tightest one's share, so beside a crowded replica most of the GPU would be paid
        # for nothing (see Targets.min_purchase_use).
        floor = t.min_purchase_use * min(r, d.want) if bought else 0.0
        if not d.late:
            after = (n + 1) * min(tight, r)
            if min(after, d.want) - have >= enough and after - have >= floor:
                out.append(_Candidate(make(min(d.want, after) / (n + 1), after, None), after, min(after, d.want) - have))
        if victim is not None:
            after = n * min(rest, r)
            useful = min(after, d.want) - have
            if d.late and after >= min(have, d.want) - EPS:
                useful = max(useful, enough)  # out of the crowd is the fix, whatever the maths say
            if useful >= enough and (d.late or after - have >= floor):
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
                                f"{lead:.0f} s: {why(after, rp)}"), shared=False, bought=True)
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
            # A copy is a bought GPU too: beside a tight replica it adds that replica's share
            # only (asr-fr's 2g.20gb group copied onto whole A100s, 168 rps each, 8 times).
            if after - have < t.min_purchase_use * min(empty_room(plan, ng.slot, model), d.want):
                continue
            out.append(_Candidate(AddGroup(
                source=ref(p), slot=ng.slot, rates=rates, cost_per_hour=price, ready_in_s=glead,
                reason=f"{len(hot)} members of {p.id} are short ("
                       + ", ".join(f"{k} {demands[k].deficit:.1f} rps" for k in hot)
                       + f"); a copy on {where} covers {useful:.1f} rps of it for {price:.2f}/h, serving in "
                         f"{glead:.0f} s"), after, useful))
    return out


QUEUE_SLO_SHARE = 0.5
"""While a scale-up is on its way, the requests above capacity queue. An action is safe when the
oldest of them would still wait at most this share of the model's SLO once it serves (the rest is
left for the batch's own run time)."""


def backlog(load: float, slope: float, have: float, lead_s: float) -> float:
    """Requests queued above capacity ``have`` over ``lead_s`` seconds of load ``load + slope t``.

    Example: 0.40 rps held, 0.40 asked, rising 0.0001 rps/s, a node 400 s away: the excess grows
    from 0 to 0.04 rps, so 8 requests queue.
    """
    e0 = load - have
    if slope <= 0:
        return max(0.0, e0) * lead_s
    t0 = max(0.0, -e0 / slope)
    if t0 >= lead_s:
        return 0.0
    return e0 * (lead_s - t0) + slope * (lead_s ** 2 - t0 ** 2) / 2.0


def _pick(cands: list[_Candidate], d: Demand, have: float, slo_ms: float = 0.0,
          margin: float = 1.0) -> _Candidate | None:
    """Cheapest per useful rps among actions that land before the requests queued above
    ``margin`` x the model's capacity would miss its SLO (for a 100 ms streaming model: before the
    load passes that at all; a batch model with a 5-minute SLO can wait for a cheap GPU's new
    node); if none does, the fastest (SLO risk during the cold start beats cost).

    ``margin`` is the panic threshold outside panic (:func:`grow`): the plan's headroom is there
    to carry load while new capacity starts. At 1 the diurnal day's asr-en, a few rps short and
    rising 0.2 rps/s, found no L4 on a new node (377 s) safe and took a free A100 of the
    existing node (18 s, 4.10/h against 0.80/h) four times: 33 of the day's 57 A100-hours.
    With 1.1 the L4 lands while asr-en is still 500 rps below its panic level.
    """
    if not cands:
        return None
    if d.late:  # requests are late now: the fastest fix
        return min(cands, key=lambda c: (c.action.ready_in_s, c.action.cost_per_hour / max(c.useful, EPS), -c.useful))
    wait_s = QUEUE_SLO_SHARE * slo_ms / 1000.0
    held = have * margin

    def safe_(c: _Candidate) -> bool:
        lead = c.action.ready_in_s
        if d.load + d.slope * lead <= held + EPS:
            return True
        return held > EPS and backlog(d.load, d.slope, held, lead) / held <= wait_s

    safe = [c for c in cands if safe_(c)]
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
             starting: dict[str, float] | None = None, max_steps: int = 8,
             ceiling: float = math.inf) -> tuple[list[Action], Plan]:
    """Cover ``model``'s deficit: room in its own slots first (free, instant), then one replica
    at a time by :func:`_pick`, re-sharing the load evenly after each. A new GPU is bought only
    while the hourly bill stays at most ``ceiling`` (0 extra: room already paid for only)."""
    d = demands[model.name]
    actions: list[Action] = []
    if d.late:
        max_steps = 0  # the late signal lags a whole interval: one move, then look again
    margin = 1.0 if d.panic else settings.windows.panic_threshold
    for _ in range(max_steps + 1):
        have = share_capacity(plan, model.name)
        n = len(plan.placements_of(model.name))
        if have >= d.want - EPS:
            plan, acts = reshare(plan, model.name, d.want,
                                 f"{model.name} wants {d.want:.1f} rps; its {n} slot(s) have room for {have:.1f}")
            return actions + acts, plan
        if model.max_replicas is not None and n >= model.max_replicas:
            break
        paid = bill(plan)
        cands = [c for c in _candidates(plan, model, have, demands, settings, starting)
                 if c.action.cost_per_hour <= EPS or paid + c.action.cost_per_hour <= ceiling + EPS]
        c = _pick(cands, d, have, model.slo_ms, margin)
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
                         f"(max_replicas, pool limits{', the bill' if ceiling < math.inf else ''})")
    return actions + acts, plan


def relieve(plan: Plan, model: Model, demands: Mapping[str, Demand], settings: ScalingSettings,
            starting: dict[str, float] | None = None, ceiling: float = math.inf) -> tuple[list[Action], Plan]:
    """A late model that is not short: move one replica out of its most crowded slot.

    The slot maths said the group holds it, the requests say otherwise; more replicas beside the
    crowd would still send it half the requests, so the replica leaves the crowd instead.
    """
    d = demands[model.name]
    have = share_capacity(plan, model.name)
    paid = bill(plan)
    moves = [c for c in _candidates(plan, model, have, demands, settings, starting)
             if getattr(c.action, "replaces", None) is not None
             and (c.action.cost_per_hour <= EPS or paid + c.action.cost_per_hour <= ceiling + EPS)]
    c = _pick(moves, d, have, model.slo_ms)
    if c is None:
        return [], plan
    plan = _take(plan, c.action, settings, starting)
    plan, acts = reshare(plan, model.name, min(share_capacity(plan, model.name), max(d.want, have)),
                         f"{model.name}: re-shared after leaving a crowded slot")
    return [c.action] + acts, plan


def _still_short(plan: Plan, demands: Mapping[str, Demand], names: list[str]) -> list[str]:
    return [k for k in names if share_capacity(plan, k) < demands[k].want - EPS]


def grow(plan: Plan, demands: Mapping[str, Demand], state: ScalingState, now: float, settings: ScalingSettings,
         starting: dict[str, float]) -> tuple[list[Action], Plan, set[str], Replan | None, ScalingState]:
    """Steps 3-4 of :func:`packer.scaling.policy.decide`: cover every short model and relieve late
    ones, the cheapest way first: room already paid for; then a re-plan; then buying.

    1. **Room paid for.** Each short model (the shortest, relative, first) grows into room of its
       own slots, of other running slots and of free slots, and each late model moves out of its
       crowd into such room: no new GPU.
    2. **Re-plan before buying.** Still short: what the local scale-up would buy is priced (a
       scratch run), and the planner is asked for a packing of the wanted rates
       (:class:`Replan` with ``budget_per_hour``) that the caller takes when it holds the demand
       for no more than those purchases would make the bill. While every model's demand is within
       what the static plan it was deployed with holds (:attr:`ScalingState.baseline_holds`), no
       purchase may take the bill past that plan's (:attr:`ScalingState.baseline_cost`): its own
       GPUs would do, so the budget is that bill and the static plan itself is one of the
       packings the caller weighs. On the spike hour the local scale-up bought 10 GPUs (4 A100) for
       diarize-fr (0.1 rps) one replica at a time; the planner packs French x4 at 14.50/h.
    3. **Buy.** Only in the stable window after such a request, when the model is still short
       (the planner could not do it, or the caller has none): one replica at a time by
       :func:`_pick`, within the static plan's bill while its GPUs would do, past it only in
       panic (SLO first).

    Returns the actions, the plan they lead to, the models grown, the re-plan request (or None)
    and the state (``asked_at`` set when a request is made).
    """
    t = settings.targets
    base = state.baseline_cost
    fits = base is not None and all(d.want <= state.baseline_holds.get(k, 0.0) * (1 + 1e-6) + EPS
                                    for k, d in demands.items())
    cap = base if fits and base is not None else math.inf
    asked = state.asked_at is not None and 0.0 < now - state.asked_at <= settings.windows.stable_s
    short = [d.model for d in sorted((d for d in demands.values() if d.deficit > EPS),
                                     key=lambda d: (-d.deficit / max(d.capacity, EPS), d.model))]

    def run(work: Plan, ceiling: Callable[[Demand], float], names: list[str], late_too: bool,
            done: set[str]) -> tuple[list[Action], Plan, set[str]]:
        """Scale up ``names``, then (``late_too``) relieve late models: requests fail now, so a
        move out of the crowd may buy a GPU at once, within the static plan's bill."""
        acts: list[Action] = []
        grown = set(done)
        for k in names:
            a, work = scale_up(work, plan.model(k), demands, settings, starting, ceiling=ceiling(demands[k]))
            if a:
                grown.add(k)
                acts += a
        if late_too:
            for d in sorted(demands.values(), key=lambda d: d.model):
                if d.late and d.model not in grown:
                    # The static plan's maths said this group holds it, so its bill is no
                    # proof: past it only when no move within it exists.
                    a, work = relieve(work, plan.model(d.model), demands, settings, starting, ceiling=cap)
                    if not a and cap < math.inf:
                        a, work = relieve(work, plan.model(d.model), demands, settings, starting)
                    if a:
                        grown.add(d.model)
                        acts += a
        return acts, work, grown

    paid = bill(plan)
    actions, work, grown = run(plan, lambda d: paid, short, True, set())
    left = _still_short(work, demands, short)
    if not left:
        return actions, work, grown, None, state
    if asked:
        # The planner was asked and the model is still short: buy, within the static plan's bill
        # while its GPUs would do; past it only for a model in panic.
        more, work, grown = run(work, lambda d: math.inf if d.panic else cap, left, False, grown)
        return actions + more, work, grown, None, state
    # Price what the local scale-up would buy (a scratch run), then ask the planner for no more.
    bought, trial = _dry(work, demands, left, settings, dict(starting), cap)
    gap = _still_short(trial, demands, left)
    now_bill = bill(work)
    cheapest = min(p.cost_per_gpu_hour for p in plan.fleet.pools)
    # Buying cannot cover it (round-robin beside tight replicas, pool limits): the planner's
    # cheapest packing is the way, whatever it costs; back_to_plan returns once demand falls.
    budget = bill(trial) if not gap else math.inf
    if fits and base is not None:
        budget = base if gap else min(budget, base)
    traffic = tuple((m.name, round(max(demands[m.name].want, demands[m.name].replan_want,
                                       min(demands[m.name].capacity, demands[m.name].want_down)), 4))
                    for m in plan.fleet.models)
    shown = ", ".join(f"{k} wants {demands[k].want:.1f} rps, holds {share_capacity(work, k):.1f}" for k in left[:3])
    local = (f"the local scale-up would buy {len(bought)} GPU(s) for +{bill(trial) - now_bill:.2f}/h ("
             + "; ".join(a.summary() for a in bought[:3]) + (" ..." if len(bought) > 3 else "") + ")"
             if not gap else f"the local scale-up cannot cover it within {cap:.2f}/h" if cap < math.inf
             else "the local scale-up cannot cover it")
    most = (f"a packing of the wanted rates is taken at up to {budget:.2f}/h" if budget < math.inf
            else "the planner's cheapest packing of the wanted rates is taken")
    why = (f"{shown}; {local}; {most}"
           + (f" (the static plan, {base:.2f}/h, holds this demand)" if fits and base is not None else ""))
    rp = Replan(traffic=traffic, fragmentation=0.0, headroom=t.replan_headroom,
                cost_per_hour=round(budget - now_bill, 4) if budget < math.inf else cheapest,
                ready_in_s=settings.cold_start.node_s + settings.cold_start.image_s, reason=why,
                budget_per_hour=round(budget, 4) if budget < math.inf else math.inf)
    return actions, work, grown, rp, replace(state, asked_at=now)


def _dry(plan: Plan, demands: Mapping[str, Demand], names: list[str], settings: ScalingSettings,
         starting: dict[str, float], ceiling: float) -> tuple[list[Action], Plan]:
    """The purchases a local scale-up of ``names`` would make, and the plan it would leave (a
    scratch run: the caller keeps neither)."""
    bought: list[Action] = []
    for k in names:
        acts, plan = scale_up(plan, plan.model(k), demands, settings, starting, ceiling=ceiling)
        bought += [a for a in acts if a.cost_per_hour > EPS]
    return bought, plan
