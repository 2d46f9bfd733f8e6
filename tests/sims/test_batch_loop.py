"""The compiled batch loop means what its Python source says.

``sims.server._batch_loop`` is compiled with numba; without numba the same function runs as plain
Python. Both must give the same numbers, bit for bit: numba's typing (integer widths, float
contraction) must not change the semantics the queueing tests check on the compiled version.
"""

from __future__ import annotations

import pytest

import sims.server as server
from packer.fleetfile import parse_fleet
from sims.engine import simulate
from packer.handplan import HandGroup, hand_plan
from sims.scenario import Scenario, Server


def _overloaded_trio():
    """Three members of one slot, overloaded at the test's scale: turns, full batches, timeouts, noise."""
    f = parse_fleet({
        "name": "trio", "pools": [{"name": "l4", "gpu": "l4-24gb", "gpus_per_node": 1, "max_nodes": 1,
                                   "cost_per_gpu_hour": 1.0, "sharing": ["time-slicing"]}],
        "models": [
            {"name": "s", "kind": "streaming", "memory_gb": 1.0, "traffic": {"rps": 900.0}, "slo_ms": 80,
             "latency_ms": {"gpu": "l4-24gb", "base": 4.0, "per_item": 0.3}, "max_batch": 32},
            {"name": "t", "kind": "streaming", "memory_gb": 1.0, "traffic": {"rps": 400.0}, "slo_ms": 60,
             "latency_ms": {"gpu": "l4-24gb", "base": 3.0, "per_item": 0.5}, "max_batch": 16},
            {"name": "b", "kind": "batch", "memory_gb": 1.0, "traffic": {"rps": 60.0}, "slo_ms": 2000,
             "latency_ms": {"gpu": "l4-24gb", "base": 20.0, "per_item": 2.0}, "max_batch": 16},
        ],
    })
    return hand_plan(f, [HandGroup("l4", "whole", ("s", "t", "b"), batch={"s": 8, "t": 4, "b": 6}, duty_ms=30.0)])


# 1.8x the trio's traffic: since the batchers cut at the 30 ms cycle with no preferred sizes
# (packer/batching.py), 1.3x refuses only 64 arrivals on a full queue (all of ``s``) in 8 s with seed 5;
# 1.8x refuses ~1600 (``s`` and ``t``) and times out ~9800, so both rejection paths of the loop run.
@pytest.mark.parametrize("scale,seconds", [(1.8, 8.0), (0.25, 150.0)], ids=["overloaded", "light"])
def test_compiled_loop_equals_its_python_source(monkeypatch: pytest.MonkeyPatch, scale: float, seconds: float) -> None:
    """Overloaded: turns, full batches, timeouts and full queues. Light: small batches, so more than one 4096-draw
    block of run-time noise and of missed-wake draws is used (the loop's refill-and-resume path)."""
    compiled = server._batch_loop
    if not hasattr(compiled, "py_func"):
        pytest.skip("numba is not installed: the loop already runs as Python")
    refills, wakes = [], []
    refill, refill_wake = server.SlotServer._refill_noise, server.SlotServer._refill_wake
    monkeypatch.setattr(server.SlotServer, "_refill_noise", lambda self: refills.append(1) or refill(self))
    monkeypatch.setattr(server.SlotServer, "_refill_wake", lambda self: wakes.append(1) or refill_wake(self))
    plan = _overloaded_trio()
    sc = Scenario(process="poisson", traffic_scale=scale, server=Server(noise_cv=0.3, missed_wake=0.4, queue_timeouts=True,
                                                                            queue_bound=True))
    a = simulate(plan, sc, duration_s=seconds, seed=5).to_dict()
    monkeypatch.setattr(server, "_batch_loop", compiled.py_func)
    b = simulate(plan, sc, duration_s=seconds, seed=5).to_dict()
    a.pop("perf"), b.pop("perf")
    assert a == b
    assert all(m["completed"] > 0 for m in a["models"])
    if scale > 1:
        assert sum(m["rejected"]["timeout"] for m in a["models"]) > 100
        assert sum(m["rejected"]["queue-full"] for m in a["models"]) > 100
    else:
        assert len(refills) >= 2 * 2 and len(wakes) >= 2 * 2  # two runs, each past its first block
