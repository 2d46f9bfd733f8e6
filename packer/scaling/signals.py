"""Per-model load signals and the load they imply.

The primary signal is concurrency (requests in flight plus queued), turned into a request rate by
Little's law with the time a request is expected to spend in its slot: ``rate = N / W``. Unlike
GPU utilisation it does not saturate: an overloaded model's queue keeps growing, so the implied
rate keeps rising past capacity. The reported arrival rate is used beside it because it is precise
at low load, where a handful of requests in flight is a noisy concurrency.

A :class:`Signals` is what the serving adapter (``serving/metrics.py``) parses from Triton's
``/metrics``; the core defines its own type so that it never imports an adapter.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from packer.plan import Member, Placement, Plan
from packer.queue import full_run
from packer.slot import SlotType, latency_scale
from packer.safeload import cut, listing, num


@dataclass(frozen=True)
class Signals:
    """One model's load over the last scrape interval, summed over its replicas."""

    model: str
    in_flight: float = 0.0
    """Requests executing now (Triton: executing batches x their sizes)."""
    queued: float = 0.0
    """Requests waiting in the model's queues (Triton ``nv_inference_pending_request_count``)."""
    arrival_rps: float = 0.0
    """Requests arriving per second (Triton: rate of ``nv_inference_request_success`` +
    failures; a throughput, so it saturates at capacity; concurrency does not)."""
    queue_ms: float = 0.0
    """Mean time a request waited before its batch ran (``nv_inference_queue_duration_us`` /
    count)."""
    late_share: float = 0.0
    """Share of the interval's requests that missed the SLO or were rejected (Triton: the
    request-duration histogram above the SLO bucket plus ``nv_inference_request_failure``). The
    slot maths may be optimistic for a crowded group; this is how the policy finds out."""

    @property
    def concurrency(self) -> float:
        return self.in_flight + self.queued


def sojourn_s(plan: Plan, model: str) -> float:
    """Expected seconds a request of ``model`` spends in its slot at the planned rate.

    A request waits for its batch to be cut, half the batching window on average, then the batch
    runs ``l(b) = p99_bound - d``. The window is the duty cycle ``d`` for a streaming model; a
    batch model also waits for its batch to fill (``b / rate``), up to what its SLO leaves. Weighted
    by each replica's planned rate. Example: d = 60 ms and a 20 ms batch give 30 + 20 = 50 ms, so
    40 requests in the system mean 40 / 0.05 = 800 rps.
    """
    total = weight = 0.0
    for p in plan.placements:
        for m in p.models:
            if m.name == model:
                w = max(m.rate_rps, 1e-9)
                run = _run_ms(plan, p, m)
                # Alone, batches sent as the slot frees: wait out one batch, then run one.
                window = p.duty_cycle_ms if p.duty_cycle_ms > 0 else run
                if m.kind != "streaming" and m.rate_rps > 0:
                    window = min(max(window, m.batch_size * 1000.0 / m.rate_rps), max(m.slo_ms - run, window))
                total += w * (window / 2 + run) / 1000.0
                weight += w
    return total / weight if weight else 0.0


def run_s(plan: Plan, model: str) -> float:
    """Mean run time (s) of one batch of ``model`` across its replicas, as planned."""
    runs = [_run_ms(plan, p, m) for p in plan.placements for m in p.models if m.name == model]
    return sum(runs) / len(runs) / 1000.0 if runs else 0.0


def _run_ms(plan: Plan, p: Placement, m: Member) -> float:
    """The run (ms) of one planned batch of member ``m`` of slot ``p``: its bound less the cut under
    a duty cycle; a full batch (of its cap) for a replica alone without one (``packer/queue.py``), whose bound
    also holds the queue ahead of it."""
    if p.duty_cycle_ms > 0:
        return m.p99_bound_ms - p.duty_cycle_ms
    mdl = plan.model(m.name)
    return full_run(*latency_scale(mdl, SlotType(plan.fleet.pool(p.pool), p.slot)), m.batch_size)


def planned_wait_ms(plan: Plan, model: str) -> float:
    """The longest a request of ``model`` may wait for its batch to start and still meet its
    planned bound: each replica's p99 bound less its own batch's run, weighted by the replica's
    planned rate. In a group a request waits for its turn and for the members' batches before
    its own, so a healthy member's mean wait can be far past half its SLO: punct-fr, one of six in
    an L4's 48.7 ms cycle with a 93.8 ms bound of its 100 ms SLO, waited 52 ms on average all day,
    within its SLO, and read as an overload it kept the fleet in a panic (no calm re-plan) for the
    whole diurnal day. A mean past this is a queue the plan does not hold."""
    total = weight = 0.0
    for p in plan.placements:
        for m in p.models:
            if m.name == model:
                mdl = plan.model(m.name)
                base, per = latency_scale(mdl, SlotType(plan.fleet.pool(p.pool), p.slot))
                w = max(m.rate_rps, 1e-9)
                total += w * max(0.0, m.p99_bound_ms - (base + per * m.batch_size))
                weight += w
    return total / weight if weight else 0.0


def load_rps(sig: Signals, sojourn: float, run: float = 0.0) -> float:
    """The request rate the signals imply: the larger of arrivals and concurrency / sojourn.

    The sojourn is the planned one, or the measured queue time plus a batch's run if longer: a
    crowded group may batch later than the plan assumed, and counting its longer waits as extra
    load would buy replicas for requests that are merely slow (the late signal handles those).
    In an overload the queue grows faster than the measured wait (which lags), so concurrency
    still leads the arrival rate.

    >>> round(load_rps(Signals("asr", in_flight=30, queued=10, arrival_rps=700), 0.05), 1)
    800.0
    >>> round(load_rps(Signals("asr", in_flight=30, queued=10, arrival_rps=700.0, queue_ms=80), 0.05, 0.02), 1)
    700.0
    """
    w = max(sojourn, sig.queue_ms / 1000.0 + run)
    by_concurrency = sig.concurrency / w if w > 0 else 0.0
    return max(sig.arrival_rps, by_concurrency)


# The range of each snapshot field: far beyond a real server, far below what breaks the maths. A
# value outside is an error, not "no action" (NaN compares false with every threshold).
SNAPSHOT_RANGES = {"in_flight": (1e9, " requests"), "queued": (1e9, " requests"),
                   "arrival_rps": (1e9, " requests/s"), "queue_ms": (1e9, " ms"), "late_share": (1.0, " (a share)")}


def _kind(v: Any) -> str:
    """A JSON value's kind in JSON's words (a user wrote JSON, not Python: null, not NoneType)."""
    if v is None:
        return "null"
    return {bool: "true/false", str: "text", list: "a list", dict: "an object"}.get(type(v), type(v).__name__)


def snapshot_from_dict(doc: Mapping[str, Any]) -> tuple[float | None, dict[str, Signals]]:
    """Parse a metrics snapshot (the ``--metrics`` JSON): ``{"time": s, "models": {name: {...}}}``.

    Returns the snapshot's time (None when absent) and its signals per model. Unknown keys are
    errors, so a typo in a hand-written snapshot does not silently read as zero load; so is any
    value that is not a number in its range (:data:`SNAPSHOT_RANGES`), said in the error.
    """

    if not isinstance(doc, Mapping) or not isinstance(doc.get("models"), Mapping):
        raise ValueError('a metrics snapshot is {"time": seconds, "models": {model: {in_flight, queued, '
                         'arrival_rps, queue_ms}}}')
    fields = set(SNAPSHOT_RANGES)
    out: dict[str, Signals] = {}
    for name, d in doc["models"].items():
        where = f"models.{cut(str(name))}"
        if not isinstance(d, Mapping):
            raise ValueError(f"{where}: is not a mapping; give some of {', '.join(sorted(fields))}")
        extra = set(d) - fields
        if extra:
            raise ValueError(f"{where}: unknown field(s) {listing(sorted(map(str, extra)), 3)}; "
                             f"known: {', '.join(sorted(fields))}")
        vals = {}
        for k, v in d.items():
            hi, unit = SNAPSHOT_RANGES[k]
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValueError(f"{where}.{k}: is {_kind(v)}, not a number")
            if not (math.isfinite(v) and 0 <= v <= hi):
                raise ValueError(f"{where}.{k}: is {num(v)}; it must be non-negative and at most {hi:g}{unit}")
            vals[k] = float(v)
        out[name] = Signals(name, **vals)
    t = doc.get("time")
    if t is not None:
        if isinstance(t, bool) or not isinstance(t, (int, float)):
            raise ValueError(f"time: is {_kind(t)}, not a number of seconds")
        if not (math.isfinite(t) and 0 <= t <= 1e12):
            raise ValueError(f"time: is {num(t)}; it must be seconds from 0 to 1e12")
    return (float(t) if t is not None else None), out
