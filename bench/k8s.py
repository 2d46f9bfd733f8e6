"""Benchmark of the Kubernetes reconciler on a 500-group plan, over real HTTP.

The official client talks to kmock's KubernetesEmulator, which runs in a separate process on
loopback so that the two do not share one GIL. Measured:

* convergence from an empty cluster: cycles, seconds, API calls;
* a no-op cycle: seconds, API calls by verb, writes seen by the client and by the server (must be 0);
* a traffic change that adds one group: the calls and writes of that cycle;
* the pure part (render + diff + gate) alone, without the API.

Run: ``python bench/k8s.py [--groups 500]``. The plan is built by hand (the planner's time is not
part of a cycle when the fleet is unchanged), half MIG slices on A100s, half whole L4s, one group
in five holding a streaming and a batch model (one server per group, loading both classes'
repositories).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from typing import Any

# This file is bench/k8s.py: run as a script, its folder would shadow the ``k8s`` package.
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here] + [os.path.dirname(_here)]

NS = "packer"


def big_fleet_doc(groups: int) -> dict[str, Any]:
    models = []
    for i in range(groups):
        models.append({"name": f"m{i:04d}", "kind": "streaming", "memory_gb": 1.0,
                       "traffic": {"rps": 10.0, "peak_rps": 20.0}, "slo_ms": 200,
                       "latency_ms": {"gpu": "a100-80gb", "base": 2.0, "per_item": 0.1}, "max_batch": 32,
                       "min_replicas": 1 if i % 3 else 2})
        if i % 5 == 0:
            models.append({"name": f"b{i:04d}", "kind": "batch", "memory_gb": 2.0,
                           "traffic": {"rps": 1.0, "peak_rps": 2.0}, "slo_ms": 60000,
                           "latency_ms": {"gpu": "a100-80gb", "base": 20.0, "per_item": 5.0}, "max_batch": 16})
    return {"name": "bench", "pools": [
        {"name": "a100", "gpu": "a100-80gb", "gpus_per_node": 8, "max_nodes": 64, "cost_per_gpu_hour": 4.1,
         "sharing": ["mig", "time-slicing"]},
        {"name": "l4", "gpu": "l4-24gb", "gpus_per_node": 4, "max_nodes": 256, "cost_per_gpu_hour": 0.8,
         "sharing": ["time-slicing"]}], "models": models}


def big_plan(groups: int, extra: int = 0):
    """``groups`` placements (plus ``extra`` more L4 groups for the traffic-change step)."""
    from packer.fleetfile import parse_fleet
    from packer.plan import GpuLayout, Member, Placement, Plan

    fleet = parse_fleet(big_fleet_doc(groups))
    placements, layouts = [], []
    half = groups // 2
    for i in range(groups + extra):
        j = i % groups
        names = [f"m{j:04d}"] + ([f"b{j:04d}"] if j % 5 == 0 else [])
        ms = tuple(Member(n, fleet.model(n).kind, i // groups, 8, 0.3, 1.0, 50.0, fleet.model(n).slo_ms, 20.0)
                   for n in names)
        if i < half:  # seven 1g.10gb slices per A100
            gpu_n, k = divmod(i, 7)
            node, gpu = divmod(gpu_n, 8)
            placements.append(Placement("a100", f"a100-n{node}", gpu, "1g.10gb", ms, 20.0, 2.0, 9.75, 0.5,
                                        "compute", "bench", mig_start=k, gpus=(gpu,)))
        else:
            node, gpu = divmod(i - half, 4)
            placements.append(Placement("l4", f"l4-n{node}", gpu, "whole", ms, 20.0, 2.0, 22.5, 0.5,
                                        "compute", "bench", gpus=(gpu,)))
    for gpu_n in range((half + 6) // 7):
        node, gpu = divmod(gpu_n, 8)
        layouts.append(GpuLayout("a100", f"a100-n{node}", gpu, "+".join(["1g.10gb"] * 7)))
    return Plan(fleet=fleet, status="feasible", cost_per_hour=1.0, lower_bound_cost_per_hour=1.0,
                solve_seconds=0.0, gpus={}, baselines={}, placements=tuple(placements), layouts=tuple(layouts))


def serve_emulator(port_q: "mp.Queue[int]", nodes: list[tuple[str, str, str, int]]) -> None:
    """Child process: the emulator, seeded with GPU nodes; counts writes for ``GET /bench/writes``."""
    import asyncio

    import kmock

    class Emulator(kmock.KubernetesEmulator):
        """kmock matches each request against its whole request history (O(history) per call),
        which makes a 2,000-object run quadratic; this one forgets all but the current request
        and keeps only a write counter, so the numbers measure the reconciler, not kmock."""

        writes = 0

        async def _handle(self, request: Any) -> Any:
            del self._requests[:-1]
            if request.method.value in ("POST", "PATCH", "PUT", "DELETE"):
                type(self).writes += 1
            return await super()._handle(request)

    async def main() -> None:
        async with Emulator() as emu, kmock.Server(emu) as srv:
            for res, kind, namespaced in (("v1/configmaps", "ConfigMap", True), ("v1/services", "Service", True),
                                          ("v1/events", "Event", True), ("v1/nodes", "Node", False),
                                          ("apps/v1/deployments", "Deployment", True),
                                          ("policy/v1/poddisruptionbudgets", "PodDisruptionBudget", True),
                                          ("coordination.k8s.io/v1/leases", "Lease", True),
                                          ("networking.k8s.io/v1/networkpolicies", "NetworkPolicy", True)):
                emu.resources[res] = kmock.ResourceInfo(kind=kind, namespaced=namespaced)
            node_res = kmock.resource("v1/nodes")
            for name, pool, product, count in nodes:
                emu.objects[node_res, None, name] = {"apiVersion": "v1", "kind": "Node", "metadata": {
                    "name": name, "labels": {"packer.dev/pool": pool, "nvidia.com/gpu.product": product,
                                             "nvidia.com/gpu.count": str(count)}}}

            emu["get /bench/writes"] << (lambda: {"writes": Emulator.writes})
            port_q.put(srv.port)
            await asyncio.Event().wait()

    asyncio.run(main())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--groups", type=int, default=500)
    args = ap.parse_args()

    import urllib.request

    import yaml

    from k8s.cluster import Cluster, connect
    from k8s.diff import bind_nodes, diff, gate
    from k8s.reconciler import Reconciler
    from k8s.render import render_plan
    from k8s.settings import ReconcileSettings

    plan = big_plan(args.groups)
    grown = big_plan(args.groups, extra=1)
    a100_nodes = len({p.node for p in plan.placements if p.pool == "a100"})
    l4_nodes = len({p.node for p in plan.placements if p.pool == "l4"}) + 1
    nodes = [(f"gpu-a100-{i:03d}", "a100", "NVIDIA-A100-SXM4-80GB", 8) for i in range(a100_nodes)]
    nodes += [(f"gpu-l4-{i:03d}", "l4", "NVIDIA-L4", 4) for i in range(l4_nodes)]
    q: mp.Queue[int] = mp.Queue()
    proc = mp.Process(target=serve_emulator, args=(q, nodes), daemon=True)
    proc.start()
    url = f"http://127.0.0.1:{q.get(timeout=30)}"

    def server_writes() -> int:
        return json.loads(urllib.request.urlopen(f"{url}/bench/writes").read())["writes"]

    state = {"plan": plan}
    s = ReconcileSettings(max_disruptions_per_cycle=1000)
    api = connect(host=url)
    r = Reconciler(Cluster(api, s), s, planner=lambda fleet, cur: state["plan"], identity="bench")
    from kubernetes import client

    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    core.create_namespaced_config_map(NS, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {
        "name": "packer-fleet", "namespace": NS, "labels": {"app.kubernetes.io/managed-by": "packer",
                                                            "packer.dev/role": "fleet"}},
        "data": {"fleet.yaml": yaml.safe_dump(big_fleet_doc(args.groups))}})

    def mark_ready() -> None:
        for d in json.loads(apps.list_namespaced_deployment(NS, _preload_content=False).data)["items"]:
            if not (d.get("status") or {}).get("readyReplicas"):
                apps.patch_namespaced_deployment(d["metadata"]["name"], NS, {"status": {
                    "readyReplicas": 1, "updatedReplicas": 1}}, _content_type="application/merge-patch+json")

    out: dict[str, Any] = {"groups": len(plan.placements)}
    t0 = time.perf_counter()
    cycles, calls, writes = 0, 0, 0
    while True:
        rep = r.cycle()
        cycles += 1
        calls += sum(rep.calls.values())
        writes += rep.writes
        if not rep.done and not rep.waiting:
            break
        mark_ready()
    out["converge"] = {"cycles": cycles, "seconds": round(time.perf_counter() - t0, 2), "api_calls": calls,
                       "writes": writes, "servers": sum(1 for o in render_plan(plan) if o["kind"] == "Deployment")}

    times, call_counts = [], []
    for _ in range(5):
        before = server_writes()
        rep = r.cycle()
        assert rep.leader and not rep.errors, rep.errors
        server = server_writes() - before  # nothing between the two reads but the cycle
        times.append(rep.seconds)
        call_counts.append(dict(rep.calls))
        out.setdefault("noop_server_writes_incl_lease", []).append(server)
        out.setdefault("noop_lease_renewals", []).append(r.cluster.by_kind[("patch", "Lease")])
        out.setdefault("noop_writes_excl_lease", []).append(rep.writes)
    out["noop_cycle"] = {"seconds_median": round(statistics.median(times), 3), "seconds_max": round(max(times), 3),
                         "api_calls": call_counts[-1], "phases_s": rep.phases}

    # Traffic change: one model's traffic doubles; the planner answers with one more group.
    state["plan"] = grown
    doc = big_fleet_doc(args.groups)
    doc["models"][0]["traffic"] = {"rps": 20.0, "peak_rps": 40.0}
    core.patch_namespaced_config_map("packer-fleet", NS, {"data": {"fleet.yaml": yaml.safe_dump(doc)}},
                                     _content_type="application/merge-patch+json")
    before = server_writes()
    rep = r.cycle()
    out["traffic_change_cycle"] = {"seconds": round(rep.seconds, 3), "api_calls": dict(rep.calls),
                                   "phases_s": rep.phases,
                                   "actions": [a.describe() for a in rep.done],
                                   "server_writes_incl_events_and_status": server_writes() - before}

    obs = r.observe()
    t0 = time.perf_counter()
    objs = render_plan(grown, s.render)
    t1 = time.perf_counter()
    actions, _ = diff(objs, obs.live)
    binding = bind_nodes({p.node: p.pool for p in grown.placements}, obs.nodes, "packer.dev/pool")
    gate(actions, objs, obs.live, binding, obs.nodes, 4)
    t2 = time.perf_counter()
    out["pure"] = {"objects": len(objs), "render_s": round(t1 - t0, 3), "diff_and_gate_s": round(t2 - t1, 3)}
    proc.terminate()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
