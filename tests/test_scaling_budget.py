"""The policy's price-aware scale-up: room paid for, then the planner, then buying; never past
the static plan's bill while its GPUs would do; back to it after a transient."""

from __future__ import annotations

from dataclasses import replace

import pytest

from packer.scaling import Replan, ScalingSettings, Signals, Targets, Windows, apply, decide, observe
from packer.scaling.demand import ScalingState, share_capacity
from packer.scaling.replan import accept_replan, back_to_plan, plan_cost
from packer.scaling.room import bill
from test_scaling_helpers import fleet, placement, plan_of, three_slot_plan_for_cli, tiny_plan

S = ScalingSettings(targets=Targets(noise_z=0.0, replan_every_s=0.0), windows=Windows())
"""No Poisson allowance: the wants below are the loads."""


def sig(**rates: float) -> dict[str, Signals]:
    return {k.replace("_", "-"): Signals(k.replace("_", "-"), arrival_rps=v) for k, v in rates.items()}


def feed(plan, load, n, state=None, start=0.0):
    now = start
    for i in range(n):
        now = start + 15.0 * i
        _, state = observe(plan, sig(**load), state or ScalingState(), now, S)
    return state, now


def test_the_first_plan_seen_is_the_baseline():
    plan = three_slot_plan_for_cli()  # 3 L4: 2.40/h
    _, state = observe(plan, sig(asr_a=100), ScalingState(), 0.0, S)
    assert state.baseline_cost == pytest.approx(2.40)
    assert state.baseline_holds["asr-a"] == pytest.approx(share_capacity(plan, "asr-a"))
    _, state = observe(tiny_plan(), sig(asr_a=100), state, 15.0, S)  # later plans do not move it
    assert state.baseline_cost == pytest.approx(2.40)


def test_no_purchase_past_the_static_bill_while_its_gpus_would_do():
    # Deployed with three L4 (2.40/h), consolidated to two (1.60/h); asr-a comes back to 1200 rps,
    # which the three-slot plan holds (2 x 669.5 = 1339.1) but one replica beside punct does not
    # (1041.4). The first short decision asks the planner, with the static bill as the budget
    # (not the 1.60 + 0.80 an L4 would make it: the static plan's GPUs would do).
    static, small = three_slot_plan_for_cli(), tiny_plan()
    _, state = observe(static, sig(asr_a=100), ScalingState(), -15.0, S)
    state, now = feed(small, {"asr_a": 1200, "asr_b": 100, "punct": 10}, 5, state)
    acts, state = decide(small, sig(asr_a=1200, asr_b=100, punct=10), state, now + 15, S)
    rp = [a for a in acts if isinstance(a, Replan)]
    assert len(rp) == 1 and rp[0].budget_per_hour == pytest.approx(2.40)
    assert "static plan, 2.40/h, holds this demand" in rp[0].reason
    assert not [a for a in acts if a.cost_per_hour > 0 and not isinstance(a, Replan)]
    # The caller did not take it: the next decision buys, within the static bill (one L4).
    acts, state = decide(small, sig(asr_a=1200, asr_b=100, punct=10), state, now + 30, S)
    after = apply(small, [a for a in acts if not isinstance(a, Replan)])
    assert bill(after) == pytest.approx(2.40) and share_capacity(after, "asr-a") >= 1200 - 1e-6
    # With the static bill already reached, nothing more is bought for a demand it holds.
    acts, _ = decide(after, sig(asr_a=1330, asr_b=100, punct=10), replace(state, baseline_cost=bill(after)),
                     now + 45, S)
    assert all(a.cost_per_hour <= 0 or isinstance(a, Replan) for a in acts)


def test_accept_replan_within_the_budget_of_the_purchases_it_replaces():
    small, big = tiny_plan(), three_slot_plan_for_cli()
    high = {"asr-a": 1200.0, "asr-b": 100.0, "punct": 10.0}  # small holds 1041.4 of asr-a
    ok, why = accept_replan(small, big, high)  # without a budget: dearer, so the scale-up's
    assert not ok
    ok, why = accept_replan(small, big, high, budget=2.40)
    assert ok and "within the 2.40/h buying would cost" in why
    ok, why = accept_replan(small, big, high, budget=2.39)
    assert not ok
    ok, _ = accept_replan(big, big, {"asr-a": 100.0}, budget=9.0)  # holds already: nothing to do
    assert not ok


def test_back_to_the_static_plan_after_a_transient():
    # Deployed at 1.60/h; a spike bought a third L4 (2.40/h); demand is back to what the
    # static plan holds for the whole scale-down window: a re-plan is asked, once per window.
    static, big = tiny_plan(), three_slot_plan_for_cli()
    _, state = observe(static, sig(asr_a=100), ScalingState(), -615.0, S)
    state, now = feed(big, {"asr_a": 100, "asr_b": 100, "punct": 10}, 42, state, start=-600.0)
    demands, state = observe(big, sig(asr_a=100, asr_b=100, punct=10), state, now + 15, S)
    rp = back_to_plan(big, demands, state, now + 15, S)
    assert rp is not None and rp.cost_per_hour == pytest.approx(-0.80)
    assert "the bill is 2.40/h, the static plan's 1.60/h" in rp.reason
    assert back_to_plan(big, demands, replace(state, last_replan=now), now + 15, S) is None
    assert back_to_plan(static, demands, state, now + 15, S) is None  # at the static bill already
    # asr-a above what the static plan holds for it (1041.4): no return yet
    hot = {k: (replace(d, want_down=1100.0) if k == "asr-a" else d) for k, d in demands.items()}
    assert back_to_plan(big, hot, state, now + 15, S) is None
    ok, why = accept_replan(big, static, dict(rp.traffic), settings=S)
    assert ok and "saves 0.80/h" in why and plan_cost(static) < plan_cost(big)


def test_a_bought_gpu_must_add_half_of_what_it_holds():
    # asr-a has a replica squeezed beside asr-b and punct (room ~186 rps) and one on its own L4.
    # Round-robin caps a third replica at that tight share: a new L4 (room ~1900 rps alone)
    # would add under 200 of it, so it is not bought; the tight replica moves out instead.
    f = fleet(**{"punct": {"min_replicas": 1}})
    plan = plan_of(f, [placement(f, "l4", "l4-n0", 0, [("asr-a", 0, 150.0), ("asr-b", 0, 600.0)]),
                       placement(f, "l4", "l4-n0", 1, [("asr-a", 1, 150.0)])])
    from packer.scaling.up import _candidates
    state, now = feed(plan, {"asr_a": 1500, "asr_b": 600}, 5)
    demands, _ = observe(plan, sig(asr_a=1500, asr_b=600), state, now + 15, S)
    have = share_capacity(plan, "asr-a")
    cands = [c for c in _candidates(plan, f.model("asr-a"), have, demands, S) if c.action.cost_per_hour > 0]
    assert cands and all(getattr(c.action, "replaces", None) is not None for c in cands if c.action.kind == "split_out")
    loose = replace(S, targets=replace(S.targets, min_purchase_use=0.0))
    assert any(getattr(c.action, "replaces", None) is None
               for c in _candidates(plan, f.model("asr-a"), have, demands, loose) if c.action.cost_per_hour > 0)
