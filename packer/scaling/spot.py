"""A spot preemption notice as a scaling signal: re-place the node's replicas before it goes.

The cloud gives a spot node a notice (GCP 30 s, AWS 2 min) before it takes it. Every replica on
that node is lost at the end of the notice whatever the policy does, so waiting for the load
signals to show the loss (a stable window later) wastes the notice. :func:`recover` replaces each
doomed replica like for like, at the rate it was sized for, by the first of:

1. room in a running slot on another node (``add_replica``: no new GPU, weights only);
2. a free slot already paid for (warm standby, unused MIG instance; ``split_out``, weights only);
3. a new GPU (or, for a multi-GPU replica, adjacent GPUs on one node), its cold start counted:
   node and image on a fresh node, the weights only on a node that runs already. The cheapest
   that serves in time (within the notice plus half the model's SLO, :data:`QUEUE_SLO_SHARE`);
   when none does, the fastest (each second after that is capacity lost), then the cheapest.

Each replacement carries ``replaces=`` the doomed replica (make before break: the caller removes
it once the new one serves, or when the node goes, whichever is first). A replica that no pool
can take is removed (``remove_replica``), so the plan says what really runs. Only replicas the
plan has are touched: a notice for a node the plan no longer holds is a no-op.

Worked numbers (``tests/test_scaling_spot.py``; L4 on-demand 0.80/h, L4 spot 0.30/h, 30 s notice,
default cold starts): asr (2 GB) on a spot node is sized for 300 rps. An on-demand L4 running
punct has room for it: ``add_replica`` there, +0.00/h, serving in 17 s (15 s + 2 GB at 1 GB/s),
within the notice. With no room, a free GPU of a running on-demand node (0.80/h, weights only,
17 s) beats a fresh spot node (0.30/h, 240 + 120 + 17 = 377 s); when every option is a fresh
node, the cheapest wins: the other spot node, serving 347 s after this one goes. A warm standby
GPU: 17 s, +0.00/h.
"""

from __future__ import annotations

from collections.abc import Mapping

from packer.fleet import Model
from packer.plan import Placement, Plan
from packer.planner.spot import holds_floor
from packer.scaling.actions import Action, AddGroup, AddReplica, Consolidate, RemoveReplica, SplitOut, apply
from packer.scaling.room import SlotRef, empty_room, free_slots, gpu_price, new_gpu, paid_gpus, ref, room, slot_type
from packer.scaling.settings import ScalingSettings
from packer.slot import WHOLE, evaluate, item


QUEUE_SLO_SHARE = 0.5
"""A replacement is in time when it serves before the notice ends plus this share of the model's
SLO: requests held back that long still meet it (the scale-up's rule, ``up.QUEUE_SLO_SHARE``). A
chat model with a 20 s SLO gets 10 s more; a summarizer with 10 minutes, 5 minutes, so it waits
for a cheap GPU rather than take an A100 at once."""


def doomed(plan: Plan, notices: Mapping[str, float]) -> list[Placement]:
    """Placements on nodes under a notice, largest replicas first (they are the hardest to place)."""
    out = [p for p in plan.placements if p.node in notices]
    return sorted(out, key=lambda p: (-max(m.memory_gb for m in p.models), p.id))


def recover(plan: Plan, notices: Mapping[str, float], settings: ScalingSettings,
            starting: dict[str, float] | None = None, *,
            avoid: frozenset[str] = frozenset()) -> tuple[list[Action], Plan]:
    """Replace every replica on a node under notice (``node -> seconds left``); see the module
    docstring. Returns the actions, in order, and the plan they lead to (doomed replicas gone).
    No replacement goes on a node under notice, nor on one in ``avoid`` (an earlier notice whose
    node the plan no longer shows)."""
    avoid = frozenset(notices) | avoid
    actions: list[Action] = []
    work = plan
    for p in doomed(plan, notices):
        for mem in sorted(p.models, key=lambda m: (-m.memory_gb, m.name)):
            model = plan.model(mem.name)
            left = notices[p.node]
            a = _replacement(work, model, mem.rate_rps, ref(p), left, avoid, settings, starting)
            if a is None:
                a = RemoveReplica(model=model.name, slot=ref(p), cost_per_hour=0.0,
                                  reason=f"{p.node} is preempted in {left:.0f} s and no pool has room for a "
                                         f"replacement of {model.name} at {mem.rate_rps:.1f} rps")
            nodes = {k[1] for k in paid_gpus(work)}
            work = apply(work, [a])
            slot = getattr(a, "slot", None)
            if starting is not None and isinstance(a, SplitOut) and a.new_gpu and slot.node not in nodes:
                starting[slot.node] = settings.cold_start.node_s + settings.cold_start.image_s
            actions.append(a)
    return actions, work


def _when(lead: float, left: float) -> str:
    if lead <= left:
        return f"serving in {lead:.0f} s, within the {left:.0f} s notice"
    return f"serving in {lead:.0f} s, {lead - left:.0f} s after the node goes"


def _replacement(plan: Plan, model: Model, rate: float, old: SlotRef, left: float, avoid: frozenset[str],
                 settings: ScalingSettings, starting: Mapping[str, float] | None) -> Action | None:
    """The first of room elsewhere, a paid free slot, a new GPU (module docstring), or None."""
    cs = settings.cold_start
    load_s = cs.weights_s(model.memory_gb)
    head = f"{old.node} is preempted in {left:.0f} s; {model.name} there is sized for {rate:.1f} rps"
    if model.gpus_per_replica == 1:
        rooms = [(room(plan, q, model), q) for q in plan.placements
                 if q.node not in avoid and q.models and all(m.name != model.name for m in q.models)]
        fits = [(r, q) for r, q in rooms if r >= rate]
        if fits:
            r, q = max(fits, key=lambda t: (t[0], t[1].id))
            return AddReplica(model=model.name, slot=ref(q), rate_rps=rate, cost_per_hour=0.0, ready_in_s=load_s,
                              replaces=old, reason=f"{head}; {q.id} has room for {r:.1f} rps beside "
                                                   f"{', '.join(m.name for m in q.models)}: {_when(load_s, left)}, "
                                                   "no new GPU")
        mine = {g for p in plan.placements_of(model.name) for g in [(p.pool, p.node, p.gpu)]}
        for s in free_slots(plan):
            if s.node in avoid or s.gpu_key in mine:
                continue
            r = empty_room(plan, s, model)
            if r >= rate:
                return SplitOut(model=model.name, slot=s, rate_rps=rate, cost_per_hour=0.0, ready_in_s=load_s,
                                replaces=old, reason=f"{head}; the paid free slot {s.id} holds {r:.1f} rps: "
                                                     f"{_when(load_s, left)}")
    best: tuple[tuple[float, float, float], SplitOut] | None = None
    for pool in plan.fleet.pools:
        ng = new_gpu(plan, pool.name, starting, width=model.gpus_per_replica, avoid=avoid)
        if ng is None or not _holds(plan, ng.slot, model, rate):
            continue
        price = gpu_price(plan, pool.name) * model.gpus_per_replica
        lead = (cs.node_s + cs.image_s if ng.fresh_node else ng.node_wait_s) + load_s
        where = "a new node" if ng.fresh_node else f"free GPU {ng.slot.gpu} of {ng.slot.node}"
        a = SplitOut(model=model.name, slot=ng.slot, rate_rps=rate, cost_per_hour=price, ready_in_s=lead,
                     new_gpu=True, replaces=old,
                     reason=f"{head}; no room elsewhere: {model.gpus_per_replica} {pool.gpu} on {where} "
                            f"({'spot' if pool.spot else 'on-demand'}, {price:.2f}/h), {_when(lead, left)}")
        # In time (QUEUE_SLO_SHARE) loses nothing: then the cheapest. Otherwise every second
        # after that is lost capacity: the fastest, then the cheapest.
        in_time = lead <= left + QUEUE_SLO_SHARE * model.slo_ms / 1000.0
        key = (0.0, price, lead) if in_time else (1.0, lead, price)
        if best is None or key < best[0]:
            best = (key, a)
    return None if best is None else best[1]


def _holds(plan: Plan, slot: SlotRef, model: Model, rate: float) -> bool:
    """An empty slot at this address serves ``model`` at ``rate`` (all ``gpus_per_replica`` GPUs)."""
    if model.gpus_per_replica == 1:
        return empty_room(plan, slot, model) >= rate
    st = slot_type(plan, slot)
    try:
        evaluate([item(model, rate, st, plan.settings.u)], st.memory_gb * model.gpus_per_replica, plan.settings.u)
    except ValueError:
        return False
    return True


def keeps_floor(plan: Plan, a: Action) -> bool:
    """Does ``a`` keep every floor that holds in ``plan``? A model's floor is the share of peak it
    keeps when its worst spot node goes (``spot_loss: node``) or every spot node does (``pool``),
    :func:`packer.planner.spot.holds_floor`. An action that takes a model below its floor, or
    further below it, is refused: a scale-up that moves its tightest replica to the spot node that
    runs its other one, a consolidation that drops its on-demand replica; and a new spot replica
    of a floor model whose SLO outlasts the pool's notice. (Found by
    ``bench/spot.py``: the policy split summarizer-it's only replica out to a spot L4, the node
    went, and the model had no replica for 25 s.)"""
    onto: list[tuple[str, str]] = []  # (model, pool) a replica is added to
    if isinstance(a, (AddReplica, SplitOut)) and (a.replaces is None or not plan.fleet.pool(a.replaces.pool).spot):
        onto.append((a.model, a.slot.pool))
    elif isinstance(a, AddGroup):
        onto += [(model, a.slot.pool) for model, _ in a.rates]
    elif isinstance(a, Consolidate) and not plan.fleet.pool(a.slot.pool).spot:
        onto += [(model, dst.pool) for model, dst, _ in a.moves]
    for model, pool in onto:
        p, m = plan.fleet.pool(pool), plan.model(model)
        if p.spot and m.on_demand_floor > 0 and m.slo_ms / 1000.0 > p.notice_s:
            return False  # its queued requests would outlast the notice (Model.spot_replicas)
    touched: set[str] = set()
    if isinstance(a, (AddReplica, SplitOut, RemoveReplica)):
        touched.add(a.model)
    elif isinstance(a, AddGroup):
        touched |= {model for model, _ in a.rates}
    elif isinstance(a, Consolidate):
        touched |= set(a.drops) | {model for model, _, _ in a.moves}
    touched = {m for m in touched if plan.model(m).on_demand_floor > 0}
    if not touched:
        return True
    try:
        after = apply(plan, [a])
    except ValueError:
        return True  # an action its slots cannot hold is the caller's to refuse, not the floor's
    for m in touched:
        floor = plan.model(m).on_demand_floor
        now, then = holds_floor(plan, m), holds_floor(after, m)
        if then < floor - 1e-6 and then < now - 1e-6:
            return False
    return True


def back_to_spot(plan: Plan, settings: ScalingSettings, starting: dict[str, float] | None = None, *,
                 avoid: frozenset[str] = frozenset(), hold: frozenset[str] = frozenset()) -> tuple[list[Action], Plan]:
    """At most one on-demand GPU's slot back to a new spot GPU, make before break, when that keeps
    every member's floor (:func:`keeps_floor`) and costs less. Never onto a node in ``avoid``
    (under a preemption notice: the cloud takes it, and its name stays taken until then), nor a
    slot with a model in ``hold`` (one the decision scales up, or one in a panic).

    :func:`recover` buys what serves in time, which after a preemption is mostly on-demand (a free
    GPU of a running node serves within the notice; a fresh spot node takes minutes), and nothing
    else ever moved those replicas back: in ``bench/spot.py`` at 3 preemptions a node-hour the
    llm-platform plan of 135.00/h ran at 179.70/h. Only a slot alone on its GPU moves (the GPU is
    then freed), whole: a replica alone, or a group, which is what a replacement becomes when the
    next doomed replicas go into its room (multilingual, 0.5 preemptions a node-hour: A100 groups
    of asr and punct models at 4.10/h for the rest of the run, where an A100 spot GPU costs 1.64).
    The group keeps its members and rates: the first member split out to the new GPU, the others
    added beside it, each replacing its on-demand replica. One slot per decision, the biggest
    saving first, so a wave of moves cannot empty on-demand capacity faster than the spot nodes come
    up. The spot GPU goes on a node that runs no other replica of any member, so one node taking
    two replicas of a model is never the price.

    Worked numbers (``tests/test_scaling_spot.py``): asr's replacement runs alone on an on-demand
    L4 (0.80/h) and its other replica on spot node n0; a new GPU on spot node n1 (0.30/h) holds it
    at 300 rps: ``split_out`` there replacing it, -0.50/h, serving after node, image and weights.
    With punct beside it on that L4, both go: ``split_out`` of asr and ``add_replica`` of punct
    to the same new GPU, each replacing its on-demand replica.
    """
    spots = [p for p in plan.fleet.pools if p.spot]
    if not spots:
        return [], plan
    cs = settings.cold_start
    gpus: dict[tuple[str, str, int], int] = {}
    for p in plan.placements:
        for g in p.gpus or (p.gpu,):
            gpus[(p.pool, p.node, g)] = gpus.get((p.pool, p.node, g), 0) + 1
    best: tuple[float, list[Action], Plan] | None = None
    for p in plan.placements:
        pool = plan.fleet.pool(p.pool)
        if pool.spot or not p.models or any(gpus[(p.pool, p.node, g)] > 1 for g in p.gpus or (p.gpu,)):
            continue
        models = [plan.model(m.name) for m in sorted(p.models, key=lambda m: (-m.memory_gb, m.name))]
        if any(m.spot_policy == "never" or m.name in hold for m in models):
            continue
        width = max(m.gpus_per_replica for m in models)
        if width == 1 and p.slot != WHOLE:
            continue
        rates = {m.name: m.rate_rps for m in p.models}
        taken = frozenset(q.node for m in models for q in plan.placements_of(m.name) if plan.fleet.pool(q.pool).spot)
        for sp in spots:
            saving = (pool.cost_per_gpu_hour - sp.cost_per_gpu_hour) * width
            if saving <= 0 or (best is not None and saving <= best[0]):
                continue
            ng = new_gpu(plan, sp.name, starting, width=width, avoid=taken | avoid)
            if ng is None or not _holds(plan, ng.slot, models[0], rates[models[0].name]):
                continue
            node_lead = cs.node_s + cs.image_s if ng.fresh_node else ng.node_wait_s
            what = models[0].name if len(models) == 1 else f"{p.id}'s group ({', '.join(m.name for m in models)})"
            why = (f"{what} runs alone on on-demand {p.id} ({pool.cost_per_gpu_hour * width:.2f}/h); a spot GPU on "
                   f"{ng.slot.node} ({sp.cost_per_gpu_hour * width:.2f}/h) holds "
                   + ", ".join(f"{m.name}'s {rates[m.name]:.1f} rps" for m in models)
                   + f" and keeps {'its floor' if len(models) == 1 else 'every floor'}: back to spot, "
                     f"-{saving:.2f}/h, serving in {node_lead + max(cs.weights_s(m.memory_gb) for m in models):.0f} s, "
                     "the on-demand GPU freed then")
            acts: list[Action] = []
            work = plan
            for k, m in enumerate(models):
                lead = node_lead + cs.weights_s(m.memory_gb)
                a: Action = (SplitOut(model=m.name, slot=ng.slot, rate_rps=rates[m.name],
                                      cost_per_hour=sp.cost_per_gpu_hour * width, ready_in_s=lead, new_gpu=True,
                                      replaces=ref(p), reason=why) if k == 0 else
                             AddReplica(model=m.name, slot=ng.slot, rate_rps=rates[m.name], cost_per_hour=0.0,
                                        ready_in_s=lead, replaces=ref(p), reason=why))
                if not keeps_floor(work, a):
                    break
                try:
                    work = apply(work, [a])
                except ValueError:  # the group does not fit that GPU at these rates
                    break
                acts.append(a)
            else:
                best = (saving, acts, work)
    if best is None:
        return [], plan
    _, acts, after = best
    nodes = {k[1] for k in paid_gpus(plan)}
    slot = acts[0].slot  # type: ignore[attr-defined]
    if starting is not None and slot.node not in nodes:
        starting[slot.node] = cs.node_s + cs.image_s
    return acts, after
