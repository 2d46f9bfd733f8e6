"""Queueing sanity: the slot server against answers known in closed form."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from packer.fleetfile import parse_fleet
from sims.engine import Simulation, simulate
from packer.handplan import HandGroup, hand_plan
from sims.scenario import Scenario, Server, Trace, parse_scenario


def fleet(rps: float, *, base: float, per_item: float, max_batch: int, slo: float = 1000.0, kind: str = "streaming"):
    return parse_fleet({
        "name": "q", "pools": [{"name": "l4", "gpu": "l4-24gb", "gpus_per_node": 1, "max_nodes": 4,
                                "cost_per_gpu_hour": 1.0, "sharing": ["time-slicing"]}],
        "models": [{"name": "m", "kind": kind, "memory_gb": 1.0, "traffic": {"rps": rps}, "slo_ms": slo,
                    "latency_ms": {"gpu": "l4-24gb", "base": base, "per_item": per_item}, "max_batch": max_batch}],
    })


@pytest.mark.parametrize("rho", [0.5, 0.8], ids=["rho-0.5", "rho-0.8"])
def test_md1_mean_wait(rho: float) -> None:
    """Batch size 1, 10 ms service, Poisson arrivals: Pollaczek-Khinchine gives W_q = ρS / (2(1-ρ)).

    ρ = 0.5: 5 ms; ρ = 0.8: 20 ms. 4000 s of traffic (200-320 k requests) pins the mean within a few %.
    """
    S = 10.0
    f = fleet(rho * 1000.0 / S, base=S, per_item=0.0, max_batch=1)
    plan = hand_plan(f, [HandGroup("l4", "whole", ("m",), batch={"m": 1})])
    r = simulate(plan, Scenario(process="poisson", server=Server(queue_timeouts=False)), duration_s=4000, seed=7)
    m = r.models[0]
    want = rho * S / (2 * (1 - rho))
    assert m["mean_queue_ms"] == pytest.approx(want, rel=0.06)
    assert m["mean_ms"] == pytest.approx(want + S, rel=0.03)
    assert r.slots[0]["utilisation"] == pytest.approx(rho, rel=0.02)


def _every_10ms(tmp_path: Path, n: int) -> Trace:
    p = tmp_path / "trace.csv"
    p.write_text("timestamp,model\n" + "".join(f"{0.005 + 0.01 * k:.6f},m\n" for k in range(n)))
    return Trace(str(p), loop=False)


@pytest.mark.parametrize("duty,n,mean_queue,mean,p99", [(35.0, 4, 20.0, 24.0, 39.0), (500.0, 8, 35.0, 41.0, 76.0)],
                         ids=["cut-by-cycle", "full-batch"])
def test_deterministic_batcher_cuts_at_the_duty_cycle(tmp_path: Path, duty: float, n: int, mean_queue: float,
                                                      mean: float, p99: float) -> None:
    """The plan's duty cycle is the queue delay and there are no preferred sizes (packer/batching.py):
    a batch is cut when its oldest request has waited ``d`` and takes everything queued, whatever
    batch the plan provisioned (4 here). Arrivals every 10 ms from 5 ms:

    * ``d = 35 ms``: the batch of the request at 5 ms is cut at 40 ms with the 4 that came (5, 15,
      25, 35), waits 35, 25, 15, 5 ms (mean 20), runs 2 + 0.5*4 = 4 ms: mean 24, p99 35 + 4 = 39.
    * ``d = 500 ms``: the queue reaches max_batch 8 long before, and a full batch leaves as its 8th
      request arrives: waits 70 ... 0 ms (mean 35), runs 2 + 0.5*8 = 6 ms: mean 41, p99 70 + 6 = 76.
    """
    f = fleet(100.0, base=2.0, per_item=0.5, max_batch=8, kind="batch")
    plan = hand_plan(f, [HandGroup("l4", "whole", ("m",), batch={"m": 4}, duty_ms=duty)])
    sc = Scenario(trace=_every_10ms(tmp_path, 4000))
    sim = Simulation(plan, sc, seed=0)
    sim.stats.keep(0)
    r = sim.run(41.0)
    m = r.models[0]
    assert m["completed"] == 4000
    assert m["mean_queue_ms"] == pytest.approx(mean_queue, abs=1e-6)
    assert m["mean_ms"] == pytest.approx(mean, abs=1e-6)
    assert m["p99_ms"] == pytest.approx(p99, rel=0.005)
    # Every batch is of n: the latencies take exactly n values, 10 ms apart.
    lat = np.concatenate([x for _, x in sim.stats.kept[0]]) * 1000.0
    want = [p99 - 10.0 * k for k in range(n)][::-1]
    assert np.allclose(np.sort(np.unique(np.round(lat, 6))), want)


def test_deterministic_batcher_max_queue_delay(tmp_path: Path) -> None:
    """Same arrivals, preferred 8 never reached, delay 25 ms: each batch leaves 25 ms after its oldest
    request with the 3 requests that came by then (waits 25, 15, 5 ms), runs 2 + 0.5*3 = 3.5 ms."""
    f = fleet(100.0, base=2.0, per_item=0.5, max_batch=8)
    plan = hand_plan(f, [HandGroup("l4", "whole", ("m",), batch={"m": 8})])
    sc = Scenario(trace=_every_10ms(tmp_path, 3000), server=Server(queue_delay_ms=25.0, queue_timeouts=True))
    r = simulate(plan, sc, duration_s=31.0, seed=0)
    m = r.models[0]
    assert m["completed"] == 3000
    assert m["mean_queue_ms"] == pytest.approx(15.0, abs=1e-6)
    assert m["mean_ms"] == pytest.approx(18.5, abs=1e-6)


def test_co_resident_models_take_turns() -> None:
    """Two models saturating one slot share it: each gets batches of max size in turn, so each is
    served at half the slot's batch rate and the slot is fully busy."""
    f = parse_fleet({
        "name": "two", "pools": [{"name": "l4", "gpu": "l4-24gb", "gpus_per_node": 1, "max_nodes": 1,
                                  "cost_per_gpu_hour": 1.0, "sharing": ["time-slicing"]}],
        "models": [{"name": n, "kind": "streaming", "memory_gb": 1.0, "traffic": {"rps": 2000.0}, "slo_ms": 1000.0,
                    "latency_ms": {"gpu": "l4-24gb", "base": 10.0, "per_item": 0.0}, "max_batch": 10}
                   for n in ("a", "b")],
    })
    plan = hand_plan(f, [HandGroup("l4", "whole", ("a", "b"), batch={"a": 10, "b": 10}, duty_ms=20.0)])
    # Capacity: one 10 ms batch of 10 at a time = 1000 rps for the slot, 500 each; 2000 each arrive.
    r = simulate(plan, Scenario(process="poisson", server=Server(queue_timeouts=False)), duration_s=60, seed=1)
    done = [m["completed"] for m in r.models]
    assert done[0] == pytest.approx(30000, rel=0.01)
    assert done[1] == pytest.approx(30000, rel=0.01)
    assert r.slots[0]["utilisation"] == pytest.approx(1.0, abs=0.002)


def test_queue_timeout_rejects_overload() -> None:
    """At twice the slot's capacity with a 200 ms SLO, about half the requests must be rejected
    and every served one met its deadline budget (queue <= slo - run)."""
    f = fleet(200.0, base=10.0, per_item=0.0, max_batch=1, slo=200.0, kind="batch")
    plan = hand_plan(f, [HandGroup("l4", "whole", ("m",), batch={"m": 1})])
    r = simulate(plan, Scenario(process="poisson", server=Server(queue_timeouts=True)), duration_s=300, seed=2)
    m = r.models[0]
    assert m["rejected"]["timeout"] / m["arrivals"] == pytest.approx(0.5, abs=0.02)
    assert m["p99_ms"] <= 200.0 * 1.005
    assert np.isclose(m["arrivals"], m["completed"] + sum(m["rejected"].values()) + m["queued_at_end"]
                      + m["in_flight_at_end"])


def test_measured_run_time_replaces_the_profile_not_the_batcher(tmp_path: Path) -> None:
    """``server.run_ms`` (a profile measured on the real server) changes how long batches run, not
    how they form: the same 3-request batches as above (25 ms delay), now running 3 + 1*3 = 6 ms."""
    f = fleet(100.0, base=2.0, per_item=0.5, max_batch=8)
    plan = hand_plan(f, [HandGroup("l4", "whole", ("m",), batch={"m": 8})])
    trace = _every_10ms(tmp_path, 3000)
    sc = parse_scenario({"trace": {"file": trace.file, "loop": False},
                         "server": {"queue_delay_ms": 25.0, "run_ms": [{"models": "m*", "base": 3.0, "per_item": 1.0}]}})
    sim = Simulation(plan, sc, seed=0)
    sim.stats.keep(0)
    m = sim.run(31.0).models[0]
    assert m["completed"] == 3000
    assert m["mean_queue_ms"] == pytest.approx(15.0, abs=1e-6)
    assert m["mean_ms"] == pytest.approx(21.0, abs=1e-6)
    # Individual latencies, kept on request: waits 25, 15, 5 ms plus the 6 ms run, per batch.
    lat = np.concatenate([x for _, x in sim.stats.kept[0]]) * 1000.0
    assert lat.size == 3000
    assert np.allclose(np.sort(np.unique(np.round(lat, 6))), [11.0, 21.0, 31.0])


@pytest.mark.parametrize("missed,want", [(0.0, [35, 35, 35, 35, 35, 35]), (1.0, [35, 180, 10, 35, 515, 35])],
                         ids=["woken", "sleeps"])
def test_missed_wake_waits_for_the_next_arrival(tmp_path: Path, missed: float, want: list[float]) -> None:
    """A request that queues while the slot is busy (at 30 ms, the batch of the one at 0 runs 25-35
    ms) is served when its delay ends, 55 ms, if the batcher notices the slot freeing. If it sleeps
    through it (``missed_wake: 1``), the next arrival (200 ms) wakes it and both go together; with
    no arrival, Triton's 500 ms default wait does (1.030 s waits until 1.035 + 0.5 s)."""
    f = fleet(10.0, base=10.0, per_item=0.0, max_batch=8)
    plan = hand_plan(f, [HandGroup("l4", "whole", ("m",), batch={"m": 8})])
    p = tmp_path / "trace.csv"
    p.write_text("timestamp,model\n" + "".join(f"{t},m\n" for t in (0.0, 0.030, 0.200, 1.0, 1.030, 2.0)))
    sc = Scenario(trace=Trace(str(p), loop=False), server=Server(queue_delay_ms=25.0, missed_wake=missed))
    sim = Simulation(plan, sc, seed=0)
    sim.stats.keep(0)
    assert sim.run(3.0).models[0]["completed"] == 6
    arr = np.concatenate([a for a, _ in sim.stats.kept[0]])
    lat = np.concatenate([x for _, x in sim.stats.kept[0]]) * 1000.0
    assert np.allclose(lat[np.argsort(arr)], want)


@pytest.mark.parametrize("bound", [True, False], ids=["bounded", "unbounded"])
def test_full_queue_refuses_arrivals(tmp_path: Path, bound: bool) -> None:
    """Batches of 1 running 10 ms with a 110 ms SLO: Triton's queue bound is the 10 requests the
    instance finishes within the 100 ms budget. A burst of 25 at t=0: 10 are queued and served, 15
    are refused on arrival (``queue_bound``) or time out after 100 ms (without it). 3 more at 25 ms
    find room (3 of the first 10 have left) and are served within their budget either way.

    (The SLO was 50 ms, a budget of 4: the slot maths now provision the 99.9 % Poisson burst of a
    window, 4-5 requests even at 10 rps, each a 10 ms turn of its own, so no rate is plannable at
    50 ms and ``hand_plan`` refuses the fleet; 110 ms admits up to 6.4 rps.)"""
    f = fleet(5.0, base=10.0, per_item=0.0, max_batch=1, slo=110.0)
    plan = hand_plan(f, [HandGroup("l4", "whole", ("m",), batch={"m": 1})])
    p = tmp_path / "trace.csv"
    times = [k * 1e-6 for k in range(25)] + [0.025] * 3
    p.write_text("timestamp,model\n" + "".join(f"{t!r},m\n" for t in times))
    sc = Scenario(trace=Trace(str(p), loop=False), server=Server(queue_delay_ms=0.1, queue_bound=bound, queue_timeouts=True))
    m = simulate(plan, sc, duration_s=1.0, seed=0).models[0]
    assert m["completed"] == 13
    assert m["rejected"]["queue-full" if bound else "timeout"] == 15
    assert m["rejected"]["timeout" if bound else "queue-full"] == 0
