"""The cheaper purchases (``packer.planner.purchases``): ruling one out never passes a plan that
fits in it (brute force on tiny fleets, real packings on MIG ones, the exact master where the LP
mixes replica counts, plans of llm fleets), and small fleets whose plan and bound were far apart
(16.9 %, 9.4 %, 21.7 %) are planned at or proven near their optimum."""

from __future__ import annotations

import math

import pytest

import random

from bench.family import family, family_fleet
from packer.check import check_plan
from packer.fleetfile import parse_fleet
from packer.planner import PlanSettings, plan_fleet
from packer.planner.allgroups import every_group, exact_master
from packer.planner.model import Problem
from packer.planner.patterns import pattern_bound
from packer.planner import purchases
from packer.planner.purchases import rule_out
from tests.test_planner_allgroups import _brute_optimum, _random_model, _tiny_fleet


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


# Found before lone replicas' batches were capped: conftest.uncapped.
def test_a_small_mig_fleet_is_planned_inside_a_cheaper_purchase_and_proven(uncapped) -> None:
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


def _mixed_counts_fleet(seed: int) -> dict:
    """4-5 models, busy enough that a few fast A100s hold each in 1-3 replicas where the L4s need
    3-14: a pool of one to three A100s binds, and the pattern LP runs models at a mix of counts."""
    rng = random.Random(seed)
    pools = [{"name": "l4", "gpu": "l4-24gb", "gpus_per_node": 4, "max_nodes": 5, "cost_per_gpu_hour": 0.8,
              "sharing": ["time-slicing"]},
             {"name": "a100", "gpu": "a100-80gb", "gpus_per_node": rng.choice([1, 2, 3]), "max_nodes": 1,
              "cost_per_gpu_hour": round(rng.uniform(2.0, 4.0), 2), "sharing": ["time-slicing"]}]
    models = [_random_model(rng, i, 40, 400, None) for i in range(rng.choice([4, 5]))]
    return {"name": f"mixed-counts-{seed}", "pools": pools, "models": models}


# Found before lone replicas' batches were capped: conftest.uncapped.
def test_branching_on_replica_counts_never_passes_the_exact_optimum(monkeypatch: pytest.MonkeyPatch, uncapped) -> None:
    """Whole GPUs, the LP mixing counts: the bound is at most the exact master's proven optimum on
    every fleet, and it is the optimum on seeds 2 and 3, where it takes branches on counts (the LP
    at each purchase alone left them at 17.38/h and 16.79/h against 18.18/h and 17.59/h)."""
    splits = []
    split = purchases._branches
    monkeypatch.setattr(purchases, "_branches", lambda *a: splits.append(r := split(*a)) or r)
    tight = set()
    for seed in range(12):
        problem = Problem(parse_fleet(_mixed_counts_fleet(seed)), PlanSettings())
        pat = every_group(problem)
        exact = exact_master(problem, pat, {}, math.inf, 20.0)
        if not exact.proven or exact.gpus is None:
            continue
        best = sum(g.pool.cost_per_gpu_hour for g in exact.gpus)
        found, _, _ = rule_out(problem, best + 0.01, 0.0, 60.0)
        assert found <= best + 1e-6, (seed, found, best)
        if found >= best - 1e-6:
            tight.add(seed)
    assert {2, 3} <= tight and any(r is not None for r in splits)


# Found under the duty cycle's maths alone: conftest.duty_cycle_only.
def test_a_mix_of_counts_no_plan_can_make_is_branched_away(duty_cycle_only) -> None:
    """family-900031-mixed-26: the LP at 8 H100s and 295 T4s ran its busiest model 57 % at 7
    replicas and 43 % at 186; its bound was 186.73/h against a plan of 206.00/h. Branching on
    that model's counts rules out that purchase, and its branches' duals most of the rest."""
    problem = Problem(parse_fleet(family_fleet(900031, max_models=500)), PlanSettings())
    found, ruled, _ = rule_out(problem, 206.0, 186.73, 12.0)
    assert found >= 204.5 and ruled > 300


def test_a_multi_gpu_model_the_cheap_pool_cannot_hold_splits_over_two_pools() -> None:
    """A 4-model fleet (soundness seed 1924780762, headroom 0.3): its 70B model needs 75 two-GPU
    replicas and the cheap H100 pool (2.82/h) holds 56. Held to one pool, it took the dear one
    (9.42/h) for all of them: 1,421.46/h against a bound of 699.32/h. Split, the cheap pool is
    full and the rest go to the dear one: the plan is the bound, proven optimal, and every model
    keeps its replicas."""
    from collections import Counter

    fleet = parse_fleet(family_fleet(1924780762, max_models=30, min_models=4, shape="llm"))
    plan = plan_fleet(fleet, PlanSettings(headroom=0.3))
    assert plan.status == "optimal" and plan.cost_per_hour == pytest.approx(plan.lower_bound_cost_per_hour)
    assert plan.cost_per_hour < 0.5 * 1421.46
    where = Counter(p.pool for p in plan.placements_of("chat-70b-0"))
    assert where == {"h100-spot": 56, "h100": 19}
    assert all(len(p.gpus) == 2 for p in plan.placements_of("chat-70b-0"))
    assert check_plan(plan) == []


# Found under the duty cycle's maths alone: conftest.duty_cycle_only.
def test_replica_counts_are_branched_on_an_llm_fleet(duty_cycle_only) -> None:
    """family-900030-llm-40 (twelve two-GPU models the LP spreads over two H100 pools): its
    purchases' LPs branch on replica counts, and the bound reaches 433.74/h (the plan costs
    452.08/h); branched on the multi-GPU models' pools first (before those could split), it
    stopped at 432.04/h."""
    fleet = parse_fleet(family(8, seed=9, max_models=500)[7])
    plan = plan_fleet(fleet, PlanSettings())
    assert plan.lower_bound_cost_per_hour >= 433.7
    assert plan.lower_bound_cost_per_hour <= plan.cost_per_hour + 1e-6


@pytest.mark.parametrize("seed", [3, 46, 47, 54], ids=lambda s: f"seed{s}")
def test_ruling_out_on_llm_fleets_never_passes_a_plan(seed: int) -> None:
    """Small llm fleets (multi-GPU models): the bound from ruling out below a plan's cost is never
    above that plan's cost, nor above a cheaper plan from another run. Seeds 46, 47 and 54 branch
    on replica counts; seeds 3 and 46 used to branch on a multi-GPU model's pools."""
    fleet = parse_fleet(family_fleet(seed, max_models=10, min_models=4, shape="llm"))
    plans = [plan_fleet(fleet, PlanSettings(seed=s, time_limit_s=4.0, prove_s=0.0)) for s in (0, 1)]
    cheapest = min(p.cost_per_hour for p in plans)
    found, _, _ = rule_out(Problem(fleet, PlanSettings()), max(p.cost_per_hour for p in plans), 0.0, 10.0)
    assert found <= cheapest + 1e-6
