"""k8s/deploy as kustomize builds it: the base, the example overlay (namespace and image) and the
dra component, each object valid on Kubernetes 1.34 and 1.36, the namespace carried everywhere.

Built by ``kustomize_lite`` (what CI has), and, where kubectl is installed, checked against
``kubectl kustomize`` itself, so the two cannot drift apart.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from kustomize_lite import build, deploy_with

VERSIONS = ("1.34.0", "1.36.0")
REAL = shutil.which("kubectl")


def key(d: dict) -> tuple:
    return (d["kind"], d["metadata"].get("namespace") or "", d["metadata"]["name"])


def kubectl_kustomize(root: Path) -> list[dict]:
    out = subprocess.run([REAL, "kustomize", str(root)], capture_output=True, text=True, timeout=60, check=True)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


BUILDS = {"base": {}, "example": {"example": True}, "example+dra": {"example": True, "components": ("dra",)},
          "base+dra": {"components": ("dra",)}}


@pytest.mark.parametrize("which", list(BUILDS))
def test_every_built_object_validates_on_both_versions(which, tmp_path) -> None:
    objs = build(deploy_with(tmp_path, **BUILDS[which]))
    assert len({key(o) for o in objs}) == len(objs) >= 10
    for o in objs:
        for v in VERSIONS:
            kubernetes_validate.validate(o, v, strict=True)


@pytest.mark.skipif(REAL is None, reason="kubectl is not installed: kustomize_lite alone builds k8s/deploy")
@pytest.mark.parametrize("which", list(BUILDS))
def test_kustomize_lite_builds_what_kubectl_kustomize_builds(which, tmp_path) -> None:
    root = deploy_with(tmp_path, **BUILDS[which])
    assert sorted(build(root), key=key) == sorted(kubectl_kustomize(root), key=key)


def test_the_example_overlay_moves_the_reconciler_and_everything_that_names_its_namespace(tmp_path) -> None:
    objs = build(deploy_with(tmp_path, example=True))
    ns = next(o for o in objs if o["kind"] == "Namespace")["metadata"]["name"]
    assert ns == "ml-serving"
    for o in objs:
        where = o["metadata"].get("namespace")
        if o["kind"] in ("Role", "RoleBinding") and where == "gpu-operator":
            continue  # the reconciler's rights over its two ConfigMaps there stay there
        assert where in (None, ns), key(o)
        for s in o.get("subjects") or []:
            assert s["namespace"] == ns, key(o)
    assert {key(o) for o in objs if o["metadata"].get("namespace") == "gpu-operator"} == {
        ("Role", "gpu-operator", "packer-reconciler"), ("RoleBinding", "gpu-operator", "packer-reconciler")}
    for cluster_scoped in ("ClusterRole", "ClusterRoleBinding", "ValidatingAdmissionPolicy",
                           "ValidatingAdmissionPolicyBinding", "Namespace"):
        assert all("namespace" not in o["metadata"] for o in objs if o["kind"] == cluster_scoped), cluster_scoped
    (dep,) = [o for o in objs if o["kind"] == "Deployment"]
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["args"][2:4] == ["--namespace", ns]
    assert c["image"].startswith("ghcr.io/packer-project/packer@sha256:")
    (vap,) = [o for o in objs if o["kind"] == "ValidatingAdmissionPolicy"]
    assert vap["spec"]["matchConditions"][0]["expression"] == (
        f"request.userInfo.username == 'system:serviceaccount:{ns}:packer-reconciler'")


def test_the_dra_component_adds_only_resource_claims(tmp_path) -> None:
    """Least privilege: the base grants nothing of resource.k8s.io; the component adds one rule,
    ResourceClaims in the reconciler's namespace (no DeviceClasses, no ResourceSlices, no claim
    status), and tells the reconciler which form it renders."""
    base = {key(o): o for o in build(deploy_with(tmp_path / "a"))}
    dra = {key(o): o for o in build(deploy_with(tmp_path / "b", components=("dra",)))}
    assert set(base) == set(dra)
    changed = {k for k in base if base[k] != dra[k]}
    assert changed == {("Role", "packer", "packer-reconciler"), ("Deployment", "packer", "packer-reconciler")}
    role = dra[("Role", "packer", "packer-reconciler")]
    assert role["rules"][:-1] == base[("Role", "packer", "packer-reconciler")]["rules"]
    assert role["rules"][-1] == {"apiGroups": ["resource.k8s.io"], "resources": ["resourceclaims"],
                                 "verbs": ["get", "list", "create", "patch", "delete"]}
    assert not any("resource.k8s.io" in r["apiGroups"] for o in base.values() for r in o.get("rules") or [])
    args = dra[("Deployment", "packer", "packer-reconciler")]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[-2:] == ["--devices", "dra"]
    # and the reconciler takes those args
    from click.testing import CliRunner

    from k8s.cli import reconcile

    assert "--devices FORM" in CliRunner().invoke(reconcile, ["--help"]).output


def test_kubectl_apply_of_the_deploy_folders_reads_only_kustomizations(tmp_path) -> None:
    """Each folder is applied with -k; the example fleet stays a file of its own (applying the
    reconciler again must not put the example fleet back over the user's)."""
    import k8s

    deploy = Path(k8s.__file__).parent / "deploy"
    for d in (deploy / "base", deploy / "overlays" / "example"):
        assert not any(o["kind"] == "ConfigMap" for o in build(d)), d
    (cm,) = [d for d in yaml.safe_load_all((deploy / "fleet-configmap.yaml").read_text()) if d]
    assert cm["metadata"]["name"] == "packer-fleet"
