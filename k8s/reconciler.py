"""The in-cluster reconciler: a level-triggered loop that keeps the cluster at the plan.

Main loop, one cycle (every ``interval_s``):

1. Leader? Only the holder of the Lease goes on; followers read the Lease and nothing else.
2. Observe: the fleet ConfigMap, the GPU nodes, every object of the managed kinds in the managed
   namespaces (owned or not), and the status ConfigMap holding the last plan and policy state.
3. Decide the plan: an edited fleet means a re-plan, migration-aware, with the stored plan as
   ``current``; else the scaling policy (if plugged in) may move the plan with live load; else
   the stored plan stays.
4. Diff (pure): render the plan, compare with what is live, bind logical nodes to real ones.
5. Gate (pure): safe order and the per-cycle disruption budget; the rest waits, with reasons.
6. Act, each call retried with backoff; then record Events and the status ConfigMap, both only
   when something changed, so a cycle with nothing to do writes nothing.

All state lives in the cluster (the status ConfigMap, the node labels, the objects themselves):
a restarted reconciler picks up where the last one stopped.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import secrets
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from k8s import names as N
from k8s.cluster import KINDS, ApiError, Cluster
from k8s.cycle import (FLEET_KEY, ROLE_LABEL, Acted, CyclePlan, FleetRead, Observed, PlanChoice, PlanFleet,
                      check_nodes, fleet_hash, managed_kinds, plan_cycle, plan_source, policy_state, scaled_choice,
                      status_update)
from k8s.diff import Change, Conflict, drifted, merge_patch
from k8s.inputs import MAX_TEXT, BadInput, gunzip, load_json, load_yaml, short
from k8s.lease import LeaderElector, LeaseLost
from k8s.metrics import ReconcilerMetrics
from k8s.render import DEVICE_PLUGIN_CONFIGMAP, MIG_PARTED_CONFIGMAP, render_plan
from k8s.scaling import Scaled, Scaler, preemption_notices
from k8s.settings import ReconcileSettings
from packer.errors import UserError
from packer.fleet import Fleet
from packer.fleetfile import parse_fleet
from packer.plan import Plan, from_dict
from packer.planfile import validate_plan
from packer.planner import PlanSettings, plan_fleet


__all__ = ["ROLE_LABEL", "Acted", "CyclePlan", "CycleReport", "Observed", "PlanChoice", "Reconciler", "check_nodes",
           "default_planner", "managed_kinds"]

log = logging.getLogger("packer.reconciler")

Planner = Callable[[Fleet, "Plan | None"], Plan]
"""(fleet, current plan or None) -> new plan. Migration-aware planners keep what they can."""
SignalSource = Callable[["Plan | None", list[dict[str, Any]]], dict[str, Any]]
"""(deployed plan, live objects) -> per-model load signals (see :class:`k8s.scaling.TritonSignals`)."""


def default_planner(time_limit_s: float = 20.0) -> Planner:
    """The project's planner, migration-aware through ``current``; ``headroom`` (a scaling
    re-plan's) overrides the planner's default duty-cycle headroom."""
    def plan(fleet: Fleet, current: Plan | None, headroom: float | None = None) -> Plan:
        s = PlanSettings(time_limit_s=time_limit_s)
        if headroom is not None:
            s = replace(s, headroom=headroom)
        return plan_fleet(fleet, s, current=current)
    return plan


def default_identity(in_cluster: bool | None = None) -> str:
    """The leader-election identity: in the cluster, the pod's name (``HOSTNAME``, which the kubelet
    sets); outside it (``in_cluster`` False, default: no ``KUBERNETES_SERVICE_HOST``), one unique to
    this process: host, pid and a random suffix. Two admins' runs (or two terminals', where
    HOSTNAME is not exported) must never look like the same holder of the Lease."""
    if in_cluster is None:
        in_cluster = bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
    if in_cluster and os.environ.get("HOSTNAME"):
        return os.environ["HOSTNAME"]
    host = re.sub(r"[^A-Za-z0-9.-]+", "-", socket.gethostname() or "").strip("-.")[:40] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


@dataclass
class CycleReport:
    """What one cycle saw and did; the CLI prints it, the status page and metrics show it."""

    leader: bool
    dry_run: bool = False
    plan: Plan | None = None
    replanned: str = ""
    done: list[Change] = field(default_factory=list)
    waiting: list[tuple[Change, str]] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    held: list[tuple[Change, str]] = field(default_factory=list)
    """Gated changes not made because one they rely on failed this cycle (also in ``waiting``)."""
    input_errors: list[str] = field(default_factory=list)
    """Bad content in the fleet or status ConfigMap, also in ``errors``: reported, the plan kept."""
    calls: Counter[str] = field(default_factory=Counter)
    writes: int = 0
    """Writes to anything but the Lease: serving objects, node labels, status and Events."""
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)
    """Seconds per step: observe (API reads), plan, diff (render + diff + gate), act, record."""

    @property
    def diff_id(self) -> str:
        """Names the exact set of actions; ``--confirm`` applies a cycle only if it matches."""
        def what(a: Change) -> Any:
            # What runs, not which plan id or replica numbering produced it.
            h = ((a.body or {}).get("metadata") or {}).get("annotations", {}).get(N.SPEC_HASH)
            if a.verb != "update":
                return h or a.body
            # An update patches the live object: what it changes there, and whether that restarts
            # pods, is part of what was shown. A pod template edited by hand after the dry run made
            # the same "update" restart the pods, and the confirm was taken with the same id.
            return [h or a.body, a.disruptive, N.digest((a.body or {}).get("spec"))]
        return N.digest(sorted([a.verb, a.kind, a.namespace or "", a.name, what(a)] for a in self.done), 12)

    def lines(self) -> list[str]:
        out = [f"{'would ' if self.dry_run else ''}{a.describe()}" for a in self.done]
        out += [f"wait {a.describe()} -- {why}" for a, why in self.waiting]
        out += [f"conflict {c.kind}/{c.name}: {c.reason}" for c in self.conflicts]
        out += [f"error {e}" for e in self.errors] + [f"warning {w}" for w in self.warnings]
        return out


PLAN_FAILURES = (UserError, ArithmeticError, ValueError, TypeError, RecursionError, MemoryError)
"""What a planner raises on a fleet that parses but cannot be planned (1e308 latencies)."""

_SUMMARY_TYPES: dict[str, type | tuple[type, ...]] = {
    "fleet_hash": str, "replanned": str, "policy_state": dict, "policy_saved_at": (int, float),
    "last_actions": list, "conflicts": list, "errors": list, "warnings": list, "waiting": list}
"""What the status summary's fields must be, to be used at all."""


def _typed(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    """Items of a list response carry no apiVersion and kind on a real API server: add them."""
    obj.setdefault("kind", kind)
    obj.setdefault("apiVersion", KINDS[kind].api_version)
    return obj


class Reconciler:
    def __init__(self, cluster: Cluster, settings: ReconcileSettings | None = None, *,
                 planner: Planner | None = None, signals: SignalSource | None = None,
                 scaler: Scaler | None = None, identity: str | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.cluster = cluster
        cluster.clock = clock  # its answers are timed as the cycles are, for /healthz
        self.s = settings or ReconcileSettings()
        self.ns = self.s.render.namespace
        self.planner = planner or default_planner()
        self.signals = signals
        self.scaler = scaler
        """With ``signals``, the scaling policy moves the plan with live traffic."""
        self.clock = clock
        self.identity = identity or self.s.identity or default_identity()
        self.elector = LeaderElector(cluster, self.ns, self.s.lease_name, self.identity, self.s.lease_duration_s,
                                     self.s.fence_margin_s, clock)
        self.last: CycleReport | None = None
        self.unbound: list[str] = []
        self.signal_failures: list[str] = []
        self._fleet: tuple[str, Fleet, str] | None = None
        """(fleet ConfigMap text, parsed fleet, its hash): parse only when the text changes."""
        self._bad_fleet: tuple[str, str] | None = None
        """(fleet ConfigMap text, why it was refused): a bad fleet is not parsed again each cycle."""
        self._rendered: tuple[Plan, list[dict[str, Any]]] | None = None
        self._planned: tuple[tuple[str, str | None], Plan | None, str] | None = None
        """((fleet hash, stored plan id), plan, why) of the last fleet-driven re-plan: a cycle that
        lost its lease while planning does not make the next one plan again from the start; a
        planner that failed on it (plan None, why the error) is not run again each cycle."""
        self._blob: tuple[str, Plan, str] | None = None
        """The stored plan as last read or written: its blob, the plan, its own fleet's hash."""
        """(stored plan blob, decoded plan): decode only when the status ConfigMap's blob changes."""
        self._last_summary: dict[str, Any] | None = None
        """The last good status summary read or written: stands in for an unreadable one, and
        is the only copy while the status ConfigMap's name is taken."""
        self.policy_state: dict[str, Any] | None = None
        """The scaling policy's hysteresis, kept in memory while leading and checkpointed to the
        status ConfigMap every ``policy_checkpoint_s`` (or with any other change): new samples
        every cycle must not turn every quiet cycle into a write."""
        self.history: list[dict[str, Any]] = []
        self.cycles = 0
        self.last_cycle_end = 0.0

        self.metrics = ReconcilerMetrics()

    # -- observe ------------------------------------------------------------------------------

    def observe(self) -> Observed:
        """A list per managed kind and of the nodes, and two reads: every object of the managed
        kinds, the GPU nodes, the fleet and status ConfigMaps out of the ConfigMap list, and
        packer's two ConfigMaps in the GPU operator's namespace."""
        c, s = self.cluster, self.s
        live: list[dict[str, Any]] = []
        for kind in managed_kinds(s):
            live += [_typed(o, kind) for o in c.list(kind, self.ns)]
        ops = s.render.gpu_operator_namespace
        if ops != self.ns:  # only its two ConfigMaps there, by name: RBAC grants no more
            live += [_typed(o, "ConfigMap") for name in (DEVICE_PLUGIN_CONFIGMAP, MIG_PARTED_CONFIGMAP)
                     if (o := c.get("ConfigMap", ops, name)) is not None]
        nodes = [n for n in c.list("Node") if s.render.pool_label in (n["metadata"].get("labels") or {})]
        by_name = {o["metadata"]["name"]: o for o in live if o["kind"] == "ConfigMap"
                   and o["metadata"].get("namespace", self.ns) == self.ns}
        fleet_cm, status = by_name.get(s.fleet_configmap), by_name.get(s.status_configmap)
        fleet_text = None if fleet_cm is None else (fleet_cm.get("data") or {}).get(FLEET_KEY)
        summary: dict[str, Any] = {}
        stored = None
        if status is not None and not N.owned(status):
            # Someone else's ConfigMap under our status name: reported once (record), and this
            # process keeps the summary and plan in memory, so the loop stays quiet.
            summary = dict(self._last_summary or {})
            stored, mine = self._blob[1:] if self._blob is not None else (None, None)
            return Observed(fleet_text, nodes, live, status, summary, stored, status_foreign=True,
                            stored_fleet_hash=mine)
        problems = []
        mine = None
        if status is not None:
            # Anyone with ConfigMap access may have written anything here: bounded reads, and a
            # bad summary or plan is reported while the last good plan (in memory) stays.
            try:
                summary = load_json((status.get("data") or {}).get("summary.json") or "{}",
                                    "status ConfigMap summary.json")
                if not isinstance(summary, dict):
                    raise BadInput("status ConfigMap summary.json: not a JSON object")
                if wrong := sorted(k for k, t in _SUMMARY_TYPES.items()
                                   if k in summary and not isinstance(summary[k], t)):
                    raise BadInput(f"status ConfigMap summary.json: wrong type of {', '.join(wrong)}")
            except BadInput as e:
                summary = dict(self._last_summary or {})
                problems.append(f"{e}; rewriting it")
            else:
                self._last_summary = summary
            blob = (status.get("binaryData") or {}).get("plan.json.gz")
            if blob and self._blob is not None and blob == self._blob[0]:
                stored, mine = self._blob[1:]  # decoding re-validates the whole fleet: skip when unchanged
            elif blob:
                try:
                    what = "status ConfigMap plan.json.gz"
                    if len(blob) > 2 * MAX_TEXT:
                        raise BadInput(f"{what}: {len(blob)} bytes, more than the {2 * MAX_TEXT} limit")
                    raw = gunzip(base64.b64decode(blob, validate=True), what)
                    stored = validate_plan(from_dict(load_json(raw, what, limit=len(raw))), what)
                    mine = fleet_hash(stored.fleet)
                    self._blob = (blob, stored, mine)
                except Exception as e:  # noqa: BLE001 -- any content, any failure: report, keep the last plan
                    stored, mine = self._blob[1:] if self._blob is not None else (None, None)
                    keep = "keeping the last good plan" if stored is not None else "planning afresh"
                    problems.append(f"stored plan unreadable, {keep}: {short(e)}")
                    log.warning("%s", problems[-1])
        return Observed(fleet_text, nodes, live, status, summary, stored, problems=problems, stored_fleet_hash=mine)

    # -- decide -------------------------------------------------------------------------------

    def choose_plan(self, obs: Observed, now: float) -> PlanChoice:
        """The plan for this cycle, why it changed ('' if kept), the scaling policy's state, errors.

        Deciding is :func:`k8s.cycle.plan_source`'s and :func:`k8s.cycle.scaled_choice`'s; this
        reads the fleet (parsed once per text) and runs what they ask for: the planner (once per
        fleet and stored plan) or the scaling policy on live signals. A planner that fails keeps
        the last plan, with the error.
        """
        state = policy_state(self.policy_state, obs)
        fleet = None if obs.fleet_text is None else self._read_fleet(obs.fleet_text)
        source = plan_source(obs, fleet, state, scaling=self.scaler is not None and self.signals is not None,
                             s=self.s)
        if isinstance(source, PlanChoice):
            return source
        try:
            if isinstance(source, PlanFleet):
                return self._plan_fleet(source)
            return scaled_choice(source.plan, source.state, self._scale(source.plan, obs, source.state, now))
        except PLAN_FAILURES as e:
            # A fleet that parses may still break the planner (1e308 latencies): report, keep the plan.
            return PlanChoice(obs.stored_plan, "", state, [f"planning failed, keeping the last plan: {short(e)}"])

    def _read_fleet(self, text: str) -> FleetRead:
        """The fleet ConfigMap's text parsed, or why it was refused; each text is parsed once
        (validating 500 models takes seconds), a refused one too."""
        if self._fleet is not None and self._fleet[0] == text:
            return FleetRead(self._fleet[1], self._fleet[2])
        if self._bad_fleet is not None and self._bad_fleet[0] == text:
            return FleetRead(None, error=self._bad_fleet[1])
        try:
            doc = load_yaml(text, f"fleet ConfigMap {self.s.fleet_configmap}")
            fleet = parse_fleet(doc, f"configmap/{self.s.fleet_configmap}")
            digest = fleet_hash(fleet)
        except Exception as e:  # noqa: BLE001 -- bad input of any shape: report, keep the last plan
            if not isinstance(e, (UserError, BadInput)):
                log.warning("fleet ConfigMap rejected", exc_info=True)
            msg = short(e) if isinstance(e, BadInput) else f"fleet ConfigMap: {short(e)}"
            self._bad_fleet = (text, f"{msg}; keeping the last good plan")
            return FleetRead(None, error=self._bad_fleet[1])
        self._fleet = (text, fleet, digest)
        return FleetRead(fleet, digest)

    def _plan_fleet(self, source: PlanFleet) -> PlanChoice:
        """Run the planner on an edited fleet, once per (fleet, stored plan): a cycle that lost its
        lease while planning does not plan again, nor does a planner that failed on that input."""
        k = (source.fleet_hash, source.current.id if source.current is not None else None)
        if self._planned is None or self._planned[0] != k:
            try:
                self._planned = (k, self.planner(source.fleet, source.current), source.why)
            except PLAN_FAILURES as e:  # not run again every cycle on the same input
                self._planned = (k, None, short(e))
        if self._planned[1] is None:
            raise UserError(self._planned[2])
        # A new plan of an edited fleet is the scaling policy's new ceiling (ScalingState.ceiling).
        state = {k: v for k, v in source.state.items() if k != "ceiling"}
        return PlanChoice(self._planned[1], self._planned[2], state | {"_fleet_hash": source.fleet_hash})

    def _scale(self, stored: Plan, obs: Observed, state: dict[str, Any], now: float) -> Scaled | None:
        """One step of the scaling policy on live signals (scraped here) and the nodes' preemption
        notices; None when there is neither, so the policy is not run."""
        assert self.scaler is not None and self.signals is not None
        signals = self.signals(stored, obs.live)
        self.signal_failures = list(getattr(self.signals, "failures", []))
        notices = preemption_notices(stored, obs.nodes, now)  # a spot node's taint: re-place first
        if not signals and not notices:
            return None
        extra = {"notices": notices} if notices else {}
        return self.scaler(stored, signals, state, now, self._replan, **extra)

    def _replan(self, current: Plan, fleet: Fleet, headroom: float | None, fresh: bool = False) -> Plan:
        """The scaling policy's re-planner (:data:`packer.scaling.Replanner`): the planner on
        ``fleet`` (the rates the policy asked for) from the deployed plan (from scratch when
        ``fresh``), at the policy's headroom when it names one. A planner given to the reconciler
        without a ``headroom`` parameter still works; it plans at its own."""
        base = None if fresh else current
        if headroom is None:
            return self.planner(fleet, base)
        return self.planner(fleet, base, headroom=headroom)  # type: ignore[call-arg]

    def rendered(self, plan: Plan) -> list[dict[str, Any]]:
        """The plan's objects: rendered once per plan (never mutated; ``plan_cycle`` copies)."""
        if self._rendered is None or self._rendered[0] is not plan:
            self._rendered = (plan, render_plan(plan, self.s.render))
        return self._rendered[1]

    # -- act ----------------------------------------------------------------------------------

    def act(self, changes: list[Change]) -> Acted:
        """Carry out the gated actions; a failure is reported and left to the next cycle. A change
        whose prerequisite (:attr:`Change.after`) failed or met a conflict is held back, in this
        cycle: no server on a missing or foreign ConfigMap or claim, no Service or repository
        deleted under a server still running. A lost lease stops at once: what was done so far,
        and the loss, come back."""
        c = self.cluster
        done, conflicts, errors, held = [], [], [], []
        failed: dict[tuple[str, str | None, str], str] = {}  # key -> what became of its change

        def dependents(a: Change) -> list[Change]:
            return [b for b in changes if a.key in b.after]

        for a in changes:
            if blocked := [k for k in a.after if k in failed]:
                k = blocked[0]
                held.append((a, f"held back: {failed[k]}, and it relies on that"))
                failed[a.key] = f"{a.verb} {a.kind}/{a.name} was held back too"
                continue
            try:
                if a.verb == "create":
                    try:
                        c.create(a.body)
                    except ApiError as e:
                        if e.status != 409:
                            raise
                        # An earlier try may have landed (timeout, 5xx), or someone took the name.
                        cur = c.get(a.kind, a.namespace, a.name)
                        if cur is None or not N.owned(cur):
                            conflicts.append(Conflict(a.kind, a.namespace, a.name,
                                                      "name taken by an object packer does not own; left alone"))
                            failed[a.key] = f"the name {a.kind}/{a.name} was taken by someone else"
                            errors.append(self._taken(a, dependents(a)))
                            continue
                        if drifted(cur, a.body):
                            c.patch(a.kind, a.namespace, a.name, merge_patch(cur, a.body))
                elif a.verb in ("update", "label"):
                    c.patch(a.kind, a.namespace, a.name, a.body)
                elif a.verb == "delete":
                    c.delete(a.kind, a.namespace, a.name)
                done.append(a)
            except ApiError as e:
                errors.append(str(e))
                failed[a.key] = f"{a.verb} {a.kind}/{a.name} failed"
            except LeaseLost as e:
                return Acted(done, conflicts, errors, e, held=held)
        return Acted(done, conflicts, errors, held=held)

    def _taken(self, a: Change, deps: list[Change]) -> str:
        """The error of a create that met a name taken after the diff was made (one line, a fix)."""
        held = f"; held back: {', '.join(f'{b.verb} {b.kind}/{b.name}' for b in deps)}" if deps else ""
        return (f"create {a.kind}/{a.name}: the name was taken by an object without {N.MANAGED_BY}={N.MANAGER} "
                f"after the diff was made; left alone{held}. Fix: rename or remove {a.kind}/{a.name} in namespace "
                f"{a.namespace}, then run the dry run again")

    def record(self, obs: Observed, plan: Plan | None, state: dict[str, Any], rep: CycleReport, now: float) -> None:
        """Write what :func:`k8s.cycle.status_update` decides: Events for what was done and for new
        problems, and the status ConfigMap when its content changed."""
        blob = self._blob[0] if plan is not None and self._blob is not None and self._blob[1] is plan else None
        up = status_update(obs, plan, state, rep.done, rep.waiting, rep.conflicts, rep.errors, rep.warnings,
                           rep.replanned, now, self.s, blob)
        rep.conflicts += up.conflicts
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
        lost = [e for ev in up.events if (e := self._event(*ev, stamp)) is not None]
        if lost:  # once a cycle: without RBAC for Events, a line per event flooded stderr (14 a cycle)
            rep.warnings.append(f"{len(lost)} of {len(up.events)} Event(s) not recorded: {lost[0]}. Fix: grant "
                                f"create on events in namespace {self.ns} (the Role in the deploy manifests has it)")
            log.warning("%s", rep.warnings[-1])
        self.policy_state = up.policy_state
        if plan is not None and blob is None:
            self._blob = (up.binary["plan.json.gz"], plan, fleet_hash(plan.fleet))
        if obs.status_foreign:
            self._last_summary = up.summary
            return
        if not up.write:
            return
        try:
            if obs.status is None:
                self.cluster.create(up.body(self.s))
            else:
                self.cluster.patch("ConfigMap", self.ns, self.s.status_configmap,
                                   {"data": up.data(), "binaryData": up.binary})
            self._last_summary = up.summary
        except ApiError as e:
            rep.errors.append(f"status: {e}")

    def _event(self, kind: str, ns: str, name: str, reason: str, message: str, typ: str, stamp: str) -> str | None:
        """File one Event; why not, where it could not be (None where it was, or was already)."""
        if KINDS[kind].namespaced is False:
            # The API server wants events about cluster-scoped objects in "default"; keep them in
            # our namespace (and our RBAC) by filing them under the status ConfigMap.
            message = f"{kind}/{name}: {message}"
            kind, ns, name = "ConfigMap", self.ns, self.s.status_configmap
        ev = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{name[:200]}.{N.digest([kind, name, reason, message, stamp, self.identity], 12)}",
                         "namespace": self.ns, "labels": {N.MANAGED_BY: N.MANAGER}},
            "involvedObject": {"kind": kind, "name": name, "namespace": ns, "apiVersion": KINDS[kind].api_version},
            "reason": reason, "message": message[:1000], "type": typ,
            "source": {"component": "packer-reconciler"}, "reportingComponent": "packer-reconciler",
            "reportingInstance": self.identity, "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
        }
        try:
            self.cluster.create(ev)
        except ApiError as e:
            if e.status != 409:  # the same event this second: already recorded
                return str(e)
        return None

    # -- the cycle ----------------------------------------------------------------------------

    def cycle(self, *, dry_run: bool = False, expect: str | None = None) -> CycleReport:
        """One cycle. ``dry_run`` writes nothing (not even the Lease); ``expect`` applies only if
        the cycle's diff id equals it (what a dry run showed)."""
        t0 = time.perf_counter()
        now = self.clock()
        before = Counter(self.cluster.calls)
        lease_writes = self.cluster.lease_writes
        rep = CycleReport(leader=True, dry_run=dry_run)
        try:
            leading = dry_run or self.elector.ensure(now)
            rep.phases["lease"] = round(time.perf_counter() - t0, 4)
            if not leading:
                rep.leader = False
                self.policy_state = None  # the leader's copy is the truth now
            else:
                if not dry_run:  # fenced: every call checks the lease, bounded by its time left
                    self.cluster.guard = lambda: self.elector.budget(self.clock())
                self._cycle(rep, now, dry_run, expect)
        except ApiError as e:
            rep.errors.append(f"cycle aborted: {e}")
        except LeaseLost as e:
            rep.leader = False
            rep.errors.append(f"cycle stopped, leadership lost: {e}")
            self.policy_state = None
            log.warning("stopped acting: %s", e)
        except Exception as e:  # noqa: BLE001 -- a bug or an input not foreseen: report it, keep looping
            log.exception("cycle failed")
            rep.errors.append(f"cycle aborted: {type(e).__name__}: {short(e)}")
        finally:
            self.cluster.guard = None
        rep.calls = self.cluster.calls - before
        rep.writes = (sum(n for v, n in rep.calls.items() if v in ("create", "patch", "delete"))
                      - (self.cluster.lease_writes - lease_writes))
        rep.seconds = time.perf_counter() - t0
        self.cycles += 1
        self.last = rep
        self.last_cycle_end = self.clock()
        if rep.done:
            self.history = (self.history + [{"at": now, "action": a.describe()} for a in rep.done])[-100:]
        self.metrics.observe(rep)
        return rep

    def _cycle(self, rep: CycleReport, now: float, dry_run: bool, expect: str | None = None) -> None:
        t = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal t
            t2 = time.perf_counter()
            rep.phases[name] = round(t2 - t, 4)
            t = t2

        obs = self.observe()
        lap("observe")
        choice = self.choose_plan(obs, now)
        plan, state = choice.plan, choice.state
        lap("plan")
        rep.input_errors = obs.problems + [e for e in choice.errors if not e.startswith("no fleet")]
        rep.errors += obs.problems + choice.errors
        rep.plan, rep.replanned = plan, choice.why
        if plan is None:
            if not dry_run:
                self.record(obs, None, state, rep, now)
            return
        try:
            cp = plan_cycle(plan, self.rendered(plan), obs, self.s, self.signal_failures)
        except UserError as e:
            # The plan cannot be rendered (an http:// artifact): what runs stays, and the status
            # keeps the last applied plan and fleet hash (the failed plan is cached, not redone).
            rep.warnings = check_nodes(plan.fleet, obs.nodes, self.s.render.pool_label)
            rep.errors.append(f"not applied: {short(e)}")
            rep.input_errors.append(rep.errors[-1])
            rep.plan, rep.replanned = obs.stored_plan, ""
            state.pop("_fleet_hash", None)
            if not dry_run:
                self.record(obs, obs.stored_plan, state, rep, now)
            return
        self.unbound = cp.unbound
        rep.conflicts, rep.warnings, rep.waiting, rep.done = cp.conflicts, cp.warnings, cp.waiting, cp.now
        lap("diff")
        if dry_run:
            return
        if expect is not None and rep.diff_id != expect:
            rep.errors.append(f"the diff is now {rep.diff_id}, not the {expect} a dry run showed; nothing "
                              "applied. Fix: dry-run again and confirm what it prints")
            rep.done = []
            return
        acted = self.act(cp.now)
        rep.done, rep.conflicts, rep.errors = acted.done, cp.conflicts + acted.conflicts, rep.errors + acted.errors
        rep.held, rep.waiting = acted.held, rep.waiting + acted.held
        lap("act")
        if acted.lost is not None:
            raise acted.lost
        self.record(obs, plan, state, rep, now)
        lap("record")

    def run(self, stop: threading.Event) -> None:
        """Cycle every ``interval_s`` until ``stop`` is set; errors back off to the next cycle."""
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                rep = self.cycle()
                for line in rep.lines():
                    log.info("%s", line)
            except Exception:  # never let one bad cycle kill the loop; /healthz shows staleness
                log.exception("cycle failed")
            stop.wait(max(0.0, self.s.interval_s - (time.monotonic() - t0)))
