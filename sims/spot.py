"""``packer simulate PLAN --scenario spot --compare spot``: what spot capacity buys and costs.

Three runs on the same traffic and seed (issue 18):

1. the plan given, with the policy asked for (``--policy packer``: it reacts to preemption notices);
2. the **all-on-demand** plan: the same fleet without its spot pools, under ``static`` (nothing to
   preempt, nothing to scale): the price of not using spot at all;
3. the **spot-unaware** plan: the same fleet with every model free to run on spot (the cheapest
   plan, no on-demand floor), under the same policy as the first run.

The two extra plans are planned here with the plan's settings (seed, headroom, MIG).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

from packer.plan import Plan
from packer.planner import plan_fleet
from packer.planner.spot import on_demand_only, spot_unaware

Runner = Callable[[Plan, str | None, str], dict[str, Any]]
"""(plan, policy, label) -> a run's result dict."""


def comparison_plans(plan: Plan, time_limit_s: float | None = None) -> list[tuple[str, Plan, str | None]]:
    """(label, plan, policy override) for runs 2 and 3; policy None means the first run's."""
    s = replace(plan.settings, time_limit_s=time_limit_s if time_limit_s is not None else plan.settings.time_limit_s)
    od = plan_fleet(on_demand_only(plan.fleet), s)
    od = replace(od, fleet=replace(od.fleet, pools=plan.fleet.pools))  # same fleet, spot pools unused
    cheap = plan_fleet(spot_unaware(plan.fleet), s)
    return [("all-on-demand", od, "static"), ("spot-unaware", cheap, None)]


def run_comparison(plan: Plan, policy: str | None, run: Runner, time_limit_s: float | None = None) -> list[dict[str, Any]]:
    """The three runs, each labelled, the plan's first."""
    out = [run(plan, policy, "spot-aware" if any(m.on_demand_floor > 0 for m in plan.fleet.models) else "this plan")]
    for label, p, pol in comparison_plans(plan, time_limit_s):
        out.append(run(p, pol if pol is not None else policy, label))
    return out
