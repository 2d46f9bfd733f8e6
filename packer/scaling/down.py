"""Scale down: empty one slot at a time when the stabilised demand fits without it; else ask for
a re-plan when too much paid capacity idles."""

from __future__ import annotations

import math
from collections.abc import Mapping

from packer.fleet import Model
from packer.plan import Placement, Plan, round_cost
from packer.scaling.actions import Action, AddReplica, Consolidate, RemoveReplica, Replan, apply
from packer.scaling.demand import EPS, Demand, capacity, crowd_ok
from packer.scaling.room import SlotRef, fill, gpu_price, paid_gpus, rate_of, ref, room, slot_fraction
from packer.scaling.settings import ScalingSettings
from packer.scaling.spot import keeps_floor
from packer.scaling.up import reshare


def try_empty(plan: Plan, p: Placement, demands: Mapping[str, Demand], settings: ScalingSettings) -> Consolidate | None:
    """A consolidation that empties ``p`` while every model keeps ``want_down``, or None.

    Every model that may shrink is first re-sized to ``want_down`` (lower rates never break a
    slot), which makes room; then each member of ``p`` is dropped if its other replicas hold its
    ``want_down`` evenly, else moved to the slot with the least room that takes it.
    """
    if any(not demands[x.name].may_shrink for x in p.models):
        return None
    t = plan
    for name, d in demands.items():  # lower rates make room and never break a slot
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
                t, done = reshare(t, x.name, wd, "")
                if others and not done and sum(rate_of(q, x.name) for q in t.placements_of(x.name)) < wd - EPS:
                    return None  # the others could not be re-sized for its share
                drops.append(x.name)
                notes.append(f"drop {x.name} ({len(others)} replica(s) hold its {wd:.1f} rps)")
                continue
            per = wd / (len(others) + 1)
            q = _tightest_taker(t, p, model, per, demands)
            if q is None:
                return None
            t = apply(t, [AddReplica(model=x.name, slot=ref(q), rate_rps=per, cost_per_hour=0.0, reason=""),
                          RemoveReplica(model=x.name, slot=ref(p), cost_per_hour=0.0, reason="")])
            moves.append((x.name, ref(q), per))
            notes.append(f"move {x.name} to {q.id} ({per:.1f} rps)")
    except ValueError:
        return None
    return _consolidation(plan, p, t, drops, moves, notes, settings)


def _tightest_taker(t: Plan, p: Placement, model: Model, per: float,
                    demands: Mapping[str, Demand]) -> Placement | None:
    """The slot (other than ``p``, not holding ``model``, not over a crowd limit) with the least
    room that still takes ``per`` rps of ``model``: best fit, so roomy slots stay for later."""
    best: tuple[float, Placement] | None = None
    for q in t.placements:
        if q.id == p.id or not q.models or any(y.name == model.name for y in q.models):
            continue
        if not crowd_ok([y.name for y in q.models] + [model.name], demands):
            continue
        r = room(t, q, model)
        if r >= per - EPS and (best is None or r < best[0]):
            best = (r, q)
    return None if best is None else best[1]


def _consolidation(plan: Plan, p: Placement, t: Plan, drops: list[str], moves: list[tuple[str, SlotRef, float]],
                   notes: list[str], settings: ScalingSettings) -> Consolidate | None:
    """The action that takes ``plan`` to ``t`` (``p`` emptied): its drops, moves and the re-sizes
    they needed, the GPU it releases (none where another slot of it stays), its price and lead;
    None where the action does not apply to ``plan`` as a whole."""
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
            if a is not None and keeps_floor(plan, a):  # never below a model's on-demand floor
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
        # each replica's even share of what its model wants
        over = {(x.name, p.id): max(demands[x.name].want_down, demands[x.name].want) / len(plan.placements_of(x.name))
                for x in p.models}
        used += fill(plan, p, over) * slot_fraction(plan, p) * len(p.gpus or (p.gpu,))
    return max(0.0, 1.0 - used / paid)


def round_robin_waste(plan: Plan, min_replicas: int = 3) -> tuple[float, str]:
    """The largest share of a model's replica room that round-robin cannot use, and the model.

    Replicas added one at a time where there was room end up uneven: 4 replicas in crowded groups
    with room for 530 rps each and 8 alone on L4s with room for 2066 hold 12 x 530 = 6360 rps of
    the 18,650 their slots could take, a waste of 66%. A re-plan evens them out.
    """
    worst = (0.0, "")
    for m in plan.fleet.models:
        reps = plan.placements_of(m.name)
        if len(reps) < min_replicas or m.gpus_per_replica > 1:
            continue
        rooms = [room(plan, p, m) for p in reps]
        total = sum(rooms)
        if total > 0:
            worst = max(worst, (1.0 - len(rooms) * min(rooms) / total, m.name))
    return worst


def replan_request(plan: Plan, demands: Mapping[str, Demand], frag: float, settings: ScalingSettings,
                   waste: tuple[float, str] = (0.0, ""), over: tuple[float, float] | None = None) -> Replan:
    """A re-plan request with an estimate of what it saves: idle capacity rounded down to GPUs
    at the average price of the paid ones (the planner's answer replaces the estimate)."""
    paid = paid_gpus(plan)
    prices = [gpu_price(plan, k[0]) for k in paid]
    idle = math.floor(frag * len(paid))
    saving = idle * (sum(prices) / len(prices)) if prices else 0.0
    # The planner's capacity is the policy's (the same slot maths), so it plans for the want.
    traffic = tuple((m.name, round(max(demands[m.name].want_down, demands[m.name].replan_want), 4))
                    for m in plan.fleet.models)
    if over is not None:  # (the fleet's cost, the plan's it started from), an hour
        saving = over[0] - over[1]
        why = (f"the fleet costs {over[0]:.2f}/h, more than the {over[1]:.2f}/h of the plan it started from, "
               f"which holds every model's peak; a fresh packing of the demand")
    elif frag > settings.targets.fragmentation_replan:
        why = (f"{frag:.0%} of {len(paid)} paid GPUs idle at the demand of the last "
               f"{settings.windows.scale_down_s:.0f} s and no single slot can be emptied; a fresh packing should "
               f"free about {idle} GPU(s)")
    else:
        why = (f"{waste[1]}'s replicas are so uneven that round-robin leaves {waste[0]:.0%} of their room unused; "
               f"a fresh packing evens them out")
    return Replan(traffic=traffic, fragmentation=frag, cost_per_hour=-round_cost(saving), ready_in_s=0.0, reason=why,
                  headroom=settings.targets.replan_headroom)
