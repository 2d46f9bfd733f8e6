"""The serving plane locked down (issue 15, items 7-9): admin APIs behind a key only the reconciler
has, a NetworkPolicy, verified https artifacts, restricted pods, and RBAC that grants no more."""

from __future__ import annotations

import copy
import hashlib
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

import k8s
from k8s import names as N
from k8s.render import FETCH_SCRIPT, render_plan
from packer.errors import UserError

K8S_VERSION = kubernetes_validate.utils.latest_version()
DEPLOY = Path(k8s.__file__).parent / "deploy"


def deploy_docs() -> list[dict]:
    """What `kubectl apply -k k8s/deploy/base` applies."""
    from kustomize_lite import build

    return build(DEPLOY / "base")


def of(objs: list[dict], kind: str) -> list[dict]:
    return [o for o in objs if o["kind"] == kind]


def test_admin_apis_need_the_key_from_the_secret(base_plan) -> None:
    for d in of(render_plan(base_plan), "Deployment"):
        c = d["spec"]["template"]["spec"]["containers"][0]
        restricted = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in c["args"] if "-restricted-api=" in a}
        assert set(restricted) == {"--http-restricted-api", "--grpc-restricted-api"}
        for value in restricted.values():
            apis, key = value.split(":", 1)
            assert {"model-repository", "model-config", "shared-memory"} <= set(apis.split(","))
            assert "inference" not in apis and "health" not in apis  # clients still infer and probe
            assert key == "packer-admin-key=$(PACKER_ADMIN_KEY)"
        env = {e["name"]: e for e in c["env"]}
        assert env["PACKER_ADMIN_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "packer-triton-admin", "key": "key"}
    # only the reconciler's pod is given the key
    rec = next(d for d in deploy_docs() if d["kind"] == "Deployment")
    env = rec["spec"]["template"]["spec"]["containers"][0]["env"]
    assert any(e["name"] == "PACKER_ADMIN_KEY" for e in env)


def test_network_policy_opens_inference_to_clients_and_metrics_to_the_reconciler(base_plan) -> None:
    objs = render_plan(base_plan)
    [np] = of(objs, "NetworkPolicy")
    kubernetes_validate.validate(np, K8S_VERSION, strict=True)
    spec = np["spec"]
    assert spec["policyTypes"] == ["Ingress"]
    open_rule, metrics_rule = spec["ingress"]
    assert "from" not in open_rule and {p["port"] for p in open_rule["ports"]} == {8000, 8001}
    assert metrics_rule["ports"] == [{"protocol": "TCP", "port": 8002}]
    rec = next(d for d in deploy_docs() if d["kind"] == "Deployment")
    rec_labels = rec["spec"]["template"]["metadata"]["labels"]
    assert metrics_rule["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "packer-reconciler"}}}]
    assert all(rec_labels.get(k) == v for k, v in metrics_rule["from"][0]["podSelector"]["matchLabels"].items())
    # it selects every server pod and not the reconciler
    sel = spec["podSelector"]
    for d in of(objs, "Deployment"):
        labels = d["spec"]["template"]["metadata"]["labels"]
        assert all(labels.get(k) == v for k, v in sel["matchLabels"].items()) and N.GROUP_LABEL in labels
    assert N.GROUP_LABEL not in rec_labels


def _restricted_violations(pod: dict) -> list[str]:
    """The Pod Security 'restricted' profile's checks that a pod spec can fail."""
    out = []
    psc = pod.get("securityContext") or {}
    for c in pod.get("initContainers", []) + pod["containers"]:
        sc = c.get("securityContext") or {}
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{c['name']}: allowPrivilegeEscalation")
        if "ALL" not in (sc.get("capabilities") or {}).get("drop", []) or (sc.get("capabilities") or {}).get("add"):
            out.append(f"{c['name']}: capabilities")
        if not (sc.get("runAsNonRoot") or psc.get("runAsNonRoot")):
            out.append(f"{c['name']}: runAsNonRoot")
        if sc.get("privileged"):
            out.append(f"{c['name']}: privileged")
        if ((sc.get("seccompProfile") or psc.get("seccompProfile")) or {}).get("type") not in ("RuntimeDefault", "Localhost"):
            out.append(f"{c['name']}: seccomp")
    for v in pod.get("volumes", []):
        if set(v) - {"name"} - {"configMap", "emptyDir", "secret", "projected", "downwardAPI", "ephemeral",
                                "persistentVolumeClaim", "csi"}:
            out.append(f"volume {v['name']}")
    if pod.get("hostNetwork") or pod.get("hostPID") or pod.get("hostIPC"):
        out.append("host namespaces")
    return out


def test_pods_are_restricted_read_only_and_bounded(base_plan) -> None:
    for d in of(render_plan(base_plan), "Deployment"):
        pod = d["spec"]["template"]["spec"]
        assert _restricted_violations(pod) == []
        for c in pod["initContainers"] + pod["containers"]:
            assert c["securityContext"]["readOnlyRootFilesystem"] is True, c["name"]
        vols = {v["name"]: v for v in pod["volumes"]}
        assert vols["models"]["emptyDir"]["sizeLimit"].endswith("Gi")
        assert vols["tmp"]["emptyDir"]["sizeLimit"]
        assert {"name": "tmp", "mountPath": "/tmp"} in pod["containers"][0]["volumeMounts"]
    rec = next(d for d in deploy_docs() if d["kind"] == "Deployment")
    assert _restricted_violations(rec["spec"]["template"]["spec"]) == []
    ns = next(d for d in deploy_docs() if d["kind"] == "Namespace")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_artifacts_need_https_and_a_sha256(plans) -> None:
    doc = plans.fleet_doc()
    for uri, sha, says in [("http://models.example/asr.onnx", "0" * 64, "plain http"),
                           ("https://models.example/asr.onnx", None, "no sha256"),
                           ("s3://bucket/asr.onnx", None, "unsupported scheme"),
                           ("https://models.example/asr.onnx", "XYZ", "64 lower-case hex")]:
        d = copy.deepcopy(doc)
        d["models"][0]["artifact"] = {"uri": uri, **({"sha256": sha} if sha else {})}
        with pytest.raises(UserError, match=says):
            render_plan(plans.build(plans.base_slots, d))
    objs = render_plan(plans.build(plans.base_slots))
    repo = next(o for o in of(objs, "ConfigMap") if o["data"].get("asr.uri"))
    assert repo["data"]["asr.sha256"] == doc["models"][0]["artifact"]["sha256"]


@pytest.mark.parametrize("tamper", [False, True])
def test_the_fetch_script_verifies_the_sha256(tmp_path, tamper) -> None:
    """The init container's script, run here with sh: a file whose digest differs is refused."""
    src = tmp_path / "asr.onnx"
    src.write_bytes(b"weights")
    conf, models = tmp_path / "config", tmp_path / "models"
    conf.mkdir()
    (conf / "models").write_text("streaming/asr\n")
    (conf / "asr.uri").write_text(f"file://{src}")
    (conf / "asr.filename").write_text("model.onnx")
    (conf / "asr.sha256").write_text(hashlib.sha256(b"weights").hexdigest())
    if tamper:
        src.write_bytes(b"evil weights")
    p = subprocess.run(["sh", "-c", FETCH_SCRIPT], env={"CONFIG": str(conf), "MODELS": str(models), "PATH": "/usr/bin:/bin"},
                       capture_output=True, text=True, timeout=30)
    assert (p.returncode != 0) is tamper, p.stderr
    assert (models / "streaming" / "asr" / "1" / "model.onnx").exists() is not tamper
    if tamper:
        assert "sha256" in p.stderr


def test_http_is_refused_by_the_fetch_script_too(tmp_path) -> None:
    conf = tmp_path / "config"
    conf.mkdir()
    (conf / "models").write_text("streaming/asr\n")
    (conf / "asr.uri").write_text("http://models.example/asr.onnx")
    p = subprocess.run(["sh", "-c", FETCH_SCRIPT], env={"CONFIG": str(conf), "MODELS": str(tmp_path / "m"),
                                                        "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=30)
    assert p.returncode == 1 and "unsupported artifact uri" in p.stderr


def test_an_artifact_change_shows_as_one_in_the_dry_run(cluster, plans) -> None:
    r = cluster.reconciler()
    cluster.converge(r)
    doc = plans.fleet_doc(2.0)
    doc["models"][0]["artifact"]["sha256"] = "a" * 64
    cluster.client.CoreV1Api(cluster.api).patch_namespaced_config_map(
        "packer-fleet", "packer", {"data": {"fleet.yaml": yaml.safe_dump(doc)}})
    r.planner = lambda fleet, cur: plans.build(plans.base_slots, doc)  # same slots, new artifact digest
    rep = r.cycle(dry_run=True)
    lines = [l for l in rep.lines() if "artifact of asr" in l]
    assert lines and "sha256 9f86d081884c" in lines[0] and "sha256 aaaaaaaaaaaa" in lines[0], rep.lines()


def test_rbac_grants_no_unused_verbs_and_no_foreign_configmap_reads(cluster, plans) -> None:
    roles = {(d["kind"], d["metadata"].get("namespace")): d for d in deploy_docs() if d["kind"] in ("Role", "ClusterRole")}
    ops = roles[("Role", "gpu-operator")]["rules"]
    for rule in ops:  # reads in the GPU operator's namespace: only packer's two ConfigMaps, by name
        if {"get", "list", "watch"} & set(rule["verbs"]):
            assert rule.get("resourceNames") == ["packer-device-plugin", "packer-mig-parted"], rule
    nodes = roles[("ClusterRole", None)]["rules"]
    assert nodes == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["list", "patch"]}]
    vap = next(d for d in deploy_docs() if d["kind"] == "ValidatingAdmissionPolicy")
    assert "packer.dev/pool" in vap["spec"]["validations"][0]["expression"]
    assert any(d["kind"] == "ValidatingAdmissionPolicyBinding" and d["spec"]["policyName"] == vap["metadata"]["name"]
               for d in deploy_docs())


def test_a_fleet_edit_to_an_http_artifact_is_refused_and_what_runs_stays(cluster, plans) -> None:
    r = cluster.reconciler()
    cluster.converge(r)
    servers = set(cluster.objects("apps/v1/deployments"))
    before = cluster.objects("v1/configmaps")["packer-status"]["binaryData"]
    doc = plans.fleet_doc(2.0)
    doc["models"][0]["artifact"] = {"uri": "http://models.example/asr.onnx"}
    r.planner = lambda fleet, cur: plans.build(plans.base_slots, doc)
    cluster.client.CoreV1Api(cluster.api).patch_namespaced_config_map(
        "packer-fleet", "packer", {"data": {"fleet.yaml": yaml.safe_dump(doc)}})
    reps = [r.cycle(), r.cycle()]
    for rep in reps:
        assert any("plain http is not fetched" in e for e in rep.errors) and rep.input_errors
        assert rep.done == [] and rep.replanned == ""
    assert set(cluster.objects("apps/v1/deployments")) == servers
    assert cluster.objects("v1/configmaps")["packer-status"]["binaryData"] == before  # the applied plan
    assert reps[1].writes == 0  # reported once
    events = [e for e in cluster.objects("v1/events").values() if e["reason"] == "ReconcileError"]
    assert len(events) == 1 and "plain http" in events[0]["message"]


def test_images_can_be_pinned_by_digest(tmp_path, base_plan) -> None:
    import json

    from click.testing import CliRunner

    from k8s.cli import render_k8s
    from packer.plan import to_dict

    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(to_dict(base_plan)))
    triton = "nvcr.io/nvidia/tritonserver@sha256:" + "1" * 64
    fetch = "busybox@sha256:" + "2" * 64
    r = CliRunner().invoke(render_k8s, [str(plan), "-o", str(tmp_path / "out"), "--triton-image", triton,
                                        "--fetch-image", fetch])
    assert r.exit_code == 0, r.output
    for d in yaml.safe_load_all((tmp_path / "out" / "deployments.yaml").read_text()):
        pod = d["spec"]["template"]["spec"]
        assert pod["containers"][0]["image"] == triton and pod["initContainers"][0]["image"] == fetch
