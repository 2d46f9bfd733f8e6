"""Shared fixtures: hand-built plans (the reconciler must work with any planner's output) and a
KubernetesEmulator served on loopback from a background thread, for the synchronous official client."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from packer.fleetfile import parse_fleet
from packer.plan import GpuLayout, Member, Placement, Plan

FLEET_DOC: dict[str, Any] = {
    "name": "k8s-test",
    "pools": [
        {"name": "a100", "gpu": "a100-80gb", "gpus_per_node": 2, "max_nodes": 2, "cost_per_gpu_hour": 4.1,
         "sharing": ["mig", "time-slicing"]},
        {"name": "l4", "gpu": "l4-24gb", "gpus_per_node": 4, "max_nodes": 4, "cost_per_gpu_hour": 0.8,
         "sharing": ["time-slicing"]},
    ],
    "models": [
        {"name": "asr", "kind": "streaming", "memory_gb": 2.5, "traffic": {"rps": 100, "peak_rps": 200},
         "slo_ms": 200, "latency_ms": {"gpu": "a100-80gb", "base": 4, "per_item": 0.1}, "max_batch": 64,
         "min_replicas": 2, "artifact": {"uri": "https://models.example/asr.onnx", "backend": "onnxruntime",
                                   "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"}},
        {"name": "punct", "kind": "streaming", "memory_gb": 0.6, "traffic": {"rps": 50, "peak_rps": 80},
         "slo_ms": 100, "latency_ms": {"gpu": "a100-80gb", "base": 2, "per_item": 0.05}, "max_batch": 32,
         "min_replicas": 2},
        {"name": "summ", "kind": "batch", "memory_gb": 20, "traffic": {"rps": 0.1, "peak_rps": 0.2},
         "slo_ms": 600000, "latency_ms": {"gpu": "a100-80gb", "base": 4000, "per_item": 900}, "max_batch": 16},
    ],
}

Slot = tuple[str, str, int, str, "int | None", list[tuple[str, int]]]
"""(pool, node, gpu, slot, mig_start, [(model, replica), ...])"""

BASE_SLOTS: list[Slot] = [
    ("a100", "a100-n0", 0, "3g.40gb", 0, [("asr", 0), ("summ", 0)]),
    ("a100", "a100-n0", 0, "3g.40gb", 4, [("asr", 1)]),
    ("l4", "l4-n0", 0, "whole", None, [("punct", 0)]),
    ("l4", "l4-n0", 1, "whole", None, [("punct", 1)]),
]


def fleet_doc(scale: float = 1.0) -> dict[str, Any]:
    import copy

    doc = copy.deepcopy(FLEET_DOC)
    for m in doc["models"]:
        m["traffic"] = {k: v * scale for k, v in m["traffic"].items()}
    return doc


def build_plan(slots: list[Slot], doc: dict[str, Any] | None = None) -> Plan:
    """A plan with exactly these slots; layouts list the MIG profiles used on each GPU."""
    fleet = parse_fleet(doc or FLEET_DOC)
    placements = []
    for pool, node, gpu, slot, start, members in slots:
        ms = tuple(Member(name, fleet.model(name).kind, rep, 8, 0.3, fleet.model(name).memory_gb, 50.0,
                          fleet.model(name).slo_ms, 100.0) for name, rep in members)
        placements.append(Placement(pool=pool, node=node, gpu=gpu, slot=slot, models=ms, duty_cycle_ms=20.0,
                                    memory_gb=sum(m.memory_gb for m in ms), memory_capacity_gb=39.0,
                                    compute_share=0.6, binding="compute", reason="test slot",
                                    mig_start=start, gpus=(gpu,)))
    by_gpu: dict[tuple[str, str, int], list[tuple[int, str]]] = {}
    for p in placements:
        by_gpu.setdefault((p.pool, p.node, p.gpu), []).append((p.mig_start or 0, p.slot))
    layouts = tuple(GpuLayout(pool, node, gpu, "+".join(s for _, s in sorted(v)) if v[0][1] != "whole" else "whole")
                    for (pool, node, gpu), v in sorted(by_gpu.items()))
    replicas: dict[str, int] = {}
    for p in placements:
        for m in p.models:
            replicas[m.name] = replicas.get(m.name, 0) + 1
    return Plan(fleet=fleet, status="feasible", cost_per_hour=8.2 + 1.6, lower_bound_cost_per_hour=8.0,
                solve_seconds=0.0, gpus={"a100": 1, "l4": 2}, baselines={}, placements=tuple(placements),
                layouts=layouts, replicas=replicas, warnings=("hand-picked groups, not a planner result",))


@pytest.fixture()
def base_plan() -> Plan:
    return build_plan(BASE_SLOTS)


@pytest.fixture()
def plans() -> Any:
    """The plan builder and its pieces, as a fixture (test modules import nothing from here)."""
    from types import SimpleNamespace

    return SimpleNamespace(build=build_plan, base_slots=list(BASE_SLOTS), fleet_doc=fleet_doc)


class EmulatorThread:
    """A kmock KubernetesEmulator on 127.0.0.1 in its own event loop thread."""

    RESOURCES = {
        "v1/configmaps": ("ConfigMap", True), "v1/services": ("Service", True), "v1/events": ("Event", True),
        "v1/nodes": ("Node", False), "apps/v1/deployments": ("Deployment", True),
        "policy/v1/poddisruptionbudgets": ("PodDisruptionBudget", True),
        "coordination.k8s.io/v1/leases": ("Lease", True),
        "networking.k8s.io/v1/networkpolicies": ("NetworkPolicy", True),
        "resource.k8s.io/v1/resourceclaims": ("ResourceClaim", True),  # --devices dra
    }

    def __init__(self) -> None:
        import kmock

        self.loop = asyncio.new_event_loop()
        self.kmock = kmock
        self.emulator: Any = None
        self.url = ""
        ready = threading.Event()
        self._stop: asyncio.Event | None = None

        async def main() -> None:
            self._stop = asyncio.Event()
            async with kmock.KubernetesEmulator() as emu, kmock.Server(emu) as srv:
                for res, (kind, namespaced) in self.RESOURCES.items():
                    emu.resources[res] = kmock.ResourceInfo(kind=kind, namespaced=namespaced,
                                                            verbs={"list", "get", "create", "patch", "delete"})
                self.emulator = emu
                self.url = str(srv.url).rstrip("/")
                ready.set()
                await self._stop.wait()

        self.thread = threading.Thread(target=lambda: self.loop.run_until_complete(main()), daemon=True)
        self.thread.start()
        ready.wait(10)

    def call(self, fn: Any) -> Any:
        """Run ``fn()`` (sync, may touch emulator state) inside the emulator's loop."""
        async def run() -> Any:
            return fn()
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def close(self) -> None:
        assert self._stop is not None
        self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(10)


@pytest.fixture()
def emulator() -> Iterator[EmulatorThread]:
    e = EmulatorThread()
    yield e
    e.close()


NS = "packer"
NODES = [
    ("gpu-a100-1", "a100", "NVIDIA-A100-SXM4-80GB", 2),
    ("gpu-a100-2", "a100", "NVIDIA-A100-SXM4-80GB", 2),
    ("gpu-l4-1", "l4", "NVIDIA-L4", 4),
    ("cpu-1", None, None, 0),
]


class Harness:
    """The emulator seeded as a small GPU cluster, and reconcilers pointed at it.

    ``planner`` maps the fleet's traffic scale to slots, so a test decides exactly what the plan
    is; the reconciler treats it like any planner. ``ready()`` plays the Deployment controller
    and kubelet: the pods of every Deployment become ready (or only of those named).
    """

    def __init__(self, emu: EmulatorThread) -> None:
        from kubernetes import client

        self.emu = emu
        self.client = client
        self.slots_by_scale: dict[float, list[Slot]] = {1.0: list(BASE_SLOTS)}
        self.api = self.api_client()
        self.api.user_agent = "test-harness"  # tells its setup calls apart from the reconciler's
        core = client.CoreV1Api(self.api)
        for name, pool, product, count in NODES:
            labels = {"kubernetes.io/hostname": name}
            if pool:
                labels |= {"packer.dev/pool": pool, "nvidia.com/gpu.product": product,
                           "nvidia.com/gpu.count": str(count)}
            core.create_node({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}})
        self.set_fleet(1.0)

    def api_client(self) -> Any:
        from k8s.cluster import connect

        return connect(host=self.emu.url)

    def set_fleet(self, scale: float) -> None:
        import yaml

        core = self.client.CoreV1Api(self.api)
        body = {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "packer-fleet", "namespace": NS,
                             "labels": {"app.kubernetes.io/managed-by": "packer", "packer.dev/role": "fleet"}},
                "data": {"fleet.yaml": yaml.safe_dump(fleet_doc(scale))}}
        try:
            core.create_namespaced_config_map(NS, body)
        except self.client.ApiException:
            core.patch_namespaced_config_map("packer-fleet", NS, {"data": body["data"]})

    def planner(self, fleet: Any, current: Any) -> Plan:
        scale = fleet.model("asr").traffic.rps / FLEET_DOC["models"][0]["traffic"]["rps"]
        return build_plan(self.slots_by_scale[round(scale, 3)], fleet_doc(scale))

    def reconciler(self, identity: str = "r1", clock: Any = None, *, planner: Any = None, signals: Any = None,
                   scaler: Any = None, **kw: Any) -> Any:
        import time as _t

        from k8s.cluster import Cluster
        from k8s.reconciler import Reconciler
        from k8s.settings import ReconcileSettings

        s = ReconcileSettings(backoff_base_s=0.01, backoff_max_s=0.05, request_timeout_s=2.0, **kw)
        return Reconciler(Cluster(self.api_client(), s), s, planner=planner or self.planner, identity=identity,
                          clock=clock or _t.time, signals=signals, scaler=scaler)

    def objects(self, kind_plural: str, namespace: str | None = NS) -> dict[str, dict]:
        out: dict[str, dict] = {}

        def grab() -> None:
            for (res, ns, name), obj in self.emu.emulator.objects.items():
                if not obj.deleted and f"{res.group}/{res.version}/{res.plural}".lstrip("/") == kind_plural \
                        and (namespace is None or ns == namespace):
                    out[name] = dict(obj.raw) if hasattr(obj, "raw") else dict(obj)
        self.emu.call(grab)
        return out

    def ready(self, names: set[str] | None = None) -> None:
        def mark() -> None:
            for (res, ns, name), obj in self.emu.emulator.objects.items():
                if res.plural == "deployments" and not obj.deleted and (names is None or name in names):
                    obj.patch({"status": {"readyReplicas": 1, "updatedReplicas": 1, "replicas": 1}})
        self.emu.call(mark)

    def writes(self) -> int:
        """Writes the server has seen (POST/PATCH/PUT/DELETE), counted server-side."""
        return self.emu.call(lambda: sum(1 for r in self.emu.emulator
                                         if r.method.value in ("POST", "PATCH", "PUT", "DELETE")))

    def requests(self) -> list[Any]:
        return self.emu.call(lambda: list(self.emu.emulator))

    def converge(self, r: Any, cycles: int = 6) -> list[Any]:
        reps = []
        for _ in range(cycles):
            rep = r.cycle()
            reps.append(rep)
            self.ready()
            if not rep.done and not rep.waiting and not rep.errors:
                break
        return reps


@pytest.fixture()
def cluster(emulator: EmulatorThread) -> Harness:
    return Harness(emulator)
