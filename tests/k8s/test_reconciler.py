"""The reconciler over real HTTP: the official client against kmock's KubernetesEmulator."""

from __future__ import annotations

import asyncio
import json

import kmock
import pytest

from k8s import names as N
from k8s.render import render_plan

NS = "packer"


def live_hashes(cluster) -> dict[tuple[str, str], str]:
    out = {}
    for plural, kind in (("v1/configmaps", "ConfigMap"), ("v1/services", "Service"),
                         ("apps/v1/deployments", "Deployment"), ("policy/v1/poddisruptionbudgets", "PodDisruptionBudget"),
                         ("networking.k8s.io/v1/networkpolicies", "NetworkPolicy")):
        for ns in (NS, "gpu-operator"):
            for name, o in cluster.objects(plural, ns).items():
                if N.owned(o) and not (o["metadata"].get("labels") or {}).get("packer.dev/role"):
                    out[(kind, name)] = o["metadata"]["annotations"][N.SPEC_HASH]
    return out


def want_hashes(plan) -> dict[tuple[str, str], str]:
    return {(o["kind"], o["metadata"]["name"]): o["metadata"]["annotations"][N.SPEC_HASH] for o in render_plan(plan)}


def test_empty_cluster_reaches_the_plan(cluster) -> None:
    r = cluster.reconciler()
    reps = cluster.converge(r)
    assert reps[-1].done == [] and reps[-1].waiting == [] and reps[-1].errors == []
    plan = reps[0].plan
    assert reps[0].replanned == "no plan yet"
    assert live_hashes(cluster) == want_hashes(plan)
    nodes = cluster.objects("v1/nodes", None)
    # Logical nodes bind to real ones in name order; MIG nodes get their mig-parted config.
    assert nodes["gpu-a100-1"]["metadata"]["labels"][N.NODE_LABEL] == "a100-n0"
    assert nodes["gpu-a100-1"]["metadata"]["labels"][N.MIG_CONFIG_LABEL].startswith("packer-")
    assert nodes["gpu-l4-1"]["metadata"]["labels"][N.DEVICE_PLUGIN_CONFIG_LABEL] == "l4"
    assert N.NODE_LABEL not in nodes["gpu-a100-2"]["metadata"]["labels"]
    assert N.NODE_LABEL not in nodes["cpu-1"]["metadata"]["labels"]
    status = cluster.objects("v1/configmaps")["packer-status"]
    summary = json.loads(status["data"]["summary.json"])
    assert summary["plan_id"] == plan.id and summary["last_actions"]
    events = cluster.objects("v1/events")
    assert any(e["reason"] == "Created" and e["involvedObject"]["kind"] == "Deployment" for e in events.values())
    # Node labels are recorded too, filed under the status ConfigMap (events about cluster-scoped
    # objects may not live in a namespace), and everything the reconciler wrote is schema-valid.
    assert any(e["reason"] == "Labeled" and e["message"].startswith("Node/gpu-a100-1:") for e in events.values())
    import kubernetes_validate

    lease = cluster.objects("coordination.k8s.io/v1/leases")["packer-reconciler"]
    for obj in [*events.values(), status, lease]:
        kubernetes_validate.validate(obj, kubernetes_validate.utils.latest_version(), strict=True)


def test_no_op_cycle_writes_nothing_even_after_a_restart(cluster) -> None:
    r = cluster.reconciler()
    cluster.converge(r)
    before = cluster.writes()
    rep = r.cycle()
    assert (rep.done, rep.writes, cluster.writes() - before) == ([], 0, 0)
    # A new process (state only in the cluster) sees nothing to do either; its first cycle writes
    # only the Lease (it takes over once the old holder's lease expires).
    r2 = cluster.reconciler(identity="r1")
    before = cluster.writes()
    rep = r2.cycle()
    assert rep.leader and rep.replanned == "" and rep.done == [] and rep.writes == 0
    assert cluster.writes() - before <= 1  # at most one lease renewal
    assert set(rep.calls) == {"get", "list"}


def test_traffic_change_produces_the_minimal_diff(cluster, plans) -> None:
    r = cluster.reconciler()
    cluster.converge(r)
    before = live_hashes(cluster)
    cluster.slots_by_scale[2.0] = plans.base_slots + [("l4", "l4-n0", 2, "whole", None, [("asr", 2)])]
    cluster.set_fleet(2.0)
    rep = r.cycle()
    assert rep.replanned == "fleet changed"
    new = N.group_name("l4-n0-g2-whole")
    assert sorted((a.verb, a.kind, a.name) for a in rep.done) == [
        ("create", "ConfigMap", N.repo_configmap_name("l4-n0-g2-whole")),
        ("create", "Deployment", new), ("create", "Service", new)]
    after = live_hashes(cluster)
    assert {k: v for k, v in after.items() if k in before} == before


def test_owned_object_deleted_by_hand_comes_back(cluster) -> None:
    r = cluster.reconciler()
    cluster.converge(r)
    name = N.group_name("l4-n0-g0-whole")
    apps = cluster.client.AppsV1Api(cluster.api)
    apps.delete_namespaced_deployment(name, NS)
    rep = r.cycle()
    assert [(a.verb, a.kind, a.name) for a in rep.done] == [("create", "Deployment", name)]
    assert name in cluster.objects("apps/v1/deployments")


def test_hand_edit_of_an_owned_object_is_undone(cluster) -> None:
    r = cluster.reconciler()
    cluster.converge(r)
    name = N.group_name("l4-n0-g0-whole")
    cluster.client.CoreV1Api(cluster.api).patch_namespaced_service(
        name, NS, {"spec": {"ports": [{"name": "http", "port": 9999}]}},
        _content_type="application/merge-patch+json")
    rep = r.cycle()
    assert [(a.verb, a.name) for a in rep.done] == [("update", name)]
    assert "edited outside packer" in rep.done[0].reason
    assert [p["port"] for p in cluster.objects("v1/services")[name]["spec"]["ports"]] == [8000, 8001, 8002]


def test_foreign_object_with_a_clashing_name_is_left_alone_and_reported(cluster) -> None:
    name = N.group_name("l4-n0-g1-whole")
    foreign = {"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": name, "namespace": NS, "labels": {"team": "other"}},
               "spec": {"ports": [{"port": 80}]}}
    cluster.client.CoreV1Api(cluster.api).create_namespaced_service(NS, foreign)
    r = cluster.reconciler()
    reps = cluster.converge(r)
    assert cluster.objects("v1/services")[name] == foreign
    assert all(not (a.kind == "Service" and a.name == name) for rep in reps for a in rep.done)
    assert [c.name for c in reps[-1].conflicts] == [name]
    summary = json.loads(cluster.objects("v1/configmaps")["packer-status"]["data"]["summary.json"])
    assert any(name in c for c in summary["conflicts"])
    warnings = [e for e in cluster.objects("v1/events").values() if e["reason"] == "NameConflict"]
    assert len(warnings) == 1  # reported once, not on every cycle
    before = cluster.writes()
    assert r.cycle().writes == 0 and cluster.writes() == before


class Faults:
    """Fail the first ``n`` requests matching a verb with ``status`` (or delay them)."""

    def __init__(self) -> None:
        self.left: dict[tuple[str, str], int] = {}
        self.hit: set[int] = set()

    def take(self, method: str, what: str):
        def check(req: kmock.Request) -> bool:
            # kmock may evaluate a filter more than once per request: count each request once.
            if req.id in self.hit:
                return True
            k = (method, what)
            if req.method.value == method and self.left.get(k, 0) > 0 and (
                    req.resource is not None and req.resource.plural == what):
                self.left[k] -= 1
                self.hit.add(req.id)
                return True
            return False
        return check


def test_injected_409_500_and_slow_responses_still_converge(cluster) -> None:
    faults = Faults()
    faults.left = {("POST", "deployments"): 3, ("PATCH", "nodes"): 2, ("GET", "services"): 2,
                   ("POST", "services"): 1}

    async def slow(_: kmock.Request) -> None:
        await asyncio.sleep(3.0)  # past the 2 s request timeout
        raise NotImplementedError  # then fall through to the emulator's normal answer

    def install() -> None:
        emu = cluster.emu.emulator
        emu[faults.take("POST", "deployments")] << 500  # the object still lands: retries meet 409
        emu[faults.take("PATCH", "nodes")] << 409
        emu[faults.take("POST", "services")] << 503
        emu[faults.take("GET", "services")] << slow
    cluster.emu.call(install)
    r = cluster.reconciler()
    reps = cluster.converge(r, cycles=8)
    assert reps[-1].done == [] and reps[-1].errors == []
    assert live_hashes(cluster) == want_hashes(reps[0].plan)
    assert r.cluster.retries >= 5, r.cluster.by_kind
    assert all(v == 0 for v in faults.left.values())


def test_of_two_reconcilers_only_the_leader_writes(cluster) -> None:
    now = [1_000_000.0]
    a = cluster.reconciler("a", clock=lambda: now[0])
    b = cluster.reconciler("b", clock=lambda: now[0])
    assert a.cycle().leader
    before = cluster.writes()
    rep = b.cycle()
    assert not rep.leader and rep.calls == {"get": 1} and cluster.writes() == before
    cluster.ready()
    # a keeps renewing; b keeps following and writing nothing
    for _ in range(3):
        now[0] += 12
        assert a.cycle().leader
        cluster.ready()
        before = cluster.writes()
        assert not b.cycle().leader and cluster.writes() == before
    # a dies: after the lease expires b takes over, and a, back from a pause, follows
    now[0] += 31
    assert b.cycle().leader
    lease = cluster.objects("coordination.k8s.io/v1/leases")["packer-reconciler"]
    assert lease["spec"]["holderIdentity"] == "b" and lease["spec"]["leaseTransitions"] == 1
    before = cluster.writes()
    assert not a.cycle().leader and cluster.writes() == before


def test_a_candidate_that_loses_the_takeover_race_follows(cluster) -> None:
    """Two candidates see the lease expired; the API server takes the first takeover and answers
    the second with 409 (its resourceVersion precondition failed): the second writes nothing else."""
    now = [1_000_000.0]
    a = cluster.reconciler("a", clock=lambda: now[0])
    assert a.cycle().leader
    now[0] += 31
    faults = Faults()
    faults.left = {("PATCH", "leases"): 1}
    cluster.emu.call(lambda: cluster.emu.emulator[faults.take("PATCH", "leases")] << 409)
    b = cluster.reconciler("b", clock=lambda: now[0])
    before = cluster.writes()
    rep = b.cycle()
    assert not rep.leader and rep.calls == {"get": 1, "patch": 1}  # one try, no retry of a lost race
    assert cluster.writes() - before == 1


def test_dry_run_writes_nothing_and_shows_the_diff(cluster) -> None:
    r = cluster.reconciler()
    before = cluster.writes()
    rep = r.cycle(dry_run=True)
    assert cluster.writes() == before and rep.writes == 0
    lines = rep.lines()
    assert any(l.startswith("would create Deployment/") for l in lines)
    assert any(l.startswith("would label Node/gpu-a100-1") for l in lines)


@pytest.fixture()
def moved(cluster, plans):
    """Converged on the base plan, then asr#1 moves from its MIG slot to an L4 (scale 3)."""
    slots = [s for s in plans.base_slots if s[4] != 4] + [("l4", "l4-n0", 2, "whole", None, [("asr", 1)])]
    cluster.slots_by_scale[3.0] = slots
    r = cluster.reconciler()
    cluster.converge(r)
    cluster.set_fleet(3.0)
    return r


def test_new_replicas_ready_before_old_ones_go(cluster, moved) -> None:
    r = moved
    old = N.group_name("a100-n0-g0-3g.40gb@4")
    new = N.group_name("l4-n0-g2-whole")
    rep = r.cycle()
    assert ("create", new) in [(a.verb, a.name) for a in rep.done]
    assert [(a.verb, a.name) for a, _ in rep.waiting if a.kind == "Deployment"] == [("delete", old)]
    assert old in cluster.objects("apps/v1/deployments")
    # still not ready: still waiting, nothing written
    rep = r.cycle()
    assert rep.done == [] and rep.writes == 0
    held = {(a.kind, a.name): why for a, why in rep.waiting}
    assert "replacements to be ready" in held[("Deployment", old)]
    # its Service and repository stay while it still serves
    assert "still running" in held[("Service", old)]
    assert old in cluster.objects("v1/services")
    cluster.ready({new})
    rep = r.cycle()
    assert [(a.verb, a.kind) for a in rep.done if a.name.startswith(old)] == [
        ("delete", "Deployment"), ("delete", "ConfigMap"), ("delete", "Service")]
    assert old not in cluster.objects("apps/v1/deployments") and old not in cluster.objects("v1/services")


def test_mig_layout_changes_only_after_its_groups_are_gone(cluster, plans) -> None:
    # asr#1 leaves the a100 and the node's layout becomes one 3g.40gb: the relabel waits for
    # the old server on that node to be deleted, which waits for its replacement to be ready.
    r = cluster.reconciler()
    cluster.converge(r)
    old_label = cluster.objects("v1/nodes", None)["gpu-a100-1"]["metadata"]["labels"][N.MIG_CONFIG_LABEL]
    cluster.slots_by_scale[3.0] = [s for s in plans.base_slots if s[4] != 4] + [
        ("l4", "l4-n0", 2, "whole", None, [("asr", 1)])]
    cluster.set_fleet(3.0)
    rep = r.cycle()
    held = {a.name: why for a, why in rep.waiting}
    assert "old server(s) still on a100-n0" in held["gpu-a100-1"]
    assert cluster.objects("v1/nodes", None)["gpu-a100-1"]["metadata"]["labels"][N.MIG_CONFIG_LABEL] == old_label
    cluster.ready()
    rep = r.cycle()  # the old server goes
    assert any(a.verb == "delete" and a.kind == "Deployment" for a in rep.done)
    rep = r.cycle()  # now the node may change
    assert [(a.verb, a.name) for a in rep.done] == [("label", "gpu-a100-1")]
    assert cluster.objects("v1/nodes", None)["gpu-a100-1"]["metadata"]["labels"][N.MIG_CONFIG_LABEL] != old_label


def test_disruptions_per_cycle_are_limited(cluster, plans) -> None:
    r = cluster.reconciler(max_disruptions_per_cycle=1)
    cluster.converge(r)
    # Scale 4: both L4 servers go away, replaced by one on a new GPU.
    cluster.slots_by_scale[4.0] = plans.base_slots[:2] + [("l4", "l4-n0", 3, "whole", None, [("punct", 0), ("punct", 1)])]
    cluster.set_fleet(4.0)
    r.cycle()
    cluster.ready()
    rep = r.cycle()
    deletes = [a for a in rep.done if a.verb == "delete" and a.kind == "Deployment"]
    assert len(deletes) == 1
    assert any("budget" in why for _, why in rep.waiting)
    rep = r.cycle()
    assert len([a for a in rep.done if a.verb == "delete" and a.kind == "Deployment"]) == 1


def test_a_mixed_slot_runs_one_server_and_a_quiet_cycle_writes_nothing(cluster) -> None:
    """The base plan's a100 slot @0 holds asr (streaming) and summ (batch): from an empty cluster
    it gets one Deployment, one Service and one repository ConfigMap, and then nothing moves."""
    r = cluster.reconciler()
    reps = cluster.converge(r)
    plan = reps[0].plan
    assert live_hashes(cluster) == want_hashes(plan)
    name = N.group_name("a100-n0-g0-3g.40gb@0")
    deps = cluster.objects("apps/v1/deployments")
    assert len(deps) == len(plan.placements) == 4
    args = deps[name]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert {"--model-repository=/models/streaming", "--model-repository=/models/batch", "--load-model=asr",
            "--load-model=summ", "--rate-limit=execution_count"} <= set(args)
    assert N.repo_configmap_name("a100-n0-g0-3g.40gb@0") in cluster.objects("v1/configmaps")
    assert name in cluster.objects("v1/services")
    before = cluster.writes()
    rep = r.cycle()
    assert (rep.done, rep.waiting, rep.writes, cluster.writes() - before) == ([], [], 0, 0)


def legacy_objects(objs: list[dict]) -> list[dict]:
    """What the earlier layout (one server per slot and workload class) ran for these rendered
    objects: per slot and class present, Deployment and Service ``<slot name>-s``/``-b`` and
    ConfigMap ``<slot name>-s-repo``/``-b-repo``, selecting by group and class, each pod labelled
    with its class's models and loading them from ``/models``; owned by packer."""
    import copy

    from k8s.render import stamp

    kinds = {"asr": "streaming", "punct": "streaming", "summ": "batch"}
    out = []
    for o in objs:
        if o["kind"] != "Deployment":
            continue
        pid = o["metadata"]["annotations"][N.PLACEMENT_ANNOTATION]
        models = {k.removeprefix(N.MODEL_LABEL_PREFIX) for k in o["spec"]["template"]["metadata"]["labels"]
                  if k.startswith(N.MODEL_LABEL_PREFIX)}
        svc = next(x for x in objs if x["kind"] == "Service" and x["metadata"]["name"] == o["metadata"]["name"])
        cm = next(x for x in objs if x["kind"] == "ConfigMap"
                  and x["metadata"]["name"] == N.repo_configmap_name(pid))
        for kind in ("streaming", "batch"):
            mine = sorted(m for m in models if kinds[m] == kind)
            if not mine:
                continue
            name = N.dns_label(f"{pid}-{kind[0]}")
            sel = {N.GROUP_LABEL: name, "packer.dev/class": kind}
            d, s, c = copy.deepcopy(o), copy.deepcopy(svc), copy.deepcopy(cm)
            d["metadata"]["name"] = s["metadata"]["name"] = name
            c["metadata"]["name"] = N.dns_label(f"{pid}-{kind[0]}", limit=58) + "-repo"
            for x in (d, s, c):
                x["metadata"]["labels"] |= {N.GROUP_LABEL: name}
                x["metadata"]["annotations"].pop(N.SPEC_HASH)
            d["metadata"]["labels"] |= sel
            s["metadata"]["labels"] = {k: v for k, v in s["metadata"]["labels"].items()
                                       if not k.startswith(N.MODEL_LABEL_PREFIX)} | sel
            d["spec"]["selector"]["matchLabels"] = s["spec"]["selector"] = sel
            tl = d["spec"]["template"]["metadata"]["labels"]
            d["spec"]["template"]["metadata"]["labels"] = {
                k: v for k, v in tl.items() if not k.startswith(N.MODEL_LABEL_PREFIX)} | sel | {
                N.model_label(m): "serving" for m in mine}
            pod = d["spec"]["template"]["spec"]
            pod["containers"][0]["args"] = [a for a in pod["containers"][0]["args"]
                                            if not a.startswith(("--model-repository=", "--load-model=",
                                                                 "--rate-limit="))] + [
                "--model-repository=/models", *[f"--load-model={m}" for m in mine],
                *(["--rate-limit=execution_count"] if len(mine) > 1 else [])]
            next(v for v in pod["volumes"] if v["name"] == "repo-config")["configMap"]["name"] = c["metadata"]["name"]
            c["data"]["models"] = "".join(f"{m}\n" for m in mine)
            out += [stamp(c), stamp(d), stamp(s)]
    return out


def test_the_two_server_layout_migrates_new_server_first(cluster) -> None:
    """A cluster left by the earlier layout (a server per slot and class: the mixed slot ran two
    on one MIG slice, with time-slicing for them) migrates to one server per slot in the safe
    order: each slot's new server is created and ready before its old ones are deleted, and the
    old Services and repositories go only after their servers. Then nothing moves."""
    import yaml

    r = cluster.reconciler()
    reps = cluster.converge(r)
    plan = reps[0].plan
    objs = render_plan(plan)
    apps, core = cluster.client.AppsV1Api(cluster.api), cluster.client.CoreV1Api(cluster.api)
    # Put the old layout in place of the new one.
    for o in objs:
        name = o["metadata"]["name"]
        if o["kind"] == "Deployment":
            apps.delete_namespaced_deployment(name, NS)
        elif o["kind"] == "Service":
            core.delete_namespaced_service(name, NS)
        elif o["kind"] == "ConfigMap" and name.endswith("-repo"):
            core.delete_namespaced_config_map(name, NS)
    old = legacy_objects(objs)
    for o in old:
        {"Deployment": lambda b: apps.create_namespaced_deployment(NS, b),
         "Service": lambda b: core.create_namespaced_service(NS, b),
         "ConfigMap": lambda b: core.create_namespaced_config_map(NS, b)}[o["kind"]](o)
    dp = cluster.objects("v1/configmaps", "gpu-operator")["packer-device-plugin"]
    a100 = yaml.safe_load(dp["data"]["a100"]) | {"sharing": {"timeSlicing": {"resources": [
        {"name": "nvidia.com/mig-3g.40gb", "replicas": 2}]}}}
    core.patch_namespaced_config_map("packer-device-plugin", "gpu-operator", {
        "metadata": {"annotations": {N.SPEC_HASH: "old"}}, "data": {"a100": yaml.safe_dump(a100)}})
    cluster.ready()  # the old servers run
    old_deps = sorted(o["metadata"]["name"] for o in old if o["kind"] == "Deployment")
    assert old_deps == sorted(N.dns_label(f"{p}-{k}") for p, k in (
        ("a100-n0-g0-3g.40gb@0", "s"), ("a100-n0-g0-3g.40gb@4", "s"), ("a100-n0-g0-3g.40gb@0", "b"),
        ("l4-n0-g0-whole", "s"), ("l4-n0-g1-whole", "s")))
    new_deps = sorted(o["metadata"]["name"] for o in objs if o["kind"] == "Deployment")

    # Cycle 1: the new servers, their Services and repositories are created (and the device
    # plugin loses the time-slicing the two servers needed); no old server goes yet.
    rep = r.cycle()
    done = {(a.verb, a.kind, a.name) for a in rep.done}
    assert {("create", "Deployment", n) for n in new_deps} <= done
    assert {("create", "Service", n) for n in new_deps} <= done
    assert ("update", "ConfigMap", "packer-device-plugin") in done
    assert not [a for a in rep.done if a.verb == "delete"]
    held = {(a.kind, a.name): why for a, why in rep.waiting}
    for n in old_deps:
        assert "replacements to be ready" in held[("Deployment", n)], held
        assert "still running" in held[("Service", n)]
    # Not ready yet: still waiting, nothing written.
    rep = r.cycle()
    assert rep.done == [] and rep.writes == 0 and len(rep.waiting) == 3 * len(old_deps)

    # Once the new servers are ready the old ones go (4 disruptions a cycle), then their
    # Services and repositories; the cluster ends exactly at the plan.
    cluster.ready(set(new_deps))
    deleted_at: dict[str, int] = {}
    for i in range(6):
        rep = r.cycle()
        for a in rep.done:
            assert a.verb == "delete" and a.name in {o["metadata"]["name"] for o in old}, a.describe()
            if a.kind == "Deployment":
                deleted_at[a.name] = i
        if not rep.done and not rep.waiting:
            break
    assert sorted(deleted_at) == old_deps
    assert sorted(deleted_at.values()) == [0, 0, 0, 0, 1]  # the budget of 4 disruptions per cycle
    assert live_hashes(cluster) == want_hashes(plan)
    assert sorted(cluster.objects("apps/v1/deployments")) == new_deps
    assert "sharing" not in yaml.safe_load(
        cluster.objects("v1/configmaps", "gpu-operator")["packer-device-plugin"]["data"]["a100"])
    before = cluster.writes()
    rep = r.cycle()
    assert (rep.done, rep.waiting, rep.writes, cluster.writes() - before) == ([], [], 0, 0)
