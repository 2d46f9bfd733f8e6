"""Signals: the load Little's law implies, and snapshot parsing."""

from __future__ import annotations

import pytest

from packer.scaling import Signals, load_rps, snapshot_from_dict, sojourn_s
from packer.scaling.signals import run_s
from test_scaling_helpers import tiny_plan


def test_sojourn_is_half_a_duty_cycle_plus_a_batch():
    plan = tiny_plan()
    p = plan.placements[0]
    m = next(x for x in p.models if x.name == "asr-a")
    want = (p.duty_cycle_ms / 2 + (m.p99_bound_ms - p.duty_cycle_ms)) / 1000.0
    assert sojourn_s(plan, "asr-a") == pytest.approx(want)
    assert run_s(plan, "asr-a") == pytest.approx((m.p99_bound_ms - p.duty_cycle_ms) / 1000.0)


def test_concurrency_leads_arrivals_in_an_overload():
    # 40 requests in the system with a 50 ms sojourn mean 800 rps arriving, not the 700 counted
    assert load_rps(Signals("a", in_flight=30, queued=10, arrival_rps=700), 0.05) == pytest.approx(800.0)
    # a measured wait of 80 ms (+20 ms run) says the requests are slow, not many: 40 / 0.1 = 400
    assert load_rps(Signals("a", in_flight=30, queued=10, arrival_rps=700, queue_ms=80), 0.05, 0.02) == 700.0
    assert load_rps(Signals("a"), 0.0) == 0.0


def test_snapshot_parsing():
    t, s = snapshot_from_dict({"time": 12, "models": {"asr-a": {"arrival_rps": 5, "queued": 2}}})
    assert t == 12.0 and s["asr-a"] == Signals("asr-a", queued=2.0, arrival_rps=5.0)
    with pytest.raises(ValueError, match="unknown field"):
        snapshot_from_dict({"models": {"asr-a": {"rps": 5}}})
    with pytest.raises(ValueError, match="non-negative"):
        snapshot_from_dict({"models": {"asr-a": {"queued": -1}}})
    with pytest.raises(ValueError, match="snapshot is"):
        snapshot_from_dict({"time": 1})


def test_docstring_examples_run():
    import doctest

    import packer.scaling.signals as mod

    assert doctest.testmod(mod).failed == 0
