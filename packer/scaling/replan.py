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

from packer.fleet import Fleet
from packer.plan import Plan
from packer.scaling.actions import Replan
from packer.scaling.demand import EPS, Demand, share_capacity
from packer.scaling.room import gpu_price, paid_gpus
from packer.scaling.settings import ScalingSettings


def fleet_at(fleet: Fleet, traffic: Mapping[str, float]) -> Fleet:
    """``fleet`` with each model named in ``traffic`` scaled to that peak rate (rps and peak_rps by
    the same factor): a right-sizing re-plan packs for the demand expected before the next one, not
    for the fleet file's peak. The simulator and the reconciler both hand this to the planner.

    Example: asr at peak 1000 rps in the fleet, asked for 250: rps and peak_rps are scaled by 0.25.
    """
    scale = {m.name: traffic[m.name] / m.traffic.peak_rps if m.traffic.peak_rps > 0 else 1.0
             for m in fleet.models if m.name in traffic}
    return fleet.with_traffic(scale) if scale else fleet


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


def built_gpus(current: Plan, new: Plan) -> dict[tuple[str, str, int], float]:
    """GPUs of ``new`` that a make-before-break migration from ``current`` must bring up, each
    with the largest weights (GB) loaded on it.

    A slot of ``new`` with the same pool, slot kind and members as one of ``current`` stays where
    it runs (the simulator's and reconciler's migrations keep such groups); every other slot is
    built on a GPU of its own while the old ones still serve, so its GPU is paid twice until the
    new replicas load.
    """
    def key(p) -> tuple[str, str, frozenset[str]]:  # type: ignore[no-untyped-def]
        return (p.pool, p.slot, frozenset(m.name for m in p.models))

    old = [key(p) for p in current.placements]
    out: dict[tuple[str, str, int], float] = {}
    for p in new.placements:
        k = key(p)
        if k in old:
            old.remove(k)
            continue
        gb = max((new.model(m.name).memory_gb for m in p.models), default=0.0)
        for g in p.gpus or (p.gpu,):
            out[(p.pool, p.node, g)] = max(out.get((p.pool, p.node, g), 0.0), gb)
    return out


def migration_cost(current: Plan, new: Plan, settings: ScalingSettings) -> tuple[float, float]:
    """(money, seconds): what the make-before-break overlap of a migration costs, and how long
    until the new packing serves (the slowest built GPU: a fresh node, the image, the weights).

    Example: one new L4 (0.80/h) with a 2.5 GB model: 240 + 120 + 17.5 = 377.5 s of a GPU paid
    twice, 0.80 x 377.5 / 3600 = 0.084. Re-laying out the A100 (4.10/h) for the same saving
    costs 4.10 x 0.105 h = 0.43 more: the batch group stays unless moving it pays.
    """
    cs = settings.cold_start
    money = lead = 0.0
    for (pool, _, _), gb in built_gpus(current, new).items():
        t = cs.node_s + cs.image_s + cs.weights_s(gb)
        money += gpu_price(new, pool) * t / 3600.0
        lead = max(lead, t)
    return money, lead


def accept_replan(current: Plan, new: Plan, traffic: Mapping[str, float], short_share: float = 0.10,
                  settings: ScalingSettings | None = None) -> tuple[bool, str]:
    """Whether to migrate from ``current`` to the planner's ``new`` packing of ``traffic``, and why.

    A migration reloads weights and, make before break, pays for old and new slots until the new
    serve (:func:`migration_cost`), so a cheaper packing is taken only when its saving, from the
    moment it serves until ``replan_payback_s`` after the decision, pays for that overlap: a saving
    that demand will take back within the hour is not worth rebuilding GPUs for. It is also taken
    at no extra cost when the deployed plan falls short of the demand expected before the next
    re-plan by more than ``short_share`` for some model (smaller shortfalls are the scale-up's:
    one replica, no migration).
    Example (payback 1 h): 3 L4 -> 2 L4 (saves 0.80/h), one L4 group rebuilt (a 377.5 s cold
    start): 0.80 x (3600 - 377.5) / 3600 = 0.72 earned against 0.084 of overlap: taken. With a
    payback of 700 s only 0.072 is earned: kept. A saving of one L4 that re-lays out the A100
    (4.10/h x ~6.5 min = 0.44) and three L4 groups (0.25) earns 0.72 - 0.69: barely taken; with
    one more L4 group to rebuild, kept.
    Same price and the deployed plan holds: kept, nothing gained for the moves.
    """
    settings = settings or ScalingSettings()
    before, after = plan_cost(current), plan_cost(new)
    short_new = holds(new, traffic)
    if short_new:
        return False, f"the new packing does not hold {', '.join(short_new)}"
    if after < before - 1e-9:
        overlap, lead = migration_cost(current, new, settings)
        horizon = settings.targets.replan_payback_s
        earned = (before - after) * max(0.0, horizon - lead) / 3600.0
        if earned > overlap + 1e-9:
            return True, (f"{before:.2f}/h -> {after:.2f}/h: saves {before - after:.2f}/h, "
                          f"{earned:.2f} over the next {horizon / 60:.0f} min against {overlap:.2f} of overlap")
        return False, (f"{before:.2f}/h -> {after:.2f}/h saves {earned:.2f} over the next {horizon / 60:.0f} min, "
                       f"less than the {overlap:.2f} the overlap of {len(built_gpus(current, new))} rebuilt GPU(s) "
                       f"costs")
    short_now = [m for m in holds(current, traffic) if share_capacity(current, m) < traffic[m] * (1 - short_share)]
    if short_now and after <= before + 1e-9:
        return True, (f"the deployed plan holds less than {1 - short_share:.0%} of the expected demand of "
                      f"{', '.join(short_now[:3])}; the packing does at the same price")
    return False, f"the deployed plan costs {before:.2f}/h, the packing {after:.2f}/h: not worth the moves"
