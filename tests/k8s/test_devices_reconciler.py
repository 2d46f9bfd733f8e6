"""The reconciler with ``--devices dra``, over real HTTP (the official client against kmock's
KubernetesEmulator): ResourceClaims are created before the servers that reference them, a quiet
cycle writes nothing, a slot's old claim goes only after its server is gone or has moved to its
new claim, and claims packer does not own are never touched or used."""

from __future__ import annotations

import json

import kubernetes_validate
import pytest

from k8s import names as N
from k8s.render import render_plan
from k8s.settings import ManifestSettings

NS = "packer"
DRA = ManifestSettings(devices="dra")
CLAIMS = "resource.k8s.io/v1/resourceclaims"


def claim_of(dep: dict) -> str:
    (ref,) = dep["spec"]["template"]["spec"]["resourceClaims"]
    return ref["resourceClaimName"]


def set_status(cluster, name: str, **status: int) -> None:
    """Play the Deployment controller mid-rollout: ``replicas`` counts old and new pods."""
    def patch() -> None:
        for (res, _, n), obj in cluster.emu.emulator.objects.items():
            if res.plural == "deployments" and n == name and not obj.deleted:
                obj.patch({"status": status})
    cluster.emu.call(patch)


def test_claims_come_before_their_servers_and_a_quiet_cycle_writes_nothing(cluster) -> None:
    r = cluster.reconciler(render=DRA)
    first = r.cycle()
    done = [(a.verb, a.kind, a.name) for a in first.done]
    deps = cluster.objects("apps/v1/deployments")
    claims = cluster.objects(CLAIMS)
    assert len(deps) == len(claims) == 4
    for name, dep in deps.items():
        # each server references its own slot's claim, created earlier in the same cycle
        c = claim_of(dep)
        assert claims[c]["metadata"]["labels"][N.GROUP_LABEL] == name
        assert done.index(("create", "ResourceClaim", c)) < done.index(("create", "Deployment", name))
        assert "nvidia.com/gpu" not in json.dumps(dep["spec"]["template"]["spec"]["containers"][0]["resources"])
    mig = claims[claim_of(deps[N.group_name("a100-n0-g0-3g.40gb@4")])]
    req = mig["spec"]["devices"]["requests"][0]["exactly"]
    assert req["deviceClassName"] == "mig.nvidia.com"
    assert {"cel": {"expression": 'device.attributes["gpu.nvidia.com"].profile == "3g.40gb"'}} in req["selectors"]
    for c in claims.values():
        for v in ("1.34.0", "1.36.0"):
            kubernetes_validate.validate(c, v, strict=True)
    # no device plugin here: no config for it, no node label selecting one
    assert "packer-device-plugin" not in cluster.objects("v1/configmaps", "gpu-operator")
    cluster.ready()
    reps = cluster.converge(r)
    assert reps[-1].done == [] and reps[-1].errors == [] and reps[-1].waiting == []
    for node in cluster.objects("v1/nodes", None).values():
        assert N.DEVICE_PLUGIN_CONFIG_LABEL not in node["metadata"]["labels"]
    assert cluster.objects("v1/nodes", None)["gpu-a100-1"]["metadata"]["labels"][N.MIG_CONFIG_LABEL]
    # quiet: zero writes, counted client-side and server-side, also for a new process
    before = cluster.writes()
    rep = r.cycle()
    assert (rep.done, rep.writes, cluster.writes() - before) == ([], 0, 0)
    assert rep.calls["list"] == 7  # the five kinds, nodes, and ResourceClaims
    rep = cluster.reconciler(render=DRA).cycle()
    assert rep.done == [] and rep.writes == 0 and set(rep.calls) == {"get", "list"}


def test_a_moved_replica_gets_its_new_claim_and_server_before_the_old_ones_go(cluster, plans) -> None:
    """asr#1 moves from its MIG slot to a new L4: the new claim and server first; the old server
    goes once the new one is ready; its claim only with or after it."""
    old, new = N.group_name("a100-n0-g0-3g.40gb@4"), N.group_name("l4-n0-g2-whole")
    cluster.slots_by_scale[3.0] = [s for s in plans.base_slots if s[4] != 4] + [
        ("l4", "l4-n0", 2, "whole", None, [("asr", 1)])]
    r = cluster.reconciler(render=DRA)
    cluster.converge(r)
    old_claim = claim_of(cluster.objects("apps/v1/deployments")[old])
    cluster.set_fleet(3.0)
    rep = r.cycle()
    done = [(a.verb, a.kind, a.name) for a in rep.done]
    new_claim = claim_of(cluster.objects("apps/v1/deployments")[new])
    assert done.index(("create", "ResourceClaim", new_claim)) < done.index(("create", "Deployment", new))
    held = {(a.verb, a.kind, a.name): why for a, why in rep.waiting}
    assert "replacements to be ready" in held[("delete", "Deployment", old)]
    assert held[("delete", "ResourceClaim", old_claim)] == f"its server {old} still uses it"
    assert old_claim in cluster.objects(CLAIMS)
    cluster.ready({new})
    rep = r.cycle()
    done = [(a.verb, a.kind, a.name) for a in rep.done]
    assert done.index(("delete", "Deployment", old)) < done.index(("delete", "ResourceClaim", old_claim))
    assert old_claim not in cluster.objects(CLAIMS) and new_claim in cluster.objects(CLAIMS)
    reps = cluster.converge(r)
    assert reps[-1].done == [] and reps[-1].waiting == []
    before = cluster.writes()
    assert r.cycle().writes == 0 and cluster.writes() == before


def test_a_changed_request_is_a_new_claim_the_server_moves_to_before_the_old_goes(cluster, plans) -> None:
    """The L4 pool becomes L40S: its slots keep their names, their claims' product selector
    changes. A claim's spec cannot be patched, so each slot gets a new claim, its server rolls
    over to it, and the old claim is deleted only once no pod of the old template is left."""
    import yaml

    from packer.plan import fleet_to_dict

    def planner(fleet, current):  # the same slots, on whatever GPUs the fleet's pools have
        return plans.build(plans.base_slots, fleet_to_dict(fleet))

    r = cluster.reconciler(render=DRA, planner=planner)
    cluster.converge(r)
    deps = cluster.objects("apps/v1/deployments")
    l4 = {n: claim_of(d) for n, d in deps.items() if "l4" in n}
    core = cluster.client.CoreV1Api(cluster.api)
    doc = yaml.safe_load(cluster.objects("v1/configmaps")["packer-fleet"]["data"]["fleet.yaml"])
    doc["pools"][1]["gpu"] = "l40s-48gb"
    core.patch_namespaced_config_map("packer-fleet", NS, {"data": {"fleet.yaml": yaml.safe_dump(doc)}})
    rep = r.cycle()
    moved = {a.name for a in rep.done if (a.verb, a.kind) == ("update", "Deployment")}
    assert moved == set(l4)
    claims = cluster.objects(CLAIMS)
    deps = cluster.objects("apps/v1/deployments")
    for name, old_claim in l4.items():
        new_claim = claim_of(deps[name])
        assert new_claim != old_claim and '"NVIDIA L40S"' in claims[new_claim]["spec"]["devices"]["requests"][0][
            "exactly"]["selectors"][0]["cel"]["expression"]
        assert old_claim in claims  # the running pod still holds it
    held = {a.name: why for a, why in rep.waiting if a.kind == "ResourceClaim"}
    assert set(held) == set(l4.values()) and all("still uses it" in w for w in held.values())
    # mid-rollout: the old pod is still there, so its claim stays
    for name in l4:
        set_status(cluster, name, replicas=2, updatedReplicas=1, readyReplicas=1)
    rep = r.cycle()
    held = {a.name: why for a, why in rep.waiting if a.kind == "ResourceClaim"}
    assert set(held) == set(l4.values()) and rep.done == []
    assert all(w.startswith("its server") and w.endswith("is still moving to its new claim") for w in held.values())
    assert set(l4.values()) <= set(cluster.objects(CLAIMS))
    cluster.ready()
    rep = r.cycle()
    assert sorted(a.name for a in rep.done if (a.verb, a.kind) == ("delete", "ResourceClaim")) == sorted(l4.values())
    assert not set(l4.values()) & set(cluster.objects(CLAIMS))
    before = cluster.writes()
    assert r.cycle().writes == 0 and cluster.writes() == before


@pytest.mark.parametrize("clash", [False, True], ids=["beside-ours", "under-our-name"])
def test_claims_packer_does_not_own_are_never_touched_nor_used(cluster, plans, clash) -> None:
    """Someone else's claim in the namespace survives converges and migrations; one under the
    name of a slot's claim is reported, and that slot's server is not created to use it."""
    objs = render_plan(plans.build(plans.base_slots), DRA)
    server = N.group_name("l4-n0-g0-whole")  # a slot the migration below keeps
    (ours,) = [claim_of(o) for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] == server]
    name = ours if clash else "training-gpus"
    foreign = {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
               "metadata": {"name": name, "namespace": NS, "labels": {"team": "research"}},
               "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": "gpu.nvidia.com"}}]}}}
    cluster.client.ResourceV1Api(cluster.api).create_namespaced_resource_claim(NS, foreign)
    cluster.slots_by_scale[3.0] = [s for s in plans.base_slots if s[4] != 4] + [
        ("l4", "l4-n0", 2, "whole", None, [("asr", 1)])]
    r = cluster.reconciler(render=DRA)
    reps = cluster.converge(r)
    cluster.set_fleet(3.0)
    reps += cluster.converge(r)
    assert cluster.objects(CLAIMS)[name] == foreign
    assert all(a.name != name for rep in reps for a in rep.done if a.kind == "ResourceClaim")
    if clash:
        assert server not in cluster.objects("apps/v1/deployments")
        assert {(c.kind, c.name) for c in reps[-1].conflicts} == {("ResourceClaim", name), ("Deployment", server)}
    else:
        assert reps[-1].conflicts == []


def test_the_cli_dry_run_shows_the_claims_and_its_confirm_keeps_the_form(cluster) -> None:
    """`packer reconcile --devices dra --dry-run` shows the claims it would create; the printed
    `apply with:` carries --devices dra (another form would be another diff), and applies it."""
    import shlex

    from click.testing import CliRunner

    from k8s.cli import reconcile
    from packer_cli.main import main

    args = ["--server", cluster.emu.url, "--planner-time-limit", "2", "--devices", "dra", "--dry-run"]
    res = CliRunner().invoke(reconcile, args)
    assert res.exit_code == 0, res.output
    assert any(line.startswith("would create ResourceClaim/pk-") for line in res.output.splitlines())
    cmd = res.output.strip().splitlines()[-1].split("apply with: ", 1)[1]
    assert " --devices dra --confirm " in cmd
    assert main(shlex.split(cmd)[1:]) == 0
    claims = cluster.objects(CLAIMS)
    deps = cluster.objects("apps/v1/deployments")
    assert claims and {claim_of(d) for d in deps.values()} == set(claims)
