"""The simulated cluster's nodes and slots, and where a new slot fits.

The event loop (``sims/engine.py``) creates and removes them as the plan and the policy ask and
the clock allows; this module holds what they are and the placement rule, which reads no clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from packer.catalog import is_valid_combination
from packer.fleet import Pool
from packer.slot import WHOLE, SlotType
from sims.server import Member, SlotServer


@dataclass
class Node:
    name: str
    pool: Pool
    ready_at: float
    spot: bool
    gpus: dict[int, list[str]] = field(default_factory=dict)
    """GPU index -> ids of slots on it."""
    pulled: bool = False
    preempting: bool = False
    alive: bool = True
    gone_at: float | None = None
    """Simulated second a preemption notice takes the node away (None: no notice)."""


@dataclass
class Slot:
    id: str
    pool: Pool
    profile: str
    node: Node
    gpu: int
    width: int
    server: SlotServer
    ready_at: float
    created: float
    ready: bool = False
    preempting: bool = False
    busy_mark: float = 0.0
    busy_last: float = 0.0
    removed_at: float | None = None
    drain_from: float = 0.0
    """When the last member was asked to drain (a removed slot ends no earlier)."""

    @property
    def st(self) -> SlotType:
        return SlotType(self.pool, self.profile)

    @property
    def live(self) -> list[Member]:
        return [m for m in self.server.members if not m.removed]


def free_place(nodes: Iterable[Node], slots: Mapping[str, Slot], pool: Pool, profile: str,
               width: int, gpu: int | None = None) -> tuple[Node, list[int]] | None:
    """The first live node of ``pool`` (not under a notice) with ``width`` GPUs that can take a
    ``profile`` slot: empty GPUs for a whole one, a valid MIG combination beside the slots already
    there for a slice. ``gpu``: only the GPUs from that index (the one a policy's plan chose).
    None: a new node is needed."""
    for n in nodes:
        if n.pool.name != pool.name or not n.alive or n.preempting:
            continue
        free = []
        for g, ids in sorted(n.gpus.items()):
            if gpu is not None and not gpu <= g < gpu + width:
                continue
            profiles = [slots[i].profile for i in ids]
            if profile == WHOLE:
                ok = not ids
            else:
                ok = WHOLE not in profiles and is_valid_combination(pool.gpu, profiles + [profile])
            if ok:
                free.append(g)
                if len(free) == width:
                    return n, free
    return None
