"""A packed slot on the real tritonserver keeps the bounds its plan prints.

One streaming (sequence) member, one interactive and one batch member share an L4-sized slot,
planned at capacity by the slot maths, rendered by the Triton writer (CPU stand-ins holding the
slot's device lock), served by one server for both repositories, and driven at 60 % of the
planned rates: Poisson requests, and sessions sending a chunk every 0.4 s from random phases.
Each member's p99 must stay within its ``p99_bound_ms`` (times the scheduling noise measured with
``bench/truth.py``: README, "Truthful plans"), and nothing may be rejected. No allowance for
missed wake-ups: the rendered dynamic batchers prefetch (no queue policy), so a batcher never
sleeps through its own instance freeing (``serving/config.py``, docs/serving.md).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import replace

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from packer.fleetfile import parse_fleet
from packer.slot import SlotType, feasible, item, largest
from packer.handplan import placement, plan_of
from serving.local import LocalTriton
from serving.repository import group_repositories, write_repository
from serving.settings import TritonSettings

pytestmark = pytest.mark.slow
U = 0.85
NOISE = 1.10
"""Allowance over the bound for scheduling noise. Over the member-runs of ``bench/truth.py`` at
30-90 % load the worst p99 / bound was 0.81 (README); 1.1 leaves room for a loaded CI machine
without letting through the old configurations' 1.13-2.51x or a missed wake-up's +500 ms."""
INTERVAL_S = 0.4

FLEET = {
    "name": "trio", "pools": [{"name": "l4", "gpu": "l4-24gb", "gpus_per_node": 1, "max_nodes": 1,
                               "cost_per_gpu_hour": 0.8, "sharing": ["time-slicing"]}],
    "models": [
        {"name": "chat", "kind": "streaming", "memory_gb": 2, "slo_ms": 400, "max_batch": 16,
         "latency_ms": {"gpu": "l4-24gb", "base": 12, "per_item": 3}, "traffic": {"rps": 20}},
        {"name": "asr", "kind": "streaming", "memory_gb": 2, "slo_ms": 300, "max_batch": 64,
         "latency_ms": {"gpu": "l4-24gb", "base": 8, "per_item": 0.6}, "traffic": {"rps": 50, "streams": 20}},
        {"name": "bulk", "kind": "batch", "memory_gb": 2, "slo_ms": 4000, "max_batch": 32,
         "latency_ms": {"gpu": "l4-24gb", "base": 20, "per_item": 3}, "traffic": {"rps": 8}},
    ],
}


def _slot():
    f = parse_fleet(FLEET)
    st = SlotType(f.pool("l4"))
    mix = {m.name: m.traffic.rps for m in f.models}

    def ok(k: float) -> bool:
        return feasible([item(f.model(n), k * r, st, U) for n, r in mix.items()], st.memory_gb, U)

    k = largest(ok) * 0.999
    streams = math.floor(k * mix["asr"] * INTERVAL_S)
    rates = {"chat": k * mix["chat"], "asr": streams / INTERVAL_S, "bulk": k * mix["bulk"]}
    models = tuple(replace(m, traffic=replace(m.traffic, rps=rates[m.name], peak_rps=rates[m.name],
                                              streams=streams if m.name == "asr" else None)) for m in f.models)
    sub = replace(f, models=models)
    p = placement(sub, "l4", list(rates.items()), node="l4-n0", gpu=0, u=U)
    return sub, plan_of(sub, [p]), p, rates, streams


def _arrivals(rates: dict[str, float], streams: int, seconds: float, seed: int) -> list[tuple]:
    rng = np.random.default_rng(seed)
    out = []
    for name in ("chat", "bulk"):
        t = np.cumsum(rng.exponential(1.0 / rates[name], int(rates[name] * seconds * 2) + 20))
        out += [(float(x), name, 0, False, False) for x in t[t < seconds]]
    for s in range(streams):
        t = np.arange(rng.uniform(0, INTERVAL_S), seconds, INTERVAL_S)
        out += [(float(x), "asr", s + 1, j == 0, j == len(t) - 1) for j, x in enumerate(t)]
    return sorted(out)


def _drive(repos, plan_req: list[tuple], tmp_path) -> tuple[list[tuple[str, float, float, str]], float]:
    """Serve ``repos`` in one server and send ``plan_req`` (``(at, model, sequence, start, end)``)
    open loop on time: each request's (model, sent, latency s, error), and the clock's start."""
    with LocalTriton([write_repository(r, tmp_path / r.kind) for r in repos], start_timeout_s=300) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        x = grpcclient.InferInput("INPUT", [1, 1], "FP32")
        x.set_data_from_numpy(np.zeros((1, 1), dtype=np.float32))
        done: list[tuple[str, float, float, str]] = []
        lock = threading.Lock()
        answered = threading.Semaphore(0)

        def cb(model: str, sent: float, result, error) -> None:
            with lock:
                done.append((model, sent, time.perf_counter() - sent, "" if error is None else str(error)))
            answered.release()

        t0 = time.perf_counter()
        for at, model, seq, start, end in plan_req:
            now = time.perf_counter() - t0
            if at > now:
                time.sleep(at - now)
            sent = time.perf_counter()
            client.async_infer(model, [x], callback=lambda result, error, m=model, s=sent: cb(m, s, result, error),
                               sequence_id=seq, sequence_start=start, sequence_end=end)
        for _ in plan_req:
            assert answered.acquire(timeout=60)
        client.close()
    return done, t0


def test_a_packed_trio_keeps_its_bounds_at_60_percent(tmp_path):
    sub, plan, p, rates, streams = _slot()
    bound = {m.name: m.p99_bound_ms for m in p.models}
    settings = TritonSettings(device="cpu", lock_dir=str(tmp_path))
    repos = group_repositories(plan, p, settings)
    assert {r.kind for r in repos} == {"streaming", "batch"}
    level = {n: 0.6 * r for n, r in rates.items()}
    n_streams = max(1, round(0.6 * streams))
    level["asr"] = n_streams / INTERVAL_S
    warmup, seconds = 2.0, 15.0
    plan_req = _arrivals(level, n_streams, warmup + seconds, seed=3)
    done, t0 = _drive(repos, plan_req, tmp_path)
    failures = []
    for name in rates:
        rows = [(lat * 1000.0, err) for m, s, lat, err in done if m == name and s - t0 >= warmup]
        errors = [(round(l), e) for l, e in rows if e]
        assert rows and not errors, (name, errors)
        p99 = float(np.percentile([l for l, _ in rows], 99))
        allowed = bound[name] * NOISE
        if p99 > allowed:
            failures.append(f"{name}: p99 {p99:.1f} ms over {allowed:.1f} ms (bound {bound[name]:.1f} ms)")
    assert not failures, failures


def test_a_capped_lone_replica_keeps_its_bound_at_90_percent(tmp_path):
    """A replica alone whose two full batches (84 ms each at ``max_batch`` 32) miss its 120-ms SLO
    is served as its requests come with its batches capped (``packer.queue.lone_caps``): the
    writer renders the cap as ``max_batch_size`` and no queue delay, and the real server keeps
    the bound at 90 % of the capped capacity (148 rps; the duty cycle serves 104)."""
    from packer.queue import capped_capacity

    doc = {"name": "capped", "pools": FLEET["pools"],
           "models": [{"name": "asr", "kind": "streaming", "memory_gb": 2, "slo_ms": 120, "max_batch": 32,
                       "latency_ms": {"gpu": "l4-24gb", "base": 20, "per_item": 2}, "traffic": {"rps": 1}}]}
    best, cap = capped_capacity(20.0, 2.0, 32, 120, U)
    rate = 0.9 * best
    doc["models"][0]["traffic"] = {"rps": rate}
    f = parse_fleet(doc)
    p = placement(f, "l4", [("asr", rate)], node="l4-n0", gpu=0, u=U)
    assert p.duty_cycle_ms == 0 and p.models[0].batch_size == cap < 32
    bound = p.models[0].p99_bound_ms
    settings = TritonSettings(device="cpu", lock_dir=str(tmp_path))
    (repo,) = group_repositories(plan_of(f, [p]), p, settings)
    assert repo.models[0].config.max_batch_size == cap
    assert repo.models[0].config.dynamic_batching.max_queue_delay_microseconds == 0
    warmup, seconds = 2.0, 15.0
    rng = np.random.default_rng(5)
    times = np.cumsum(rng.exponential(1.0 / rate, int(rate * (warmup + seconds) * 2) + 20))
    plan_req = [(float(at), "asr", 0, False, False) for at in times[times < warmup + seconds]]
    done, t0 = _drive([repo], plan_req, tmp_path)
    rows = [(lat * 1000.0, err) for _, s, lat, err in done if s - t0 >= warmup]
    assert rows and not [e for _, e in rows if e]
    p99 = float(np.percentile([l for l, _ in rows], 99))
    assert p99 <= bound * NOISE, (p99, bound)
