"""Arrival processes: every model's request times, generated a time window at a time with numpy.

Each model gets its own random stream, seeded from ``(seed, crc32(model name))``, so two plans or
two policies compared on one seed see exactly the same requests, and adding a model does not
change the others' traffic.

Poisson traffic with a time-varying rate uses time rescaling: unit-rate Poisson points (a cumsum of
exponentials) are mapped through the inverse of the integrated rate ``Λ(t)`` with ``np.interp``.
That is exact for a rate that is piecewise constant over ``grid_s`` and costs a few array passes
per request, no Python per request. Streams are sessions that start as a Poisson process and send
one chunk every ``interval = streams / rps`` seconds while they last; their chunks within a window
are laid out on a rounds × streams grid, which comes out in time order without a sort.

Limits. A scenario's numbers may be as large as YAML allows, so what a run would cost is checked
before anything is drawn (:func:`check_load`, from the expected request count, cheap): at most
:data:`MAX_REQUESTS` requests over the run (time) and :data:`MAX_DRAW` in the fleet's busiest window
(memory). The expectation can be wrong (a burst that lasts, a huge batch job), so every numpy draw
is also checked against :data:`MAX_DRAW` before it is allocated (:func:`_check_draw`), and the
requests actually drawn against :data:`MAX_REQUESTS` (:class:`Blocked`). Both refuse with a
:class:`~sims.scenario.ScenarioError`: one line, exit code 2.
"""

from __future__ import annotations

import csv
import fnmatch
import math
import os
import stat
import zlib
from array import array
from dataclasses import dataclass, replace
from typing import Callable, Iterator

import numpy as np

from packer.fleet import Fleet, Model
from packer.safeload import InputError, listing, read_text, show, size_text
from sims.scenario import Scenario, ScenarioError

EMPTY = np.empty(0)
MAX_REQUESTS = 5_000_000_000
"""Most requests one run may draw. The shipped scenarios are far below it: the largest, the
``diurnal`` day of ``multilingual-10`` (13,010 rps on average), is 1.1 G requests. Served requests
cost time, not memory (traffic is drawn and served a minute at a time). Measured on the shared
2-core VM: 486 M requests of the sweep's ``small`` plan (4 models, ``peak``, 21 h) in 17.7 s at
277 MB peak RSS, 27 M requests/s; docs/simulator.md has 3-9 M/s for larger fleets. So a run at the
cap takes 3-26 minutes of one core at ~300 MB. Requests left queued do cost memory:
``sims.engine.MAX_QUEUED`` bounds those."""
MAX_DRAW = 20_000_000
"""Most values one draw may allocate (a model's arrivals for a block, a grid of stream chunks, a
batch job's requests, a window's blocks held together), and most arrivals the fleet may expect in
one window (a minute: 333,000 rps). 160 MB per float64 array at the cap. Measured: ``small`` at
×40 peak traffic (1.8e7 arrivals a minute, the plan overloaded) ran until ``MAX_QUEUED`` stopped it
at t=210 s: 8 s, 1.36 GB peak RSS. The shipped fleets' busiest minute is 1.4 M arrivals
(``multilingual-10`` at peak)."""
_EST_POINTS = 20_000
"""Samples of the rate curve per model for :func:`expected_load` (one a minute up to ~2 weeks)."""


def _check_draw(n: float, what: str) -> None:
    """Refuse a draw of ``n`` numbers before numpy allocates them: the cap holds even where the
    up-front estimate (:func:`check_load`) was wrong. NaN and infinity are refused too."""
    if not n <= MAX_DRAW:
        raise ScenarioError(f"traffic: {what} would allocate {n:.3g} values at once, over the simulator's cap of "
                            f"{MAX_DRAW:,}. Fix: less traffic (traffic_scale, models[].scale, spikes[].factor, "
                            f"bursts[].high, batch_jobs[].size)")


def model_rng(seed: int, name: str, salt: int = 0) -> np.random.Generator:
    """A random stream that depends only on the seed and the model's name."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, zlib.crc32(name.encode()), salt])))


@dataclass
class Arrivals:
    times: np.ndarray
    """Arrival times in seconds, sorted."""
    streams: np.ndarray | None = None
    """Stream id of each arrival (sticky routing), or None for independent requests."""


class RateCurve:
    """The multiplier of a model's base rate over time: diurnal × spikes × bursts × scale."""

    def __init__(self, scenario: Scenario, model: Model, rng: np.random.Generator) -> None:
        ov = scenario.overrides(model.name)
        self.process = ov.process or scenario.process
        self.scale = ov.scale * scenario.traffic_scale
        t = model.traffic
        if self.process == "peak":
            self.base = t.peak_rps
        else:
            self.base = t.rps
        amp = scenario.diurnal.amplitude
        if amp is None:
            amp = min(1.0, t.peak_rps / t.rps - 1.0) if t.rps > 0 else 0.0
        self.amp = amp if self.process == "diurnal" else 0.0
        self.phase_h = scenario.start_hour + ov.tz_offset_h - scenario.diurnal.peak_hour
        self.spikes = [s for s in scenario.spikes if fnmatch.fnmatchcase(model.name, s.models)]
        bursts = [b for b in scenario.bursts if fnmatch.fnmatchcase(model.name, b.models)]
        self.burst = bursts[-1] if bursts else None
        self.rng = rng
        # Burst state path: switching times and the state after each, extended lazily.
        self._switch: list[float] = [0.0]
        self._state: list[int] = [0]

    def _extend_bursts(self, t1: float) -> None:
        b = self.burst
        assert b is not None
        while self._switch[-1] <= t1:
            s = self._state[-1]
            mean = b.mean_high_s if s else b.mean_low_s
            self._switch.append(self._switch[-1] + float(self.rng.exponential(mean)))
            self._state.append(1 - s)

    def smooth(self, t: np.ndarray) -> np.ndarray:
        """Multiplier at times ``t`` without the bursts: no random draw, so it can be estimated."""
        m = np.full(t.shape, self.scale)
        if self.amp:
            m *= 1.0 + self.amp * np.cos(2 * np.pi * (t / 3600.0 + self.phase_h) / 24.0)
        for s in self.spikes:
            up = np.clip((t - s.at_s) / s.rise_s, 0.0, 1.0) if s.rise_s > 0 else (t >= s.at_s).astype(float)
            down = np.clip(1.0 - (t - s.at_s - s.rise_s) / s.decay_s, 0.0, 1.0) if s.decay_s > 0 else \
                (t < s.at_s + s.rise_s).astype(float)
            m *= 1.0 + (s.factor - 1.0) * np.minimum(up, down)
        return m

    def __call__(self, t: np.ndarray) -> np.ndarray:
        """Multiplier at times ``t`` (seconds since start)."""
        m = self.smooth(t)
        if self.burst is not None and t.size:
            self._extend_bursts(float(t.max()))
            idx = np.searchsorted(np.asarray(self._switch), t, side="right") - 1
            high = np.asarray(self._state)[idx] == 1
            m = np.where(high, m * self.burst.high, m)
        return m


def _poisson_points(rng: np.random.Generator, total: float, what: str = "a Poisson source") -> np.ndarray:
    """Sorted points of a unit-rate Poisson process on ``[0, total)``; refused above :data:`MAX_DRAW`."""
    if total <= 0:
        return EMPTY
    _check_draw(total, what)
    n = int(total + 6.0 * math.sqrt(total) + 16)
    cs = np.cumsum(rng.standard_exponential(n))
    while cs[-1] < total:
        more = np.cumsum(rng.standard_exponential(n)) + cs[-1]
        cs = np.concatenate((cs, more))
    return cs[: np.searchsorted(cs, total)]


class PoissonSource:
    """Independent requests at rate ``base * curve(t)``."""

    def __init__(self, model: Model, curve: RateCurve, rng: np.random.Generator, grid_s: float) -> None:
        self.model, self.curve, self.rng, self.grid_s = model, curve, rng, grid_s

    def expected(self, t0: float, t1: float) -> float:
        edges = _edges(t0, t1, self.grid_s)
        return float(np.sum(self.rate(edges[:-1]) * np.diff(edges)))

    def rate(self, left: np.ndarray) -> np.ndarray:
        """Requests per second over grid cells starting at ``left``."""
        return self.curve.base * self.curve(left)

    def take(self, t0: float, t1: float) -> Arrivals:
        edges = _edges(t0, t1, self.grid_s)
        rate = self.rate(edges[:-1])
        cum = np.concatenate(([0.0], np.cumsum(rate * np.diff(edges))))
        pts = _poisson_points(self.rng, float(cum[-1]), f"{self.model.name} in [{t0:g}, {t1:g}) s")
        times = np.interp(pts, cum, edges)
        # Guard the window against float rounding at its upper edge.
        return Arrivals(np.minimum(times, np.nextafter(t1, t0)))


def _edges(t0: float, t1: float, g: float) -> np.ndarray:
    _check_draw((t1 - t0) / g, f"grid {g:g} s: its rate cells")
    k0 = math.floor(t0 / g)
    inner = np.arange(k0 + 1, math.ceil(t1 / g)) * g
    inner = inner[(inner > t0) & (inner < t1)]
    return np.concatenate(([t0], inner, [t1]))


class JobSource:
    """Requests in jobs of ``size``, spread over ``spread_s`` after each job's Poisson submission."""

    def __init__(self, model: Model, curve: RateCurve, rng: np.random.Generator, grid_s: float, size: int,
                 spread_s: float) -> None:
        self.jobs = PoissonSource(model, curve, rng, grid_s)
        self.size, self.spread_s, self.rng = size, spread_s, rng
        self.pending = EMPTY

    def take(self, t0: float, t1: float) -> Arrivals:
        # The job process runs at rate / size; scale the curve's base for this call only.
        base = self.jobs.curve.base
        self.jobs.curve.base = base / self.size
        try:
            sub = self.jobs.take(t0, t1).times
        finally:
            self.jobs.curve.base = base
        _check_draw(float(sub.size) * self.size, f"{self.jobs.model.name}'s batch jobs of {self.size} in "
                                                  f"[{t0:g}, {t1:g}) s")
        reqs = np.repeat(sub, self.size)
        if self.spread_s > 0 and reqs.size:
            reqs = reqs + self.rng.uniform(0.0, self.spread_s, reqs.size)
        allr = np.sort(np.concatenate((self.pending, reqs)))
        cut = np.searchsorted(allr, t1)
        self.pending = allr[cut:]
        return Arrivals(allr[:cut])


class StreamSource:
    """Streaming sessions: each sends a chunk every ``interval`` seconds while it lasts.

    The target is ``C(t) = streams * curve(t)`` live sessions, so the chunk rate is
    ``C / interval = rps * curve``. Sessions last an exponential ``D = session_s`` and start at rate
    ``max(0, C'(t) + C(t) / D)``: then ``dN/dt = starts - N / D`` keeps the expected live count on
    ``C`` even through a spike (×4 within a minute means a burst of new sessions, not a slow climb
    over ``D``). Falls faster than ``C / D`` are clipped: sessions only end as they end. At time 0 the
    process starts in its steady state, ``Poisson(C(0))`` sessions already running, random phases.
    """

    def __init__(self, model: Model, curve: RateCurve, rng: np.random.Generator, grid_s: float,
                 session_s: float) -> None:
        t = model.traffic
        assert t.streams is not None
        self.rng, self.session_s = rng, session_s
        self.interval = t.streams / t.rps if t.rps > 0 else math.inf
        self.concurrency = float(t.streams) * (curve.base / t.rps if t.rps > 0 else 0.0)
        self.starts = PoissonSource(model, curve, rng, grid_s)
        self.starts.rate = self._start_rate  # type: ignore[method-assign]
        self.grid_s = grid_s
        self.name = model.name
        self.start = self.end = EMPTY
        self.sid = np.empty(0, np.int64)
        self.next_sid = 0
        self._opened = False

    def _open(self) -> None:
        """The sessions already running at time 0, drawn at the first ``take`` (not when the source is
        built), so that a run's limits are checked before anything is allocated. Same draws, same
        order as before: nothing else uses this source's random streams in between."""
        self._opened = True
        if not math.isfinite(self.interval):
            return
        lam = self.concurrency * float(self.starts.curve(np.array([0.0]))[0])
        _check_draw(lam, f"{self.name}'s streams live at t=0")
        n0 = int(self.rng.poisson(lam))
        self.start = self.rng.uniform(-self.interval, 0.0, n0) if n0 else EMPTY
        self.end = self.rng.exponential(self.session_s, n0) if n0 else EMPTY
        self.sid = np.arange(n0, dtype=np.int64)
        self.next_sid = n0

    def _start_rate(self, left: np.ndarray) -> np.ndarray:
        c = self.starts.curve
        now = c(left)
        slope = (c(left + self.grid_s) - now) / self.grid_s
        return self.concurrency * np.maximum(0.0, slope + now / self.session_s)

    def take(self, t0: float, t1: float) -> Arrivals:
        if not self._opened:
            self._open()
        if not math.isfinite(self.interval):
            return Arrivals(EMPTY, np.empty(0, np.int64))
        new = self.starts.take(t0, t1).times
        if new.size:
            self.start = np.concatenate((self.start, new))
            self.end = np.concatenate((self.end, new + self.rng.exponential(self.session_s, new.size)))
            self.sid = np.concatenate((self.sid, np.arange(self.next_sid, self.next_sid + new.size)))
            self.next_sid += new.size
        live = self.end > t0
        self.start, self.end, self.sid = self.start[live], self.end[live], self.sid[live]
        if not self.start.size:
            return Arrivals(EMPTY, np.empty(0, np.int64))
        I = self.interval
        # Chunk k >= 1 of a stream comes at start + k*I. Order streams by phase within a round.
        phase = np.mod(self.start - t0, I)
        order = np.argsort(phase, kind="stable")
        ph, st, en, sid = phase[order], self.start[order], self.end[order], self.sid[order]
        rounds = int(math.ceil((t1 - t0) / I)) + 1
        _check_draw(float(rounds) * ph.size, f"{self.name}'s stream chunks in [{t0:g}, {t1:g}) s")
        times = t0 + np.arange(rounds)[:, None] * I + ph[None, :]
        ok = (times >= st[None, :] + I * 0.999999) & (times < en[None, :]) & (times < t1) & (times >= t0)
        return Arrivals(times[ok], np.broadcast_to(sid, times.shape)[ok])


class TraceSource:
    """Replay of recorded timestamps, looped if asked.

    ``times`` are seconds from the trace's origin (its earliest timestamp over all models) and
    ``span`` is the whole trace's length (its last timestamp plus a median gap), so the models of
    one trace keep their alignment, loop after loop: a packed group replays as it was recorded.
    """

    def __init__(self, times: np.ndarray, speed: float, loop: bool, span: float) -> None:
        self.t = np.sort(times) / speed
        self.span = span / speed
        self.loop = loop

    def take(self, t0: float, t1: float) -> Arrivals:
        if not self.t.size:
            return Arrivals(EMPTY)
        if not self.loop:
            return Arrivals(self.t[np.searchsorted(self.t, t0):np.searchsorted(self.t, t1)])
        out = []
        k = math.floor(t0 / self.span)
        _check_draw((t1 - t0) / self.span * self.t.size, f"trace loops in [{t0:g}, {t1:g}) s")
        while k * self.span < t1:
            off = k * self.span
            seg = self.t[np.searchsorted(self.t, t0 - off):np.searchsorted(self.t, t1 - off)] + off
            out.append(seg)
            k += 1
        return Arrivals(np.concatenate(out) if out else EMPTY)


class Tally:
    """Requests drawn so far by all of a run's sources, against :data:`MAX_REQUESTS`: the bound on
    time holds even where :func:`check_load`'s expectation was low (bursts that stayed high)."""

    def __init__(self) -> None:
        self.n = 0

    def add(self, n: int, t: float) -> None:
        self.n += n
        if self.n > MAX_REQUESTS:
            raise ScenarioError(f"traffic: {self.n:,} requests drawn by t={t:g} s, over the simulator's cap of "
                                f"{MAX_REQUESTS:,} a run. Fix: a shorter duration or less traffic (traffic_scale, "
                                f"spikes[].factor, bursts[].high)")


class Blocked:
    """A source drawn in fixed blocks of ``block_s`` and handed out in whatever windows the engine asks.

    The engine cuts time at policy ticks and cluster events, which differ between two policies; the
    random draws must not. Drawing fixed blocks makes a model's arrivals a function of the seed and
    the model alone, and amortises numpy's per-call cost over a minute of traffic. Windows must be
    asked for in order, each starting where the last ended.
    """

    def __init__(self, src: object, block_s: float = 60.0, tally: Tally | None = None, name: str = "a model") -> None:
        self.src, self.block_s, self.name = src, block_s, name
        self.tally = Tally() if tally is None else tally
        self.t = EMPTY
        self.s: np.ndarray | None = None
        self.upto = 0.0
        self.k = 0
        self.pos = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.src, name)

    def take(self, t0: float, t1: float) -> Arrivals:
        if self.upto < t1:
            parts_t, parts_s = [self.t[self.pos:]], [self.s[self.pos:]] if self.s is not None else None
            held = parts_t[0].size
            while self.upto < t1:
                self.k += 1
                b1 = self.k * self.block_s
                a = self.src.take(self.upto, b1)  # type: ignore[attr-defined]
                held += a.times.size
                self.tally.add(a.times.size, b1)
                # A window longer than a block (a long policy interval) holds several blocks at once.
                _check_draw(held, f"one window [{t0:g}, {t1:g}) s (at most one policy interval) of "
                                  f"{self.name}")
                parts_t.append(a.times)
                if a.streams is not None:
                    parts_s = (parts_s or []) + [a.streams]
                self.upto = b1
            self.t = np.concatenate(parts_t)
            self.s = np.concatenate(parts_s) if parts_s else None
            self.pos = 0
        i0 = self.pos
        i1 = i0 + int(np.searchsorted(self.t[i0:], t1))
        self.pos = i1
        return Arrivals(self.t[i0:i1], None if self.s is None else self.s[i0:i1])


MAX_TRACE_BYTES = 512 * 2**20
"""Largest trace file read (bytes). A trace is held in memory whole: the file's bytes, then its
text (both at once while it is decoded), then 8 bytes a request. Measured on the shared 2-core VM:
a day's trace of 19.5 M requests (422 MB) reads in 24 s at 0.99 GB peak RSS, so one at the cap
takes ~30 s and ~1.2 GB; ``trace: /dev/zero`` is refused after reading 512 MiB (1.7 s, 0.7 GB)
where it grew to 24 GB before. A line of a real trace is 20-30 bytes (``1733492211.123,asr-en``),
so the cap holds about 20 M requests, which is :data:`MAX_TRACE_ROWS`: a whole day of a fleet
serving 230 rps on average (five times ``llm-platform``'s 45 rps, whose day is 3.9 M requests,
~100 MB), or an average hour of ``multilingual-meetings`` (4,718 rps: 17 M requests). A denser
day cannot be held as a list of requests at all (``multilingual-10``: 1.1 G requests, 9 GB as
float64); replay an hour of it, looped (``loop: true``)."""
MAX_TRACE_ROWS = MAX_DRAW
"""Most requests a trace may hold: as many as one draw (160 MB as float64), since a trace's
requests are held in memory like a draw's. It also bounds a file of very short lines (``0,a``:
4 bytes) that :data:`MAX_TRACE_BYTES` alone would let through as 130 M requests."""
_TRACE_FIX = "give trace.file as a CSV of `timestamp,model` lines"
_trace_cache: tuple[tuple, dict[str, np.ndarray]] | None = None
"""The last trace read, keyed by its file's identity: one run reads it once, not once for its
load check, once per field the check blames and once for its sources (and a pipe can be read once)."""


def _trace_key(path: str) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None  # read_text says why
    if stat.S_ISREG(st.st_mode):
        return (path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if stat.S_ISFIFO(st.st_mode):
        return (path, st.st_dev, st.st_ino)  # what a pipe sent once is the trace for this run
    return None


def _lines(text: str) -> Iterator[str]:
    """The text's lines, each with its newline, one at a time: ``io.StringIO`` would copy the text
    at 4 bytes a character (2 GB for a trace at the cap), ``splitlines`` hold every line at once."""
    start, n = 0, len(text)
    while start < n:
        end = text.find("\n", start)
        if end < 0:
            yield text[start:]
            return
        yield text[start:end + 1]
        start = end + 1


def read_trace(path: str) -> dict[str, np.ndarray]:
    """``timestamp,model`` lines (a header line is allowed); timestamps in seconds, finite, any
    origin (negative ones too: the earliest becomes 0). Read through :func:`packer.safeload.read_text` (at most
    :data:`MAX_TRACE_BYTES`, UTF-8, a named pipe waits at most ``PIPE_WAIT_S``) and at most
    :data:`MAX_TRACE_ROWS` requests; anything wrong is one :class:`ScenarioError` line naming the
    file (and the line) and the fix."""
    global _trace_cache
    key = _trace_key(path)
    if key is not None and _trace_cache is not None and _trace_cache[0] == key:
        return _trace_cache[1]
    try:
        text = read_text(path, _TRACE_FIX, max_bytes=MAX_TRACE_BYTES,
                         whole=f"give a trace CSV file of at most {size_text(MAX_TRACE_BYTES)} and "
                               f"{MAX_TRACE_ROWS:,} requests (e.g. an hour of it; `loop: true` repeats it)")
    except InputError as e:
        raise ScenarioError(f"trace.file: {e}") from None
    per: dict[str, array] = {}
    rows = 0
    reader = csv.reader(_lines(text.removeprefix("\ufeff")))
    try:
        for i, row in enumerate(reader):
            line = reader.line_num
            if not row or row[0].startswith("#"):
                continue
            if len(row) < 2:
                raise ScenarioError(f"{path}:{line}: expected `timestamp,model`, got {show(row)}. Fix: {_TRACE_FIX}")
            try:
                ts = float(row[0])
            except ValueError:
                if i == 0:
                    continue  # header
                raise ScenarioError(f"{path}:{line}: timestamp {show(row[0])} is not a number of seconds. "
                                    f"Fix: {_TRACE_FIX}") from None
            if not math.isfinite(ts):  # nan broke the replay; inf made 3,091 requests of 2
                raise ScenarioError(f"{path}:{line}: timestamp {show(row[0])} is not a finite number of seconds. "
                                    "Fix: give each request's time in seconds (any origin, e.g. Unix time)")
            rows += 1
            if rows > MAX_TRACE_ROWS:
                raise ScenarioError(f"trace.file: {path} holds more than {MAX_TRACE_ROWS:,} requests, the most a "
                                    f"trace may hold. Fix: replay a part of it (e.g. an hour; `loop: true` repeats it)")
            per.setdefault(row[1].strip(), array("d")).append(ts)
    except csv.Error as e:  # a field over csv's limit (131,072 characters), a broken quote
        raise ScenarioError(f"{path}:{reader.line_num}: is not a `timestamp,model` CSV ({e}). "
                            f"Fix: {_TRACE_FIX}") from None
    del text
    if not per:
        raise ScenarioError(f"{path}: the trace has no requests. Fix: {_TRACE_FIX}")
    t0 = min(min(v) for v in per.values())
    out = {m: np.frombuffer(v, dtype=np.float64) - t0 for m, v in per.items()}
    for a in out.values():
        a.flags.writeable = False  # shared by every reader of the cached trace
    if key is not None:
        _trace_cache = (key, out)
    return out


def _trace_span(trace: dict[str, np.ndarray]) -> float:
    """A trace's loop length: its last timestamp plus a median gap (0 without a trace)."""
    if not trace:
        return 0.0
    every = np.sort(np.concatenate(list(trace.values())))
    return float(every[-1]) + (float(np.median(np.diff(every))) if every.size > 1 else 1.0)


def sources(fleet: Fleet, scenario: Scenario, seed: int) -> list[Blocked]:
    """One arrival source per model of the fleet, in fleet order."""
    trace = read_trace(scenario.trace.file) if scenario.trace else {}
    if trace and scenario.trace is not None:
        unknown = sorted(set(trace) - {m.name for m in fleet.models})
        if unknown:
            raise ScenarioError(f"trace.file: {scenario.trace.file} names models not in the fleet: "
                                f"{listing(show(m) for m in unknown)}. Fix: drop their lines, or use the plan's fleet")
    span = _trace_span(trace)
    out: list[Blocked] = []
    tally = Tally()
    for m in fleet.models:
        rng = model_rng(seed, m.name)
        curve = RateCurve(scenario, m, model_rng(seed, m.name, 1))
        jobs = [j for j in scenario.batch_jobs if fnmatch.fnmatchcase(m.name, j.models)]
        src: object
        if m.name in trace:
            assert scenario.trace is not None
            src = TraceSource(trace[m.name], scenario.trace.speed, scenario.trace.loop, span)
        elif jobs:
            src = JobSource(m, curve, rng, scenario.grid_s, jobs[-1].size, jobs[-1].spread_s)
        elif m.traffic.streams is not None and scenario.stream_arrivals == "sessions":
            src = StreamSource(m, curve, rng, scenario.grid_s, scenario.session_s)
        else:
            src = PoissonSource(m, curve, rng, scenario.grid_s)
        out.append(Blocked(src, tally=tally, name=m.name))
    return out


@dataclass(frozen=True)
class Load:
    """What a scenario asks of a fleet over a run, from the rate curves alone: nothing is drawn."""

    requests: float
    """Expected requests over the run, all models (bursts at their long-run mean)."""
    per_minute: float
    """Arrivals drawn for the fleet's busiest minute, an upper bound: each model's peak rate × 60 s
    (bursts high, the largest batch job at once, streams' grid of chunks), summed over the models."""
    busiest: str
    """The model expected to send the most requests ('' without models)."""


def _sample_times(duration_s: float, scenario: Scenario) -> np.ndarray:
    """Where to sample the rate curves: one point a minute (at most :data:`_EST_POINTS`) and both
    sides of every spike's corners, where a rise or decay of 0 jumps."""
    n = int(min(_EST_POINTS, max(1, math.ceil(duration_s / 60.0))))
    corners = [c for s in scenario.spikes for c in (s.at_s, s.at_s + s.rise_s, s.at_s + s.rise_s + s.decay_s)
               if 0.0 < c < duration_s]
    c = np.asarray(corners, float)
    return np.unique(np.concatenate((np.linspace(0.0, duration_s, n + 1), c, np.nextafter(c, -np.inf))))


def expected_load(fleet: Fleet, scenario: Scenario, duration_s: float) -> Load:
    """The requests ``scenario`` implies for ``fleet`` over ``duration_s``, by integrating each model's
    rate curve coarsely (trapezoids, see :func:`_sample_times`; bursts and batch jobs analytically).

    Costs ~1 ms per model: it is run before every simulation (:func:`check_load`)."""
    T = max(0.0, float(duration_s))
    ts = _sample_times(T, scenario)
    trace = read_trace(scenario.trace.file) if scenario.trace else {}
    span = _trace_span(trace)
    total, per_min, most, busiest = 0.0, 0.0, -1.0, ""
    for m in fleet.models:
        if m.name in trace and scenario.trace is not None:
            k = float(trace[m.name].size)
            loop_s = max(span / scenario.trace.speed, 1e-300)
            reqs = k * T / loop_s if scenario.trace.loop else k
            peak = k * 60.0 / loop_s
        else:
            curve = RateCurve(scenario, m, np.random.default_rng(0))  # smooth() never draws from it
            mult = curve.smooth(ts)
            area = float(np.sum((mult[1:] + mult[:-1]) * np.diff(ts)) / 2.0) if ts.size > 1 else 0.0
            top = float(mult.max()) if mult.size else 0.0
            b = curve.burst
            if b is not None:
                area *= (b.mean_low_s + b.high * b.mean_high_s) / (b.mean_low_s + b.mean_high_s)
                top *= max(1.0, b.high)
            reqs = curve.base * area
            peak = curve.base * top * 60.0
            jobs = [j for j in scenario.batch_jobs if fnmatch.fnmatchcase(m.name, j.models)]
            if jobs and reqs > 0:
                peak = max(peak, float(jobs[-1].size))
            elif m.traffic.streams is not None and scenario.stream_arrivals == "sessions":
                # A minute's chunks are laid out on a rounds × sessions grid: the sessions that end
                # or start within it take a row each too (StreamSource.take).
                peak *= 1.0 + 60.0 / scenario.session_s
        total += reqs
        per_min += peak
        if reqs > most:
            most, busiest = reqs, m.name
    return Load(total, per_min, busiest)


def fmt_duration(s: float) -> str:
    """``100000d``, ``1.5h``, ``4m``, ``30s``: the units a user writes."""
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0)):
        if s >= size:
            return f"{s / size:.6g}{unit}"
    return f"{s:.6g}s"


def at_most(s: float) -> str:
    """A limit in a user's units, rounded down to 3 digits so that it is within the cap."""
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if s >= size or unit == "s":
            v = s / size
            k = 10.0 ** max(0, 2 - math.floor(math.log10(v))) if v > 0 else 1.0
            return f"{math.floor(v * k) / k:g}{unit}"
    raise AssertionError("unreachable")


def _without(scenario: Scenario) -> list[tuple[str, float, Scenario]]:
    """The scenario's multipliers one at a time, each with the scenario that lacks it: ``(field,
    its value, scenario without it)``. At most 16, so that blaming one stays cheap."""
    out: list[tuple[str, float, Scenario]] = []
    if scenario.traffic_scale != 1.0:
        out.append(("traffic_scale", scenario.traffic_scale, replace(scenario, traffic_scale=1.0)))
    for i, mt in enumerate(scenario.models):
        if mt.scale != 1.0:
            ms = scenario.models[:i] + (replace(mt, scale=1.0),) + scenario.models[i + 1:]
            out.append((f"models[{i}].scale", mt.scale, replace(scenario, models=ms)))
    for i, sp in enumerate(scenario.spikes):
        out.append((f"spikes[{i}].factor", sp.factor,
                    replace(scenario, spikes=scenario.spikes[:i] + scenario.spikes[i + 1:])))
    for i, bu in enumerate(scenario.bursts):
        out.append((f"bursts[{i}].high", bu.high,
                    replace(scenario, bursts=scenario.bursts[:i] + scenario.bursts[i + 1:])))
    for i, jb in enumerate(scenario.batch_jobs):
        out.append((f"batch_jobs[{i}].size", float(jb.size),
                    replace(scenario, batch_jobs=scenario.batch_jobs[:i] + scenario.batch_jobs[i + 1:])))
    if scenario.trace is not None and scenario.trace.speed != 1.0:
        out.append(("trace.speed", scenario.trace.speed, replace(scenario, trace=replace(scenario.trace, speed=1.0))))
    return out[:16]


def _blame(fleet: Fleet, scenario: Scenario, duration_s: float,
           over: Callable[[Load], bool]) -> tuple[str, float] | None:
    """The scenario field without which the load is no longer ``over`` its cap, if one alone is."""
    for name, value, sc in _without(scenario):
        if not over(expected_load(fleet, sc, duration_s)):
            return name, value
    return None


def check_load(fleet: Fleet, scenario: Scenario, duration_s: float, duration_name: str = "duration",
               window_s: float = 60.0) -> Load:
    """Refuse, before anything is drawn, a run whose expected traffic passes the simulator's caps:
    :data:`MAX_REQUESTS` over the run, :data:`MAX_DRAW` in one window (a minute, or the engine's
    window ``window_s`` when longer). The error names the field to change: the scenario multiplier
    without which the run would fit, else ``duration_name`` (``--duration``, or the scenario's
    ``duration``), else the fleet's own traffic."""
    load = expected_load(fleet, scenario, duration_s)
    dur = fmt_duration(duration_s)
    if not load.requests <= MAX_REQUESTS:
        what = (f"about {load.requests:.3g} requests in {dur} ({load.busiest or 'no model'} the most), over the "
                f"simulator's cap of {MAX_REQUESTS:,} a run")
        culprit = _blame(fleet, scenario, duration_s, lambda x: not x.requests <= MAX_REQUESTS)
        if culprit is not None:
            raise ScenarioError(f"{culprit[0]}: {culprit[1]:g} makes {what}. Fix: lower {culprit[0]}")
        rate = load.requests / duration_s
        raise ScenarioError(f"{duration_name}: {dur} is {what}. Fix: at most {at_most(MAX_REQUESTS / rate)} "
                            f"of this traffic, or less traffic")
    window = load.per_minute * max(1.0, window_s / 60.0)
    if not window <= MAX_DRAW:
        minute = f" ({load.per_minute:.3g} in the busiest minute)" if window > load.per_minute else ""
        what = (f"one window draw about {window:.3g} arrivals{minute}, over the simulator's cap of {MAX_DRAW:,} "
                f"a window")
        if load.per_minute <= MAX_DRAW:
            raise ScenarioError(f"policy_options.interval_s: {window_s:g} s makes {what}. Fix: at most "
                                f"{60.0 * MAX_DRAW / load.per_minute:.0f}")
        culprit = _blame(fleet, scenario, duration_s, lambda x: not x.per_minute <= MAX_DRAW)
        if culprit is not None:
            raise ScenarioError(f"{culprit[0]}: {culprit[1]:g} makes {what}. Fix: lower {culprit[0]}")
        raise ScenarioError(f"traffic: the fleet's models' rps/peak_rps make {what}. Fix: less traffic per fleet")
    return load
