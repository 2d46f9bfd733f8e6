"""The scaling policy: ``decide(plan, signals, state, now, settings) -> (actions, state)``.

Pure, in the style of Ray Serve's autoscaling policies: the hysteresis (load samples, desired
capacity history, panic deadline) lives in the returned :class:`ScalingState`, never in an object,
and ``now`` comes in, so a test builds a context, calls the function and checks both outputs.

One decision, per model, then per slot:

1. **Measure.** Load = max(arrival rate, concurrency / sojourn) (Little's law, see
   :mod:`packer.scaling.signals`) for streaming models, the arrival rate for batch ones (their
   queues fill by design), appended to the model's samples.
2. **Windows** (Knative). Stable average over 60 s, panic average over 6 s. The stable load is
   projected over the cold start with its trend. Wanted capacity = load / target utilisation
   (1 by default), where what the replicas hold is the plan's capacity at the plan's headroom
   (``plan.settings``): the headroom is the one margin, so the planned peaks need nothing.
   Panic when the panic-window want is >= ``panic_threshold`` (1.1x) what the replicas hold or
   queue time passes half the SLO and the wait the plan allows: then scale up on the panic window and never down, until a
   stable window passes calm. Want is demand only: panic keeps what the replicas hold by
   blocking scale-down, never by wanting it (a want that fed on capacity bought A100s all day).
3. **Scale up** (fast) each model short of capacity, cheapest safe action first: grow into room
   of its own slots; add a replica into room of another slot; split it out to a free slot (warm
   standby, unused MIG instance); split it out or copy its whole group onto a new GPU. An action
   is *safe* when the forecast load at the end of its cold start is still within what the model
   holds now; when none is, the fastest wins.
4. **Relieve** a late model (requests over SLO while the maths say its slots hold): move one
   replica out of its most crowded slot, at most once per model per scale-down window (10
   minutes: the late share lags the move), block its scale-down meanwhile, and remember that
   group size as too large for it. Late requests never start a panic.
5. **Scale down** (slow): a slot is emptied only when every member can be dropped or moved while
   each model keeps 10% above the *highest* want of the last 10 minutes, and only after that much
   history; one slot per decision. Not with right-sizing re-plans on: those scale down instead.
6. **Re-plan** when much paid capacity idles and no single slot can be emptied, or when replicas
   added one at a time left a model's replicas so uneven that round-robin wastes most of them.

Worked example (``tests/test_scaling_policy.py``): asr-a shares an L4 with punct and can take
1897.4 rps there. At a steady 1500 rps it wants 1500 / 0.7 = 2142.9: asr-b's L4 has room, so the
decision is one ``add_replica`` there, +0.00/h, serving after its 17.5 s weight load.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace

from packer.plan import Plan
from packer.scaling.actions import Action, AddGroup, AddReplica, Consolidate, Replan, SplitOut, Standby, apply
from packer.scaling.demand import (EPS, Demand, ModelState, ScalingState, capacity, crowd_ok, loading_until, observe,
                                   share_capacity)
from packer.scaling.down import fragmentation, replan_request, round_robin_waste, scale_down, try_empty
from packer.scaling.replan import accept_replan, plan_cost, right_size
from packer.scaling.room import gpu_price, new_gpu, standby_gpus
from packer.scaling.settings import ScalingSettings
from packer.scaling.signals import Signals
from packer.scaling.spot import back_to_spot, recover
from packer.scaling.up import _Candidate, _lead_new_gpu, _pick, relieve, reshare, scale_up

__all__ = ["Demand", "accept_replan", "right_size", "ModelState", "ScalingState", "capacity", "crowd_ok", "decide", "fragmentation", "observe",
           "relieve", "reshare", "scale_down", "scale_up", "share_capacity", "try_empty", "_Candidate", "_pick"]


def decide(plan: Plan, signals: Mapping[str, Signals], state: ScalingState | None, now: float,
           settings: ScalingSettings | None = None, *,
           notices: Mapping[str, float] | None = None) -> tuple[list[Action], ScalingState]:
    """One scaling decision for a deployed ``plan``; see the module docstring for the steps.

    ``notices`` (node -> seconds until a spot preemption takes it) come first: every replica on
    such a node is replaced at once, make before break (:func:`packer.scaling.spot.recover`), and
    the rest of the decision sees the plan without them. The node is remembered until the cloud
    takes it (``ScalingState.doomed``): no later decision puts a new GPU there.

    A model given a replica (or a moved one) may not shrink until that replica is expected to
    serve (``ModelState.serving_at``): the plan counts it at once, the cluster only once loaded.

    Returns the actions in order (each applies to the plan left by the ones before it; pass them
    to :func:`packer.scaling.actions.apply`) and the state to pass to the next call.
    """
    settings = settings or ScalingSettings()
    state = state or ScalingState()
    if state.ceiling is None:
        state = replace(state, ceiling=plan_cost(plan))
    starting = {n: t - now for n, t in state.starting.items() if t > now}
    doomed = {n: t for n, t in state.doomed.items() if t > now}
    for n, left in (notices or {}).items():
        doomed[n] = max(doomed.get(n, now), now + left)
    avoid = frozenset(doomed)
    actions: list[Action] = []
    if notices:
        actions, plan = recover(plan, notices, settings, starting, avoid=avoid)
        state = _loading(state, actions, now)  # a replacement still loading is no reason to shrink
    demands, state = observe(plan, signals, state, now, settings)
    ups, work, grown = _grow(plan, demands, settings, starting, avoid)
    actions += ups
    spare, work = _top_up_standby(plan, work, settings, starting, avoid)
    actions += spare
    calm = {k: (replace(d, may_shrink=False) if k in grown else d) for k, d in demands.items()}
    downs, work, state, tried = _shrink(work, calm, state, now, settings)
    actions += downs
    if not notices and not downs:
        # Replacements bought on-demand return to spot; not a slot whose models this decision
        # grows or that panic (a load emergency is no time to move them). Per slot, not for the
        # whole fleet: punct-fr, queueing past half its SLO in a crowded group, stayed in a panic
        # for a whole run, and no A100 replacement went back (bench/spot.py multilingual seed 15).
        hold = frozenset(grown | {k for k, d in calm.items() if d.panic})
        back, work = back_to_spot(work, settings, starting, avoid=avoid, hold=hold)
        actions += back
    models = dict(state.models)
    for name in grown:
        models[name] = replace(models[name], last_up=now)
    for a in downs:
        for name in _shrunk_models(a):
            models[name] = replace(models[name], last_down=now)
    state = _loading(replace(state, models=models, starting={n: now + left for n, left in starting.items()},
                             doomed=doomed), actions, now)
    quiet = not downs and not any(a.kind != "resize" for a in actions)  # a re-plan would undo this decision's moves
    rp = _replan(work, calm, state, now, settings, tried) if quiet and not any(d.panic for d in calm.values()) else None
    if rp is not None:
        actions.append(rp)
        state = replace(state, last_replan=now, replan_traffic=dict(rp.traffic))
    return actions, state


def _grow(plan: Plan, demands: dict[str, Demand], settings: ScalingSettings,
          starting: dict[str, float], avoid: frozenset[str]) -> tuple[list[Action], Plan, set[str]]:
    """Scale up the models short of capacity (the shortest first), then relieve the late ones;
    the actions, the plan they lead to, and the models grown. ``avoid``: nodes under a notice."""
    work = plan
    actions: list[Action] = []
    grown: set[str] = set()
    short = sorted((d for d in demands.values() if d.deficit > EPS),
                   key=lambda d: (-d.deficit / max(d.capacity, EPS), d.model))
    for d in short:
        acts, work = scale_up(work, plan.model(d.model), demands, settings, starting, avoid=avoid)
        if acts:
            grown.add(d.model)
            actions += acts
    for d in sorted(demands.values(), key=lambda d: d.model):
        if d.late and d.model not in grown:
            acts, work = relieve(work, plan.model(d.model), demands, settings, starting, avoid=avoid)
            if acts:
                grown.add(d.model)
                actions += acts
    return actions, work, grown


def _top_up_standby(plan: Plan, work: Plan, settings: ScalingSettings,
                    starting: dict[str, float], avoid: frozenset[str]) -> tuple[list[Action], Plan]:
    """Keep the optional warm standby topped up, in the cheapest pool, off nodes under a notice."""
    pools = sorted(plan.fleet.pools, key=lambda p: (p.cost_per_gpu_hour, p.name))
    want_spare = settings.standby_gpus
    if want_spare > 0 and len(standby_gpus(work)) < want_spare:
        ng = new_gpu(work, pools[0].name, starting, avoid=avoid)
        if ng is not None:
            price = gpu_price(work, pools[0].name)
            a = Standby(slot=ng.slot, cost_per_hour=price, ready_in_s=_lead_new_gpu(settings, 0.0, ng.fresh_node),
                        reason=f"{len(standby_gpus(work))} of {want_spare} warm-standby GPU(s) left; an empty "
                               f"{pools[0].gpu} ({price:.2f}/h) lets the next new slot serve after its weights load "
                               f"instead of a {_lead_new_gpu(settings, 0.0, True):.0f} s node start")
            return [a], apply(work, [a])
    return [], work


def _shrink(work: Plan, calm: dict[str, Demand], state: ScalingState, now: float,
            settings: ScalingSettings) -> tuple[list[Action], Plan, ScalingState, bool]:
    """Scale down where capacity exceeds the calm demand, at most every ``scale_down_every_s``;
    the actions, the plan, the state (the try's time) and whether it was tried."""
    last_try = state.last_down_try
    excess = any(d.may_shrink and d.capacity > d.want_down * (1 + EPS) for d in calm.values())
    # With right-sizing re-plans on, they own scale-down: a consolidation sizes for the highest
    # want of 10 minutes, a re-plan for the re-plan demand at its own headroom, and the two
    # fought (a slot emptied, then a GPU split out for the same model minutes later: 8 flaps on
    # the stationary day). A re-plan that lowers the bill is also priced for its migration.
    local_down = settings.targets.replan_every_s <= 0
    if local_down and excess and (last_try is None or now - last_try >= settings.scale_down_every_s):
        downs, work = scale_down(work, calm, settings)
        return downs, work, replace(state, last_down_try=now), True
    return [], work, state, False


def _replan(work: Plan, calm: dict[str, Demand], state: ScalingState, now: float, settings: ScalingSettings,
            tried: bool) -> Replan | None:
    """A re-plan to ask for on a quiet decision: a periodic right-sizing one, else one against
    fragmentation, round-robin waste or a fleet past its ceiling, each after its own interval."""
    last = state.last_replan
    t = settings.targets
    rp: Replan | None = None
    history = state.since is not None and now - state.since >= settings.windows.scale_down_s
    if t.replan_every_s > 0 and history and (last is None or now - last >= t.replan_every_s):
        rp = right_size(work, calm, state.replan_traffic, settings)
    if rp is None and (last is None or now - last >= t.replan_cooldown_s):
        frag = fragmentation(work, calm) if tried and all(d.may_shrink for d in calm.values()) else 0.0
        waste = round_robin_waste(work)
        if frag > t.fragmentation_replan or waste[0] > t.waste_replan:
            rp = replan_request(work, calm, frag, settings, waste)
        else:
            rp = _over_ceiling(work, calm, state, settings)
    return rp


PAST_PEAK = 1.1
"""A model whose load is this far past its peak (beyond Poisson noise and a trend's lead) is
traffic the plan was not made for: no ceiling re-plan then."""


def _over_ceiling(work: Plan, calm: dict[str, Demand], state: ScalingState,
                  settings: ScalingSettings) -> Replan | None:
    """A re-plan when the fleet costs more than ``ceiling_replan`` above the plan the policy
    started from (:attr:`ScalingState.ceiling`); :func:`_replan` asks past its cooldown."""
    t = settings.targets
    if state.ceiling is None:
        return None
    # The plan holds every model's peak; past a peak, a dearer fleet may be what the demand costs.
    # The load, not the want (a want carries the trend and the panic window's margins), past its
    # Poisson noise: a summarizer at 0.0124 rps peak was seen at 0.018 (seed 0, 12:19).
    noise = lambda peak: t.noise_z * math.sqrt(peak / settings.windows.stable_s)  # noqa: E731
    if any(calm[m.name].load > PAST_PEAK * m.traffic.peak_rps + noise(m.traffic.peak_rps)
           for m in work.fleet.models if m.name in calm):
        return None
    cost = plan_cost(work)
    if cost <= state.ceiling * (1 + t.ceiling_replan) + 1e-9:
        return None
    return replan_request(work, calm, 0.0, settings, over=(cost, state.ceiling))


def _loading(state: ScalingState, actions: list[Action], now: float) -> ScalingState:
    """``state`` with ``serving_at`` of every model these actions add a replica for (or move) at
    the latest of what it was and ``now`` plus the action's cold start. A copied group loads every
    member; a consolidation loads the moved ones."""
    for a in actions:
        if isinstance(a, (AddReplica, SplitOut)):
            names = [a.model]
        elif isinstance(a, AddGroup):
            names = [m for m, _ in a.rates]
        elif isinstance(a, Consolidate):
            names = [m for m, _, _ in a.moves]
        else:
            continue
        state = loading_until(state, names, now + a.ready_in_s)
    return state


def _shrunk_models(a: Action) -> list[str]:
    """Models that lose a replica or move in a consolidation (for the flapping record)."""
    if isinstance(a, Consolidate):
        return list(a.drops) + [m for m, _, _ in a.moves]
    return []
