"""Rendered objects: valid against the real schemas, and saying what the issue asks of them."""

from __future__ import annotations

import json
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from k8s import names as N
from k8s.render import device_plugin_config, mig_configs, node_labels, render_plan

K8S_VERSION = kubernetes_validate.utils.latest_version()


def by_kind(objs: list[dict], kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


def test_every_object_validates_strictly(base_plan) -> None:
    objs = render_plan(base_plan)
    assert len(objs) > 10
    for o in objs:
        kubernetes_validate.validate(o, K8S_VERSION, strict=True)


def test_validation_catches_a_bad_object(base_plan) -> None:
    dep = by_kind(render_plan(base_plan), "Deployment")
    bad = json.loads(json.dumps(next(iter(dep.values()))))
    bad["spec"]["template"]["spec"]["containers"][0]["portz"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_every_object_is_owned_and_carries_the_plan_id(base_plan) -> None:
    for o in render_plan(base_plan):
        labels = o["metadata"]["labels"]
        assert labels[N.MANAGED_BY] == "packer"
        assert labels[N.PLAN_LABEL] == base_plan.id


def test_one_server_per_group_and_class(base_plan) -> None:
    deps = by_kind(render_plan(base_plan), "Deployment")
    # 4 slots, one of them holding a streaming and a batch model: 5 servers.
    assert len(deps) == 5
    mixed = [d for d in deps.values() if d["metadata"]["annotations"][N.PLACEMENT_ANNOTATION] == "a100-n0-g0-3g.40gb@0"]
    assert sorted(d["metadata"]["labels"][N.CLASS_LABEL] for d in mixed) == ["batch", "streaming"]


def test_mig_server_requests_its_profile_and_is_pinned_to_its_node(base_plan) -> None:
    deps = by_kind(render_plan(base_plan), "Deployment")
    d = deps[N.group_name("a100-n0-g0-3g.40gb@4", "streaming")]
    pod = d["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["resources"]["limits"]["nvidia.com/mig-3g.40gb"] == "1"
    assert "nvidia.com/gpu" not in c["resources"]["limits"]
    assert "--model-control-mode=explicit" in c["args"] and "--load-model=asr" in c["args"]
    exprs = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
    assert {"key": N.NODE_LABEL, "operator": "In", "values": ["a100-n0"]} in exprs["matchExpressions"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}} in pod["volumes"]


def test_whole_gpu_server_requests_a_gpu_and_only_its_pool(base_plan) -> None:
    deps = by_kind(render_plan(base_plan), "Deployment")
    d = deps[N.group_name("l4-n0-g0-whole", "streaming")]
    pod = d["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    exprs = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
    assert exprs["matchExpressions"] == [{"key": "packer.dev/pool", "operator": "In", "values": ["l4"]}]


def test_service_exposes_http_grpc_and_metrics(base_plan) -> None:
    svcs = by_kind(render_plan(base_plan), "Service")
    assert len(svcs) == 5
    for s in svcs.values():
        assert [p["port"] for p in s["spec"]["ports"]] == [8000, 8001, 8002]
        assert len(s["metadata"]["name"]) <= 63


def test_pdb_per_model_component_with_min_replicas_two(base_plan) -> None:
    objs = render_plan(base_plan)
    pdbs = by_kind(objs, "PodDisruptionBudget")
    # asr (min 2) shares a slot with summ only across classes (separate pods); punct (min 2) alone.
    assert sorted(pdbs) == ["pk-pdb-asr", "pk-pdb-punct"]
    deps = by_kind(objs, "Deployment")
    for d in deps.values():
        labels = d["spec"]["template"]["metadata"]["labels"]
        models = [k.removeprefix(N.MODEL_LABEL_PREFIX) for k in labels if k.startswith(N.MODEL_LABEL_PREFIX)]
        expect = {"asr": "pk-pdb-asr", "punct": "pk-pdb-punct", "summ": None}[models[0]]
        assert labels.get(N.PDB_LABEL) == expect


def test_models_sharing_a_server_share_one_budget(plans) -> None:
    plan = plans.build([("l4", "l4-n0", 0, "whole", None, [("asr", 0), ("punct", 0)]),
                       ("l4", "l4-n0", 1, "whole", None, [("asr", 1)]),
                       ("l4", "l4-n0", 2, "whole", None, [("punct", 1)])])
    pdbs = by_kind(render_plan(plan), "PodDisruptionBudget")
    assert list(pdbs) == ["pk-pdb-asr"]


def test_mig_parted_config_and_node_label(base_plan) -> None:
    cfgs = mig_configs(base_plan)
    name, entries = cfgs["a100-n0"]
    assert entries[0] == {"devices": [0], "mig-enabled": True, "mig-devices": {"3g.40gb": 2}}
    assert entries[1] == {"devices": [1], "mig-enabled": False}
    labels = node_labels(base_plan)
    assert labels["a100-n0"][N.MIG_CONFIG_LABEL] == name
    assert N.MIG_CONFIG_LABEL not in labels["l4-n0"]
    cm = by_kind(render_plan(base_plan), "ConfigMap")["packer-mig-parted"]
    assert name in yaml.safe_load(cm["data"]["config.yaml"])["mig-configs"]


def test_time_slicing_only_where_the_plan_stacks_servers(base_plan) -> None:
    # The 3g.40gb@0 slot runs a streaming and a batch server: 2 replicas of that MIG resource.
    a100 = device_plugin_config(base_plan, "a100")
    assert a100["flags"]["migStrategy"] == "mixed"
    assert a100["sharing"]["timeSlicing"]["resources"] == [{"name": "nvidia.com/mig-3g.40gb", "replicas": 2}]
    assert "sharing" not in device_plugin_config(base_plan, "l4")


def test_same_slot_same_object_across_plans(base_plan, plans) -> None:
    """A re-plan that only adds a slot leaves the other objects' content (and hash) unchanged."""
    more = plans.build(plans.base_slots + [("l4", "l4-n0", 2, "whole", None, [("punct", 2)])])
    assert more.id != base_plan.id
    old = {(o["kind"], o["metadata"]["name"]): o["metadata"]["annotations"][N.SPEC_HASH] for o in render_plan(base_plan)}
    new = {(o["kind"], o["metadata"]["name"]): o["metadata"]["annotations"][N.SPEC_HASH] for o in render_plan(more)}
    changed = {k for k in old if old[k] != new.get(k)}
    # punct's budget selects by component label, which the new slot shares: nothing old changes.
    assert changed == set()
    assert len(set(new) - set(old)) == 3  # repo ConfigMap, Deployment, Service of the new slot


def test_cli_writes_valid_files(base_plan, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from k8s.cli import render_k8s
    from packer.plan import save_plan

    save_plan(base_plan, tmp_path / "plan.json")
    res = CliRunner().invoke(render_k8s, [str(tmp_path / "plan.json"), "-d", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    files = sorted((tmp_path / "out").glob("*.yaml"))
    docs = [d for f in files for d in yaml.safe_load_all(f.read_text())]
    assert len(docs) == len(render_plan(base_plan))
    for d in docs:
        kubernetes_validate.validate(d, K8S_VERSION, strict=True)
    labels = yaml.safe_load((tmp_path / "out" / "labels" / "node-labels.yaml").read_text())
    assert labels["a100-n0"][N.NODE_LABEL] == "a100-n0"


def _kubectl_reads(d: Path) -> list[tuple[Path, dict]]:
    """What `kubectl apply -f DIR` reads: DIR's own *.json, *.yaml and *.yml files (not subfolders,
    not other extensions), every document of which must be an object."""
    out = []
    for f in sorted(p for p in d.iterdir() if p.is_file() and p.suffix in (".json", ".yaml", ".yml")):
        out += [(f, doc) for doc in yaml.safe_load_all(f.read_text()) if doc is not None]
    return out


@pytest.mark.parametrize("flag", ["-d", "-o"])  # -o DIR: the old spelling still works, with a note
def test_kubectl_apply_reads_only_objects(base_plan, tmp_path: Path, capsys, flag) -> None:
    """Issue 16 item 12: node-labels.yaml at the top of the directory made `kubectl apply -f` fail
    (apiVersion not set, kind not set)."""
    from packer.cli import main
    from packer.plan import save_plan

    save_plan(base_plan, tmp_path / "plan.json")
    out = tmp_path / "k8s-out"
    out.mkdir()
    (out / "node-labels.yaml").write_text("a100-n0: {}\n")  # an earlier render's: removed
    assert main(["render", "k8s", str(tmp_path / "plan.json"), flag, str(out)]) == 0
    o, err = capsys.readouterr()
    assert f"kubectl apply -f {out}" in o
    assert ("-o/--out DIR is deprecated" in err) == (flag == "-o")
    read = _kubectl_reads(out)
    assert len(read) == len(render_plan(base_plan))
    for f, doc in read:
        assert {"apiVersion", "kind", "metadata"} <= set(doc), f
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    assert (out / "labels" / "node-labels.yaml").is_file() and not (out / "node-labels.yaml").exists()


def test_mig_parted_config_is_a_readable_block(base_plan, tmp_path: Path) -> None:
    """The mig-parted config inside its ConfigMap is YAML a person reads, not one escaped line."""
    from packer.cli import main
    from packer.plan import save_plan

    save_plan(base_plan, tmp_path / "plan.json")
    assert main(["render", "k8s", str(tmp_path / "plan.json"), "-d", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "configmaps.yaml").read_text()
    assert "  config.yaml: |\n" in text and "\\n" not in text.split("config.yaml: |", 1)[1].split("---")[0]
    assert "    mig-configs:\n" in text
    cm = next(d for d in yaml.safe_load_all(text) if d["metadata"]["name"] == "packer-mig-parted")
    name, entries = mig_configs(base_plan)["a100-n0"]
    assert yaml.safe_load(cm["data"]["config.yaml"])["mig-configs"][name] == entries


def test_label_script_labels_each_named_node(base_plan, tmp_path: Path) -> None:
    """label-nodes.sh runs `kubectl label node` with the labels of each logical node, on the real
    node the operator names, and refuses to run without that name."""
    import os
    import subprocess

    from packer.cli import main
    from packer.plan import save_plan

    save_plan(base_plan, tmp_path / "plan.json")
    assert main(["render", "k8s", str(tmp_path / "plan.json"), "-d", str(tmp_path / "out")]) == 0
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "kubectl").write_text('#!/bin/sh\necho "$@" >> "$LOG"\n')
    (bin_ / "kubectl").chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_}:{os.environ['PATH']}", LOG=str(tmp_path / "log"),
               NODE_A100_N0="gpu-7", NODE_L4_N0="gpu-9")
    script = tmp_path / "out" / "label-nodes.sh"
    r = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    calls = (tmp_path / "log").read_text().splitlines()
    want = node_labels(base_plan)
    assert calls == [f"label node --overwrite {real} " + " ".join(f"{k}={v}" for k, v in sorted(want[n].items()))
                     for n, real in (("a100-n0", "gpu-7"), ("l4-n0", "gpu-9"))]
    env.pop("NODE_L4_N0")
    r = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "set NODE_L4_N0 to the real node of logical node l4-n0" in r.stderr


def test_repository_configmap_builds_a_triton_repository(plans, tmp_path: Path) -> None:
    """The init container's script, run by a real shell on the ConfigMap's files, lays out the
    repository the serving writer describes; the configs parse back as Triton ModelConfigs."""
    import subprocess

    from serving.config import from_text

    weights = tmp_path / "asr.onnx"
    weights.write_bytes(b"onnx")
    doc = plans.fleet_doc()
    doc["models"][0]["artifact"] = f"file://{weights}"
    plan = plans.build([("l4", "l4-n0", 0, "whole", None, [("asr", 0), ("punct", 0)])], doc)
    cm = next(o for o in render_plan(plan) if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-repo"))
    conf = tmp_path / "config"
    conf.mkdir()
    for k, v in cm["data"].items():
        (conf / k).write_text(v)
    out = tmp_path / "models"
    subprocess.run(["sh", str(conf / "fetch.sh")], check=True, env={"CONFIG": str(conf), "MODELS": str(out),
                                                                   "PATH": "/usr/bin:/bin"})
    assert (out / "asr" / "1" / "asr.onnx").read_bytes() == b"onnx"
    assert (out / "punct" / "1" / "model.py").exists()  # the stand-in
    for m in ("asr", "punct"):
        cfg = from_text((out / m / "config.pbtxt").read_text())
        assert cfg.name == m and cfg.parameters["slot"].string_value == "l4-n0-g0-whole"
    dep = next(o for o in render_plan(plan) if o["kind"] == "Deployment")
    assert "--rate-limit=execution_count" in dep["spec"]["template"]["spec"]["containers"][0]["args"]
