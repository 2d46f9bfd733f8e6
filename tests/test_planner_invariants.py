"""A plan never costs more than the greedy packing printed under it, and that packing is a plan.

Structural: these hold whatever the slot maths says (no plan costs are hard-coded here).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from packer.check import check_plan
from packer.fleetfile import load_fleet
from packer.planner import PlanSettings, plan_fleet
from packer.planner.assemble import assign_nodes
from packer.planner.build import make_plan
from packer.planner.model import Problem
from packer.planner.solve import greedy_baseline, greedy_packing

FLEETS = Path(__file__).resolve().parent.parent / "packer" / "examples"


def baseline_plan(fleet, settings):
    """The greedy baseline's packing as a Plan, with nodes assigned as the planner assigns them."""
    packing = greedy_packing(fleet, settings)
    assert packing is not None
    shared, multi = packing
    problem = Problem(fleet, settings)
    from packer.planner.solve import plan_multi

    plan_multi(problem)
    gpus = shared + multi
    warnings = assign_nodes(problem, gpus)
    replicas = {m.name: 0 for m in fleet.models} | dict(problem.multi_counts)
    for g in shared:
        for s in g.slots:
            for r in s.reps:
                replicas[r.model.name] += 1
    return make_plan(problem, gpus, status="feasible", lower_bound=0.0, bound_method="", solve_seconds=0.0,
                     baselines={}, replicas=replicas, warnings=warnings)


@pytest.mark.parametrize("headroom", [0.15, 0.0])
def test_greedy_baseline_is_a_sound_plan_and_the_plan_is_no_dearer(headroom):
    # multilingual-10: the MIG-aware greedy start chose 3 big asr-en replicas that pushed the plan
    # onto A100s (26.00/h), while the whole-GPU greedy printed under it cost 19.30/h.
    fleet = load_fleet(FLEETS / "multilingual-10.yaml")
    settings = PlanSettings(headroom=headroom, time_limit_s=1.5, prove_s=0)
    base = baseline_plan(fleet, settings)
    assert check_plan(base) == []
    assert base.cost_per_hour == pytest.approx(greedy_baseline(fleet, settings).cost_per_hour)
    plan = plan_fleet(fleet, settings)
    assert check_plan(plan) == []
    assert plan.cost_per_hour <= plan.baselines["greedy"].cost_per_hour + 1e-9
    assert plan.baselines["greedy"].cost_per_hour == pytest.approx(base.cost_per_hour)


@pytest.mark.parametrize("name", ["multilingual-10", "long-tail"])
def test_a_bound_without_a_solver_is_valid_and_not_zero(name):
    # The closed form stands when the LPs do not finish; it must never exceed a feasible plan's
    # cost, and a fleet that needs GPUs must get a bound above 0 even with no time at all.
    from packer.planner.bound import closed_form, lower_bound

    fleet = load_fleet(FLEETS / f"{name}.yaml")
    settings = PlanSettings(time_limit_s=1.5, prove_s=0)
    plan = plan_fleet(fleet, settings)
    problem = Problem(fleet, settings)
    cf = closed_form(problem)
    assert 0 < cf[0] <= plan.cost_per_hour + 1e-6
    lb, method = lower_bound(problem, 0.0, time_limit=1e-3)
    assert 0 < lb <= plan.cost_per_hour + 1e-6 and method
    assert plan.lower_bound_cost_per_hour > 0 and plan.bound_method
