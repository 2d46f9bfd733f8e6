"""``apply``: actions turn a plan into the next plan, re-checked by the slot maths."""

from __future__ import annotations

import pytest

from packer.plan import from_dict, to_dict
from packer.scaling import AddGroup, AddReplica, Consolidate, RemoveReplica, Resize, SplitOut, Standby, apply
from packer.scaling.room import SlotRef, free_slots, new_gpu, room
from test_scaling_helpers import tiny_plan

G0, G1 = SlotRef("l4", "l4-n0", 0), SlotRef("l4", "l4-n0", 1)


def test_add_replica_into_room_costs_nothing_and_is_reevaluated():
    plan = tiny_plan()
    # G1 (asr-b 200 rps + punct 20) has room for 186.3 rps of asr-a under the truthful slot maths
    # (it was over 300 before 99.9 % batches and a round's wait): 150 fits, re-evaluated as a trio
    assert 150.0 < room(plan, plan.placements[1], plan.model("asr-a")) < 200.0
    after = apply(plan, [AddReplica(model="asr-a", slot=G1, rate_rps=150.0, cost_per_hour=0.0, reason="room")])
    p = next(p for p in after.placements if p.id == G1.id)
    assert {m.name for m in p.models} == {"asr-a", "asr-b", "punct"}
    assert all(m.p99_bound_ms <= m.slo_ms for m in p.models)  # the slot maths re-ran
    assert after.replicas["asr-a"] == 2 and after.cost_per_hour == plan.cost_per_hour
    assert [(mv.model, mv.replica, mv.src, mv.dst) for mv in after.moves] == [("asr-a", 1, None, G1.id)]
    assert from_dict(to_dict(after)).placements == after.placements  # still a valid plan file


def test_an_action_that_breaks_a_slot_is_refused():
    plan = tiny_plan()
    too_much = room(plan, plan.placements[1], plan.model("asr-a")) * 1.05
    with pytest.raises(ValueError, match="cannot all meet their SLOs"):
        apply(plan, [AddReplica(model="asr-a", slot=G1, rate_rps=too_much, cost_per_hour=0.0, reason="x")])
    with pytest.raises(ValueError, match="already has a replica"):
        apply(plan, [AddReplica(model="punct", slot=G1, rate_rps=1.0, cost_per_hour=0.0, reason="x")])


def test_split_out_to_a_new_gpu_adds_its_price_and_can_move_the_replica():
    plan = tiny_plan()
    ng = new_gpu(plan, "l4")
    assert ng is not None and ng.slot.id == "l4-n0-g2-whole" and not ng.fresh_node
    a = SplitOut(model="asr-a", slot=ng.slot, rate_rps=900.0, cost_per_hour=0.8, new_gpu=True, replaces=G0,
                 reason="hot")
    after = apply(plan, [a])
    assert after.cost_per_hour == pytest.approx(plan.cost_per_hour + 0.8)
    assert after.replicas["asr-a"] == 1  # moved, not added
    assert [m.name for m in after.placements_of("asr-a")[0].models] == ["asr-a"]


def test_removing_the_last_member_releases_the_gpu():
    plan = tiny_plan()
    after = apply(plan, [RemoveReplica(model="asr-a", slot=G0, cost_per_hour=0.0, reason="x"),
                         RemoveReplica(model="punct", slot=G0, cost_per_hour=-0.8, reason="x")])
    assert after.cost_per_hour == pytest.approx(plan.cost_per_hour - 0.8) and after.gpus == {"l4": 1}


def test_consolidate_moves_then_releases():
    plan = tiny_plan()
    c = Consolidate(slot=G0, drops=("punct",), moves=(("asr-a", G1, 150.0),), resizes=(("asr-b", G1, 150.0),),
                    cost_per_hour=-0.8, reason="fits")
    after = apply(plan, [c])
    assert after.gpus == {"l4": 1}
    p = after.placements[0]
    assert {m.name: m.rate_rps for m in p.models} == {"asr-a": 150.0, "asr-b": 150.0, "punct": 20.0}
    with pytest.raises(ValueError, match="without a place"):
        apply(plan, [Consolidate(slot=G0, drops=("punct",), cost_per_hour=-0.8, reason="x")])


def test_standby_and_group_copy():
    plan = tiny_plan()
    spare = SlotRef("l4", "l4-n0", 3)
    after = apply(plan, [Standby(slot=spare, cost_per_hour=0.8, reason="warm")])
    assert free_slots(after) == [spare] and after.cost_per_hour == pytest.approx(plan.cost_per_hour + 0.8)
    copy = AddGroup(source=G0, slot=spare, rates=(("asr-a", 200.0), ("punct", 20.0)), cost_per_hour=0.0, reason="x")
    after = apply(after, [copy])
    assert after.replicas == {"asr-a": 2, "asr-b": 1, "punct": 3} and free_slots(after) == []


def test_resize_changes_only_the_sizing():
    plan = tiny_plan()
    after = apply(plan, [Resize(model="asr-a", slot=G0, rate_rps=50.0, cost_per_hour=0.0, reason="x")])
    m = after.placements[0].models[0]
    assert (m.name, m.rate_rps) == ("asr-a", 50.0) and after.cost_per_hour == plan.cost_per_hour


def test_reshare_keeps_the_sizing_when_a_slot_cannot_take_it():
    from packer.scaling.up import reshare

    plan = tiny_plan()
    same, acts = reshare(plan, "asr-a", 1e6, "too much")
    assert same is plan and acts == []
    lower, acts = reshare(plan, "asr-a", 100.0, "less")
    assert [a.rate_rps for a in acts] == [100.0] and lower.placements[0].models[0].rate_rps == 100.0


def test_backlog_while_a_scale_up_is_on_its_way():
    from packer.scaling.up import backlog

    # 0.40 rps held and asked, rising 0.0001 rps/s, a new node 400 s away: 0.0001 * 400^2 / 2 = 8
    assert backlog(0.40, 0.0001, 0.40, 400) == pytest.approx(8.0)
    # below capacity until t0 = 100 s, then 0.01 * (300)^2 / 2 = 450 (e0 = -1)
    assert backlog(9.0, 0.01, 10.0, 400) == pytest.approx(-1 * 300 + 0.01 * (400 ** 2 - 100 ** 2) / 2)
    assert backlog(5.0, 0.0, 10.0, 400) == 0.0
    assert backlog(12.0, 0.0, 10.0, 60) == pytest.approx(120.0)


def test_a_batch_model_waits_for_a_cheap_gpu_a_streaming_model_does_not():
    # Measured on the diurnal day: diarize-en (5-minute SLO) at capacity took a free A100 GPU at
    # 4.10/h for 5 hours rather than an L4 on a new node at 0.80/h, and the day cost more than static.
    from packer.scaling.actions import SplitOut
    from packer.scaling.demand import Demand
    from packer.scaling.room import SlotRef
    from packer.scaling.up import _Candidate, _pick

    def cand(price: float, lead: float) -> _Candidate:
        a = SplitOut(reason="", cost_per_hour=price, ready_in_s=lead, model="m",
                     slot=SlotRef("p", "n", 0, "whole", 0), rate_rps=0.2, new_gpu=True)
        return _Candidate(a, 0.8, 0.4)

    fast_dear, slow_cheap = cand(4.1, 16), cand(0.8, 376)
    d = Demand("m", capacity=0.4, load=0.4, want=0.47, want_down=0.4, slope=0.0001, panic=False, may_shrink=False)
    # queued during 376 s: 0.0001 * 376^2 / 2 = 7.1 requests, 18 s of work at 0.4 rps: within 150 s
    assert _pick([fast_dear, slow_cheap], d, have=0.4, slo_ms=300_000) is slow_cheap
    # the same numbers for a 200 ms streaming model: the fast one
    assert _pick([fast_dear, slow_cheap], d, have=0.4, slo_ms=200) is fast_dear


def test_a_scaled_plan_keeps_no_bound_from_the_plan_it_came_from():
    """The plan's bound was over plans of the fleet at its declared peak; a scaled plan serves the
    load seen, so that bound measures nothing of it (``packer scale -o`` wrote 12.10/h and a gap of
    6.2 % for a 12.90/h scaled plan). It has none, and says why, until a re-plan."""
    from packer.report import summary

    plan = tiny_plan()
    assert plan.lower_bound_cost_per_hour > 0
    after = apply(plan, [AddReplica(model="asr-a", slot=G1, rate_rps=150.0, cost_per_hour=0.0, reason="room")])
    assert after.status == "scaled" and after.lower_bound_cost_per_hour == 0.0
    assert after.bound_method.startswith("no bound") and plan.id in after.bound_method
    assert "lower bound: none (no bound: plan" in summary(after) and "gap" not in summary(after)


def test_a_want_below_the_load_seen_says_why():
    """A snapshot of 9,000 rps read "asr-en wants 8975.5 rps" with nothing to say where 24.5 went:
    the scale-up sizes on the load less its measurement noise."""
    from packer.scaling.demand import Demand
    from packer.scaling.up import _want_note

    d = Demand("asr-en", capacity=7311.1, load=9000.0, want=8975.5, want_down=8975.5, slope=0.0, panic=False,
               may_shrink=False)
    assert _want_note(d) == " (9000.0 seen, less its measurement noise)"
    assert _want_note(Demand("a", 1.0, 5.0, 5.0, 5.0, 0.0, False, False)) == ""
