"""Plans written by hand: a packing you want to try without the planner's choices.

The one place tests, benchmarks and demos build plans the planner did not choose:

* ``placement(fleet, "l4", [("asr-en", 40.0), ("punct-en", 90.0)])``: "what would Triton run if
  these models at these rates shared this slot?", the same :class:`Placement` the planner would
  emit for that group (duty cycle, batches, shares and p99 bounds from ``packer.slot.evaluate``);
  ``plan_of(fleet, [placement, ...])`` wraps placements in a plan;
* ``hand_plan(fleet, [HandGroup("l4", "whole", ("asr-en", "punct-en"))])``: one slot per group, each
  model's peak rate divided among its replicas, batches and duty cycle from the slot maths or
  exactly the ``batch``/``duty_ms`` given (what the queueing tests use to put one known server in
  front of known traffic), each member's bound recomputed for those numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from packer.errors import UserError
from packer.fleet import Fleet
from packer.plan import Member, Placement, Plan, PlanSettings
from packer.slot import WHOLE, SlotType, evaluate, item, turns


def placement(fleet: Fleet, pool: str, members: list[tuple[str, float]], *, profile: str = WHOLE,
              node: str = "local", gpu: int = 0, u: float | None = None, lone: bool = True) -> Placement:
    """One slot of ``pool``/``profile`` holding one replica of each ``(model, rate_rps)``, at the
    usable duty-cycle share ``u`` (None: the planner's default, ``PlanSettings().u``). ``lone``:
    a replica alone may be served as its requests come where that gives the lower bound, as the
    planner serves it (``slot.evaluate``); False keeps it on a duty cycle wherever one serves it."""
    u = PlanSettings().u if u is None else u
    st = SlotType(fleet.pool(pool), profile)
    items = [item(fleet.model(name), rate, st, u) for name, rate in members]
    try:
        res = evaluate(items, st.memory_gb, u, lone=lone)
    except ValueError as e:
        raise UserError(f"{e} on {st.key}: lower the rates or split the group") from None
    kinds = {m.name: fleet.model(m.name).kind for m in res.members}
    ms = tuple(Member(m.name, kinds[m.name], 0, m.batch_size, m.share, m.memory_gb, m.p99_bound_ms, m.slo_ms, m.rate)
               for m in res.members)
    return Placement(pool=pool, node=node, gpu=gpu, slot=profile, models=ms, duty_cycle_ms=res.duty_cycle_ms,
                     memory_gb=res.memory_gb, memory_capacity_gb=res.memory_capacity_gb,
                     compute_share=res.compute_share, binding=res.binding, reason=res.reason,
                     mig_start=None if profile == WHOLE else 0, gpus=(gpu,))


def plan_of(fleet: Fleet, placements: list[Placement]) -> Plan:
    """A plan holding just these placements (cost and bounds unset: it was not optimised)."""
    return Plan(fleet=fleet, status="feasible", cost_per_hour=0.0, lower_bound_cost_per_hour=0.0,
                solve_seconds=0.0, gpus={}, baselines={}, placements=tuple(placements),
                warnings=("hand-picked groups, not a planner result",))


@dataclass(frozen=True)
class HandGroup:
    """A packed group picked by hand: which models share one slot of ``pool``, and at what batch
    and duty cycle if not the slot maths'. The spec ``hand_plan`` turns into a placement; a served
    group is :class:`k8s.render.Group`."""

    pool: str
    profile: str
    models: tuple[str, ...]
    batch: dict[str, int] = field(default_factory=dict)
    """Preferred batch per model; missing ones come from the slot maths."""
    duty_ms: float | None = None
    """Duty cycle (the batchers' max queue delay derives from it); None from the slot maths."""


def hand_plan(fleet: Fleet, groups: list[HandGroup], *, u: float | None = None) -> Plan:
    """One slot per group; ``u`` is the usable share of a duty cycle (None: the planner's default
    headroom's), recorded in the plan's settings so later stages size slots alike."""
    settings = PlanSettings() if u is None else PlanSettings(headroom=1.0 - u)
    u = settings.u if u is None else u
    counts: dict[str, int] = {}
    for g in groups:
        for n in g.models:
            counts[n] = counts.get(n, 0) + 1
    placements = []
    seen_rep: dict[str, int] = {}
    per_pool: dict[str, int] = {}
    for g in groups:
        pool = fleet.pool(g.pool)
        st = SlotType(pool, g.profile)
        models = [fleet.model(n) for n in g.models]
        rates = [m.traffic.peak_rps / counts[m.name] for m in models]
        try:
            res = evaluate([item(m, r, st, u) for m, r in zip(models, rates)], math.inf, u)
            duty, batches = res.duty_cycle_ms, [mr.batch_size for mr in res.members]
        except ValueError:
            duty, batches = sum(item(m, 0.0, st, u).run_ms(m.max_batch) for m in models), [m.max_batch for m in models]
        if g.duty_ms is not None:
            duty = g.duty_ms
        batches = [g.batch.get(m.name, b) for m, b in zip(models, batches)]
        width = max(m.gpus_per_replica for m in models)
        k = per_pool.get(pool.name, 0)
        if k % pool.gpus_per_node + width > pool.gpus_per_node:  # a multi-GPU replica stays on one node
            k += pool.gpus_per_node - k % pool.gpus_per_node
        per_pool[pool.name] = k + width
        node, gpu = divmod(k, pool.gpus_per_node)
        members = []
        runs = [item(m, r, st, u).run_ms(b) for m, b, r in zip(models, batches, rates)]
        C = sum(runs)
        for m, b, r, run in zip(models, batches, rates, runs):
            seen_rep[m.name] = seen_rep.get(m.name, -1) + 1
            # The slot model's bound (packer.slot): the cut, then k rounds of every member's batch,
            # with k what these batches need for the window's arrivals; none suffices: no bound.
            k = turns(r, b, duty, C, run)
            bound = duty + k * C if k > 0 else math.inf
            members.append(Member(m.name, m.kind, seen_rep[m.name], b, run / duty if duty > 0 else 0.0, m.memory_gb,
                                  bound, m.slo_ms, r))
        placements.append(Placement(pool.name, f"{pool.name}-n{node}", gpu, g.profile, tuple(members), duty,
                                    sum(m.memory_gb for m in models), st.memory_gb,
                                    sum(x.share for x in members), "hand", "written by hand",
                                    None if g.profile == WHOLE else 0, tuple(range(gpu, gpu + width))))
    gpus: dict[str, int] = {}
    seen = set()
    for p in placements:
        for g in p.gpus:
            if (p.node, g) not in seen:
                seen.add((p.node, g))
                gpus[p.pool] = gpus.get(p.pool, 0) + 1
    cost = sum(fleet.pool(k).cost_per_gpu_hour * v for k, v in gpus.items())
    return Plan(fleet, "feasible", cost, cost, 0.0, gpus, {}, tuple(placements), replicas=counts, settings=settings)
