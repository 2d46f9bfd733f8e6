"""Slot maths: can these models share one slot, with what batches, and what latency do they see?

A *slot* is a whole GPU or one MIG instance. Its members take turns on it, one batch at a time,
as Triton serves them with one rate-limiter unit per slot (``packer/batching.py`` says how): each
member's batcher cuts a batch once its oldest request has waited the *duty cycle* ``d`` (no
preferred batch sizes), and the slot runs the cut batches in turn. A request therefore waits at
most ``d`` for its batch to be cut, then for the batches of the other members, then runs:

    latency_i <= d + C,      C = sum_j l_j(B_j),      l(b) = base + per_item * b

where ``B_j`` is member ``j``'s batch at the 99.9 % level of Poisson arrivals over its window
``T_j = d + C - l_j`` (``packer/arrivals.py``). ``d + C`` is the p99 bound a plan reports. When
``C <= u d`` a member's previous batch has always finished before its next is cut, so each runs
at most one batch per cycle and the slot is stable with ``1 - u`` to spare.

Bounding the batch by a line (``arrivals.envelope``) and the round by ``C <= u d`` makes every
constraint linear in ``d`` (``item`` derives ``A_i`` and ``B_i``)::

    round:    sum_i (A_i + B_i d) <= u d      ->  d >= lo = sum A_i / (u - sum B_i)
    latency:  d + C <= (1 + u) d <= slo_i     ->  d <= hi_i = slo_i / (1 + u)
    turns:    a window of more than max_batch takes k rounds: d + k C <= (1 + k u) d <= slo_i

so a group is feasible iff ``lo <= min_i hi_i``: an O(n) test the planner uses everywhere, and
a linear constraint once the cycle is fixed. The reported numbers are exact for the chosen ``d``
(Poisson quantiles, not the lines). ``docs/slot-maths.md`` works an example.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np

from packer.arrivals import ENVELOPE_FROM, REF_GRID, batch_bound, envelope, envelope_table, stream_rate
from packer.catalog import GpuType, gpu_type
from packer.fleet import FleetError, Fleet, Model, Pool
from packer.jit import njit
from packer.queue import busy_share, capped_capacity, full_run, lone_caps, queue_bound

WHOLE = "whole"


@dataclass(frozen=True)
class SlotType:
    """A kind of slot a pool can offer: its whole GPU, or one MIG profile of it."""

    pool: Pool
    profile: str = WHOLE

    # Worked out once per slot type (written to the instance's ``__dict__``, which a frozen
    # dataclass allows): the packing asks them millions of times on a fleet of 400 models.
    @cached_property
    def gpu(self) -> GpuType:
        return gpu_type(self.pool.gpu)

    @cached_property
    def memory_gb(self) -> float:
        g = self.gpu
        return g.usable_gb if self.profile == WHOLE else g.profile(self.profile).memory_gb

    @cached_property
    def compute_fraction(self) -> float:
        g = self.gpu
        return 1.0 if self.profile == WHOLE else g.profile(self.profile).compute_slices / g.compute_slices

    @cached_property
    def key(self) -> str:
        return f"{self.pool.name}/{self.profile}"


def slot_types(pool: Pool) -> list[SlotType]:
    out = [SlotType(pool)]
    if pool.mig:
        out += [SlotType(pool, p.name) for p in gpu_type(pool.gpu).mig_profiles]
    return out


def latency_scale(model: Model, st: SlotType) -> tuple[float, float]:
    """(base, per_item) in ms of this model on this slot type.

    A measured profile for the exact slot wins; else one for the whole GPU type scaled by 7/g
    for a MIG slice; else the first profile scaled by relative speed (and its own slice size).
    """
    target = st.pool.gpu if st.profile == WHOLE else f"{st.pool.gpu}/{st.profile}"
    for lp in model.latency:
        if lp.gpu == target:
            return lp.base, lp.per_item
    whole = next((lp for lp in model.latency if lp.gpu == st.pool.gpu), None)
    if whole is not None:
        s = 1.0 / st.compute_fraction
        return whole.base * s, whole.per_item * s
    ref = model.latency[0]
    rname, _, rprof = ref.gpu.partition("/")
    rgpu = gpu_type(rname)
    s = rgpu.speed / st.gpu.speed / st.compute_fraction
    if rprof:
        s *= rgpu.profile(rprof).compute_slices / rgpu.compute_slices
    return ref.base * s, ref.per_item * s


@dataclass(frozen=True)
class Item:
    """One replica's demand on one slot type, in the linear form above (ms and ms per ms)."""

    model: Model
    rate: float
    """Requests per second this replica must serve at peak."""
    base: float
    per_item: float
    """The profile scaled to this slot type (ms)."""
    A: float
    B: float
    hi: float
    """Largest duty cycle (ms) at which this replica meets its SLO and max_batch."""
    lone: bool = False
    """Only alone on its slot, served as its requests come (``packer/queue.py``): no duty cycle
    serves its rate. Its line then fills the slot (``A`` just under ``u hi``, ``B = 0``), so the
    O(n) test admits it alone and with nobody else."""

    def load(self, d: float) -> float:
        """Conservative run time (ms) of this member's batch at duty cycle ``d``."""
        return self.A + self.B * d

    def run_ms(self, batch: int) -> float:
        return self.base + self.per_item * batch

    def batch_at(self, window_ms: float) -> int:
        """Its batch at the quantile level for arrivals over ``window_ms``, within max_batch."""
        return min(self.model.max_batch, batch_bound(self.rate * window_ms / 1000.0))


MAX_TURNS = 64
"""A member whose window holds more than ``max_batch`` takes several turns (one batch a round);
more than this many is not planned."""


@lru_cache(maxsize=1 << 14)
def turn_table(slo_ms: float, max_batch: int, u: float) -> np.ndarray:
    """Per number of turns ``k = 1 .. MAX_TURNS``, a row ``(slo / (1 + k u), k M - c_k, s_k, 1 + k u)``:
    the cycle the SLO allows with ``k`` rounds of waiting, the cover's numerator and slope (the
    envelope ``c_k + s_k m`` of the quantile batch, tight near ``k M`` arrivals: ``k`` full batches
    hold a window of mean ``m`` while ``c_k + s_k m <= k M``), and the window in cycles.
    Independent of the rate, so the bisections on the rate and the relaxations share it; an array
    (read-only: it is cached) because the compiled slot maths read it."""
    rows = []
    for k in range(1, MAX_TURNS + 1):
        c, s = envelope(k * max_batch)  # arrivals over k rounds are about k M: the line is tight there
        rows.append((slo_ms / (1.0 + k * u), k * max_batch - c, s, 1.0 + k * u))
    table = np.array(rows, dtype=np.float64)
    table.flags.writeable = False
    return table


@njit(cache=True)
def own_limit(table: np.ndarray, r: float) -> tuple[float, int]:
    """``(hi, k)``: the longest cycle a member at ``r`` requests/ms allows by itself, the best over
    ``k`` turns of ``min(slo / (1 + k u), (k M - c_k) / (s_k r (1 + k u)))`` (``table``:
    :func:`turn_table`), and the ``k`` giving it (``-inf`` where no ``k`` allows any). The slot
    maths' ``hi``, and what every relaxation of it must allow too. Compiled: :func:`item_line`
    and the duty cycle's capacity search call it."""
    hi, at = -math.inf, 1
    for k in range(table.shape[0]):
        lat, cover, sk, rounds = table[k, 0], table[k, 1], table[k, 2], table[k, 3]
        if lat <= hi:  # the latency limit only falls with k
            break
        h = min(lat, cover / (sk * r * rounds)) if r > 0 else lat
        if h > hi:
            hi, at = h, k + 1
    return hi, at


@njit(cache=True)
def item_line(rate: float, base: float, per: float, M: int, slo: float, u: float, turns: np.ndarray,
              env: np.ndarray) -> tuple[float, float, float]:
    """An item's ``(A, B, hi)`` at ``rate`` rps (:func:`item` says what they are), for a model of
    ``max_batch`` ``M`` and SLO ``slo`` running at ``(base, per)`` on the slot; ``turns``: its
    :func:`turn_table`, ``env``: :func:`arrivals.envelope_table` up to ``M``. Compiled, and the
    one source of the line: :meth:`ItemMaker.line` calls it, and so does the duty cycle's capacity
    search (:func:`_duty_alone`), 47 times a profile."""
    r = rate / 1000.0
    if r <= 0:
        return base + per, 0.0, slo / (1.0 + u)
    hi, turns_at_hi = own_limit(turns, r)
    # The load of a cycle is the larger of two things. Its turn in a round: the quantile batch of
    # its window (the line above), never more than a full batch. And the long run: one batch a
    # cycle, one more per ``max_batch`` arrivals, ``base + (per + base / M) r d``. The larger of
    # two lines is convex, so on [0, hi] (a feasible group never runs a cycle above any member's
    # hi) the chord from 0 to hi bounds it: that chord is the item's (A, B).
    row = envelope_row(min(r * slo / 2.0, float(M)))
    c, s = env[row, 0], env[row, 1]
    beta = per * s * r
    qa, qb = max((base + per * c) / (1.0 + beta), base), beta / (1.0 + beta) * (1.0 + u)
    fa, fb = base + per * M, 0.0
    d = max(hi, 1e-9)
    if fa + fb * d < qa + qb * d:  # the cheaper of the two at hi, the quantile's on a tie
        Ar, Br = fa, fb
    else:
        Ar, Br = qa, qb
    # One turn covers every window up to hi: one batch a cycle. Else one more per M arrivals.
    Bs = per * r if turns_at_hi == 1 else (per + base / M) * r
    A = max(Ar, base)
    B = max(0.0, (max(Ar + Br * d, base + Bs * d) - A) / d)
    return A, B, hi


_LOG_GRID = math.log(REF_GRID)


@njit(cache=True)
def envelope_row(m_ref: float) -> int:
    """The row of :func:`arrivals.envelope_table` that :func:`arrivals.envelope` reads at
    ``m_ref``: its grid point, ``m_ref`` rounded down (``tests/test_slot.py`` checks both agree)."""
    return math.floor(math.log(max(m_ref, 1e-4)) / _LOG_GRID) - ENVELOPE_FROM


def item(model: Model, rate: float, st: SlotType, u: float) -> Item:
    """One replica of ``model`` serving ``rate`` rps on slot type ``st`` at usable share ``u``.

    Its batch holds the arrivals of a window ``T = d + C - l`` (the cut, then the *other*
    members' batches), at most ``c + s r T`` (``arrivals.envelope``), so its run ``l`` satisfies
    ``l <= base + per c + beta (d + C - l)`` with ``beta = per s r``:
    ``l <= A + beta' (d + C)`` with ``A = (base + per c) / (1 + beta)``, ``beta' = beta / (1 + beta)``.
    Summed over the group with ``C <= u d`` that is ``C <= sum A + d sum B`` with
    ``B = beta' (1 + u)``. Alone on a slot (``C = l``) this gives back ``beta <= u``: the
    replica may keep the slot busy up to ``u``, as it can. The load also covers the long run:
    one batch per cycle plus one per ``max_batch`` arrivals, ``base (1 + r d / M) + per r d``.

    A window holding more than ``max_batch`` (``M``) requests is served over ``k`` turns, one
    batch a round: a request may wait ``d + k C``, and ``k`` must cover what arrives meanwhile,
    ``c + s r (1 + k u) d <= k M``. So ``hi`` is the best over ``k`` of the largest ``d`` with
    ``(1 + k u) d <= slo`` and that cover (:func:`own_limit`).
    """
    return ItemMaker(model, st, u)(rate)


LONE_FILL = 1.0 - 1e-6
"""A lone-only item's ``A`` is this share of ``u hi``: its window is ``[A / u, hi]``, so adding any
member with ``A + B hi`` over ``1e-6 u hi`` (a millionth of its SLO) empties it."""


def lone_capacity(model: Model, st: SlotType, u: float) -> float:
    """The most rps one replica alone on this slot type serves as its requests come, within its SLO
    and ``u`` of its full-batch throughput, its batches capped where a cap below ``max_batch``
    serves more (``packer.queue.capped_capacity``); 0 where it does not fit the slot's memory or
    even a trickle's bound is over the SLO at every cap."""
    if model.memory_gb > st.memory_gb * model.gpus_per_replica + 1e-9:
        return 0.0
    base, per = latency_scale(model, st)
    per_stream = model.traffic.per_stream_rps
    key = (model.max_batch, model.slo_ms, base, per, u, per_stream)
    cap = _LONE.get(key)
    if cap is None:
        if len(_LONE) >= CAPACITY_CACHE:
            _LONE.clear()
        cap = capped_capacity(base, per, model.max_batch, model.slo_ms, u)[0]
        if per_stream is not None and cap > 0:
            # Sticky streams: the most rps whose streams at the quantile stay within it (lone_rate).
            top = cap
            cap = largest(lambda r: stream_rate(r, per_stream) <= top) * (1 - 1e-9)
        _LONE[key] = cap
    return cap


def lone_rate(model: Model, rate: float) -> float:
    """The rate a replica alone, served as its requests come, is sized for at ``rate``: ``rate``
    itself, or where the model's requests come as sticky streams, the rate of its streams at the
    quantile of their count (``arrivals.stream_rate``): a queue at its limit cannot take a replica
    that holds more streams than its share for minutes."""
    per_stream = model.traffic.per_stream_rps
    return rate if per_stream is None else stream_rate(rate, per_stream)


class ItemMaker:
    """:func:`item` for one model on one slot type at any rate. What does not depend on the rate
    (the scaled profile, the envelope of each number of turns: :func:`turn_table`) is worked out
    once, so that the bisections on the rate (``single_capacity``) cost a few operations a step,
    not an envelope per turn: planning 500 models spent 4.4 s there.
    """

    __slots__ = ("model", "st", "u", "base", "per", "turns")

    def __init__(self, model: Model, st: SlotType, u: float) -> None:
        self.model, self.st, self.u = model, st, u
        self.base, self.per = latency_scale(model, st)
        self.turns = turn_table(model.slo_ms, model.max_batch, u)

    def __call__(self, rate: float) -> Item:
        A, B, hi = self.line(rate)
        if window(A, B, hi, self.u) is None and self.lone_serves(rate):
            hi = self.model.slo_ms
            return Item(self.model, rate, self.base, self.per, LONE_FILL * self.u * hi, 0.0, hi, lone=True)
        return Item(self.model, rate, self.base, self.per, A, B, hi)

    def alone(self, rate: float) -> bool:
        """Whether one replica at ``rate`` fits the slot by itself under the duty cycle's maths."""
        A, B, hi = self.line(rate)
        return window(A, B, hi, self.u) is not None

    def lone_serves(self, rate: float) -> bool:
        """Whether one replica at ``rate`` alone, served as its requests come, meets its SLO."""
        return 0.0 < rate <= lone_capacity(self.model, self.st, self.u)

    def line(self, rate: float) -> tuple[float, float, float]:
        """The item's ``(A, B, hi)`` at ``rate`` (:func:`item_line`)."""
        M = self.model.max_batch
        return item_line(float(rate), float(self.base), float(self.per), int(M), float(self.model.slo_ms),
                         float(self.u), self.turns, envelope_table(M))


def lone_result(it: Item, memory_gb: float, u: float) -> SlotResult | None:
    """One replica alone on its slot, served as its requests come (``packer/queue.py``): its bound
    and busy share, or None where that does not meet its SLO within ``u``. No duty cycle (0): the
    Triton writer renders no queue delay, and the simulator cuts a batch as the slot frees."""
    m = it.model
    if it.rate <= 0:
        return None
    sized = lone_rate(m, it.rate)
    capped = lone_cap(m, it.base, it.per_item, sized, u)
    if capped is None:
        return None
    cap, bound = capped
    sized_share = busy_share(sized, it.base, it.per_item, cap)  # what u caps
    share = busy_share(it.rate, it.base, it.per_item, cap)
    L = full_run(it.base, it.per_item, cap)
    member = MemberResult(m.name, cap, share, m.memory_gb, bound, m.slo_ms, it.rate)
    pressures = {"memory": m.memory_gb / memory_gb, "compute": sized_share / u, f"slo:{m.name}": bound / m.slo_ms}
    binding = max(pressures, key=lambda k: pressures[k])
    if binding == "memory":
        reason = f"memory {m.memory_gb:.1f}/{memory_gb:.1f} GB is the limit"
    elif binding == "compute":
        reason = (f"alone, batches sent as the slot frees: {it.rate:.1f} rps is {share:.0%} of what "
                  f"full batches of {cap} serve (cap {u:.0%})")
    else:
        reason = (f"{m.name} alone, batches sent as the slot frees: the batch running, then the queue "
                  f"ahead in batches of {cap} ({L:.1f} ms each) = {bound:.1f} ms of its {m.slo_ms:g} ms SLO")
    if cap < m.max_batch:
        reason += f"; batches capped at {cap} of max_batch {m.max_batch}, whose full runs would miss the SLO"
    if sized > it.rate * (1 + 1e-9):
        reason += (f"; sized for {sized:.1f} rps ({sized_share:.0%}), its sticky streams at the 99.9 % level "
                   f"of their count")
    return SlotResult(0.0, (member,), m.memory_gb, memory_gb, sized_share, binding, reason, L)


def lone_cap(model: Model, base: float, per: float, sized: float, u: float) -> tuple[int, float] | None:
    """``(cap, bound)``: the batch cap a lone replica at ``sized`` rps is served with, and its p99
    bound; None where no cap meets its SLO within ``u``. ``max_batch`` wherever it serves (as
    before caps existed, and the most headroom for traffic); else, of the smaller caps
    (``packer.queue.lone_caps``), the one with the most headroom on its SLO and on ``u`` alike."""
    slo, M = model.slo_ms, model.max_batch
    best: tuple[float, int, float] | None = None
    for b in lone_caps(base, per, M, slo):
        share = busy_share(sized, base, per, b)
        if share > u + 1e-9:
            break  # a smaller cap's throughput is lower still
        bound = queue_bound(sized, base, per, b)
        if bound > slo + 1e-9:
            continue
        if b == M:
            return M, bound
        pressure = max(bound / slo, share / u)
        if best is None or pressure < best[0]:
            best = (pressure, b, bound)
    return None if best is None else (best[1], best[2])


def feasible(items: list[Item], memory_gb: float, u: float) -> bool:
    """The O(n) test: memory fits and some duty cycle satisfies the round and every SLO."""
    if sum(i.model.memory_gb for i in items) > memory_gb + 1e-9:
        return False
    return duty_window(items, u) is not None


def duty_window(items: list[Item], u: float) -> tuple[float, float] | None:
    """The feasible range ``[lo, hi]`` of duty cycles (ms), or None."""
    if not items:
        return (0.0, math.inf)
    return window(sum(i.A for i in items), sum(i.B for i in items), min(i.hi for i in items), u)


def window(sa: float, sb: float, hi: float, u: float) -> tuple[float, float] | None:
    """:func:`duty_window` from the group's sums of ``A`` and ``B`` and its least ``hi``."""
    if sb >= u:
        return None
    lo = sa / (u - sb)
    if lo > hi + 1e-9 or hi <= 0:
        return None
    return (lo, max(lo, hi))


@dataclass(frozen=True)
class MemberResult:
    name: str
    batch_size: int
    """The batch this replica is provisioned for: the window's arrivals at the quantile level."""
    share: float
    """Fraction of the duty cycle this member's provisioned batch takes."""
    memory_gb: float
    p99_bound_ms: float
    slo_ms: float
    rate: float


@dataclass(frozen=True)
class SlotResult:
    duty_cycle_ms: float
    members: tuple[MemberResult, ...]
    memory_gb: float
    memory_capacity_gb: float
    compute_share: float
    """The round (one provisioned batch of every member) over the duty cycle; at most ``u``. A
    replica alone: its busy share at the rate it is sized for (``lone_rate``), which is more than
    its member's share where sticky streams keep a reserve for their count."""
    binding: str
    """Which constraint is closest to its limit: ``memory``, ``compute`` or ``slo:<model>``."""
    reason: str
    round_ms: float = 0.0
    """``C``: one provisioned batch of every member, the most a request waits for the slot."""


@dataclass(frozen=True)
class Round:
    """The exact numbers of a group at duty cycle ``d``: batches, round, turns, bounds."""

    batches: tuple[int, ...]
    runs: tuple[float, ...]
    round_ms: float
    turns: tuple[int, ...]
    """Rounds each member needs for its window (0: none within MAX_TURNS)."""
    bounds: tuple[float, ...]


def turns(rate: float, max_batch: int, d: float, round_ms: float, run_ms: float = 0.0) -> int:
    """Rounds a member needs to serve a window's arrivals at the quantile level: the fewest ``k``
    with ``batch_bound(r (d + k C - l)) <= k M`` (0 when none up to MAX_TURNS). Over ``k`` rounds
    the last batch holds what arrived since the first was cut: the cut and ``k`` rounds, less its
    own run."""
    r = rate / 1000.0
    for k in range(1, MAX_TURNS + 1):
        if batch_bound(r * (d + k * round_ms - run_ms)) <= k * max_batch:
            return k
    return 0


def round_at(items: list[Item], d: float, u: float) -> Round:
    """Batches and bounds of a group at cycle ``d`` with Poisson quantiles, not the lines.

    Each member's window is ``T_i = d + C - l_i``. Start every window at ``(1 + u) d``, which
    the lines guarantee is above every solution, and iterate: ``C`` grows with the windows at a
    slope below 1, so the iterates stay above the largest solution and fall towards it. A
    member's bound is ``d + k C``: the cut, then ``k`` rounds (its own batch last in each).
    """
    T = [(1.0 + u) * d] * len(items)
    batches, runs, C = [], [], 0.0
    for _ in range(12):
        batches = [i.batch_at(t) for i, t in zip(items, T)]
        runs = [i.run_ms(b) for i, b in zip(items, batches)]
        C = sum(runs)
        nxt = [d + C - r for r in runs]
        if all(n >= t - 1e-9 for n, t in zip(nxt, T)):
            break
        T = [min(t, n) for t, n in zip(T, nxt)]
    ks = [turns(i.rate, i.model.max_batch, d, C, r) for i, r in zip(items, runs)]
    bounds = tuple(d + k * C if k > 0 else math.inf for k in ks)
    return Round(tuple(batches), tuple(runs), C, tuple(ks), bounds)


def evaluate(items: list[Item], memory_gb: float, u: float, *, lone: bool = True) -> SlotResult:
    """Choose the duty cycle of a feasible group and report batches, shares and p99 bounds.

    The cycle minimises the larger of the round's load (relative to ``u``) and the worst member's
    latency bound (relative to its SLO): equal headroom on both sides, where neither traffic growth
    nor a slow batch tips the slot over first. A replica alone is served as its requests come, with
    no cycle (:func:`lone_result`), where that gives the lower bound or no cycle serves its rate
    (``lone=False``: the duty cycle's numbers wherever they exist, as the worked examples show them).
    """
    alone = lone_result(items[0], memory_gb, u) if len(items) == 1 and (lone or items[0].lone) else None
    if len(items) == 1 and items[0].lone:
        if alone is None:
            raise ValueError("infeasible group: " + items[0].model.name)
        return alone
    win = duty_window(items, u)
    if win is None:
        raise ValueError("infeasible group: " + ", ".join(i.model.name for i in items))
    duty = _duty_result(items, memory_gb, u, win)
    # Alone, the replica is served whichever way gives the lower bound.
    if alone is not None and alone.members[0].p99_bound_ms < duty.members[0].p99_bound_ms:
        return alone
    return duty


def _duty_result(items: list[Item], memory_gb: float, u: float, win: tuple[float, float]) -> SlotResult:
    """:func:`evaluate` of a group under the duty cycle, in its feasible window ``win``."""
    lo, hi = win

    def pressure(d: float) -> tuple[float, float]:
        comp = sum(i.load(d) for i in items) / (u * d) if d > 0 else math.inf
        lat = (1.0 + u) * d / min(i.model.slo_ms for i in items)
        return comp, lat

    # compute pressure falls and latency pressure rises with d: bisect for the crossing.
    a, b = lo, hi
    if pressure(b)[0] >= pressure(b)[1]:
        d = b
    elif pressure(a)[1] >= pressure(a)[0]:
        d = a
    else:
        for _ in range(60):
            m = (a + b) / 2
            c, l = pressure(m)
            if c > l:
                a = m
            else:
                b = m
        d = b
    d = on_grid(d, lo, hi)
    rd = round_at(items, d, u)
    members = [MemberResult(it.model.name, bt, run / d, it.model.memory_gb, bound, it.model.slo_ms, it.rate)
               for it, bt, run, bound in zip(items, rd.batches, rd.runs, rd.bounds)]
    turns_of = {m.name: k for m, k in zip(members, rd.turns)}
    mem = sum(i.model.memory_gb for i in items)
    comp = rd.round_ms / d
    pressures = {"memory": mem / memory_gb, "compute": comp / u}
    for m in members:
        pressures[f"slo:{m.name}"] = m.p99_bound_ms / m.slo_ms
    binding = max(pressures, key=lambda k: pressures[k])
    if binding == "memory":
        reason = f"memory {mem:.1f}/{memory_gb:.1f} GB is the limit"
    elif binding == "compute":
        reason = f"a round of batches takes {comp:.0%} of a {d:.1f} ms duty cycle (cap {u:.0%})"
    else:
        m = next(m for m in members if f"slo:{m.name}" == binding)
        k = turns_of[m.name]
        rounds = "a round of batches" if k <= 1 else f"{k} rounds of batches"
        reason = (f"{m.name}: cut {d:.1f} ms + {rounds} {m.p99_bound_ms - d:.1f} ms = "
                  f"{m.p99_bound_ms:.1f} ms of its {m.slo_ms:g} ms SLO")
    return SlotResult(d, tuple(members), mem, memory_gb, comp, binding, reason, rd.round_ms)


CYCLE_STEPS_PER_MS = 1000
"""Plans state duty cycles in whole microseconds."""


def on_grid(d: float, lo: float, hi: float) -> float:
    """``d`` on the microsecond grid and inside ``[lo, hi]``, the group's feasible cycles: down
    where that stays at or above ``lo``, else up where that stays at or below ``hi``, else ``d``.
    The plan used to floor the cycle after the batches were worked out: a slot at its least
    cycle (13.01718 ms) was written as 13.017 ms, where its round (11.0646 ms) is over 85 %, and
    the plan's own check (``packer.check.check_plan``) rejected it (found by fuzzing: one model,
    four replicas, batches of ``max_batch``). The batches and bounds are now worked out at the cycle the plan states."""
    down = math.floor(d * CYCLE_STEPS_PER_MS) / CYCLE_STEPS_PER_MS
    if lo <= down <= hi:
        return down
    up = math.ceil(d * CYCLE_STEPS_PER_MS) / CYCLE_STEPS_PER_MS
    return up if lo <= up <= hi else d


def single_capacity(model: Model, st: SlotType, u: float) -> float:
    """Highest rate (rps) one replica alone on this slot type can serve within SLO; 0 if none.

    The larger of the duty cycle's (:func:`duty_capacity`) and that of the replica served as its
    requests come (:func:`lone_capacity`); every rate up to it is served one way or the other
    (:func:`item`).
    """
    return max(duty_capacity(model, st, u), lone_capacity(model, st, u))


def duty_capacity(model: Model, st: SlotType, u: float) -> float:
    """Highest rate (rps) one replica alone on this slot type serves within SLO under the duty
    cycle's maths; 0 if none. The slot maths' own test, bisected on the rate (feasibility only
    shrinks as the rate grows)."""
    if model.memory_gb > st.memory_gb * model.gpus_per_replica + 1e-9:
        return 0.0
    # The bisection reads the model's batch and SLO and the slot's latency line alone, so slot
    # types that run the model at one speed (an A100-40's and an A100-80's, two MIG profiles of
    # one compute size) share it, and so do the plan's problems of one fleet (with and without
    # MIG): at 2000 models this was about half of the greedy stage (cProfile), most of it repeats.
    # The key is read before the bisection's tables are built: a hit costs a lookup (3000 models
    # asked 325,000 times, and building the tables for each was 7 s of a 2-s plan's 56 s).
    base, per = latency_scale(model, st)
    key = (model.max_batch, model.slo_ms, base, per, u)
    cap = _CAPACITIES.get(key)
    if cap is None:
        if len(_CAPACITIES) >= CAPACITY_CACHE:
            _CAPACITIES.clear()
        cap = _CAPACITIES[key] = _compiled_capacity(model, base, per, u)
    return cap


CAPACITY_CACHE = 1 << 16
"""Most entries :func:`single_capacity` keeps (cleared when full: a long-lived reconciler plans
many fleets)."""
_CAPACITIES: dict[tuple[int, float, float, float, float], float] = {}
_LONE: dict[tuple[int, float, float, float, float], float] = {}


def _bisected_capacity(maker: "ItemMaker") -> float:
    """:func:`duty_capacity`'s bisection on :meth:`ItemMaker.alone`: what :func:`_compiled_capacity`
    computes compiled, kept as the reference it is tested against."""
    ok = maker.alone
    if not ok(0.0):
        return 0.0
    # 37 halvings of a bracket [x, 2x] leave it within 1e-11 of the rate, below the 1e-9 given
    # up: the default 50 cost a third more (a plan computes 16 of these per model).
    return largest(ok, steps=37) * (1 - 1e-9)


def warm() -> None:
    """Compile the slot maths' kernels (or load them from numba's cache) now, before a plan's
    clock: the line and its own limit as Python calls them, and the duty cycle's capacity search."""
    turns, env = turn_table(100.0, 2, 0.85), envelope_table(2)
    own_limit(turns, 0.1)
    item_line(1.0, 1.0, 0.1, 2, 100.0, 0.85, turns, env)
    _duty_largest(1.0, 0.1, 2, 100.0, 0.85, turns, env)


def _compiled_capacity(model: Model, base: float, per: float, u: float) -> float:
    """:func:`_bisected_capacity` of ``ItemMaker(model, st, u)`` for a slot type running the model
    at ``(base, per)``, compiled: the same bisection, step for step (``tests/test_slot.py`` checks
    that they agree to the bit). A 2,000-model plan bisects 19,000 profiles, 47 steps each; in
    Python that was 4 s of its 5.7-s capacity table."""
    lo = _duty_largest(float(base), float(per), int(model.max_batch), float(model.slo_ms), float(u),
                       turn_table(model.slo_ms, model.max_batch, u), envelope_table(model.max_batch))
    return 0.0 if lo < 0 else lo * (1 - 1e-9)


_window = njit(cache=True)(window)
""":func:`window`, compiled from the same source for :func:`_duty_alone`."""


@njit(cache=True)
def _duty_alone(rate: float, base: float, per: float, M: int, slo: float, u: float, turns: np.ndarray,
                env: np.ndarray) -> bool:
    """:meth:`ItemMaker.alone`: :func:`item_line`, then whether :func:`window` is open."""
    A, B, hi = item_line(rate, base, per, M, slo, u, turns, env)
    return _window(A, B, hi, u) is not None


@njit(cache=True)
def _duty_largest(base: float, per: float, M: int, slo: float, u: float, turns: np.ndarray,
                  env: np.ndarray) -> float:
    """:func:`largest` of :func:`_duty_alone` at 37 halvings; -1 where not even a trickle fits."""
    if not _duty_alone(0.0, base, per, M, slo, u, turns, env):
        return -1.0
    lo, hi = 0.0, 1.0
    while _duty_alone(hi, base, per, M, slo, u, turns, env):
        lo, hi = hi, hi * 2
        if hi > 1e9:
            return lo
    for _ in range(37):
        mid = (lo + hi) / 2
        if _duty_alone(mid, base, per, M, slo, u, turns, env):
            lo = mid
        else:
            hi = mid
    return lo


def largest(ok: Callable[[float], bool], *, ceiling: float = 1e9, steps: int = 50) -> float:
    """The largest ``x >= 0`` with ``ok(x)`` (``ok`` true on ``[0, x*]``), to ``steps`` halvings:
    doubling to a bracket, then bisection. How much rate a slot or a group takes, everywhere."""
    lo, hi = 0.0, 1.0
    while ok(hi):
        lo, hi = hi, hi * 2
        if hi > ceiling:
            return lo
    for _ in range(steps):
        mid = (lo + hi) / 2
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return lo


def relaxed_limit(model: Model, rate: float, st: SlotType, u: float) -> tuple[float, float, float]:
    """``(A, B, hi)`` of a relaxation of :func:`item`: every group the slot maths admits, this
    admits too (smaller ``A`` and ``B``, larger ``hi``: one request per batch, mean arrivals,
    latency ``d + l``, and the member's own limit over its turns, :func:`own_limit`, which
    :func:`item`'s ``hi`` is). For lower bounds and the exact search, never for plans.

    (It used to cap ``d`` at ``(max_batch - 1) / r``, one turn's mean, which a member taking many
    turns exceeds: at ``max_batch`` 2 and ``u = 0.85``, 20 turns allow ``r d`` up to 1.03.)"""
    base, per = latency_scale(model, st)
    A = base + per
    B = per * rate / 1000.0
    if duty_capacity(model, st, u) < rate <= lone_capacity(model, st, u):
        # Served only alone, as its requests come: it needs no cycle at all, so any cycle long
        # enough for its fixed part (B stays below u: the rate is within u of full batches'
        # throughput). Below the duty cycle's capacity the duty relaxation admits it alone anyway.
        return A, B, LONE_RELAXED_HI
    hi = (model.slo_ms - A) / (1.0 + B)
    if rate > 0:
        hi = min(hi, own_limit(turn_table(model.slo_ms, model.max_batch, u), float(rate) / 1000.0)[0])
    return A, B, hi


LONE_RELAXED_HI = 1e12
""":func:`relaxed_limit`'s cycle limit for a replica a slot can serve alone as its requests come:
unbounded, in ms a solver still takes."""


def model_slot_types(fleet: Fleet, model: Model) -> list[SlotType]:
    """Slot types that could host a replica of this model (memory only; SLO checked elsewhere)."""
    out = []
    for pool in fleet.pools:
        if model.gpus_per_replica > 1:
            st = SlotType(pool)
            if model.memory_gb / model.gpus_per_replica <= st.memory_gb and pool.max_gpus >= model.gpus_per_replica \
                    and model.gpus_per_replica <= pool.gpus_per_node:
                out.append(st)
            continue
        for st in slot_types(pool):
            if model.memory_gb <= st.memory_gb:
                out.append(st)
    return out


def check_model_servable(fleet: Fleet, model: Model, where: str, u: float) -> None:
    """Raise a FleetError naming the model if no slot of any pool can serve it at all."""
    if model.gpus_per_replica > 1:
        fits = [p for p in fleet.pools if model.memory_gb / model.gpus_per_replica <= gpu_type(p.gpu).usable_gb]
        if not fits:
            best = max(gpu_type(p.gpu).usable_gb for p in fleet.pools)
            raise FleetError(f"{where}.memory_gb", f"{model.memory_gb} GB over {model.gpus_per_replica} GPUs needs "
                             f"{model.memory_gb / model.gpus_per_replica:.1f} GB per GPU, more than any pool offers "
                             f"({best} GB usable)", "raise gpus_per_replica or add a pool with larger GPUs")
        if not any(p.gpus_per_node >= model.gpus_per_replica for p in fits):
            raise FleetError(f"{where}.gpus_per_replica", f"{model.gpus_per_replica} GPUs on one node, but no pool "
                             "has that many per node", "lower gpus_per_replica or add a pool with larger nodes")
    sts = model_slot_types(fleet, model)
    if not sts:
        best = max(gpu_type(p.gpu).usable_gb for p in fleet.pools)
        raise FleetError(f"{where}.memory_gb", f"{model.memory_gb} GB is larger than any slot ({best} GB usable "
                         "on the largest GPU)", "reduce the model's memory (quantise, smaller max_batch), set "
                         "gpus_per_replica, or add a pool with larger GPUs")
    # One slot type that serves it is enough here; every type's capacity (a bisection each, 14
    # types on two MIG pools: 25 s of parsing at 500 models) only where max_replicas asks for it.
    if not any(single_capacity(model, st, u) > 0 for st in sts):
        fastest = min(sts, key=lambda st: sum(latency_scale(model, st)))
        per_stream = model.traffic.per_stream_rps
        alone = capped_capacity(*latency_scale(model, fastest), model.max_batch, model.slo_ms, u)[0]
        if per_stream is not None and alone > 0:
            # Served alone as its requests come, a replica takes alone rps; one stream sends more.
            raise FleetError(f"{where}.traffic.streams",
                             f"{per_stream:.1f} chunks a second a stream ({model.traffic.rps:g} rps over "
                             f"{model.traffic.streams}), and a stream's chunks all go to one replica; alone on the "
                             f"fastest slot ({fastest.key}) a replica serves at most {alone:.1f} a second within "
                             f"slo_ms {model.slo_ms:g}, and no duty cycle serves the model",
                             f"send the traffic as more, lighter streams (at least "
                             f"{math.floor(model.traffic.rps / alone) + 1}, so that one fits a replica) "
                             "or raise slo_ms")
        A = sum(latency_scale(model, fastest))
        # The least SLO anything serves: a replica alone with batches of one (``queue.lone_caps``),
        # whose request may wait out the one before it, two runs of ``A``; a shared cycle needs
        # more (its cut, at least ``A / u``, then its run).
        need = 2.0 * A
        raise FleetError(f"{where}.slo_ms", f"{model.slo_ms:g} ms cannot be met by any batch size: even one "
                         f"request takes {A:.1f} ms on the fastest slot ({fastest.key}) and may wait out "
                         f"another's run first, a worst case of {need:.1f} ms",
                         f"raise slo_ms to at least {math.ceil(need)} or add a faster GPU pool")
    if model.spot_policy == "never" and not any(single_capacity(model, st, u) > 0 for st in sts if not st.pool.spot):
        # Else the planner finds no slot it may use and can only say that it fits none.
        raise FleetError(f"{where}.spot_policy", "is never, but every pool that can serve the model is spot",
                         "add an on-demand pool it fits (a pool without `spot: true`) or set spot_policy: floor")
    if model.max_replicas is not None and model.traffic.peak_rps > 0:
        best = max(single_capacity(model, st, u) for st in sts)
        if best * model.max_replicas < model.traffic.peak_rps:
            raise FleetError(f"{where}.max_replicas", f"{model.max_replicas} replicas serve at most "
                             f"{best * model.max_replicas:.1f} rps within the SLO, below peak_rps "
                             f"{model.traffic.peak_rps:g}", f"raise max_replicas to at least "
                             f"{math.ceil(model.traffic.peak_rps / best)} or relax slo_ms")


def servable(budget_ms: float, base: float, per_item: float, max_batch: int) -> int:
    """Most requests one instance can finish within ``budget_ms``: ``k`` batches of ``n`` each,
    ``k * (base + per_item * n) <= budget_ms``, ``n <= max_batch``, best ``k * n`` over ``k``.

    The queue bound of a Triton model: the Triton writer sets ``max_queue_size`` from it and the
    simulator refuses arrivals past it, so both read it from here.
    """
    best = 0
    for k in range(1, 100_000):
        slot = budget_ms / k - base
        if slot < per_item or (per_item == 0 and slot < 0):
            break
        n = max_batch if per_item == 0 else min(max_batch, math.floor(slot / per_item))
        best = max(best, k * n)
    return best
