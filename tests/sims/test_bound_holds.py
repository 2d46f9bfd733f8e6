"""The simulator, serving a slot as rendered, never sees a member's p99 above the plan's bound.

Groups are generated (1-4 members, interactive and batch, profiles from sub-ms to seconds, SLOs
from 100 ms to 10 s, small and large max_batch), sized by the slot maths at a random fraction of
the most the group can take together, and simulated under Poisson arrivals at those rates. The
bound (``p99_bound_ms``: the cut plus a round of batches at the 99.9 % level, docs/slot-maths.md)
must hold for every member; the simulator serves with the batchers of ``packer.batching``.
"""

from __future__ import annotations

from dataclasses import replace

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from packer.fleet import FleetError
from packer.fleetfile import parse_fleet
from packer.slot import SlotType, feasible, item, largest
from packer.handplan import placement, plan_of
from sims.engine import simulate
from sims.scenario import Scenario

U = 0.85


@st.composite
def groups(draw):
    n = draw(st.integers(1, 4))
    models = []
    for i in range(n):
        batch = draw(st.booleans())
        base = draw(st.sampled_from([0.5, 2.0, 8.0, 30.0] + ([200.0, 1000.0] if batch else [])))
        models.append({
            "name": f"m{i}", "kind": "batch" if batch else "streaming", "memory_gb": 1.0,
            "traffic": {"rps": draw(st.floats(1, 400))},
            "slo_ms": draw(st.sampled_from([2000, 10000] if batch else [100, 200, 400])),
            "latency_ms": {"gpu": "l4-24gb", "base": base, "per_item": base * draw(st.sampled_from([0.02, 0.1, 0.5]))},
            "max_batch": draw(st.sampled_from([4, 16, 64])),
        })
    load = draw(st.sampled_from([0.5, 0.9, 1.0]))
    return {"name": "g", "pools": [{"name": "l4", "gpu": "l4-24gb", "gpus_per_node": 1, "max_nodes": 1,
                                    "cost_per_gpu_hour": 1.0, "sharing": ["time-slicing"]}],
            "models": models}, load


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(groups())
def test_simulated_p99_stays_within_the_bound(case):
    doc, load = case
    try:
        f = parse_fleet(doc)
    except FleetError:  # a model no slot can serve at all: nothing to simulate
        assume(False)
    slot = SlotType(f.pool("l4"))
    mix = {m.name: m.traffic.rps for m in f.models}
    k = largest(lambda x: feasible([item(f.model(n), x * r, slot, U) for n, r in mix.items()], slot.memory_gb, U))
    assume(k > 0)
    rates = {n: k * load * 0.999 * r for n, r in mix.items()}
    assume(min(rates.values()) * 60 >= 200)  # enough requests for a p99
    sub = replace(f, models=tuple(replace(m, traffic=replace(m.traffic, rps=rates[m.name], peak_rps=rates[m.name]))
                                  for m in f.models))
    p = placement(sub, "l4", list(rates.items()), u=U)
    res = simulate(plan_of(sub, [p]), Scenario(process="poisson"), duration_s=60.0, seed=3).to_dict()
    bound = {m.name: m.p99_bound_ms for m in p.models}
    for m in res["models"]:
        assert sum(m["rejected"].values()) == 0, m
        assert m["p99_ms"] <= bound[m["name"]] + 1e-6, (m["name"], m["p99_ms"], bound[m["name"]], p.duty_cycle_ms)
