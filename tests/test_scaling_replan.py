"""Right-sizing re-plans (``packer.scaling.replan``): when the policy asks the planner for a fresh
packing, for which rates, and when the planner's answer is taken. Worked numbers, Ray Serve style:
build a context, call the function, check the decision and the returned state."""

from __future__ import annotations

import pytest

from packer.scaling import Replan, ScalingSettings, ScalingState, Signals, Targets, Windows, decide, observe
from packer.scaling.demand import Demand
from packer.scaling.replan import accept_replan, fleet_at, moved, plan_cost
from test_scaling_helpers import three_slot_plan_for_cli, tiny_plan

S = ScalingSettings(targets=Targets(noise_z=0.0, target_utilisation=1.0, replan_every_s=600.0, replan_headroom=0.05),
                    windows=Windows(panic_threshold=1.5))
"""No Poisson allowance, target 1: the rates below are plain arithmetic."""


def sig(**rates: float) -> dict[str, Signals]:
    return {k.replace("_", "-"): Signals(k.replace("_", "-"), arrival_rps=v) for k, v in rates.items()}


def run(plan, load: dict[str, float], t0: float, t1: float, state=None, step: float = 15.0):
    """decide() every ``step`` seconds from t0 to t1 at a steady load; the re-plans asked for."""
    asked: list[tuple[float, Replan]] = []
    t = t0
    while t <= t1 + 1e-9:
        acts, state = decide(plan, sig(**load), state, t, S)
        asked += [(t, a) for a in acts if isinstance(a, Replan)]
        t += step
    return asked, state


def test_right_size_after_a_stabilisation_window_then_only_when_demand_moves():
    plan = tiny_plan()  # asr-a, asr-b each alone with a punct replica on an L4: 1041.4 rps of room
    asked, state = run(plan, {"asr_a": 50, "asr_b": 50, "punct": 5}, 0.0, 1200.0)
    # nothing before 600 s of history; at 600 s demand (50 rps) is far from the 1041.4 held: one
    # re-plan for exactly the steady load, at the policy's 5% headroom; at 1200 s nothing moved
    assert [t for t, _ in asked] == [600.0]
    rp = asked[0][1]
    assert dict(rp.traffic) == {"asr-a": 50.0, "asr-b": 50.0, "punct": 5.0}
    assert rp.headroom == 0.05 and "asr-a 1041.4 -> 50.0" in rp.reason and rp.cost_per_hour == 0.0
    assert state.last_replan == 600.0 and state.replan_traffic["asr-a"] == 50.0
    # asr-a steps to 60 rps at 1215 s. The minute's mean of arrivals is 52.5 then (within 10% of
    # 50: wait), 55 at 1230 s; the 10-minute trend (two samples at 60 in forty: 5700 / 1199250 =
    # 0.00475 rps/s) over half a window + the next look + a node's cold start (1007.5 s) adds 4.8:
    # 59.8 > 55, asked for at 1230 s
    asked, state = run(plan, {"asr_a": 60, "asr_b": 50, "punct": 5}, 1215.0, 1800.0, state)
    assert [t for t, _ in asked] == [1230.0]
    assert dict(asked[0][1].traffic)["asr-a"] == pytest.approx(55 + 5700 / 1199250 * 1007.5, abs=1e-3)
    assert "asr-a 50.0 -> 59.8" in asked[0][1].reason
    # steady at 60 since: within 10% of the 59.8 packed for, no re-plan at the next looks
    asked, state = run(plan, {"asr_a": 60, "asr_b": 50, "punct": 5}, 1830.0, 3000.0, state)
    assert asked == []


def test_no_right_size_in_panic():
    plan = tiny_plan()
    _, state = run(plan, {"asr_a": 50, "asr_b": 50, "punct": 5}, 0.0, 585.0)
    # 3000 rps of asr-a: 3000 >= 1.5 x 1041.4, panic: scale up, never re-plan meanwhile
    acts, state = decide(plan, sig(asr_a=3000, asr_b=50, punct=5), state, 600.0, S)
    assert not [a for a in acts if isinstance(a, Replan)]
    assert acts and state.last_replan is None


def test_replan_want_covers_the_trend_until_a_new_node_would_serve():
    plan = tiny_plan()
    state = ScalingState()
    for i, r in enumerate([1000.0, 1003.0, 1006.0, 1009.0]):  # 0.2 rps/s
        d, state = observe(plan, sig(asr_a=r, asr_b=50, punct=5), state, 15.0 * i, S)
    a = d["asr-a"]
    # stable 1004.5; want (cold start: half a window + 17.5 s of weights) 1004.5 + 0.2 x 47.5 = 1014;
    # re-plan: the next look 600 s + node 240 s + image 120 s + weights 17.5 s + half a window 30 s
    assert a.want == pytest.approx(1014.0)
    assert a.replan_want == pytest.approx(1004.5 + 0.2 * (30 + 600 + 240 + 120 + 17.5))


def test_batch_load_is_over_the_slo_not_a_minute():
    # a batch model that may wait 300 s: its load is the mean of the last 300 s and its Poisson
    # allowance is over those 300 s; a streaming model's over the 60 s stable window
    from test_scaling_helpers import fleet, placement, plan_of

    f = fleet(**{"asr-b": {"kind": "batch", "slo_ms": 300000, "max_batch": 8}})
    plan = plan_of(f, [placement(f, "l4", "l4-n0", 0, [("asr-a", 0, 200.0), ("punct", 0, 20.0)]),
                       placement(f, "l4", "l4-n0", 1, [("asr-b", 0, 1.0), ("punct", 1, 20.0)])])
    s = ScalingSettings(targets=Targets(noise_z=2.0, target_utilisation=1.0))
    state = ScalingState()
    for i in range(40):  # 600 s: 0.2 rps, then 0.4 rps for the last 5 minutes
        d, state = observe(plan, sig(asr_a=0.2 if i < 20 else 0.4, asr_b=0.2 if i < 20 else 0.4, punct=5), state,
                           15.0 * i, s)
    a, b = d["asr-a"], d["asr-b"]
    # asr-b: the mean of the last 20 samples (300 s, flat) less 2 sigma of 300 s of Poisson noise;
    # asr-a: the last minute's mean less 2 sigma of a minute's noise
    assert b.load == pytest.approx(0.4) and b.want == pytest.approx(0.4 - 2 * (0.4 / 300) ** 0.5)
    assert a.load == pytest.approx(0.4) and a.want == pytest.approx(0.4 - 2 * (0.4 / 60) ** 0.5)
    # one 15 s interval at 40 rps (600 arrivals): no rate panic for a batch model, and its mean moves
    # by a twentieth of the jump (2.38 rps, 4.07 with the trend) where a minute's moves by a quarter
    d, state = observe(plan, sig(asr_a=40.0, asr_b=40.0, punct=5), state, 600.0, s)
    assert not d["asr-b"].panic and d["asr-b"].load < d["asr-a"].load / 2



def test_moved_needs_the_share_and_more_than_noise():
    s = ScalingSettings()  # 10%, z = 2
    def dem(name, cap, want):
        return Demand(name, cap, want, want, want, 0.0, False, True, replan_want=want)
    d = {"asr-en": dem("asr-en", 9000.0, 3400.0), "summ": dem("summ", 1.0, 0.12), "punct": dem("punct", 500.0, 104.0)}
    # asr-en: 400 > 10% of 3000 and > 2 sqrt(3400/60) = 15; summ: 0.05 < 2 sqrt(0.12/60) = 0.09;
    # punct: 4 < 10% of 100; a model never re-planned compares with what it holds (summ 1.0 -> 0.12)
    assert moved(d, {"asr-en": 3000.0, "summ": 0.07, "punct": 100.0}, s) == ["asr-en"]
    assert moved(d, {"asr-en": 3000.0, "punct": 100.0}, s) == ["asr-en", "summ"]


def test_accept_replan_cheaper_or_needed_only():
    small, big = tiny_plan(), three_slot_plan_for_cli()  # 2 L4 (1.60/h) and 3 L4 (2.40/h)
    low = {"asr-a": 100.0, "asr-b": 100.0, "punct": 10.0}
    ok, why = accept_replan(big, small, low)
    assert ok and "saves 0.80/h" in why
    ok, why = accept_replan(small, big, low)  # holds already: the moves buy nothing
    assert not ok and "not worth the moves" in why
    # asr-a at 1200 rps: one replica holds 1041.4 (87%), the three-slot packing 2 x 669.5 = 1339.1
    # (its second asr-a shares g2 with asr-b); a dearer packing is the scale-up's business, not a
    # migration's
    high = dict(low, **{"asr-a": 1200.0})
    ok, why = accept_replan(small, big, high)
    assert not ok and "2.40/h" in why
    ok, why = accept_replan(big, small, high)  # cheaper, but drops what is needed
    assert not ok and "does not hold asr-a" in why
    # same price (two L4s), asr-a in both slots: 2 x min(1041.4 beside punct, 669.5 beside asr-b)
    # = 1339.1 rps. (Under the truthful slot maths asr-a, asr-b and punct together leave asr-a too
    # little room on an L4, so punct keeps one replica here: min_replicas 1 for this comparison.)
    from test_scaling_helpers import fleet, placement, plan_of

    f = fleet(**{"punct": {"min_replicas": 1}})
    small = tiny_plan(f)
    spread = plan_of(f, [placement(f, "l4", "l4-n0", 0, [("asr-a", 0, 600.0), ("punct", 0, 20.0)]),
                         placement(f, "l4", "l4-n0", 1, [("asr-a", 1, 600.0), ("asr-b", 0, 200.0)])])
    assert plan_cost(spread) == pytest.approx(plan_cost(small))
    # 1200 wanted, 1041.4 held (87% < 90%): taken at the same price; 1100 wanted (95%): the scale-up's
    ok, why = accept_replan(small, spread, high)
    assert ok and "holds less than 90% of the expected demand of asr-a" in why
    ok, why = accept_replan(small, spread, dict(low, **{"asr-a": 1100.0}))
    assert not ok and "not worth the moves" in why


def test_accept_replan_prices_the_make_before_break_overlap():
    from test_scaling_helpers import placement, plan_of

    from packer.scaling.replan import built_gpus, migration_cost

    big = three_slot_plan_for_cli()  # 3 L4 at 0.80/h: asr-a+punct, asr-b+punct, asr-a+asr-b
    f = big.fleet
    # two L4s: the asr-a+punct group stays where it runs, asr-a+asr-b+punct is new: one GPU built
    spread = plan_of(f, [placement(f, "l4", "l4-n0", 0, [("asr-a", 0, 100.0), ("punct", 0, 20.0)]),
                         placement(f, "l4", "l4-n0", 1, [("asr-a", 1, 100.0), ("asr-b", 0, 100.0), ("punct", 1, 20.0)])])
    gb = max(f.model(n).memory_gb for n in ("asr-a", "asr-b", "punct"))
    assert built_gpus(big, spread) == {("l4", "l4-n0", 1): gb}
    # the new GPU: node 240 s + image 120 s + weights 15 s + gb / 1 GB/s, paid twice meanwhile
    lead = 240 + 120 + 15 + gb
    money, t = migration_cost(big, spread, ScalingSettings())
    assert t == pytest.approx(lead) and money == pytest.approx(0.80 * lead / 3600)
    low = {"asr-a": 150.0, "asr-b": 80.0, "punct": 10.0}
    # an hour's payback: 0.80 x (3600 - lead) / 3600 earned against 0.80 x lead / 3600: taken
    ok, why = accept_replan(big, spread, low)
    assert ok and "saves 0.80/h" in why and f"against {money:.2f} of overlap" in why
    # a saving expected to last 700 s earns 0.80 x (700 - lead) / 3600 < the overlap: kept
    short = ScalingSettings(targets=Targets(replan_payback_s=700.0))
    assert 0.80 * (700 - lead) < 0.80 * lead
    ok, why = accept_replan(big, spread, low, settings=short)
    assert not ok and "less than the" in why and "1 rebuilt GPU" in why
    # 2 x lead of payback is the break-even: just above it, taken
    ok, _ = accept_replan(big, spread, low, settings=ScalingSettings(targets=Targets(replan_payback_s=2 * lead + 1)))
    assert ok


def test_fleet_at_scales_each_asked_model_to_its_rate():
    fleet = tiny_plan().fleet
    first, *rest = fleet.models
    asked = fleet_at(fleet, {first.name: first.traffic.peak_rps / 4})
    got = asked.model(first.name).traffic
    assert got.peak_rps == pytest.approx(first.traffic.peak_rps / 4)
    assert got.rps == pytest.approx(first.traffic.rps / 4)
    for m in rest:  # models not asked for keep their rates
        assert asked.model(m.name).traffic == m.traffic
    assert fleet_at(fleet, {}) is fleet


def test_replan_want_takes_whole_windows_not_the_first_scrapes():
    """A batch model at about 0.0124 rps over a 300 s window: one arrival in the first 15 s scrape
    reads 0.067 rps. As a "window" of its own it was the highest mean, and every re-plan of the
    diurnal day packed the summarizers at 2-10x their peaks (summarizer-de at 5.4x)."""
    from test_scaling_helpers import fleet, placement, plan_of
    f = fleet(**{"asr-b": {"kind": "batch", "slo_ms": 300000, "traffic": {"rps": 0.01, "peak_rps": 0.0124}}})
    plan = plan_of(f, [placement(f, "l4", "l4-n0", 0, [("asr-a", 0, 200.0), ("punct", 0, 20.0)]),
                       placement(f, "l4", "l4-n0", 1, [("asr-b", 0, 0.0124), ("punct", 1, 20.0)])])
    state = ScalingState()
    rates = [1 / 15] + [0.0] * 19 + [1 / 15] * 2 + [0.0] * 18  # 3 arrivals in 600 s: 0.005 rps
    for i, r in enumerate(rates):
        d, state = observe(plan, sig(asr_a=100, asr_b=r, punct=5), state, 15.0 * i, S)
    # whole 300 s windows of the 600 s kept: the highest holds two arrivals (0.0067 rps)
    assert d["asr-b"].replan_want == pytest.approx(2 / 300)
    assert d["asr-b"].replan_want < 1 / 15 / 2  # not the first scrape's 0.067
