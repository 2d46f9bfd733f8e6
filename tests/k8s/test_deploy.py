"""The reconciler's own manifests: valid, least-privilege, and enough for what it really calls."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

import k8s

DEPLOY = Path(k8s.__file__).parent / "deploy"
VERSION = kubernetes_validate.utils.latest_version()


def docs() -> list[dict]:
    """What `kubectl apply -k k8s/deploy/base` applies, and the example fleet."""
    from kustomize_lite import build

    return build(DEPLOY / "base") + [d for d in yaml.safe_load_all((DEPLOY / "fleet-configmap.yaml").read_text()) if d]


def test_manifests_validate_strictly() -> None:
    kinds = set()
    for d in docs():
        kubernetes_validate.validate(d, VERSION, strict=True)
        kinds.add(d["kind"])
    assert {"ServiceAccount", "Role", "ClusterRole", "Deployment", "ConfigMap"} <= kinds


def test_rbac_has_no_wildcards_and_no_secrets() -> None:
    for d in docs():
        for rule in d.get("rules", []):
            for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                assert "*" not in rule.get(field, []), (d["metadata"]["name"], rule)
            assert "secrets" not in rule["resources"]
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"])


def test_example_fleet_configmap_parses() -> None:
    from packer.fleetfile import parse_fleet

    cm = next(d for d in docs() if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "packer-fleet")
    assert parse_fleet(yaml.safe_load(cm["data"]["fleet.yaml"])).models


def allowed(rules_by_ns: dict[str | None, list[dict]], verb: str, group: str, resource: str,
            namespace: str | None, name: str | None) -> bool:
    """Kubernetes RBAC: any rule of a Role in the namespace (or of the ClusterRole) matches."""
    for ns in {namespace, None}:
        for r in rules_by_ns.get(ns, []):
            if group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"]:
                names = r.get("resourceNames")
                if not names or (name is not None and name in names):
                    return True
    return False


@pytest.mark.parametrize("devices", ["device-plugin", "dra"])
def test_every_call_of_a_full_reconcile_is_allowed_and_nothing_more_is_granted(cluster, plans, devices,
                                                                             tmp_path) -> None:
    """Run a converge and a migration, then check each request the server saw against the RBAC
    rules; and that no resource is granted that the reconciler never touched. With --devices dra,
    the rules are the base's and the dra component's (ResourceClaims) together."""
    from dataclasses import replace

    from kustomize_lite import build, deploy_with

    from k8s.settings import ReconcileSettings

    manifests = docs() if devices == "device-plugin" else build(deploy_with(tmp_path, components=("dra",)))
    r = cluster.reconciler(render=replace(ReconcileSettings().render, devices=devices))
    cluster.converge(r)
    cluster.slots_by_scale[3.0] = [s for s in plans.base_slots if s[4] != 4] + [
        ("l4", "l4-n0", 2, "whole", None, [("asr", 1)])]
    cluster.set_fleet(3.0)
    cluster.converge(r)
    sa = "packer-reconciler"
    rules: dict[str | None, list[dict]] = {}
    for d in manifests:
        if d["kind"] in ("Role", "ClusterRole"):
            rules.setdefault(d["metadata"].get("namespace") if d["kind"] == "Role" else None, []).extend(d["rules"])
    verbs = {"GET": "get", "POST": "create", "PATCH": "patch", "DELETE": "delete"}
    used = set()
    ua = r.cluster.core.api_client.user_agent
    for q in cluster.requests():
        if q.headers.get("User-Agent") != ua or q.resource is None:
            continue  # the test harness's own setup calls
        verb = verbs[q.method.value]
        if verb == "get" and q.name is None:
            verb = "list"
        assert allowed(rules, verb, q.resource.group, q.resource.plural, q.namespace, q.name), (verb, q.resource, q.namespace, q.name)
        used.add((q.resource.plural, verb))
    granted = {res for rs in rules.values() for rule in rs for res in rule["resources"]}
    assert granted == {res for res, _ in used}
    assert ("deployments", "delete") in used and ("nodes", "patch") in used
    assert (("resourceclaims", "delete") in used) == (devices == "dra")
