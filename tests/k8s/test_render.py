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


def args_of(dep: dict) -> list[str]:
    return dep["spec"]["template"]["spec"]["containers"][0]["args"]


def test_one_server_per_slot_loads_both_repositories_under_one_rate_limiter(base_plan) -> None:
    """A slot is one scheduling domain: its streaming and batch members run in one tritonserver,
    each class from its own repository, taking turns on the slot's rate limiter."""
    deps = by_kind(render_plan(base_plan), "Deployment")
    # 4 slots, one of them holding a streaming and a batch model: 4 servers.
    assert len(deps) == 4
    assert {d["metadata"]["annotations"][N.PLACEMENT_ANNOTATION] for d in deps.values()} == {
        p.id for p in base_plan.placements}
    mixed = deps[N.group_name("a100-n0-g0-3g.40gb@0")]
    args = args_of(mixed)
    assert [a for a in args if a.startswith("--model-repository=")] == [
        "--model-repository=/models/streaming", "--model-repository=/models/batch"]
    assert [a for a in args if a.startswith("--load-model=")] == ["--load-model=asr", "--load-model=summ"]
    assert "--rate-limit=execution_count" in args
    labels = mixed["spec"]["template"]["metadata"]["labels"]
    assert {k for k in labels if k.startswith(N.MODEL_LABEL_PREFIX)} == {N.model_label("asr"), N.model_label("summ")}
    assert "asr b=8, summ b=8" in mixed["metadata"]["annotations"][N.REASON_ANNOTATION]
    # The models emptyDir holds both classes' weights: 2 x (2.5 + 20) GB + 1.
    vols = {v["name"]: v for v in mixed["spec"]["template"]["spec"]["volumes"]}
    assert vols["models"]["emptyDir"]["sizeLimit"] == "46Gi"
    # A one-member slot: only its class's repository, no rate limiter.
    single = args_of(deps[N.group_name("l4-n0-g0-whole")])
    assert [a for a in single if a.startswith("--model-repository=")] == ["--model-repository=/models/streaming"]
    assert "--rate-limit=execution_count" not in single


def test_a_batch_only_slot_serves_from_the_batch_repository(plans) -> None:
    plan = plans.build([("a100", "a100-n0", 0, "3g.40gb", 0, [("summ", 0)])])
    (dep,) = by_kind(render_plan(plan), "Deployment").values()
    assert [a for a in args_of(dep) if a.startswith("--model-repository=")] == ["--model-repository=/models/batch"]
    (cm,) = [o for o in render_plan(plan) if o["metadata"]["name"] == N.repo_configmap_name(plan.placements[0].id)]
    assert cm["data"]["models"] == "batch/summ\n"


def test_mig_server_requests_its_profile_and_is_pinned_to_its_node(base_plan) -> None:
    deps = by_kind(render_plan(base_plan), "Deployment")
    d = deps[N.group_name("a100-n0-g0-3g.40gb@4")]
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
    d = deps[N.group_name("l4-n0-g0-whole")]
    pod = d["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    exprs = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
    assert exprs["matchExpressions"] == [{"key": "packer.dev/pool", "operator": "In", "values": ["l4"]}]


def test_service_exposes_http_grpc_and_metrics(base_plan) -> None:
    objs = render_plan(base_plan)
    svcs, deps = by_kind(objs, "Service"), by_kind(objs, "Deployment")
    assert set(svcs) == set(deps)  # one per slot, named as its server
    for name, s in svcs.items():
        assert [p["port"] for p in s["spec"]["ports"]] == [8000, 8001, 8002]
        assert len(s["metadata"]["name"]) <= 63
        # It selects its slot's one pod, and names the models it answers for (clients route by
        # model name; `kubectl get svc -l model.packer.dev/<name>` finds the Service).
        pod = deps[name]["spec"]["template"]["metadata"]["labels"]
        assert s["spec"]["selector"] == {N.GROUP_LABEL: name} and pod[N.GROUP_LABEL] == name
        assert {k for k in s["metadata"]["labels"] if k.startswith(N.MODEL_LABEL_PREFIX)} == {
            k for k in pod if k.startswith(N.MODEL_LABEL_PREFIX)}


def test_pdb_per_model_component_with_min_replicas_two(base_plan) -> None:
    objs = render_plan(base_plan)
    pdbs = by_kind(objs, "PodDisruptionBudget")
    # asr (min 2) shares its slot's one server with summ: one budget for both; punct (min 2) alone.
    assert sorted(pdbs) == ["pk-pdb-asr", "pk-pdb-punct"]
    assert "asr, summ" in pdbs["pk-pdb-asr"]["metadata"]["annotations"][N.REASON_ANNOTATION]
    deps = by_kind(objs, "Deployment")
    for d in deps.values():
        labels = d["spec"]["template"]["metadata"]["labels"]
        models = [k.removeprefix(N.MODEL_LABEL_PREFIX) for k in labels if k.startswith(N.MODEL_LABEL_PREFIX)]
        expect = {"asr": "pk-pdb-asr", "punct": "pk-pdb-punct", "summ": "pk-pdb-asr"}
        assert {labels.get(N.PDB_LABEL)} == {expect[m] for m in models}


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
    # The 3g.40gb@0 slot holds a streaming and a batch model, but in one server: one pod per
    # device, so no time-slicing (which would let the scheduler stack unplanned pods there).
    a100 = device_plugin_config(base_plan, "a100")
    assert a100["flags"]["migStrategy"] == "mixed"
    assert "sharing" not in a100
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
    from packer_cli.main import main
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
    from packer_cli.main import main
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

    from packer_cli.main import main
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
    from serving.config import from_text

    weights = tmp_path / "asr.onnx"
    weights.write_bytes(b"onnx")
    doc = plans.fleet_doc()
    doc["models"][0]["artifact"] = f"file://{weights}"
    plan = plans.build([("l4", "l4-n0", 0, "whole", None, [("asr", 0), ("punct", 0)])], doc)
    cm = next(o for o in render_plan(plan) if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-repo"))
    out = _fetch(cm, tmp_path)
    assert (out / "streaming" / "asr" / "1" / "asr.onnx").read_bytes() == b"onnx"
    assert (out / "streaming" / "punct" / "1" / "model.py").exists()  # the stand-in
    for m in ("asr", "punct"):
        cfg = from_text((out / "streaming" / m / "config.pbtxt").read_text())
        assert cfg.name == m and cfg.parameters["slot"].string_value == "l4-n0-g0-whole"
    dep = next(o for o in render_plan(plan) if o["kind"] == "Deployment")
    assert "--rate-limit=execution_count" in dep["spec"]["template"]["spec"]["containers"][0]["args"]


def _fetch(cm: dict, tmp_path: Path) -> Path:
    """Run the ConfigMap's fetch.sh with a real shell, as the init container does."""
    import subprocess

    conf = tmp_path / "config"
    conf.mkdir()
    for k, v in cm["data"].items():
        (conf / k).write_text(v)
    out = tmp_path / "models"
    subprocess.run(["sh", str(conf / "fetch.sh")], check=True, env={"CONFIG": str(conf), "MODELS": str(out),
                                                                   "PATH": "/usr/bin:/bin"})
    return out


def test_the_init_container_builds_both_repositories_of_a_mixed_slot(plans, tmp_path: Path) -> None:
    """One ConfigMap per slot; the init container lays out /models/streaming and /models/batch,
    which are exactly the server's --model-repository paths, each model in its class's."""
    from serving.config import from_text

    doc = plans.fleet_doc()
    doc["models"][0].pop("artifact")  # stand-ins only: nothing to download here
    plan = plans.build([("a100", "a100-n0", 0, "3g.40gb", 0, [("asr", 0), ("punct", 0), ("summ", 0)])], doc)
    objs = render_plan(plan)
    (cm,) = [o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-repo")]
    assert cm["metadata"]["name"] == N.repo_configmap_name("a100-n0-g0-3g.40gb@0")
    assert cm["data"]["models"] == "batch/summ\nstreaming/asr\nstreaming/punct\n"
    group = json.loads(cm["data"]["group.json"])
    assert group["classes"] == ["streaming", "batch"]
    assert {m["name"]: m["kind"] for m in group["members"]} == {"asr": "streaming", "punct": "streaming",
                                                                "summ": "batch"}
    out = _fetch(cm, tmp_path)
    assert sorted(p.name for p in out.iterdir()) == ["batch", "streaming"]
    assert sorted(p.name for p in (out / "streaming").iterdir()) == ["asr", "punct"]
    assert sorted(p.name for p in (out / "batch").iterdir()) == ["summ"]
    assert (out / "batch" / "summ" / "1" / "model.py").exists()  # the stand-in
    for kind, m in (("streaming", "asr"), ("streaming", "punct"), ("batch", "summ")):
        assert from_text((out / kind / m / "config.pbtxt").read_text()).name == m
    (dep,) = [o for o in objs if o["kind"] == "Deployment"]
    repos = [a.removeprefix("--model-repository=") for a in args_of(dep) if a.startswith("--model-repository=")]
    assert repos == ["/models/streaming", "/models/batch"]
    assert "--rate-limit=execution_count" in args_of(dep)


def test_every_member_of_a_shared_server_takes_turns_on_the_slot_resource(plans) -> None:
    """--rate-limit=execution_count orders only instances that name a resource: each member of a
    shared server must name the slot's one unit, streaming and batch alike."""
    from serving.config import from_text

    plan = plans.build([("a100", "a100-n0", 0, "3g.40gb", 0, [("asr", 0), ("summ", 0)])])
    (cm,) = [o for o in render_plan(plan) if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-repo")]
    for m in ("asr", "summ"):
        cfg = from_text(cm["data"][f"{m}__config.pbtxt"])
        assert [r.name for g in cfg.instance_group for r in g.rate_limiter.resources] == ["slot"], m


BAD_NAMESPACES = {"space-and-bang": "Bad NS!", "upper": "Packer", "leading-dash": "-packer",
                  "trailing-dash": "packer-", "dot": "packer.dev", "too-long": "a" * 64, "empty": ""}


@pytest.mark.parametrize("flag", ["--namespace", "--gpu-operator-namespace"])
@pytest.mark.parametrize("bad", list(BAD_NAMESPACES.values()), ids=list(BAD_NAMESPACES))
def test_a_bad_namespace_is_one_line_naming_the_flag_and_the_rule(base_plan, tmp_path, capsys, flag, bad) -> None:
    """Sweep D11: `--namespace 'Bad NS!'` rendered every object into that namespace (rc 0), which
    `kubectl apply` refuses object by object. Now rc 2, one line, nothing written."""
    from packer_cli.main import main
    from packer.plan import save_plan

    save_plan(base_plan, tmp_path / "plan.json")
    rc = main(["render", "k8s", str(tmp_path / "plan.json"), flag, bad, "-d", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    if bad == "":  # the command line refuses any empty option value first (packer_cli.main), naming it
        assert f"{flag} '': an empty value" in err and "Fix:" in err
    else:
        assert f"'{flag}'" in err and "RFC 1123 DNS label" in err and "at most 63" in err and "Fix:" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag", ["--namespace", "--gpu-operator-namespace"])
def test_the_reconciler_refuses_a_bad_namespace_before_reaching_a_cluster(tmp_path, capsys, flag) -> None:
    """`packer reconcile` writes its namespace into every object it applies, its Lease and its
    Events: the same check, before any connection (the server below does not exist)."""
    from packer_cli.main import main

    rc = main(["reconcile", "--server", "http://127.0.0.1:9", flag, "Bad NS!", "--dry-run"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert f"'{flag}'" in err and "RFC 1123 DNS label" in err and "cannot reach" not in err


def test_settings_refuse_a_bad_namespace_whoever_builds_them() -> None:
    """A caller that skips the CLI (the reconciler built in code) cannot render one either."""
    from k8s.settings import ManifestSettings
    from packer.errors import UserError

    with pytest.raises(UserError, match="namespace 'Bad NS!' is not a namespace name.*Fix: e.g. namespace bad-ns"):
        ManifestSettings(namespace="Bad NS!")
    with pytest.raises(UserError, match="gpu_operator_namespace"):
        ManifestSettings(gpu_operator_namespace="GPU")


def test_a_good_namespace_reaches_every_namespaced_object(base_plan, tmp_path) -> None:
    from packer_cli.main import main
    from packer.plan import save_plan

    save_plan(base_plan, tmp_path / "plan.json")
    ns = "ml-serving-" + "x" * 52  # 63 characters: the longest allowed
    assert main(["render", "k8s", str(tmp_path / "plan.json"), "--namespace", ns, "-d", str(tmp_path / "out")]) == 0
    docs = [d for f in sorted((tmp_path / "out").glob("*.yaml")) for d in yaml.safe_load_all(f.read_text())]
    assert {d["metadata"]["namespace"] for d in docs} == {ns, "gpu-operator"}
    for d in docs:
        kubernetes_validate.validate(d, K8S_VERSION, strict=True)
