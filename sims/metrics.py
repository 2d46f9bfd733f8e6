"""Latency bookkeeping without keeping every request: log histograms and per-interval series.

A day of the multilingual example is ~400 M requests; keeping their latencies would take 3 GB. Each
model instead gets a histogram whose bins are read straight from the float's bits: the exponent and
the top 7 mantissa bits, i.e. 128 bins per octave, each at most 0.78 % wide, from 2^-17 s (7.6 µs) to
2^14 s (4.5 h). Binning costs one shift per request (no logarithm). Every policy interval also gets its
own histogram, for the p50/p99 a policy and the time series see.

A percentile is read as the largest latency seen in its bin (each bin keeps its maximum): a latency
some request had, never below the exact percentile and at most one bin (0.78 %) above it. Read at
the bin's middle it was within 0.4 % either way, and so could print a p99 above the plan's bound
where the exact one met it: a batch of 6 whose 26,772.32 ms was the bound, and its model's largest
latency, read 26,812.5 ms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from sims.server import Member, Sink

SHIFT = 52 - 7
LO_S, HI_S = 2.0 ** -17, 2.0 ** 14 * (1 - 2 ** -12)
"""Latencies are binned in seconds from 7.6 µs to 4.5 h; anything outside lands in the end bins."""
_LO = int(np.array(LO_S).view(np.int64)) >> SHIFT
NBINS = (int(np.array(HI_S).view(np.int64)) >> SHIFT) - _LO + 1
REASONS = ("timeout", "queue-full", "no-replica", "preempted")
_MID = ((np.arange(NBINS, dtype=np.int64) + _LO) << SHIFT | (1 << (SHIFT - 1))).view(np.float64) * 1000.0
"""Latency (ms) at the middle of each bin."""


def hist_index(lat_s: np.ndarray) -> np.ndarray:
    """Bin of each latency (seconds, > 0): the float's exponent and top 7 mantissa bits."""
    idx = (lat_s.view(np.int64) >> SHIFT) - _LO
    return np.clip(idx, 0, NBINS - 1, out=idx)


def hist_percentile(hist: np.ndarray, q: float, top: np.ndarray | None = None) -> float:
    """The ``q``-th percentile (0..100) in ms from a histogram (:func:`hist_percentiles`)."""
    return hist_percentiles(hist, (q,), top)[0]


def hist_percentiles(hist: np.ndarray, qs: tuple[float, ...], top: np.ndarray | None = None) -> list[float]:
    """Percentiles (0..100) in ms from a histogram: each its bin's largest latency where ``top``
    (per bin, seconds) is given, else the bin's middle."""
    cum = np.cumsum(hist)
    n = int(cum[-1])
    if n == 0:
        return [0.0] * len(qs)
    ranks = [max(1, math.ceil(q / 100.0 * n - 1e-9)) for q in qs]
    bins = np.searchsorted(cum, ranks)
    if top is None:
        return [float(x) for x in _MID[bins]]
    return [float(x) * 1000.0 for x in top[bins]]


@dataclass
class ModelStats:
    name: str
    slo_ms: float
    arrivals: int = 0
    completed: int = 0
    slo_ok: int = 0
    rejected: dict[str, int] = field(default_factory=lambda: {r: 0 for r in REASONS})
    latency_sum_ms: float = 0.0
    queue_sum_ms: float = 0.0
    hist: np.ndarray = field(default_factory=lambda: np.zeros(NBINS, np.int64))
    top: np.ndarray = field(default_factory=lambda: np.zeros(NBINS, np.float64))
    """The largest latency (s) counted in each bin of ``hist``."""
    # The current interval only:
    pending: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)
    """Served batches not yet counted: (arrivals, sizes, start, finish) per hand-over."""
    tick_arrivals: int = 0
    tick_hist: np.ndarray = field(default_factory=lambda: np.zeros(NBINS, np.int64))
    tick_top: np.ndarray = field(default_factory=lambda: np.zeros(NBINS, np.float64))
    tick_queue_ms: float = 0.0
    tick_n: int = 0
    tick_rejected: int = 0


class Stats(Sink):
    """Collects served and rejected requests per model (implements :class:`sims.server.Sink`).

    Served batches are only queued on arrival and counted once per model per interval
    (``flush``): a slot hands over a few batches per member per window, and numpy's per-call cost
    (~2 µs) would otherwise dominate at night, when batches are small.
    """

    def __init__(self, names: list[str], slos: list[float]) -> None:
        self.models = [ModelStats(n, s) for n, s in zip(names, slos)]
        self.kept: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
        """Per model asked for with ``keep``: (arrival s, latency s) of every served request, in
        the order counted. For short runs that need exact percentiles over a subset of requests
        (``bench/fidelity.py`` leaves out the real benchmark's warm-up); a day would not fit."""

    def keep(self, i: int) -> None:
        """Also keep model ``i``'s individual latencies (see ``kept``)."""
        self.kept.setdefault(i, [])

    def arrived(self, i: int, n: int) -> None:
        s = self.models[i]
        s.arrivals += n
        s.tick_arrivals += n

    def served(self, m: Member, arrivals: np.ndarray, sizes: np.ndarray, start: np.ndarray,
               finish: np.ndarray) -> None:
        """Batches of ``sizes`` requests (``arrivals``, concatenated) that ran from ``start`` to ``finish``."""
        if arrivals.size:
            self.models[m.idx].pending.append((arrivals, sizes, start, finish))

    def flush(self, i: int) -> None:
        """Count model ``i``'s pending batches: latencies, their bins, SLO hits, queue time."""
        s = self.models[i]
        if not s.pending:
            return
        if len(s.pending) == 1:
            arr, sizes, start, finish = s.pending[0]
        else:
            arr, sizes, start, finish = (np.concatenate(x) for x in zip(*s.pending))
        s.pending = []
        n = arr.size
        lat = np.repeat(finish, sizes) - arr
        if i in self.kept:
            self.kept[i].append((arr, lat))
        asum = float(arr.sum())
        qsum = (float(np.dot(start, sizes)) - asum) * 1000.0
        s.completed += n
        s.slo_ok += int(np.count_nonzero(lat <= s.slo_ms / 1000.0))
        s.latency_sum_ms += (float(np.dot(finish, sizes)) - asum) * 1000.0
        s.queue_sum_ms += qsum
        idx = hist_index(lat)
        s.tick_hist += np.bincount(idx, minlength=NBINS)
        np.maximum.at(s.tick_top, idx, lat)
        s.tick_queue_ms += qsum
        s.tick_n += n

    def rejected(self, m: Member | int, arrivals: np.ndarray, when: np.ndarray, reason: str) -> None:
        if not arrivals.size:
            return
        s = self.models[m if isinstance(m, int) else m.idx]
        s.rejected[reason] += arrivals.size
        s.tick_rejected += arrivals.size

    def end_tick(self, i: int) -> tuple[int, float, float, float, int]:
        """Close model ``i``'s interval: (arrivals, mean queue ms, p50 ms, p99 ms, rejected)."""
        self.flush(i)
        s = self.models[i]
        if s.tick_n:
            p50, p99 = hist_percentiles(s.tick_hist, (50, 99), s.tick_top)
            s.hist += s.tick_hist
            np.maximum(s.top, s.tick_top, out=s.top)
            s.tick_hist.fill(0)
            s.tick_top.fill(0.0)
        else:
            p50 = p99 = 0.0
        out = (s.tick_arrivals, s.tick_queue_ms / s.tick_n if s.tick_n else 0.0, p50, p99, s.tick_rejected)
        s.tick_arrivals, s.tick_queue_ms, s.tick_n, s.tick_rejected = 0, 0.0, 0, 0
        return out
