"""Leader election on a ``coordination.k8s.io/v1`` Lease, as client-go's leaderelection does it.

Only the holder of an unexpired lease writes. A takeover or renewal is a merge patch carrying the
``resourceVersion`` it read, which the API server treats as a precondition: of two candidates
racing for an expired lease, one gets 409 and stays a follower. Renewals happen when a third of
the lease has passed, not on every cycle, so a quiet leader writes little.

Fencing: a leader may write only until ``deadline`` (its last renewal plus the lease duration,
less a safety margin for clock drift between replicas and a request already in flight). The
reconciler checks it before every API call (:meth:`LeaderElector.budget`), bounds each call's
timeout by what is left, and renews mid-cycle when a third of the lease has passed, with the
resourceVersion precondition of the last renewal: a 409 means someone took over. Past the deadline
the leader stops acting at once; only a new cycle's election may make it leader again.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
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


class LeaseLost(Exception):
    """Raised before an API call a leader may no longer make: its lease expired or was taken."""


class LeaderElector:
    def __init__(self, cluster: Cluster, namespace: str, name: str, identity: str, duration_s: int,
                 margin_s: float = 0.0, clock: Callable[[], float] = time.time) -> None:
        self.cluster, self.namespace, self.name, self.clock = cluster, namespace, name, clock
        self.identity, self.duration_s = identity, duration_s
        self.margin_s = min(margin_s, duration_s / 3)
        self.leader = False
        self.renewed = 0.0
        """Clock time of the renewal (ours) the lease now carries."""
        self.resource_version: str | None = None
        """The lease's resourceVersion after our last read or write: a renewal's precondition."""

    @property
    def deadline(self) -> float:
        """Clock time after which this replica must not write (no lease: already past)."""
        return self.renewed + self.duration_s - self.margin_s if self.leader else float("-inf")

    def _held(self, now: float, lease: dict[str, Any] | None) -> None:
        self.leader, self.renewed = True, now
        rv = ((lease or {}).get("metadata") or {}).get("resourceVersion")
        self.resource_version = rv or None

    def lose(self) -> None:
        self.leader, self.renewed, self.resource_version = False, 0.0, None

    def budget(self, now: float, *, renew: bool = True) -> float:
        """Seconds the next API call may take, renewing the lease first when a third of it has
        passed. Raises :class:`LeaseLost` past the deadline or when the renewal finds the lease
        taken (409 on its resourceVersion precondition) or cannot be made."""
        left = self.deadline - now
        if left <= 0:
            was = self.leader
            self.lose()
            raise LeaseLost(f"lease {self.name} expired {-left:.1f} s ago" if was else f"not the holder of {self.name}")
        if renew and now - self.renewed >= self.duration_s / 3:
            spec = {"holderIdentity": self.identity, "leaseDurationSeconds": self.duration_s, "renewTime": _fmt(now)}
            meta = {"resourceVersion": self.resource_version} if self.resource_version else {}
            try:
                got = self.cluster.patch("Lease", self.namespace, self.name, {"metadata": meta, "spec": spec},
                                         retry_conflict=False, timeout_s=left)
            except ApiError as e:
                left = self.deadline - self.clock()
                if left > 0 and e.status != 409:
                    return left  # not renewed (API trouble), but still ours until the deadline
                self.lose()
                raise LeaseLost(f"lease {self.name} not renewed: {e}") from None
            self._held(now, got)
            left = self.deadline - now
        return left

    def release(self, now: float) -> bool:
        """Give the lease up (a one-cycle run from outside the cluster, done): empty holder, with
        the resourceVersion of our last renewal as precondition, so a lease someone else took in
        the meantime is left alone. True when released; a failure leaves it to expire."""
        if not self.leader:
            return False
        meta = {"resourceVersion": self.resource_version} if self.resource_version else {}
        spec = {"holderIdentity": "", "leaseDurationSeconds": 1, "renewTime": _fmt(now)}
        try:
            self.cluster.patch("Lease", self.namespace, self.name, {"metadata": meta, "spec": spec},
                               retry_conflict=False, timeout_s=self.cluster.settings.request_timeout_s)
        except ApiError:
            return False
        finally:
            self.lose()
        return True

    def ensure(self, now: float) -> bool:
        """Am I the leader now? Creates, renews or takes over the lease as needed."""
        # A leader's election calls get no more time than its lease has left; past it, it is a
        # candidate like any other (and may renew only what nobody else took: the precondition).
        if self.leader and self.deadline <= now:
            self.lose()
        limit = self.deadline - now if self.leader else None
        try:
            lease = self.cluster.get("Lease", self.namespace, self.name, timeout_s=limit)
        except ApiError:
            self.lose()
            raise
        view = LeaseView.of(lease) if lease is not None else None
        got: dict[str, Any] | None = None
        step = decide(view, self.identity, now, self.duration_s)
        spec = {"holderIdentity": self.identity, "leaseDurationSeconds": self.duration_s, "renewTime": _fmt(now)}
        try:
            if step == "create":
                got = self.cluster.create({
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace, "labels": {MANAGED_BY: MANAGER}},
                    "spec": {**spec, "acquireTime": _fmt(now), "leaseTransitions": 0}})
            elif step in ("renew", "take"):
                assert view is not None
                if step == "take":
                    spec |= {"acquireTime": _fmt(now), "leaseTransitions": view.transitions + 1}
                meta = {"resourceVersion": view.resource_version} if view.resource_version else {}
                got = self.cluster.patch("Lease", self.namespace, self.name, {"metadata": meta, "spec": spec},
                                         retry_conflict=False, timeout_s=limit)
        except ApiError as e:
            self.lose()
            if e.status != 409:
                raise
            return False  # another candidate won the race
        if step == "follow":
            self.lose()
        elif step == "hold":
            assert view is not None
            self.leader, self.renewed, self.resource_version = True, view.renewed, view.resource_version
        else:
            self._held(now, got)
        return self.leader
