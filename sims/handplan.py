"""Plans written by hand: a packing you want to try without the planner's choices.

``hand_plan(fleet, [Group("l4", "whole", ("asr-en", "punct-en"))])`` gives a :class:`Plan` with one
slot per group, batches and duty cycle from the planner's slot maths (``packer.slot.evaluate``) at
each model's peak rate divided among its replicas, or exactly the ``batch``/``duty_ms`` given. It is
what the queueing tests use to put one known server in front of known traffic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from packer.fleet import Fleet
from packer.plan import Member, Placement, Plan, PlanSettings
from packer.slot import WHOLE, SlotType, evaluate, item


@dataclass(frozen=True)
class Group:
    pool: str
    profile: str
    models: tuple[str, ...]
    batch: dict[str, int] = field(default_factory=dict)
    """Preferred batch per model; missing ones come from the slot maths."""
    duty_ms: float | None = None
    """Duty cycle (the batchers' max queue delay derives from it); None from the slot maths."""


def hand_plan(fleet: Fleet, groups: list[Group], *, u: float | None = None) -> Plan:
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
        for m, b, r, run in zip(models, batches, rates, runs):
            seen_rep[m.name] = seen_rep.get(m.name, -1) + 1
            # The slot model's bound (packer.slot): the cut, then a round of every member's batch.
            members.append(Member(m.name, m.kind, seen_rep[m.name], b, run / duty if duty > 0 else 0.0, m.memory_gb,
                                  duty + sum(runs), m.slo_ms, r))
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
