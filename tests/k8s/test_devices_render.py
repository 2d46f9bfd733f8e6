"""The device backends (``--devices``) on the three example fleets' plans: golden files of what
each backend puts in the objects, every object valid on Kubernetes 1.34 and 1.36, and the
shares each backend asks for adding up to no more than the devices the plan packed.

The plans are stored (golden/devices/plans/, made by ``packer plan`` on packer/examples), so a
planner change does not move these files. Regenerate after an intended change:
``PACKER_UPDATE_GOLDEN=1 pytest tests/k8s/test_devices_render.py``.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from functools import cache
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from strict_schemas import validate

from k8s import names as N
from k8s.devices import FORMS, gib_to_mib
from k8s.render import node_labels, render_plan
from k8s.settings import ManifestSettings
from packer.catalog import gpu_type
from packer.plan import Plan
from packer.planfile import load_plan

GOLDEN = Path(__file__).resolve().parent / "golden" / "devices"
FLEETS = ("multilingual-meetings", "llm-platform", "long-tail")
VERSIONS = ("1.34.0", "1.36.0")


@cache
def plan_of(fleet: str) -> Plan:
    return load_plan(GOLDEN / "plans" / f"{fleet}.json")


@cache
def rendered(fleet: str, form: str) -> tuple[dict, ...]:
    return tuple(render_plan(plan_of(fleet), ManifestSettings(devices=form)))


def of(objs, kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


def device_view(fleet: str, form: str) -> dict:
    """What the backend decides, per server and per cluster-wide config; the rest of each object
    (Triton args, probes, volumes) is the same in every form and tested in test_render.py."""
    objs = rendered(fleet, form)
    servers = {}
    for name, d in of(objs, "Deployment").items():
        pod = d["spec"]["template"]["spec"]
        res = pod["containers"][0]["resources"]
        terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        meta = d["spec"]["template"]["metadata"]
        view = {
            "pinned": [f"{e['key']} in {','.join(e['values'])}" for t in terms["nodeSelectorTerms"]
                       for e in t["matchExpressions"]],
            "resources": {k: v for k, v in res["limits"].items() if k != "memory"},
            "rollingUpdate": d["spec"]["strategy"]["rollingUpdate"],
        }
        for k, v in (("schedulerName", pod.get("schedulerName")), ("resourceClaims", pod.get("resourceClaims")),
                     ("claims", res.get("claims")),
                     ("labels", {k: v for k, v in meta["labels"].items()
                                 if not k.startswith(("packer.dev/", N.MODEL_LABEL_PREFIX, "app.kubernetes.io/"))}),
                     ("annotations", {k: v for k, v in meta["annotations"].items()
                                      if not k.startswith("packer.dev/")})):
            if v:
                view[k] = v
        servers[name] = view
    gpu_operator = {name: {k: yaml.safe_load(v) for k, v in cm["data"].items()}
                    for name, cm in of(objs, "ConfigMap").items() if cm["metadata"]["namespace"] == "gpu-operator"}
    return {"plan": plan_of(fleet).id, "devices": form, "gpu-operator": gpu_operator,
            "node-labels": node_labels(plan_of(fleet), ManifestSettings(devices=form)), "servers": servers,
            "resource-claims": {n: c["spec"] for n, c in of(objs, "ResourceClaim").items()}}


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("fleet", FLEETS)
def test_golden(fleet, form) -> None:
    path = GOLDEN / fleet / f"{form}.yaml"
    got = yaml.safe_dump(device_view(fleet, form), sort_keys=False, width=120)
    if os.environ.get("PACKER_UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(got)
    assert got == path.read_text()


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("fleet", FLEETS)
def test_every_object_validates_strictly_on_1_34_and_1_36(fleet, form) -> None:
    objs = rendered(fleet, form)
    plan = plan_of(fleet)
    for o in objs:
        for v in VERSIONS:
            validate(o, v)
        # every form: packer's, and of this plan
        assert o["metadata"]["labels"][N.MANAGED_BY] == "packer" and o["metadata"]["labels"][N.PLAN_LABEL] == plan.id
    kinds = {o["kind"] for o in objs}
    assert ("ResourceClaim" in kinds) == (form == "dra")
    assert (N.DEVICE_PLUGIN_CONFIG_LABEL in json.dumps(node_labels(plan, ManifestSettings(devices=form)))) == (
        form in ("device-plugin", "kai"))


def test_the_fast_validator_agrees_with_kubernetes_validate() -> None:
    """strict_schemas.validate is kubernetes-validate --strict with its validators kept: same
    verdict on a valid object of every kind and on an object with a field the schema lacks."""
    objs = rendered("multilingual-meetings", "dra")
    seen = {}
    for o in objs:
        seen.setdefault(o["kind"], o)
    for o in seen.values():
        for v in VERSIONS:
            kubernetes_validate.validate(o, v, strict=True)
            validate(o, v)
        bad = json.loads(json.dumps(o))
        bad["spec" if "spec" in bad else "metadata"]["notAField"] = 1
        for v in VERSIONS:
            with pytest.raises(kubernetes_validate.ValidationError):
                kubernetes_validate.validate(bad, v, strict=True)
            with pytest.raises(kubernetes_validate.ValidationError):
                validate(bad, v)
    claim = json.loads(json.dumps(seen["ResourceClaim"]))
    claim["spec"]["devices"]["requests"][0]["exactly"]["deviceClass"] = "gpu.nvidia.com"  # misspelt
    for v in VERSIONS:
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(claim, v, strict=True)


@pytest.mark.parametrize("fleet", FLEETS)
def test_the_default_form_renders_every_object_as_before_backends_existed(fleet) -> None:
    """The spec hashes of every object rendered by the code before --devices existed (stored
    once, never regenerated by the golden switch): a cluster running that render sees no update
    from this one. Re-stored once on purpose since: the Triton configs lost their queue policy
    (commit 036af28), and the stand-in model learnt to run real GPU work on a GPU instance (tenth
    session), each of which changes every repository ConfigMap and the Deployments that roll with
    it, and nothing else; and for multilingual-meetings, the sequence models' slots for the streams
    they carry at peak (twenty-sixth session: ``arrivals.session_slots``), which change the
    repositories of its slots with a streaming model with ``streams`` and their Deployments."""
    before = json.loads((GOLDEN / fleet / "spec-hashes-before-backends.json").read_text())
    assert list(rendered(fleet, "device-plugin")) == render_plan(plan_of(fleet))
    assert {f"{o['kind']}/{o['metadata']['name']}": o["metadata"]["annotations"][N.SPEC_HASH]
            for o in rendered(fleet, "device-plugin")} == before


@pytest.mark.parametrize("fleet", FLEETS)
def test_each_claim_asks_for_its_slots_device_and_each_server_shares_only_its_own(fleet) -> None:
    plan = plan_of(fleet)
    objs = rendered(fleet, "dra")
    claims, deps = of(objs, "ResourceClaim"), of(objs, "Deployment")
    by_group = {c["metadata"]["labels"][N.GROUP_LABEL]: c for c in claims.values()}
    assert len(claims) == len(deps) == len(plan.placements)
    for p in plan.placements:
        name = N.group_name(p.id)
        pod = deps[name]["spec"]["template"]["spec"]
        (ref,) = pod["resourceClaims"]
        assert by_group[name]["metadata"]["name"] == ref["resourceClaimName"]
        assert pod["containers"][0]["resources"]["claims"] == [{"name": ref["name"]}]
        assert not any(k.startswith("nvidia.com/") for k in pod["containers"][0]["resources"]["limits"])
        (req,) = by_group[name]["spec"]["devices"]["requests"]
        ex = req["exactly"]
        assert ex["count"] == max(1, len(p.gpus)) and ex["allocationMode"] == "ExactCount"
        assert ex["deviceClassName"] == ("gpu.nvidia.com" if p.slot == "whole" else "mig.nvidia.com")
        exprs = [s["cel"]["expression"] for s in ex["selectors"]]
        products = gpu_type(plan.fleet.pool(p.pool).gpu).products
        assert all(json.dumps(x) in exprs[0] for x in products)
        assert (f'device.attributes["gpu.nvidia.com"].profile == "{p.slot}"' in exprs) == (p.slot != "whole")
        # the surge pod shares the claimed device: it starts first only if both fit there
        surge = deps[name]["spec"]["strategy"]["rollingUpdate"]["maxSurge"]
        assert surge == (1 if 2 * p.memory_gb <= p.memory_capacity_gb else 0)


@pytest.mark.parametrize("form", ["hami", "kai"])
def test_shares_of_one_gpu_add_up_to_at_most_the_gpu(form) -> None:
    """A MIG slot becomes a share of a whole GPU: the shares the plan packed on one GPU never ask
    for more than it has (HAMi: memory MiB and cores %; KAI: memory fraction), and the plan's MIG
    nodes run with MIG off so that whole GPUs are there to share."""
    plan = plan_of("multilingual-meetings")
    objs = rendered("multilingual-meetings", form)
    deps = of(objs, "Deployment")
    per_gpu: dict[tuple, list[dict]] = defaultdict(list)
    mig = [p for p in plan.placements if p.slot != "whole"]
    assert mig, "the meetings plan has MIG slots"
    for p in mig:
        d = deps[N.group_name(p.id)]
        per_gpu[(p.node, p.gpu)].append(d)
        aff = d["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        pin = {"key": N.NODE_LABEL, "operator": "In", "values": [p.node]}
        assert pin in aff["nodeSelectorTerms"][0]["matchExpressions"]
    for (node, _), ds in per_gpu.items():
        gpu = gpu_type(plan.fleet.pool(next(p.pool for p in plan.placements if p.node == node)).gpu)
        if form == "hami":
            lim = [d["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"] for d in ds]
            assert sum(int(x["nvidia.com/gpucores"]) for x in lim) <= 100
            assert sum(int(x["nvidia.com/gpumem"]) for x in lim) <= gib_to_mib(gpu.memory_gb)
        else:
            assert sum(float(d["spec"]["template"]["metadata"]["annotations"]["gpu-fraction"]) for d in ds) <= 1
    (cm,) = [o for o in objs if o["metadata"]["name"] == "packer-mig-parted"]
    for entries in yaml.safe_load(cm["data"]["config.yaml"])["mig-configs"].values():
        assert all(e["mig-enabled"] is False for e in entries)


@pytest.mark.parametrize("form", FORMS)
def test_render_k8s_devices_as_a_user_reads_it(form, tmp_path, capsys) -> None:
    """`packer render k8s PLAN --devices FORM -d DIR`: files kubectl applies, every document an
    object valid on both versions, and lines that say what the form needs and what it gives up."""
    from packer_cli.main import main

    flag = "kai:team-a" if form == "kai" else form
    out = tmp_path / "out"
    assert main(["render", "k8s", str(GOLDEN / "plans" / "multilingual-meetings.json"), "--devices", flag,
                 "-d", str(out)]) == 0
    text = capsys.readouterr().out
    docs = [d for f in sorted(out.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
    assert len(docs) == len(rendered("multilingual-meetings", form))
    for d in docs:
        for v in VERSIONS:
            validate(d, v)
    assert ((out / "resourceclaims.yaml").exists()) == (form == "dra")
    if form == "device-plugin":
        assert "devices:" not in text
    else:
        assert f"devices: {form}: needs " in text
    if form == "kai":
        assert "queue team-a" in text and "3 MIG slot(s) run as gpu-fraction shares" in text
        assert all(d["spec"]["template"]["metadata"]["labels"]["kai.scheduler/queue"] == "team-a"
                   for d in docs if d["kind"] == "Deployment")
    if form == "hami":
        assert "3 MIG slot(s) run as nvidia.com/gpumem + gpucores shares" in text
    if form == "dra":
        assert "rolling update stops the old pod first" in text
    labels = yaml.safe_load((out / "labels" / "node-labels.yaml").read_text())
    assert labels == node_labels(plan_of("multilingual-meetings"), ManifestSettings(devices=form, kai_queue="team-a"))


@pytest.mark.parametrize("bad, says", [("gpu", "not one of device-plugin, dra, hami, kai"),
                                        ("dra:q", "only kai takes a queue"),
                                        ("kai:", "the queue must be a label value"),
                                        ("kai:-x", "the queue must be a label value")],
                         ids=["unknown", "queue-on-dra", "empty-queue", "bad-queue"])
def test_a_bad_devices_value_is_one_line_with_the_fix(bad, says, tmp_path, capsys) -> None:
    from packer_cli.main import main

    plan = str(GOLDEN / "plans" / "llm-platform.json")
    rc = main(["render", "k8s", plan, "--devices", bad, "-d", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and len(err.splitlines()) == 1 and says in err and "Fix:" in err
    assert not (tmp_path / "o").exists()


def test_a_full_gpu_mig_slot_is_a_whole_gpu_under_kai_and_hami(plans) -> None:
    """A 7g.80gb slot holds all of an A100's memory slices: KAI gets a whole GPU, not a
    gpu-fraction of 1; HAMi gets all the cores (7 of 7 slices) and the instance's memory."""
    plan = plans.build([("a100", "a100-n0", 0, "7g.80gb", 0, [("summ", 0)])])
    (kai,) = of(render_plan(plan, ManifestSettings(devices="kai")), "Deployment").values()
    assert kai["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "gpu-fraction" not in kai["spec"]["template"]["metadata"]["annotations"]
    (hami,) = of(render_plan(plan, ManifestSettings(devices="hami")), "Deployment").values()
    lim = hami["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert lim["nvidia.com/gpucores"] == "100" and int(lim["nvidia.com/gpumem"]) <= 80 * 1024
