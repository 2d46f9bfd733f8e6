"""Leader election on a ``coordination.k8s.io/v1`` Lease, as client-go's leaderelection does it.

Only the holder of an unexpired lease writes. A takeover or renewal is a merge patch carrying the
``resourceVersion`` it read, which the API server treats as a precondition: of two candidates
racing for an expired lease, one gets 409 and stays a follower. Renewals happen when a third of
the lease has passed, not on every cycle, so a quiet leader writes little.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from k8s.cluster import ApiError, Cluster
from k8s.names import MANAGED_BY, MANAGER


def _fmt(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(s: str | None) -> float:
    if not s:
        return 0.0
    return dt.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


@dataclass(frozen=True)
class LeaseView:
    """What a Lease says, read into plain values (the pure part of the election)."""

    holder: str
    renewed: float
    duration_s: float
    transitions: int
    resource_version: str | None

    @classmethod
    def of(cls, lease: dict[str, Any]) -> "LeaseView":
        spec = lease.get("spec") or {}
        return cls(spec.get("holderIdentity") or "", _parse(spec.get("renewTime")),
                   float(spec.get("leaseDurationSeconds") or 0), int(spec.get("leaseTransitions") or 0),
                   (lease.get("metadata") or {}).get("resourceVersion"))

    def expired(self, now: float) -> bool:
        return not self.holder or now - self.renewed >= self.duration_s


def decide(view: LeaseView | None, me: str, now: float, duration_s: float) -> str:
    """``create``, ``renew``, ``take``, ``hold`` (mine, fresh) or ``follow`` (someone else's)."""
    if view is None:
        return "create"
    if view.holder == me:
        return "renew" if now - view.renewed >= duration_s / 3 else "hold"
    return "take" if view.expired(now) else "follow"


class LeaderElector:
    def __init__(self, cluster: Cluster, namespace: str, name: str, identity: str, duration_s: int) -> None:
        self.cluster, self.namespace, self.name = cluster, namespace, name
        self.identity, self.duration_s = identity, duration_s
        self.leader = False

    def ensure(self, now: float) -> bool:
        """Am I the leader now? Creates, renews or takes over the lease as needed."""
        lease = self.cluster.get("Lease", self.namespace, self.name)
        view = LeaseView.of(lease) if lease is not None else None
        step = decide(view, self.identity, now, self.duration_s)
        spec = {"holderIdentity": self.identity, "leaseDurationSeconds": self.duration_s, "renewTime": _fmt(now)}
        try:
            if step == "create":
                self.cluster.create({
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace, "labels": {MANAGED_BY: MANAGER}},
                    "spec": {**spec, "acquireTime": _fmt(now), "leaseTransitions": 0}})
            elif step in ("renew", "take"):
                assert view is not None
                if step == "take":
                    spec |= {"acquireTime": _fmt(now), "leaseTransitions": view.transitions + 1}
                meta = {"resourceVersion": view.resource_version} if view.resource_version else {}
                self.cluster.patch("Lease", self.namespace, self.name, {"metadata": meta, "spec": spec},
                                   retry_conflict=False)
        except ApiError as e:
            if e.status != 409:
                raise
            self.leader = False  # another candidate won the race
            return False
        self.leader = step in ("create", "renew", "take", "hold")
        return self.leader
