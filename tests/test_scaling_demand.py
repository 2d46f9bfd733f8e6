"""The policy's demand and its answers to it, on the mechanisms the diurnal day broke (issue: the
policy not fit to run unattended): want never feeds on capacity, late requests get one bounded
move and no panic, shrinking leaves the live streams' swing and the trend, and a hemmed replica is
moved out rather than multiplied."""

from __future__ import annotations

import math

import pytest

from packer.scaling import AddReplica, ScalingSettings, ScalingState, Signals, SplitOut, Targets, apply, decide, observe
from packer.scaling.demand import share_capacity, stream_sd
from test_scaling_helpers import fleet, placement, plan_of, tiny_plan
from test_scaling_policy import EXACT, feed, sig


def test_panic_wants_the_demand_not_the_capacity():
    plan = tiny_plan()
    cap = share_capacity(plan, "asr-a")
    # requests wait 150 ms > half the 200 ms SLO: panic, but 100 rps arrive and nothing is queued
    s = {"asr-a": Signals("asr-a", arrival_rps=100.0, queue_ms=150.0)}
    d, _ = observe(plan, s, ScalingState(), 0.0, EXACT)
    assert d["asr-a"].panic and not d["asr-a"].may_shrink
    # 100 / 0.7 = 142.9, not the 1041.4 the replicas hold (it was max(calm, panic, capacity))
    assert d["asr-a"].want == pytest.approx(100.0 / 0.7)
    assert d["asr-a"].want < cap and d["asr-a"].deficit == 0.0
    assert d["asr-a"].want_down == pytest.approx(100.0 / 0.7 * 1.1)


def _crowded():
    f = fleet()
    return plan_of(f, [
        placement(f, "l4", "l4-n0", 0, [("asr-a", 0, 100.0), ("asr-b", 0, 100.0), ("punct", 0, 20.0)]),
        placement(f, "l4", "l4-n0", 1, [("asr-b", 1, 100.0), ("punct", 1, 20.0)]),
    ])


def test_late_moves_once_per_stabilisation_window_and_never_panics():
    plan = _crowded()
    late = sig(asr_a=100, asr_b=100, punct=20)
    late["punct"] = Signals("punct", arrival_rps=20, late_share=0.03)
    acts, state = decide(plan, late, None, 0.0, EXACT)
    moves = [a for a in acts if getattr(a, "replaces", None) is not None]
    assert len(moves) == 1
    plan = apply(plan, acts)
    d, _ = observe(plan, late, state, 15.0, EXACT)
    assert d["punct"].late is False and not d["punct"].panic  # its move is loading: not late again
    # still late a minute later (the signal lags; it used to move again every 60 s): no move
    for now in (60.0, 300.0, 585.0):
        acts, state = decide(plan, late, state, now, EXACT)
        assert not [a for a in acts if getattr(a, "replaces", None) is not None], now
    # a whole stabilisation window after the move, late requests count again, still no panic
    d, _ = observe(plan, late, state, 600.0, EXACT)
    assert d["punct"].late and not d["punct"].panic and not d["punct"].may_shrink


def test_shrinking_leaves_the_live_streams_swing():
    f = fleet(**{"asr-a": {"traffic": {"rps": 200, "peak_rps": 400, "streams": 50}}})
    plan = tiny_plan(f)
    s = ScalingSettings(targets=Targets(replan_every_s=0.0))  # z = 2, target 1
    d, _, _ = feed(plan, [{"asr_a": 200}] * 4, settings=s)
    # 50 streams at 200 rps: 4 rps a stream, 50 live; a Poisson number of them swings the rate
    # by sqrt(200 x 4) = 28.3 rps (counting requests over a minute: sqrt(200 / 60) = 1.8)
    assert stream_sd(f.model("asr-a"), 200.0) == pytest.approx(math.sqrt(800.0))
    swing = 2 * math.sqrt(200 / 60 + 800)
    assert d["asr-a"].want_down == pytest.approx((200 + swing) * 1.1)
    # the scale-up still sizes on the measurement's lower bound
    assert d["asr-a"].want == pytest.approx(200 - 2 * math.sqrt(200 / 60))
    # punct has no streams: Poisson only
    assert stream_sd(f.model("punct"), 20.0) == 0.0


def test_a_rising_trend_holds_the_scale_down():
    plan = tiny_plan()
    # 41 samples 15 s apart rising 100 -> 300 rps (0.33 rps/s): the highest want of the window
    # is 300 / 0.7, but in the next window demand is ~200 rps higher still
    loads = [{"asr_a": 100 + 5 * k} for k in range(41)]
    d, _, _ = feed(plan, loads)
    flat = max(100 + 5 * k for k in range(37, 41)) / 0.7 * 1.1
    assert d["asr-a"].want_down > flat + 200 / 0.7  # 600 s + the cold start ahead at 0.33 rps/s
    # falling: no trend term, the window's high
    d, _, _ = feed(plan, loads[::-1])
    assert d["asr-a"].want_down == pytest.approx(300 / 0.7 * 1.1, rel=0.02)


def test_a_hemmed_replica_moves_out_rather_than_being_multiplied():
    f = fleet()
    plan = plan_of(f, [
        # asr-b at 900 rps leaves asr-a room for only 64 rps here: round-robin makes that the
        # share of every asr-a replica
        placement(f, "l4", "l4-n0", 0, [("asr-a", 0, 40.0), ("asr-b", 0, 900.0)]),
        placement(f, "l4", "l4-n0", 1, [("asr-a", 1, 40.0)]),
        # room for 73 rps of asr-a beside each of these: free, but no use to a 64 rps share
        placement(f, "l4", "l4-n0", 2, [("asr-b", 1, 880.0)]),
        placement(f, "l4", "l4-n0", 3, [("asr-b", 2, 880.0)]),
    ])
    assert share_capacity(plan, "asr-a") == pytest.approx(128.1, abs=0.1)
    load = {"asr_a": 315, "asr_b": 600, "punct": 0}
    _, state, now = feed(plan, [load] * 4)
    acts, state = decide(plan, sig(**load), state, now + 15, EXACT)
    ups = [a for a in acts if isinstance(a, (AddReplica, SplitOut))]
    # 315 / 0.7 = 450 rps wanted. Greedy, two free 64 rps replicas beside asr-b, then one new
    # GPU per further 64 rps (the pool runs out first); moving the hemmed replica to one new
    # L4 of its own holds 2 x ~1041 rps for 0.80/h.
    assert len(ups) == 1 and isinstance(ups[0], SplitOut) and ups[0].new_gpu
    assert ups[0].replaces is not None and ups[0].replaces.id == "l4-n0-g0-whole"
    after = apply(plan, acts)
    assert after.cost_per_hour == pytest.approx(plan.cost_per_hour + 0.8)
    assert share_capacity(after, "asr-a") >= 450.0 - 1e-6



def test_a_batch_models_first_samples_count_as_the_few_arrivals_they_are():
    """A batch model's rate is its arrivals over what history there is, less 2 standard errors
    of the time really seen: at t = 15 s with one sample, the first interval is not known and the
    6 s panic window stands for it. summarizer-de (bench/spot.py multilingual, its slot holds
    0.013 rps) saw 2 arrivals in its first 15 s, 0.133 rps: 0.133 - 2 sqrt(0.133 / 6) < 0, it
    wants nothing (with a one-minute floor on the time seen: 0.133 - 2 sqrt(0.133 / 60) = 0.039,
    and it was given an L4 for the rest of the run). Ten minutes of 0.02 rps (40 samples) do count:
    0.02 - 2 sqrt(0.02 / 600) = 0.0085."""
    f = fleet(**{"punct": {"kind": "batch", "slo_ms": 600_000, "min_replicas": 1}})
    plan = plan_of(f, [placement(f, "l4", "l4-n0", 0, [("punct", 0, 0.013)])])
    s = ScalingSettings()  # 2 standard errors, target utilisation 1
    d, state = observe(plan, {"punct": Signals("punct", arrival_rps=2 / 15)}, ScalingState(), 15.0, s)
    assert d["punct"].want == 0.0 and d["punct"].deficit == 0.0
    state = ScalingState()
    for k in range(40):
        d, state = observe(plan, {"punct": Signals("punct", arrival_rps=0.02)}, state, 15.0 * (k + 1), s)
    assert d["punct"].want == pytest.approx(0.02 - 2 * math.sqrt(0.02 / 600))
