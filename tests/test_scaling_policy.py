"""Worked-number tests of the scaling policy, in the style of Ray Serve's policy tests: build a
context (plan, signals, state, now), call the pure function, check the decision and the state."""

from __future__ import annotations

import math
import random
from dataclasses import replace

import pytest

from packer.scaling import (AddReplica, Consolidate, Replan, ScalingSettings, ScalingState, Signals, SplitOut,
                            Targets, Windows, apply, decide, observe)
from packer.scaling.policy import Demand, _Candidate, _pick, share_capacity
from packer.scaling.room import SlotRef
from packer.scaling.signals import planned_wait_ms, run_s, sojourn_s
from test_scaling_helpers import fleet, placement, plan_of, three_slot_plan_for_cli, tiny_plan

EXACT = ScalingSettings(targets=Targets(noise_z=0.0, target_utilisation=0.7, replan_every_s=0.0),
                        windows=Windows(panic_threshold=1.5))
"""Knative's 70% target and 2x-ish panic, and no Poisson allowance, so the worked numbers below are
plain arithmetic; no right-sizing re-plans, so each local move is seen on its own
(``tests/test_scaling_replan.py`` covers those)."""


def sig(**rates: float) -> dict[str, Signals]:
    return {k.replace("_", "-"): Signals(k.replace("_", "-"), arrival_rps=v) for k, v in rates.items()}


def feed(plan, loads, *, start=0.0, step=15.0, state=None, settings=EXACT):
    """observe() once per load dict, ``step`` seconds apart; returns (demands, state, now)."""
    now = start
    demands = None
    for i, l in enumerate(loads):
        now = start + i * step
        demands, state = observe(plan, sig(**l), state or ScalingState(), now, settings)
    return demands, state, now


three_slot_plan = three_slot_plan_for_cli


# --------------------------------------------------------------------------------------------
# Windows and hysteresis


def test_stable_and_panic_windows_worked_numbers():
    plan = tiny_plan()
    cap = share_capacity(plan, "asr-a")
    # asr-a's room beside punct on its L4: 99.9 % batches and a round's wait (was 1897.4)
    assert cap == pytest.approx(1041.43, abs=0.01)
    d, state, now = feed(plan, [{"asr_a": 800}, {"asr_a": 800}, {"asr_a": 800}, {"asr_a": 1150}])
    a = d["asr-a"]
    # stable mean 887.5; least-squares slope 7875 / 1125 = 7 rps/s over the 30 s lag of the window
    # plus the 17.5 s weight load: forecast 887.5 + 7 * 47.5 = 1220; want 1220 / 0.7 = 1742.86.
    assert a.slope == pytest.approx(7.0)
    assert a.load == pytest.approx(1220.0)
    assert a.want == pytest.approx(1742.86, abs=0.01)
    # panic: the last 6 s (one sample) at 1150 wants 1642.9 >= 1.5 x 1041.4 = 1562.1 (800 wants
    # 1142.9, below it: the last sample alone panics)
    assert a.panic and not a.may_shrink
    assert state.models["asr-a"].panic_until == pytest.approx(now + 60.0)
    assert [y for _, y in state.models["asr-a"].samples] == [800, 800, 800, 1150]


def test_panic_holds_one_stable_window_then_clears():
    plan = tiny_plan()
    _, state, now = feed(plan, [{"asr_a": 1500}] * 3 + [{"asr_a": 2100}])
    assert now == 45.0
    d, state, _ = feed(plan, [{"asr_a": 300}] * 4, start=60.0, state=state)  # t = 60..105
    assert not d["asr-a"].panic  # 105 is not before 45 + 60
    d, state, _ = feed(plan, [{"asr_a": 300}], start=90.0, state=replace(state))
    assert state.models["asr-a"].panic_until is None


def test_samples_leave_the_stable_window():
    plan = tiny_plan()
    _, state, now = feed(plan, [{"asr_a": 100}] * 10)  # t = 0..135
    ts = [t for t, _ in state.models["asr-a"].samples]
    assert ts == [90.0, 105.0, 120.0, 135.0]  # the last 60 s


def test_no_scale_down_before_a_whole_stabilisation_window():
    plan = three_slot_plan()
    d, state, now = feed(plan, [{"asr_a": 50, "asr_b": 50, "punct": 5}] * 40)  # 0..585 s
    assert not d["asr-a"].may_shrink
    acts, _ = decide(plan, sig(asr_a=50, asr_b=50, punct=5), state, now + 15, EXACT)  # 600 s seen
    assert any(isinstance(a, Consolidate) for a in acts)


def test_right_sizing_owns_scale_down():
    # the same quiet 600 s as above with right-sizing re-plans on: no consolidation; the re-plan
    # asks for the steady load (50 / 0.7 = 71.4 rps of asr-a) and its migration is priced instead
    plan = three_slot_plan()
    rs = replace(EXACT, targets=replace(EXACT.targets, replan_every_s=600.0))
    d, state, now = feed(plan, [{"asr_a": 50, "asr_b": 50, "punct": 5}] * 40, settings=rs)
    acts, state = decide(plan, sig(asr_a=50, asr_b=50, punct=5), state, now + 15, rs)
    assert not [a for a in acts if isinstance(a, Consolidate)]
    rp = [a for a in acts if isinstance(a, Replan)]
    assert len(rp) == 1 and dict(rp[0].traffic)["asr-a"] == pytest.approx(50 / 0.7, abs=1e-3)


def test_scale_down_sizes_for_the_highest_want_of_the_window():
    plan = tiny_plan()
    loads = [{"asr_a": 700}] * 4 + [{"asr_a": 140}] * 36
    d, state, _ = feed(plan, loads)
    # the 700 rps minute is still inside the 600 s window: want_down = 700 / 0.7 * 1.1 = 1100
    assert d["asr-a"].want == pytest.approx(200.0)
    assert d["asr-a"].want_down == pytest.approx(1100.0)


def test_noise_allowance_scales_up_on_the_lower_bound():
    plan = tiny_plan()
    s = ScalingSettings(targets=Targets(target_utilisation=0.7))  # z = 2
    d, _, _ = feed(plan, [{"asr_a": 0.14}] * 4, settings=s)
    # 0.14 rps over 60 s: +- 2 sqrt(0.14 / 60) = 0.0966; scale-up sees (0.14 - 0.0966) / 0.7
    assert d["asr-a"].want == pytest.approx((0.14 - 2 * math.sqrt(0.14 / 60)) / 0.7)
    assert d["asr-a"].want_down == pytest.approx((0.14 + 2 * math.sqrt(0.14 / 60)) / 0.7 * 1.1)


# --------------------------------------------------------------------------------------------
# Scale up: which action, by cost and by risk during the cold start


def room_plan():
    """g0: asr-a + punct, g1: asr-b alone, g2: punct's second replica; g3 free on the node.

    (tiny_plan's g1, asr-b + punct, leaves asr-a only ~150 rps there under the truthful slot
    maths, so a second replica in it would hold less than the first alone, round-robin.)"""
    f = fleet()
    return plan_of(f, [
        placement(f, "l4", "l4-n0", 0, [("asr-a", 0, 200.0), ("punct", 0, 20.0)]),
        placement(f, "l4", "l4-n0", 1, [("asr-b", 0, 200.0)]),
        placement(f, "l4", "l4-n0", 2, [("punct", 1, 20.0)]),
    ])


def test_scale_up_uses_paid_room_before_a_new_gpu():
    plan = room_plan()
    _, state, now = feed(plan, [{"asr_a": 800}] * 4)
    acts, state = decide(plan, sig(asr_a=800), state, now + 15, EXACT)
    adds = [a for a in acts if isinstance(a, (AddReplica, SplitOut))]
    assert len(adds) == 1
    a = adds[0]
    # want 800 / 0.7 = 1142.9 > 1041.4: asr-b's slot has room for 669.5 beside it, so two
    # replicas hold 2 x 669.5 = 1339.1 and no GPU is bought (the free g3 would cost 0.80/h)
    assert isinstance(a, AddReplica) and a.slot.id == "l4-n0-g1-whole"
    assert a.cost_per_hour == 0.0 and a.ready_in_s == pytest.approx(17.5)
    assert "has room" in a.reason and "no new GPU" in a.reason
    after = apply(plan, acts)
    assert share_capacity(after, "asr-a") >= 1142.85
    assert after.cost_per_hour == pytest.approx(plan.cost_per_hour)
    assert state.models["asr-a"].last_up == now + 15


def _cands():
    slow = SplitOut(model="asr-a", slot=SlotRef("l4", "l4-n1", 0), rate_rps=500.0, cost_per_hour=0.8,
                    ready_in_s=377.5, new_gpu=True, reason="new node")
    fast = SplitOut(model="asr-a", slot=SlotRef("a100", "a100-n0", 1), rate_rps=500.0, cost_per_hour=4.1,
                    ready_in_s=17.5, new_gpu=True, reason="free A100 on a running node")
    return [_Candidate(slow, 2400.0, 500.0), _Candidate(fast, 2400.0, 500.0)]


def _demand(load: float, slope: float) -> Demand:
    return Demand("asr-a", 1897.4, load, load / 0.7, 0.0, slope, False, False)


def test_cheapest_when_the_cold_start_is_safe():
    # 1500 + 0.5 rps/s x 377.5 s = 1688.8 <= 1897.4 held now: the slow, cheap L4 is safe
    assert _pick(_cands(), _demand(1500, 0.5), 1897.4).action.cost_per_hour == 0.8


def test_fastest_when_load_outruns_the_cold_start():
    # 1500 + 2 x 377.5 = 2255 > 1897.4: the L4 lands too late; the A100 in 17.5 s does not
    assert _pick(_cands(), _demand(1500, 2.0), 1897.4).action.cost_per_hour == 4.1


def test_max_replicas_is_a_hard_bound():
    # Three A100 nodes (6 GPUs): at 4340.8 rps an A100 replica, more replicas would always help
    # asr-b's 28571 rps want; the bound, not the pool, stops it at 3. (With the one A100 node of
    # the helper fleet a third replica could only be an L4, which round-robin makes worse than
    # two A100s, so the bound never bit.)
    from dataclasses import replace as dreplace
    f0 = fleet()
    f = dreplace(f0, pools=tuple(dreplace(p, max_nodes=3) if p.name == "a100" else p for p in f0.pools))
    plan = tiny_plan(f)
    _, state, now = feed(plan, [{"asr_b": 20000}] * 4)
    acts, _ = decide(plan, sig(asr_b=20000), state, now + 15, EXACT)
    after = apply(plan, acts)
    assert len(after.placements_of("asr-b")) == 3  # max_replicas: 3
    assert all(p.pool == "a100" for p in after.placements_of("asr-b"))
    assert share_capacity(after, "asr-b") < 20000 / 0.7  # still short: only the bound stopped it


# --------------------------------------------------------------------------------------------
# Scale down: consolidation


def test_consolidation_releases_a_gpu_keeping_min_replicas():
    plan = three_slot_plan()
    _, state, now = feed(plan, [{"asr_a": 50, "asr_b": 50, "punct": 5}] * 41)
    acts, state = decide(plan, sig(asr_a=50, asr_b=50, punct=5), state, now + 15, EXACT)
    cons = [a for a in acts if isinstance(a, Consolidate)]
    assert len(cons) == 1
    c = cons[0]
    # the emptiest slot goes first: asr-a's other replica holds its want_down of
    # 50 / 0.7 * 1.1 = 78.6 rps, so it is dropped; punct (min 2) is moved, never dropped
    assert c.slot.id == "l4-n0-g0-whole" and c.drops == ("asr-a",)
    assert [(m, d.id) for m, d, _ in c.moves] == [("punct", "l4-n0-g2-whole")]
    assert c.moves[0][2] == pytest.approx(5 / 0.7 * 1.1 / 2)
    assert c.cost_per_hour == -0.8 and "releases its l4-24gb" in c.reason
    after = apply(plan, acts)
    assert after.cost_per_hour == pytest.approx(plan.cost_per_hour - 0.8)
    assert after.replicas == {"asr-a": 1, "asr-b": 2, "punct": 2}
    assert state.models["asr-a"].last_down == now + 15
    # one step at a time: the next decision (60 s later) finds nothing more it may empty
    more, _ = decide(after, sig(asr_a=50, asr_b=50, punct=5), state, now + 75, EXACT)
    assert not [a for a in more if isinstance(a, Consolidate)]


def test_no_flapping_on_stationary_noisy_traffic():
    """Two simulated hours of Poisson-noisy constant load: the policy may consolidate, but never
    scales a model up within the stabilisation window after scaling it down."""
    rng = random.Random(7)
    plan = three_slot_plan()
    s = ScalingSettings()
    means = {"asr-a": 300.0, "asr-b": 250.0, "punct": 30.0}
    state, downs, ups = None, {}, []
    for k in range(480):
        now = 15.0 * k
        signals = {m: Signals(m, arrival_rps=max(0.0, rng.gauss(l, math.sqrt(l / 15.0)))) for m, l in means.items()}
        acts, state = decide(plan, signals, state, now, s)
        for a in acts:
            if isinstance(a, Consolidate):
                for m in list(a.drops) + [m for m, _, _ in a.moves]:
                    downs[m] = now
            elif isinstance(a, (AddReplica, SplitOut)):
                ups.append((now, a.model))
        plan = apply(plan, acts)
    assert downs, "the test needs a scale-down to be meaningful"
    for t, m in ups:
        assert not (m in downs and 0 <= t - downs[m] <= s.windows.scale_down_s), (t, m, downs)


# --------------------------------------------------------------------------------------------
# SLO feedback and re-plan


def test_late_model_leaves_its_most_crowded_slot():
    f = fleet()
    plan = plan_of(f, [
        # 100 rps each (was 200): three members at 200, 200, 20 no longer fit one L4
        placement(f, "l4", "l4-n0", 0, [("asr-a", 0, 100.0), ("asr-b", 0, 100.0), ("punct", 0, 20.0)]),
        placement(f, "l4", "l4-n0", 1, [("asr-b", 1, 100.0), ("punct", 1, 20.0)]),
    ])
    signals = sig(asr_a=100, asr_b=100, punct=20)
    signals["punct"] = Signals("punct", arrival_rps=20, late_share=0.03)  # 3% over SLO
    acts, state = decide(plan, signals, None, 0.0, EXACT)
    moves = [a for a in acts if getattr(a, "replaces", None) is not None]
    assert len(moves) == 1 and moves[0].model == "punct"
    assert moves[0].replaces.id == "l4-n0-g0-whole"  # three members: the crowd
    assert isinstance(moves[0], SplitOut) and "misses its SLO" in moves[0].reason
    after = apply(plan, acts)
    assert all(m.name != "punct" for m in after.placements[0].models)
    assert state.models["punct"].crowd_limit == 2  # it was late among three
    # and a consolidation will not put it back into a group of three
    from packer.scaling.policy import crowd_ok
    d, _ = observe(after, sig(asr_a=100, asr_b=100, punct=20), state, 15.0, EXACT)
    assert not crowd_ok(["asr-a", "asr-b", "punct"], d) and crowd_ok(["asr-b", "punct"], d)


def test_replan_when_idle_capacity_cannot_be_consolidated():
    # No time-slicing: a streaming and a batch model may not share a slot, so neither slot can
    # be emptied into the other; at a trickle of load most paid capacity idles.
    doc_f = fleet(**{"asr-b": {"kind": "batch"}, "punct": {"min_replicas": 1}})
    from dataclasses import replace as dreplace
    f = dreplace(doc_f, pools=tuple(dreplace(p, sharing=()) for p in doc_f.pools))
    plan = plan_of(f, [
        placement(f, "l4", "l4-n0", 0, [("asr-a", 0, 200.0), ("punct", 0, 20.0)]),
        placement(f, "l4", "l4-n0", 1, [("asr-b", 0, 200.0)]),
    ])
    _, state, now = feed(plan, [{"asr_a": 5, "asr_b": 5, "punct": 1}] * 41)
    acts, state = decide(plan, sig(asr_a=5, asr_b=5, punct=1), state, now + 15, EXACT)
    rp = [a for a in acts if isinstance(a, Replan)]
    assert len(rp) == 1 and not [a for a in acts if isinstance(a, Consolidate)]
    assert rp[0].fragmentation > 0.45 and rp[0].cost_per_hour < 0
    assert dict(rp[0].traffic)["asr-a"] == pytest.approx(5 / 0.7 * 1.1, abs=1e-4)  # what the policy wants
    assert "idle" in rp[0].reason
    again, _ = decide(plan, sig(asr_a=5, asr_b=5, punct=1), state, now + 90, EXACT)
    assert not [a for a in again if isinstance(a, Replan)]  # one per replan_cooldown_s


def test_every_action_carries_a_reason_and_a_cost():
    seen = []
    for plan, load in ((room_plan(), {"asr_a": 800}), (tiny_plan(), {"asr_b": 20000})):
        _, state, now = feed(plan, [load] * 4)
        seen += decide(plan, sig(**load), state, now + 15, EXACT)[0]
    plan = three_slot_plan()
    _, state, now = feed(plan, [{"asr_a": 50, "asr_b": 50, "punct": 5}] * 41)
    seen += decide(plan, sig(asr_a=50, asr_b=50, punct=5), state, now + 15, EXACT)[0]
    kinds = {a.kind for a in seen}
    assert {"add_replica", "split_out", "resize", "consolidate"} <= kinds
    for a in seen:
        assert a.reason.strip() and a.summary().strip()
        assert isinstance(a.cost_per_hour, float) and math.isfinite(a.cost_per_hour)
        assert a.ready_in_s >= 0


def test_load_is_arrivals_until_overload_then_littles_law():
    f = fleet(**{"asr-b": {"kind": "batch"}})
    # asr-a: cycle 38.93 ms, 99.9 % batch 21 runs 22.70 ms: planned sojourn 38.93 / 2 + 22.70 =
    # 42.16 ms, holds 1041.4 rps, SLO 200 ms
    plan = tiny_plan(f)

    def load(model: str, rps: float = 10.0, **kw: float) -> Demand:
        d, _ = observe(plan, {model: Signals(model, arrival_rps=rps, **kw)}, ScalingState(), 0.0, EXACT)
        return d[model]

    assert sojourn_s(plan, "asr-a") == pytest.approx(0.042164, abs=1e-6)
    assert load("asr-b", queued=100.0).load == pytest.approx(10.0)  # a batch queue fills by design
    # 40 queued / 42.16 ms = 948.7 rps < 1041.4: a slot batching later than planned, not load; the
    # scale-up sizes from the 10 rps of arrivals, as the re-plans do
    assert load("asr-a", queued=40.0).load == pytest.approx(10.0)
    # 100 queued / 42.16 ms = 2371.7 rps > 1041.4, but 10 rps arrive (< 85 % of 1041.4 = 885.2):
    # still a batching artefact; at 950 rps of arrivals the queue is growing past capacity:
    # Little's law counts
    assert load("asr-a", queued=100.0).load == pytest.approx(10.0)
    d = load("asr-a", 950.0, queued=100.0)
    assert d.load == pytest.approx(100.0 / 0.042164, rel=1e-4) and d.panic
    # requests wait 120 ms > half the SLO: overloaded whatever the rate says; the measured wait
    # + run (142.70 ms) is the sojourn: 50 / 0.14270 = 350.4 rps
    d = load("asr-a", queued=50.0, queue_ms=120.0)
    assert d.load == pytest.approx(50.0 / 0.142700, rel=1e-4) and d.panic



def test_a_member_waiting_its_turn_within_its_plan_is_no_overload():
    """punct beside asr-a at 1000 rps: a 53.4 ms cycle and a 97.4 ms bound of punct's 100 ms SLO.
    Its requests wait for asr-a's batch and the cycle before their own, so a mean wait past half
    the SLO is the plan working. Read as an overload (half the SLO alone), punct-fr kept the
    diurnal day's fleet in a panic from the first minute to the last, and no calm re-plan ran."""
    f = fleet()
    plan = plan_of(f, [placement(f, "l4", "l4-n0", 0, [("asr-a", 0, 1000.0), ("punct", 0, 20.0)])])
    p = plan.placements[0]
    punct = next(m for m in p.models if m.name == "punct")
    wait = planned_wait_ms(plan, "punct")
    assert 50.0 < wait < punct.p99_bound_ms < 100.0  # the plan lets punct wait past half its SLO

    def panics(queue_ms: float) -> bool:
        d, _ = observe(plan, {"punct": Signals("punct", arrival_rps=20.0, queue_ms=queue_ms)}, ScalingState(),
                       0.0, EXACT)
        return d["punct"].panic

    assert not panics(0.5 * 100.0 + 5.0) and not panics(wait - 1.0)
    assert panics(wait + 1.0)  # past what the plan allows: a queue it does not hold

def test_replan_when_round_robin_wastes_uneven_replicas():
    f = fleet()
    plan = plan_of(f, [
        placement(f, "l4", "l4-n0", 0, [("asr-a", 0, 100.0)]),
        placement(f, "l4", "l4-n0", 1, [("asr-a", 1, 100.0)]),
        # asr-b at 150 rps (was 1200): the old figure no longer fits beside asr-a and punct
        placement(f, "l4", "l4-n0", 2, [("asr-a", 2, 100.0), ("asr-b", 0, 150.0), ("punct", 0, 20.0)]),
        placement(f, "l4", "l4-n0", 3, [("punct", 1, 20.0)]),
    ])
    from packer.scaling.down import round_robin_waste
    waste, model = round_robin_waste(plan)
    assert model == "asr-a" and waste > 0.5  # two free L4s held back by the crowded third replica
    acts, state = decide(plan, sig(asr_a=250, asr_b=125, punct=20), None, 0.0, EXACT)
    rp = [a for a in acts if isinstance(a, Replan)]
    assert len(rp) == 1 and "round-robin" in rp[0].reason and state.last_replan == 0.0


def test_replan_when_the_fleet_costs_more_than_the_plan_it_started_from():
    """Scale-ups buy the replica that serves soonest, a GPU at a time; the plan the policy started
    from holds every model's peak. Past it by more than ``ceiling_replan`` (after the re-plan
    cooldown) a fresh packing of the demand is asked for. On the multilingual example's diurnal
    day (seed 0) the fleet reached 37.40/h against the plan's 12.10/h without it."""
    f = fleet()
    start = plan_of(f, [placement(f, "l4", "l4-n0", 0, [("asr-a", 0, 100.0), ("asr-b", 0, 150.0), ("punct", 0, 20.0)])])
    grown = plan_of(f, [placement(f, "l4", "l4-n0", 0, [("asr-a", 0, 100.0), ("asr-b", 0, 150.0), ("punct", 0, 20.0)]),
                        placement(f, "l4", "l4-n0", 1, [("asr-a", 1, 100.0)])])
    loads = sig(asr_a=100, asr_b=100, punct=10)
    _, state = decide(start, loads, None, 0.0, EXACT)
    from packer.scaling.replan import plan_cost
    assert state.ceiling == plan_cost(start) and plan_cost(grown) > plan_cost(start)
    acts, after = decide(grown, loads, state, 15.0, EXACT)
    rp = [a for a in acts if isinstance(a, Replan)]
    assert len(rp) == 1 and "more than the" in rp[0].reason and after.last_replan == 15.0
    assert after.ceiling == state.ceiling  # the first plan's, not the grown one's
    # Within the cooldown, or with the trigger off, none.
    acts, _ = decide(grown, loads, after, 30.0, EXACT)
    assert not [a for a in acts if isinstance(a, Replan)]
    off = replace(EXACT, targets=replace(EXACT.targets, ceiling_replan=math.inf))
    acts, _ = decide(grown, loads, state, 15.0, off)
    assert not [a for a in acts if isinstance(a, Replan)]
