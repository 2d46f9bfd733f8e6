"""Small hand-built fleets and plans for the scaling tests (no planner: fast and fixed).

``tiny_plan`` is two L4 GPUs on one node: ``g0`` packs asr-a with punct, ``g1`` packs asr-b with
punct; the node has two more free GPUs. Each replica is sized for its model's peak share.
"""

from __future__ import annotations

from packer.fleet import Fleet
from packer.fleetfile import parse_fleet
from packer.plan import GpuLayout, Member, Placement, Plan, PlanSettings
from packer.slot import SlotType, evaluate, item

FLEET = {
    "name": "tiny",
    "pools": [
        {"name": "l4", "gpu": "l4-24gb", "gpus_per_node": 4, "max_nodes": 2, "cost_per_gpu_hour": 0.8,
         "sharing": ["time-slicing"]},
        {"name": "a100", "gpu": "a100-80gb", "gpus_per_node": 2, "max_nodes": 1, "cost_per_gpu_hour": 4.1,
         "sharing": ["time-slicing"]},
    ],
    "models": [
        {"name": "asr-a", "kind": "streaming", "memory_gb": 2.5, "traffic": {"rps": 200, "peak_rps": 400},
         "slo_ms": 200, "latency_ms": {"gpu": "a100-80gb", "base": 4.0, "per_item": 0.13}, "max_batch": 128},
        {"name": "asr-b", "kind": "streaming", "memory_gb": 2.5, "traffic": {"rps": 200, "peak_rps": 400},
         "slo_ms": 200, "latency_ms": {"gpu": "a100-80gb", "base": 4.0, "per_item": 0.13}, "max_batch": 128,
         "max_replicas": 3},
        {"name": "punct", "kind": "streaming", "memory_gb": 0.6, "traffic": {"rps": 20, "peak_rps": 40},
         "slo_ms": 100, "latency_ms": {"gpu": "a100-80gb", "base": 2.0, "per_item": 0.05}, "max_batch": 64,
         "min_replicas": 2},
    ],
}


def fleet(**model_overrides: dict) -> Fleet:
    doc = {**FLEET, "models": [dict(m, **model_overrides.get(m["name"], {})) for m in FLEET["models"]]}
    return parse_fleet(doc)


def placement(f: Fleet, pool: str, node: str, gpu: int, members: list[tuple[str, int, float]],
              u: float = PlanSettings().u) -> Placement:
    """A slot with ``(model, replica, rate)`` members, evaluated by the planner's slot maths at the
    plan's default headroom (what :func:`plan_of` records)."""
    st = SlotType(f.pool(pool))
    its = [item(f.model(n), r, st, u) for n, _, r in members]
    res = evaluate(its, st.memory_gb, u)
    ms = tuple(Member(n, f.model(n).kind, i, mr.batch_size, mr.share, f.model(n).memory_gb, mr.p99_bound_ms,
                      f.model(n).slo_ms, r) for (n, i, r), mr in zip(members, res.members))
    return Placement(pool, node, gpu, "whole", ms, res.duty_cycle_ms, res.memory_gb, st.memory_gb,
                     res.compute_share, res.binding, res.reason, None, (gpu,))


def plan_of(f: Fleet, placements: list[Placement]) -> Plan:
    gpus = sorted({(p.pool, p.node, p.gpu) for p in placements})
    layouts = tuple(GpuLayout(pool, node, g, "whole") for pool, node, g in gpus)
    counts: dict[str, int] = {}
    for pool, _, _ in gpus:
        counts[pool] = counts.get(pool, 0) + 1
    cost = sum(f.pool(k).cost_per_gpu_hour * n for k, n in counts.items())
    replicas: dict[str, int] = {}
    for p in placements:
        for m in p.models:
            replicas[m.name] = replicas.get(m.name, 0) + 1
    return Plan(fleet=f, status="feasible", cost_per_hour=cost, lower_bound_cost_per_hour=cost, solve_seconds=0.0,
                gpus=counts, baselines={}, placements=tuple(placements), layouts=layouts, replicas=replicas,
                settings=PlanSettings(), warnings=("hand-picked groups, not a planner result",))


def tiny_plan(f: Fleet | None = None, rate: float = 200.0, punct: float = 20.0) -> Plan:
    f = f or fleet()
    return plan_of(f, [
        placement(f, "l4", "l4-n0", 0, [("asr-a", 0, rate), ("punct", 0, punct)]),
        placement(f, "l4", "l4-n0", 1, [("asr-b", 0, rate), ("punct", 1, punct)]),
    ])


def three_slot_plan_for_cli() -> Plan:  # also the policy tests' three-slot plan
    """g0: asr-a + punct, g1: asr-b + punct, g2: the second replicas of asr-a and asr-b."""
    f = fleet()
    return plan_of(f, [
        placement(f, "l4", "l4-n0", 0, [("asr-a", 0, 200.0), ("punct", 0, 20.0)]),
        placement(f, "l4", "l4-n0", 1, [("asr-b", 0, 200.0), ("punct", 1, 20.0)]),
        placement(f, "l4", "l4-n0", 2, [("asr-a", 1, 200.0), ("asr-b", 1, 200.0)]),
    ])
