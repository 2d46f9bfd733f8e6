"""One slot served as Triton serves a packed group: batchers per model, one batch at a time.

Batching follows Triton's dynamic batcher (and the ``oldest`` sequence batcher, which batches the
same way across sequences): when the slot is free, a model's queue is *ready* once it holds its
smallest preferred batch size (``max_batch`` when none is named, as for streaming models), or once
its oldest request has waited ``max_queue_delay``. The slot runs the
ready model whose batch became ready first (ties go round-robin after the last one served, the
turns the Triton writer's one-unit rate limiter gives); a batch takes everything queued up to
``max_batch`` if the delay expired or the queue is full, else exactly the preferred size. A batch of
``b`` runs ``base + per_item * b`` ms of the model's profile on this slot (``packer.slot``), times
optional lognormal noise. Requests that queued longer than ``slo - run`` are rejected (the writer's
queue policy; sequence models have none).

Speed: the batch loop (``_batch_loop``) is compiled with numba and touches each *batch* once
(~50 ns); requests are only touched by numpy, in ``advance`` (one concatenation of the members'
queues) and ``commit`` (slices handed to the sink). Without numba the same function runs as plain
Python, with the same results, ~100x slower. A member's queue is one sorted numpy array.

Approximations, each small for the plans the planner makes: the sequence batcher's limit of one
chunk per stream per batch is not enforced (a stream's next chunk comes one chunk interval later,
longer than the SLO of every example); ``max_queue_size`` is not modelled (timeouts bound the
queue instead); a MIG slot is exactly isolated (no shared memory bandwidth).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from packer.fleet import Model
from packer.batching import MIN_DELAY_MS, batching
from packer.slot import SlotType

INF = math.inf
EMPTY = np.empty(0)
UNBOUNDED = 1 << 62
WAKE_S = 0.5
"""Triton's dynamic batcher sleeps at most this long without a request or a timer (its
``default_wait_microseconds``)."""

try:
    from numba import njit
except ImportError:  # pragma: no cover - numba is in the `sims` extra; without it the loop runs as Python
    def njit(*args: object, **kw: object) -> object:
        """Stand-in for ``numba.njit``: the function itself, uncompiled (correct, ~100x slower)."""
        return args[0] if args and callable(args[0]) else (lambda f: f)


@dataclass(frozen=True)
class BatcherConfig:
    """What Triton is told for one model in one slot (times in seconds)."""

    max_batch: int
    preferred: int
    """Smallest preferred batch: the queue is ready once it holds this many (``max_batch`` when
    the config names none); before the delay expires a batch takes exactly this many."""
    delay_s: float
    timeout_s: float
    """Queue timeout (``INF`` = never reject)."""
    base_s: float
    per_item_s: float
    max_queue: float = INF
    """Requests the queue holds before it refuses arrivals (``INF``: unbounded)."""


def batcher_config(model: Model, st: SlotType, batch: int, duty_cycle_ms: float, *,
                   queue_delay_ms: float | None = None, timeouts: bool = True, queue_bound: bool = False,
                   min_delay_ms: float = MIN_DELAY_MS) -> BatcherConfig:
    """What the Triton writer renders for this member (``packer.batching``), in seconds.

    ``queue_delay_ms`` overrides the delay (a what-if); ``timeouts`` and ``queue_bound`` turn the
    queue policy's rejections on.
    """
    bt = batching(model, st, batch=batch, duty_cycle_ms=duty_cycle_ms, min_delay_ms=min_delay_ms)
    delay = bt.queue_delay_ms if queue_delay_ms is None else queue_delay_ms
    sequence = model.traffic.streams is not None
    timeout = bt.budget_ms / 1000.0 if timeouts and not sequence else INF
    # No preferred size: the queue is ready when it holds max_batch or its oldest waited the delay.
    preferred = min(bt.preferred) if bt.preferred else bt.max_batch
    bound = float(bt.queue_bound) if queue_bound and not sequence else INF
    return BatcherConfig(bt.max_batch, preferred, delay / 1000.0, timeout, bt.base_ms / 1000.0,
                         bt.per_item_ms / 1000.0, bound)


class Member:
    """One replica of a model in a slot: its batcher config and its queue."""

    __slots__ = ("model", "idx", "replica", "cfg", "qa", "inflight", "draining", "removed", "ready_at", "slot",
                 "asleep")

    def __init__(self, model: str, idx: int, replica: int, cfg: BatcherConfig, ready_at: float) -> None:
        self.model, self.idx, self.replica, self.cfg = model, idx, replica, cfg
        self.qa = EMPTY
        """Arrival times of the requests queued here (not yet batched), sorted."""
        self.inflight: list[tuple[np.ndarray, float, float]] = []
        """Batches dispatched but not finished at the last commit: (arrivals, start, finish)."""
        self.draining = False
        self.removed = False
        self.ready_at = ready_at
        self.slot: object = None
        """The engine's slot record (routing checks its state)."""
        self.asleep = -1.0
        """When the slot last freed while this model's batcher slept through it (``missed_wake``):
        it wakes at its next arrival after that (or ``WAKE_S`` later); -1: awake."""

    @property
    def queued(self) -> int:
        return int(self.qa.size)

    @property
    def in_flight(self) -> int:
        return sum(a.size for a, _, _ in self.inflight)

    def push(self, times: np.ndarray) -> None:
        if not times.size:
            return
        self.qa = np.concatenate((self.qa, times)) if self.qa.size else times


class Sink:
    """Where served and rejected requests go: ``served(member, arrivals, sizes, start, finish)`` for
    consecutive batches (``sizes[k]`` requests ran from ``start[k]`` to ``finish[k]``) and
    ``rejected(member, arrivals, when, reason)``."""

    def served(self, m: Member, arrivals: np.ndarray, sizes: np.ndarray, start: np.ndarray,
               finish: np.ndarray) -> None: ...

    def rejected(self, m: Member, arrivals: np.ndarray, when: np.ndarray, reason: str) -> None: ...


class _Window:
    """What one ``advance`` did, in the coordinates of its concatenated queue ``Q``: batches (member,
    lo, hi, start, finish) and timeout rejections (member, lo, hi), each in time order, and the
    arrival times refused by a full queue (member, time)."""

    __slots__ = ("mems", "Q", "bi", "blo", "bhi", "bst", "bfin", "ri", "rlo", "rhi", "fi", "fv")

    def __init__(self, mems: list[Member], Q: np.ndarray, rec: tuple[np.ndarray, ...], nb: int, nr: int,
                 nf: int) -> None:
        bi, blo, bhi, bst, bfin, ri, rlo, rhi, fi, fv = rec
        self.mems, self.Q = mems, Q
        self.bi, self.blo, self.bhi, self.bst, self.bfin = bi[:nb], blo[:nb], bhi[:nb], bst[:nb], bfin[:nb]
        self.ri, self.rlo, self.rhi = ri[:nr], rlo[:nr], rhi[:nr]
        self.fi, self.fv = fi[:nf], fv[:nf]


class SlotServer:
    """The batch loop of one slot. ``advance(t)`` runs every batch that starts before ``t``;
    ``commit(t)`` hands what finished by ``t`` to the sink."""

    def __init__(self, sid: str, noise_cv: float, rng: np.random.Generator, missed_wake: float = 0.0,
                 wake_rng: np.random.Generator | None = None) -> None:
        self.id = sid
        self.missed_wake = missed_wake
        self.wake_rng = wake_rng if wake_rng is not None else rng
        self._wake = EMPTY
        self._wi = 0
        self.members: list[Member] = []
        self.free_at = 0.0
        self.last = -1
        self.busy_s = 0.0
        """Run time of batches started, accumulated (utilisation numerator)."""
        self.rng = rng
        self.noise_cv = noise_cv
        self._noise = EMPTY
        self._ni = 0
        self._windows: list[_Window] = []

    def _refill_noise(self) -> np.ndarray:
        s2 = math.log1p(self.noise_cv ** 2)
        self._noise = self.rng.lognormal(-s2 / 2, math.sqrt(s2), 4096)
        self._ni = 0
        return self._noise

    def _refill_wake(self) -> None:
        self._wake = self.wake_rng.random(4096)
        self._wi = 0

    def advance(self, t_end: float) -> None:
        """Run the slot's batches that start before ``t_end`` (the compiled :func:`_batch_loop`),
        keeping them for :meth:`commit`; members not yet ready stay out."""
        mems = [m for m in self.members if not m.removed and m.ready_at <= t_end]
        if not mems:
            return
        n = len(mems)
        Q, off = _joined_queues(mems)
        to, mb, mq, pf, par = _batcher_arrays(mems)
        H = off[:-1].copy()
        R = np.empty(n)
        SL = np.array([m.asleep for m in mems])
        pm = float(self.missed_wake)
        if pm > 0 and not self._wake.size:
            self._refill_wake()
        cap = int(Q.size) + 1  # every batch and every rejected range takes at least one request
        rec = (np.empty(cap, np.int64), np.empty(cap, np.int64), np.empty(cap, np.int64), np.empty(cap),
               np.empty(cap), np.empty(cap, np.int64), np.empty(cap, np.int64), np.empty(cap, np.int64),
               np.empty(cap, np.int64), np.empty(cap))
        if int(mq.min()) < UNBOUNDED and n == 1 and Q is mems[0].qa:
            Q = Q.copy()  # a full queue is compacted in place: never write into the routed arrays
        noisy = self.noise_cv > 0
        if noisy and not self._noise.size:
            self._refill_noise()
        last = self.last % n if self.last >= 0 else n - 1
        # Fixed argument types, so numba compiles the loop once.
        F, t_end, busy, nb, nr, nf, ni = float(self.free_at), float(t_end), 0.0, 0, 0, 0, int(self._ni)
        init = True
        wi = int(self._wi)
        while True:
            F, last, busy, ni, wi, nb, nr, nf, more = _batch_loop(
                Q, off, H, R, SL, init, to, mb, mq, pf, par, F, last, t_end, self._noise if noisy else EMPTY, busy,
                ni, self._wake if pm > 0 else EMPTY, wi, pm, WAKE_S, nb, nr, nf, *rec)
            if not more:
                break
            # Random draws ran out mid-window: draw more and carry on.
            if more == 1:
                self._refill_noise()
                ni = 0
            else:
                self._refill_wake()
                wi = 0
            init = False
        self._wi = wi
        for k, m in enumerate(mems):
            m.qa = Q[H[k]:off[k + 1]]
            m.asleep = float(SL[k])
        self._windows.append(_Window(mems, Q, rec, nb, nr, nf))
        self.free_at = F
        self.last = last
        self.busy_s += busy
        self._ni = ni

    def commit(self, t_end: float, sink: Sink) -> None:
        """Hand finished batches to ``sink`` (those finishing after ``t_end`` stay in flight)."""
        wins, self._windows = self._windows, []
        for m in self.members:
            if m.inflight:
                keep = []
                for arr, st, fin in m.inflight:
                    if fin <= t_end:
                        sink.served(m, arr, np.array([arr.size]), np.array([st]), np.array([fin]))
                    else:
                        keep.append((arr, st, fin))
                m.inflight = keep
        for w in wins:
            Q = w.Q
            nb = w.bi.size
            # Only the slot's last batch can still be running at t_end.
            if nb and w.bfin[nb - 1] > t_end:
                nb -= 1
                m = w.mems[int(w.bi[nb])]
                m.inflight.append((Q[w.blo[nb]:w.bhi[nb]].copy(), float(w.bst[nb]), float(w.bfin[nb])))
            one = len(w.mems) == 1
            for k, m in enumerate(w.mems):
                if w.fi.size:
                    arr = w.fv if one else w.fv[w.fi == k]
                    if arr.size:
                        sink.rejected(m, arr, arr, "queue-full")
                if w.ri.size:
                    sel = slice(None) if one else w.ri == k
                    lo, hi = w.rlo[sel], w.rhi[sel]
                    if lo.size:
                        arr = Q[_ranges(lo, hi)]
                        sink.rejected(m, arr, arr + m.cfg.timeout_s, "timeout")
                if nb:
                    if one:
                        lo, hi, st, fin = w.blo[:nb], w.bhi[:nb], w.bst[:nb], w.bfin[:nb]
                    else:
                        sel = w.bi[:nb] == k
                        lo, hi, st, fin = w.blo[:nb][sel], w.bhi[:nb][sel], w.bst[:nb][sel], w.bfin[:nb][sel]
                    if lo.size:
                        sizes = hi - lo
                        first, end = int(lo[0]), int(hi[-1])
                        # Batches are consecutive unless a timeout cut requests out in between.
                        arr = Q[first:end] if end - first == int(sizes.sum()) else Q[_ranges(lo, hi)]
                        sink.served(m, arr, sizes, st, fin)

    def drop(self, t: float, sink: Sink, reason: str, members: list[Member] | None = None) -> None:
        """Lose the queue and the batches in flight of ``members`` (all by default) at time ``t``."""
        for m in (self.members if members is None else members):
            if m.inflight:
                arr = np.concatenate([a for a, _, _ in m.inflight])
                sink.rejected(m, arr, np.full(arr.size, t), reason)
                m.inflight = []
            if m.qa.size:
                sink.rejected(m, m.qa, np.full(m.qa.size, t), reason)
            m.qa = EMPTY


def _joined_queues(mems: list[Member]) -> tuple[np.ndarray, np.ndarray]:
    """One array for the members' queues (no copy for a slot of one) and each member's offset in
    it: the compiled loop works on indices."""
    n = len(mems)
    if n == 1:
        Q = np.ascontiguousarray(mems[0].qa)  # routing hands out strided slices
        return Q, np.array([0, Q.size], np.int64)
    sizes = [m.qa.size for m in mems]
    Q = np.concatenate([m.qa for m in mems]) if sum(sizes) else EMPTY
    off = np.zeros(n + 1, np.int64)
    np.cumsum(sizes, out=off[1:])
    return Q, off


def _batcher_arrays(mems: list[Member]) -> tuple[np.ndarray, ...]:
    """The members' batcher settings as the compiled loop reads them: queue timeouts, max batch,
    queue bounds, preferred size - 1, and (delay, base, per item, ready_at) rows."""
    c = [m.cfg for m in mems]
    to = np.array([x.timeout_s for x in c])
    mb = np.array([x.max_batch for x in c], np.int64)
    mq = np.array([min(x.max_queue, UNBOUNDED) for x in c], np.int64)
    # A preferred size larger than the queue bound is never reached: only the delay sends.
    pf = np.array([x.preferred - 1 if x.preferred <= q else UNBOUNDED for x, q in zip(c, mq)], np.int64)
    par = np.array([(x.delay_s, x.base_s, x.per_item_s, m.ready_at) for x, m in zip(c, mems)])
    return to, mb, mq, pf, par


@njit(cache=True)
def _bisect_left(a: np.ndarray, x: float, lo: int, hi: int) -> int:  # pragma: no cover - compiled
    while lo < hi:
        mid = (lo + hi) // 2
        if a[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(cache=True)
def _bisect_right(a: np.ndarray, x: float, lo: int, hi: int) -> int:  # pragma: no cover - compiled
    while lo < hi:
        mid = (lo + hi) // 2
        if x < a[mid]:
            hi = mid
        else:
            lo = mid + 1
    return lo


@njit(cache=True)
def _ready_at(Q: np.ndarray, h: int, nq: int, dl: float, pf: int, ra: float, sl: float,
              wait: float) -> float:  # pragma: no cover - compiled
    """When a member's next batch is ready on a free slot: preferred size reached or delay expired;
    if its batcher slept through the slot freeing at ``sl`` (>= 0), not before its next arrival
    after ``sl`` (or ``sl + wait``, Triton's default wait)."""
    if h >= nq:
        return INF
    t = Q[h] + dl
    j = h + pf
    if j < nq and Q[j] < t:
        t = Q[j]
    if t < ra:
        t = ra
    if sl >= 0.0:
        w = sl + wait
        j = _bisect_right(Q, sl, h, nq)
        if j < nq and Q[j] < w:
            w = Q[j]
        if w > t:
            t = w
    return t


@njit(cache=True)
def _batch_loop(Q, off, H, R, SL, init, to, mb, mq, pf, par, F, last, t_end, noise, busy, ni, wake, wi, pm, wait,
                nb, nr, nf, bi, blo, bhi, bst, bfin, ri, rlo, rhi, fi, fv):  # pragma: no cover - compiled
    """Every batch of one slot that starts before ``t_end``, touching each batch once.

    Member ``i``'s queue is ``Q[H[i]:off[i+1]]``; ``R[i]`` is when its batch would be ready if the
    slot were free (``INF``: empty queue), which changes only when ``i`` is served. ``par[i]`` is
    (delay, base, per item, ready_at). ``SL[i]``: when the slot freed while ``i``'s batcher slept
    (``missed_wake``; -1: awake); with probability ``pm`` the member that ran sleeps through the
    end of its batch (``wake`` holds the uniform draws). Batches go to ``b*[nb...]``, timeout
    rejections to ``r*[nr...]``. ``mq[i]`` bounds a queue: when a batch of ``i`` forms, the
    requests that arrived since its last batch while ``mq[i]`` were already waiting were refused on
    arrival (to ``f*[nf...]``); the rest of the queue is moved up against the later arrivals so
    it stays contiguous. Returns ``(free_at, last, busy, ni, wi, nb, nr, nf, more)``; ``more`` is 1
    when the run-time noise, 2 when the wake draws ran out before the window ended: refill that and
    call again with ``init`` false.

    Kept whole on purpose: it is the simulator's compiled inner loop, run once per batch (tens of
    millions per bench run), and its state (the slot's free time, the round-robin position, the
    counters and draw indices) stays in locals across batches. Split into helpers it would pass
    and return that state on every batch; the steps are marked instead: pick the next batch,
    refuse arrivals to a full queue, cut timed-out requests, form and run the batch, sleep or wake.
    """
    n = H.size
    if init:
        for k in range(n):
            R[k] = _ready_at(Q, H[k], off[k + 1], par[k, 0], pf[k], par[k, 3], SL[k], wait)
    noisy = noise.size > 0
    while True:
        # Pick the next batch: the earliest ready member, or round-robin among those ready when
        # the slot frees.
        bt = INF
        i = -1
        for k in range(n):
            if R[k] < bt:
                bt = R[k]
                i = k
        if bt <= F:
            if F >= t_end:
                break
            bt = F
            i = last + 1  # round-robin among the members ready when the slot frees
            while True:
                if i >= n:
                    i -= n
                if R[i] <= F:
                    break
                i += 1
        elif bt >= t_end:
            break
        if noisy and ni >= noise.size:
            return F, last, busy, ni, wi, nb, nr, nf, 1
        if pm > 0.0 and wi + 1 > wake.size:
            return F, last, busy, ni, wi, nb, nr, nf, 2
        dl, ba, pi, ra = par[i, 0], par[i, 1], par[i, 2], par[i, 3]
        h = H[i]
        nq = off[i + 1]
        # Refuse arrivals to a full queue.
        if nq - h > mq[i]:
            p = _bisect_right(Q, bt, h, nq)
            keep = mq[i]
            if p - h > keep:
                for k in range(h + keep, p):  # arrived to a full queue: refused
                    fi[nf] = i
                    fv[nf] = Q[k]
                    nf += 1
                for k in range(keep - 1, -1, -1):
                    Q[p - keep + k] = Q[h + k]
                H[i] = h = p - keep
        # Cut requests that timed out in the queue.
        if to[i] < INF:
            cut = bt - to[i]
            if Q[h] < cut:
                j = _bisect_left(Q, cut, h, nq)
                ri[nr] = i
                rlo[nr] = h
                rhi[nr] = j
                nr += 1
                H[i] = h = j
                if h >= nq or Q[h] > bt:
                    R[i] = _ready_at(Q, h, nq, dl, pf[i], ra, SL[i], wait)
                    continue
        # Form the batch and run it.
        top = h + mb[i]
        hi = _bisect_right(Q, bt, h, top if top < nq else nq)
        b = hi - h
        if b < mb[i] and b > pf[i] + 1 and Q[h] + dl > bt:
            b = pf[i] + 1  # dispatched for reaching the preferred size: send exactly that
            hi = h + b
        run = ba + pi * b
        if noisy:
            run *= noise[ni]
            ni += 1
        F = bt + run
        bi[nb] = i
        blo[nb] = h
        bhi[nb] = hi
        bst[nb] = bt
        bfin[nb] = F
        nb += 1
        H[i] = hi
        busy += run
        last = i
        if pm > 0.0:
            # Triton's batcher sometimes misses its own instance freeing and only looks at its
            # queue again when a request arrives: the member that ran, with probability pm. (The
            # other members' instances were idle: they wait for the slot's rate limiter, not it.)
            SL[i] = F if wake[wi] < pm else -1.0
            wi += 1
        else:
            SL[i] = -1.0
        R[i] = _ready_at(Q, hi, nq, dl, pf[i], ra, SL[i], wait)
    return F, last, busy, ni, wi, nb, nr, nf, 0


def _ranges(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(lo[k], hi[k])`` over k, without a Python loop."""
    sizes = hi - lo
    total = int(sizes.sum())
    if total == 0:
        return np.empty(0, np.int64)
    starts = np.cumsum(sizes) - sizes
    return np.arange(total, dtype=np.int64) - np.repeat(starts - lo, sizes)
