"""The cheaper purchases (``packer.planner.purchases``): ruling one out never passes a plan that
fits in it (brute force on tiny fleets, real packings on MIG ones), and a small MIG fleet whose
plan and bound were 16.9 % apart is planned at its optimum and proven there."""

from __future__ import annotations

import math

import pytest

from bench.family import family_fleet
from packer.fleetfile import parse_fleet
from packer.planner import PlanSettings, plan_fleet
from packer.planner.allgroups import every_group, exact_master
from packer.planner.model import Problem
from packer.planner.patterns import pattern_bound
from packer.planner.purchases import rule_out
from tests.test_planner_allgroups import _brute_optimum, _tiny_fleet


def test_ruling_out_purchases_never_passes_the_brute_force_optimum() -> None:
    """Whole GPUs: the bound from the purchases left is at most the optimum, and on most tiny
    fleets it is the optimum (every cheaper purchase ruled out)."""
    tight = 0
    for seed in range(8):
        problem = Problem(parse_fleet(_tiny_fleet(seed)), PlanSettings())
        best = _brute_optimum(problem, every_group(problem))
        found, ruled, _ = rule_out(problem, best + 2.0, 0.0, 60.0)
        assert found <= best + 1e-6, (seed, found, best)
        tight += found >= best - 1e-6 and ruled > 0
    assert tight >= 4


def test_ruling_out_purchases_never_passes_a_mig_packing() -> None:
    """MIG pools: below the cost of the exact master's packing (a real plan, dealt onto GPUs)."""
    checked = 0
    for seed in range(6):
        problem = Problem(parse_fleet(_tiny_fleet(seed, mig=True)), PlanSettings())
        pat = every_group(problem)
        exact = exact_master(problem, pat, {}, math.inf, 5.0)
        if exact.gpus is None:
            continue
        dealt = sum(g.pool.cost_per_gpu_hour for g in exact.gpus)
        found, _, _ = rule_out(problem, dealt + 2.0, 0.0, 60.0)
        assert found <= dealt + 1e-6, (seed, found, dealt)
        checked += 1
    assert checked >= 3


def test_the_spread_rows_hold_the_lp_to_one_replica_of_a_model_per_mig_gpu() -> None:
    """At a purchase of one H100, the LP without the spread rows puts two replicas of a model in two
    of its slots; with them it cannot, and its value rises."""
    problem = Problem(parse_fleet(family_fleet(800039, max_models=40)), PlanSettings())
    buy = {"a100-40": 2, "l4": 7, "h100": 1}
    plain = pattern_bound(problem, 2.0, sizes=buy)
    spread = pattern_bound(problem, 2.0, sizes=buy, spread=True)
    assert plain is not None and spread is not None and spread.patterns.spread_rows
    assert spread.lp > plain.lp + 1e-3


def test_a_small_mig_fleet_is_planned_inside_a_cheaper_purchase_and_proven() -> None:
    """family-800039-long-tail-34: 25.99/h (2 A100s, 8 L4s, an H100) against a bound of 21.59/h
    before; the columns at 2 A100s, 7 L4s and an H100 hold a packing at 24.89/h, and the pattern
    LP at each of the 18 purchases below it rules them all out."""
    fleet = parse_fleet(family_fleet(800039, max_models=40))
    problem = Problem(fleet, PlanSettings())
    found, ruled, _ = rule_out(problem, 24.89, 21.59, 10.0)
    assert found == pytest.approx(24.89) and ruled == 18
    plan = plan_fleet(fleet, PlanSettings())
    assert plan.cost_per_hour == pytest.approx(24.89)
    assert plan.lower_bound_cost_per_hour == pytest.approx(24.89) and plan.status == "optimal"
    assert "rules out the 18 GPU purchases below 24.89/h" in plan.bound_method
