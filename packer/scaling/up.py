"""Scale up: every way to add (or move) a replica, with its cost and cold start, and the choice.

With round-robin routing a model holds ``n`` times its tightest replica's room; the candidates
below say what each action would make that, what it costs per hour and when it would serve.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from packer.fleet import Model
from packer.plan import Plan
from packer.scaling.actions import Action, AddGroup, AddReplica, Resize, SplitOut, apply
from packer.scaling.demand import EPS, Demand, capacity, crowd_ok, share_capacity
from packer.scaling.room import SlotRef, empty_room, free_slots, gpu_price, new_gpu, paid_gpus, rate_of, ref, room
from packer.scaling.settings import ScalingSettings
from packer.scaling.spot import keeps_floor
from packer.slot import WHOLE



def _want_note(d: Demand) -> str:
    """Why the want is not the load seen, where it is not: the scale-up sizes on the measurement's
    lower bound (the load less its noise, ``noise_z`` standard errors) over the target
    utilisation, so a snapshot of 9,000 rps read "wants 8975.5 rps" with nothing to say why."""
    if d.load > 0 and d.want < d.load - 0.05:
        return f" ({d.load:.1f} seen, less its measurement noise)"
    if d.load > 0 and d.want > d.load + 0.05:
        return f" ({d.load:.1f} seen, over the target utilisation)"
    return ""

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
                settings: ScalingSettings, starting: Mapping[str, float] | None = None,
                avoid: frozenset[str] = frozenset()) -> list[_Candidate]:
    """Every way to add one replica of ``model`` or move one, with capacity after, cost and lead.

    With ``n`` replicas holding ``have`` (the tightest holds ``have / n``), one more replica in a
    slot with room ``r`` makes the model hold ``(n + 1) * min(have / n, r)``. Moving the tightest
    replica there instead (a split-out) makes it hold ``n * min(r, room of the rest)``: the better
    choice when the tightest replica sits in a crowded group. A late model (see
    :class:`Demand`) is moved out of its most crowded slot, and only into a slot of its own.
    No new GPU goes on a node in ``avoid`` (under a preemption notice).

    Kept as one function (copies of packed groups are :func:`_group_copies`): ``cand`` and ``why``
    price every kind of slot (shared, free, a new GPU) the same way from one context (the want,
    the tightest replica, the one to move); apart, each kind would take that context whole.
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
    # A share of the deficit, but never more than half of what each replica holds now: past 20
    # replicas' worth of deficit, 5 % of it is more than any one replica can add, and nothing was
    # done (26,000 rps against 7 replicas of 932 each) where 24,000 got nine new replicas.
    enough = max(t.min_useful_rps, min(t.min_gain_share * d.deficit, 0.5 * tight))
    out: list[_Candidate] = []
    head = f"{model.name} wants {d.want:.1f} rps{_want_note(d)}, {n} replica(s) hold {have:.1f}"

    # Late and short of its want too: a new replica as well as a move out of the crowd (with every
    # replica on a GPU of its own there is no crowd, and nothing was offered at all).
    short = have < d.want - EPS

    def cand(r: float, make, shared: bool) -> None:
        if r < t.min_useful_rps:
            return
        if not d.late or short:
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
        ng = new_gpu(plan, pool.name, starting, avoid=avoid)
        if ng is None:
            continue
        price = gpu_price(plan, pool.name)
        where = ("a new node" if ng.fresh_node else f"free GPU {ng.slot.gpu} of {ng.slot.node}"
                 + (f" (node up in {ng.node_wait_s:.0f} s)" if ng.node_wait_s > 0 else ""))
        lead = _lead_new_gpu(settings, model.memory_gb, ng.fresh_node, ng.node_wait_s)
        r = empty_room(plan, ng.slot, model)
        cand(r, lambda rate, after, rp, ng=ng, r=r, where=where, lead=lead, price=price: SplitOut(
            model=model.name, slot=ng.slot, rate_rps=rate, cost_per_hour=price, ready_in_s=lead, new_gpu=True,
            replaces=rp, reason=f"{head}; {_a(pool.gpu)} on {where} holds {r:.1f} rps for {price:.2f}/h, serving in "
                                f"{lead:.0f} s: {why(after, rp)}"), shared=False)
        # A copy of a packed group this model is in: worth it when its other members are short too.
        if not d.late:
            out += _group_copies(plan, model, reps, pool.name, ng, price, where, have, enough, demands, settings)
    return [c for c in out if keeps_floor(plan, c.action)]  # never below a model's on-demand floor


def _a(noun: str) -> str:
    """``noun`` with its article, read as GPU names are, letter by letter: "an a100-80gb", "an
    l4-24gb", "an h100", "a t4" (letters whose names start with a vowel sound take "an")."""
    return f"{'an' if noun[:1].lower() in 'aefhilmnorsx' else 'a'} {noun}"


def _group_copies(plan: Plan, model: Model, reps: list, pool: str, ng, price: float, where: str, have: float,
                  enough: float, demands: Mapping[str, Demand], settings: ScalingSettings) -> list[_Candidate]:
    """Copies, on the new GPU ``ng`` of ``pool``, of the packed groups ``model`` is in whose other
    members are short too: one GPU then covers several deficits. Each is kept where the deficits
    it covers come to ``enough`` and ``model`` gains past its ``have``."""
    t = settings.targets
    out: list[_Candidate] = []
    for p in reps:
        if p.pool != pool or len(p.models) < 2 or len(p.gpus) > 1:
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


LEAD_TIE_S = 60.0
"""Cold starts this close to the fastest one count as equally fast (the stable window: the load
and late signals the choice rests on are averages over it). Without it an A100 on a running node
(17 s) beat an L4 on one (18 s) by a second, at five times the price."""


def _quick(cands: list[_Candidate], tie_s: float) -> _Candidate:
    """Cheapest per useful rps among the candidates that serve within ``tie_s`` of the fastest."""
    first = min(c.action.ready_in_s for c in cands)
    near = [c for c in cands if c.action.ready_in_s <= first + tie_s + EPS]
    return min(near, key=lambda c: (c.action.cost_per_hour / max(c.useful, EPS), c.action.ready_in_s, -c.useful))


def _pick(cands: list[_Candidate], d: Demand, have: float, slo_ms: float = 0.0,
          tie_s: float = LEAD_TIE_S) -> _Candidate | None:
    """Cheapest per useful rps among actions that land before the requests queued above the
    model's capacity would miss its SLO (for a 100 ms streaming model: before the load passes the
    capacity at all; a batch model with a 5-minute SLO can wait for a cheap GPU's new node); if
    none does, the fastest (SLO risk during the cold start beats cost), where cold starts within
    ``tie_s`` of each other are equally fast and the cheaper wins."""
    if not cands:
        return None
    if d.late:  # requests are late now: the fastest fix
        return _quick(cands, tie_s)
    wait_s = QUEUE_SLO_SHARE * slo_ms / 1000.0

    def safe_(c: _Candidate) -> bool:
        lead = c.action.ready_in_s
        if d.load + d.slope * lead <= have + EPS:
            return True
        return have > EPS and backlog(d.load, d.slope, have, lead) / have <= wait_s

    safe = [c for c in cands if safe_(c)]
    if safe:
        return min(safe, key=lambda c: (c.action.cost_per_hour / max(c.useful, EPS), c.action.ready_in_s, -c.useful))
    return _quick(cands, tie_s)


def _take(plan: Plan, a: Action, settings: ScalingSettings, starting: dict[str, float] | None) -> Plan:
    """Apply ``a``; a GPU on a node the plan did not have starts that node (noted in ``starting``)."""
    nodes = {k[1] for k in paid_gpus(plan)}
    plan = apply(plan, [a])
    slot = getattr(a, "slot", None)
    if starting is not None and isinstance(slot, SlotRef) and slot.node not in nodes:
        starting[slot.node] = settings.cold_start.node_s + settings.cold_start.image_s
    return plan


def scale_up(plan: Plan, model: Model, demands: Mapping[str, Demand], settings: ScalingSettings,
             starting: dict[str, float] | None = None, max_steps: int = 8, *,
             avoid: frozenset[str] = frozenset()) -> tuple[list[Action], Plan]:
    """Cover ``model``'s deficit: room in its own slots first (free, instant), then one replica
    at a time by :func:`_pick`, re-sharing the load evenly after each.

    Round-robin makes that greedy choice short-sighted: a free replica beside a tight one adds
    only the tight one's share, and every such replica makes the next one as small. So the
    greedy sequence is compared with ones that first move the tightest replica out
    (:func:`_candidates`' ``replaces``; for each price, the move that holds the most), and the
    one that covers the deficit for less per hour (then with fewer actions) is taken. On the diurnal day asr-de, hemmed in at 42 rps per
    replica beside asr-en, was given eight 42-rps replicas (six new L4s and an A100) where moving
    that one replica to an L4 of its own covered its 405 rps.
    """
    d = demands[model.name]
    if d.late:
        max_steps = 0  # the late signal lags a whole interval: one move, then look again
    firsts: list[_Candidate | None] = [None]
    if not d.late and plan.placements_of(model.name) and share_capacity(plan, model.name) < d.want - EPS:
        # For each price, the move of the tightest replica that holds the most: at most one free
        # one, one per pool (a few rollouts, not one per candidate).
        have = share_capacity(plan, model.name)
        moves: dict[float, _Candidate] = {}
        for c in _candidates(plan, model, have, demands, settings, starting, avoid):
            k = round(c.action.cost_per_hour, 6)
            if getattr(c.action, "replaces", None) is not None and (k not in moves or c.after > moves[k].after):
                moves[k] = c
        firsts += [moves[k] for k in sorted(moves)]
    best: tuple[tuple[bool, float, float, int], list[Action], Plan, dict[str, float]] | None = None
    for first in firsts:
        st = dict(starting or {})
        acts, after, covered = _cover(plan, model, demands, settings, st, max_steps, first, avoid)
        cost, held = round(sum(a.cost_per_hour for a in acts), 6), -round(share_capacity(after, model.name), 6)
        # Covered, the cheapest; where none covers the want this step, the one that holds the most
        # (then the cheapest): at 26,000 rps, past what 9 actions reach, the cheapest was to do
        # nothing, where 24,000 got nine new replicas.
        key = (False, cost, held, len(acts)) if covered else (True, held, cost, len(acts))
        if best is None or key < best[0]:
            best = (key, acts, after, st)
    assert best is not None
    _, actions, plan, st = best
    if starting is not None:
        starting.update(st)
    have = share_capacity(plan, model.name)
    if have >= d.want - EPS:
        n = len(plan.placements_of(model.name))
        plan, acts = reshare(plan, model.name, d.want,
                             f"{model.name} wants {d.want:.1f} rps; its {n} slot(s) have room for {have:.1f}")
        return actions + acts, plan
    plan, acts = reshare(plan, model.name, min(have, d.want),
                         f"{model.name} wants {d.want:.1f} rps but only {have:.1f} can be placed "
                         f"({_short_because(plan, model, have, demands, settings, starting, avoid, max_steps)})")
    return actions + acts, plan


def _short_because(plan: Plan, model: Model, have: float, demands: Mapping[str, Demand], settings: ScalingSettings,
                   starting: Mapping[str, float] | None, avoid: frozenset[str], max_steps: int) -> str:
    """Why a step leaves a model short: its ``max_replicas``, no slot or pool with room that helps,
    or the step's limit on actions (the rest next step). It blamed the first two whatever the
    cause, with GPUs free in every pool (a late model gets one action a step)."""
    if model.max_replicas is not None and len(plan.placements_of(model.name)) >= model.max_replicas:
        return f"max_replicas {model.max_replicas} reached"
    if _candidates(plan, model, have, demands, settings, starting, avoid):
        return ("late: one action a step, the next after this one serves" if max_steps == 0
                else f"at most {max_steps + 1} actions a step: the rest next step")
    return "no slot or pool has room that helps"


def _cover(plan: Plan, model: Model, demands: Mapping[str, Demand], settings: ScalingSettings,
           starting: dict[str, float], max_steps: int, first: _Candidate | None,
           avoid: frozenset[str] = frozenset()) -> tuple[list[Action], Plan, bool]:
    """Up to ``max_steps + 1`` actions by :func:`_pick` until ``model`` holds its want, the first
    of them ``first`` when given. Returns them, the plan after and whether the want is held."""
    d = demands[model.name]
    actions: list[Action] = []
    for step in range(max_steps + 1):
        have = share_capacity(plan, model.name)
        n = len(plan.placements_of(model.name))
        if have >= d.want - EPS:
            return actions, plan, True
        if step == 0 and first is not None:
            c: _Candidate | None = first
        else:
            if model.max_replicas is not None and n >= model.max_replicas:
                break
            c = _pick(_candidates(plan, model, have, demands, settings, starting, avoid), d, have, model.slo_ms,
                      settings.windows.stable_s)
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
    return actions, plan, share_capacity(plan, model.name) >= d.want - EPS


def relieve(plan: Plan, model: Model, demands: Mapping[str, Demand], settings: ScalingSettings,
            starting: dict[str, float] | None = None, *,
            avoid: frozenset[str] = frozenset()) -> tuple[list[Action], Plan]:
    """A late model that is not short: move one replica out of its most crowded slot.

    The slot maths said the group holds it, the requests say otherwise; more replicas beside the
    crowd would still send it half the requests, so the replica leaves the crowd instead.
    """
    d = demands[model.name]
    have = share_capacity(plan, model.name)
    moves = [c for c in _candidates(plan, model, have, demands, settings, starting, avoid)
             if getattr(c.action, "replaces", None) is not None]
    c = _pick(moves, d, have, model.slo_ms, settings.windows.stable_s)
    if c is None:
        return [], plan
    plan = _take(plan, c.action, settings, starting)
    plan, acts = reshare(plan, model.name, min(share_capacity(plan, model.name), max(d.want, have)),
                         f"{model.name}: re-shared after leaving a crowded slot")
    return [c.action] + acts, plan
