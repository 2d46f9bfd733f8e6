"""The simulator's percentiles: read from a histogram, never below the exact one."""

from __future__ import annotations

import math

import numpy as np

from sims.metrics import Stats


class _Member:
    """What ``Stats.served`` reads of a member: its model's index."""

    idx = 0


def _p99s(latencies_s: np.ndarray) -> tuple[float, float]:
    """The simulator's p99 (ms) of one interval of these latencies, and the exact one."""
    stats = Stats(["m"], [1000.0])
    n = latencies_s.size
    arrivals = np.zeros(n)
    stats.served(_Member(), arrivals, np.ones(n, dtype=np.int64), arrivals, latencies_s)
    _, _, _, p99, _ = stats.end_tick(0)
    rank = max(1, math.ceil(0.99 * n - 1e-9))
    return p99, float(np.sort(latencies_s)[rank - 1]) * 1000.0


def test_a_p99_that_is_the_largest_latency_reads_exactly_that() -> None:
    """A batch of 6 whose run was its bound, 26,772.32 ms, and its model's largest latency, read
    26,812.5 ms at its bin's middle: over the bound that it met."""
    lat = np.concatenate([np.full(94, 5.0), np.full(6, 26.77232)])
    p99, exact = _p99s(lat)
    assert exact == 26.77232 * 1000.0
    assert p99 == exact


def test_percentiles_are_never_below_the_exact_one_and_within_a_bin_above() -> None:
    rng = np.random.default_rng(7)
    for _ in range(50):
        lat = rng.lognormal(mean=-3.0, sigma=rng.uniform(0.1, 2.0), size=int(rng.integers(1, 5000)))
        p99, exact = _p99s(lat)
        assert exact <= p99 <= exact * 1.0079
        assert p99 in set((lat * 1000.0).tolist())  # a latency some request had
