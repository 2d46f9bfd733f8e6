"""Turn a packing (GPUs holding slots holding replicas) into a :class:`~packer.plan.Plan`."""

from __future__ import annotations

from packer.plan import Baseline, GpuLayout, Member, Placement, Plan, node_name, round_cost
from packer.planner.assemble import Gpu
from packer.planner.model import Problem, Rep
from packer.slot import WHOLE, SlotType, evaluate, item


def multi_placement(problem: Problem, g: Gpu) -> Placement:
    model, idx = g.multi  # type: ignore[misc]
    st = SlotType(g.pool)
    n = problem.multi_counts[model.name]
    rate = model.traffic.peak_rps / n if n else 0.0
    res = evaluate([item(model, rate, st, problem.u)], st.memory_gb * model.gpus_per_replica, problem.u)
    m = res.members[0]
    member = Member(model.name, model.kind, idx, m.batch_size, m.share, model.memory_gb, m.p99_bound_ms,
                    model.slo_ms, rate)
    return Placement(pool=g.pool.name, node=node_name(g.pool.name, g.node), gpu=g.index, slot=WHOLE,
                     models=(member,), duty_cycle_ms=res.duty_cycle_ms, memory_gb=model.memory_gb,
                     memory_capacity_gb=round(res.memory_capacity_gb, 2),
                     compute_share=res.compute_share if res.duty_cycle_ms == 0 else m.share,  # alone: its reserve too
                     binding=res.binding, reason=f"{model.gpus_per_replica} whole GPUs, never shared; {res.reason}",
                     gpus=tuple(range(g.index, g.index + g.width)))


def placements(problem: Problem, gpus: list[Gpu]) -> list[Placement]:
    out: list[Placement] = []
    for g in sorted(gpus, key=lambda g: (g.pool.name, g.node, g.index)):
        if g.multi:
            out.append(multi_placement(problem, g))
            continue
        for s in sorted(g.slots, key=lambda s: (s.start or 0, s.type.profile)):
            if not s.reps:
                continue
            reps: list[Rep] = sorted(s.reps, key=lambda r: r.key)
            res = evaluate([problem.item(r, s.type) for r in reps], s.type.memory_gb, problem.u)
            members = tuple(
                Member(r.model.name, r.model.kind, r.index, m.batch_size, round(m.share, 4), r.model.memory_gb,
                       round(m.p99_bound_ms, 2), r.model.slo_ms, r.rate)
                for r, m in zip(reps, res.members)
            )
            out.append(Placement(
                pool=g.pool.name, node=node_name(g.pool.name, g.node), gpu=g.index, slot=s.type.profile,
                models=members, duty_cycle_ms=res.duty_cycle_ms, memory_gb=round(res.memory_gb, 3),
                memory_capacity_gb=round(s.type.memory_gb, 2), compute_share=round(res.compute_share, 4),
                binding=res.binding, reason=res.reason, mig_start=s.start if s.type.profile != WHOLE else None,
                gpus=(g.index,),
            ))
    return out


def layouts(gpus: list[Gpu]) -> list[GpuLayout]:
    out = []
    for g in sorted(gpus, key=lambda g: (g.pool.name, g.node, g.index)):
        for k in range(g.width):
            if g.layout is not None:
                out.append(GpuLayout(g.pool.name, node_name(g.pool.name, g.node), g.index + k, g.layout.name,
                                     g.layout.creation_order))
            else:
                out.append(GpuLayout(g.pool.name, node_name(g.pool.name, g.node), g.index + k, WHOLE))
    return out


def gpu_counts(problem: Problem, gpus: list[Gpu]) -> dict[str, int]:
    counts = {p.name: 0 for p in problem.fleet.pools}
    for g in gpus:
        counts[g.pool.name] += g.width
    return counts


def cost_of(problem: Problem, counts: dict[str, int]) -> float:
    return sum(problem.fleet.pool(p).cost_per_gpu_hour * n for p, n in counts.items())


def make_plan(problem: Problem, gpus: list[Gpu], *, status: str, lower_bound: float, bound_method: str,
              solve_seconds: float, baselines: dict[str, Baseline], replicas: dict[str, int], moves: tuple = (),
              warnings: list[str] | None = None) -> Plan:
    counts = gpu_counts(problem, gpus)
    cost = cost_of(problem, counts)
    return Plan(
        fleet=problem.fleet, status=status, cost_per_hour=round_cost(cost),
        lower_bound_cost_per_hour=round_cost(min(cost, lower_bound)), solve_seconds=solve_seconds,
        gpus={k: v for k, v in counts.items() if v}, baselines=baselines,
        placements=tuple(placements(problem, gpus)), layouts=tuple(layouts(gpus)), replicas=replicas,
        moves=moves, settings=problem.settings,
        bound_method=bound_method, warnings=tuple(warnings or ()),
    )
