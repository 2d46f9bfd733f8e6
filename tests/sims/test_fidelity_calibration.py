"""bench/fidelity.py's calibration reads back what a known server did.

A small model of a single-instance Triton serves seeded arrivals with a known execution time
``base + per_item * b`` (what Triton's batch statistics would report), a turnaround between
batches that the statistics leave out, a per-request overhead split between the two legs, and a
batcher that sleeps through the instance freeing with a known probability. Its recording, in
``bench/triton.py``'s JSON layout, must give those numbers back.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

BASE, PER, TURN, OVER, MISS, DELAY = 11.0, 2.8, 1.2, 1.3, 0.4, 21.0  # ms, ms, ms, ms, share, ms


def _fidelity():
    path = Path(__file__).resolve().parents[2] / "bench" / "fidelity.py"
    spec = importlib.util.spec_from_file_location("bench_fidelity", path)
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod


def _serve(sent: np.ndarray, rng: np.random.Generator, miss: float, max_batch: int = 32) -> dict:
    """Record one run of the model server: per request (sent, latency), per batch size (count, exec)."""
    arr = sent + OVER / 2000.0
    lat = np.empty(sent.size)
    stats: dict[int, list[float]] = {}
    free, asleep, h = -1.0, False, 0
    while h < sent.size:
        start = max(arr[h] + DELAY / 1000.0, free)
        if asleep:
            j = np.searchsorted(arr, free, side="right")
            start = max(start, min(arr[j] if j < arr.size else np.inf, free + 0.5))
        hi = min(int(np.searchsorted(arr, start, side="right")), h + max_batch)
        b = hi - h
        exec_s = (BASE + PER * b) / 1000.0
        lat[h:hi] = (start + exec_s + OVER / 2000.0 - sent[h:hi]) * 1000.0
        s = stats.setdefault(b, [0, 0.0])
        s[0] += 1
        s[1] += exec_s * 1000.0
        free, asleep, h = start + exec_s + TURN / 1000.0, rng.random() < miss, hi
    return {"requests": {"sent_s": sent.tolist(), "latency_ms": lat.tolist(), "ok": [True] * sent.size},
            "batch_stats": [{"batch_size": b, "batches": n, "mean_exec_ms": t / n} for b, (n, t) in sorted(stats.items())]}


def _level(rate: float, seed: int, seconds: float = 20.0) -> dict:
    rng = np.random.default_rng(seed)
    sent = np.cumsum(rng.exponential(1.0 / rate, int(rate * seconds)))
    level = _serve(sent, rng, MISS)
    occupancy = _serve(np.arange(int(3 * 300)) / 300.0, rng, 0.0)  # overloaded, evenly spaced
    return {**level, "occupancy": occupancy, "queue_delay_ms": DELAY, "base_ms": 10.25, "per_item_ms": 2.69,
            "overhead": {"overhead_ms": OVER}}


@pytest.mark.parametrize("rate", [68.0, 136.0])
def test_calibration_recovers_the_server(rate: float) -> None:
    fid = _fidelity()
    row = _level(rate, seed=int(rate))
    base, per = fid.fit_run_time(row["batch_stats"], row["per_item_ms"])
    assert (base, per) == pytest.approx((BASE, PER), abs=1e-6)
    turn, n = fid.turnaround_ms(row["occupancy"], DELAY, row["base_ms"])
    assert n >= 10 and turn == pytest.approx(TURN, abs=1e-6)


def test_missed_wakes_read_back_without_bias() -> None:
    """Pooled over loads and a minute each (~1,300 cases, sampling error ~0.014), the share read
    from the completions is the server's within 0.04; reading the next arrival on the client's
    clock instead of the server's (half the overhead earlier) read ~0.36 here."""
    fid = _fidelity()
    share, cases = fid.missed_wake([_level(rate, seed=int(rate), seconds=60.0) for rate in (68.0, 136.0, 193.0)])
    assert cases > 1000
    assert share == pytest.approx(MISS, abs=0.04)


def test_no_missed_wakes_reads_zero() -> None:
    fid = _fidelity()
    rng = np.random.default_rng(3)
    sent = np.cumsum(rng.exponential(1.0 / 100.0, 2000))
    row = {**_serve(sent, rng, 0.0), "occupancy": _level(100.0, 3)["occupancy"], "queue_delay_ms": DELAY,
           "base_ms": 10.25, "per_item_ms": 2.69, "overhead": {"overhead_ms": OVER}}
    share, cases = fid.missed_wake([row])
    assert cases > 100 and share < 0.02
