"""The batching the writer renders and the simulator serves: one definition, worked numbers."""

import math

import pytest

from packer.batching import batching
from packer.fleet import LatencyProfile, Model, Pool, Traffic
from packer.slot import SlotType, servable

POOL = Pool("a100", "a100-80gb", 8, 1, 4.1, ("mig", "time-slicing"))


def punct(streams=None, kind="streaming"):
    return Model("punct-en", kind, 1.0, Traffic(200, 200, streams), 100, (LatencyProfile("a100-80gb", 2.0, 0.05),), 64)


def test_worked_numbers():
    b = batching(punct(), SlotType(POOL), batch=9, duty_cycle_ms=20.0)
    assert b.run_ms == pytest.approx(2.45)
    assert b.budget_ms == pytest.approx(97.55)
    assert b.queue_delay_ms == 20.0  # the cycle, for every member
    assert b.preferred == ()  # no preferred size: a batch is cut by the delay, not early
    assert b.queue_bound == servable(97.55, 2.0, 0.05, 64)
    assert b.candidates is None


def test_batch_models_batch_the_same_way_and_streams_are_shared_by_rate():
    b = batching(punct(kind="batch"), SlotType(POOL), batch=9, duty_cycle_ms=20.0)
    assert b.queue_delay_ms == 20.0 and b.preferred == ()
    s = batching(punct(streams=100), SlotType(POOL), batch=9, duty_cycle_ms=20.0, rate_rps=50.0)
    # 100 streams at the mean rate: each sends rps / 100 chunks a second, so at 50 rps this slot
    # carries 50 / (rps / 100) of them on average, and slots past their count at one in a million.
    m = 50.0 / (punct(streams=100).traffic.rps / 100)
    assert s.candidates == math.ceil(m + 4.9 * math.sqrt(m) + 4)


def test_the_writer_and_the_simulator_read_it():
    from sims.server import batcher_config

    m = punct()
    b = batching(m, SlotType(POOL), batch=9, duty_cycle_ms=20.0)
    c = batcher_config(m, SlotType(POOL), 9, 20.0, queue_bound=True)
    assert c.delay_s == pytest.approx(b.queue_delay_ms / 1000)
    assert c.timeout_s == pytest.approx(b.budget_ms / 1000)
    assert c.max_queue == b.queue_bound
    assert c.preferred == m.max_batch  # ready at max_batch or when the delay expires
