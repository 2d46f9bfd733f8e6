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
"""

from __future__ import annotations

import csv
import fnmatch
import math
import zlib
from dataclasses import dataclass

import numpy as np

from packer.fleet import Fleet, Model
from sims.scenario import Scenario, ScenarioError

EMPTY = np.empty(0)


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

    def __call__(self, t: np.ndarray) -> np.ndarray:
        """Multiplier at times ``t`` (seconds since start)."""
        m = np.full(t.shape, self.scale)
        if self.amp:
            m *= 1.0 + self.amp * np.cos(2 * np.pi * (t / 3600.0 + self.phase_h) / 24.0)
        for s in self.spikes:
            up = np.clip((t - s.at_s) / s.rise_s, 0.0, 1.0) if s.rise_s > 0 else (t >= s.at_s).astype(float)
            down = np.clip(1.0 - (t - s.at_s - s.rise_s) / s.decay_s, 0.0, 1.0) if s.decay_s > 0 else \
                (t < s.at_s + s.rise_s).astype(float)
            m *= 1.0 + (s.factor - 1.0) * np.minimum(up, down)
        if self.burst is not None and t.size:
            self._extend_bursts(float(t.max()))
            idx = np.searchsorted(np.asarray(self._switch), t, side="right") - 1
            high = np.asarray(self._state)[idx] == 1
            m = np.where(high, m * self.burst.high, m)
        return m


def _poisson_points(rng: np.random.Generator, total: float) -> np.ndarray:
    """Sorted points of a unit-rate Poisson process on ``[0, total)``."""
    if total <= 0:
        return EMPTY
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
        pts = _poisson_points(self.rng, float(cum[-1]))
        times = np.interp(pts, cum, edges)
        # Guard the window against float rounding at its upper edge.
        return Arrivals(np.minimum(times, np.nextafter(t1, t0)))


def _edges(t0: float, t1: float, g: float) -> np.ndarray:
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
        n0 = int(rng.poisson(self.concurrency * float(curve(np.array([0.0]))[0]))) if math.isfinite(self.interval) else 0
        self.start = rng.uniform(-self.interval, 0.0, n0) if n0 else EMPTY
        self.end = rng.exponential(session_s, n0) if n0 else EMPTY
        self.sid = np.arange(n0, dtype=np.int64)
        self.next_sid = n0

    def _start_rate(self, left: np.ndarray) -> np.ndarray:
        c = self.starts.curve
        now = c(left)
        slope = (c(left + self.grid_s) - now) / self.grid_s
        return self.concurrency * np.maximum(0.0, slope + now / self.session_s)

    def take(self, t0: float, t1: float) -> Arrivals:
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
        while k * self.span < t1:
            off = k * self.span
            seg = self.t[np.searchsorted(self.t, t0 - off):np.searchsorted(self.t, t1 - off)] + off
            out.append(seg)
            k += 1
        return Arrivals(np.concatenate(out) if out else EMPTY)


class Blocked:
    """A source drawn in fixed blocks of ``block_s`` and handed out in whatever windows the engine asks.

    The engine cuts time at policy ticks and cluster events, which differ between two policies; the
    random draws must not. Drawing fixed blocks makes a model's arrivals a function of the seed and
    the model alone, and amortises numpy's per-call cost over a minute of traffic. Windows must be
    asked for in order, each starting where the last ended.
    """

    def __init__(self, src: object, block_s: float = 60.0) -> None:
        self.src, self.block_s = src, block_s
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
            while self.upto < t1:
                self.k += 1
                b1 = self.k * self.block_s
                a = self.src.take(self.upto, b1)  # type: ignore[attr-defined]
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


def read_trace(path: str) -> dict[str, np.ndarray]:
    """``timestamp,model`` lines (a header line is allowed); timestamps in seconds, any origin."""
    per: dict[str, list[float]] = {}
    try:
        with open(path, newline="") as f:
            for i, row in enumerate(csv.reader(f)):
                if not row or row[0].startswith("#"):
                    continue
                if len(row) < 2:
                    raise ScenarioError(f"{path}:{i + 1}: expected `timestamp,model`, got {row!r}")
                try:
                    ts = float(row[0])
                except ValueError:
                    if i == 0:
                        continue  # header
                    raise ScenarioError(f"{path}:{i + 1}: timestamp {row[0]!r} is not a number of seconds") from None
                per.setdefault(row[1].strip(), []).append(ts)
    except FileNotFoundError:
        raise ScenarioError(f"trace.file: {path} does not exist") from None
    if not per:
        raise ScenarioError(f"{path}: the trace has no requests")
    t0 = min(min(v) for v in per.values())
    return {m: np.asarray(v) - t0 for m, v in per.items()}


def sources(fleet: Fleet, scenario: Scenario, seed: int) -> list[Blocked]:
    """One arrival source per model of the fleet, in fleet order."""
    trace = read_trace(scenario.trace.file) if scenario.trace else {}
    if trace:
        unknown = sorted(set(trace) - {m.name for m in fleet.models})
        if unknown:
            raise ScenarioError(f"trace names models not in the fleet: {unknown[:5]}")
    span = 0.0
    if trace:
        every = np.sort(np.concatenate(list(trace.values())))
        span = float(every[-1]) + (float(np.median(np.diff(every))) if every.size > 1 else 1.0)
    out: list[Blocked] = []
    for m in fleet.models:
        rng = model_rng(seed, m.name)
        curve = RateCurve(scenario, m, model_rng(seed, m.name, 1))
        jobs = [j for j in scenario.batch_jobs if fnmatch.fnmatchcase(m.name, j.models)]
        if m.name in trace:
            assert scenario.trace is not None
            out.append(Blocked(TraceSource(trace[m.name], scenario.trace.speed, scenario.trace.loop, span)))
        elif jobs:
            out.append(Blocked(JobSource(m, curve, rng, scenario.grid_s, jobs[-1].size, jobs[-1].spread_s)))
        elif m.traffic.streams is not None and scenario.stream_arrivals == "sessions":
            out.append(Blocked(StreamSource(m, curve, rng, scenario.grid_s, scenario.session_s)))
        else:
            out.append(Blocked(PoissonSource(m, curve, rng, scenario.grid_s)))
    return out
