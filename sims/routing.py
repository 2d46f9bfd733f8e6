"""Routing a model's arrivals over its serving replicas, as the cluster's load balancing does.

Requests go round-robin over the ready replicas (gRPC ``round_robin``); a stream's chunks all go to
replica ``stream_id % n`` (sticky while the replica set is stable). With ``server.routing:
weighted`` each replica gets a share in proportion to its capacity instead (:func:`weighted_split`;
a stream still sticks to one replica), as behind a weighted load balancer. Which replicas serve
(not draining, not starting, not under a preemption notice) is the event loop's call.
"""

from __future__ import annotations

import math

import numpy as np

from packer.fleet import Fleet
from packer.slot import single_capacity
from sims.server import Member
from sims.traffic import Arrivals

PHI = (math.sqrt(5.0) - 1.0) / 2.0


def weighted_split(keys: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Replica index per request (or per stream id) for ``weights``: ``frac(key * φ)`` is a
    low-discrepancy sequence in [0, 1), cut into intervals as long as the weights. Consecutive keys
    spread almost as evenly as round-robin (any run of requests gets each replica's share within a
    few requests), and a stream's chunks, keyed by its id, all go to one replica."""
    cum = np.cumsum(weights, dtype=float)
    if cum[-1] <= 0:
        cum = np.arange(1.0, len(weights) + 1.0)
    u = np.mod(keys * PHI, 1.0)
    return np.minimum(np.searchsorted(cum / cum[-1], u, side="right"), len(weights) - 1)


class Router:
    """Each model's round-robin position, and the replicas' capacities for weighted routing."""

    def __init__(self, fleet: Fleet, u: float, weighted: bool) -> None:
        self.fleet, self.u, self.weighted = fleet, u, weighted
        self.rr = [0] * len(fleet.models)
        self._caps: dict[tuple[int, str, str], float] = {}

    def route(self, i: int, a: Arrivals, live: list[Member]) -> None:
        """Push model ``i``'s arrivals ``a`` to the serving replicas ``live`` (at least one)."""
        n, k = a.times.size, len(live)
        if k == 1:
            live[0].push(a.times)
        elif self.weighted:
            if a.streams is not None:
                which = weighted_split(a.streams, self.weights(i, live))
            else:
                which = weighted_split(np.arange(self.rr[i], self.rr[i] + n), self.weights(i, live))
                self.rr[i] += n
            for r, m in enumerate(live):
                m.push(a.times[which == r])
        elif a.streams is not None:
            which = a.streams % k
            for r, m in enumerate(live):
                m.push(a.times[which == r])
        else:
            off = self.rr[i]
            for r, m in enumerate(live):
                m.push(a.times[(r - off) % k::k])
            self.rr[i] = (off + n) % k

    def weights(self, i: int, live: list[Member]) -> np.ndarray:
        """Each replica's capacity: the rate the model alone could serve within its SLO on the
        replica's slot type (``packer.slot.single_capacity``; a MIG slice less than a whole GPU),
        divided among the models taking turns on that slot."""
        model = self.fleet.models[i]
        w = []
        for m in live:
            s = m.slot
            key = (i, s.pool.name, s.profile)  # type: ignore[attr-defined]
            cap = self._caps.get(key)
            if cap is None:
                cap = self._caps[key] = single_capacity(model, s.st, self.u)  # type: ignore[attr-defined]
            w.append(cap / max(1, sum(1 for x in s.server.members if not x.removed and not x.draining)))  # type: ignore
        return np.asarray(w)
