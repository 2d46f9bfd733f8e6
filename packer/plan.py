"""The plan: where every replica runs, and why. One data model from planner to cluster.

A plan is self-contained: it embeds the fleet it was made for (``fleet``), so the Triton writer,
the simulator, the scaling policy and the reconciler need nothing else. ``docs/plan.schema.json``
is its JSON Schema; ``to_dict``/``from_dict`` are the only (de)serialisers.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from packer.fleet import Fleet, Model
from packer.fleetfile import parse_fleet
from packer.settings import PlanSettings

PLAN_VERSION = 1


def node_name(pool: str, node: int) -> str:
    """A node's name in a plan: ``<pool>-n<k>``."""
    return f"{pool}-n{node}"


def node_parts(node: str) -> tuple[str, int | None]:
    """The pool and index of a node named by :func:`node_name`; ``(node, None)`` for a name
    without an index."""
    head, _, tail = node.rpartition("-n")
    return (head, int(tail)) if head and tail.isdigit() else (node, None)


@dataclass(frozen=True)
class Member:
    """One replica of a model inside a slot."""

    name: str
    kind: str
    replica: int
    """0-based index of this replica among the model's replicas."""
    batch_size: int
    share: float
    """Fraction of the slot's time this member's batches take."""
    memory_gb: float
    p99_bound_ms: float
    slo_ms: float
    rate_rps: float
    """Peak request rate this replica is sized for."""


@dataclass(frozen=True)
class Placement:
    """One slot (whole GPU, MIG instance or a multi-GPU replica) and the models packed into it."""

    pool: str
    node: str
    gpu: int
    """GPU index on the node (the first one for a multi-GPU replica)."""
    slot: str
    """MIG profile name, or ``whole``."""
    models: tuple[Member, ...]
    duty_cycle_ms: float
    memory_gb: float
    memory_capacity_gb: float
    compute_share: float
    binding: str
    reason: str
    mig_start: int | None = None
    """Memory-slice offset of the MIG instance (its placement), None for whole GPUs."""
    gpus: tuple[int, ...] = ()
    """All GPU indices used, for ``gpus_per_replica > 1``; else ``(gpu,)``."""

    @property
    def id(self) -> str:
        """Stable slot identifier, e.g. ``a100-80-n0-g3-3g.40gb@4``."""
        tail = "whole" if self.slot == "whole" else f"{self.slot}@{self.mig_start}"
        if len(self.gpus) > 1:
            tail = f"x{len(self.gpus)}"
        return f"{self.node}-g{self.gpu}-{tail}"

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(sorted({m.kind for m in self.models}))


@dataclass(frozen=True)
class GpuLayout:
    pool: str
    node: str
    gpu: int
    layout: str
    """``whole`` or the mig-parted style layout name (``3g.40gb+2g.20gb+1g.10gb+1g.10gb``)."""
    creation_order: tuple[str, ...] = ()


@dataclass(frozen=True)
class Move:
    model: str
    replica: int
    src: str | None
    dst: str | None


@dataclass(frozen=True)
class Baseline:
    cost_per_hour: float
    gpus: dict[str, int]
    note: str = ""


@dataclass(frozen=True)
class Plan:
    fleet: Fleet
    status: str
    """``optimal`` when the cost is proven minimal, else ``feasible``."""
    cost_per_hour: float
    lower_bound_cost_per_hour: float
    solve_seconds: float
    gpus: dict[str, int]
    baselines: dict[str, Baseline]
    placements: tuple[Placement, ...]
    layouts: tuple[GpuLayout, ...] = ()
    replicas: dict[str, int] = field(default_factory=dict)
    moves: tuple[Move, ...] = ()
    settings: PlanSettings = field(default_factory=PlanSettings)
    """The planner's choices this plan was made with; every later stage reads its headroom here."""
    bound_method: str = ""
    warnings: tuple[str, ...] = ()

    @property
    def gap(self) -> float:
        if self.cost_per_hour <= 0:
            return 0.0
        return max(0.0, (self.cost_per_hour - self.lower_bound_cost_per_hour) / self.cost_per_hour)

    @property
    def id(self) -> str:
        """Content hash of the placements: the same packing always has the same id."""
        h = hashlib.sha256(json.dumps([_placement_dict(p) for p in self.placements], sort_keys=True).encode())
        return h.hexdigest()[:12]

    def model(self, name: str) -> Model:
        return self.fleet.model(name)

    def placements_of(self, model: str) -> list[Placement]:
        """The slots holding a replica of ``model``, in the plan's order."""
        return list(self._by_model.get(model, ()))

    @cached_property
    def _by_model(self) -> dict[str, list[Placement]]:
        """Slots by model, built once: asking for each model in turn scanned every slot each time
        (the spot exposure of a 3000-model plan took 7 s)."""
        out: dict[str, list[Placement]] = {}
        for p in self.placements:
            for name in dict.fromkeys(m.name for m in p.models):
                out.setdefault(name, []).append(p)
        return out


# ---------------------------------------------------------------------------------------------
# Serialisation


def fleet_to_dict(fleet: Fleet) -> dict[str, Any]:
    """The fleet in fleet-file form (what ``parse_fleet`` reads back)."""
    pools = []
    for p in fleet.pools:
        pools.append({"name": p.name, "gpu": p.gpu, "gpus_per_node": p.gpus_per_node, "max_nodes": p.max_nodes,
                      "cost_per_gpu_hour": p.cost_per_gpu_hour, "sharing": list(p.sharing), "spot": p.spot})
        for key in ("preemption_notice_s", "preemptions_per_node_hour"):
            if getattr(p, key) is not None:
                pools[-1][key] = getattr(p, key)
    models = []
    for m in fleet.models:
        d: dict[str, Any] = {
            "name": m.name, "kind": m.kind, "memory_gb": m.memory_gb, "gpus_per_replica": m.gpus_per_replica,
            "traffic": {"rps": m.traffic.rps, "peak_rps": m.traffic.peak_rps},
            "slo_ms": m.slo_ms,
            "latency_ms": [{"gpu": l.gpu, "base": l.base, "per_item": l.per_item} for l in m.latency],
            "max_batch": m.max_batch, "min_replicas": m.min_replicas,
        }
        if m.traffic.streams is not None:
            d["traffic"]["streams"] = m.traffic.streams
        if m.max_replicas is not None:
            d["max_replicas"] = m.max_replicas
        if m.spot_policy != "free":
            d["spot_policy"] = m.spot_policy
        if m.spot_policy == "floor":
            d["on_demand_floor"] = m.on_demand_floor
            if m.spot_loss != "node":
                d["spot_loss"] = m.spot_loss
        if m.artifact is not None:
            d["artifact"] = {k: v for k, v in asdict(m.artifact).items() if v is not None}
        models.append(d)
    return {"name": fleet.name, "about": fleet.about, "pools": pools, "models": models}


def _placement_dict(p: Placement) -> dict[str, Any]:
    d = asdict(p)
    d["id"] = p.id
    d["models"] = [asdict(m) for m in p.models]
    d["gpus"] = list(p.gpus)
    return d


def to_dict(plan: Plan) -> dict[str, Any]:
    return {
        "version": PLAN_VERSION,
        "id": plan.id,
        "fleet": fleet_to_dict(plan.fleet),
        "status": plan.status,
        "cost_per_hour": round_cost(plan.cost_per_hour),
        "lower_bound_cost_per_hour": round_cost(plan.lower_bound_cost_per_hour),
        "gap": round(plan.gap, 5),
        "bound_method": plan.bound_method,
        "solve_seconds": round(plan.solve_seconds, 3),
        "gpus": dict(plan.gpus),
        "baselines": {k: _baseline_dict(v) for k, v in plan.baselines.items()},
        "replicas": dict(plan.replicas),
        "layouts": [asdict(l) | {"creation_order": list(l.creation_order)} for l in plan.layouts],
        "placements": [_placement_dict(p) for p in plan.placements],
        "moves": [asdict(m) for m in plan.moves],
        "settings": plan.settings.to_dict(),
        "warnings": list(plan.warnings),
    }


def from_dict(d: dict[str, Any]) -> Plan:
    fleet = parse_fleet(d["fleet"])
    placements = tuple(
        Placement(
            pool=p["pool"], node=p["node"], gpu=p["gpu"], slot=p["slot"],
            models=tuple(Member(**m) for m in p["models"]),
            duty_cycle_ms=p["duty_cycle_ms"], memory_gb=p["memory_gb"], memory_capacity_gb=p["memory_capacity_gb"],
            compute_share=p["compute_share"], binding=p["binding"], reason=p["reason"],
            mig_start=p.get("mig_start"), gpus=tuple(p.get("gpus") or (p["gpu"],)),
        )
        for p in d["placements"]
    )
    return Plan(
        fleet=fleet, status=d["status"], cost_per_hour=d["cost_per_hour"],
        lower_bound_cost_per_hour=d["lower_bound_cost_per_hour"], solve_seconds=d["solve_seconds"],
        gpus=dict(d["gpus"]),
        baselines={k: Baseline(math.inf if v["cost_per_hour"] is None else v["cost_per_hour"], dict(v["gpus"]),
                               v.get("note", "")) for k, v in d["baselines"].items()},
        placements=placements,
        layouts=tuple(GpuLayout(l["pool"], l["node"], l["gpu"], l["layout"], tuple(l.get("creation_order", ())))
                      for l in d.get("layouts", [])),
        replicas=dict(d.get("replicas", {})),
        moves=tuple(Move(**m) for m in d.get("moves", [])),
        settings=PlanSettings.from_dict(d.get("settings")),
        bound_method=d.get("bound_method", ""),
        warnings=tuple(d.get("warnings", [])),
    )


def round_cost(x: float) -> float:
    """A cost as plans keep it: four decimals, or six significant digits below 1. Prices are in
    any currency; a fleet priced at 1e-9 a GPU-hour was planned right and every cost was 0.0."""
    return round(x, 4) if abs(x) >= 1 or x == 0 or not math.isfinite(x) else float(f"{x:.6g}")


def _baseline_dict(b: Baseline) -> dict[str, Any]:
    """A baseline that does not fit the pools costs ``null``: JSON has no infinity, and the plan's
    own reader refuses ``Infinity`` (a long-tail plan once could not be read back)."""
    return asdict(b) | {"cost_per_hour": None if math.isinf(b.cost_per_hour) else b.cost_per_hour}


def save_plan(plan: Plan, path: str | Path) -> None:
    Path(path).write_text(json.dumps(to_dict(plan), indent=2) + "\n")


