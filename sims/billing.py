"""What the simulated fleet costs: a GPU costs its pool's hourly price while any slot on it
exists, starting ones included, from the moment a slot is asked for until its last batch ends."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from packer.fleet import Pool
from sims.cluster import Node


class Billing:
    """GPU-seconds per pool, accrued window by window by the event loop."""

    def __init__(self, pools: Iterable[Pool]) -> None:
        self.pools = tuple(pools)
        self.gpu_seconds: dict[str, float] = {p.name: 0.0 for p in self.pools}

    def accrue(self, nodes: Iterable[Node], dt: float) -> None:
        """Bill ``dt`` seconds of every GPU that holds a slot."""
        for n in nodes:
            used = sum(1 for ids in n.gpus.values() if ids)
            if used:
                self.gpu_seconds[n.pool.name] += used * dt

    def refund(self, pool: str, seconds: float) -> None:
        """Take back GPU-seconds billed past a slot's end (billed to the window's end)."""
        self.gpu_seconds[pool] -= seconds

    def in_use(self, nodes: Iterable[Node]) -> dict[str, int]:
        """GPUs holding a slot, per pool."""
        nodes = list(nodes)
        return {p: sum(1 for n in nodes if n.pool.name == p for ids in n.gpus.values() if ids)
                for p in self.gpu_seconds}

    def cost_per_hour(self, gpus: Mapping[str, int]) -> float:
        return round(sum(gpus[p.name] * p.cost_per_gpu_hour for p in self.pools), 4)

    def totals(self, duration_s: float) -> dict[str, Any]:
        """GPU-hours per pool, the cost, and the mean cost per hour over ``duration_s``."""
        gpu_hours = {p: round(v / 3600.0, 4) for p, v in self.gpu_seconds.items()}
        cost = sum(gpu_hours[p.name] * p.cost_per_gpu_hour for p in self.pools)
        return {"gpu_hours": gpu_hours, "cost": round(cost, 4),
                "mean_cost_per_hour": round(cost / (duration_s / 3600.0), 4)}
