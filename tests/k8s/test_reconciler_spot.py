"""A spot node's preemption, seen by the reconciler as a taint or a condition, handled like the
simulator's notice: the replicas on it are re-placed before it goes (issue 18)."""

from __future__ import annotations

import copy
from datetime import datetime, timezone

from k8s.scaling import packer_scaler, preemption_notices
from packer.scaling import Signals

SPOT_POOL = {"name": "l4-spot", "gpu": "l4-24gb", "gpus_per_node": 4, "max_nodes": 2, "cost_per_gpu_hour": 0.3,
             "sharing": ["time-slicing"], "spot": True, "preemption_notice_s": 30}
SPOT_NODE = "gpu-l4spot-1"


def spot_doc(plans) -> dict:
    doc = copy.deepcopy(plans.fleet_doc(1.0))
    doc["pools"].append(dict(SPOT_POOL))
    return doc


def spot_slots(plans) -> list:
    """punct's second replica on the spot pool's node instead of the L4 pool's second GPU."""
    return [s if s[1] != "l4-n0" or s[2] != 1 else ("l4-spot", "l4-spot-n0", 0, "whole", None, [("punct", 1)])
            for s in plans.base_slots]


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_notices_read_off_taints_and_conditions(plans) -> None:
    plan = plans.build(spot_slots(plans), spot_doc(plans))
    node = {"metadata": {"name": SPOT_NODE, "labels": {"packer.dev/node": "l4-spot-n0"}},
            "spec": {"taints": [{"key": "cloud.google.com/impending-node-termination", "effect": "NoSchedule",
                                 "timeAdded": _iso(1_000_000.0)}]}}
    # 30 s notice from the pool, 12 s gone: 18 s left
    assert preemption_notices(plan, [node], 1_000_012.0) == {"l4-spot-n0": 18.0}
    cond = {"metadata": {"name": SPOT_NODE, "labels": {"packer.dev/node": "l4-spot-n0"}},
            "status": {"conditions": [{"type": "TerminationNotice", "status": "True"}]}}
    assert preemption_notices(plan, [cond], 5.0) == {"l4-spot-n0": 30.0}  # no time: from now
    calm = {"metadata": {"name": "gpu-l4-1", "labels": {"packer.dev/node": "l4-n0"}},
            "status": {"conditions": [{"type": "TerminationNotice", "status": "False"}]}}
    other = {"metadata": {"name": "x", "labels": {"packer.dev/node": "l4-spot-n5"}}, **{"spec": node["spec"]}}
    assert preemption_notices(plan, [calm, other], 0.0) == {}  # not preempted; not a node of the plan


def test_a_tainted_spot_node_has_its_replicas_replaced_over_the_api(cluster, plans) -> None:
    import yaml

    from packer.fleetfile import parse_fleet
    from packer.planner import PlanSettings, plan_fleet

    doc = spot_doc(plans)
    core = cluster.client.CoreV1Api(cluster.api)
    core.patch_namespaced_config_map("packer-fleet", "packer", {"data": {"fleet.yaml": yaml.safe_dump(doc)}})
    for k in (1, 2):
        name = f"gpu-l4spot-{k}"
        core.create_node({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name, "packer.dev/pool": "l4-spot", "nvidia.com/gpu.product": "NVIDIA-L4",
            "nvidia.com/gpu.count": "4"}}})
    now = [1_000_000.0]
    # The planner's own plan (member rates from the slot maths), cheapest on the spot pool.
    planned = plan_fleet(parse_fleet(doc), PlanSettings(time_limit_s=1.0, prove_s=0))
    logical = sorted({p.node for p in planned.placements if p.pool == "l4-spot"})[0]
    held = {m.name: len(planned.placements_of(m.name)) for m in planned.fleet.models}

    def signals(plan, live):  # the planned load: nothing to scale for load alone
        return {m.name: Signals(m.name, arrival_rps=m.traffic.rps) for m in plan.fleet.models}

    r = cluster.reconciler(clock=lambda: now[0], planner=lambda fleet, current: planned, scaler=packer_scaler(),
                           signals=signals)
    cluster.converge(r)
    real = next(n.metadata.name for n in core.list_node().items
                if (n.metadata.labels or {}).get("packer.dev/node") == logical)
    now[0] += 15
    rep = r.cycle()
    assert rep.replanned == ""  # no notice: the plan stays
    core.patch_node(real, {"spec": {"taints": [{"key": "cloud.google.com/impending-node-termination",
                                               "effect": "NoSchedule", "timeAdded": _iso(now[0])}]}})
    now[0] += 5
    rep = r.cycle()
    assert rep.replanned.startswith("scaling: ") and f"{logical} is preempted in 25 s" in rep.replanned
    assert not [p for p in rep.plan.placements if p.node == logical]
    assert {m.name: len(rep.plan.placements_of(m.name)) for m in planned.fleet.models} == held  # replaced
    cluster.converge(r)
    for d in cluster.objects("apps/v1/deployments").values():
        assert logical not in str(d["spec"]["template"]["spec"].get("affinity", "")), d["metadata"]["name"]
    now[0] += 15
    rep = r.cycle()
    assert rep.replanned == ""  # the notice is handled once: the plan no longer holds that node
