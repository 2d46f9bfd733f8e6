"""The pure decisions, without a server: containment, merge patches, node binding, lease steps,
node checks. Each case says what it guards."""

from __future__ import annotations

import json

import pytest

from k8s import names as N
from k8s.diff import Change, bind_nodes, contains, gate, merge_patch, node_changes, ready
from k8s.lease import LeaseView, decide
from k8s.reconciler import check_nodes


@pytest.mark.parametrize("live, want, ok", [
    pytest.param({"a": 1, "b": 2}, {"a": 1}, True, id="server-added-defaults-are-fine"),
    pytest.param({"a": 1}, {"a": 2}, False, id="changed-value"),
    pytest.param({"p": [{"port": 80, "protocol": "TCP"}]}, {"p": [{"port": 80}]}, True, id="list-items-contain"),
    pytest.param({"p": [{"port": 80}, {"port": 81}]}, {"p": [{"port": 80}]}, False, id="extra-list-item"),
    pytest.param({"r": {"cpu": 2}}, {"r": {"cpu": "2"}}, True, id="quantity-as-number"),
    pytest.param({"f": "false"}, {"f": False}, False, id="bool-is-not-a-string"),
    pytest.param({}, {"a": None}, True, id="absent-equals-null"),
])
def test_contains(live, want, ok) -> None:
    assert contains(live, want) is ok


def test_merge_patch_drops_only_what_packer_set() -> None:
    live = {"metadata": {"labels": {N.model_label("old"): "serving", "team": "x", N.MANAGED_BY: "packer"},
                         "annotations": {"deployment.kubernetes.io/revision": "3", N.SPEC_HASH: "a"}},
            "data": {"gone": "1", "kept": "2"},
            "spec": {"clusterIP": "10.0.0.1", "template": {"metadata": {"labels": {N.model_label("old"): "serving"}}}}}
    want = {"metadata": {"labels": {N.MANAGED_BY: "packer"}, "annotations": {N.SPEC_HASH: "b"}},
            "data": {"kept": "3"},
            "spec": {"template": {"metadata": {"labels": {N.model_label("new"): "serving"}}, "spec": {}}}}
    p = merge_patch(live, want)
    assert p["metadata"]["labels"] == {N.MANAGED_BY: "packer", N.model_label("old"): None}  # not "team"
    assert "deployment.kubernetes.io/revision" not in p["metadata"]["annotations"]
    # written before packer recorded its keys: only keys under packer's prefixes are nulled
    assert p["data"] == {"kept": "3"}
    assert p["spec"]["template"]["metadata"]["labels"] == {N.model_label("new"): "serving", N.model_label("old"): None}
    assert "clusterIP" not in p["spec"]  # a defaulted, immutable field is never nulled
    # with the owned-keys annotation: exactly the keys packer set and dropped are nulled
    live["metadata"]["labels"]["app.kubernetes.io/name"] = "theirs"
    live["spec"]["template"]["metadata"]["labels"]["team"] = "x"
    live["data"]["extra"] = "theirs"
    live["metadata"]["annotations"][N.OWNED_KEYS_ANNOTATION] = json.dumps(
        {"labels": [N.MANAGED_BY, N.model_label("old")], "template-labels": [N.model_label("old")],
         "data": ["gone", "kept"]})
    p = merge_patch(live, want)
    assert p["metadata"]["labels"] == {N.MANAGED_BY: "packer", N.model_label("old"): None}
    assert p["data"] == {"kept": "3", "gone": None}
    assert p["spec"]["template"]["metadata"]["labels"] == {N.model_label("new"): "serving", N.model_label("old"): None}


def node(name: str, pool: str | None, **labels: str) -> dict:
    lb = dict(labels)
    if pool:
        lb["packer.dev/pool"] = pool
    return {"metadata": {"name": name, "labels": lb}}


def test_binding_keeps_existing_and_fills_in_name_order() -> None:
    nodes = [node("b", "a100", **{N.NODE_LABEL: "a100-n1"}), node("a", "a100"), node("c", "a100"), node("l", "l4")]
    b = bind_nodes({"a100-n0": "a100", "a100-n1": "a100", "l4-n0": "l4", "l4-n1": "l4"}, nodes, "packer.dev/pool")
    assert b == {"a100-n1": "b", "a100-n0": "a", "l4-n0": "l"}  # l4-n1: no node yet


def test_node_changes_touch_only_pool_nodes_and_packer_labels() -> None:
    nodes = [node("a", "a100", **{N.NODE_LABEL: "a100-n0", N.MIG_CONFIG_LABEL: "old", "zone": "z"}),
             node("spare", "a100", **{N.NODE_LABEL: "a100-n9"}), node("cpu", None)]
    acts = node_changes({"a100-n0": {N.NODE_LABEL: "a100-n0", N.MIG_CONFIG_LABEL: "new"}},
                        {"a100-n0": "a"}, nodes, "packer.dev/pool")
    by = {a.name: a for a in acts}
    assert set(by) == {"a", "spare"}
    # "a" was bound before ownership was recorded: its labels are packer's, and now recorded
    assert by["a"].body == {"metadata": {"labels": {N.MIG_CONFIG_LABEL: "new"}, "annotations": {
        N.OWNED_LABELS_ANNOTATION: f"{N.MIG_CONFIG_LABEL},{N.NODE_LABEL}"}}} and by["a"].disruptive
    assert by["spare"].body == {"metadata": {"labels": {N.NODE_LABEL: None}}} and not by["spare"].disruptive


def test_node_changes_leave_labels_packer_did_not_set() -> None:
    """An administrator's device-plugin and MIG configs on a spare node, on a node of a pool not in
    the fleet, or under a value the plan wants changed, stay; a clash is reported, not fixed."""
    admin = {N.DEVICE_PLUGIN_CONFIG_LABEL: "admin", N.MIG_CONFIG_LABEL: "all-1g.10gb"}
    nodes = [node("spare", "a100", **admin), node("other-pool", "h100", **admin),
             node("bound", "a100", **{N.MIG_CONFIG_LABEL: "all-1g.10gb"}),
             {"metadata": {"name": "mine", "labels": {"packer.dev/pool": "a100", N.NODE_LABEL: "a100-n1",
                                                      N.DEVICE_PLUGIN_CONFIG_LABEL: "a100", **{
                                                          N.MIG_CONFIG_LABEL: "admin-mig"}},
                           "annotations": {N.OWNED_LABELS_ANNOTATION: f"{N.DEVICE_PLUGIN_CONFIG_LABEL},{N.NODE_LABEL}"}}}]
    want = {"a100-n0": {N.NODE_LABEL: "a100-n0", N.DEVICE_PLUGIN_CONFIG_LABEL: "a100", N.MIG_CONFIG_LABEL: "packer-x"}}
    assert bind_nodes({"a100-n0": "a100"}, nodes, "packer.dev/pool") == {"a100-n0": "bound"}
    conflicts: list = []
    acts = {a.name: a for a in node_changes(want, {"a100-n0": "bound"}, nodes, "packer.dev/pool", conflicts)}
    assert set(acts) == {"bound", "mine"}  # nothing for "spare" and "other-pool"
    assert acts["bound"].body["metadata"] == {
        "labels": {N.NODE_LABEL: "a100-n0", N.DEVICE_PLUGIN_CONFIG_LABEL: "a100"},
        "annotations": {N.OWNED_LABELS_ANNOTATION: f"{N.DEVICE_PLUGIN_CONFIG_LABEL},{N.NODE_LABEL}"}}
    assert [(c.name, N.MIG_CONFIG_LABEL in c.reason) for c in conflicts] == [("bound", True)]
    # "mine" is no longer used: packer removes what it set and leaves the admin's MIG config
    assert acts["mine"].body["metadata"] == {"labels": {N.NODE_LABEL: None, N.DEVICE_PLUGIN_CONFIG_LABEL: None},
                                             "annotations": {N.OWNED_LABELS_ANNOTATION: None}}


@pytest.mark.parametrize("view, now, step", [
    pytest.param(None, 100.0, "create", id="no-lease"),
    pytest.param(LeaseView("me", 95.0, 30, 0, "1"), 100.0, "hold", id="mine-fresh"),
    pytest.param(LeaseView("me", 85.0, 30, 0, "1"), 100.0, "renew", id="mine-third-gone"),
    pytest.param(LeaseView("other", 85.0, 30, 0, "1"), 100.0, "follow", id="theirs-fresh"),
    pytest.param(LeaseView("other", 60.0, 30, 0, "1"), 100.0, "take", id="theirs-expired"),
    pytest.param(LeaseView("", 99.0, 30, 0, "1"), 100.0, "take", id="released"),
])
def test_lease_steps(view, now, step) -> None:
    assert decide(view, "me", now, 30) == step


def test_ready_needs_the_current_generation() -> None:
    d = {"spec": {"replicas": 1}, "metadata": {"generation": 3},
         "status": {"readyReplicas": 1, "updatedReplicas": 1, "observedGeneration": 2}}
    assert not ready(d)
    d["status"]["observedGeneration"] = 3
    assert ready(d)


def test_gate_holds_back_a_delete_until_the_replacement_is_ready() -> None:
    def dep(name: str, model: str, ready_: bool) -> dict:
        return {"kind": "Deployment", "metadata": {"name": name, "namespace": "ns"},
                "spec": {"replicas": 1, "template": {"metadata": {"labels": {N.model_label(model): "serving"}},
                                                     "spec": {}}},
                "status": {"readyReplicas": int(ready_), "updatedReplicas": int(ready_)}}
    old, new = dep("old", "asr", True), dep("new", "asr", False)
    delete = Change("delete", "Deployment", "ns", "old", "no longer in the plan", disruptive=True)
    g = gate([delete], [new], [old, new], {}, [], 4)
    assert g.now == [] and "new" in g.waiting[0][1]
    new["status"] = {"readyReplicas": 1, "updatedReplicas": 1}
    assert gate([delete], [new], [old, new], {}, [], 4).now == [delete]


def test_check_nodes_reports_wrong_gpus(plans) -> None:
    fleet = plans.build(plans.base_slots).fleet
    nodes = [node("ok", "l4", **{N.GPU_PRODUCT_LABEL: "NVIDIA-L4", N.GPU_COUNT_LABEL: "4"}),
             node("mig", "a100", **{N.GPU_PRODUCT_LABEL: "NVIDIA-A100-SXM4-80GB-MIG-3g.40gb"}),
             node("wrong", "l4", **{N.GPU_PRODUCT_LABEL: "Tesla-T4"}),
             node("small", "l4", **{N.GPU_COUNT_LABEL: "2"}), node("stray", "h100")]
    out = check_nodes(fleet, nodes, "packer.dev/pool")
    assert [o.split(":")[0] for o in out] == ["node wrong", "node small", "node stray"]


def test_list_items_without_apiversion_and_kind_are_not_drift(base_plan) -> None:
    """A real API server omits apiVersion and kind on list items: that alone must not cause a write."""
    from k8s.diff import diff
    from k8s.render import render_plan

    want = render_plan(base_plan)
    live = []
    for o in want:
        item = {k: v for k, v in o.items() if k not in ("apiVersion",)}
        item["metadata"] = {**o["metadata"], "uid": "u", "resourceVersion": "7"}
        live.append(item)
    actions, conflicts = diff(want, live)
    assert actions == [] and conflicts == []


@pytest.mark.parametrize("pid", ["a100-80-n0-g3-3g.40gb@4", "l4-n0-g0-whole", "h100-n12-g0-x4",
                                 "a-very-long-pool-name-" * 3 + "n0-g0-whole"])
def test_slot_names_are_dns_labels_and_never_an_old_class_name(pid) -> None:
    """One server per slot: its name, and its repository's, are DNS-1035 labels that no slot's
    old per-class name (``<slot>-s``, ``<slot>-b``) can equal, so a migration never updates an
    old object in place under a new meaning."""
    import re

    dns = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
    new = {N.group_name(pid), N.repo_configmap_name(pid)}
    for n in new:
        assert len(n) <= 63 and dns.fullmatch(n), n
    old = {N.dns_label(f"{p}-{k}") for p in (pid, "l4-n0-g0-whole", "a100-80-n0-g3-3g.40gb@4") for k in "sb"}
    old |= {N.dns_label(f"{p}-{k}", limit=58) + "-repo" for p in (pid,) for k in "sb"}
    assert not new & old
