"""One reconcile cycle's decisions, apart from the acting: pure functions of what was observed.

:class:`k8s.reconciler.Reconciler` observes (API reads); :func:`plan_source` says where the
cycle's plan comes from (kept, the edited fleet planned, or the scaling policy's step); the
reconciler runs the planner or the policy as told (they keep caches and call out), and
:func:`scaled_choice` takes the policy's answer. It then hands the plan to :func:`plan_cycle`,
which decides what to change and what must wait, and after acting to :func:`status_update`, which decides the Events and
the status document. The reconciler only writes what these return, so a test builds the inputs,
calls the function and checks the result, with no cluster.
"""

from __future__ import annotations

import base64
import gzip
import json
import time
from dataclasses import dataclass, field
from typing import Any

from k8s import names as N
from k8s.diff import (Change, Conflict, bind_nodes, diff, gate, keep_referenced_mig_configs, key, node_changes)
from k8s.lease import LeaseLost
from k8s.render import MIG_PARTED_CONFIGMAP, node_labels
from k8s.scaling import Scaled
from k8s.settings import ReconcileSettings
from packer.catalog import gpu_type
from packer.fleet import Fleet
from packer.plan import Plan, fleet_to_dict, round_cost, to_dict

ROLE_LABEL = "packer.dev/role"
MANAGED_KINDS = ("ConfigMap", "Service", "Deployment", "PodDisruptionBudget", "NetworkPolicy")


def managed_kinds(s: ReconcileSettings) -> tuple[str, ...]:
    """The kinds listed and diffed: ResourceClaims too with ``--devices dra`` (listing them needs
    resource.k8s.io/v1 and its RBAC, which the other forms do not ask of a cluster)."""
    return MANAGED_KINDS + (("ResourceClaim",) if s.render.devices == "dra" else ())


@dataclass
class Observed:
    fleet_text: str | None
    nodes: list[dict[str, Any]]
    live: list[dict[str, Any]]
    status: dict[str, Any] | None
    summary: dict[str, Any]
    stored_plan: Plan | None
    status_foreign: bool = False
    """The status ConfigMap's name is held by an object packer does not own: state stays in memory."""
    problems: list[str] = field(default_factory=list)
    """Bad input found while observing (unreadable status summary or stored plan)."""
    stored_fleet_hash: str | None = None
    """:func:`fleet_hash` of the stored plan's own fleet, worked out once per stored plan read
    (17 ms a cycle at 2000 models otherwise); None: :func:`plan_source` works it out."""


def fleet_hash(fleet: Fleet) -> str:
    """What identifies a fleet to the reconciler: the digest of its canonical document."""
    return N.digest(fleet_to_dict(fleet), 16)


@dataclass(frozen=True)
class PlanChoice:
    """Which plan the cycle goes for: the stored one, the fleet's new plan or the scaling policy's."""

    plan: Plan | None
    why: str
    """Why it changed; '' when the stored plan stays."""
    state: dict[str, Any]
    """The scaling policy's state (JSON), with ``_fleet_hash`` when a fleet edit was planned."""
    errors: list[str] = field(default_factory=list)


FLEET_KEY = "fleet.yaml"
"""The fleet ConfigMap's key holding the fleet file."""


@dataclass(frozen=True)
class FleetRead:
    """The fleet ConfigMap as the reconciler read it: the fleet and its hash, or why it was refused."""

    fleet: Fleet | None
    hash: str = ""
    error: str = ""
    """Why the text was refused ('' when it parsed); the last good plan stays."""


@dataclass(frozen=True)
class PlanFleet:
    """The fleet was edited (or there is no plan yet): plan it, migration-aware from ``current``."""

    fleet: Fleet
    fleet_hash: str
    current: Plan | None
    why: str
    state: dict[str, Any]


@dataclass(frozen=True)
class ScalePlan:
    """The fleet stands: the scaling policy, given live load, may move the deployed plan."""

    plan: Plan
    state: dict[str, Any]


def policy_state(kept: dict[str, Any] | None, obs: Observed) -> dict[str, Any]:
    """The scaling policy's state for this cycle: the leader's copy in memory while it has one
    (the status ConfigMap's is only a checkpoint), else the checkpoint."""
    return dict(kept if kept is not None else obs.summary.get("policy_state") or {})


def plan_source(obs: Observed, fleet: FleetRead | None, state: dict[str, Any], *, scaling: bool,
                s: ReconcileSettings) -> PlanChoice | PlanFleet | ScalePlan:
    """Where the cycle's plan comes from: kept as stored (a :class:`PlanChoice`, with the error
    when there is no usable fleet), planned afresh for the fleet, or moved by the scaling policy.

    An edited fleet ConfigMap is authoritative: its hash differs from the one stored with the
    plan, so it is planned. Otherwise, with ``scaling`` (a policy and a signal source plugged in),
    the policy may move the stored plan; else it stays. ``fleet`` is None when there is no text."""
    if obs.fleet_text is None or fleet is None:
        return PlanChoice(obs.stored_plan, "", state, [f"no fleet: create ConfigMap {s.fleet_configmap} "
                                                       f"with key {FLEET_KEY}"])
    if fleet.fleet is None:
        return PlanChoice(obs.stored_plan, "", state, [fleet.error])
    stored = obs.stored_plan
    if stored is None or obs.summary.get("fleet_hash") != fleet.hash:
        return PlanFleet(fleet.fleet, fleet.hash, stored, "no plan yet" if stored is None else "fleet changed", state)
    if (obs.stored_fleet_hash or fleet_hash(stored.fleet)) != fleet.hash:
        # The summary's hash says the stored plan is this fleet's; the plan's own fleet says not (a
        # plan.json.gz edited or copied from another cluster): plan afresh, never apply it.
        return PlanFleet(fleet.fleet, fleet.hash, None, "the stored plan is of another fleet", state)
    if not scaling:
        return PlanChoice(stored, "", state)
    return ScalePlan(stored, state)


def scaled_choice(stored: Plan, state: dict[str, Any], scaled: Scaled | None) -> PlanChoice:
    """The plan after the scaling policy's step: its new plan when it moved (a new plan id), else
    the stored one; its state either way. ``scaled`` None: the policy was not run (no signals and
    no preemption notice), so the state stays as it was."""
    if scaled is None:
        return PlanChoice(stored, "", state)
    if scaled.plan is None or scaled.plan.id == stored.id:
        return PlanChoice(stored, "", scaled.state)
    return PlanChoice(scaled.plan, "scaling: " + "; ".join(scaled.reasons), scaled.state)


@dataclass(frozen=True)
class CyclePlan:
    """What the cycle will change now, what waits and why, and what it found on the way."""

    changes: list[Change]
    """Every change the plan needs against what is live (before the gate)."""
    now: list[Change]
    """What the gate lets through this cycle, in a safe order."""
    waiting: list[tuple[Change, str]]
    conflicts: list[Conflict]
    objects: list[dict[str, Any]]
    binding: dict[str, str]
    """Plan node -> real node."""
    unbound: list[str]
    """Plan nodes with no real node of their pool yet."""
    warnings: list[str]


@dataclass(frozen=True)
class Acted:
    """What acting on a cycle's gated changes did."""

    done: list[Change]
    conflicts: list[Conflict]
    errors: list[str]
    lost: LeaseLost | None = None
    """The lease was lost part way: acting stopped there."""
    held: list[tuple[Change, str]] = field(default_factory=list)
    """Changes not made because one they rely on (:attr:`Change.after`) failed or met a conflict."""


def check_nodes(fleet: Fleet, nodes: list[dict[str, Any]], pool_label: str) -> list[str]:
    """Pool nodes whose NVIDIA labels disagree with their pool's GPU type or size."""
    out = []
    for n in nodes:
        lb = n["metadata"].get("labels") or {}
        pool = lb.get(pool_label)
        if pool is None:
            continue
        try:
            p = fleet.pool(pool)
        except StopIteration:
            out.append(f"node {n['metadata']['name']}: pool {pool!r} is not in the fleet")
            continue
        product = lb.get(N.GPU_PRODUCT_LABEL)
        known = {x.replace(" ", "-") for x in gpu_type(p.gpu).products}
        if product is not None and product.split("-MIG")[0] not in known:
            out.append(f"node {n['metadata']['name']}: GPU {product} is not a {p.gpu} (pool {pool})")
        count = lb.get(N.GPU_COUNT_LABEL)
        if count is not None and str(count).isdigit() and int(count) != p.gpus_per_node:
            out.append(f"node {n['metadata']['name']}: {count} GPUs, pool {pool} says {p.gpus_per_node}")
    return out


def plan_cycle(plan: Plan, rendered: list[dict[str, Any]], obs: Observed, s: ReconcileSettings,
               signal_failures: list[str] = ()) -> CyclePlan:  # type: ignore[assignment]
    """Decide a cycle for ``plan`` (rendered to ``rendered``, never mutated) against what ``obs``
    saw: the diff, the node binding and labels, and the gate's safe order and disruption budget."""
    ns = s.render.namespace
    objs = list(rendered)
    live_by = {key(o): o for o in obs.live}
    for i, o in enumerate(objs):
        if o["kind"] == "ConfigMap" and o["metadata"]["name"] == MIG_PARTED_CONFIGMAP:
            objs[i] = keep_referenced_mig_configs(o, live_by.get(key(o)), obs.nodes)
    why = {}
    for o in objs:
        reason = (o["metadata"].get("annotations") or {}).get(N.REASON_ANNOTATION)
        if reason:
            why[(o["kind"], o["metadata"]["namespace"], o["metadata"]["name"])] = f"planned: {reason}"[:300]
    scopes = {(k, ns) for k in managed_kinds(s)} | {("ConfigMap", s.render.gpu_operator_namespace)}
    changes, conflicts = diff(objs, obs.live, scopes, why)
    plan_nodes = {}
    for p in plan.placements:
        plan_nodes[p.node] = p.pool
    for l in plan.layouts:
        plan_nodes[l.node] = l.pool
    binding = bind_nodes(plan_nodes, obs.nodes, s.render.pool_label)
    changes += node_changes(node_labels(plan, s.render), binding, obs.nodes, s.render.pool_label, conflicts)
    unbound = sorted(set(plan_nodes) - set(binding))
    warnings = check_nodes(plan.fleet, obs.nodes, s.render.pool_label)
    warnings += [f"plan node {n} has no real node in its pool yet: servers pinned to it wait" for n in unbound]
    warnings += [f"metrics not read: {f}" for f in list(signal_failures)[:10]]
    g = gate(changes, objs, obs.live, binding, obs.nodes, s.max_disruptions_per_cycle)
    return CyclePlan(changes, g.now, g.waiting, conflicts, objs, binding, unbound, warnings)


Event = tuple[str, str, str, str, str, str]
"""(kind, namespace, name, reason, message, type) of an Event to record."""


@dataclass(frozen=True)
class StatusUpdate:
    """What recording a cycle writes: its Events, and the status ConfigMap when it changed."""

    events: list[Event]
    summary: dict[str, Any]
    binary: dict[str, str]
    """``plan.json.gz`` (base64) when there is a plan."""
    write: bool
    """The status ConfigMap's content changed (or the policy checkpoint is due): write it."""
    policy_state: dict[str, Any]
    """The scaling policy's state to keep in memory (``_fleet_hash`` taken out)."""
    conflicts: list[Conflict] = field(default_factory=list)
    """Conflicts found while recording (the status name held by another owner)."""

    def body(self, s: ReconcileSettings) -> dict[str, Any]:
        """The status ConfigMap to create."""
        return {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": s.status_configmap, "namespace": s.render.namespace,
                             "labels": {N.MANAGED_BY: N.MANAGER, ROLE_LABEL: "status"}},
                "data": self.data(), "binaryData": self.binary}

    def data(self) -> dict[str, str]:
        return {"summary.json": json.dumps(self.summary, indent=1, sort_keys=True)}


def plan_blob(plan: Plan) -> str:
    """The stored plan as the status ConfigMap holds it: gzip (no timestamp) of sorted JSON, base64."""
    raw = json.dumps(to_dict(plan), sort_keys=True).encode()
    return base64.b64encode(gzip.compress(raw, mtime=0)).decode()


def status_update(obs: Observed, plan: Plan | None, state: dict[str, Any], done: list[Change],
                  waiting: list[tuple[Change, str]], conflicts: list[Conflict], errors: list[str],
                  warnings: list[str], replanned: str, now: float, s: ReconcileSettings,
                  blob: str | None) -> StatusUpdate:
    """Decide what recording a cycle writes: Events for what was done and for new problems, the
    status summary and stored plan (``blob``: the plan's encoding when already known), and whether
    the ConfigMap must be written (only when its content changed, or the policy state's
    checkpoint, every ``policy_checkpoint_s``, is due)."""
    ns = s.render.namespace
    prev = obs.summary
    conflicts = list(conflicts)
    found: list[Conflict] = []
    if obs.status_foreign:
        found.append(Conflict("ConfigMap", ns, s.status_configmap,
                              f"status ConfigMap name taken by an object without {N.MANAGED_BY}="
                              f"{N.MANAGER}: left alone; state kept in memory until it is renamed or removed"))
        conflicts += found
    lines = sorted(f"{c.kind}/{c.name}: {c.reason}" for c in conflicts)
    errors = sorted(errors)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    events: list[Event] = [(a.kind, a.namespace or ns, a.name,
                            a.verb.capitalize() + "d" if a.verb != "label" else "Labeled", a.reason, "Normal")
                           for a in done]
    events += [(c.kind, c.namespace or ns, c.name, "NameConflict", c.reason, "Warning") for c in conflicts
               if f"{c.kind}/{c.name}: {c.reason}" not in (prev.get("conflicts") or [])]
    events += [("ConfigMap", ns, s.status_configmap, "ReconcileError", e, "Warning")
               for e in errors if e not in (prev.get("errors") or [])]
    if replanned and plan is not None:
        events.append(("ConfigMap", ns, s.status_configmap, "Replanned",
                       f"plan {plan.id}: {replanned}; ${plan.cost_per_hour:.2f}/h", "Normal"))
    last = list(prev.get("last_actions") or [])
    last += [{"at": stamp, "action": a.describe()} for a in done]
    state = dict(state)
    fleet_hash = state.pop("_fleet_hash", prev.get("fleet_hash"))
    summary = {
        "plan_id": plan.id if plan else None,
        "fleet_hash": fleet_hash,
        # rounded as the stored plan is: a re-read plan must not look like a change
        "cost_per_hour": round_cost(plan.cost_per_hour) if plan else None,
        "lower_bound_cost_per_hour": round_cost(plan.lower_bound_cost_per_hour) if plan else None,
        "replanned": replanned or prev.get("replanned", ""),
        "last_actions": last[-50:],
        "waiting": sorted(f"{a.describe()} -- {why}" for a, why in waiting),
        "conflicts": lines, "errors": errors, "warnings": sorted(warnings),
        "policy_state": state,
    }
    binary = {} if plan is None else {"plan.json.gz": blob if blob is not None else plan_blob(plan)}
    if obs.status_foreign:
        return StatusUpdate(events, {**summary, "policy_saved_at": now}, binary, False, state, found)
    st = obs.status
    same_blob = st is not None and (st.get("binaryData") or {}) == binary
    quiet = {k: v for k, v in summary.items() if k != "policy_state"}
    if same_blob and not obs.problems and quiet == {
            k: v for k, v in prev.items() if k not in ("policy_state", "policy_saved_at")}:
        saved = prev.get("policy_saved_at")
        if prev.get("policy_state") == state or (saved is not None and now - saved < s.policy_checkpoint_s):
            return StatusUpdate(events, summary, binary, False, state, found)
    summary["policy_saved_at"] = now if prev.get("policy_state") != state else prev.get("policy_saved_at", now)
    return StatusUpdate(events, summary, binary, True, state, found)
