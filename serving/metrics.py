"""Per-model load signals from a Triton ``/metrics`` endpoint, for the scaling policy.

Two layers: :func:`parse` and :func:`signals` are pure (text in, dataclasses out; the time of each
scrape is passed in), :func:`scrape` is the only function that does I/O. Triton's counters are
cumulative, so rates and averages come from the difference of two scrapes::

    request_rate = Δ(success + failure) / Δt            requests per second
    queue_ms     = Δ queue_duration_us / Δ success / 1000
    compute_ms   = Δ compute_infer_duration_us / Δ success / 1000
    avg_batch    = Δ inference_count / Δ exec_count     (e.g. 120 inferences in 10 runs: 12.0)

``pending`` (``nv_inference_pending_request_count``) is a gauge: requests queued or running now.
"""

from __future__ import annotations

import re
import urllib.parse
import urllib.request
from dataclasses import dataclass, fields
from typing import Iterable

from packer.errors import UserError
from packer.scaling.signals import Signals

_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?\s*$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

# Triton metric name -> ModelCounters field
METRICS = {
    "nv_inference_pending_request_count": "pending",
    "nv_inference_request_success": "success",
    "nv_inference_request_failure": "failure",
    "nv_inference_count": "inferences",
    "nv_inference_exec_count": "executions",
    "nv_inference_queue_duration_us": "queue_us",
    "nv_inference_request_duration_us": "request_us",
    "nv_inference_compute_infer_duration_us": "compute_us",
}


@dataclass(frozen=True)
class ModelCounters:
    """One model's raw values in one scrape (all versions summed)."""

    pending: float = 0.0
    success: float = 0.0
    failure: float = 0.0
    inferences: float = 0.0
    executions: float = 0.0
    queue_us: float = 0.0
    request_us: float = 0.0
    compute_us: float = 0.0


@dataclass(frozen=True)
class Scrape:
    at_s: float
    """When it was taken (any monotonic clock, seconds)."""
    models: dict[str, ModelCounters]


@dataclass(frozen=True)
class ModelSignals:
    """What the scaling policy acts on, for one model over one window."""

    model: str
    pending: int
    """Requests queued or executing at the end of the window."""
    request_rate: float
    """Requests answered per second (successes and failures, rejections included)."""
    failure_rate: float
    """Requests failed or rejected per second: a queue policy rejecting means the SLO is at risk."""
    queue_ms: float
    """Mean time a successful request waited in the queue."""
    latency_ms: float
    """Mean end-to-end server time of a successful request (queue + run)."""
    compute_ms: float
    """Mean run time of the batch a request was in: compare with the profile's ``base + per_item * b``
    to see a model running slower than the plan assumed."""
    avg_batch: float
    """Mean executed batch size; 0.0 when nothing ran in the window."""
    window_s: float


def parse(text: str) -> dict[str, ModelCounters]:
    """Per-model counters from Prometheus text exposition (unknown metrics are ignored)."""
    acc: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if not m or m.group(1) not in METRICS:
            continue
        labels = dict(_LABEL.findall(m.group(2) or ""))
        model = labels.get("model")
        if model is None:
            continue
        try:
            v = float(m.group(3))
        except ValueError:
            continue
        f = acc.setdefault(model, {})
        key = METRICS[m.group(1)]
        f[key] = f.get(key, 0.0) + v
    return {k: ModelCounters(**v) for k, v in acc.items()}


def _delta(cur: float, prev: float) -> float:
    """A counter's increase; a drop means the server restarted, so the counter began again at 0."""
    return cur - prev if cur >= prev else cur


def signals(prev: Scrape, cur: Scrape) -> dict[str, ModelSignals]:
    """Signals of every model present in ``cur`` over the window between the two scrapes."""
    dt = cur.at_s - prev.at_s
    if dt <= 0:
        raise ValueError(f"scrapes must be in time order (window {dt} s)")
    out = {}
    for name, c in cur.models.items():
        p = prev.models.get(name, ModelCounters())
        d = {f.name: _delta(getattr(c, f.name), getattr(p, f.name)) for f in fields(ModelCounters)}
        ok = d["success"]
        out[name] = ModelSignals(
            model=name,
            pending=int(c.pending),
            request_rate=(ok + d["failure"]) / dt,
            failure_rate=d["failure"] / dt,
            queue_ms=d["queue_us"] / ok / 1000.0 if ok else 0.0,
            latency_ms=d["request_us"] / ok / 1000.0 if ok else 0.0,
            compute_ms=d["compute_us"] / ok / 1000.0 if ok else 0.0,
            avg_batch=d["inferences"] / d["executions"] if d["executions"] else 0.0,
            window_s=dt,
        )
    return out


METRICS_MAX_BYTES = 64 * 1024 * 1024
"""Most bytes read from one metrics endpoint: Triton's page is a few kB per model, so a thousand
models fit many times over; an endpoint that sends more is not Triton's."""


def scrape(url: str, at_s: float, *, timeout_s: float = 5.0) -> Scrape:
    """Fetch ``url`` (``http://host:8002/metrics``) once; ``at_s`` is the caller's clock reading.
    Only ``http`` and ``https`` URLs: ``urllib`` would read a ``file://`` URL as metrics, and
    raise on a string that is no URL at all."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UserError(f"Triton metrics URL {url!r} is not an http(s) URL. Fix: give the server's metrics "
                        "endpoint, e.g. http://host:8002/metrics")
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            body = r.read(METRICS_MAX_BYTES + 1)
    except (OSError, ValueError) as e:  # URLError wraps the socket's error: say that one ("Connection refused")
        why = getattr(e, "reason", None) or e
        why = getattr(why, "strerror", None) or str(why)
        raise UserError(f"cannot read Triton metrics at {url}: {why}. Fix: start the server with "
                        "--allow-metrics=true and give its metrics port (8002 by default)") from None
    if len(body) > METRICS_MAX_BYTES:
        raise UserError(f"Triton metrics at {url} are over {METRICS_MAX_BYTES // 2 ** 20} MiB. Fix: give a "
                        "Triton server's metrics endpoint (port 8002 by default)")
    return Scrape(at_s, parse(body.decode("utf-8", "replace")))


def policy_signals(windows: Iterable[dict[str, ModelSignals]]) -> dict[str, Signals]:
    """Fold per-server windows into the scaling policy's per-model signals.

    A model with replicas on several servers appears in several windows: queues and arrival rates
    add up, queue time and the late share take the worst server (the policy acts on the replica
    that is in trouble). Used by ``packer scale --triton`` and by the reconciler.
    """
    out: dict[str, Signals] = {}
    for window in windows:
        for name, s in window.items():
            late = s.failure_rate / s.request_rate if s.request_rate > 0 else 0.0
            o = out.get(name, Signals(name))
            out[name] = Signals(name, in_flight=o.in_flight, queued=o.queued + s.pending,
                                arrival_rps=o.arrival_rps + s.request_rate,
                                queue_ms=max(o.queue_ms, s.queue_ms), late_share=max(o.late_share, late))
    return out
