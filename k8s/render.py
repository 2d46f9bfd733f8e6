"""Render a plan as Kubernetes objects (plain dicts), with no I/O: the same code feeds
``packer render k8s`` and the reconciler's desired state.

Per packed group (slot): a repository ConfigMap, a Deployment running one ``tritonserver`` that
loads the slot's streaming and batch repositories together (one scheduling domain: its members
take turns on the slot's rate limiter), and a Service. Per set of pods that share models with
``min_replicas >= 2``: one PodDisruptionBudget. Per pool: a key in the device plugin's config (MIG strategy, time-slicing);
per MIG node: a mig-parted config, selected by the node's ``nvidia.com/mig.config`` label.

How each server gets its GPU is the devices backend's (:mod:`k8s.devices`, ``--devices``): the
device plugin's resources (default), a ResourceClaim per slot (``dra``), HAMi's or KAI's shares.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import yaml

from k8s import names as N
from k8s.devices import CLAIM_REF, Backend, Claim, DevicePlugin, PodDevices, backend
from k8s.settings import ManifestSettings
from packer.catalog import gpu_type
from packer.errors import UserError
from packer.plan import Placement, Plan

HTTP_PORT, GRPC_PORT, METRICS_PORT = 8000, 8001, 8002
DEVICE_PLUGIN_CONFIGMAP = "packer-device-plugin"
MIG_PARTED_CONFIGMAP = "packer-mig-parted"

FETCH_SCRIPT = """\
# Build the group's Triton model repositories under $MODELS (/models), one per workload class
# (/models/streaming, /models/batch), from the group's ConfigMap, mounted at $CONFIG (/config).
# Its key `models` lists <class>/<model>, one a line. Keys <model>__<path, / written as __> are
# repository files (config.pbtxt, a stand-in's 1/model.py); <model>.uri names an artifact to fetch
# as <model>/1/<model>.filename.
set -eu
C="${CONFIG:-/config}"
for e in $(cat "$C/models"); do
  M="${MODELS:-/models}/${e%%/*}"; m="${e#*/}"
  mkdir -p "$M/$m/1"
  for f in "$C/$m"__*; do
    [ -e "$f" ] || continue
    rel=$(basename "$f" | sed "s|^${m}__||; s|__|/|g")
    mkdir -p "$(dirname "$M/$m/$rel")"
    cp "$f" "$M/$m/$rel"
  done
  uri=$(cat "$C/$m.uri" 2>/dev/null || true)
  sum=$(cat "$C/$m.sha256" 2>/dev/null || true)
  dst="$M/$m/1/$(cat "$C/$m.filename" 2>/dev/null || basename "$uri")"
  case "$uri" in
    https://*) wget -q -O "$dst" "$uri" ;;
    file://*) cp -r "${uri#file://}" "$dst" ;;
    "") ;;
    *) echo "model $m: unsupported artifact uri $uri (use https:// or file://)" >&2; exit 1 ;;
  esac
  if [ -n "$sum" ] && [ -f "$dst" ]; then
    got=$(sha256sum "$dst" | cut -d' ' -f1)
    if [ "$got" != "$sum" ]; then
      echo "model $m: $uri has sha256 $got, the fleet says $sum" >&2; rm -f "$dst"; exit 1
    fi
  fi
done
"""
ADMIN_KEY_HEADER = "packer-admin-key"
ADMIN_KEY_ENV = "PACKER_ADMIN_KEY"
NETWORK_POLICY = "packer-servers"
_HEX64 = re.compile(r"[0-9a-f]{64}")


def check_artifact(model: str, art: Any, s: ManifestSettings) -> None:
    """Only https (verified by its sha256) or a file:// path on a mounted volume is fetched."""
    where = f"model {model}: artifact {art.uri[:200]}"
    if art.uri.startswith("http://"):
        raise UserError(f"{where}: plain http is not fetched (anyone on the path can swap the file). "
                        "Fix: serve it over https:// and give its sha256")
    if not art.uri.startswith(("https://", "file://")):
        raise UserError(f"{where}: unsupported scheme. Fix: use https:// (with sha256) or file:// on a volume")
    if art.sha256 is not None and not _HEX64.fullmatch(art.sha256):
        raise UserError(f"{where}: sha256 is not 64 lower-case hex digits")
    if art.uri.startswith("https://") and art.sha256 is None and s.require_artifact_sha256:
        raise UserError(f"{where}: no sha256. Fix: add `sha256: <hex digest>` to the artifact "
                        "(sha256sum FILE), so the fetch can verify what it downloaded")


CLASSES = ("streaming", "batch")
"""Workload classes, in the order their repositories are given to the server."""


@dataclass(frozen=True)
class Group:
    """One Triton server: every member of one placement (slot), streaming and batch alike, so the
    slot is one scheduling domain whose members take turns, as the slot maths assumes. Each class
    keeps its own repository (their batching policies differ); the server loads both."""

    placement: Placement

    @property
    def name(self) -> str:
        return N.group_name(self.placement.id)

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(sorted({m.name for m in self.placement.models}))

    @property
    def kinds(self) -> tuple[str, ...]:
        """The classes present, streaming first: one ``--model-repository`` each."""
        return tuple(k for k in CLASSES if any(m.kind == k for m in self.placement.models))

    def kind_of(self, model: str) -> str:
        return next(m.kind for m in self.placement.models if m.name == model)

    @property
    def shared(self) -> bool:
        """Several models in one server: they take turns on the slot's rate-limiter resource."""
        return len(self.models) > 1


def groups(plan: Plan) -> list[Group]:
    """Every server the plan runs: one per placement."""
    return [Group(p) for p in plan.placements]


def owned_keys(obj: dict[str, Any]) -> dict[str, list[str]]:
    """The keys packer sets in ``obj``'s labels, pod-template labels and data (see
    :data:`k8s.names.OWNED_KEYS_ANNOTATION`)."""
    out = {"labels": sorted(obj["metadata"].get("labels") or {})}
    tmpl = (obj.get("spec") or {}).get("template")
    if tmpl is not None:
        out["template-labels"] = sorted((tmpl.get("metadata") or {}).get("labels") or {})
    if "data" in obj or "binaryData" in obj:
        out["data"] = sorted({*(obj.get("data") or {}), *(obj.get("binaryData") or {})})
    return out


def stamp(obj: dict[str, Any]) -> dict[str, Any]:
    """Add the spec-hash annotation (a hash of everything but itself and the plan label) and the
    owned-keys annotation (derived from the content, so outside the hash)."""
    ann = obj["metadata"].setdefault("annotations", {})
    ann[N.SPEC_HASH] = spec_hash(obj)
    ann[N.OWNED_KEYS_ANNOTATION] = json.dumps(owned_keys(obj), separators=(",", ":"))
    return obj


def spec_hash(obj: dict[str, Any]) -> str:
    """The object's content hash, blind to the plan id and the reason text (both describe the
    last write), so a re-plan that keeps the object as it runs writes nothing."""
    meta = dict(obj["metadata"])
    meta["labels"] = {k: v for k, v in (meta.get("labels") or {}).items() if k != N.PLAN_LABEL}
    meta["annotations"] = {k: v for k, v in (meta.get("annotations") or {}).items()
                           if k not in (N.SPEC_HASH, N.REASON_ANNOTATION, N.OWNED_KEYS_ANNOTATION)}
    return N.digest({**obj, "metadata": meta}, 16)


_plan_ids: dict[int, tuple[Plan, str]] = {}


def _plan_id(plan: Plan) -> str:
    """``plan.id`` hashes every placement: compute it once per plan, not once per object."""
    hit = _plan_ids.get(id(plan))
    if hit is None or hit[0] is not plan:
        _plan_ids.clear()
        hit = _plan_ids[id(plan)] = (plan, plan.id)
    return hit[1]


def _models_by_name(plan: Plan) -> dict[str, Any]:
    return {m.name: m for m in plan.fleet.models}


def _meta(name: str, namespace: str, plan: Plan, labels: dict[str, str] | None = None,
          annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": namespace,
        "labels": {N.MANAGED_BY: N.MANAGER, "app.kubernetes.io/part-of": N.dns_label(plan.fleet.name, prefix=""),
                   N.PLAN_LABEL: _plan_id(plan), **(labels or {})},
        "annotations": dict(annotations or {}),
    }


def _pdb_components(plan: Plan) -> dict[str, str]:
    """Model -> PDB name. A pod may match only one PDB (eviction refuses more), so models that
    share a server fall into one budget: union-find over the servers' member sets."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    pods = [g.models for g in groups(plan)]
    for ms in pods:
        for m in ms[1:]:
            parent[find(m)] = find(ms[0])
    members: dict[str, list[str]] = defaultdict(list)
    for m in {m for ms in pods for m in ms}:
        members[find(m)].append(m)
    npods: dict[str, int] = defaultdict(int)
    for ms in pods:
        if ms:
            npods[find(ms[0])] += 1
    min_replicas = {m.name: m.min_replicas for m in plan.fleet.models}
    out: dict[str, str] = {}
    for root, ms in members.items():
        if npods[root] >= 2 and any(min_replicas[m] >= 2 for m in ms):
            name = N.dns_label("pdb-" + min(ms))
            out.update({m: name for m in ms})
    return out


def repository_files(plan: Plan, g: Group) -> dict[str, str]:
    """The group's Triton repositories (one per class) as ConfigMap keys, from the serving writer
    (issue 3): each model's config.pbtxt (batching, queue policy, rate limiter, all from the plan)
    and, for a model without an artifact, the stand-in's ``1/model.py``. Model names are unique
    in a plan, so the classes' files share one key space; the ``models`` key says which
    repository each model goes to."""
    try:
        from serving.config import to_text
        from serving.repository import group_repositories
        from serving.settings import TritonSettings
    except ImportError as e:
        raise UserError(f"the Triton configs need the serving extra ({e}). "
                        "Fix: pip install 'packer[k8s,serving]'") from None

    out: dict[str, str] = {}
    for repo in group_repositories(plan, g.placement, TritonSettings()):
        for m in repo.models:
            out[f"{m.name}__config.pbtxt"] = to_text(m.config)
            for rel, data in m.files.items():
                out[f"{m.name}__{rel.replace('/', '__')}"] = data.decode()
            if m.config.default_model_filename:
                out[f"{m.name}.filename"] = m.config.default_model_filename
    return out


def repository_configmap(plan: Plan, g: Group, s: ManifestSettings,
                         models: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the init container needs to build the group's model repositories."""
    entries = sorted(f"{g.kind_of(m)}/{m}" for m in g.models)
    data = {"models": "\n".join(entries) + "\n", "fetch.sh": FETCH_SCRIPT, **repository_files(plan, g)}
    # Replica indices are left out: a re-plan that renumbers replicas changes nothing that runs.
    members = []
    models = models or _models_by_name(plan)
    for mem in sorted(g.placement.models, key=lambda m: m.name):
        model = models[mem.name]
        art = model.artifact
        members.append({"name": mem.name, "kind": mem.kind, "batch_size": mem.batch_size, "slo_ms": mem.slo_ms,
                        "artifact": None if art is None else {"uri": art.uri, "backend": art.backend,
                                                              "platform": art.platform}})
        if art is not None:
            check_artifact(mem.name, art, s)
            data[f"{mem.name}.uri"] = art.uri
            if art.sha256:
                data[f"{mem.name}.sha256"] = art.sha256
                members[-1]["artifact"]["sha256"] = art.sha256
    data["group.json"] = json.dumps({"placement": g.placement.id, "classes": list(g.kinds), "pool": g.placement.pool,
                                     "node": g.placement.node, "slot": g.placement.slot,
                                     "members": members}, indent=1, sort_keys=True)
    name = N.repo_configmap_name(g.placement.id)
    return stamp({"apiVersion": "v1", "kind": "ConfigMap",
                  "metadata": _meta(name, s.namespace, plan, {N.GROUP_LABEL: g.name}), "data": data})


def devices_of(s: ManifestSettings) -> Backend:
    """The settings' devices backend (``--devices``)."""
    return backend(s.devices, s.kai_queue)


def resource_claim(plan: Plan, g: Group, s: ManifestSettings, claim: Claim) -> dict[str, Any]:
    """The slot's ResourceClaim (``--devices dra``); its server's pods share its one device."""
    return stamp({"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
                  "metadata": _meta(claim.name, s.namespace, plan, {N.GROUP_LABEL: g.name},
                                    {N.PLACEMENT_ANNOTATION: g.placement.id}),
                  "spec": claim.spec})


def deployment(plan: Plan, g: Group, s: ManifestSettings, pdbs: dict[str, str],
               repo: dict[str, Any], dev: PodDevices) -> dict[str, Any]:
    """The slot's one server; ``dev`` is what its pod asks for in the devices backend's terms.
    Its container and node match are built apart; what stays is the Deployment object itself."""
    p = g.placement
    selector = {N.GROUP_LABEL: g.name}
    pod_labels = {N.MANAGED_BY: N.MANAGER, **selector, **{N.model_label(m): "serving" for m in g.models},
                  **dev.labels}
    pdb = next((pdbs[m] for m in g.models if m in pdbs), None)
    if pdb:
        pod_labels[N.PDB_LABEL] = pdb
    match = _node_match(p, s, dev)
    # One object each, shared by both containers (the YAML names it once and refers to it).
    no_escalation = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True,
                     "readOnlyRootFilesystem": True}
    models_mount = {"name": "models", "mountPath": "/models"}
    # Artifacts land in the models emptyDir: bound it (weights take no more disk than memory).
    models_gi = math.ceil(2 * sum(m.memory_gb for m in p.models)) + 1
    container = _server_container(g, s, dev, no_escalation, models_mount)
    init = {"name": "fetch-models", "image": s.fetch_image, "command": ["sh", "/config/fetch.sh"],
            "securityContext": no_escalation,
            "volumeMounts": [{"name": "repo-config", "mountPath": "/config", "readOnly": True}, models_mount],
            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}}}
    members = ", ".join(f"{m.name} b={m.batch_size}" for m in sorted(p.models, key=lambda m: m.name))
    annotations = {N.PLACEMENT_ANNOTATION: p.id, N.REASON_ANNOTATION: f"{members}: {p.reason}"}
    template_annotations = {"packer.dev/repo-hash": repo["metadata"]["annotations"][N.SPEC_HASH], **dev.annotations}
    pod_spec: dict[str, Any] = {}
    if dev.scheduler:
        pod_spec["schedulerName"] = dev.scheduler
    if dev.claim is not None:
        pod_spec["resourceClaims"] = [{"name": CLAIM_REF, "resourceClaimName": dev.claim.name}]
    # A new pod must be ready before the old one goes; it waits Pending if no slot is free. Where
    # it would share the old pod's device (a claim) and both do not fit, the old one goes first.
    rolling = {"maxSurge": 1, "maxUnavailable": 0} if dev.surge else {"maxSurge": 0, "maxUnavailable": 1}
    return stamp({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": _meta(g.name, s.namespace, plan, {**selector, N.POOL_LABEL: p.pool}, annotations),
        "spec": {
            "replicas": 1,
            "revisionHistoryLimit": 2,
            "selector": {"matchLabels": selector},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": rolling},
            "template": {
                "metadata": {"labels": pod_labels, "annotations": template_annotations},
                "spec": {
                    **pod_spec,
                    "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [{"matchExpressions": match}]}}},
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                    "securityContext": {"runAsNonRoot": True, "runAsUser": s.run_as_user,
                                        "runAsGroup": s.run_as_user, "fsGroup": s.run_as_user,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "automountServiceAccountToken": False,
                    "initContainers": [init],
                    "containers": [container],
                    "volumes": [
                        {"name": "repo-config", "configMap": {"name": repo["metadata"]["name"]}},
                        {"name": "models", "emptyDir": {"sizeLimit": f"{models_gi}Gi"}},
                        {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},  # the root filesystem is read-only
                        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": s.shm_size}},
                    ],
                },
            },
        },
    })




def _node_match(p: Placement, s: ManifestSettings, dev: PodDevices) -> list[dict[str, Any]]:
    """Where the server may run. MIG slots exist only on the node whose layout has them: pin to the
    plan's logical node. Whole and time-sliced GPUs are interchangeable within a pool: pin to the
    pool only, so the cluster autoscaler can add nodes for them."""
    match = [{"key": s.pool_label, "operator": "In", "values": [p.pool]}]
    if dev.pin_node:
        match.append({"key": N.NODE_LABEL, "operator": "In", "values": [p.node]})
    return match


def _server_args(g: Group, s: ManifestSettings) -> list[str]:
    """``tritonserver``'s command line: one server per slot, loading each class's repository
    (model names are unique across them): packed models, streaming and batch alike, take turns on
    the slot's rate-limiter resource (one batch at a time), as the slot maths assumes."""
    return ["tritonserver", *[f"--model-repository=/models/{k}" for k in g.kinds], "--model-control-mode=explicit",
            *[f"--load-model={m}" for m in g.models], "--strict-readiness=true",
            *(["--rate-limit=execution_count"] if g.shared else []),
            f"--http-port={HTTP_PORT}", f"--grpc-port={GRPC_PORT}", f"--metrics-port={METRICS_PORT}",
            # Model loading and the other admin APIs answer only requests carrying the admin key
            # (Kubernetes expands $(VAR) from the container's env, filled from the Secret).
            *[f"--{proto}-restricted-api={s.restricted_apis}:{ADMIN_KEY_HEADER}=$({ADMIN_KEY_ENV})"
              for proto in ("http", "grpc")]]


def _server_container(g: Group, s: ManifestSettings, dev: PodDevices, no_escalation: dict[str, Any],
                      models_mount: dict[str, Any]) -> dict[str, Any]:
    """The Triton container: its ports, probes, resources (with the devices backend's claim) and mounts."""
    probe = {"httpGet": {"path": "/v2/health/ready", "port": "http"}, "periodSeconds": 5, "failureThreshold": 3}
    container = {
        "name": "tritonserver",
        "image": s.triton_image,
        "args": _server_args(g, s),
        "ports": [{"name": "http", "containerPort": HTTP_PORT}, {"name": "grpc", "containerPort": GRPC_PORT},
                  {"name": "metrics", "containerPort": METRICS_PORT}],
        "readinessProbe": probe,
        "livenessProbe": {"httpGet": {"path": "/v2/health/live", "port": "http"}, "periodSeconds": 10,
                          "failureThreshold": 3},
        # Loading large models takes minutes; the startup probe holds liveness off until then.
        "startupProbe": {"httpGet": {"path": "/v2/health/live", "port": "http"}, "periodSeconds": 10,
                         "failureThreshold": 60},
        "resources": {"requests": {"cpu": s.cpu_request, "memory": s.memory_request, **dev.resources},
                      "limits": {"memory": s.memory_request, **dev.resources}},
        "securityContext": no_escalation,
        "env": [{"name": ADMIN_KEY_ENV, "valueFrom": {"secretKeyRef": {"name": s.admin_key_secret, "key": "key"}}}],
        "volumeMounts": [models_mount, {"name": "dshm", "mountPath": "/dev/shm"}, {"name": "tmp", "mountPath": "/tmp"}],
    }
    if dev.claim is not None:
        container["resources"]["claims"] = [{"name": CLAIM_REF}]
    return container


def service(plan: Plan, g: Group, s: ManifestSettings) -> dict[str, Any]:
    """One Service per slot: Triton routes each request by the model name in its path
    (``/v2/models/<name>/infer``), so the slot's one server answers for every member. The model
    labels let a client find it: ``kubectl get svc -l model.packer.dev/<name>``."""
    selector = {N.GROUP_LABEL: g.name}
    labels = {**selector, **{N.model_label(m): "serving" for m in g.models}}
    return stamp({
        "apiVersion": "v1", "kind": "Service",
        "metadata": _meta(g.name, s.namespace, plan, labels, {N.PLACEMENT_ANNOTATION: g.placement.id}),
        "spec": {"type": "ClusterIP", "selector": selector, "ports": [
            {"name": "http", "port": HTTP_PORT, "targetPort": "http"},
            {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc"},
            {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics"}]},
    })


def network_policy(plan: Plan, s: ManifestSettings) -> dict[str, Any]:
    """Ingress to every server: inference ports from any client, the metrics port only from the
    reconciler. Admin APIs share the inference ports, so they are guarded by the admin key."""
    return stamp({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": _meta(NETWORK_POLICY, s.namespace, plan, annotations={
            N.REASON_ANNOTATION: "inference open to clients; metrics only to the reconciler"}),
        "spec": {
            "podSelector": {"matchLabels": {N.MANAGED_BY: N.MANAGER},
                            "matchExpressions": [{"key": N.GROUP_LABEL, "operator": "Exists"}]},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"ports": [{"protocol": "TCP", "port": HTTP_PORT}, {"protocol": "TCP", "port": GRPC_PORT}]},
                {"from": [{"podSelector": {"matchLabels": dict(s.reconciler_labels)}}],
                 "ports": [{"protocol": "TCP", "port": METRICS_PORT}]},
            ],
        },
    })


def pdbs(plan: Plan, s: ManifestSettings, components: dict[str, str]) -> list[dict[str, Any]]:
    """One budget per model component: at most one of its servers down at a time in a drain."""
    by_name: dict[str, list[str]] = defaultdict(list)
    for m, name in components.items():
        by_name[name].append(m)
    return [stamp({
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": _meta(name, s.namespace, plan, annotations={
            N.REASON_ANNOTATION: f"min_replicas >= 2 in {', '.join(sorted(ms))}"}),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {N.PDB_LABEL: name}}},
    }) for name, ms in sorted(by_name.items())]


def _pods_per_resource(plan: Plan, pool: str) -> dict[str, int]:
    """Most servers planned on one device (GPU or MIG instance), per device-plugin resource."""
    per_device: dict[tuple, int] = defaultdict(int)
    resource: dict[tuple, str] = {}
    for g in groups(plan):
        p = g.placement
        if p.pool != pool:
            continue
        key = (p.node, p.gpu, p.slot, p.mig_start)
        per_device[key] += 1
        resource[key] = next(iter(DevicePlugin().pod(p, plan.fleet).resources))
    out: dict[str, int] = defaultdict(int)
    for key, n in per_device.items():
        out[resource[key]] = max(out[resource[key]], n)
    return dict(out)


def device_plugin_config(plan: Plan, pool_name: str, mig: bool = True) -> dict[str, Any]:
    """The NVIDIA device plugin config of one pool: MIG strategy and, where the plan puts several
    servers on one device, time-slicing with that many replicas (and no more, so the scheduler
    cannot stack more pods on a GPU than the plan sized it for). ``mig=False``: the devices
    backend runs MIG slots as shares of whole GPUs, so the plugin hands out whole GPUs only."""
    pool = plan.fleet.pool(pool_name)
    cfg: dict[str, Any] = {"version": "v1", "flags": {"migStrategy": "mixed" if pool.mig and mig else "none"}}
    shared = {r: n for r, n in sorted(_pods_per_resource(plan, pool_name).items()) if n >= 2}
    if shared and pool.time_slicing:
        cfg["sharing"] = {"timeSlicing": {"resources": [{"name": r, "replicas": n} for r, n in shared.items()]}}
    return cfg


def device_plugin_configmap(plan: Plan, s: ManifestSettings) -> dict[str, Any]:
    mig = devices_of(s).mig_geometry
    data = {p.name: yaml.safe_dump(device_plugin_config(plan, p.name, mig), sort_keys=True) for p in plan.fleet.pools}
    return stamp({"apiVersion": "v1", "kind": "ConfigMap",
                  "metadata": _meta(DEVICE_PLUGIN_CONFIGMAP, s.gpu_operator_namespace, plan), "data": data})


def mig_configs(plan: Plan, geometry: bool = True) -> dict[str, tuple[str, list[dict[str, Any]]]]:
    """Logical MIG node -> (mig-parted config name, its per-GPU entries).

    The name is a hash of the entries, so nodes with the same layout share one config and a
    layout change is a label change that mig-manager acts on. ``geometry=False`` (a devices
    backend that runs MIG slots as shares of whole GPUs): every GPU of those nodes with MIG off.
    """
    by_node: dict[str, dict[int, str]] = defaultdict(dict)
    pools = {l.node: l.pool for l in plan.layouts}
    for l in plan.layouts:
        by_node[l.node][l.gpu] = l.layout
    out = {}
    for node, layouts in sorted(by_node.items()):
        pool = plan.fleet.pool(pools[node])
        if not pool.mig:
            continue
        entries = []
        for gpu in range(pool.gpus_per_node):
            layout = layouts.get(gpu, "whole") if geometry else "whole"
            if layout == "whole":
                entries.append({"devices": [gpu], "mig-enabled": False})
            else:
                counts: dict[str, int] = defaultdict(int)
                for prof in layout.split("+"):
                    gpu_type(pool.gpu).profile(prof)  # fails loudly on a profile the GPU lacks
                    counts[prof] += 1
                entries.append({"devices": [gpu], "mig-enabled": True, "mig-devices": dict(counts)})
        out[node] = (f"packer-{N.digest(entries)}", entries)
    return out


def mig_parted_configmap(plan: Plan, s: ManifestSettings) -> dict[str, Any] | None:
    configs = {name: entries for name, entries in mig_configs(plan, devices_of(s).mig_geometry).values()}
    if not configs:
        return None
    text = yaml.safe_dump({"version": "v1", "mig-configs": dict(sorted(configs.items()))}, sort_keys=True)
    return stamp({"apiVersion": "v1", "kind": "ConfigMap",
                  "metadata": _meta(MIG_PARTED_CONFIGMAP, s.gpu_operator_namespace, plan),
                  "data": {"config.yaml": text}})


def node_labels(plan: Plan, s: ManifestSettings | None = None) -> dict[str, dict[str, str]]:
    """Logical node -> the labels its bound real node must carry (the reconciler sets them): its
    binding, its pool's device-plugin config (where the device plugin hands out the GPUs) and its
    mig-parted config."""
    dev = devices_of(s or ManifestSettings())
    nodes = {(p.pool, p.node) for p in plan.placements} | {(l.pool, l.node) for l in plan.layouts}
    mig = mig_configs(plan, dev.mig_geometry)
    out = {}
    for pool, node in sorted(nodes):
        labels = {N.NODE_LABEL: node}
        if dev.device_plugin:
            labels[N.DEVICE_PLUGIN_CONFIG_LABEL] = pool
        if node in mig:
            labels[N.MIG_CONFIG_LABEL] = mig[node][0]
        out[node] = labels
    return out


def render_plan(plan: Plan, s: ManifestSettings | None = None) -> list[dict[str, Any]]:
    """Every object the plan needs, in apply order (config first, then servers, then budgets)."""
    s = s or ManifestSettings()
    dev = devices_of(s)
    comps = _pdb_components(plan)
    out: list[dict[str, Any]] = [device_plugin_configmap(plan, s)] if dev.device_plugin else []
    out.append(network_policy(plan, s))
    mig = mig_parted_configmap(plan, s)
    if mig is not None:
        out.append(mig)
    models = _models_by_name(plan)
    for g in groups(plan):
        repo = repository_configmap(plan, g, s, models)
        out.append(repo)
        pod = dev.pod(g.placement, plan.fleet)
        if pod.claim is not None:  # before the server that references it
            out.append(resource_claim(plan, g, s, pod.claim))
        out += [deployment(plan, g, s, comps, repo, pod), service(plan, g, s)]
    out += pdbs(plan, s, comps)
    return out
