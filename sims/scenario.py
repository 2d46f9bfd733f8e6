"""Scenario files: what traffic to replay and how the cluster behaves, as small YAML documents.

A scenario never names GPUs or replicas (that is the plan's job); it says how each model's traffic
moves around the fleet's figures (``rps``, ``peak_rps``, ``streams``) and how slow the cluster is
to grow. Every field is optional; ``docs/simulator.md`` lists them with examples. Durations are
seconds or strings like ``90s``, ``4m``, ``1h``, ``1d``.
"""

from __future__ import annotations

import fnmatch
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from packer.errors import UserError
from packer.safeload import kind_of, parse_yaml, read_text
from packer.scaling.settings import ColdStart

ROUTINGS = ("round-robin", "weighted")
PROCESSES = ("poisson", "diurnal", "peak")
"""``poisson``: constant ``rps``; ``diurnal``: the daily curve around ``rps``; ``peak``: constant ``peak_rps``."""
_DUR = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|min|h|d)?\s*$")
_UNIT = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
MIN_GRID_S = 0.001
"""Finest rate-curve step: arrivals are drawn a minute at a time over 60 s / grid cells."""


class ScenarioError(UserError, ValueError):
    """A scenario file problem: the message names the field and the fix."""


def parse_duration(v: Any, where: str = "duration") -> float:
    """Seconds from ``90``, ``"90s"``, ``"4m"``, ``"1.5h"``, ``"1d"``."""
    if isinstance(v, bool):
        raise ScenarioError(f"{where}: {v!r} is not a duration. Fix: write e.g. 90s, 4m, 1h")
    if isinstance(v, (int, float)):
        s = float(v)
    else:
        m = _DUR.match(str(v))
        if not m:
            raise ScenarioError(f"{where}: {v!r} is not a duration. Fix: write e.g. 90s, 4m, 1h, 1d")
        s = float(m.group(1)) * _UNIT[m.group(2)]
    if not math.isfinite(s) or s < 0:
        raise ScenarioError(f"{where}: {v!r} must be a non-negative duration")
    return s


@dataclass(frozen=True)
class Diurnal:
    """Daily curve ``rate(t) = rps * (1 + a cos(2π (utc_hour + tz - peak_hour) / 24))``.

    With ``amplitude: auto`` ``a = peak_rps / rps - 1`` (capped at 1), so the day's mean is the
    fleet's ``rps`` and its top is ``peak_rps``: asr-en (3437.5 rps, peak 6250) gets ``a = 0.82``,
    a trough of 625 rps at 02:00 local time when it peaks at 14:00.
    """

    peak_hour: float = 14.0
    amplitude: float | None = None
    """None means auto (from peak_rps / rps)."""


@dataclass(frozen=True)
class Burst:
    """Two-state Markov-modulated Poisson process: rate × ``high`` during bursts."""

    models: str
    high: float
    mean_low_s: float
    mean_high_s: float


@dataclass(frozen=True)
class Spike:
    """Rate × ``factor`` reached linearly ``rise_s`` after ``at_s``, back to ×1 linearly over ``decay_s``."""

    models: str
    at_s: float
    factor: float
    rise_s: float = 60.0
    decay_s: float = 3600.0


@dataclass(frozen=True)
class BatchJobs:
    """Requests arrive in jobs of ``size`` requests (Poisson job arrivals at ``rate / size``), spread
    uniformly over ``spread_s`` after submission: a backlog of meetings to summarise."""

    models: str
    size: int
    spread_s: float = 0.0


@dataclass(frozen=True)
class ModelTraffic:
    """Per-model overrides, matched by a glob on the model name."""

    models: str
    scale: float = 1.0
    tz_offset_h: float = 0.0
    """The users' time zone, UTC+h: with a 14:00 local peak, ``+1`` peaks at 13:00 UTC and ``-5`` at
    19:00 UTC, so languages peak at different hours."""
    process: str | None = None


@dataclass(frozen=True)
class Cluster:
    """How slow the simulated cluster is to grow, and how often its spot nodes go.

    The times are the scaling policy's own :class:`packer.scaling.ColdStart` (one type, so the
    policy and the simulator tell one story); the scenario file keeps its own key names:
    ``node_provision`` (a new GPU node: cloud VM start + driver/device plugin ready; GKE and EKS
    GPU nodes typically take 3-6 minutes, 4 is the middle), ``image_pull`` (a ~12 GB Triton image
    at ~100 MB/s on a fresh node, about 2 minutes), ``weight_load_base`` and
    ``weight_load_gb_per_s`` (24 GB of summarizer takes 24 s more than the 15 s fixed part).
    """

    cold_start: ColdStart = field(default_factory=ColdStart)
    spot_preemptions_per_node_hour: float = 0.0
    """Preemption rate of each spot node; 0.05 means one node in 20 per hour."""
    preemption_notice_s: float = 30.0
    """GCP gives 30 s; AWS gives 2 minutes. Replicas stop taking traffic at the notice."""


@dataclass(frozen=True)
class RunTime:
    """Measured run time of a model's batches on its slot: ``base_ms + per_item_ms * b``.

    Replaces the profile's run time (scaled to the slot) in the simulated server only; the batcher
    settings (queue delay, preferred batch, timeout) still come from the plan, as Triton was told.
    This is how a profile measured on the real server (e.g. fitted to Triton's per-batch-size
    ``compute_infer`` statistics) is simulated without re-planning.
    """

    models: str
    base_ms: float
    per_item_ms: float


@dataclass(frozen=True)
class Server:
    noise_cv: float = 0.0
    """Coefficient of variation of batch run times (lognormal, mean 1); 0 runs the profile exactly."""
    queue_delay_ms: float | None = None
    """Override every batcher's max queue delay; None derives it from the plan like the Triton writer."""
    queue_timeouts: bool = False
    """Reject dynamic-batcher requests that queued past ``slo - run``: the Triton writer's policy
    with ``--shed`` (``TritonSettings.shed``). Off, as rendered by default: a late request is
    still served, and costs its share of the slot."""
    run_ms: tuple[RunTime, ...] = ()
    """Measured run times that replace the profile's (glob on the model name; the last match wins)."""
    queue_bound: bool = False
    """Refuse requests that arrive to a full queue, at the bound the Triton writer sets
    (``max_queue_size``: what the instance could finish within ``slo - run``). Off by default:
    then the queue timeout alone bounds waiting."""
    routing: str = "round-robin"
    """How a model's requests are spread over its replicas: ``round-robin`` (gRPC's policy) or
    ``weighted`` (in proportion to each replica's capacity, as behind a weighted load balancer)."""
    missed_wake: float = 0.0
    """Probability that a model's batcher sleeps through the slot freeing and looks at its queue
    again only at its next arrival (or 500 ms later). 0, as rendered: the dynamic batchers prefetch
    (no queue policy; docs/serving.md). Measured with a queue policy (``--shed``) on Triton's
    dynamic batcher with one instance: 0.4-0.5 (``bench/fidelity.py``, docs/simulator.md)."""

    def run_time(self, model: str) -> RunTime | None:
        found = [r for r in self.run_ms if fnmatch.fnmatchcase(model, r.models)]
        return found[-1] if found else None


@dataclass(frozen=True)
class Trace:
    file: str
    speed: float = 1.0
    """Replay speed: 2 plays a 2-hour trace in 1 hour."""
    loop: bool = True


@dataclass(frozen=True)
class Scenario:
    name: str = "default"
    about: str = ""
    process: str = "diurnal"
    start_hour: float = 0.0
    """UTC hour of the day at simulated second 0."""
    traffic_scale: float = 1.0
    diurnal: Diurnal = field(default_factory=Diurnal)
    session_s: float = 300.0
    """Mean duration of a stream (exponential) for models with ``traffic.streams``."""
    stream_arrivals: str = "sessions"
    """``sessions``: streams send a chunk every chunk interval while they last; ``poisson``: the
    chunks of a streaming model arrive as one Poisson process (as ``bench/triton.py`` sends them)."""
    grid_s: float = 1.0
    """Resolution of the rate curve: rates are piecewise constant over this step."""
    models: tuple[ModelTraffic, ...] = ()
    bursts: tuple[Burst, ...] = ()
    spikes: tuple[Spike, ...] = ()
    batch_jobs: tuple[BatchJobs, ...] = ()
    trace: Trace | None = None
    cluster: Cluster = field(default_factory=Cluster)
    server: Server = field(default_factory=Server)
    policy: str = "static"
    policy_options: dict[str, Any] = field(default_factory=dict)
    duration_s: float | None = None
    source: str | None = None

    def overrides(self, model: str) -> ModelTraffic:
        """All matching ``models:`` entries folded in order (later ones win, scales multiply)."""
        out = ModelTraffic(model)
        for mt in self.models:
            if fnmatch.fnmatchcase(model, mt.models):
                out = replace(out, scale=out.scale * mt.scale,
                              tz_offset_h=mt.tz_offset_h if mt.tz_offset_h else out.tz_offset_h,
                              process=mt.process or out.process)
        return out

    def with_(self, **kw: Any) -> "Scenario":
        return replace(self, **kw)


def _expect(d: Any, where: str) -> dict:
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise ScenarioError(f"{where}: is not a mapping. Fix: write `key: value` lines under it")
    return d


def _num(d: dict, key: str, where: str, default: float, *, lo: float = 0.0, positive: bool = False) -> float:
    v = d.get(key, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ScenarioError(f"{where}.{key}: {v!r} is not a number")
    v = float(v)
    if not math.isfinite(v) or v < lo or (positive and v <= 0):
        raise ScenarioError(f"{where}.{key}: {v} must be {'> 0' if positive else f'>= {lo:g}'}")
    return v


def _check_keys(d: dict, allowed: set[str], where: str) -> None:
    extra = set(d) - allowed
    if extra:
        raise ScenarioError(f"{where}: unknown key(s) {sorted(extra)}. Fix: use {sorted(allowed)}")


def _list(doc: dict, key: str) -> list:
    v = doc.get(key) or []
    if not isinstance(v, list):
        raise ScenarioError(f"{key}: is not a list. Fix: write each entry as `- models: ...`")
    return v


def parse_scenario(doc: Any, source: str | None = None, base_dir: Path | None = None) -> Scenario:
    """A scenario from its YAML document, section by section (each section's errors name the
    field and the fix); relative trace paths are taken from ``base_dir``. A document that is not
    a mapping is refused naming ``source``, the file (an empty one is a scenario of defaults)."""
    if doc is not None and not isinstance(doc, dict):
        raise ScenarioError(f"{source or '(top level)'}: is {kind_of(doc)}, not a mapping. Fix: a scenario is "
                            f"`key: value` lines at the top level (e.g. `process: peak`)")
    doc = _expect(doc, "(top level)")
    _check_keys(doc, {"name", "about", "process", "start_hour", "traffic_scale", "diurnal", "session",
                      "stream_arrivals", "grid",
                      "models", "bursts", "spikes", "batch_jobs", "trace", "cluster", "server", "policy",
                      "policy_options", "duration"}, "(top level)")
    process = doc.get("process", "diurnal")
    if process not in PROCESSES:
        raise ScenarioError(f"process: {process!r} is unknown. Fix: use one of {', '.join(PROCESSES)}")
    diurnal = _diurnal(doc)
    models, bursts, spikes, jobs = _models(doc), _bursts(doc), _spikes(doc), _batch_jobs(doc)
    trace = _trace(doc, base_dir)
    cluster = _cluster(doc)
    server = _server(doc)
    sa = doc.get("stream_arrivals", "sessions")
    if sa not in ("sessions", "poisson"):
        raise ScenarioError(f"stream_arrivals: {sa!r} is unknown. Fix: use sessions or poisson")
    session_s = parse_duration(doc.get("session", 300), "session")
    if session_s <= 0:  # sessions start at C / session: 0 is an infinite rate
        raise ScenarioError(f"session: {doc.get('session')!r} must be > 0. Fix: a mean stream length, e.g. 5m")
    grid_s = parse_duration(doc.get("grid", 1.0), "grid") or 1.0
    if grid_s < MIN_GRID_S:  # a block's rate curve has 60 s / grid cells
        raise ScenarioError(f"grid: {doc.get('grid')!r} is finer than {MIN_GRID_S * 1000:g} ms. Fix: e.g. 1s")
    po = doc.get("policy_options") or {}
    if not isinstance(po, dict):
        raise ScenarioError("policy_options: is not a mapping")
    return Scenario(
        name=str(doc.get("name", "scenario")), about=str(doc.get("about", "")), process=process,
        start_hour=_num(doc, "start_hour", "(top level)", 0.0), traffic_scale=_num(doc, "traffic_scale",
                                                                                    "(top level)", 1.0),
        diurnal=diurnal, session_s=session_s, stream_arrivals=sa, grid_s=grid_s,
        models=tuple(models), bursts=tuple(bursts), spikes=tuple(spikes), batch_jobs=tuple(jobs), trace=trace,
        cluster=cluster, server=server, policy=str(doc.get("policy", "static")), policy_options=dict(po),
        duration_s=_duration(doc),
        source=source,
    )


def _duration(doc: dict[str, Any]) -> float | None:
    """``duration:``: how long to simulate (None: the command's default). 0 is refused, as
    ``--duration 0`` is: it ran the default hour instead (``duration_s or 3600``)."""
    if doc.get("duration") is None:
        return None
    s = parse_duration(doc["duration"], "duration")
    if s <= 0:
        raise ScenarioError(f"duration: {doc['duration']!r} must be > 0. Fix: a simulated time, e.g. 1h "
                            f"(or leave it out for the command's default)")
    return s


def _diurnal(doc: dict[str, Any]) -> Diurnal:
    """``diurnal:``: the peak hour and the swing (``auto``: each model's own peak-to-mean)."""
    di = _expect(doc.get("diurnal"), "diurnal")
    _check_keys(di, {"peak_hour", "amplitude"}, "diurnal")
    amp = di.get("amplitude", "auto")
    if amp != "auto":
        amp = _num(di, "amplitude", "diurnal", 0.0)
        if amp > 1:
            raise ScenarioError("diurnal.amplitude: must be <= 1 (a rate cannot go negative)")
    return Diurnal(_num(di, "peak_hour", "diurnal", 14.0), None if amp == "auto" else amp)


def _models(doc: dict[str, Any]) -> list[ModelTraffic]:
    """``models:``: per-glob traffic scale, time zone and arrival process."""
    models = []
    for i, e in enumerate(_list(doc, "models")):
        w = f"models[{i}]"
        e = _expect(e, w)
        _check_keys(e, {"models", "scale", "tz_offset_h", "process"}, w)
        if e.get("process") not in (None, *PROCESSES):
            raise ScenarioError(f"{w}.process: {e['process']!r} is unknown. Fix: use one of {', '.join(PROCESSES)}")
        models.append(ModelTraffic(str(e.get("models", "*")), _num(e, "scale", w, 1.0),
                                   _num(e, "tz_offset_h", w, 0.0, lo=-24), e.get("process")))
    return models


def _bursts(doc: dict[str, Any]) -> list[Burst]:
    """``bursts:``: two-state (low/high) rate modulation per glob."""
    bursts = []
    for i, e in enumerate(_list(doc, "bursts")):
        w = f"bursts[{i}]"
        e = _expect(e, w)
        _check_keys(e, {"models", "high", "mean_low", "mean_high"}, w)
        bursts.append(Burst(str(e.get("models", "*")), _num(e, "high", w, 3.0, positive=True),
                            parse_duration(e.get("mean_low", 600), f"{w}.mean_low"),
                            parse_duration(e.get("mean_high", 60), f"{w}.mean_high")))
        if bursts[-1].mean_low_s <= 0 or bursts[-1].mean_high_s <= 0:
            raise ScenarioError(f"{w}: mean_low and mean_high must be > 0")
    return bursts


def _spikes(doc: dict[str, Any]) -> list[Spike]:
    """``spikes:``: one surge per entry, at a time, with its rise and decay."""
    spikes = []
    for i, e in enumerate(_list(doc, "spikes")):
        w = f"spikes[{i}]"
        e = _expect(e, w)
        _check_keys(e, {"models", "at", "factor", "rise", "decay"}, w)
        if "at" not in e:
            raise ScenarioError(f"{w}.at: is missing. Fix: give the spike's start, e.g. `at: 2h`")
        spikes.append(Spike(str(e.get("models", "*")), parse_duration(e["at"], f"{w}.at"),
                            _num(e, "factor", w, 4.0, positive=True), parse_duration(e.get("rise", 60), f"{w}.rise"),
                            parse_duration(e.get("decay", 3600), f"{w}.decay")))
    return spikes


def _batch_jobs(doc: dict[str, Any]) -> list[BatchJobs]:
    """``batch_jobs:``: requests that arrive together (a job of ``size``), spread over ``spread``."""
    jobs = []
    for i, e in enumerate(_list(doc, "batch_jobs")):
        w = f"batch_jobs[{i}]"
        e = _expect(e, w)
        _check_keys(e, {"models", "size", "spread"}, w)
        size = e.get("size", 10)
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ScenarioError(f"{w}.size: {size!r} must be a whole number >= 1")
        jobs.append(BatchJobs(str(e.get("models", "*")), size, parse_duration(e.get("spread", 0), f"{w}.spread")))
    return jobs


def _trace(doc: dict[str, Any], base_dir: Path | None) -> Trace | None:
    """``trace:``: a CSV to replay instead of generated traffic (None without one)."""
    if doc.get("trace") is None:
        return None
    t = doc["trace"]
    t = {"file": t} if isinstance(t, str) else _expect(t, "trace")
    _check_keys(t, {"file", "speed", "loop"}, "trace")
    if "file" not in t:
        raise ScenarioError("trace.file: is missing. Fix: give a CSV of `timestamp,model` lines")
    f = Path(str(t["file"]))
    if not f.is_absolute() and base_dir is not None:
        f = base_dir / f
    return Trace(str(f), _num(t, "speed", "trace", 1.0, positive=True), bool(t.get("loop", True)))


def _cluster(doc: dict[str, Any]) -> Cluster:
    """``cluster:``: cold-start times and spot preemptions."""
    cl = _expect(doc.get("cluster"), "cluster")
    _check_keys(cl, {"node_provision", "image_pull", "weight_load_base", "weight_load_gb_per_s",
                     "spot_preemptions_per_node_hour", "preemption_notice"}, "cluster")
    dc, ds = ColdStart(), Cluster()
    cold = ColdStart(
        node_s=parse_duration(cl.get("node_provision", dc.node_s), "cluster.node_provision"),
        image_s=parse_duration(cl.get("image_pull", dc.image_s), "cluster.image_pull"),
        weights_base_s=parse_duration(cl.get("weight_load_base", dc.weights_base_s), "cluster.weight_load_base"),
        weights_gb_per_s=_num(cl, "weight_load_gb_per_s", "cluster", dc.weights_gb_per_s, positive=True),
    )
    return Cluster(
        cold, _num(cl, "spot_preemptions_per_node_hour", "cluster", 0.0),
        parse_duration(cl.get("preemption_notice", ds.preemption_notice_s), "cluster.preemption_notice"),
    )


def _server(doc: dict[str, Any]) -> Server:
    """``server:``: how the simulated servers run (noise, batching overrides, routing, wake-ups)."""
    sv = _expect(doc.get("server"), "server")
    _check_keys(sv, {"noise_cv", "queue_delay_ms", "queue_timeouts", "run_ms", "missed_wake", "routing",
                     "queue_bound"}, "server")
    routing = str(sv.get("routing", "round-robin"))
    if routing not in ROUTINGS:
        raise ScenarioError(f"server.routing: {routing!r} is unknown. Fix: use {' or '.join(ROUTINGS)}")
    qd = sv.get("queue_delay_ms")
    runs = []
    for k, r in enumerate(sv.get("run_ms") or []):
        where = f"server.run_ms[{k}]"
        r = _expect(r, where)
        _check_keys(r, {"models", "base", "per_item"}, where)
        if "models" not in r or "base" not in r:
            raise ScenarioError(f"{where}: needs `models` (a glob) and `base` (ms); `per_item` (ms) is optional")
        runs.append(RunTime(str(r["models"]), _num(r, "base", where, 0.0), _num(r, "per_item", where, 0.0)))
    server = Server(_num(sv, "noise_cv", "server", 0.0),
                    None if qd is None else _num(sv, "queue_delay_ms", "server", 0.0),
                    bool(sv.get("queue_timeouts", Server.queue_timeouts)), tuple(runs),
                    bool(sv.get("queue_bound", Server.queue_bound)), routing,
                    _num(sv, "missed_wake", "server", Server.missed_wake))
    if server.missed_wake > 1:
        raise ScenarioError(f"server.missed_wake: {server.missed_wake} is a probability. Fix: use 0..1")
    return server


def load_scenario(path: str | Path) -> Scenario:
    """Read a scenario file; a bare name (``diurnal``) finds one shipped in ``sims/scenarios``."""
    p = Path(path)
    if not p.exists() and not p.suffix:
        shipped = Path(__file__).parent / "scenarios" / f"{p.name}.yaml"
        if shipped.exists():
            p = shipped
    if not p.exists():
        names = sorted(q.stem for q in (Path(__file__).parent / "scenarios").glob("*.yaml"))
        raise ScenarioError(f"{p}: no such scenario file. Fix: give a path or one of {', '.join(names)}")
    # The bounded loader every input goes through: size, UTF-8, nesting, aliases, numbers.
    doc = parse_yaml(read_text(p, "give a scenario YAML file"), str(p))
    return parse_scenario(doc, str(p), p.parent)
