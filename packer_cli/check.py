"""``packer check PLAN``: whether a plan file holds against its own fleet.

Every command that reads a plan runs the same check on load (``packer.planfile.load_plan``: the
plan's fields, then ``packer.check.check_plan`` from first principles), so a hand-edited number
is refused, not rendered, served, simulated or applied. This command runs it alone, for a plan a
tool wrote or a person means to apply, and says what it checked.
"""

from __future__ import annotations

import click

from packer.cliutil import emit, format_option
from packer.planfile import load_plan


@click.command("check")
@click.argument("plan_path", metavar="PLAN", type=click.Path(dir_okay=False))
@format_option
def check(plan_path: str, fmt: str) -> None:
    """Check a plan file against its own fleet: every slot's memory, batches and p99 bounds within
    the SLOs, each model's replicas serving its peak, the MIG layouts, the pools' sizes and the
    cost. Exit 0 when it holds; else one line naming the first problem, exit 2."""
    plan = load_plan(plan_path)  # one line naming the file, the field and the fix, whatever is wrong
    gpus = sum(plan.gpus.values())
    replicas = sum(plan.replicas.values())
    doc = {"plan": plan.id, "fleet": plan.fleet.name, "holds": True, "status": plan.status, "gpus": gpus,
           "slots": len(plan.placements), "replicas": replicas, "cost_per_hour": plan.cost_per_hour}
    emit(doc, fmt, lambda: (f"plan {plan.id} holds against its fleet {plan.fleet.name}: {len(plan.placements)} slots "
                            f"on {gpus} GPUs, {replicas} replicas, {plan.cost_per_hour:.2f}/h. Checked: every "
                            "slot's memory, batches, shares, limit and p99 bounds within its members' SLOs, "
                            "each model's replicas against its peak, the MIG layouts, the pools' sizes, the "
                            "cost and the baselines' prices"))
