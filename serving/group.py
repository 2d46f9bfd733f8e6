"""A packed group picked by hand, sized by the planner's slot maths: for demos, tests and benchmarks.

The planner decides which models share a slot; this lets a user (or a benchmark) ask "what would
Triton run if these models at these rates shared this slot?" and get the same :class:`Placement`
the planner would emit for that group: duty cycle, batches, shares and p99 bounds from
``packer.slot.evaluate``.
"""

from __future__ import annotations

from packer.errors import UserError
from packer.fleet import Fleet
from packer.plan import Member, Placement, Plan, PlanSettings
from packer.slot import WHOLE, SlotType, evaluate, item


def placement(fleet: Fleet, pool: str, members: list[tuple[str, float]], *, profile: str = WHOLE,
              node: str = "local", gpu: int = 0, u: float | None = None) -> Placement:
    """One slot of ``pool``/``profile`` holding one replica of each ``(model, rate_rps)``, at the
    usable duty-cycle share ``u`` (None: the planner's default, ``PlanSettings().u``)."""
    u = PlanSettings().u if u is None else u
    st = SlotType(fleet.pool(pool), profile)
    items = [item(fleet.model(name), rate, st, u) for name, rate in members]
    try:
        res = evaluate(items, st.memory_gb, u)
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
