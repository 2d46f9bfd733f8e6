"""A replica alone on its slot, served as its requests come: a batch queue, and its p99 bound.

A member that shares a slot waits its turn, so its batcher cuts a batch once a duty cycle has
passed (``packer/slot.py``). Alone, nobody takes turns with it: its batcher can have **no queue
delay**, and then, as Triton's dynamic batcher does, it sends everything queued (up to
``max_batch``) the moment its instance frees, and a request that finds the slot idle runs at once.
Under load the batches grow by themselves, so a lone replica can run near its full-batch
throughput ``M / l(M)``, where the duty cycle's batch (sized for the 99.9 % burst of one window,
within an SLO that also holds the cut) stops well short of it: 1.2-5x short, most at small
``max_batch`` (``docs/slot-maths.md``, "Alone on a slot").

**The bound.** Let ``L = l(M)`` (a full batch), ``a = r L`` (mean arrivals during one), and
``theta > 0`` the root of ``a (e^theta - 1) = M theta`` (needs ``a < M``). For request ``x``:

* **Its latency** is the rest of the batch running when it came (at most ``L``), then the batches
  that take the queue ahead of it. When the running batch ends, everything waiting is sent in
  batches of ``M`` in order (each full while ``x`` waits behind ``M`` or more), so ``x`` runs in the
  ``ceil(q / M)``-th, where ``q`` is its place in the queue: latency ``<= L (1 + ceil(q / M))``.
* **The queue.** Left waiting when a batch starts: ``V' = max(V + A - M, 0)``, with ``A`` the
  arrivals during a batch of at most ``L``, so stochastically at most ``Poisson(a)`` whatever
  came before. ``V`` is thus below Lindley's recursion with increments ``Poisson(a) - M``, whose
  stationary value has ``P(W >= k) <= e^(-theta k)`` (Kingman's bound). ``x`` finds ``V`` plus
  the arrivals since the running batch began (at most ``Poisson(a)``, independent of ``V``).
* **Weighting by time.** ``x`` arrives at a random time, so batches count by their length: at most
  ``L`` each, at most ``min(r, 1 / l(1))`` of them a ms, so probabilities over batches are scaled
  by ``F = min(a, L / l(1))``.

So ``P(q > j M) <= F sum_n P(N = n) min(1, e^(-theta (j M - n)))``, ``N ~ Poisson(a)``, and the
bound is ``L (1 + j)`` for the least ``j`` that takes this to ``1 - LEVEL``: at most one request in
ten thousand waits longer in the long run (a duty cycle's batches are sized for one in a
thousand, but its windows are independent; see :data:`LEVEL`). It never uses the SLO or
the duty cycle; it holds at any rate below ``M / L`` (``tests/test_queue.py`` checks it against
the simulator's own lone batcher, ``sims/server.py``).

A lone replica is planned this way when its bound is the lower (``slot.evaluate``) or the duty
cycle cannot serve its rate at all; its rate stays within ``u`` of the full-batch throughput,
the same headroom a shared slot keeps in its round.

**Sticky streams.** A stream's chunks all go to the replica it started on, so a replica of a
model with ``streams`` carries a count of them that stays above its share for minutes, and a
queue at its limit grows without end meanwhile: on a family fleet's T4s, seven replicas sized for
their mean rate served a p99 of 8.9 s against a bound of 96.9 ms. Such a replica is sized for its
count of streams at the 99.9 % level (``arrivals.stream_rate``, ``slot.lone_rate``); within
it, its chunks (a fixed count of streams at random phases) come less variably than Poisson.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from packer.jit import njit

LEVEL = 0.9999
"""The bound is the latency one request in ten thousand exceeds in the long run. A queue carries a
burst over into the requests after it, so its short windows vary more than a duty cycle's, whose
windows are independent: served by the reference batcher for six hours at the lone capacity,
up to 1.4 % of 15-second windows had their p99 above the 99.9 % level's bound, and at most 0.28 %
above this level's (``python bench/lone.py --windows``: ten profiles, five of them the truth
bench's lone slots, three of which went over the 99.9 % bound on the real server). It also leaves room
for a run a little slower than its profile, to which a queue near its limit is sensitive."""


def full_run(base: float, per_item: float, max_batch: int) -> float:
    """``L``: the run (ms) of a full batch, the longest any batch of this replica takes."""
    return base + per_item * max_batch


def busy_share(rate_rps: float, base: float, per_item: float, max_batch: int) -> float:
    """The share of the slot's full-batch throughput ``rate`` takes: ``r l(M) / M``. A lone
    replica keeps it at most ``u``: the slot's headroom."""
    return rate_rps / 1000.0 * full_run(base, per_item, max_batch) / max_batch


@njit(cache=True)
def _theta(a: float, M: int) -> float:
    """The positive root of ``a (e^t - 1) = M t`` (``0 < a < M``): Kingman's decay rate of the queue
    in requests. Newton from the right, where the convex ``f`` is positive, falls onto it."""
    t = max(1.0, 2.0 * math.log(M / a))
    while a * math.expm1(t) - M * t <= 0:
        t *= 2.0
    for _ in range(200):
        slope = a * math.exp(t) - M
        if slope <= 0:  # at the root itself (t -> 0 as a -> M)
            break
        step = (a * math.expm1(t) - M * t) / slope
        t -= step
        if step <= 1e-12 * t:
            break
    return t


_LOG_FACTORIALS = np.zeros(1)


def log_factorials(nmax: int) -> np.ndarray:
    """``log k!`` for ``k = 0 .. nmax``, each ``math.lgamma(k + 1)`` as before, worked out once: a
    replica's capacity bisects its bound 40 times, and the 3000-model fleet spent 10 s of a 2-s plan
    calling ``lgamma`` 35 million times."""
    global _LOG_FACTORIALS
    have = len(_LOG_FACTORIALS)
    if have <= nmax:
        grown = max(nmax + 1, 2 * have)
        _LOG_FACTORIALS = np.concatenate((_LOG_FACTORIALS, [math.lgamma(k + 1.0) for k in range(have, grown)]))
    return _LOG_FACTORIALS[: nmax + 1]


def warm() -> None:
    """Compile the bound's search (or load it from numba's cache) now, before a plan's clock."""
    queue_bound(1.0, 1.0, 0.1, 2)


def queue_bound(rate_rps: float, base: float, per_item: float, max_batch: int, level: float = LEVEL) -> float:
    """The latency (ms) that at most ``1 - level`` of a lone replica's requests exceed when it is
    served as its requests come (the module's argument); ``inf`` at or past ``max_batch / l(M)``."""
    M = int(max_batch)
    L = full_run(base, per_item, M)
    r = rate_rps / 1000.0
    if r <= 0:
        return base + per_item
    a = r * L
    if a >= M * (1.0 - 1e-9) or L <= 0:  # saturated: the queue grows without end
        return math.inf
    nmax = int(a + 12.0 * math.sqrt(a) + 40.0)
    j = _least_j(a, M, min(a, L / max(base + per_item, 1e-12)), 1.0 - level, log_factorials(nmax))
    return math.inf if j < 0 else L * (1 + j)


@njit(cache=True)
def _logaddexp(x: float, y: float) -> float:
    """``log(e^x + e^y)``, as NumPy's ``logaddexp`` works it out."""
    if x == y:
        return x + math.log(2.0)
    d = x - y
    if d > 0:
        return x + math.log1p(math.exp(-d))
    return y + math.log1p(math.exp(d))


@njit(cache=True)
def _least_j(a: float, M: int, F: float, eps: float, logfact: np.ndarray) -> int:
    """The least ``j`` with ``F P(W + N >= j M) <= eps`` (``N ~ Poisson(a)`` over ``n = 0 .. nmax``
    with the mass beyond counted as always too late, ``P(W >= x) <= e^(-theta x)``); -1 past a
    million. Compiled: a 2,000-model plan asks it half a million times, 17 µs each in NumPy."""
    theta = _theta(a, M)
    nmax = len(logfact) - 1
    la = math.log(a)
    at_least = np.empty(nmax + 2)  # P(N >= k), k = 0 .. nmax + 1
    lse = np.empty(nmax + 1)  # log sum_{n <= k} p_n e^(theta n)
    at_least[0] = 1.0
    mass = 0.0
    acc = -math.inf
    for n in range(nmax + 1):
        lp = n * la - a - logfact[n]
        mass += math.exp(lp)
        at_least[n + 1] = 1.0 - mass
        acc = lp + theta * n if n == 0 else _logaddexp(acc, lp + theta * n)
        lse[n] = acc
    beyond = max(0.0, 1.0 - mass)
    for k in range(nmax + 2):
        at_least[k] = max(at_least[k], beyond)
    j = 1
    while _tail(j * M, F, theta, at_least, lse, beyond) > eps:
        j = j * 2 if j < 64 else j + 64
        if j > 1_000_000:
            return -1
    lo = max(1, j // 2 if j <= 128 else j - 64)
    while lo < j:  # the least j: tail falls with j
        mid = (lo + j) // 2
        if _tail(mid * M, F, theta, at_least, lse, beyond) <= eps:
            j = mid
        else:
            lo = mid + 1
    return j


@njit(cache=True)
def _tail(k: int, F: float, theta: float, at_least: np.ndarray, lse: np.ndarray, beyond: float) -> float:
    """``F P(W + N >= k)`` over ``P(W >= x) <= e^(-theta x)``."""
    if k <= 0:
        return F
    nmax = len(lse) - 1
    if k <= nmax + 1:
        return F * (at_least[k] + math.exp(lse[k - 1] - theta * k))
    return F * (beyond + math.exp(lse[nmax] - theta * k))


MAX_CAPS = 16
"""Most batch caps :func:`capped_capacity` weighs below ``max_batch``. On 300 random profiles none
of the caps from 1 to ``max_batch`` served more than the best of these (the best was among the
first few); the limit keeps a 10-minute SLO over a 1-ms batch from listing thousands."""


def lone_caps(base: float, per_item: float, max_batch: int, slo_ms: float) -> Iterator[int]:
    """The batch caps worth serving a lone replica with, largest first: ``max_batch``, then for
    ``j = 1, 2, ...`` the largest cap ``b < max_batch`` whose ``1 + j`` full runs fit the SLO.

    The bound is ``l(b) (1 + j)`` for the least ``j`` its queue allows, so between two such caps a
    larger one only adds throughput: each is the best of its ``j``. A cap below ``max_batch`` is
    rendered as the replica's ``max_batch_size`` (``packer.batching``), so its batches, and the
    bound's ``L``, are those of the cap: where two full batches of ``max_batch`` take longer than
    the SLO, a smaller cap still serves (an LLM at 16.4 s a full batch under a 30-s SLO on an A100
    serves 0.66 rps with batches of at most 25, and nothing at 32)."""
    yield max_batch
    if per_item <= 0:
        return
    L = full_run(base, per_item, max_batch)
    j = max(1, math.floor(slo_ms / L)) if L > 0 else 1  # (1 + j) L > slo from here on
    last, n = max_batch, 0
    while n < MAX_CAPS:
        b = math.floor((slo_ms / (1 + j) - base) / per_item)
        if b < 1:
            return
        if b < last:
            yield b
            last, n = b, n + 1
        j += 1


def capped_capacity(base: float, per_item: float, max_batch: int, slo_ms: float, u: float) -> tuple[float, int]:
    """``(capacity, cap)``: the most rps one lone replica serves within ``slo_ms`` and ``u`` with its
    batches capped at ``cap <= max_batch`` (:func:`lone_caps`), and that cap; ``max_batch`` where no
    smaller cap serves more (ties keep the larger). ``(0, max_batch)`` where no cap serves.

    ``max_batch``'s capacity first, as it always was; a smaller cap that serves its own throughput
    limit has its capacity there, above every cap below it; then one bisection on the rate over
    the caps above that together (a rate is served where some cap serves it, and each cap serves
    every rate up to its capacity), the cap that served the last rate tried first: a bisection per
    cap took 24 s of a 2,000-model plan's capacities."""
    best = queue_capacity(base, per_item, max_batch, slo_ms, u)
    others = list(lone_caps(base, per_item, max_batch, slo_ms))[1:]
    if not others:
        return best, max_batch
    top = u * 1000.0 * max_batch / full_run(base, per_item, max_batch)

    # Per cap, a rate it does not serve above: its throughput within ``u``, then the least rate it
    # failed at (it serves every rate up to its capacity and none above).
    below = {b: u * 1000.0 * b / full_run(base, per_item, b) for b in others}

    def serves(r: float, b: int) -> bool:
        if r > below[b]:
            return False
        if queue_bound(r, base, per_item, b) <= slo_ms:
            return True
        below[b] = r
        return False

    def serving(r: float, first: int | None) -> int | None:
        if first is not None and serves(r, first):
            return first
        return next((b for b in others if b != first and serves(r, b)), None)

    # A cap that serves its own throughput's limit has its capacity there, above every smaller
    # cap's: the bisection runs only over the larger caps, above it.
    at_top = max_batch
    for k, b in enumerate(others):
        if below[b] <= best:
            others = others[:k]  # this cap's throughput, and every smaller one's, is below best
            break
        if serves(below[b], b):
            if k == 0:
                return below[b], b
            best, at_top, others = below[b], b, others[:k]
            break
    if not others:
        return best, at_top
    lo = best * (1 + 1e-9) if best > 0 else 1e-9 * top
    cap = serving(lo, None)
    if cap is None:
        return best, at_top
    hi = max(below[b] for b in others)  # no cap serves above its own
    while hi - lo > top * 2.0 ** -24:  # within 6e-8 of the fastest cap's throughput: rounds no count
        mid = (lo + hi) / 2
        b = serving(mid, cap)
        if b is None:
            hi = mid
        else:
            lo, cap = mid, b
    return lo, cap


def queue_capacity(base: float, per_item: float, max_batch: int, slo_ms: float, u: float) -> float:
    """The most rps one lone replica serves within ``slo_ms`` at this bound, its rate within ``u`` of
    the full-batch throughput; 0 where even a trickle's bound (two full batches) is over the SLO."""
    L = full_run(base, per_item, max_batch)
    top = u * 1000.0 * max_batch / L
    if queue_bound(top, base, per_item, max_batch) <= slo_ms:
        return top
    if queue_bound(1e-9 * top, base, per_item, max_batch) > slo_ms:
        return 0.0
    lo, hi = 0.0, top
    for _ in range(40):  # the bound only rises with the rate
        mid = (lo + hi) / 2
        if queue_bound(mid, base, per_item, max_batch) <= slo_ms:
            lo = mid
        else:
            hi = mid
    return lo
