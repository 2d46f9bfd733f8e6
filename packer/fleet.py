"""The fleet: what to serve (models) and what to serve it on (pools), as types.

``packer.fleetfile`` reads a fleet file into them (``parse_fleet``, ``load_fleet``), validating
everything a planner or a user would trip over later and reporting it as a :class:`FleetError`
that names the field and the fix; the CLI turns it into exit code 2. This module imports nothing
of the slot maths, which read these types.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from functools import cached_property

from packer.catalog import gpu_type
from packer.safeload import InputError

_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
SHARING_MODES = ("mig", "time-slicing")
KINDS = ("streaming", "batch")

# The keys each mapping of a fleet file may have (docs/fleet-format.md). Anything else is refused
# with a did-you-mean: a typo such as ``min_replica: 3`` must not plan silently with the default.
# Top-level keys starting with ``x-`` are free (a place for YAML anchors and notes).
FLEET_KEYS = ("name", "about", "pools", "models")
POOL_KEYS = ("name", "gpu", "gpus_per_node", "max_nodes", "cost_per_gpu_hour", "sharing", "spot",
             "preemption_notice_s", "preemptions_per_node_hour")
MODEL_KEYS = ("name", "kind", "memory_gb", "gpus_per_replica", "traffic", "slo_ms", "latency_ms", "max_batch",
              "min_replicas", "max_replicas", "artifact", "spot_policy", "on_demand_floor",
              "spot_loss")
SPOT_POLICIES = ("free", "floor", "never")
"""May a model run on spot GPUs: ``free`` (anywhere, the default), ``floor`` (its on-demand
replicas alone hold ``on_demand_floor`` of its peak), ``never`` (on-demand only)."""
SPOT_LOSSES = ("node", "pool")
"""What a ``floor`` model's floor survives: one spot node, or every spot node (``Model.spot_loss``)."""
DEFAULT_FLOOR = 0.5
MAX_NOTICE_S = 3600.0
DEFAULT_NOTICE_S = 30.0
"""A spot pool's notice when the fleet states none: GCP's 30 s, the shortest a cloud gives (the
simulator's ``spot`` scenario and the reconciler use it too)."""
MAX_PREEMPTION_RATE = 100.0
TRAFFIC_KEYS = ("rps", "peak_rps", "streams")
LATENCY_KEYS = ("gpu", "base", "per_item")
ARTIFACT_KEYS = ("uri", "backend", "platform", "sha256")
REQUIRED = {"name", "pools", "models", "gpu", "gpus_per_node", "cost_per_gpu_hour", "kind", "memory_gb", "traffic",
            "slo_ms", "latency_ms", "max_batch", "rps", "base", "per_item", "uri"}

# Sane ranges: far beyond any real fleet, far below what overflows the maths or the planner's memory.
MAX_GPUS_PER_NODE = 64
MAX_NODES = 1000
MAX_COST = 1e6
MAX_MEMORY_GB = 10_000.0
MAX_RPS = 1e6
MAX_STREAMS = 10_000_000
MAX_SLO_MS = 86_400_000.0  # a day
MAX_LATENCY_MS = 1e6
MAX_BATCH = 65_536
MAX_REPLICAS = 10_000


class FleetError(InputError):
    """A fleet file problem a user can fix: ``field`` says where, the message says how."""


@dataclass(frozen=True)
class Pool:
    name: str
    gpu: str
    gpus_per_node: int
    max_nodes: int
    cost_per_gpu_hour: float
    sharing: tuple[str, ...] = ()
    spot: bool = False
    preemption_notice_s: float | None = None
    """Warning a spot node gets before it goes (GCP 30 s, AWS 120 s); None: not stated."""
    preemptions_per_node_hour: float | None = None
    """Expected preemptions of one node per hour; None: not stated."""

    @property
    def notice_s(self) -> float:
        """The notice the planner counts on: the stated one, else :data:`DEFAULT_NOTICE_S`."""
        return DEFAULT_NOTICE_S if self.preemption_notice_s is None else self.preemption_notice_s

    @property
    def mig(self) -> bool:
        return "mig" in self.sharing and gpu_type(self.gpu).has_mig

    @property
    def time_slicing(self) -> bool:
        return "time-slicing" in self.sharing

    @property
    def max_gpus(self) -> int:
        return self.gpus_per_node * self.max_nodes


@dataclass(frozen=True)
class LatencyProfile:
    """Run time of one batch of ``b`` requests: ``base + per_item * b`` ms on ``gpu``.

    ``gpu`` is a GPU type (``a100-80gb``) or a MIG profile of one (``a100-80gb/2g.20gb``).
    """

    gpu: str
    base: float
    per_item: float

    def ms(self, batch: int) -> float:
        return self.base + self.per_item * batch


@dataclass(frozen=True)
class Traffic:
    rps: float
    peak_rps: float
    streams: int | None = None

    @property
    def per_stream_rps(self) -> float | None:
        """Chunks a second one stream sends (``rps / streams``); None without ``streams``, where
        requests are routed one by one."""
        if self.streams is None or self.streams <= 0 or self.rps <= 0:
            return None
        return self.rps / self.streams


@dataclass(frozen=True)
class Artifact:
    """Where the model's weights live and what Triton backend serves them (optional)."""

    uri: str
    backend: str = "python"
    platform: str | None = None
    sha256: str | None = None
    """Hex digest of the file at ``uri``; the Kubernetes fetch verifies it (and requires it for https)."""


@dataclass(frozen=True)
class Model:
    name: str
    kind: str
    memory_gb: float
    traffic: Traffic
    slo_ms: float
    latency: tuple[LatencyProfile, ...]
    max_batch: int
    gpus_per_replica: int = 1
    min_replicas: int = 1
    max_replicas: int | None = None
    artifact: Artifact | None = None
    spot_policy: str = "free"
    """``free``, ``floor`` or ``never`` (:data:`SPOT_POLICIES`)."""
    on_demand_floor: float = 0.0
    """Share of ``peak_rps`` the model keeps serving within its SLO when spot capacity goes (the
    loss ``spot_loss`` names): 0 for ``free``, 1 for ``never``, ``on_demand_floor`` (default 0.5)
    for ``floor``."""
    spot_loss: str = "node"
    """What the floor must survive (:data:`SPOT_LOSSES`): ``node``, any one spot node (the other
    spot nodes and the on-demand ones still serve); ``pool``, every spot node at once (the
    on-demand replicas alone hold the floor)."""

    @property
    def streaming(self) -> bool:
        return self.kind == "streaming"

    def spot_replicas(self, count: int, spot_nodes: int = 1, notice_s: float = math.inf) -> int:
        """How many of ``count`` replicas may run on a spot pool of ``spot_nodes`` nodes that gives
        ``notice_s`` of notice.

        A node under notice gets no new requests, and the requests it holds are lost when it goes
        unless they finish within the notice. A model whose SLO is longer than the notice (a batch
        model: a summarizer with 10 minutes batches for minutes) may hold a request that long, so
        every preemption would lose requests: a ``floor`` model with such an SLO runs no replica
        on that pool (bench/spot.py: falcon-40b, 0.1 rps, lost 2 of 120 requests to one preemption).

        Every replica is sized for ``peak / count`` and requests are spread evenly, so the model
        keeps its floor while it loses at most ``L = floor((1 - floor) * count)`` replicas. Losing
        every spot node (``pool``) loses every spot replica: ``L`` of them may be spot. Losing one
        node (``node``) loses the replicas on it; the planner spreads a model's spot replicas over
        the pool's nodes, at most ``L`` a node, so ``L * spot_nodes`` may be spot. With a floor of
        0.5 and a pool of 2 spot nodes: 1 replica may not be spot (losing it loses everything), 2
        may both be (one a node; the other holds half), 3 may have 2 there.
        """
        if count <= 0:
            return 0
        if self.on_demand_floor > 0 and self.slo_ms / 1000.0 > notice_s:
            return 0  # a request may wait past the notice: each preemption would lose the queued ones
        lose = math.floor((1.0 - self.on_demand_floor) * count + 1e-9)
        return min(count, lose * (max(1, spot_nodes) if self.spot_loss == "node" else 1))

    def on_demand_replicas(self, count: int, spot_nodes: int = 1, notice_s: float = math.inf) -> int:
        """How many of ``count`` replicas must run on on-demand pools: the rest of
        :meth:`spot_replicas` (``ceil(floor * count)`` against one node or the whole pool)."""
        return count - self.spot_replicas(count, spot_nodes, notice_s)


@dataclass(frozen=True)
class Fleet:
    name: str
    pools: tuple[Pool, ...]
    models: tuple[Model, ...]
    about: str = ""
    source: str | None = field(default=None, compare=False)

    def pool(self, name: str) -> Pool:
        return next(p for p in self.pools if p.name == name)

    def model(self, name: str) -> Model:
        m = self._models_by_name.get(name)
        if m is None:
            raise KeyError(f"no model {name!r} in fleet {self.name!r}")
        return m

    @cached_property
    def _models_by_name(self) -> dict[str, Model]:
        """The models by name, built on first use: the planner looks models up by name in its
        inner loops (a scan took 0.6 s of a 20 s pattern LP at 500 models)."""
        return {m.name: m for m in self.models}

    def with_traffic(self, scale: dict[str, float] | float) -> "Fleet":
        """The same fleet with traffic scaled (per model, or all by one factor): for what-ifs."""
        def s(m: Model) -> float:
            return scale if isinstance(scale, (int, float)) else scale.get(m.name, 1.0)

        models = tuple(
            replace(m, traffic=replace(m.traffic, rps=m.traffic.rps * s(m), peak_rps=m.traffic.peak_rps * s(m)))
            for m in self.models
        )
        return replace(self, models=models)


# ---------------------------------------------------------------------------------------------
# Parsing
