"""The scaling policy in the loop: Triton metrics of the groups the reconciler runs, fed to
``packer.scaling.decide``; its actions applied to the deployed plan give the next plan.

Two pieces, each pluggable into :class:`k8s.reconciler.Reconciler`:

* :class:`TritonSignals` scrapes every owned group Service's metrics port and turns two
  consecutive scrapes into per-model :class:`packer.scaling.Signals` (summed over replicas).
  The previous scrape lives in memory: after a restart the first cycle only takes a baseline.
* :func:`packer_scaler` runs the policy's step (:func:`packer.scaling.step`); its hysteresis state round-trips through JSON so the
  reconciler keeps it in the status ConfigMap and a restart loses nothing.
* :func:`preemption_notices` reads a spot preemption off the GPU nodes (a taint or a condition
  that the cloud or a termination handler sets) as the policy's notice for that plan node.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from k8s import names as N
from k8s.render import METRICS_PORT
from packer.errors import UserError
from packer.plan import Plan
from packer.scaling import ModelState, Replanner, ScalingSettings, ScalingState, Signals, step


@dataclass(frozen=True)
class Scaled:
    """What a scaler gives the reconciler for one cycle."""

    plan: Plan | None
    """The next plan; None keeps the deployed one."""
    state: dict[str, Any]
    """The policy's state as JSON, for the status ConfigMap."""
    reasons: list[str]


Scaler = Callable[..., Scaled]
"""(deployed plan, signals, JSON policy state, now, re-planner, notices=) -> :class:`Scaled`."""


def service_url(namespace: str) -> Callable[[str], str]:
    """In-cluster DNS name of a group Service's metrics endpoint."""
    return lambda name: f"http://{name}.{namespace}.svc:{METRICS_PORT}/metrics"


class TritonSignals:
    """Per-model load from the Triton servers of the owned groups, as the policy reads it."""

    def __init__(self, url_of: Callable[[str], str], *, clock: Callable[[], float],
                 timeout_s: float = 2.0, workers: int = 16) -> None:
        self.url_of, self.clock, self.timeout_s, self.workers = url_of, clock, timeout_s, workers
        self.prev: dict[str, Any] = {}
        self.failures: list[str] = []

    def __call__(self, plan: Plan | None, live: list[dict[str, Any]]) -> dict[str, Signals]:
        from serving import metrics

        names = sorted(o["metadata"]["name"] for o in live if o.get("kind") == "Service" and N.owned(o)
                       and N.GROUP_LABEL in (o["metadata"].get("labels") or {}))
        now = self.clock()

        def one(name: str) -> tuple[str, Any]:
            try:
                return name, metrics.scrape(self.url_of(name), now, timeout_s=self.timeout_s)
            except UserError as e:
                return name, e

        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            scrapes = dict(pool.map(one, names))
        self.failures = sorted(f"{n}: {s}" for n, s in scrapes.items() if isinstance(s, Exception))
        windows = [metrics.signals(self.prev[name], cur) for name, cur in scrapes.items()
                   if not isinstance(cur, Exception) and name in self.prev and cur.at_s > self.prev[name].at_s]
        out = metrics.policy_signals(windows)
        self.prev = {n: s for n, s in scrapes.items() if not isinstance(s, Exception)}
        return out


PREEMPTION_TAINTS = ("cloud.google.com/impending-node-termination", "aws-node-termination-handler/spot-itn",
                     "packer.dev/preempting")
"""Taints that say a node is being taken: GKE's on a spot or preemptible VM's termination, the AWS
node termination handler's on a spot interruption notice, and one an operator's own handler may set."""
PREEMPTION_CONDITIONS = ("PreemptionNotice", "TerminationNotice")
"""Node conditions (status True) that say the same, for handlers that set a condition instead."""
DEFAULT_NOTICE_S = 30.0
"""When the fleet's pool states no ``preemption_notice_s``: GCP's 30 s, the shorter of the clouds'."""


def _stamp(value: Any) -> float | None:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def preemption_notices(plan: Plan, nodes: list[dict[str, Any]], now: float) -> dict[str, float]:
    """Plan node -> seconds left before the cloud takes it, for every node of the plan whose real
    node carries a preemption taint or condition. The notice runs from the taint's ``timeAdded``
    (or the condition's ``lastTransitionTime``; ``now`` when absent) for the pool's
    ``preemption_notice_s``. A node the plan no longer uses gives nothing: the policy never
    removes what it does not have."""
    pool_of = {p.node: p.pool for p in plan.placements}
    out: dict[str, float] = {}
    for n in nodes:
        logical = (n.get("metadata", {}).get("labels") or {}).get(N.NODE_LABEL)
        if logical not in pool_of:
            continue
        since: float | None = None
        found = False
        for t in (n.get("spec") or {}).get("taints") or []:
            if isinstance(t, dict) and t.get("key") in PREEMPTION_TAINTS:
                found, since = True, _stamp(t.get("timeAdded")) if t.get("timeAdded") else None
        for c in (n.get("status") or {}).get("conditions") or []:
            if isinstance(c, dict) and c.get("type") in PREEMPTION_CONDITIONS and c.get("status") == "True":
                found = True
                since = since or (_stamp(c.get("lastTransitionTime")) if c.get("lastTransitionTime") else None)
        if not found:
            continue
        notice = plan.fleet.pool(pool_of[logical]).preemption_notice_s
        notice = DEFAULT_NOTICE_S if notice is None else notice
        out[logical] = max(0.0, (since if since is not None else now) + notice - now)
    return out


def state_to_json(state: ScalingState) -> dict[str, Any]:
    return dataclasses.asdict(state)


def state_from_json(doc: dict[str, Any] | None) -> ScalingState:
    if not doc:
        return ScalingState()
    models = {
        k: ModelState(**{f: (tuple(tuple(x) for x in v) if f in ("samples", "wants") else v)
                         for f, v in m.items()})
        for k, m in (doc.get("models") or {}).items()
    }
    return ScalingState(models=models, since=doc.get("since"), last_replan=doc.get("last_replan"),
                        last_down_try=doc.get("last_down_try"), starting=dict(doc.get("starting") or {}),
                        replan_traffic=dict(doc.get("replan_traffic") or {}), doomed=dict(doc.get("doomed") or {}),
                        ceiling=doc.get("ceiling"))


def packer_scaler(settings: ScalingSettings | None = None) -> Scaler:
    """The project's policy: one :func:`packer.scaling.step` (decide, then the re-plan it asks
    for, judged by the same rule as in the simulator), its state as JSON for the status ConfigMap."""
    s = settings or ScalingSettings()

    def scale(plan: Plan, signals: dict[str, Signals], state: dict[str, Any], now: float,
              replan: Replanner, *, notices: Mapping[str, float] | None = None) -> Scaled:
        known = {m.name for m in plan.fleet.models}
        out = step(plan, {k: v for k, v in signals.items() if k in known}, state_from_json(state), now, s, replan,
                   notices=notices)
        return Scaled(out.plan, state_to_json(out.state), out.reasons)
    return scale
