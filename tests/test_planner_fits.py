"""Pools just big enough: a fleet is planned where a packing exists, and "cannot fit" is said only
where it is shown (``packer/planner/fits.py``, ``bench/tight.py``).

Before: a fleet whose pools were cut to the GPUs its own plan used was refused as "does not fit"
whenever the greedy starts, placing one replica at a time, ran out of room (5 of 16 fleets of
``bench/tight.py --family 16 --max-models 60 --seed 3``), with that plan's packing right there.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.family import SHAPES, family_fleet
from bench.tight import tight_docs
from packer.check import check_plan
from packer.errors import UserError
from packer.fleetfile import parse_fleet
from packer.planner import PlanSettings, plan_fleet
from packer.planner.fits import no_fit_error
from packer.planner.purchases import pools_cost
from packer.planner.model import Problem
from packer.planner.solve import greedy_packing
from tests.test_planner import EXAMPLES


@pytest.fixture(scope="module")
def multilingual():
    from packer.fleetfile import load_fleet

    return load_fleet(EXAMPLES / "multilingual-meetings.yaml")


def test_pools_cut_to_a_plans_own_gpus_are_planned_where_the_greedy_starts_find_no_room():
    """family-300021-mixed-27 plans at 85.45/h on 107 T4s and 28 L40S. Cut to those GPUs, no
    greedy start fits, and it was refused; the pattern LP's packing fits, at the same cost."""
    doc = family_fleet(300021, max_models=60)
    fleet = parse_fleet(tight_docs(doc, {"p0-t4": 107, "p1-l40s": 28})["room"])
    assert greedy_packing(fleet, PlanSettings()) is None  # the case this test is about
    plan = plan_fleet(fleet, PlanSettings())
    assert check_plan(plan) == []
    assert plan.cost_per_hour <= 85.45 + 1e-9
    assert all(n <= fleet.pool(p).max_gpus for p, n in plan.gpus.items())
    assert plan.lower_bound_cost_per_hour <= plan.cost_per_hour + 1e-9
    assert plan.baselines["greedy"].cost_per_hour == float("inf")
    assert "ran out of room" in plan.baselines["greedy"].note


def test_a_replan_onto_a_pool_cut_below_its_nodes_moves_the_gpus_past_its_end():
    """The T4 pool cut from 27 nodes to 26 under a running plan: the re-plan kept a GPU on the
    27th node, and ``packer check`` rejected it ('27 nodes over max_nodes 26'). (Since lone
    replicas' batches are capped where that serves more, the plan holds 126 T4s: 32 nodes cut
    to 31.)"""
    doc = family_fleet(300021, max_models=60)
    first = plan_fleet(parse_fleet(doc), PlanSettings())
    assert first.gpus == {"p0-t4": 126, "p1-l40s": 21}
    cut = parse_fleet(tight_docs(doc, dict(first.gpus))["short"])
    assert cut.pool("p0-t4").max_nodes == 31
    again = plan_fleet(cut, PlanSettings(), current=first)
    assert check_plan(again) == []
    assert all(int(lay.node.rsplit("-n", 1)[-1]) < cut.pool(lay.pool).max_nodes for lay in again.layouts)
    assert again.moves


def test_pools_too_small_for_any_packing_are_refused_as_proven(multilingual):
    """One GPU a pool cannot hold the multilingual fleet's traffic: the pattern LP's bound on
    every packing is above what the pools cost, and the error says so."""
    small = replace(multilingual, pools=tuple(replace(p, max_nodes=1, gpus_per_node=1) for p in multilingual.pools))
    with pytest.raises(UserError, match="cannot fit") as e:
        plan_fleet(small, PlanSettings(time_limit_s=1))
    assert "every packing needs more than the pools' 2 GPUs" in str(e.value) and "\n" not in str(e.value)


def test_cannot_fit_is_said_only_where_shown(multilingual, monkeypatch):
    """Where the bound is below what the pools cost and the pattern LP at the pools' sizes does
    not rule them out, the error says that no packing was found, not that none exists."""
    import packer.planner.fits as fits

    problem = Problem(multilingual, PlanSettings())
    total = pools_cost(problem)
    proven = no_fit_error(problem, total + 1.0, "no pool has room left for a replica of asr-en", 3.0, 0.5)
    assert "cannot fit" in str(proven)
    # Not the bound's figure: where nothing fits it is the LP's artificial cost, no price of GPUs.
    assert f"{total + 1.0:.2f}" not in str(proven) and f"{total:.2f}/h" in str(proven)
    monkeypatch.setattr(fits, "rules_out_pools", lambda problem, seconds: False)
    unproven = no_fit_error(problem, total - 1.0, "no pool has room left for a replica of asr-en", 3.0, 0.5)
    assert "cannot fit" not in str(unproven)
    assert "none was shown impossible" in str(unproven) and "--time-limit" in str(unproven)
    monkeypatch.setattr(fits, "rules_out_pools", lambda problem, seconds: True)
    assert "cannot fit" in str(no_fit_error(problem, total - 1.0, "x", 3.0, 0.5))


def test_the_cli_refuses_pools_too_small_in_one_line_with_exit_2(tmp_path, capsys):
    import yaml

    from packer_cli.main import main

    doc = yaml.safe_load((EXAMPLES / "multilingual-meetings.yaml").read_text())
    for p in doc["pools"]:
        p["max_nodes"], p["gpus_per_node"] = 1, 1
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert main(["plan", str(path), "--time-limit", "1"]) == 2
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: pools: the fleet cannot fit"), err
    assert "Traceback" not in err and out == ""


@settings(deadline=None, max_examples=6, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1), shape=st.sampled_from(sorted(set(SHAPES))))
def test_a_fleet_cut_to_its_own_plans_gpus_is_planned(seed, shape):
    """The property behind ``bench/tight.py``'s ``room`` line: a fleet's pools cut to what its plan
    used (whole nodes, two where it had two) still hold that plan, so the planner must plan it,
    soundly, within the cut pools; a refusal there is a false claim."""
    doc = family_fleet(seed, max_models=12, min_models=3, shape=shape)
    quick = PlanSettings(time_limit_s=1.0, prove_s=0, seed=seed % 7)
    first = plan_fleet(parse_fleet(doc), quick)
    cut = parse_fleet(tight_docs(doc, dict(first.gpus))["room"])
    plan = plan_fleet(cut, quick)
    assert check_plan(plan) == []
    assert all(n <= cut.pool(p).max_gpus for p, n in plan.gpus.items())


def test_plan_json_on_stdout_is_json_alone(tmp_path, capfd):
    """HiGHS's MIP prints a debugging line from C++ past its output flag; on this fleet (a
    multilingual member cut one node short of its plan's GPUs, headroom 0.3) it came ahead of
    ``packer plan --format json``'s JSON, and the output did not parse."""
    import json

    import yaml

    from packer_cli.main import main

    seed = 1504004731
    doc = family_fleet(seed, max_models=12, min_models=3, shape="multilingual")
    first = plan_fleet(parse_fleet(doc), PlanSettings(time_limit_s=1.0, prove_s=0, seed=seed % 7, headroom=0.3))
    path = tmp_path / "short.yaml"
    path.write_text(yaml.safe_dump(tight_docs(doc, dict(first.gpus))["short"]))
    capfd.readouterr()
    assert main(["plan", str(path), "--headroom", "0.3", "--time-limit", "1", "--seed", "3", "--format", "json"]) == 0
    out, _ = capfd.readouterr()
    assert json.loads(out)["version"] == 1, out[:200]
