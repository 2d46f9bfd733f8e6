"""How many requests a batch can hold: Poisson arrivals at a stated quantile.

The slot model (``packer/slot.py``) sizes every member's batch by the arrivals of a window of
``T`` ms at rate ``r`` (requests per ms), ``m = r * T`` on average. Arrivals are Poisson, so a
batch is not ``ceil(m)``: a request finds itself in a batch of ``1 + N`` with ``N ~ Poisson(m)``
(the others that arrived in the window; a size-biased draw). ``batch_bound(m)`` is that batch at
the :data:`QUANTILE` level, so at most one request in a thousand sees a larger one.

The planner needs it linear in the cycle, so :func:`envelope` gives a line ``c + s * m`` that is
above ``batch_bound`` for *every* ``m >= 0`` and touches it near an expected operating point: the
tangent of the concave ``m + z sqrt(m) + k`` there, with the intercept raised to the exact
Poisson steps. Worked numbers (``tests/test_arrivals.py``): ``batch_bound(0) = 1``,
``batch_bound(1) = 6``, ``batch_bound(10) = 22``; the envelope around ``m = 100`` has slope
``1 + 1.55 / 10 = 1.155`` and intercept 18.3, so at ``m = 100`` it says 133.8 against an exact 133.
Streams (chunks every ``interval`` from random phases) arrive less variably than Poisson at the
same mean, so the bound holds for them too.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

QUANTILE = 0.999
"""Each member's batch is sized so that at most 0.1 % of its requests see a larger one."""
Z = 3.1
"""Normal quantile used above :data:`EXACT_UPTO`: ``Q(m) <= m + Z sqrt(m) + 1.8`` for every
``m`` (checked against scipy's exact Poisson quantile from 1e-4 to 1e6, worst excess 1.79)."""
TAIL = 1.8
EXACT_UPTO = 60.0
"""Poisson quantiles are summed exactly up to this mean; above it the normal bound is used."""
REF_GRID = 1.05
"""Operating points are rounded to this geometric grid so envelopes are computed once each."""


def poisson_quantile(m: float, q: float = QUANTILE) -> int:
    """The smallest ``k`` with ``P(Poisson(m) <= k) >= q`` (an upper bound above EXACT_UPTO)."""
    if m <= 0:
        return 0
    if m > EXACT_UPTO:
        return math.ceil(m + Z * math.sqrt(m) + TAIL)
    p = math.exp(-m)
    c, k = p, 0
    while c < q:
        k += 1
        p *= m / k
        c += p
    return k


def stream_rate(rate: float, per_stream: float) -> float:
    """The rate (rps) one replica of a streaming model may take for minutes, at :data:`QUANTILE`,
    where its requests come as sticky streams of ``per_stream`` chunks a second each.

    A stream's chunks all go to the replica it started on, so a replica carries a count of
    streams, not a share of the chunks: its mean is ``rate / per_stream`` and, as sessions start
    and end at random, it is Poisson about that mean (a random split of a Poisson count; a
    round-robin one varies less). While more streams than the mean sit on a replica, its rate is
    above ``rate`` for as long as they last: minutes, not a window. A queue sized for ``rate``
    then grows without end (a lone replica at its capacity, ``packer/queue.py``). So the replica is
    sized for the count at the quantile: 50 streams on a replica is 73 at 99.9 %, 1.46x the rate;
    1,000 streams is 1.10x. A duty cycle needs no such margin: over one window a replica's chunks
    are Poisson at ``rate`` whatever the count's spread (a Poisson count thinned), and its windows
    are each served at their quantile."""
    if rate <= 0 or per_stream <= 0:
        return rate
    # A replica that carries streams carries at least one, however small its share.
    return max(rate, per_stream * max(1, poisson_quantile(rate / per_stream)))


SESSION_Z, SESSION_TAIL = 4.9, 4.0
"""The sequence slots a replica keeps (:func:`session_slots`): ``m + 4.9 sqrt(m) + 4`` is above
Poisson's quantile at one in a million for every mean (``tests/test_arrivals.py``)."""


def session_slots(m: float) -> int:
    """Sequence slots for a replica that carries ``m`` live streams on average: beyond the count at
    one in a million. A stream that finds no slot waits in Triton's backlog until a stream ends,
    minutes with sessions of minutes, so the slots (Triton's ``max_candidate_sequences``, a count,
    not a rate: a slot costs nothing until a stream holds it) cover the count's spread, not its mean."""
    if m <= 0:
        return 1
    return math.ceil(m + SESSION_Z * math.sqrt(m) + SESSION_TAIL)


def batch_bound(m: float) -> int:
    """The batch a request may find itself in, at :data:`QUANTILE`: itself plus the window's others."""
    return 1 + poisson_quantile(m)


@lru_cache(maxsize=1)
def _jumps() -> tuple[float, ...]:
    """``m_k``: the mean at which ``poisson_quantile`` first reaches ``k`` (k = 1, 2, ...), up to
    EXACT_UPTO. ``Q(m) >= k`` iff ``P(N <= k - 1; m) < QUANTILE``, which falls with ``m``."""
    out = []
    k = 1
    while True:
        lo, hi = 0.0, max(1.0, 2.0 * k)
        while _cdf(k - 1, hi) >= QUANTILE:
            hi *= 2
        for _ in range(60):
            mid = (lo + hi) / 2
            if _cdf(k - 1, mid) >= QUANTILE:
                lo = mid
            else:
                hi = mid
        if lo > EXACT_UPTO:
            break
        out.append(lo)
        k += 1
    return tuple(out)


def _cdf(k: int, m: float) -> float:
    p = math.exp(-m)
    c = p
    for j in range(1, k + 1):
        p *= m / j
        c += p
    return c


@lru_cache(maxsize=4096)
def _intercept(s: float) -> float:
    """``sup_m batch_bound(m) - s m`` over ``m >= 0``: the lowest line of slope ``s`` above it."""
    best = 1.0  # m = 0: the request alone
    for k, mk in enumerate(_jumps(), start=1):
        best = max(best, 1 + k - s * mk)  # just past m_k the bound is 1 + k
    # Above EXACT_UPTO the bound is ceil(m + Z sqrt m + TAIL) + 1 <= m + Z sqrt m + TAIL + 2,
    # whose distance to the line peaks at sqrt m = Z / (2 (s - 1)).
    if s > 1:
        m = max(EXACT_UPTO, (Z / (2 * (s - 1))) ** 2)
        best = max(best, m + Z * math.sqrt(m) + TAIL + 2 - s * m)
    else:
        best = math.inf
    return best


def envelope(m_ref: float) -> tuple[float, float]:
    """``(c, s)`` with ``batch_bound(m) <= c + s m`` for every ``m >= 0``, tight near ``m_ref``.

    The slope is that of ``m + Z sqrt(m)`` at ``m_ref`` (rounded down to a grid point, so the line
    is computed once per point); the intercept is exact for that slope.
    """
    return envelope_at(grid_index(m_ref))


def grid_index(m_ref: float) -> int:
    """The grid point :func:`envelope` rounds ``m_ref`` down to (``m_ref`` at least 1e-4):
    ``REF_GRID ** k <= m_ref``. ``slot.envelope_row`` restates it compiled (tested against it)."""
    return math.floor(math.log(max(m_ref, 1e-4)) / math.log(REF_GRID))


def envelope_at(k: int) -> tuple[float, float]:
    """:func:`envelope` at the grid point ``REF_GRID ** k``: what the compiled slot maths read
    (:func:`envelope_table`), as :func:`envelope` works it out."""
    m = REF_GRID ** k
    s = 1.0 + Z / (2.0 * math.sqrt(m))
    return _intercept(s), s


ENVELOPE_FROM = grid_index(1e-4)
"""The least grid index :func:`envelope` takes (its ``m_ref`` is at least 1e-4)."""
_TABLE: list[tuple[float, float]] = []
_TABLE_ARRAY = np.zeros((0, 2))


def envelope_table(m_top: float) -> np.ndarray:
    """``(c, s)`` of :func:`envelope_at` at every grid index from ``ENVELOPE_FROM`` up to that of
    ``m_top`` at least, a row each (``slot.envelope_row`` finds the row of an ``m_ref``): the
    envelope as the compiled slot maths read it. Worked out once and grown as needed; read-only."""
    global _TABLE_ARRAY
    top = grid_index(float(m_top))
    if top >= ENVELOPE_FROM + len(_TABLE):
        _TABLE.extend(envelope_at(k) for k in range(ENVELOPE_FROM + len(_TABLE), top + 1))
        _TABLE_ARRAY = np.array(_TABLE, dtype=np.float64).reshape(-1, 2)
        _TABLE_ARRAY.flags.writeable = False
    return _TABLE_ARRAY


@lru_cache(maxsize=1024)
def max_mean(max_batch: int) -> float:
    """The largest window mean ``m`` whose :func:`batch_bound` still fits in ``max_batch``."""
    if batch_bound(0.0) > max_batch:
        return 0.0
    lo, hi = 0.0, float(max_batch)
    if batch_bound(hi) <= max_batch:
        return hi
    for _ in range(60):
        mid = (lo + hi) / 2
        if batch_bound(mid) <= max_batch:
            lo = mid
        else:
            hi = mid
    return lo
