"""Right-sizing re-plans: when to ask the planner for a fresh packing, and whether to take it.

Local moves add capacity a replica at a time (a whole GPU for a single busy model) and release
one slot at a time, so on a diurnal curve the fleet trails the demand by hours and keeps packings
that made sense at another hour. Every ``replan_every_s`` the policy therefore asks the planner for
a packing of the demand expected until the next re-plan could serve (:attr:`Demand.replan_want`),
when that demand moved since the last packing. The planner runs outside the policy (it has a wall
-clock budget, so calling it here would make ``decide`` depend on the machine's speed); its answer
comes back to :func:`accept_replan`, which takes it only when it is cheaper, or when the deployed
plan cannot hold the demand and the new one can.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from packer.plan import Plan
from packer.scaling.actions import Replan
from packer.scaling.demand import EPS, Demand, share_capacity
from packer.scaling.room import gpu_price, paid_gpus
from packer.scaling.settings import ScalingSettings


def moved(demands: Mapping[str, Demand], last: Mapping[str, float], settings: ScalingSettings) -> list[str]:
    """Models whose re-plan demand moved since the last packing (``last``; the capacity they hold
    when there was none): by more than ``replan_change`` of it and by more than its Poisson noise.

    Example: asr-en packed for 3000 rps, now wanting 3400: 400 > 0.10 x 3000 and > 2 sqrt(3400 / 60)
    = 15: moved. A summarizer packed for 0.07 rps now at 0.12: 0.05 < 2 sqrt(0.12 / 60) = 0.09: noise.
    """
    t, w = settings.targets, settings.windows
    out = []
    for name, d in sorted(demands.items()):
        old = last.get(name, d.capacity)
        new = d.replan_want
        noise = t.noise_z * math.sqrt(max(old, new, 0.0) / w.stable_s)
        if abs(new - old) > max(t.replan_change * old, noise) + EPS:
            out.append(name)
    return out


def right_size(plan: Plan, demands: Mapping[str, Demand], last: Mapping[str, float],
               settings: ScalingSettings) -> Replan | None:
    """A right-sizing re-plan request when demand moved since the last packing, else None."""
    changed = moved(demands, last, settings)
    if not changed:
        return None
    traffic = tuple((m.name, round(demands[m.name].replan_want, 4)) for m in plan.fleet.models)
    shown = ", ".join(f"{n} {last.get(n, demands[n].capacity):.1f} -> {demands[n].replan_want:.1f}"
                      for n in changed[:4]) + (f" and {len(changed) - 4} more" if len(changed) > 4 else "")
    lead = settings.targets.replan_every_s + settings.cold_start.node_s + settings.cold_start.image_s
    return Replan(traffic=traffic, fragmentation=0.0, headroom=settings.targets.replan_headroom, cost_per_hour=0.0,
                  reason=f"demand moved since the last packing ({shown} rps, the highest of the last "
                         f"{settings.windows.scale_down_s:.0f} s or the trend over the next {lead:.0f} s); "
                         f"a fresh packing at {_pct(settings.targets.replan_headroom)} headroom, taken only if "
                         f"cheaper or needed")


def _pct(h: float | None) -> str:
    return "the plan's" if h is None else f"{h:.0%}"


def plan_cost(plan: Plan) -> float:
    """Hourly price of the GPUs a plan pays for."""
    return sum(gpu_price(plan, k[0]) for k in paid_gpus(plan))


def holds(plan: Plan, traffic: Mapping[str, float]) -> list[str]:
    """Models whose replicas (under round-robin) cannot hold their rate in ``traffic``."""
    return [m.name for m in plan.fleet.models
            if traffic.get(m.name, 0.0) > EPS and share_capacity(plan, m.name) < traffic[m.name] * (1 - 1e-6)]


def accept_replan(current: Plan, new: Plan, traffic: Mapping[str, float], short_share: float = 0.10) -> tuple[bool, str]:
    """Whether to migrate from ``current`` to the planner's ``new`` packing of ``traffic``, and why.

    A migration reloads weights and, make before break, pays for old and new slots until the new
    serve, so it is taken only when it lowers the bill, or at no extra cost when the deployed plan
    falls short of the demand expected before the next re-plan by more than ``short_share`` for
    some model (smaller shortfalls are the scale-up's: one replica, no migration).
    Example: deployed 1 A100 + 6 L4 (8.90/h), new 1 A100 + 4 L4 (7.30/h): taken, saves 1.60/h.
    Same price and the deployed plan holds: kept, nothing gained for the moves.
    """
    before, after = plan_cost(current), plan_cost(new)
    short_new = holds(new, traffic)
    if short_new:
        return False, f"the new packing does not hold {', '.join(short_new)}"
    if after < before - 1e-9:
        return True, f"{before:.2f}/h -> {after:.2f}/h: saves {before - after:.2f}/h"
    short_now = [m for m in holds(current, traffic) if share_capacity(current, m) < traffic[m] * (1 - short_share)]
    if short_now and after <= before + 1e-9:
        return True, (f"the deployed plan holds less than {1 - short_share:.0%} of the expected demand of "
                      f"{', '.join(short_now[:3])}; the packing does at the same price")
    return False, f"the deployed plan costs {before:.2f}/h, the packing {after:.2f}/h: not worth the moves"
