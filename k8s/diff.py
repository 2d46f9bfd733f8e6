"""Pure decisions of the reconciler: what differs (diff), what may be done now (gate), with reasons.

Nothing here talks to the API server; :mod:`k8s.reconciler` observes, calls these, and acts.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any

import yaml

from k8s import names as N
from k8s.render import stamp

ObjKey = tuple[str, str | None, str]
"""(kind, namespace, name)"""


@dataclass(frozen=True)
class Change:
    """One write to the cluster, with the reason a user reads in Events and on the status page.

    The reconciler's unit of work, not a scaling decision (:class:`packer.scaling.Action`, which
    changes the plan) nor a Triton model-control step (:class:`serving.control.ControlStep`)."""

    verb: str
    """``create``, ``update``, ``delete`` or ``label`` (node labels)."""
    kind: str
    namespace: str | None
    name: str
    reason: str
    body: dict[str, Any] | None = field(default=None, compare=False)
    """The object to create, or the merge patch to apply."""
    disruptive: bool = False
    """Restarts or removes serving pods (deleted or updated Deployments, MIG relabels)."""
    after: tuple[ObjKey, ...] = field(default=(), compare=False)
    """Changes of this cycle (their keys) this one relies on: if one of them fails or meets a
    conflict, this one is held back in the same cycle (:func:`gate` sets them)."""

    @property
    def key(self) -> ObjKey:
        return (self.kind, self.namespace, self.name)

    def describe(self) -> str:
        return f"{self.verb} {self.kind}/{self.name}: {self.reason}"


@dataclass(frozen=True)
class Conflict:
    """A desired name held by an object the reconciler does not own: left alone, reported."""

    kind: str
    namespace: str | None
    name: str
    reason: str


def key(obj: dict[str, Any]) -> ObjKey:
    m = obj["metadata"]
    return (obj["kind"], m.get("namespace"), m["name"])


def contains(live: Any, want: Any) -> bool:
    """Does ``live`` hold every field of ``want``? Servers add defaults, never drop what we set."""
    if isinstance(want, dict):
        return isinstance(live, dict) and all(contains(live.get(k), v) for k, v in want.items())
    if isinstance(want, list):
        return isinstance(live, list) and len(live) == len(want) and all(map(contains, live, want))
    return live == want or (live is not None and str(live) == str(want) and not isinstance(want, bool))


PACKER_PREFIXES = ("packer.dev/", N.MODEL_LABEL_PREFIX)


def _prefixed(d: dict[str, Any] | None) -> set[str]:
    return {k for k in (d or {}) if k.startswith(PACKER_PREFIXES)}


def owned_keys(live: dict[str, Any]) -> dict[str, set[str]]:
    """The keys of ``live`` packer set: its owned-keys annotation, or for an object written before
    it existed, the keys under packer's own prefixes (and no data keys: those stay)."""
    meta = live.get("metadata") or {}
    raw = (meta.get("annotations") or {}).get(N.OWNED_KEYS_ANNOTATION)
    try:
        listed = json.loads(raw) if raw else None
    except ValueError:
        listed = None
    if isinstance(listed, dict):
        return {k: {x for x in listed.get(k) or [] if isinstance(x, str)}
                for k in ("labels", "template-labels", "data")}
    tmpl = ((live.get("spec") or {}).get("template") or {}).get("metadata") or {}
    return {"labels": _prefixed(meta.get("labels")), "template-labels": _prefixed(tmpl.get("labels")),
            "data": set()}


def _nulls(live: dict[str, Any] | None, want: dict[str, Any], only: set[str]) -> dict[str, Any]:
    """``want`` plus ``None`` for each key of ``only`` that ``live`` has and ``want`` dropped
    (merge-patch deletion); keys of ``live`` outside ``only`` are someone else's and stay."""
    gone = (only & set(live or {})) - set(want)
    return {**want, **{k: None for k in sorted(gone)}}


def merge_patch(live: dict[str, Any], want: dict[str, Any]) -> dict[str, Any]:
    """The merge patch that makes ``live`` hold ``want``: our labels, annotations, data and spec,
    and nothing else. A merge patch leaves keys it does not name, so what others added to labels,
    annotations, the pod template's labels and ConfigMap data stays.

    Keys packer once set and no longer wants (:func:`owned_keys`) are nulled in labels, annotations,
    ConfigMap data and the pod template's labels (a model leaving a group must lose its label
    there). Spec keys the server defaulted are left alone: nulling them would fight immutable
    fields (a Service's clusterIP) for nothing. A ResourceClaim's spec is immutable as a whole
    and named by its hash (:func:`k8s.names.claim_name`): only its metadata is patched.
    """
    lm, wm = live.get("metadata") or {}, want["metadata"]
    mine = owned_keys(live)
    patch: dict[str, Any] = {"metadata": {
        "labels": _nulls(lm.get("labels"), wm.get("labels") or {}, mine["labels"]),
        "annotations": _nulls(lm.get("annotations"), wm.get("annotations") or {}, _prefixed(lm.get("annotations"))),
    }}
    for section in ("data", "binaryData"):
        if section in want or section in live:
            patch[section] = _nulls(live.get(section), want.get(section) or {}, mine["data"])
    if "spec" in want and want.get("kind") != "ResourceClaim":
        spec = dict(want["spec"])
        tmpl = spec.get("template")
        if tmpl is not None:
            lt = ((live.get("spec") or {}).get("template") or {}).get("metadata") or {}
            spec["template"] = {**tmpl, "metadata": {
                "labels": _nulls(lt.get("labels"), tmpl["metadata"].get("labels") or {}, mine["template-labels"]),
                "annotations": _nulls(lt.get("annotations"), tmpl["metadata"].get("annotations") or {},
                                      _prefixed(lt.get("annotations")))}}
        patch["spec"] = spec
    return patch


def _artifact_changes(live: dict[str, Any], want: dict[str, Any]) -> str:
    """A repository ConfigMap's artifact changes, said as such (a dry run shows what is fetched)."""
    models = sorted({k.rsplit(".", 1)[0] for k in {*live, *want} if k.endswith((".uri", ".sha256"))
                     and live.get(k) != want.get(k)})

    def show(d: dict[str, Any], m: str) -> str:
        uri, sha = d.get(f"{m}.uri"), d.get(f"{m}.sha256")
        return "none" if uri is None else f"{uri}" + (f" (sha256 {sha[:12]}…)" if sha else " (no sha256)")
    return "; ".join(f"artifact of {m}: {show(live, m)} -> {show(want, m)}" for m in models)[:500]


def drifted(live: dict[str, Any], want: dict[str, Any]) -> str | None:
    """Why ``live`` no longer matches ``want`` (None when it does)."""
    la = (live["metadata"].get("annotations") or {}).get(N.SPEC_HASH)
    wa = want["metadata"]["annotations"][N.SPEC_HASH]
    if la != wa:
        arts = _artifact_changes(live.get("data") or {}, want.get("data") or {})
        return arts or f"rendered content changed (hash {la or 'none'} -> {wa})"
    # List responses of a real API server omit apiVersion and kind on items: not a drift.
    body = {k: v for k, v in want.items() if k not in ("metadata", "apiVersion", "kind")}
    meta = {"labels": {k: v for k, v in want["metadata"]["labels"].items() if k != N.PLAN_LABEL},
            "annotations": {k: v for k, v in want["metadata"]["annotations"].items()
                            if k not in (N.REASON_ANNOTATION, N.OWNED_KEYS_ANNOTATION)}}
    if not contains(live, body) or not contains(live["metadata"], meta):
        return "edited outside packer: restoring the planned fields"
    # Keys others added are theirs; a key packer set and no longer wants is a drift.
    if "data" in want and owned_keys(live)["data"] & (set(live.get("data") or {}) - set(want["data"])):
        return "data edited outside packer: restoring it"
    return None


def diff(desired: list[dict[str, Any]], live: list[dict[str, Any]],
         scopes: set[tuple[str, str | None]] | None = None, why: dict[ObjKey, str] | None = None) -> tuple[list[Change], list[Conflict]]:
    """Changes that turn ``live`` into ``desired``, touching only objects packer owns.

    ``live`` holds every object of the managed kinds in the managed namespaces, owned or not: an
    unowned object under a desired name is a :class:`Conflict`, never a change. Owned objects
    that no longer appear in ``desired`` are deleted, within ``scopes`` ((kind, namespace) pairs
    that were listed; default: those of ``desired``). ``why`` explains creates (e.g. the placement's reason).
    """
    why = why or {}
    live_by = {key(o): o for o in live}
    changes: list[Change] = []
    conflicts: list[Conflict] = []
    want_keys = set()
    # Desired ConfigMaps and claims held by someone else: a server mounting one is not created or
    # changed (it would run their fetch.sh, or share their device) until the name is free.
    foreign = {key(o) for o in desired if o["kind"] in ("ConfigMap", "ResourceClaim")
               and (cur := live_by.get(key(o))) is not None and not N.owned(cur)}
    for obj in desired:
        k = key(obj)
        want_keys.add(k)
        cur = live_by.get(k)
        if k[0] == "Deployment" and (taken := sorted(m for m in mounts(obj) if m in foreign)):
            conflicts.append(Conflict(*k, f"its {taken[0][0]} {taken[0][2]} is held by an object without "
                                         f"{N.MANAGED_BY}={N.MANAGER}; left alone until it is renamed or removed"))
        elif cur is None:
            changes.append(Change("create", *k, why.get(k, "planned, not in the cluster"), obj))
        elif not N.owned(cur):
            conflicts.append(Conflict(*k, f"{k[0]}/{k[2]} exists without {N.MANAGED_BY}={N.MANAGER}; "
                                         "left alone, its group is not served until it is renamed or removed"))
        else:
            reason = drifted(cur, obj)
            if reason:
                changes.append(Change("update", *k, reason, merge_patch(cur, obj),
                                      disruptive=k[0] == "Deployment" and not contains(
                                          cur.get("spec", {}).get("template"), obj["spec"]["template"])))
    scopes = scopes if scopes is not None else {(k[0], k[1]) for k in want_keys}
    for k, cur in sorted(live_by.items(), key=lambda kv: (kv[0][0], kv[0][1] or "", kv[0][2])):
        if k in want_keys or not N.owned(cur) or (k[0], k[1]) not in scopes or k[0] in ("Lease", "Event"):
            continue
        if k[0] == "ConfigMap" and (cur["metadata"].get("labels") or {}).get("packer.dev/role"):
            continue  # the reconciler's own status and fleet ConfigMaps
        changes.append(Change("delete", *k, "no longer in the plan", disruptive=k[0] == "Deployment"))
    return changes, conflicts


# ---------------------------------------------------------------------------------------------
# Nodes


NODE_LABELS = (N.NODE_LABEL, N.DEVICE_PLUGIN_CONFIG_LABEL, N.MIG_CONFIG_LABEL)
"""The node labels packer sets: its binding, the device-plugin config and the MIG config."""


def owned_node_labels(node: dict[str, Any]) -> set[str]:
    """The labels of ``node`` packer set: those its ownership annotation lists, and its own
    ``packer.dev/node``. A node bound before the annotation existed (``packer.dev/node`` and no
    annotation) had all three set by packer."""
    meta = node.get("metadata") or {}
    listed = (meta.get("annotations") or {}).get(N.OWNED_LABELS_ANNOTATION)
    if listed is None:
        return set(NODE_LABELS) if N.NODE_LABEL in (meta.get("labels") or {}) else {N.NODE_LABEL}
    return {k for k in listed.split(",") if k in NODE_LABELS} | {N.NODE_LABEL}


def foreign_node_labels(node: dict[str, Any]) -> dict[str, str]:
    """Device-plugin and MIG config labels someone else set on ``node`` (packer leaves them)."""
    lb = (node.get("metadata") or {}).get("labels") or {}
    mine = owned_node_labels(node)
    return {k: lb[k] for k in NODE_LABELS if k in lb and k not in mine}


def bind_nodes(plan_nodes: dict[str, str], nodes: list[dict[str, Any]], pool_label: str) -> dict[str, str]:
    """Logical plan node -> real node name. Existing bindings (the ``packer.dev/node`` label) stay;
    unbound logical nodes take the pool's free real nodes in name order, those without an
    administrator's device-plugin or MIG config label first (packer would not change it)."""
    binding: dict[str, str] = {}
    taken: set[str] = set()
    labels = {n["metadata"]["name"]: n["metadata"].get("labels") or {} for n in nodes}
    foreign = {n["metadata"]["name"] for n in nodes if foreign_node_labels(n)}
    for real, lb in sorted(labels.items()):
        logical = lb.get(N.NODE_LABEL)
        if logical in plan_nodes and logical not in binding and lb.get(pool_label) == plan_nodes[logical]:
            binding[logical] = real
            taken.add(real)
    for logical, pool in sorted(plan_nodes.items()):
        if logical in binding:
            continue
        free = sorted((r for r, lb in labels.items() if r not in taken and lb.get(pool_label) == pool),
                      key=lambda r: (r in foreign, r))
        if free:
            binding[logical] = free[0]
            taken.add(free[0])
    return binding


def node_changes(want: dict[str, dict[str, str]], binding: dict[str, str], nodes: list[dict[str, Any]],
                 pool_label: str, conflicts: list[Conflict] | None = None) -> list[Change]:
    """Label patches for bound nodes, and label removal for pool nodes the plan no longer uses.

    Only labels packer set are changed or removed (``packer.dev/node``, and the device-plugin and
    MIG configs it recorded in the node's ``packer.dev/owned-labels`` annotation, which each patch
    keeps up to date). The same labels set by someone else stay as they are; where the plan needs
    another value there, a :class:`Conflict` is appended to ``conflicts``. A MIG config change is
    disruptive: mig-manager restarts the node's GPU pods.
    """
    by_real = {real: logical for logical, real in binding.items()}
    out = []
    for n in sorted(nodes, key=lambda n: n["metadata"]["name"]):
        name, lb = n["metadata"]["name"], n["metadata"].get("labels") or {}
        if pool_label not in lb:
            continue  # not a packer pool node: never touched
        logical = by_real.get(name)
        target = want.get(logical, {}) if logical else {}
        mine = owned_node_labels(n)
        listed = (n["metadata"].get("annotations") or {}).get(N.OWNED_LABELS_ANNOTATION)
        patch: dict[str, str | None] = {}
        owned_after = set()
        for k in NODE_LABELS:
            cur, tgt = lb.get(k), target.get(k)
            if cur is not None and k not in mine:
                if tgt is not None and cur != tgt and conflicts is not None:
                    conflicts.append(Conflict("Node", None, name, f"label {k}={cur} was set by someone else; "
                                                                  f"the plan wants {tgt}: left alone"))
                continue
            if cur != tgt:
                patch[k] = tgt
            if tgt is not None:
                owned_after.add(k)
        record = ",".join(sorted(owned_after)) or None
        if not patch and record == listed:
            continue
        body: dict[str, Any] = {"metadata": {"labels": patch}}
        if record != listed:
            body["metadata"]["annotations"] = {N.OWNED_LABELS_ANNOTATION: record}
        mig = N.MIG_CONFIG_LABEL in patch and lb.get(N.MIG_CONFIG_LABEL) is not None
        reason = (f"bind to plan node {logical}: " if logical else "unused by the plan: ") + (", ".join(
            f"{k}={v}" for k, v in patch.items()) or "record the labels packer set")
        out.append(Change("label", "Node", None, name, reason, body, disruptive=mig))
    return out


# ---------------------------------------------------------------------------------------------
# Safe order


def ready(dep: dict[str, Any] | None) -> bool:
    """A Deployment whose pods for its current spec are all ready."""
    if dep is None:
        return False
    spec, st, meta = dep.get("spec") or {}, dep.get("status") or {}, dep.get("metadata") or {}
    want = spec.get("replicas", 1)
    if meta.get("generation") is not None and (st.get("observedGeneration") or 0) < meta["generation"]:
        return False
    return (st.get("readyReplicas") or 0) >= want and (st.get("updatedReplicas") or 0) >= want


@dataclass(frozen=True)
class Gate:
    """What the safe order lets through this cycle, and what waits (with why)."""

    now: list[Change]
    waiting: list[tuple[Change, str]]


def _models(dep: dict[str, Any]) -> set[str]:
    labels = ((dep.get("spec") or {}).get("template") or {}).get("metadata", {}).get("labels") or {}
    return {k.removeprefix(N.MODEL_LABEL_PREFIX) for k in labels if k.startswith(N.MODEL_LABEL_PREFIX)}


def rolled_out(dep: dict[str, Any]) -> bool:
    """Ready, and no pod of an older template left (those may still hold its old claim)."""
    st = dep.get("status") or {}
    return ready(dep) and (st.get("replicas") or 0) <= (dep.get("spec") or {}).get("replicas", 1)


def _claims(dep: dict[str, Any]) -> set[str]:
    """The ResourceClaims a Deployment's pods reference by name."""
    pod = ((dep.get("spec") or {}).get("template") or {}).get("spec") or {}
    return {c.get("resourceClaimName") for c in pod.get("resourceClaims") or []} - {None}


def mounts(dep: dict[str, Any], namespace: str | None = None) -> set[ObjKey]:
    """The ConfigMaps (volumes) and ResourceClaims a Deployment's pods use, as keys in its namespace
    (``namespace``, or its own). Works on a merge patch of one too (it carries the pod template)."""
    ns = namespace or (dep.get("metadata") or {}).get("namespace")
    pod = ((dep.get("spec") or {}).get("template") or {}).get("spec") or {}
    cms = {((v or {}).get("configMap") or {}).get("name") for v in pod.get("volumes") or []} - {None}
    return {("ConfigMap", ns, n) for n in cms} | {("ResourceClaim", ns, n) for n in _claims(dep)}


def _pinned_node(dep: dict[str, Any]) -> str | None:
    terms = (((dep.get("spec") or {}).get("template") or {}).get("spec", {}).get("affinity", {})
             .get("nodeAffinity", {}).get("requiredDuringSchedulingIgnoredDuringExecution", {})
             .get("nodeSelectorTerms") or [])
    for t in terms:
        for e in t.get("matchExpressions") or []:
            if e.get("key") == N.NODE_LABEL and e.get("values"):
                return e["values"][0]
    return None


def gate(changes: list[Change], desired: list[dict[str, Any]], live: list[dict[str, Any]],
         binding: dict[str, str], nodes: list[dict[str, Any]], max_disruptive: int) -> Gate:
    """Order and hold back changes so capacity never drops before its replacement is up.

    1. Creates and non-disruptive updates go at once (config before the servers that read it).
    2. An old server (Deployment) is deleted only when, for each model it serves, every desired
       server of that model is ready, except those waiting for their node's MIG layout. A slot's
       old ResourceClaim goes only once its server is deleted, or has rolled over to a new claim.
    3. A node's MIG config changes only when no server on it is still to be deleted and every
       desired server on other, settled nodes is ready: its groups are drained elsewhere first.
    4. A rolling update of a server waits until the other servers sharing its models are ready.
    5. At most ``max_disruptive`` disruptive changes per cycle; the rest wait for the next.
    """
    view = _GateView.of(changes, desired, live, binding, nodes)
    order = {"ConfigMap": 0, "NetworkPolicy": 0, "Service": 1, "ResourceClaim": 1, "Deployment": 2,
             "PodDisruptionBudget": 3, "Node": 4}
    verb_order = {"create": 0, "update": 1, "label": 2, "delete": 3}
    now: list[Change] = []
    waiting: list[tuple[Change, str]] = []
    budget = max_disruptive
    gone: set[ObjKey] = set()

    def sort_key(a: Change) -> tuple:
        # Servers are deleted before their Service and repository, which they still use.
        kind_rank = -1 if (a.verb, a.kind) == ("delete", "Deployment") else order.get(a.kind, 9)
        return (verb_order[a.verb], kind_rank, a.name)

    for a in sorted(changes, key=sort_key):
        hold = view.hold(a, gone)
        if hold is None and a.disruptive:
            if budget <= 0:
                hold = f"disruption budget of {max_disruptive} per cycle used up"
            else:
                budget -= 1
        if hold is None:
            now.append(a)
            if a.verb == "delete":
                gone.add(a.key)
        else:
            waiting.append((a, hold))
    return Gate(_prerequisites(now, view, gone), waiting)


def _prerequisites(now: list[Change], view: "_GateView", gone: set[ObjKey]) -> list[Change]:
    """``now`` with each change's :attr:`Change.after`: a server's create or update relies on the
    creates and updates of the ConfigMaps and claims it mounts; a Service, repository ConfigMap or
    claim deleted because its server goes this cycle relies on that server's delete."""
    config = {a.key for a in now if a.verb in ("create", "update") and a.kind in ("ConfigMap", "ResourceClaim")}
    out = []
    for a in now:
        after: tuple[ObjKey, ...] = ()
        if a.kind == "Deployment" and a.verb in ("create", "update") and a.body:
            after = tuple(sorted(mounts(a.body, a.namespace) & config))
        elif a.verb == "delete" and a.kind in ("Service", "ConfigMap", "ResourceClaim"):
            server = view.server_of(a)
            if server in gone:
                after = (server,)
        out.append(replace(a, after=after) if after else a)
    return out


@dataclass(frozen=True)
class _GateView:
    """What the gate's rules read, computed once per cycle from the changes and what is live."""

    live_by: dict[ObjKey, dict[str, Any]]
    real_nodes: dict[str, dict[str, str]]
    """Real node -> its labels."""
    relabel: dict[str, Change]
    """Real node -> the change of its MIG config label."""
    by_real: dict[str, str]
    """Real node -> plan node."""
    settling: set[str]
    """Plan nodes whose MIG layout changes now or has not settled."""
    desired_deps: list[dict[str, Any]]
    serving: dict[str, list[dict[str, Any]]]
    """Model -> the desired servers (Deployments) of it."""
    creating: set[ObjKey]
    deleting_on: dict[str, int]
    """Plan node -> old servers on it still to be deleted."""

    @classmethod
    def of(cls, changes: list[Change], desired: list[dict[str, Any]], live: list[dict[str, Any]],
           binding: dict[str, str], nodes: list[dict[str, Any]]) -> "_GateView":
        live_by = {key(o): o for o in live}
        real_nodes = {n["metadata"]["name"]: n["metadata"].get("labels") or {} for n in nodes}
        relabel = {a.name: a for a in changes if a.verb == "label" and N.MIG_CONFIG_LABEL in a.body["metadata"]["labels"]}
        by_real = {real: logical for logical, real in binding.items()}
        settling = {by_real.get(r) for r in relabel} | {
            by_real.get(r) for r, lb in real_nodes.items()
            if lb.get(N.MIG_STATE_LABEL) not in (None, "success") and r in by_real}
        settling.discard(None)
        desired_deps = [o for o in desired if o["kind"] == "Deployment"]
        serving: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for d in desired_deps:
            for m in _models(d):
                serving[m].append(d)
        deleting_on: dict[str, int] = defaultdict(int)
        for a in changes:
            if a.verb == "delete" and a.kind == "Deployment" and a.key in live_by:
                node = _pinned_node(live_by[a.key])
                if node:
                    deleting_on[node] += 1
        return cls(live_by, real_nodes, relabel, by_real, settling, desired_deps, serving,
                   {a.key for a in changes if a.verb == "create"}, deleting_on)

    def up(self, d: dict[str, Any]) -> bool:
        return key(d) not in self.creating and ready(self.live_by.get(key(d)))

    def missing(self, models: set[str], skip: ObjKey | None = None) -> list[str]:
        """Desired servers of ``models`` not ready yet, except those waiting for their node's MIG layout."""
        return sorted({d["metadata"]["name"] for m in models for d in self.serving.get(m, [])
                       if key(d) != skip and _pinned_node(d) not in self.settling and not self.up(d)})

    def server_of(self, a: Change) -> ObjKey:
        """The server (Deployment) of the group ``a``'s live object belongs to (its group label)."""
        return ("Deployment", a.namespace, ((self.live_by.get(a.key) or {}).get("metadata", {}).get("labels") or {})
                .get(N.GROUP_LABEL, ""))

    def hold(self, a: Change, gone: set[ObjKey]) -> str | None:
        """Why ``a`` must wait (rules 2-4 of :func:`gate`), or None; ``gone``: deleted this cycle."""
        live_by = self.live_by
        server = self.server_of(a)
        if a.verb == "delete" and a.kind == "ResourceClaim" and server in live_by and server not in gone:
            if a.name in _claims(live_by[server]):
                return f"its server {server[2]} still uses it"
            if not rolled_out(live_by[server]):
                return f"its server {server[2]} is still moving to its new claim"
        elif a.verb == "delete" and a.kind in ("Service", "ConfigMap") and server in live_by and server not in gone:
            return f"its server {server[2]} is still running"
        elif a.verb == "delete" and a.kind == "Deployment":
            if not_ready := self.missing(_models(live_by.get(a.key, {}))):
                return f"waiting for replacements to be ready: {', '.join(not_ready[:5])}"
        elif a.verb == "update" and a.kind == "Deployment" and a.disruptive:
            want = next(d for d in self.desired_deps if key(d) == a.key)
            if not_ready := self.missing(_models(want), skip=a.key):
                return f"waiting for other servers of its models to be ready: {', '.join(not_ready[:5])}"
        elif a.verb == "label" and a.name in self.relabel and self.real_nodes.get(a.name, {}).get(N.MIG_CONFIG_LABEL):
            logical = self.by_real.get(a.name)
            if logical and self.deleting_on.get(logical):
                return f"MIG change waits: {self.deleting_on[logical]} old server(s) still on {logical}"
            if not_ready := sorted(d["metadata"]["name"] for d in self.desired_deps
                                   if _pinned_node(d) not in self.settling and not self.up(d)):
                return f"MIG change waits for servers elsewhere to be ready: {', '.join(not_ready[:5])}"
        return None


def keep_referenced_mig_configs(want: dict[str, Any], live: dict[str, Any] | None,
                                nodes: list[dict[str, Any]]) -> dict[str, Any]:
    """The mig-parted ConfigMap to apply: the planned configs plus any old one a node's label still
    names, so mig-manager never looks up a missing config while a relabel waits its turn."""
    if live is None:
        return want
    in_use = {(n["metadata"].get("labels") or {}).get(N.MIG_CONFIG_LABEL) for n in nodes}
    old = (yaml.safe_load((live.get("data") or {}).get("config.yaml") or "{}") or {}).get("mig-configs") or {}
    doc = yaml.safe_load(want["data"]["config.yaml"])
    keep = {k: v for k, v in old.items() if k in in_use and k not in doc["mig-configs"]}
    if not keep:
        return want
    doc["mig-configs"] = dict(sorted({**doc["mig-configs"], **keep}.items()))
    out = {**want, "metadata": {**want["metadata"], "annotations": dict(want["metadata"]["annotations"])},
           "data": {"config.yaml": yaml.safe_dump(doc, sort_keys=True)}}

    return stamp(out)
