"""The reconciler under faults and hostile input (issue 15), over real HTTP against the emulator:
a leader paused past its lease writes nothing more; what is not packer's stays as it is; bad input
is reported and the last good plan stays applied."""

from __future__ import annotations

import asyncio
import datetime as dt
import time

import kmock

NS = "packer"
WRITES = ("POST", "PATCH", "PUT", "DELETE")


class Tap:
    """Every request the reconciler sends, with the clock reading when it reached the server
    (each request once: kmock may evaluate a filter more than once, and also over the requests
    it had before the filter was installed, so only requests after :meth:`arm` count)."""

    def __init__(self, clock) -> None:
        self.clock = clock
        self.first = None
        self.seen: dict[int, tuple[float, str, str, str | None]] = {}

    def arm(self, emulator) -> None:
        """Call inside the emulator's loop, after installing the filters."""
        self.first = max((r.id for r in emulator), default=-1) + 1

    def new(self, req: kmock.Request) -> bool:
        return self.first is not None and req.id >= self.first

    def __call__(self, req: kmock.Request) -> bool:
        if self.new(req) and req.headers.get("User-Agent") == "packer-reconciler" and req.id not in self.seen and req.resource:
            self.seen[req.id] = (self.clock(), req.method.value, req.resource.plural, req.name)
        return False  # only watching: the request goes on to the emulator

    def writes(self, after: float, *, lease: bool = False) -> list[tuple]:
        return [r for r in self.seen.values()
                if r[1] in WRITES and r[0] >= after and (lease or r[2] != "leases")]


def lease_expiry(cluster) -> float:
    spec = cluster.objects("coordination.k8s.io/v1/leases")["packer-reconciler"]["spec"]
    renewed = dt.datetime.fromisoformat(spec["renewTime"].replace("Z", "+00:00")).timestamp()
    return renewed + spec["leaseDurationSeconds"]


def grow(cluster, plans) -> None:
    """A fleet change that needs writes: a new server for asr on a third L4."""
    cluster.slots_by_scale[2.0] = plans.base_slots + [("l4", "l4-n0", 2, "whole", None, [("asr", 2)])]
    cluster.set_fleet(2.0)


# -- 1. fenced leadership -------------------------------------------------------------------------


def test_a_leader_paused_past_its_lease_stops_before_its_next_write(cluster, plans) -> None:
    """SIGSTOP between observing and acting, as a long GC or a stopped process does: the leader
    wakes up 31 s later with a 30 s lease and must not send one more write; a new leader takes over."""
    now = [1_000_000.0]
    a = cluster.reconciler("a", clock=lambda: now[0])
    cluster.converge(a)
    grow(cluster, plans)
    now[0] += 11  # the next cycle renews the lease at its start
    tap = Tap(lambda: now[0])
    paused: list[float] = []

    def pause(req: kmock.Request) -> bool:
        if tap.new(req) and not paused and req.method.value == "GET" and req.resource and req.resource.plural == "deployments":
            paused.append(now[0])
            now[0] += 31  # the process sleeps past its lease while this list is answered
        return False

    def install() -> None:
        cluster.emu.emulator[tap] << 200
        cluster.emu.emulator[pause] << 200
        tap.arm(cluster.emu.emulator)
    cluster.emu.call(install)
    rep = a.cycle()
    expiry = lease_expiry(cluster)
    assert paused and paused[0] < expiry <= now[0]
    assert tap.writes(expiry, lease=True) == []  # no write at all after expiry, not even a renewal
    assert not rep.leader and rep.done == [] and any("leadership lost" in e for e in rep.errors)
    # the next candidate takes over and does the work; a, back, follows
    b = cluster.reconciler("b", clock=lambda: now[0])
    reps = cluster.converge(b)
    assert reps[0].leader and any(x.verb == "create" for x in reps[0].done)
    before = cluster.writes()
    assert not a.cycle().leader and cluster.writes() == before


def test_a_hung_api_call_cannot_stretch_a_cycle_past_the_lease(cluster, plans) -> None:
    """Real time, a 3 s lease, a slow API server: the first two creates of a Deployment, and from
    the first on every lease renewal, hang 6 s each. Each call's timeout is cut to the lease's remaining time, the
    renewal fails, and once the lease runs out nothing more is sent."""
    a = cluster.reconciler("a", lease_duration_s=3, fence_margin_s=0.5)
    cluster.converge(a)
    grow(cluster, plans)
    tap = Tap(time.time)
    hung: list[int] = []

    def hang_filter(req: kmock.Request) -> bool:
        if req.id in hung:
            return True
        if not tap.new(req) or not req.resource:
            return False
        if (hung and (req.method.value, req.resource.plural) == ("PATCH", "leases")) or (
                len(hung) < 2 and (req.method.value, req.resource.plural) == ("POST", "deployments")):
            hung.append(req.id)
            return True
        return False

    async def hang(_: kmock.Request) -> None:
        await asyncio.sleep(6.0)
        raise NotImplementedError  # then the emulator's own answer (the object lands late)

    def install() -> None:
        cluster.emu.emulator[tap] << 200
        cluster.emu.emulator[hang_filter] << hang
        tap.arm(cluster.emu.emulator)
    cluster.emu.call(install)
    time.sleep(1.1)  # a third of the lease: the cycle starts with a renewal
    t0 = time.time()
    rep = a.cycle()
    expiry = lease_expiry(cluster)
    assert time.time() - t0 < 4.5, rep.seconds  # bounded by the lease, not by 5 tries x 2 s
    late = tap.writes(expiry)  # the 0.5 s fence margin absorbs the trip to the server
    assert late == [], late
    assert not rep.leader and any("leadership lost" in e for e in rep.errors)


# -- 2. never touch what is not ours ---------------------------------------------------------------


def test_admin_node_labels_on_spare_and_foreign_pool_nodes_stay(cluster) -> None:
    """An administrator's device-plugin and MIG configs on a spare node of a fleet pool and on a
    node of a pool the fleet does not have survive convergence; packer records what it set."""
    from k8s import names as N

    core = cluster.client.CoreV1Api(cluster.api)
    admin = {N.DEVICE_PLUGIN_CONFIG_LABEL: "admin-ts", N.MIG_CONFIG_LABEL: "all-1g.10gb"}
    core.patch_node("gpu-a100-2", {"metadata": {"labels": admin}})  # spare: the plan uses one a100 node
    core.create_node({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "gpu-h100-1", "labels": {
        "packer.dev/pool": "h100", "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", **admin}}})
    r = cluster.reconciler()
    reps = cluster.converge(r)
    assert reps[-1].done == [] and reps[-1].errors == []
    nodes = cluster.objects("v1/nodes", None)
    for name in ("gpu-a100-2", "gpu-h100-1"):
        lb = nodes[name]["metadata"]["labels"]
        assert {k: lb.get(k) for k in admin} == admin, name
        assert N.NODE_LABEL not in lb
    bound = nodes["gpu-a100-1"]["metadata"]
    assert bound["labels"][N.MIG_CONFIG_LABEL].startswith("packer-")
    assert bound["annotations"][N.OWNED_LABELS_ANNOTATION] == ",".join(sorted(
        [N.DEVICE_PLUGIN_CONFIG_LABEL, N.MIG_CONFIG_LABEL, N.NODE_LABEL]))
    assert all(not (a.kind == "Node" and a.name in ("gpu-a100-2", "gpu-h100-1")) for rep in reps for a in rep.done)


def test_restoring_an_edited_object_keeps_what_others_added(cluster) -> None:
    """Someone scales a server, edits its repository script, and adds their own labels and a
    ConfigMap key: packer restores its fields and leaves the additions."""
    from k8s import names as N

    r = cluster.reconciler()
    cluster.converge(r)
    name = N.group_name("l4-n0-g0-whole")
    repo = N.repo_configmap_name("l4-n0-g0-whole")
    apps, core = cluster.client.AppsV1Api(cluster.api), cluster.client.CoreV1Api(cluster.api)
    mp = "application/merge-patch+json"
    apps.patch_namespaced_deployment(name, NS, {
        "metadata": {"labels": {"app.kubernetes.io/name": "asr-gateway", "team": "speech"}},
        "spec": {"replicas": 3, "template": {"metadata": {"labels": {"sidecar.istio.io/inject": "false"}}}}},
        _content_type=mp)
    core.patch_namespaced_config_map(repo, NS, {"data": {"fetch.sh": "echo pwned", "notes.txt": "ours"}},
                                     _content_type=mp)
    rep = r.cycle()
    assert sorted((a.verb, a.kind) for a in rep.done) == [("update", "ConfigMap"), ("update", "Deployment")]
    dep = cluster.objects("apps/v1/deployments")[name]
    assert dep["spec"]["replicas"] == 1
    assert dep["metadata"]["labels"]["app.kubernetes.io/name"] == "asr-gateway"
    assert dep["metadata"]["labels"]["team"] == "speech"
    assert dep["spec"]["template"]["metadata"]["labels"]["sidecar.istio.io/inject"] == "false"
    cm = cluster.objects("v1/configmaps")[repo]
    from k8s.render import FETCH_SCRIPT

    assert cm["data"]["fetch.sh"] == FETCH_SCRIPT
    assert cm["data"]["notes.txt"] == "ours"
    assert r.cycle().done == []  # the additions are not a drift


def test_a_foreign_status_configmap_is_reported_once_and_the_loop_stays_quiet(cluster) -> None:
    """Someone's own ConfigMap named packer-status: one NameConflict, one Replanned, then quiet
    cycles that re-plan nothing and write nothing; their ConfigMap is left as it is."""
    foreign = {"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "packer-status", "namespace": NS, "labels": {"team": "web"}},
               "data": {"status": "green"}}
    cluster.client.CoreV1Api(cluster.api).create_namespaced_config_map(NS, foreign)
    now = [1_000_000.0]
    r = cluster.reconciler(clock=lambda: now[0])
    reps = []
    for _ in range(6):  # clock seconds apart: repeated events would not collapse into one name
        reps.append(r.cycle())
        cluster.ready()
        now[0] += 15
    events = [e for e in cluster.objects("v1/events").values()]
    assert [e["reason"] for e in events].count("Replanned") == 1
    clash = [e for e in events if e["reason"] == "NameConflict" and e["involvedObject"]["name"] == "packer-status"]
    assert len(clash) == 1
    assert [rep.replanned for rep in reps[1:]] == [""] * 5
    assert reps[-1].done == [] and reps[-1].writes == 0 and reps[-2].writes == 0
    assert any("packer-status" in c.name for c in reps[-1].conflicts)  # still shown on the status page
    assert cluster.objects("v1/configmaps")["packer-status"]["data"] == {"status": "green"}


# -- 5. bad input in the reconciler's ConfigMaps ---------------------------------------------------


def _billion_laughs() -> str:
    """Nine levels of nine aliases: 9^9 strings once expanded, a few hundred bytes of YAML."""
    levels = ['&l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    levels += [f"&l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 9)]
    return "name: laughs\nabout: [" + ", ".join(levels) + "]\npools: []\nmodels: []\n"


def test_bad_input_is_reported_and_the_last_good_plan_stays(cluster, plans) -> None:
    """Each of these made every cycle raise (a crash loop) or take gigabytes; now each is reported
    (status, Event, metric), nothing is deleted or re-planned, /healthz stays 200, memory bounded."""
    import base64
    import gzip
    import json
    import tracemalloc

    import yaml
    from fastapi.testclient import TestClient

    from k8s.server import create_app

    now = [1_000_000.0]
    r = cluster.reconciler(clock=lambda: now[0])
    cluster.converge(r)
    servers = set(cluster.objects("apps/v1/deployments"))
    core = cluster.client.CoreV1Api(cluster.api)
    mp = "application/merge-patch+json"
    health = TestClient(create_app(r, started=now[0]))
    huge = plans.fleet_doc()
    huge["models"][0]["latency_ms"]["base"] = 1e308

    def fleet(text: str):
        return lambda: core.patch_namespaced_config_map("packer-fleet", NS, {"data": {"fleet.yaml": text}},
                                                        _content_type=mp)

    def status(data=None, binary=None):
        return lambda: core.patch_namespaced_config_map("packer-status", NS, {
            "data": data or {}, "binaryData": binary or {}}, _content_type=mp)

    good_fleet = yaml.safe_dump(plans.fleet_doc())
    cases = [
        ("deep", fleet("models: " + "[" * 3000 + "]" * 3000), "nested"),
        ("1e308", fleet(yaml.safe_dump(huge)), "fleet ConfigMap"),
        ("laughs", fleet(_billion_laughs()), "aliases are expanded"),
        ("summary", status({"summary.json": "{not json"}), "summary.json: not JSON"),
        ("summary-type", status({"summary.json": '{"conflicts": 5, "policy_state": []}'}), "wrong type"),
        ("blob", status(binary={"plan.json.gz": base64.b64encode(b"\x1f\x8b garbage").decode()}), "plan unreadable"),
        ("gzip-bomb", status(binary={"plan.json.gz": base64.b64encode(
            gzip.compress(b"\0" * (64 << 20), compresslevel=1)).decode()}), "decompressed"),
        ("plan-json", status(binary={"plan.json.gz": base64.b64encode(gzip.compress(b"[]")).decode()}),
         "plan unreadable"),
    ]
    for name, break_it, says in cases:
        break_it()
        now[0] += 15
        if name in ("deep", "laughs", "gzip-bomb"):  # traced: slow, so only where memory is the risk
            tracemalloc.start()
            rep = r.cycle()
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            assert peak < 100 << 20, (name, peak)
        else:
            rep = r.cycle()
        assert any(says in e for e in rep.errors), (name, rep.errors)
        assert rep.input_errors and rep.replanned == "", name
        assert not [a for a in rep.done if a.kind == "Deployment"], (name, rep.done)
        assert set(cluster.objects("apps/v1/deployments")) == servers, name
        assert health.get("/healthz").status_code == 200, name
        metrics = health.get("/metrics").text
        assert "packer_bad_input 1.0" in metrics or "packer_bad_input 2.0" in metrics, name
        fleet(good_fleet)()  # repaired: the next cycle is clean (the status ConfigMap rewritten)
        now[0] += 15
        rep = r.cycle()
        assert rep.errors == [] and rep.replanned == "", (name, rep.errors)
        assert not [a for a in rep.done if a.kind == "Deployment"], (name, rep.done)
        assert r.cycle().writes == 0, name
    summary = json.loads(cluster.objects("v1/configmaps")["packer-status"]["data"]["summary.json"])
    assert summary["errors"] == []
    reported = [e["message"] for e in cluster.objects("v1/events").values() if e["reason"] == "ReconcileError"]
    assert len(reported) >= len(cases) and all(len(m) <= 1000 for m in reported)


def test_bounded_readers_refuse_what_would_blow_up() -> None:
    import gzip

    import pytest
    import yaml

    from k8s.inputs import BadInput, gunzip, load_json, load_yaml

    ok = "a: &x [1, 2]\nb: *x\nc: {d: [1, {e: 2}]}\n"
    assert load_yaml(ok, "t") == yaml.safe_load(ok)
    for text, says in [(_billion_laughs(), "aliases"), ("[" * 100 + "]" * 100, "deeper"),
                       ("a: " + "x" * (1 << 20), "limit"), ("a: [", "not valid YAML"),
                       ("&a [*a, *a, *a]", None)]:
        if says is None:  # a recursive anchor is fine (counted once), it constructs as PyYAML does
            load_yaml(text, "t")
            continue
        with pytest.raises(BadInput, match=says):
            load_yaml(text, "t")
    with pytest.raises(BadInput, match="nested too deeply"):
        load_json("[" * 100_000 + "]" * 100_000, "t")
    with pytest.raises(BadInput, match="decompressed"):
        gunzip(gzip.compress(b"\0" * (1 << 20)), "t", limit=1000)
    assert gunzip(gzip.compress(b"abc"), "t") == b"abc"
