"""The reconciler's pure decisions (``k8s/cycle.py``): what a cycle records, with no cluster."""

from __future__ import annotations

from dataclasses import replace

from k8s.cycle import (FleetRead, Observed, PlanChoice, PlanFleet, ScalePlan, plan_source, policy_state, scaled_choice,
                       status_update)
from k8s import names as N
from k8s.scaling import Scaled
from packer.plan import fleet_to_dict
from k8s.settings import ReconcileSettings

S = ReconcileSettings()


def record(obs: Observed, errors: list[str] = (), now: float = 100.0):  # type: ignore[assignment,no-untyped-def]
    return status_update(obs, None, {"k": 1}, [], [], [], list(errors), [], "", now, S, None)


def test_a_quiet_cycle_writes_nothing_and_a_new_error_writes_once_with_an_event() -> None:
    first = record(Observed(None, [], [], None, {}, None))
    assert first.write and first.events == [] and first.summary["policy_saved_at"] == 100.0
    status = {"data": first.data(), "binaryData": first.binary}
    again = record(Observed(None, [], [], status, first.summary, None), now=200.0)
    assert not again.write and again.events == []
    bad = record(Observed(None, [], [], status, first.summary, None), errors=["boom"], now=300.0)
    assert bad.write and [e[3] for e in bad.events] == ["ReconcileError"]
    assert bad.summary["errors"] == ["boom"] and bad.summary["policy_saved_at"] == 100.0  # state unchanged


def test_a_foreign_status_name_is_a_conflict_and_nothing_is_written() -> None:
    up = record(Observed(None, [], [], {"metadata": {"name": S.status_configmap}}, {}, None, status_foreign=True))
    assert not up.write and [c.kind for c in up.conflicts] == ["ConfigMap"]
    assert [e[3] for e in up.events] == ["NameConflict"]


def test_where_the_plan_comes_from(base_plan) -> None:  # type: ignore[no-untyped-def]
    """No fleet or a refused one keeps the stored plan with the error; a fleet whose hash is not the
    stored one is planned; otherwise the scaling policy may move the plan, if one is plugged in."""
    h1 = N.digest(fleet_to_dict(base_plan.fleet), 16)  # the reconciler's hash of a fleet
    fleet = FleetRead(base_plan.fleet, h1)
    stored = Observed("text", [], [], None, {"fleet_hash": h1}, base_plan)
    none = plan_source(Observed(None, [], [], None, {}, base_plan), None, {"k": 1}, scaling=True, s=S)
    assert isinstance(none, PlanChoice) and none.plan is base_plan and none.errors[0].startswith("no fleet")
    bad = plan_source(stored, FleetRead(None, error="fleet ConfigMap: bad"), {}, scaling=True, s=S)
    assert isinstance(bad, PlanChoice) and bad.plan is base_plan and bad.errors == ["fleet ConfigMap: bad"]
    edited = plan_source(stored, FleetRead(base_plan.fleet, "h2"), {"k": 1}, scaling=True, s=S)
    assert isinstance(edited, PlanFleet) and edited.why == "fleet changed" and edited.current is base_plan
    first = plan_source(Observed("text", [], [], None, {}, None), fleet, {}, scaling=True, s=S)
    assert isinstance(first, PlanFleet) and first.why == "no plan yet" and first.current is None
    assert plan_source(stored, fleet, {"k": 1}, scaling=False, s=S) == PlanChoice(base_plan, "", {"k": 1})
    assert plan_source(stored, fleet, {"k": 1}, scaling=True, s=S) == ScalePlan(base_plan, {"k": 1})
    # The summary vouches for the stored plan, but the plan's own fleet is another (a plan.json.gz
    # edited or copied from another cluster): planned afresh, and never handed on as the current.
    other = replace(base_plan, fleet=replace(base_plan.fleet, name="another"))
    copied = plan_source(Observed("text", [], [], None, {"fleet_hash": h1}, other), fleet, {}, scaling=True, s=S)
    assert isinstance(copied, PlanFleet) and copied.why == "the stored plan is of another fleet"
    assert copied.current is None


def test_the_memory_copy_of_the_policy_state_wins_over_the_checkpoint() -> None:
    obs = Observed(None, [], [], None, {"policy_state": {"from": "status"}}, None)
    assert policy_state({"from": "memory"}, obs) == {"from": "memory"}
    assert policy_state(None, obs) == {"from": "status"}


def test_a_scaling_step_moves_the_plan_only_to_a_new_plan_id(base_plan) -> None:  # type: ignore[no-untyped-def]
    other = replace(base_plan, placements=base_plan.placements[:1])
    assert other.id != base_plan.id
    assert scaled_choice(base_plan, {"k": 1}, None) == PlanChoice(base_plan, "", {"k": 1})
    assert scaled_choice(base_plan, {}, Scaled(None, {"k": 2}, [])) == PlanChoice(base_plan, "", {"k": 2})
    assert scaled_choice(base_plan, {}, Scaled(base_plan, {"k": 2}, ["x"])) == PlanChoice(base_plan, "", {"k": 2})
    moved = scaled_choice(base_plan, {}, Scaled(other, {"k": 3}, ["asr hot", "split"]))
    assert moved == PlanChoice(other, "scaling: asr hot; split", {"k": 3})
