"""Slot maths with worked numbers (the same as docs/slot-maths.md)."""

import math

import pytest

from packer.fleet import Fleet, LatencyProfile, Model, Pool, Traffic
from packer.slot import SlotType, duty_window, evaluate, item, latency_scale, single_capacity

POOL = Pool("a100", "a100-80gb", 8, 1, 4.1, ("mig", "time-slicing"))
WHOLE = SlotType(POOL)


def model(name="asr", base=4.0, per=0.132, slo=200, mb=128, mem=2.5, kind="streaming", gpu="a100-80gb"):
    return Model(name, kind, mem, Traffic(1000, 1000), slo, (LatencyProfile(gpu, base, per),), mb)


def test_worked_example_single_model():
    # asr at 1000 rps on a whole A100: A = 4 + 0.132 = 4.132 ms, B = 0.132 * 1000 / 1000 = 0.132
    it = item(model(), 1000.0, WHOLE)
    assert it.A == pytest.approx(4.132)
    assert it.B == pytest.approx(0.132)
    # SLO allows (200 - 4.132) / 1.132 = 173.03 ms, but max_batch 128 caps the cycle at
    # (128 - 1) / 1000 rps = 127 ms; lo = 4.132 / (0.85 - 0.132) = 5.755 ms
    lo, hi = duty_window([it], 0.85)
    assert hi == pytest.approx(127.0)
    assert (200 - 4.132) / 1.132 == pytest.approx(173.028, abs=1e-3)
    assert lo == pytest.approx(5.7549, abs=1e-3)
    r = evaluate([it], 79.1, 0.85)
    m = r.members[0]
    assert m.batch_size == math.ceil(1000 * r.duty_cycle_ms / 1000 - 1e-9)
    assert m.p99_bound_ms == pytest.approx(r.duty_cycle_ms + 4 + 0.132 * m.batch_size)
    assert m.p99_bound_ms <= 200
    # equal headroom: compute load / u equals latency / SLO at the chosen cycle
    assert r.compute_share / 0.85 == pytest.approx(m.p99_bound_ms / 200, rel=0.02)


def test_worked_example_pair_is_bound_by_the_tighter_slo():
    a = item(model("asr"), 1000.0, WHOLE)
    p = item(model("punct", base=2.0, per=0.05, slo=100, mb=64), 200.0, WHOLE)
    lo, hi = duty_window([a, p], 0.85)
    # punct: (100 - 2.05) / (1 + 0.05 * 0.2) = 96.98 ms is the smaller hi
    assert hi == pytest.approx(97.98 / 1.01 - 0.05 / 1.01, abs=0.05)
    # lo = (4.132 + 2.05) / (0.85 - 0.132 - 0.01) = 8.731
    assert lo == pytest.approx(6.182 / 0.708, abs=1e-3)
    r = evaluate([a, p], 79.1, 0.85)
    assert all(m.p99_bound_ms <= m.slo_ms for m in r.members)


def test_a_long_batch_model_cannot_share_with_a_latency_bound_one():
    asr = item(model("asr"), 1000.0, WHOLE)
    summ = item(model("summ", base=4000, per=900, slo=600000, mb=16, kind="batch"), 0.1, WHOLE)
    assert duty_window([summ], 0.85) is not None
    assert duty_window([asr, summ], 0.85) is None


def test_mig_slice_scales_latency_by_seven_over_g():
    base, per = latency_scale(model(), SlotType(POOL, "2g.20gb"))
    assert base == pytest.approx(4.0 * 7 / 2) and per == pytest.approx(0.132 * 7 / 2)


def test_measured_profile_for_a_slice_wins_and_speed_scales_other_gpus():
    m = Model("x", "batch", 1, Traffic(1, 1), 1000, (LatencyProfile("a100-80gb", 10, 1),
                                                      LatencyProfile("a100-80gb/1g.10gb", 50, 5)), 8)
    assert latency_scale(m, SlotType(POOL, "1g.10gb")) == (50, 5)
    l4 = Pool("l4", "l4-24gb", 4, 1, 0.8, ("time-slicing",))
    assert latency_scale(m, SlotType(l4)) == pytest.approx((10 / 0.4, 1 / 0.4))


def test_single_capacity_is_the_largest_feasible_rate():
    m = model()
    cap = single_capacity(m, WHOLE, 0.85)
    assert duty_window([item(m, cap * 0.999, WHOLE)], 0.85) is not None
    assert duty_window([item(m, cap * 1.01, WHOLE)], 0.85) is None
