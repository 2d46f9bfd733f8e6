"""One scaling step: decide, and run and judge the re-plan the decision asked for.

The reconciler (``k8s/scaling.py``) and the simulator (``sims/policy_packer.py``) both move a
deployed plan with :func:`step`, so a re-plan is asked for, packed and taken (or refused) by one
piece of code: what the simulator predicts for a re-plan is what the reconciler does. Each adapter
only turns the result into its own world (a status ConfigMap and objects; simulator slots).

The planner runs behind a :data:`Replanner`, injected: it has a wall-clock budget, so the pure
``decide`` never calls it (:mod:`packer.scaling.replan` says why).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property

from packer.errors import UserError
from packer.fleet import Fleet
from packer.plan import Plan
from packer.scaling.actions import Action, Replan, apply
from packer.scaling.demand import ScalingState, loading_until
from packer.scaling.policy import decide
from packer.scaling.replan import accept_replan, built_gpus, fleet_at, migration_cost
from packer.scaling.settings import ScalingSettings
from packer.scaling.signals import Signals

Replanner = Callable[[Plan, Fleet, "float | None", bool], Plan]
"""(deployed plan, fleet at the rates to plan for, duty-cycle headroom or None for the plan's own,
fresh) -> the planner's packing: migration-aware from the deployed plan, or from scratch when
``fresh``."""


def planner_replanner(time_limit_s: float = 2.0) -> Replanner:
    """``plan_fleet`` with the deployed plan's settings (MIG, seed; its headroom unless the policy
    names one) and a ``time_limit_s`` search; the packing is what a re-plan needs, so no proof."""

    def replan(current: Plan, fleet: Fleet, headroom: float | None = None, fresh: bool = False) -> Plan:
        # Imported here: the planner pulls in OR-Tools (0.9 s), which the policy alone never needs.
        from packer.planner import plan_fleet

        s = replace(current.settings, time_limit_s=time_limit_s, prove_s=0)
        if headroom is not None:
            s = replace(s, headroom=headroom)
        return plan_fleet(fleet, s, current=None if fresh else current)

    return replan


@dataclass(frozen=True)
class ReplanOutcome:
    """What became of a policy's re-plan request."""

    request: Replan
    base: Plan
    """The plan the planner started from: the deployed one with the decision's other actions."""
    answer: Plan
    """The planner's packing that was judged last (the one taken, when ``taken``)."""
    taken: bool
    why: str


def run_replan(base: Plan, request: Replan, replanner: Replanner, settings: ScalingSettings, *,
               retry_fresh: bool = False) -> ReplanOutcome:
    """Ask ``replanner`` for a packing of the request's rates at its headroom, migration-aware from
    ``base``, and judge it with :func:`packer.scaling.replan.accept_replan`.

    With ``retry_fresh`` a refused packing is followed by one from scratch: keeping replica counts
    and groups (``current=``) can lock in a packing made for another hour, and the migration keeps
    every group the fresh packing has in common with the deployed plan anyway. The simulator
    retries; the reconciler does not (its planner's budget is a cycle's, 20 s by default).
    """
    traffic = dict(request.traffic)
    fleet = fleet_at(base.fleet, traffic)

    def ask(fresh: bool) -> Plan:
        return replace(replanner(base, fleet, request.headroom, fresh), fleet=base.fleet)

    try:
        new = ask(False)
    except UserError as e:  # e.g. kept GPUs and multi-GPU replicas overfill a pool: refused, not a crash
        return ReplanOutcome(request, base, base, False, f"the re-plan failed: {e}")
    ok, why = accept_replan(base, new, traffic, settings=settings)
    if not ok and retry_fresh:
        try:
            fresh = ask(True)
        except UserError:
            return ReplanOutcome(request, base, new, ok, why)
        ok2, why2 = accept_replan(base, fresh, traffic, settings=settings)
        if ok2:
            new, ok, why = fresh, ok2, why2 + " (packed from scratch)"
    return ReplanOutcome(request, base, new, ok, why)


@dataclass(frozen=True)
class Step:
    """One step's result: the actions, the state for the next step, and the plan they lead to."""

    deployed: Plan
    actions: list[Action]
    """The policy's actions in order (a ``Replan``, when asked for, is the last)."""
    state: ScalingState
    replan: ReplanOutcome | None = None
    """The re-plan run for the decision's ``Replan`` (None: none asked, or no re-planner given)."""
    reasons: list[str] = field(default_factory=list)
    """One line per action, then the re-plan's verdict: what a status page or log shows."""

    @cached_property
    def plan(self) -> Plan | None:
        """The next plan, None when the deployed one stays: the taken packing; else the actions
        applied (all but a refused or unrun ``Replan``). Computed when read: the simulator applies
        the actions one at a time itself, to translate each."""
        if self.replan is not None:
            if self.replan.taken:
                return self.replan.answer
            return self.replan.base if self.replan.base is not self.deployed else None
        acts = [a for a in self.actions if not isinstance(a, Replan)]
        return apply(self.deployed, acts) if acts else None


def step(plan: Plan, signals: Mapping[str, Signals], state: ScalingState | None, now: float,
         settings: ScalingSettings, replanner: Replanner | None, *,
         notices: Mapping[str, float] | None = None, retry_fresh: bool = False) -> Step:
    """``decide`` on the deployed ``plan``; when it asks for a re-plan and a ``replanner`` is
    given, run it from the plan the decision's other actions leave (applied one at a time, as the
    simulator translates them) and judge the packing (:func:`run_replan`)."""
    actions, state = decide(plan, signals, state, now, settings, notices=notices)
    reasons = [f"{a.summary()}: {a.reason}" for a in actions]
    rp = next((a for a in actions if isinstance(a, Replan)), None)
    if rp is None or replanner is None:
        return Step(plan, actions, state, None, reasons)
    base = plan
    for a in actions[:actions.index(rp)]:
        base = apply(base, [a])
    out = run_replan(base, rp, replanner, settings, retry_fresh=retry_fresh)
    reasons.append(out.why if out.taken else f"packing not taken: {out.why}")
    if out.taken:
        state = migrating(state, base, out.answer, now, settings)
    return Step(plan, actions, state, out, reasons)


def migrating(state: ScalingState, base: Plan, new: Plan, now: float, settings: ScalingSettings) -> ScalingState:
    """``state`` with every model the migration from ``base`` to ``new`` rebuilds marked loading
    until the slowest rebuilt GPU serves (:func:`packer.scaling.replan.migration_cost`): the old
    slots serve until then, but the plan is the new one, and a consolidation in between must not
    count the new replicas (``ModelState.serving_at``)."""
    _, lead = migration_cost(base, new, settings)
    built = set(built_gpus(base, new))
    names = {m.name for p in new.placements for m in p.models
             if any((p.pool, p.node, g) in built for g in p.gpus or (p.gpu,))}
    return loading_until(state, names & set(state.models), now + lead)
