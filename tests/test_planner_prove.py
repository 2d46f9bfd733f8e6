"""The exact search for a cheaper plan: it closes gaps the relaxation leaves, and never rules out a
purchase on which a real plan exists (that would be a false proof)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, assume, given, settings

from packer.check import check_plan
from packer.errors import UserError
from packer.fleet import FleetError
from packer.fleetfile import parse_fleet
from packer.planner import PlanSettings, plan_fleet
from packer.planner.model import Problem
from packer.planner.prove import fits, maximal_purchases, prove
from test_planner import fleets

L4 = {"name": "l4", "gpu": "l4-24gb", "gpus_per_node": 4, "max_nodes": 2, "cost_per_gpu_hour": 0.8,
      "sharing": ["time-slicing"]}


def _model(name: str, memory_gb: float, rps: float, **extra) -> dict:
    return {"name": name, "kind": "streaming", "memory_gb": memory_gb, "traffic": {"rps": rps, "peak_rps": rps},
            "slo_ms": 200, "latency_ms": {"gpu": "l4-24gb", "base": 5, "per_item": 1}, "max_batch": 32,
            "min_replicas": 1} | extra


def test_maximal_purchases_are_the_largest_that_cost_less():
    # multilingual: A100s at 4.10, L4s at 0.80, a plan at 9.70/h
    got = maximal_purchases({"a100": 4.1, "l4": 0.8}, {"a100": 2, "l4": 12}, 9.70)
    assert sorted(tuple(c.values()) for c in got) == [(0, 12), (1, 6), (2, 1)]
    assert maximal_purchases({"l4": 0.8}, {"l4": 3}, 0.8) == [{"l4": 0}]


def test_memory_fragmentation_the_relaxation_pools_away_is_proven():
    # Three idle 13 GB models: the relaxation pools 39 GB into two 22.5 GB L4s (1.60/h), but no
    # L4 holds two of them, so three are needed (2.40/h).
    doc = {"name": "three", "pools": [L4], "models": [_model(n, 13, 1) for n in "abc"]}
    fleet = parse_fleet(doc)
    plain = plan_fleet(fleet, PlanSettings(time_limit_s=1, prove_s=0))
    assert plain.cost_per_hour == pytest.approx(2.4)
    # The pattern LP's groups are groups the slot maths admits, so it sees the fragmentation too.
    assert plain.lower_bound_cost_per_hour == pytest.approx(2.4)
    assert plain.bound_method.startswith("pattern LP")
    # by default the search runs on a fleet this small (on the greedy plan, before improving it),
    # and with --prove after the search
    for settings_ in (PlanSettings(time_limit_s=1), PlanSettings(time_limit_s=1, prove_s=10)):
        proven = plan_fleet(fleet, settings_)
        assert proven.status == "optimal" and proven.gap == pytest.approx(0)
        assert proven.bound_method.startswith(("exact search: no cheaper plan exists", "pattern LP"))
        assert check_plan(proven) == []
    # The exact search alone proves it as well.
    proof = prove(Problem(fleet, PlanSettings()), 2.4, 0.0, 10)
    assert proof is not None and proof.optimal and proof.bound == pytest.approx(2.4)


def test_compute_the_relaxation_pools_away_is_proven():
    # Three models of 450 rps: each takes 6/134 + 0.45 = 49.5 % of an L4's cycle alone and may not be split (max_replicas 1):
    # pooled, 1.5 cycles fit two L4s at 85 %; no L4 runs two of them, so three are needed.
    doc = {"name": "halves", "pools": [L4], "models": [_model(n, 1, 450, max_replicas=1, max_batch=64) for n in "abc"]}
    fleet = parse_fleet(doc)
    problem = Problem(fleet, PlanSettings())
    plan = plan_fleet(fleet, PlanSettings(time_limit_s=1, prove_s=0))
    assert plan.cost_per_hour == pytest.approx(2.4)
    assert plan.lower_bound_cost_per_hour == pytest.approx(2.4)  # the pattern LP: no L4 holds two
    assert fits(problem, {"l4": 2}, 10) is False
    assert fits(problem, {"l4": 3}, 10) is True
    proof = prove(problem, 2.4, 0.0, 10)
    assert proof is not None and proof.optimal and proof.bound == pytest.approx(2.4)


def test_the_same_models_split_into_replicas_need_fewer_gpus():
    # Allowed two replicas each, the same three models run six half-rate replicas (26 % each),
    # three per L4:
    # the search must not rule two L4s out.
    doc = {"name": "halves", "pools": [L4], "models": [_model(n, 1, 450, max_batch=64) for n in "abc"]}
    problem = Problem(parse_fleet(doc), PlanSettings())
    assert fits(problem, {"l4": 2}, 10) is not False


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(fleets())
def test_every_plan_fits_the_exact_model(doc):
    # The model is a relaxation of planning: the GPUs a real plan bought must never be ruled out.
    try:
        fleet = parse_fleet(doc)
        plan = plan_fleet(fleet, PlanSettings(time_limit_s=0.5, seed=1))
    except (FleetError, UserError):
        assume(False)
    problem = Problem(fleet, PlanSettings())
    assert fits(problem, dict(plan.gpus), 5) is not False, plan.gpus
    proof = prove(problem, plan.cost_per_hour, 0.0, 5)
    if proof is not None:
        assert proof.bound <= plan.cost_per_hour + 1e-6


def test_cli_prove_reports_the_proof_and_rejects_negative_seconds(tmp_path, capsys):
    import yaml

    from packer_cli.main import main

    p = tmp_path / "three.yaml"
    p.write_text(yaml.safe_dump({"name": "three", "pools": [L4], "models": [_model(n, 13, 1) for n in "abc"]}))
    assert main(["plan", str(p), "--time-limit", "1", "--prove", "10"]) in (0, None)
    out = capsys.readouterr().out
    assert ("exact search: no cheaper plan exists" in out or "pattern LP" in out) and "gap 0.0%" in out
    assert "hint:" not in out
    assert main(["plan", str(p), "--prove", "-1"]) == 2
    assert "'--prove': -1 is out of range; give at least 0" in capsys.readouterr().err


def test_no_false_proof_when_multi_gpu_models_could_sit_elsewhere():
    # Found in review: big (2 GPUs per replica) takes both L4s, so small goes to an A100 (5.70/h).
    # Placing big on the two T4s instead leaves an L4 for small: 2.50/h. The search must not take
    # the multi-GPU models' pools from this plan, nor their greedy cost as a floor.
    pools = [{"name": "l4", "gpu": "l4-24gb", "gpus_per_node": 2, "max_nodes": 1, "cost_per_gpu_hour": 0.8,
              "sharing": ["time-slicing"]},
             {"name": "t4", "gpu": "t4-16gb", "gpus_per_node": 2, "max_nodes": 1, "cost_per_gpu_hour": 0.85,
              "sharing": ["time-slicing"]},
             {"name": "a100", "gpu": "a100-80gb", "gpus_per_node": 2, "max_nodes": 1, "cost_per_gpu_hour": 4.1,
              "sharing": ["time-slicing"]}]

    def batch(name: str, mem: float, gpr: int) -> dict:
        return {"name": name, "kind": "batch", "memory_gb": mem, "traffic": {"rps": 1, "peak_rps": 1},
                "slo_ms": 60000, "latency_ms": {"gpu": "l4-24gb", "base": 50, "per_item": 1}, "max_batch": 8,
                "min_replicas": 1, "gpus_per_replica": gpr}

    fleet = parse_fleet({"name": "m", "pools": pools, "models": [batch("big", 28, 2), batch("small", 20, 1)]})
    plan = plan_fleet(fleet, PlanSettings(time_limit_s=1, prove_s=10))
    assert plan.lower_bound_cost_per_hour <= 2.5 + 1e-6
    # The dedicated baseline's packing (big on the T4s, small alone on an L4) is that 2.50/h plan,
    # and a plan never dearer than its dedicated baseline takes it: the proof is then a true one.
    assert plan.cost_per_hour == pytest.approx(2.5)
    assert check_plan(plan) == []


def test_a_replica_at_the_slot_maths_tolerance_is_not_excluded():
    # Found in review: base 85 + 4e-13 ms, SLO 185 ms: A / (slo - A) is a hair over u = 0.85, which
    # the slot maths accept within their 1e-9 tolerance; the search must accept it too.
    for rps in (0.0, 5.0):
        m = _model("z", 2, rps, slo_ms=185, latency_ms={"gpu": "l4-24gb", "base": 85 + 4e-13, "per_item": 0.0})
        fleet = parse_fleet({"name": "t", "pools": [L4], "models": [m]})
        plan = plan_fleet(fleet, PlanSettings(time_limit_s=0.5))
        assert check_plan(plan) == []
        assert fits(Problem(fleet, PlanSettings()), dict(plan.gpus), 5) is True


def test_a_purchase_the_fleet_fits_on_ends_a_search_that_stops_on_fit():
    # Split into two replicas each, the three models fit two L4s: no proof below 2.40/h exists, and
    # a search that stops on the first fit (the default plan's short search) settles nothing more.
    doc = {"name": "halves", "pools": [L4], "models": [_model(n, 1, 450, max_batch=64) for n in "abc"]}
    problem = Problem(parse_fleet(doc), PlanSettings())
    proof = prove(problem, 2.4, 0.8, 10, stop_on_fit=True)
    assert proof is not None and not proof.optimal
    assert proof.open == ({"l4": 2},) and proof.bound <= 1.6 + 1e-9
    # Below it, one L4 is ruled out: the bound is the two L4s the fleet fits on, not the relaxation's 0.80/h.
    assert proof.ruled_out == ({"l4": 1},) and proof.bound == pytest.approx(1.6)
    assert prove(problem, 2.4, 0.0, 10, max_purchases=0) is None


# Found under the duty cycle's maths alone: conftest.duty_cycle_only.
def test_prove_keeps_the_default_plans_packing_and_says_why_it_did_not_search(duty_cycle_only, monkeypatch):
    """``--prove`` skipped the pattern LP's packing: on this generated mixed fleet it planned 88.93/h
    where the default plan costs 82.20/h, and said the 15-model fleet was 'too large' when it had
    too many cheaper purchases to rule out; the hint then offered ``--prove`` again. The integer
    master over every group (``allgroups``) now proves the plan optimal before any exact search,
    so the reason is checked with it off."""
    from bench.family import family
    from packer.planner import solve
    from packer.report import summary

    fleet = parse_fleet(family(7, seed=2, max_models=500)[6])
    assert fleet.name == "family-200008-mixed-15"
    default = plan_fleet(fleet, PlanSettings())
    proved = plan_fleet(fleet, PlanSettings(prove_s=1.0))
    assert proved.cost_per_hour <= default.cost_per_hour + 1e-9
    assert proved.lower_bound_cost_per_hour == pytest.approx(proved.cost_per_hour)
    assert "an integer programme over every group" in proved.bound_method
    monkeypatch.setattr(solve, "exact_groups", lambda *a, **k: (None, 0.0))
    default = plan_fleet(fleet, PlanSettings())
    proved = plan_fleet(fleet, PlanSettings(prove_s=1.0))
    assert proved.cost_per_hour <= default.cost_per_hour + 1e-9
    assert "cheaper GPU purchases to rule out, more than its 12" in proved.bound_method
    assert "hint:" not in summary(proved) and "hint:" not in summary(default)


def test_prove_says_when_the_mig_slots_are_too_many_for_it():
    """A 16-model fleet on MIG A100s: every cheaper purchase cuts into 76 or more slots, past the
    exact model's 60. ``--prove`` reported '2 purchase(s) not settled in 0 s' and the plan hinted
    at ``--prove``; now the bound names the reason and no hint is printed."""
    from bench.family import family_fleet
    from packer.planner.prove import MAX_SLOTS, why_not
    from packer.planner.solve import multi_floor, plan_multi

    fleet = parse_fleet(family_fleet(300014, max_models=40))
    problem = Problem(fleet, PlanSettings())
    plan_multi(problem)
    floor = multi_floor(problem)
    reason = why_not(problem, 19.78 - floor, 16.28 - floor)
    assert reason is not None and f"more than the exact model's {MAX_SLOTS}" in reason
    assert prove(problem, 19.78 - floor, 16.28 - floor, 5) is None


def test_prove_searches_inside_the_cheaper_purchases_the_exact_model_cannot_take(monkeypatch):
    """The same 16-model MIG fleet: the default plan keeps 5 A100s and 3 L4s (19.78/h), and the
    whole CP-SAT model hinted with it stays there. With ``--prove`` part of the seconds go to that
    model cut to each cheaper purchase the bound leaves open and given no hint; inside 5 A100s and
    2 L4s it finds 5 A100s and 1 L4 (18.26/h). The plan stays sound and spreads as well (the one
warning is what the spread costs). (The
    integer master over every group, ``allgroups``, now gives the default search a start from which
    it ends at 17.04/h: it is off here, so that this checks the exact search's own packing.)"""
    from bench.family import family_fleet
    from packer.planner import solve

    monkeypatch.setattr(solve, "exact_groups", lambda *a, **k: (None, 0.0))
    fleet = parse_fleet(family_fleet(300014, max_models=40))
    proved = plan_fleet(fleet, PlanSettings(prove_s=40))
    assert proved.cost_per_hour < 19.78 - 1.0
    assert proved.cost_per_hour >= proved.lower_bound_cost_per_hour - 1e-6
    assert check_plan(proved) == []
    # Over every plan, 16.28/h has both replicas of punct-0 and asr-2 on the L4 pool's one node:
    # the one warning says where the spread rule binds (what a refused packing saved, or, where
    # the columns keep the rule and none is made, the rows that bind in the bound's LP).
    assert len(proved.warnings) == 1 and proved.warnings[0].startswith("spread:")


def test_prove_0_turns_off_the_exact_search_and_nothing_else():
    """``--prove 0`` skipped the bound and the pattern LP's packing before the search too: on the
    bundled example it took 6.5 s for a plan with a 5.8 % gap, where the default proves 13.70/h
    optimal in 2.7 s (the integer master over every group does, not the exact search)."""
    from packer.fleetfile import load_fleet
    from packer_cli.plan import example_path

    fleet = load_fleet(example_path())
    off = plan_fleet(fleet, PlanSettings(prove_s=0))
    on = plan_fleet(fleet, PlanSettings())
    assert off.cost_per_hour <= on.cost_per_hour + 1e-9
    assert off.lower_bound_cost_per_hour >= on.lower_bound_cost_per_hour - 1e-9
    assert "exact search" not in off.bound_method


def _two_h200_pools() -> dict:
    """A fleet a fuzzing helper generated (the thirty-fourth session's multi-GPU fuzzing, seed 20):
    four 2-GPU and four 1-GPU models on two H200 pools, the cheaper one of 4-GPU nodes."""
    def m(name, mem, gpr, rps, peak, slo, base, per, lo):
        return {"name": name, "kind": "streaming", "memory_gb": mem, "gpus_per_replica": gpr,
                "traffic": {"rps": rps, "peak_rps": peak}, "slo_ms": slo,
                "latency_ms": {"gpu": "h100-80gb", "base": base, "per_item": per}, "max_batch": 32, "min_replicas": lo}
    pools = [{"name": "p0-h200", "gpu": "h200-141gb", "gpus_per_node": 2, "max_nodes": 9, "cost_per_gpu_hour": 11.37,
              "sharing": ["time-slicing"]},
             {"name": "p1-h200", "gpu": "h200-141gb", "gpus_per_node": 4, "max_nodes": 6, "cost_per_gpu_hour": 10.33,
              "sharing": ["mig", "time-slicing"]}]
    models = [m("m0-g2", 169.0, 2, 3.501, 5.252, 10000, 3556.3, 132.5, 1),
              m("m1-g1", 27.0, 1, 0.839, 1.258, 60000, 3502.5, 95.5, 1),
              m("m2-g2", 161.0, 2, 1.409, 1.409, 10000, 4403.8, 177.8, 2),
              m("m3-g1", 23.4, 1, 0.26, 0.26, 60000, 6881.2, 144.0, 1),
              m("m4-g1", 24.5, 1, 0.078, 0.078, 45000, 5434.7, 158.9, 1),
              m("m5-g2", 194.1, 2, 3.476, 3.476, 20000, 5618.6, 199.0, 1),
              m("m6-g1", 53.0, 1, 0.815, 1.629, 15000, 5412.6, 124.0, 2),
              m("m7-g2", 127.5, 2, 0.62, 1.241, 18138, 6442.9, 75.2, 2)]
    return {"name": "two-h200-pools", "pools": pools, "models": models}


def test_the_exact_search_holds_where_multi_gpu_models_cost_more_than_their_floor() -> None:
    """The exact search covers the shared models' GPU purchases from a bound on what they cost. It
    took the plan's bound less the multi-GPU models' floor, which bounds them only where those
    models cost their floor: asked to prove a 452.58/h plan (its multi-GPU models split so that
    the shared ones went to the dearer pool) with the bound at 441.21/h, it "raised" the bound to
    444.19/h, above a plan of 441.21/h whose shared GPUs cost 32.03/h, under the 48.67/h it
    searched from. The plan is the default one, which check_plan passes; it was the 452.58/h one
    while the multi-GPU models were placed one at a time, each at its cheapest, without pricing
    the room they left the shared models (``multi._cheapest_beside_shared``)."""
    import time

    from packer.planner.multi import multi_floor
    from packer.planner.solve import _prove

    fleet = parse_fleet(_two_h200_pools())
    settings = PlanSettings(time_limit_s=4)
    plan = plan_fleet(fleet, settings)
    assert check_plan(plan) == [] and plan.cost_per_hour == pytest.approx(441.21)
    problem = Problem(fleet, settings)
    bound, _ = _prove(problem, 452.58, multi_floor(problem), 441.21, "the bound", 10.0, None, time.monotonic())
    assert bound <= plan.cost_per_hour + 1e-6
