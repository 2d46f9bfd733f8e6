"""Prometheus metrics of the reconciler, in a registry of its own (two reconcilers in one process,
as in tests, must not share counters)."""

from __future__ import annotations

from collections.abc import Mapping, Sized
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class CycleFacts(Protocol):
    """What the metrics read of a reconcile cycle (``k8s.reconciler.CycleReport`` has it): the
    reconciler imports this module, never the other way round."""

    leader: bool
    seconds: float
    calls: Mapping[str, int]
    plan: Any
    dry_run: bool
    done: Any
    errors: Sized
    waiting: Sized
    conflicts: Sized
    writes: int
    input_errors: Sized


class ReconcilerMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.cost = Gauge("packer_plan_cost_per_hour", "Cost of the plan being applied, per hour", registry=r)
        self.bound = Gauge("packer_plan_lower_bound_per_hour", "Proven lower bound on any plan's cost", registry=r)
        self.gap = Gauge("packer_plan_gap", "(cost - bound) / cost of the plan being applied", registry=r)
        self.actions = Counter("packer_actions", "Writes done, by verb and kind", ["verb", "kind"], registry=r)
        self.waiting = Gauge("packer_actions_waiting", "Actions held back by the safe order", registry=r)
        self.errors = Counter("packer_errors", "API calls that failed for good", registry=r)
        self.conflicts = Gauge("packer_conflicts", "Desired names held by foreign objects", registry=r)
        self.cycle = Histogram("packer_cycle_seconds", "Duration of one reconcile cycle", registry=r,
                               buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.calls = Counter("packer_api_calls", "API calls, retries included, by verb", ["verb"], registry=r)
        self.writes = Gauge("packer_cycle_writes", "Writes of the last cycle (lease renewals excluded)",
                            registry=r)
        self.leader = Gauge("packer_leader", "1 when this replica holds the lease", registry=r)
        self.bad_input = Gauge("packer_bad_input", "Problems with the fleet or status ConfigMap's content in "
                               "the last cycle (the last good plan stays applied)", registry=r)

    def observe(self, rep: CycleFacts) -> None:
        self.leader.set(1 if rep.leader else 0)
        self.cycle.observe(rep.seconds)
        for verb, n in rep.calls.items():
            self.calls.labels(verb).inc(n)
        if rep.plan is not None:
            self.cost.set(rep.plan.cost_per_hour)
            self.bound.set(rep.plan.lower_bound_cost_per_hour)
            self.gap.set(rep.plan.gap)
        if not rep.dry_run:
            for a in rep.done:
                self.actions.labels(a.verb, a.kind).inc()
        self.errors.inc(len(rep.errors))
        self.waiting.set(len(rep.waiting))
        self.conflicts.set(len(rep.conflicts))
        self.writes.set(rep.writes)
        if rep.leader:
            self.bad_input.set(len(rep.input_errors))
