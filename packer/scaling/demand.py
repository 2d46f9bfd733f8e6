"""What each model needs now: load windows, hysteresis state and capacity under round-robin.

``observe`` folds one metrics snapshot into the state (Knative stable and panic windows, trend,
Poisson allowance, late requests) and returns a :class:`Demand` per model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from packer.fleet import Model
from packer.plan import Plan
from packer.scaling.room import rate_of, room
from packer.scaling.settings import ScalingSettings
from packer.scaling.signals import Signals, load_rps, planned_wait_ms, run_s, sojourn_s

EPS = 1e-6
NEAR_FULL = 0.85
"""Arrivals above this share of what a model's replicas hold make a concurrency reading above
capacity an overload (:func:`sized_load`); below it, a slot batching later than planned."""


@dataclass(frozen=True)
class ModelState:
    """Hysteresis of one model, carried from decision to decision by the caller."""

    samples: tuple[tuple[float, float], ...] = ()
    """(time, load rps) over the stable window."""
    history: tuple[tuple[float, float], ...] = ()
    """(time, arrival rps) over the scale-down window: what a re-plan sizes for, and the trend it
    extrapolates. Arrivals, not the Little's-law load: concurrency over the planned sojourn
    overstates the rate whenever a slot's real batching window differs from the plan's (punct
    models read 3-9x their arrivals on the diurnal day), which is a reason to scale up now, not
    to pack for. Over 10 minutes a diurnal ramp (0.2 rps/s for asr-en) stands well clear of the
    Poisson noise (0.013 rps/s standard error at 3000 rps); over one minute it is lost (0.42)."""
    wants: tuple[tuple[float, float], ...] = ()
    """(time, wanted capacity rps) over the scale-down window: scale-down sizes for the highest."""
    panic_until: float | None = None
    last_up: float | None = None
    last_down: float | None = None
    crowd_limit: int | None = None
    """Most members a slot holding this model may have (itself included), learnt when it was late
    in a slot with one more: the slot maths were optimistic there, so it is never put back into
    a group that large. None: no limit seen."""
    serving_at: float | None = None
    """When the newest replica asked for this model is expected to serve (the decision's time plus
    the action's cold start). The deployed plan counts a replica from the moment it is asked for;
    until then the model may not shrink, so no consolidation drops a replica that serves because
    one still loading "holds" its share (bench/spot.py, llm-platform seed 13: embed-bge's
    on-demand replacement of a preempted replica was 197 s from serving when a consolidation
    removed its surviving spot replica, and 16.5 % of its requests missed the SLO)."""

    def __post_init__(self) -> None:
        # State that went through JSON (the reconciler keeps it in a ConfigMap) comes back as lists.
        for f in ("samples", "history", "wants"):
            v = getattr(self, f)
            if not isinstance(v, tuple) or any(not isinstance(x, tuple) for x in v):
                object.__setattr__(self, f, tuple((float(a), float(b)) for a, b in v))


@dataclass(frozen=True)
class ScalingState:
    models: Mapping[str, ModelState] = field(default_factory=dict)
    since: float | None = None
    """Time of the first decision: no scale-down before a whole stabilisation window was seen."""
    last_replan: float | None = None
    last_down_try: float | None = None
    """Last time a consolidation was looked for (they are looked for every ``scale_down_every_s``)."""
    starting: Mapping[str, float] = field(default_factory=dict)
    """Nodes asked for and not up yet, with the time they will be: a GPU on one is not fast."""
    replan_traffic: Mapping[str, float] = field(default_factory=dict)
    """The rates of the last re-plan request: a right-sizing re-plan waits for demand to move
    away from them (empty: from what the deployed plan holds)."""
    ceiling: float | None = None
    """What the plan the policy started from costs an hour (set at the first decision): it holds
    every model's peak, so a fleet that scaled up past it, a GPU at a time, pays for packing
    worse than the planner's (:attr:`ScalingSettings.targets.ceiling_replan`)."""
    doomed: Mapping[str, float] = field(default_factory=dict)
    """Nodes under a spot preemption notice, with the time the cloud takes them. A notice comes
    with the node's replicas, which the policy replaces at once and drops from the plan; from then
    on the plan no longer shows the node, and without this a later new GPU went on it (a move
    back to spot, at the next decision): the cloud refuses it or takes it with the node."""


@dataclass(frozen=True)
class Demand:
    """What one model needs now, and whether it may shrink (all rates in rps)."""

    model: str
    capacity: float
    """What its replicas can hold under round-robin (:func:`share_capacity`)."""
    load: float
    """Stable-window load projected over the cold start (the panic load while panicking)."""
    want: float
    """Capacity wanted now: load / target utilisation (the panic window's while panicking). Demand
    only: never raised to the capacity held, so moves that raise capacity do not raise it."""
    want_down: float
    """Highest calm want over the scale-down window, or the arrivals' rising 10-minute trend
    projected one window ahead if higher, plus the band: the floor for shrinking."""
    slope: float
    """Trend of the stable-window load, rps per second (>= 0)."""
    panic: bool
    may_shrink: bool
    """No scale-down before a whole scale-down window of history, while panicking or late, or while
    a replica asked for it still loads (:attr:`ModelState.serving_at`)."""
    late: bool = False
    """Requests are missing the SLO now although the maths say the slots hold them."""
    crowd_limit: int | None = None
    """See :attr:`ModelState.crowd_limit`."""
    replan_want: float = 0.0
    """Capacity a right-sizing re-plan should give the model: the larger of the highest want of
    the scale-down window and the stable load projected (trend, plus its Poisson noise) over the
    re-plan interval and a new node's cold start, so the packing holds until the next one is
    serving."""

    @property
    def deficit(self) -> float:
        return max(0.0, self.want - self.capacity)


def loading_until(state: ScalingState, names: list[str] | set[str], until: float) -> ScalingState:
    """``state`` with ``serving_at`` of each of ``names`` at the later of what it was and
    ``until``: a replica asked for (a scaling action, a taken migration) serves only then, and
    until then the model may not shrink (:attr:`ModelState.serving_at`)."""
    models = dict(state.models)
    for name in names:
        ms = models.get(name, ModelState())
        models[name] = replace(ms, serving_at=max(until, ms.serving_at or until))
    return replace(state, models=models)


def capacity(plan: Plan, model: str) -> float:
    """What the model is sized for now: the sum of its replicas' rates."""
    return sum(rate_of(p, model) for p in plan.placements_of(model))


def share_capacity(plan: Plan, model: str) -> float:
    """Most the model can serve with requests spread evenly over its replicas (round-robin, as a
    Kubernetes Service or gRPC ``round_robin`` does): ``n`` times its tightest replica's room.

    Example: replicas with room 900 and 300 rps hold 2 x 300 = 600 rps, not 1200: the second
    replica gets half the requests whatever the first could take. Multi-GPU replicas (never
    shared) hold what they were sized for.
    """
    reps = plan.placements_of(model)
    if not reps:
        return 0.0
    m = plan.model(model)
    if m.gpus_per_replica > 1:
        return capacity(plan, model)
    return len(reps) * min(room(plan, p, m) for p in reps)


def crowd_ok(members: list[str], demands: Mapping[str, Demand]) -> bool:
    """No member of a slot with these models would be in a bigger group than it proved to take."""
    return all(demands[n].crowd_limit is None or len(members) <= demands[n].crowd_limit for n in members)


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def _slope(samples: tuple[tuple[float, float], ...], z: float = 0.0) -> float:
    """Least-squares trend (rps per s) of the samples, less ``z`` standard errors; 0 with fewer
    than 3 samples or when not significant.

    Each sample is a Poisson count over its interval ``dt``, so its noise is ``sqrt(rate / dt)``
    and the slope's standard error that over ``sqrt(sum (t - mean t)^2)``. Four samples 15 s apart
    at 0.1 rps give a standard error of 0.0024 rps/s: a summarizer's noise is not a trend. At 1000
    rps it is 0.24 rps/s, well below a spike's tens of rps/s.
    """
    if len(samples) < 3:
        return 0.0
    ts = [t for t, _ in samples]
    ys = [y for _, y in samples]
    mt, my = _mean(ts), _mean(ys)
    var = sum((t - mt) ** 2 for t in ts)
    if var <= 0:
        return 0.0
    slope = sum((t - mt) * (y - my) for t, y in samples) / var
    dt = (ts[-1] - ts[0]) / (len(ts) - 1)
    se = math.sqrt(max(my, 0.0) / dt) / math.sqrt(var) if dt > 0 else 0.0
    return max(0.0, slope - z * se)


def sized_load(sig: Signals, plan: Plan, m: Model, overloaded: bool, cap: float) -> float:
    """The rate the scale-up sizes ``m`` for: its arrivals, the same measure the re-plans pack
    for, unless the model is overloaded; then the Little's-law rate (concurrency over the sojourn,
    :func:`load_rps`), which keeps rising past capacity where a real server's throughput (its
    reported "arrivals") saturates. Overloaded: queue time past the alarm (``overloaded``), or
    the Little's-law rate above what the replicas hold under round-robin while arrivals fill at
    least :data:`NEAR_FULL` of it (the queue is growing). ``cap`` is that round-robin capacity
    (:func:`share_capacity`), which the caller has at hand.

    Why not Little's law always: concurrency over the *planned* sojourn reads above arrivals
    whenever a slot batches later than the plan assumed (punct models read 3-9x on the diurnal
    day). Sized that way, the scale-up added a GPU after every right-sizing re-plan and the next
    re-plan took it away again: 90 migrations and 8 flaps on a stationary day. Read only when it
    says "over capacity", it still leads a spike (tests/test_scaling_sim.py: 98.2 % of the spiked
    model within SLO, 96.8 % on arrivals alone). A batch model's queue fills toward its preferred
    batch by design (its concurrency is a sawtooth), so it is always sized by arrivals.
    """
    if not m.streaming:
        return sig.arrival_rps
    littles = load_rps(sig, sojourn_s(plan, m.name), run_s(plan, m.name))
    # Over capacity by concurrency counts only once arrivals fill 85 % of it too: punct-en at
    # 110 rps in a re-plan's tight 187.7 rps read 300 by concurrency, a batching artefact.
    busy = sig.arrival_rps >= NEAR_FULL * cap
    return littles if overloaded or (busy and littles > cap) else sig.arrival_rps


def stream_sd(m: Model, rate: float) -> float:
    """Standard deviation (rps) of a streaming model's rate that comes from how many streams are
    live, not from counting requests: at ``rate`` with ``rps / streams`` chunks per second per
    stream, about ``rate / (rps / streams)`` streams are live, a Poisson number, so the rate
    swings by ``sqrt(rate * rps / streams)``. It lasts as long as a session (minutes), so no
    averaging window takes it out: it is real load, not measurement noise. 0 without ``streams``.

    Measured on the diurnal day: asr-es (385 rps over 112 streams) at 399 rps has a one-minute
    standard deviation of 29 rps (this gives 37; Poisson counting over a minute gives 2.6), asr-en
    at 3406 rps 84 (108; Poisson 7.5), punct-en (no streams) 1.3 (Poisson 1.35).
    """
    t = m.traffic
    if not m.streaming or not t.streams or t.rps <= 0 or rate <= 0:
        return 0.0
    return math.sqrt(rate * t.rps / t.streams)


def _replan_want(history: tuple[tuple[float, float], ...], m: Model, now: float, lead: float,
                 settings: ScalingSettings) -> float:
    """Rate a re-plan should pack ``m`` for, from its arrivals over the scale-down window: the
    highest mean over any whole averaging window in it (a minute; a batch model's SLO, up to the
    history; the current one even when the history is shorter), or the current mean projected with the 10-minute trend over ``lead`` plus its
    Poisson noise, whichever is larger; over the target utilisation.

    Worked numbers: 40 samples 15 s apart at 100 rps, then 110 for the last minute, z = 0, lead
    977.5 s: windows of a minute peak at 110; the trend (0.017 rps/s) projects 110 + 0.017 x 1007.5
    = 127: the packing is for 127 rps. The one-minute slope extrapolated that far would double it.
    """
    w, t = settings.windows, settings.targets
    if not history:
        return 0.0
    win = w.stable_s if m.streaming else max(w.stable_s, min(m.slo_ms / 1000.0, w.scale_down_s))
    step = (history[-1][0] - history[0][0]) / (len(history) - 1) if len(history) > 1 else w.stable_s
    means = []
    for i, (ti, _) in enumerate(history):
        xs = [y for tj, y in history[: i + 1] if tj > ti - win + EPS]
        means.append(_mean(xs))
    cur = means[-1]
    # Only whole windows count toward the highest: the first samples of the history are windows of
    # one or two scrapes, and the most of many such short means is noise. A summarizer at 0.0124 rps
    # that saw one arrival in its first 15 s read 0.067 (5.4x its peak) over a "window" of one
    # sample, and every re-plan of the diurnal day packed its summarizers at 2-10x their peaks.
    full = [x for (ti, _), x in zip(history, means) if ti - history[0][0] >= win - step - EPS]
    span = max(w.stable_s, min(win, len(history) * step))
    noise = t.noise_z * math.sqrt(max(cur, 0.0) / span)
    trend = _slope(history, t.noise_z)
    ahead = min(cur + trend * (win / 2 + lead), t.max_forecast_factor * cur)
    return max(max(full, default=cur), ahead + noise) / t.target_utilisation


def observe(plan: Plan, signals: Mapping[str, Signals], state: ScalingState, now: float,
            settings: ScalingSettings) -> tuple[dict[str, Demand], ScalingState]:
    """Steps 1-2: fold this snapshot into the windows and say what each model wants.

    Worked numbers: samples 600, 600, 600, 900 rps over 60 s with the last 6 s at 900: the stable
    load is 675, the panic load 900. Capacity 700: stable want 675 / 0.7 = 964 (short), panic want
    900 / 0.7 = 1286 >= 1.5 x 700 = 1050, so panic, and want = 1286.
    """
    models: dict[str, ModelState] = dict(state.models)
    out: dict[str, Demand] = {}
    history_ok = state.since is not None and now - state.since >= settings.windows.scale_down_s
    for m in plan.fleet.models:
        models[m.name], out[m.name] = _model_demand(plan, m, models.get(m.name, ModelState()), signals.get(m.name),
                                                    now, history_ok, settings)
    since = now if state.since is None else state.since
    return out, replace(state, models=models, since=since)


def _model_demand(plan: Plan, m: Model, ms: ModelState, sig: Signals | None, now: float, history_ok: bool,
                  settings: ScalingSettings) -> tuple[ModelState, Demand]:
    """One model's step of :func:`observe`: its windows with this sample folded in, and its
    demand. Kept as one function: each estimate (stable and panic load, trend, noise, forecast,
    the wants and the look ahead) feeds the next, and each carries the measured reason it is so
    beside it; apart, they would pass a dozen numbers between them."""
    w, t, cs = settings.windows, settings.targets, settings.cold_start
    cap = share_capacity(plan, m.name)
    samples = ms.samples
    history = ms.history
    queue_late = late = False
    if sig is not None:
        # Past half the SLO and past the wait the plan allows (the second scans the plan: asked
        # only of a queue past the first).
        queue_late = sig.queue_ms > t.queue_alarm * m.slo_ms and sig.queue_ms > planned_wait_ms(plan, m.name)
        load_now = sized_load(sig, plan, m, queue_late, cap)
        samples = samples + ((now, load_now),)
        history = tuple(x for x in history + ((now, sig.arrival_rps),) if x[0] > now - w.scale_down_s + EPS)
        # One late move per stabilisation window: the move's replica serves after its weights
        # load and the late share lags an interval, so a minute later the signal still counts
        # the requests of the slot it left (the diurnal day moved asr-de six times in six
        # minutes, each onto a new A100, while its late share was a replica the moves never
        # touched).
        late = sig.late_share > t.late_alarm and not (ms.last_up is not None and now - ms.last_up < w.scale_down_s)
    limit = ms.crowd_limit
    if late:
        crowd = max((len(p.models) for p in plan.placements_of(m.name)), default=1)
        if crowd > 1:
            limit = min(limit or crowd, crowd - 1)
    samples = tuple(s for s in samples if s[0] > now - w.stable_s + EPS)
    if not samples:
        return (replace(ms, samples=samples, history=history, crowd_limit=limit),
                Demand(m.name, cap, 0.0, cap, cap, 0.0, False, False, False, limit, cap))
    step = samples[-1][0] - samples[-2][0] if len(samples) > 1 else w.panic_s
    stable = _mean([y for _, y in samples])
    recent = [y for s, y in samples if s > now - w.panic_s + EPS] or [samples[-1][1]]
    panic_load = _mean(recent)
    slope = _slope(samples, t.noise_z)
    # Poisson noise of a rate measured over a window T: sqrt(rate / T). The panic window
    # holds at least one whole scrape interval.
    span = max(w.stable_s, now - samples[0][0])
    if not m.streaming:
        # A batch request may wait its whole SLO (minutes), so what its replicas must hold is
        # the rate over that long (up to the history kept), not a minute's: 0.2 rps is 12
        # arrivals a minute (+-58% at 2 sigma) but 60 in five (+-26%). Its overload shows as
        # queue time, not as a 6 s rate: no rate panic.
        long = [x for x in history if x[0] > now - min(m.slo_ms / 1000.0, w.scale_down_s) + EPS] or list(samples)
        stable = panic_load = _mean([y for _, y in long])
        slope = _slope(tuple(long), t.noise_z)
        # The noise is that of the time really seen, not of a minute: no one-minute floor,
        # so the first samples of a run count as the few arrivals they are (the first one
        # as the panic window, its interval not known yet). With the floor, summarizer-de
        # (its slot holds 0.013 rps) read 2 arrivals in its first 15 s as 0.133 rps less
        # 2 sqrt(0.133 / 60) = 0.094 of noise: wanting 0.039, it got an L4 at t = 15 s for the
        # rest of the run; summarizer-en an A100 on 5 arrivals (bench/spot.py multilingual
        # seeds 5 and 7, at the peak traffic the plan holds). Now 2 sqrt(0.133 / 6) = 0.30:
        # wants 0. A real overload still shows as queue time past the alarm (``queue_late``),
        # which panics.
        span = len(long) * step
    noise = t.noise_z * math.sqrt(max(stable, 0.0) / span)
    pnoise = t.noise_z * math.sqrt(max(panic_load, 0.0) / max(w.panic_s, step))
    # The stable mean lags by half a window; new capacity arrives after a cold start.
    horizon = w.stable_s / 2 + cs.weights_s(m.memory_gb)
    forecast = min(stable + slope * horizon, t.max_forecast_factor * max(stable, panic_load))
    calm_want = max(0.0, forecast - noise) / t.target_utilisation
    # What shrinking must leave: the measurement noise and the live streams' swing, which is
    # real load (the scale-up sizes on the measurement's lower bound only). Without the swing
    # a consolidation left asr-es 10 % above its 10-minute high, and its 112 streams moved its
    # rate by more within minutes: the GPU was bought back (6 flaps on the diurnal day).
    swing = t.noise_z * math.sqrt(max(stable, 0.0) / span + stream_sd(m, stable) ** 2)
    calm_high = (forecast + swing) / t.target_utilisation
    panic_want = max(0.0, panic_load - pnoise) / t.target_utilisation
    panic_until = ms.panic_until
    # Panic is about load: a rate past capacity, or requests queueing past half the SLO and past
    # the wait the plan allows them (a group's member waits for the others' batches). Late
    # requests at a rate the slots hold are a packing problem with its own bounded answer
    # (one move out of a crowded slot, :func:`packer.scaling.up.relieve`); they never panic.
    if panic_want >= w.panic_threshold * max(cap, EPS) or queue_late:
        panic_until = now + w.stable_s
    panic = panic_until is not None and now < panic_until
    # Want is demand only, never capacity: with ``cap`` in it (panic used to keep want at
    # capacity, to keep from shrinking) every move that raised capacity raised the want with
    # it, the scale-down window remembered it and the re-plans packed for it: asr-de's want
    # went 405 -> 1811 -> 3269 rps on the diurnal day at 430-520 rps of arrivals. Panic keeps
    # capacity by forbidding the shrink (``may_shrink``), not by inflating the want.
    if panic:
        want = max(calm_want, panic_want)
        load = max(forecast, panic_load)
    else:
        want, load = calm_want, forecast
        panic_until = None
    wants = tuple(x for x in ms.wants + ((now, max(want, calm_high)),) if x[0] > now - w.scale_down_s + EPS)
    # Shrink only to what the 10-minute trend of arrivals says is needed a stabilisation window
    # from now: on a diurnal ramp the highest demand of the *past* window is below the next
    # one's, and a consolidation sized on it was undone by a scale-up minutes later (asr-en
    # at 11.7 h and 15.1 h, asr-es at 4.6-5.5 h on the diurnal day: 3 flaps, each a GPU
    # released and bought back). A stationary model has no significant trend: no change.
    ahead = 0.0
    if history_ok and len(history) >= 3:
        now_rate = _mean([y for x, y in history if x > now - w.stable_s + EPS]) if m.streaming else stable
        rising = _slope(history, t.noise_z)
        ahead = (min(now_rate + rising * (w.scale_down_s + horizon), t.max_forecast_factor * now_rate)
                 + swing) / t.target_utilisation if rising > 0 else 0.0
    want_down = max(max(x for _, x in wants), ahead) * (1 + w.scale_down_band)
    # A re-plan's packing must hold until the next re-plan could have a new node serving.
    lead = (t.replan_every_s + cs.node_s + cs.image_s + cs.weights_s(m.memory_gb)) if t.replan_every_s > 0 else horizon
    replan_want = _replan_want(history, m, now, lead, settings)
    loading = ms.serving_at is not None and now < ms.serving_at - EPS
    return (replace(ms, samples=samples, history=history, wants=wants, panic_until=panic_until, crowd_limit=limit),
            Demand(m.name, cap, load, want, want_down, slope, panic,
                   history_ok and not panic and not late and not loading, late, limit, replan_want))
