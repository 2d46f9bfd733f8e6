"""Check a plan against its fleet from first principles: what a reviewer of a plan would verify.

Independent of the solver: it recomputes run times from the fleet's latency profiles and the
catalog, so a planner bug that writes optimistic numbers is caught here (and in the tests).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict

from packer.catalog import gpu_type, layout_named, valid_instances
from packer.fleet import Fleet
from packer.plan import Placement, Plan
from packer.arrivals import batch_bound
from packer.queue import busy_share, queue_bound
from packer.slot import WHOLE, SlotType, latency_scale, lone_rate


def check_plan(plan: Plan, *, headroom: float | None = None) -> list[str]:
    """Every violated invariant, as a sentence; an empty list means the plan is sound.

    Slot by slot (memory, workload kinds, spread, batches, worst-case latency, the round within
    the cycle, and the shares, SLOs and limit a report prints), then each model's replicas and
    rate, the MIG geometry, and the pools, the cost, the status and the baselines' prices."""
    u = 1.0 - headroom if headroom is not None else plan.settings.u
    errs: list[str] = []
    placed: Counter = Counter()
    gpus_of: dict[str, set] = defaultdict(set)
    for p in plan.placements:
        errs += _slot_errors(plan.fleet, p, u, placed, gpus_of)
    errs += _replica_errors(plan, placed)
    errs += _mig_errors(plan)
    errs += _pool_errors(plan)
    return errs


def _slot_errors(f: Fleet, p: Placement, u: float, placed: Counter, gpus_of: dict[str, set]) -> list[str]:
    """One slot's violations; counts its replicas into ``placed`` and their GPUs into ``gpus_of``."""
    errs: list[str] = []
    pool = f.pool(p.pool)
    st = SlotType(pool, p.slot)
    cap = st.memory_gb * (len(p.gpus) if len(p.gpus) > 1 else 1)
    mem = sum(f.model(m.name).memory_gb for m in p.models)  # the fleet's, not what the plan file says
    if abs(p.memory_capacity_gb - cap) > 0.01:  # the planner writes it to two decimals
        errs.append(f"{p.id}: memory_capacity_gb {p.memory_capacity_gb:g} GB, but pool {pool.name}'s {p.slot} slot "
                    f"has {cap:.2f} GB")
    if mem > cap + 1e-6:
        errs.append(f"{p.id}: memory {mem:.2f} GB over {cap:.2f} GB")
    if len({m.kind for m in p.models}) > 1 and not pool.time_slicing:
        errs.append(f"{p.id}: streaming and batch models share a slot but {pool.name} has no time-slicing")
    d = p.duty_cycle_ms
    runs = {}
    for m in p.models:
        model = f.model(m.name)
        placed[m.name] += 1
        if abs(m.memory_gb - model.memory_gb) > 0.01:
            errs.append(f"{m.name}@{p.id}: memory_gb {m.memory_gb:g}, but the fleet's model needs {model.memory_gb:g}")
        for g in p.gpus:
            key = (p.pool, p.node, g)
            if key in gpus_of[m.name]:
                errs.append(f"{m.name}: two replicas on {p.node}/gpu{g}")
            gpus_of[m.name].add(key)
        base, per = latency_scale(model, st)
        if m.batch_size > model.max_batch:
            errs.append(f"{m.name}@{p.id}: batch {m.batch_size} over max_batch {model.max_batch}")
        runs[(m.name, m.replica)] = base + per * m.batch_size
    if not p.models:
        return errs
    if abs(p.memory_gb - mem) > 0.01:
        errs.append(f"{p.id}: memory_gb {p.memory_gb:g}, but its members need {mem:.2f} GB")
    for m in p.models:
        if abs(m.slo_ms - f.model(m.name).slo_ms) > 1e-6 * max(1.0, m.slo_ms):
            errs.append(f"{m.name}@{p.id}: slo_ms {m.slo_ms:g}, but the fleet's SLO is {f.model(m.name).slo_ms:g} ms")
    if d == 0:
        return errs + _lone_errors(f, p, st, u)
    # The slot model (docs/slot-maths.md): a request waits for its batch to be cut (d), then for
    # the other members' batches, then runs: d + C, when its batch holds the arrivals of the cut
    # and the others' batches (d + C - its run) at the 99.9 % level; else k rounds, d + k C.
    C = sum(runs.values())
    pressures: dict[str, float] = {}
    for m in p.models:
        model = f.model(m.name)
        run = runs[(m.name, m.replica)]
        # A window over its batch is served over k rounds, one batch a round.
        k = 1
        while batch_bound(m.rate_rps * (d + k * C - run) / 1000.0) > k * m.batch_size and k <= 64:
            k += 1
        if k > 64:
            errs.append(f"{m.name}@{p.id}: {m.rate_rps:g} rps outgrows batches of {m.batch_size} "
                        f"one a round of {C:.1f} ms")
        bound = d + k * C
        if bound > model.slo_ms + 1e-6:
            errs.append(f"{m.name}@{p.id}: worst case {bound:.1f} ms over SLO {model.slo_ms:g} ms")
        if abs(bound - m.p99_bound_ms) > 0.05 + 1e-3 * bound:
            errs.append(f"{m.name}@{p.id}: reported p99 bound {m.p99_bound_ms:.2f} ms, recomputed {bound:.2f} ms")
        errs += _share_error(f"{m.name}@{p.id}: share", m.share, run / d)
        pressures[f"slo:{m.name}"] = bound / model.slo_ms
    if C > u * d + 1e-6:
        errs.append(f"{p.id}: a round of batches takes {C:.1f} ms of a {d:.1f} ms cycle, over {u:.0%}")
    errs += _share_error(f"{p.id}: compute_share", p.compute_share, C / d)
    pressures |= {"memory": mem / p.memory_capacity_gb if p.memory_capacity_gb > 0 else math.inf,
                  "compute": C / d / u}
    return errs + _binding_error(p, pressures)


SHARE_TOLERANCE = 2e-4
"""Plans write shares to four decimals (``packer.plan``): a reported share within this of the
recomputed one is the same number."""


def _share_error(what: str, reported: float, share: float) -> list[str]:
    """The share a report prints (of a slot's time or of its full batches' throughput), recomputed.
    A share edited by hand would print a slot as idler than it is; every other stage reads it."""
    if abs(reported - share) > SHARE_TOLERANCE + 1e-6 * share:
        return [f"{what} {reported:.4f} reported, recomputed {share:.4f}"]
    return []


def _binding_error(p: Placement, pressures: dict[str, float]) -> list[str]:
    """The limit a report names for the slot (memory, compute or a member's SLO) is the one nearest
    its cap, recomputed: ``packer.slot`` picks the largest of the same ratios."""
    if p.binding not in pressures:
        return [f"{p.id}: binding {p.binding!r} is none of {', '.join(sorted(pressures))}"]
    top = max(pressures.values())
    if pressures[p.binding] < top - 1e-3 * max(1.0, top):
        worst = max(pressures, key=lambda k: pressures[k])
        return [f"{p.id}: binding {p.binding} at {pressures[p.binding]:.0%} of its cap, but {worst} is at {top:.0%}"]
    return []


def _lone_errors(f: Fleet, p: Placement, st: SlotType, u: float) -> list[str]:
    """A slot without a duty cycle: one replica alone, its batches sent as the slot frees
    (``packer/queue.py``) and capped at its ``batch_size`` (the ``max_batch_size`` the Triton
    writer renders for it): within ``u`` of its full batches' throughput, its bound recomputed."""
    if len(p.models) != 1:
        return [f"{p.id}: {len(p.models)} members without a duty cycle; only a replica alone is served so"]
    m = p.models[0]
    model = f.model(m.name)
    base, per = latency_scale(model, st)
    cap = m.batch_size
    if cap < 1:
        return [f"{m.name}@{p.id}: batch {cap}; a replica alone is served with batches of at least 1"]
    errs = []
    sized = lone_rate(model, m.rate_rps)  # its sticky streams at the quantile, where it has them
    share = busy_share(sized, base, per, cap)
    if share > u + 1e-6:
        errs.append(f"{m.name}@{p.id}: {sized:g} rps is {share:.0%} of what full batches serve, over {u:.0%}")
    bound = queue_bound(sized, base, per, cap)
    if bound > model.slo_ms + 1e-6:
        errs.append(f"{m.name}@{p.id}: worst case {bound:.1f} ms over SLO {model.slo_ms:g} ms")
    if abs(bound - m.p99_bound_ms) > 0.05 + 1e-3 * bound:
        errs.append(f"{m.name}@{p.id}: reported p99 bound {m.p99_bound_ms:.2f} ms, recomputed {bound:.2f} ms")
    errs += _share_error(f"{m.name}@{p.id}: share", m.share, busy_share(m.rate_rps, base, per, cap))
    errs += _share_error(f"{p.id}: compute_share", p.compute_share, share)
    pressures = {"memory": model.memory_gb / p.memory_capacity_gb if p.memory_capacity_gb > 0 else math.inf,
                 "compute": share / u, f"slo:{m.name}": bound / model.slo_ms}
    return errs + _binding_error(p, pressures)


def _replica_errors(plan: Plan, placed: Counter) -> list[str]:
    """Each model's replicas as the plan counts them, within its bounds, serving its peak."""
    errs: list[str] = []
    rate: dict[str, float] = defaultdict(float)
    for p in plan.placements:
        for m in p.models:
            rate[m.name] += m.rate_rps
    seen: Counter = Counter((m.name, m.replica) for p in plan.placements for m in p.models)
    errs += [f"{name}: replica {i} placed {n} times" for (name, i), n in sorted(seen.items()) if n > 1]
    for model in plan.fleet.models:
        want = plan.replicas.get(model.name, 0)
        if placed[model.name] != want:
            errs.append(f"{model.name}: {placed[model.name]} replicas placed, plan says {want}")
        if want < model.min_replicas:
            errs.append(f"{model.name}: {want} replicas, below min_replicas {model.min_replicas}")
        if model.max_replicas is not None and want > model.max_replicas:
            errs.append(f"{model.name}: {want} replicas, above max_replicas {model.max_replicas}")
        if rate[model.name] + 1e-6 < model.traffic.peak_rps:
            errs.append(f"{model.name}: replicas serve {rate[model.name]:g} rps, below peak {model.traffic.peak_rps:g}")
    return errs


def _mig_errors(plan: Plan) -> list[str]:
    """MIG geometry: each GPU's instances must be a valid placement of its layout."""
    errs: list[str] = []
    by_gpu: dict[tuple, list] = defaultdict(list)
    for p in plan.placements:
        if p.slot != WHOLE:
            by_gpu[(p.pool, p.node, p.gpu)].append((p.slot, p.mig_start))
    layouts = {(l.pool, l.node, l.gpu): l for l in plan.layouts}
    for key, inst in by_gpu.items():
        g = gpu_type(plan.fleet.pool(key[0]).gpu)
        lay = layouts.get(key)
        if lay is None or lay.layout == WHOLE:
            errs.append(f"{key}: MIG slots on a GPU without a MIG layout")
            continue
        known = layout_named(g.name, lay.layout)
        if known is None or Counter(inst) - Counter(known.instances):
            errs.append(f"{key}: slots {inst} are not instances of layout {lay.layout}")
        if not valid_instances(g, tuple(sorted(inst, key=lambda x: x[1]))):
            errs.append(f"{key}: MIG instances {inst} are not a valid placement")
    return errs


def _pool_errors(plan: Plan) -> list[str]:
    """GPUs and nodes within each pool's limits; the cost as the GPUs used add up; the bound below it."""
    errs: list[str] = []
    f = plan.fleet
    used: Counter = Counter()
    for l in plan.layouts:
        used[l.pool] += 1
    paid = {(l.pool, l.node, l.gpu) for l in plan.layouts}
    for p in plan.placements if plan.layouts else ():  # a plan without layouts says nothing of its GPUs
        if gone := [g for g in p.gpus if (p.pool, p.node, g) not in paid]:
            errs.append(f"{p.id}: on {p.node}/gpu{gone[0]}, a GPU that the plan's layouts do not list (not paid for)")
    if plan.layouts and {k: v for k, v in plan.gpus.items() if v} != dict(used):
        errs.append(f"gpus {dict(plan.gpus)} do not match {dict(used)} from the plan's layouts")
    for pool in f.pools:
        if used[pool.name] > pool.max_gpus:
            errs.append(f"{pool.name}: {used[pool.name]} GPUs over the pool's {pool.max_gpus}")
        nodes = {l.node for l in plan.layouts if l.pool == pool.name}
        if len(nodes) > pool.max_nodes:
            errs.append(f"{pool.name}: {len(nodes)} nodes over max_nodes {pool.max_nodes}")
    cost = sum(f.pool(k).cost_per_gpu_hour * v for k, v in used.items())
    if not math.isclose(cost, plan.cost_per_hour, rel_tol=1e-6, abs_tol=1e-3):
        errs.append(f"cost {plan.cost_per_hour} does not match {cost:.4f} from the GPUs used")
    if plan.lower_bound_cost_per_hour > plan.cost_per_hour + 1e-6:
        errs.append("lower bound above cost")
    if plan.status == "optimal" and plan.lower_bound_cost_per_hour < plan.cost_per_hour * (1 - 1e-6) - 1e-3:
        errs.append(f"status optimal, but the bound {plan.lower_bound_cost_per_hour:g} is below the cost "
                    f"{plan.cost_per_hour:g}: only a bound at the cost proves a plan optimal")
    for name, b in plan.baselines.items():
        if math.isinf(b.cost_per_hour):
            continue  # does not fit the pools: no GPUs to price
        if unknown := [k for k in b.gpus if k not in {q.name for q in f.pools}]:
            errs.append(f"baseline {name}: GPUs of {unknown[0]!r}, not a pool of the fleet")
            continue
        paid = sum(f.pool(k).cost_per_gpu_hour * n for k, n in b.gpus.items())
        if not math.isclose(paid, b.cost_per_hour, rel_tol=1e-6, abs_tol=1e-3):
            errs.append(f"baseline {name}: cost {b.cost_per_hour:g} does not match {paid:.4f} from its GPUs "
                        f"{dict(b.gpus)}")
    return errs
