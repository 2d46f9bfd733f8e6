"""Spot-aware placement: every model keeps its floor when spot capacity goes.

A model's ``spot_policy`` (``packer.fleet``) says what share of its peak it must keep
(``Model.on_demand_floor``: 0 ``free``, 1 ``never``, a share for ``floor``) when its worst spot
node goes (``spot_loss: node``, the default) or every spot node does (``pool``);
``Model.spot_replicas`` turns that into how many replicas a spot pool may take. The planner obeys
it through :func:`packer.planner.model.allowed` (shared replicas) and :func:`multi_choice`
(multi-GPU replicas); the node assembly spreads the spot replicas, and :func:`respread` re-plans
the models it could not spread. :func:`exposure` reads back, from a finished plan, what each model
keeps when its worst spot node, or every spot node, is lost.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any
from dataclasses import dataclass, replace

from packer.errors import UserError
from packer.fleet import Fleet, Model, Pool
from packer.plan import Plan
from packer.planner.model import Problem, on_demand_replicas, spot_count, wide_room

Choice = tuple[float, int, list[tuple[Pool, int]]]
"""(cost per hour, replicas, [(pool, replicas there)]), on-demand parts first."""


def multi_options(problem: Problem, m: Model, replicas_in: Callable[[Problem, Model, Pool], int | None],
                  splits: int | None = None) -> list[Choice]:
    """Every placement of a multi-GPU model's replicas that keeps its on-demand floor, room aside:
    a pool alone (any pool for a ``free`` model, on-demand pools otherwise), or two pools
    (:func:`_split_options`); ``splits``: at most that many splits of each pair of pools and
    count, evenly spaced, both ends kept (all where None; where 0, only a spot floor's: each
    model in one pool unless a spot pool takes what its floor lets go)."""
    options: list[Choice] = []
    counts = {p.name: replicas_in(problem, m, p) for p in problem.fleet.pools}
    gpr = m.gpus_per_replica
    for p in problem.fleet.pools:
        n = counts[p.name]
        if n is None:
            continue
        n = spot_count(m, n, p)
        if p.spot and on_demand_replicas(m, n, p) > 0:
            continue
        options.append((n * gpr * p.cost_per_gpu_hour, n, [(p, n)]))
    return options + _split_options(problem, m, counts, splits)


def _split_options(problem: Problem, m: Model, counts: dict[str, int | None], most: int | None = None
                   ) -> list[Choice]:
    """A multi-GPU model's replicas over two pools, ``k`` in an on-demand pool and the rest in the
    other, each part within what its pool's nodes can hold; where the other is a spot pool, ``k``
    at least the model's on-demand floor there (``n`` may grow so that a spot node's loss keeps
    it: ``model.spot_count``). Every replica is sized for the rate of the slower pool's count: a
    model's requests are spread evenly over its replicas, wherever they run. ``most``: at most
    that many values of ``k`` a pair, evenly spaced (``_spaced``; None: all; 0: one pool a
    model, but for a spot floor's on-demand part). Unless ``most`` is 0, also the fills of three
    or more on-demand pools (:func:`_fills`).

    Held to one pool unless a spot pool took the replicas past its floor, a model whose replicas
    the cheap pool could not all hold took the dear one for all of them: family-3400110-llm-12's
    70B model (81 two-GPU replicas; 128 H100s at 2.36/h, 184 at 9.18/h) cost 1,508.40/h against a
    bound of 880.42/h; split, 696.82/h, proven optimal."""
    gpr = m.gpus_per_replica
    out: list[Choice] = []
    pools = [p for p in problem.fleet.pools if counts[p.name] is not None]
    for qi, q in enumerate(pools):
        if q.spot:
            continue
        most_q = min(q.max_gpus // gpr, wide_room(q, gpr))
        for pi, p in enumerate(pools):
            if p is q or (not p.spot and pi < qi):
                continue  # two on-demand pools: each pair once, k in the one listed first
            most_p = min(p.max_gpus // gpr, wide_room(p, gpr))
            least = max(counts[q.name], counts[p.name])
            for n in range(least, (spot_count(m, least, p) if p.spot else least) + 1):
                floor = on_demand_replicas(m, n, p) if p.spot else 0
                if most == 0:  # one pool a model, but for a spot floor's on-demand part
                    if p.spot and 1 <= floor < n:
                        out.append((gpr * (floor * q.cost_per_gpu_hour + (n - floor) * p.cost_per_gpu_hour), n,
                                    [(q, floor), (p, n - floor)]))
                    continue
                for k in _spaced(max(1, floor, n - most_p), min(n - 1, most_q), most):
                    out.append((gpr * (k * q.cost_per_gpu_hour + (n - k) * p.cost_per_gpu_hour), n,
                                [(q, k), (p, n - k)]))
    if most != 0:
        out += _fills(m, [p for p in pools if not p.spot], counts)
    return out


def _fills(m: Model, pools: list[Pool], counts: dict[str, int | None]) -> list[Choice]:
    """A multi-GPU model's replicas over three or more on-demand pools, cheapest first, each filled
    to what its nodes hold: one placement for each number of pools that the fewer cheapest cannot
    hold and these can. A fleet the thirty-fourth session's fuzzing generated (seed 45): 11 two-GPU
    replicas, two L40S pools of 10 GPUs beside A100-40s; over two pools at most, the model took 5
    L40S replicas and 6 A100 ones, 140.34/h; over three, 10 L40S and 1 A100, 129.38/h."""
    gpr = m.gpus_per_replica
    order = sorted(pools, key=lambda p: p.cost_per_gpu_hour)
    out: list[Choice] = []
    for j in range(3, len(order) + 1):
        first = order[:j]
        n = max(counts[p.name] for p in first)
        most = [min(p.max_gpus // gpr, wide_room(p, gpr)) for p in first]
        if sum(most[:-1]) >= n or sum(most) < n or min(most) <= 0:
            continue  # fewer pools hold it (a split of two, or one), or these do not
        parts, left = [], n
        for p, k in zip(first, most):
            take = min(k, left)
            parts.append((p, take))
            left -= take
        out.append((gpr * sum(k * p.cost_per_gpu_hour for p, k in parts), n, parts))
    return out


def _spaced(lo: int, hi: int, most: int | None) -> list[int]:
    """The integers from ``lo`` to ``hi``, or at most ``most`` of them evenly spaced, both ends kept."""
    if hi < lo:
        return []
    if most is None or hi - lo + 1 <= most:
        return list(range(lo, hi + 1))
    return sorted({lo + round(i * (hi - lo) / (most - 1)) for i in range(most)})


def multi_choice(problem: Problem, m: Model, used: Mapping[str, int],
                 replicas_in: Callable[[Problem, Model, Pool], int | None], splits: int | None = None
                 ) -> Choice | None:
    """The cheapest of :func:`multi_options` (``splits`` as there) that the pools have room for;
    ``used`` is GPUs already taken per pool. None when no pool has room."""
    gpr = m.gpus_per_replica

    def room(parts: list[tuple[Pool, int]]) -> bool:
        # GPUs left, and nodes (five 3-GPU replicas on two 8-GPU nodes were placed and the plan
        # ended in "15 GPUs do not fit in 2 nodes").
        return all(used.get(p.name, 0) + k * gpr <= p.max_gpus and k <= wide_room(p, gpr) for p, k in parts)

    best: Choice | None = None
    for o in multi_options(problem, m, replicas_in, splits):
        if room(o[2]) and (best is None or o[0] < best[0]):
            best = o
    return best


@dataclass(frozen=True)
class Exposure:
    """What one model keeps of its peak when spot capacity goes, as the plan sizes its replicas."""

    model: str
    policy: str
    floor: float
    """Share of peak its on-demand replicas must hold (``Model.on_demand_floor``)."""
    replicas: int
    on_spot: int
    keeps_one_node: float
    """Share of peak held by the replicas left when its worst spot node goes."""
    worst_node: str | None
    keeps_no_spot: float
    """Share of peak its on-demand replicas hold alone."""
    loss: str = "node"
    """What its floor must survive (``Model.spot_loss``): ``node`` reads ``keeps_one_node``,
    ``pool`` ``keeps_no_spot``."""

    @property
    def below_floor(self) -> bool:
        return (self.keeps_one_node if self.loss == "node" else self.keeps_no_spot) < self.floor - 1e-6


def kept(plan: Plan, model: str) -> tuple[float, str | None, float]:
    """(share of peak kept when the model's worst spot node goes, that node, share kept when every
    spot node goes). A replica holds the rate it is sized for (``rate_rps``); the even split of
    requests over the rest is what the planner sized them for."""
    m = plan.model(model)
    peak = m.traffic.peak_rps
    reps = plan.placements_of(model)
    rate = {p.id: next(x.rate_rps for x in p.models if x.name == model) for p in reps}
    total = sum(rate.values())
    by_node: dict[str, float] = {}
    for p in reps:
        if plan.fleet.pool(p.pool).spot:
            by_node[p.node] = by_node.get(p.node, 0.0) + rate[p.id]
    worst = max(by_node, key=lambda n: (by_node[n], n)) if by_node else None
    lost = by_node.get(worst, 0.0) if worst else 0.0
    share = (lambda r: min(1.0, r / peak) if peak > 0 else 1.0)
    return share(total - lost), worst, share(total - sum(by_node.values()))


def holds_floor(plan: Plan, model: str) -> float:
    """The share of peak that ``spot_loss`` counts against the floor: kept with the worst spot node
    gone (``node``), or with every spot node gone (``pool``)."""
    one, _, none = kept(plan, model)
    return one if plan.model(model).spot_loss == "node" else none


def exposure(plan: Plan) -> list[Exposure]:
    """Per model: replicas on spot, and the share of peak kept when its worst spot node is lost
    and when every spot node is (:func:`kept`)."""
    out = []
    for m in plan.fleet.models:
        reps = plan.placements_of(m.name)
        one, worst, none = kept(plan, m.name)
        out.append(Exposure(m.name, m.spot_policy, m.on_demand_floor, len(reps),
                            sum(1 for p in reps if plan.fleet.pool(p.pool).spot), one, worst, none, m.spot_loss))
    return out


RESPREAD_TRIES = 2
"""Re-plans :func:`respread` may spend on models the spot nodes could not spread."""


def respread(plan: Plan, replan: Callable[[Fleet], Plan]) -> Plan:
    """``plan``, or a re-plan where the node assembly could not spread a ``spot_loss: node``
    model's spot replicas thinly enough (models sharing GPUs in an odd cycle, {a, b}, {b, c},
    {c, a}, cannot go on two nodes with no model twice on one: llm-platform at floor 0.5, three
    small chats and embed-bge). Those models are planned again against losing the whole pool
    (``ceil(floor * n)`` on-demand), which needs no spread, at most :data:`RESPREAD_TRIES` times;
    the plan keeps the fleet as given, whose rule the stricter placement also keeps."""
    fleet = plan.fleet
    for _ in range(RESPREAD_TRIES):
        bad = {e.model for e in exposure(plan) if e.loss == "node" and e.below_floor}
        if not bad:
            break
        stricter = replace(plan.fleet, models=tuple(replace(m, spot_loss="pool") if m.name in bad else m
                                                     for m in plan.fleet.models))
        plan = replan(stricter)
    return plan if plan.fleet is fleet else replace(plan, fleet=fleet)


def spot_aware(fleet: Fleet) -> bool:
    """Does any model's spot policy constrain this fleet (a spot pool and a non-``free`` model)?"""
    return any(p.spot for p in fleet.pools) and any(m.on_demand_floor > 0 for m in fleet.models)


def spot_unaware(fleet: Fleet) -> Fleet:
    """The same fleet with every model ``free`` to run on spot: the cheapest plan's fleet."""
    return replace(fleet, models=tuple(replace(m, spot_policy="free", on_demand_floor=0.0) for m in fleet.models))


def exposure_lines(plan: Plan) -> list[str]:
    """The per-model exposure table for ``packer plan``'s summary (empty without spot pools)."""
    if not any(p.spot for p in plan.fleet.pools):
        return []
    b = plan.baselines.get("spot-unaware")
    out = []
    if b is not None and b.cost_per_hour > 0:
        extra = plan.cost_per_hour - b.cost_per_hour
        out.append(f"spot insurance: {extra:+,.2f}/h ({extra / b.cost_per_hour:+.1%}) over the spot-unaware plan "
                   f"({b.cost_per_hour:,.2f}/h on {sum(b.gpus.values())} GPUs)")
    out.append("when spot goes    model                 policy  floor  replicas  on spot  "
               "keeps (worst node)  keeps (no spot)")
    for e in exposure(plan):
        flag = "  <- below its floor" if e.below_floor else ""
        out.append(f"                  {e.model:<21} {e.policy:<7} {e.floor:>5.0%}  {e.replicas:>8}  {e.on_spot:>7}  "
                   f"{e.keeps_one_node:>18.0%}  {e.keeps_no_spot:>15.0%}{flag}")
    return out


def exposure_doc(plan: Plan) -> dict[str, Any] | None:
    """The plan file's ``spot_exposure`` (docs/plan.schema.json): per model what it keeps when its
    worst spot node, or every spot node, goes, and the price of the floors against the spot-unaware
    plan (None without spot pools; the price None without that baseline)."""
    if not any(p.spot for p in plan.fleet.pools):
        return None
    b = plan.baselines.get("spot-unaware")
    price = round(plan.cost_per_hour - b.cost_per_hour, 6) if b is not None else None
    return {"insurance_cost_per_hour": price,
            "models": [{"model": e.model, "spot_policy": e.policy, "floor": e.floor, "spot_loss": e.loss,
                        "replicas": e.replicas, "on_spot": e.on_spot, "keeps_one_node": round(e.keeps_one_node, 6),
                        "worst_node": e.worst_node, "keeps_no_spot": round(e.keeps_no_spot, 6),
                        "below_floor": e.below_floor} for e in exposure(plan)]}


def on_demand_only(fleet: Fleet) -> Fleet:
    """The same fleet without its spot pools: the all-on-demand plan's fleet. Raises a
    :class:`~packer.errors.UserError` when every pool is spot."""
    pools = tuple(p for p in fleet.pools if not p.spot)
    if not pools:
        raise UserError(f"fleet {fleet.name}: every pool is spot, so there is no all-on-demand plan to compare "
                        "with. Fix: add an on-demand pool (`spot: false`)")
    return replace(fleet, pools=pools)
