"""The scaling policy in the loop: Triton metrics of the groups the reconciler runs, fed to
``packer.scaling.decide``; its actions applied to the deployed plan give the next plan.

Two pieces, each pluggable into :class:`k8s.reconciler.Reconciler`:

* :class:`TritonSignals` scrapes every owned group Service's metrics port and turns two
  consecutive scrapes into per-model :class:`packer.scaling.Signals` (summed over replicas).
  The previous scrape lives in memory: after a restart the first cycle only takes a baseline.
* :func:`packer_scaler` runs the policy; its hysteresis state round-trips through JSON so the
  reconciler keeps it in the status ConfigMap and a restart loses nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from k8s import names as N
from k8s.render import METRICS_PORT
from packer.errors import UserError
from packer.fleet import Fleet
from packer.plan import Plan
from packer.scaling import ModelState, Replan, ScalingSettings, ScalingState, Signals, apply, decide
from packer.scaling.replan import accept_replan, fleet_at

Replanner = Callable[[Plan, Fleet, "float | None"], Plan]
"""(deployed plan, fleet with the rates to plan for, duty-cycle headroom or None for the planner's
default) -> the planner's packing, migration-aware from the deployed plan."""
Scaler = Callable[[Plan, dict[str, Signals], dict[str, Any], float, Replanner],
                  tuple["Plan | None", dict[str, Any], list[str]]]
"""(deployed plan, signals, JSON policy state, now, re-plan) -> (next plan or None, state, reasons)."""


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
                        replan_traffic=dict(doc.get("replan_traffic") or {}))


def packer_scaler(settings: ScalingSettings | None = None) -> Scaler:
    """The project's policy: decide, then apply its actions (or re-plan when it asks to)."""
    s = settings or ScalingSettings()

    def scale(plan: Plan, signals: dict[str, Signals], state: dict[str, Any], now: float,
              replan: Callable[[Plan], Plan]) -> tuple[Plan | None, dict[str, Any], list[str]]:
        known = {m.name for m in plan.fleet.models}
        actions, st = decide(plan, {k: v for k, v in signals.items() if k in known}, state_from_json(state),
                             now, s)
        reasons = [f"{a.summary()}: {a.reason}" for a in actions]
        if not actions:
            return None, state_to_json(st), []
        rp = next((a for a in actions if isinstance(a, Replan)), None)
        if rp is not None:
            # The rates and headroom the policy asked for go to the planner; its packing is
            # judged by the same rule as in the simulator (saving against migration overlap).
            new = dataclasses.replace(replan(plan, fleet_at(plan.fleet, dict(rp.traffic)), rp.headroom), fleet=plan.fleet)
            ok, why = accept_replan(plan, new, dict(rp.traffic), settings=s)
            if not ok:
                return None, state_to_json(st), [*reasons, f"packing not taken: {why}"]
            return new, state_to_json(st), [*reasons, why]
        return apply(plan, actions), state_to_json(st), reasons
    return scale
