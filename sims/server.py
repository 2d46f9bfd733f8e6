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

Speed: the loop below touches each *batch* once in Python (a few hundred ns); requests are only
touched by numpy, in ``commit``. The queues are Python lists for ``bisect`` plus a numpy copy for the
vectorised latency maths.

Approximations, each small for the plans the planner makes: the sequence batcher's limit of one
chunk per stream per batch is not enforced (a stream's next chunk comes one chunk interval later,
longer than the SLO of every example); ``max_queue_size`` is not modelled (timeouts bound the
queue instead); a MIG slot is exactly isolated (no shared memory bandwidth).
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from dataclasses import dataclass

import numpy as np

from packer.fleet import Model
from packer.slot import SlotType, latency_scale

INF = math.inf


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


def batcher_config(model: Model, st: SlotType, batch: int, duty_cycle_ms: float, rate_rps: float,
                   compute_share: float = 0.0, *, queue_delay_ms: float | None = None, timeouts: bool = True,
                   min_delay_ms: float = 0.1) -> BatcherConfig:
    """The numbers ``serving/config.py`` (the Triton writer) derives from the plan, in seconds.

    A streaming request may wait the queue delay, then for the slot's running batch (the group's
    batches take ``compute_share * d`` per cycle), then run; a delay of ``d * (1 - share)`` keeps
    that within the plan's ``d + run``. Worked numbers: ``punct-en`` in a group with ``d = 20 ms``,
    ``b = 4`` and a 40 % share on a whole A100: run ``2 + 0.05 * 4 = 2.2 ms``, budget ``100 - 2.2 =
    97.8 ms``, delay ``min(20 * 0.6, 97.8) = 12 ms``.
    """
    base, per = latency_scale(model, st)
    b = max(1, min(batch, model.max_batch))
    d = max(duty_cycle_ms, min_delay_ms)
    run = base + per * b
    budget = max(model.slo_ms - run, min_delay_ms)
    if model.streaming:
        delay = min(d * (1.0 - min(compute_share, 1.0)), budget)
    else:
        fill = b * 1000.0 / rate_rps if rate_rps > 0 else d
        delay = min(max(d, fill), budget)
    delay = max(delay, min_delay_ms)
    if queue_delay_ms is not None:
        delay = queue_delay_ms
    sequence = model.traffic.streams is not None
    timeout = budget / 1000.0 if timeouts and not sequence else INF
    # Streaming models name no preferred size (a batch takes what is queued when the delay ends,
    # so a burst drains in large batches); batch models prefer [b, max_batch].
    preferred = model.max_batch if model.streaming else b
    return BatcherConfig(model.max_batch, preferred, delay / 1000.0, timeout, base / 1000.0, per / 1000.0)


class Member:
    """One replica of a model in a slot: its batcher config and its queue."""

    __slots__ = ("model", "idx", "replica", "cfg", "q", "qa", "h", "rec", "rej", "draining", "removed",
                 "inflight", "ready_at", "slot")

    def __init__(self, model: str, idx: int, replica: int, cfg: BatcherConfig, ready_at: float) -> None:
        self.model, self.idx, self.replica, self.cfg = model, idx, replica, cfg
        self.q: list[float] = []
        self.qa = np.empty(0)
        self.h = 0
        self.rec: list[float] = []
        """Flat (lo, hi, start, finish) per batch dispatched since the last commit."""
        self.rej: list[int] = []
        """Flat (lo, hi) index ranges rejected by the queue timeout since the last commit."""
        self.inflight: list[tuple[np.ndarray, float, float]] = []
        """Batches dispatched but not finished at the last commit: (arrivals, start, finish)."""
        self.draining = False
        self.removed = False
        self.ready_at = ready_at
        self.slot: object = None
        """The engine's slot record (routing checks its state)."""

    @property
    def queued(self) -> int:
        return len(self.q) - self.h

    @property
    def in_flight(self) -> int:
        return sum(a.size for a, _, _ in self.inflight)

    def push(self, times: np.ndarray) -> None:
        if not times.size:
            return
        if self.h:
            del self.q[: self.h]
            self.qa = self.qa[self.h:]
            self.h = 0
        self.q.extend(times.tolist())
        self.qa = np.concatenate((self.qa, times)) if self.qa.size else times


class Sink:
    """Where served and rejected requests go: ``served(member, arrivals, sizes, start, finish)`` for
    consecutive batches (``sizes[k]`` requests ran from ``start[k]`` to ``finish[k]``) and
    ``rejected(member, arrivals, when, reason)``."""

    def served(self, m: Member, arrivals: np.ndarray, sizes: np.ndarray, start: np.ndarray,
               finish: np.ndarray) -> None: ...

    def rejected(self, m: Member, arrivals: np.ndarray, when: np.ndarray, reason: str) -> None: ...


class SlotServer:
    """The batch loop of one slot. ``advance(t)`` runs every batch that starts before ``t``."""

    def __init__(self, sid: str, noise_cv: float, rng: np.random.Generator) -> None:
        self.id = sid
        self.members: list[Member] = []
        self.free_at = 0.0
        self.last = -1
        self.busy_s = 0.0
        """Run time of batches started, accumulated (utilisation numerator)."""
        self.rng = rng
        self.noise_cv = noise_cv
        self._noise: list[float] = []
        self._ni = 0

    def _refill_noise(self) -> list[float]:
        if self.noise_cv <= 0:
            return []
        s2 = math.log1p(self.noise_cv ** 2)
        self._noise = self.rng.lognormal(-s2 / 2, math.sqrt(s2), 4096).tolist()
        self._ni = 0
        return self._noise

    def advance(self, t_end: float) -> None:
        mems = [m for m in self.members if not m.removed and m.ready_at <= t_end]
        if not mems:
            return
        n = len(mems)
        F = self.free_at
        last = self.last % n if self.last >= 0 else n - 1
        busy = 0.0
        noise = self._noise if self.noise_cv > 0 else None
        ni = self._ni
        if noise is not None and not noise:
            noise = self._refill_noise()
            ni = 0
        # Per-member constants in one tuple each, and the heads in a list: attribute lookups and
        # repeated indexing cost more than the maths here.
        H = [m.h for m in mems]
        C = [(m.q, m.rec, m.rej, m.cfg.timeout_s, m.cfg.max_batch, m.cfg.delay_s, m.cfg.preferred - 1,
              m.cfg.base_s, m.cfg.per_item_s, m.ready_at) for m in mems]
        # R[i]: when member i's batch would be ready if the slot were free (INF: empty queue). It
        # changes only when i is served, so each batch costs O(1) Python plus a min() over members.
        R = [_ready(m) for m in mems]
        while True:
            bt = min(R)
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
            else:
                if bt >= t_end:
                    break
                i = R.index(bt)
            q, rec, rej, to, mb, dl, pf, ba, pi, ra = C[i]
            h = H[i]
            nq = len(q)
            if to < INF:
                cut = bt - to
                if q[h] < cut:
                    j = bisect_left(q, cut, h, nq)
                    rej.extend((h, j))
                    H[i] = h = j
                    if h >= nq or q[h] > bt:
                        if h < nq:
                            t = q[h] + dl
                            j = h + pf
                            if j < nq and q[j] < t:
                                t = q[j]
                            R[i] = t if t > ra else ra
                        else:
                            R[i] = INF
                        continue
            top = h + mb
            hi = bisect_right(q, bt, h, top if top < nq else nq)
            b = hi - h
            if b < mb and b > pf + 1 and q[h] + dl > bt:
                b = pf + 1  # dispatched for reaching the preferred size: send exactly that
                hi = h + b
            run = ba + pi * b
            if noise is not None:
                if ni >= len(noise):
                    noise = self._refill_noise()
                    ni = 0
                run *= noise[ni]
                ni += 1
            F = bt + run
            rec += (h, hi, bt, F)
            H[i] = hi
            busy += run
            last = i
            if hi < nq:
                t = q[hi] + dl
                j = hi + pf
                if j < nq and q[j] < t:
                    t = q[j]
                R[i] = t if t > ra else ra
            else:
                R[i] = INF
        for m, h in zip(mems, H):
            m.h = h
        self.free_at = F
        self.last = last
        self.busy_s += busy
        self._ni = ni

    def commit(self, t_end: float, sink: Sink) -> None:
        """Hand finished batches to ``sink`` (those finishing after ``t_end`` stay in flight)."""
        for m in self.members:
            if m.inflight:
                keep = []
                for arr, st, fin in m.inflight:
                    if fin <= t_end:
                        sink.served(m, arr, np.array([arr.size]), np.array([st]), np.array([fin]))
                    else:
                        keep.append((arr, st, fin))
                m.inflight = keep
            if m.rej:
                r = np.asarray(m.rej, dtype=np.int64).reshape(-1, 2)
                idx = _ranges(r[:, 0], r[:, 1])
                arr = m.qa[idx]
                sink.rejected(m, arr, arr + m.cfg.timeout_s, "timeout")
                m.rej = []
            if m.rec:
                rec = m.rec
                # Only the last batch of a slot can still be running at t_end.
                if rec[-1] > t_end:
                    lo_, hi_ = int(rec[-4]), int(rec[-3])
                    m.inflight.append((m.qa[lo_:hi_].copy(), rec[-2], rec[-1]))
                    del rec[-4:]
                if rec:
                    r = np.array(rec).reshape(-1, 4)
                    sizes = (r[:, 1] - r[:, 0]).astype(np.int64)
                    first, end = int(rec[0]), int(rec[-3])
                    # Batches are consecutive unless a timeout cut requests out in between.
                    if end - first == int(sizes.sum()):
                        arr = m.qa[first:end]
                    else:
                        arr = m.qa[_ranges(r[:, 0].astype(np.int64), r[:, 1].astype(np.int64))]
                    sink.served(m, arr, sizes, r[:, 2], r[:, 3])
                m.rec = []

    def drop(self, t: float, sink: Sink, reason: str, members: list[Member] | None = None) -> None:
        """Lose the queue and the batches in flight of ``members`` (all by default) at time ``t``."""
        for m in (self.members if members is None else members):
            if m.inflight:
                arr = np.concatenate([a for a, _, _ in m.inflight])
                sink.rejected(m, arr, np.full(arr.size, t), reason)
                m.inflight = []
            if m.h < len(m.q):
                arr = m.qa[m.h:]
                sink.rejected(m, arr, np.full(arr.size, t), reason)
            m.q, m.qa, m.h = [], np.empty(0), 0


def _ready(m: Member) -> float:
    """When ``m``'s next batch is ready on a free slot: preferred size reached or delay expired."""
    q, h = m.q, m.h
    nq = len(q)
    if h >= nq:
        return INF
    c = m.cfg
    t = q[h] + c.delay_s
    j = h + c.preferred - 1
    if j < nq and q[j] < t:
        t = q[j]
    return t if t > m.ready_at else m.ready_at


def _ranges(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(lo[k], hi[k])`` over k, without a Python loop."""
    sizes = hi - lo
    total = int(sizes.sum())
    if total == 0:
        return np.empty(0, np.int64)
    starts = np.cumsum(sizes) - sizes
    return np.arange(total, dtype=np.int64) - np.repeat(starts - lo, sizes)
