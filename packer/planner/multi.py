"""Multi-GPU replicas: which pool each model's replicas take, on which nodes' room.

A replica of ``gpus_per_replica > 1`` takes whole GPUs of one node and shares none, so these
models are placed before the shared ones pack (``plan_multi``), and the lower bound counts them at
their cheapest (``multi_floor``). Room is counted in GPUs and in nodes: a node of 8 GPUs holds
two 3-GPU replicas, not 8/3. :func:`choose_pools` is the one joint choice of pools under both,
for the multi-GPU placement and the dedicated baseline.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict

from ortools.sat.python import cp_model

from packer.errors import UserError
from packer.planner.assemble import Gpu, fits_nodes, to_gpus
from packer.planner.build import cost_of, gpu_counts
from packer.planner.greedy import NoRoom, choose_counts, pack, reps_for
from packer.fleet import Model, Pool
from packer.planner.model import Problem, multi_replicas
from packer.planner.spot import multi_choice, multi_options

Part = tuple[str, int, int]
"""(pool name, replicas there, GPUs a replica)."""
Option = tuple[float, list[Part]]
"""(cost per hour, parts): one way to place a model's replicas."""


def multi_floor(problem: Problem) -> float:
    """The least the multi-GPU models can cost: each alone in its cheapest pool, room ignored.

    ``plan_multi`` places them one by one where room is left, so its cost is not a bound: when
    pools are small, another placement may free a cheap pool for the shared models.
    """
    total = 0.0
    for m in problem.multi_models:
        counts = [(multi_replicas(problem, m, p), p) for p in problem.fleet.pools]
        total += min((n * m.gpus_per_replica * p.cost_per_gpu_hour for n, p in counts if n is not None),
                     default=0.0)
    return total


def plan_multi(problem: Problem) -> tuple[list[Gpu], dict[str, int], float]:
    """Multi-GPU replicas: whole GPUs on one node, the cheapest pool that fits and has room, the
    largest models first. Placed one model at a time, a model can take the room a later one
    needed (a 3-GPU model on the cheap pool's two 3-GPU nodes, then another's two 3-GPU replicas
    find none, though the first fits elsewhere): where that order leaves a model no room, or its
    replicas do not fit the pools' nodes, other orders are tried (``MULTI_ORDERS``, seeded), and
    where every order fails, every model's pools and nodes are chosen at once
    (:func:`choose_pools`): a model that fits two pools takes the one the others do not need."""
    models = sorted(problem.multi_models, key=lambda m: -m.memory_gb)
    first = _multi_in_order(problem, models)
    if first[0] is not None:
        # One model at a time, each takes its cheapest placement, and a split can take the room
        # of a cheap pool that another model, or the shared models, needed: two fuzzed fleets
        # cost 2.6 % and 5.4 % more than with each model in one pool. The placements with and
        # without splits and the joint choice are each priced with the shared models' greedy
        # packing in the room they leave; the cheapest is kept.
        whole = _multi_in_order(problem, models, splits=0)[0]
        joint = _multi_jointly(problem, models) if len(models) > 1 else None
        best = _cheapest_beside_shared(problem, [first[0]] + [c for c in (whole, joint) if c is not None])
        problem.multi_counts = best[1]
        return best
    rng = random.Random(len(models))
    for _ in range(MULTI_ORDERS if len(models) > 1 else 0):
        order = models[:]
        rng.shuffle(order)
        placed, _ = _multi_in_order(problem, order)
        if placed is not None:
            return placed
    joint = _multi_jointly(problem, models)
    if joint is not None:
        return joint
    raise first[1]


MULTI_ORDERS = 30
"""Other orders :func:`plan_multi` tries where the largest-first one fails (a greedy pass each)."""
MULTI_S = 2.0
"""Deterministic seconds for :func:`plan_multi`'s joint placement, where no order places them."""
JOINT_SPLITS = 32
"""Splits of a model over each pair of pools the joint placement offers (evenly spaced): a model
of 1,000 two-GPU replicas over two pools of 2,000 GPUs has 999, each a choice in its CP-SAT
model; :func:`plan_multi`'s greedy passes take every split, the one that fills the room."""


def _cheapest_beside_shared(problem: Problem, found: list[tuple[list[Gpu], dict[str, int], float]]
                            ) -> tuple[list[Gpu], dict[str, int], float]:
    """Of the multi-GPU placements ``found``, the one whose cost plus the shared models' greedy
    packing (``greedy.pack`` at ``choose_counts``, in the room it leaves) is least; the first on
    ties, and the first alone where all take the same GPUs of each pool."""
    usage = [sorted(gpu_counts(problem, gpus).items()) for gpus, _, _ in found]
    if all(u == usage[0] for u in usage[1:]) or not problem.shared_models:
        return min(found, key=lambda c: c[2])
    reps = reps_for(problem, choose_counts(problem))

    def total(c: tuple[list[Gpu], dict[str, int], float]) -> float:
        try:
            slots = pack(problem, reps, reserved=gpu_counts(problem, c[0]))
        except (NoRoom, UserError):
            return math.inf
        return c[2] + cost_of(problem, gpu_counts(problem, to_gpus(problem, slots)))

    return min(found, key=total)


def _multi_in_order(problem: Problem, models: list, splits: int | None = None
                    ) -> tuple[tuple[list[Gpu], dict[str, int], float] | None, UserError | None]:
    """The multi-GPU models placed in this order, each in its cheapest pool whose nodes take its
    replicas beside those placed before (three 2-GPU replicas of three models are 6 GPUs of a
    pool of two 3-GPU nodes, which take two); or None and the error to report."""
    gpus: list[Gpu] = []
    counts: dict[str, int] = {}
    used: dict[str, int] = defaultdict(int)
    exact = 0.0
    for m in models:
        full: set[str] = set()  # pools whose nodes cannot take this model's replicas beside the others'
        while True:
            seen = {**used, **{p.name: p.max_gpus for p in problem.fleet.pools if p.name in full}}
            best = multi_choice(problem, m, seen, multi_replicas, splits)  # the model's on-demand floor kept
            if best is None:
                return None, UserError(f"models: {m.name} needs {m.gpus_per_replica} GPUs per replica and no pool "
                                       "has room left. Fix: raise max_nodes of a pool or lower min_replicas")
            cost, n, parts = best
            new = replica_gpus(m, parts)
            if fits_nodes(problem, gpus + new):  # GPUs are counted per pool; the replicas must fit its nodes too
                break
            full |= {p.name for p, _ in parts}
        exact += cost
        counts[m.name] = n
        for p, k in parts:
            used[p.name] += k * m.gpus_per_replica
        gpus += new
    problem.multi_counts = counts
    return (gpus, counts, exact), None


def replica_gpus(m: Model, parts: list[tuple[Pool, int]]) -> list[Gpu]:
    """A multi-GPU model's replicas as GPUs, numbered across its parts (an on-demand pool's, then
    a spot pool's)."""
    gpus: list[Gpu] = []
    for p, k in parts:
        gpus += [Gpu(p, [], None, multi=(m, len(gpus) + i), width=m.gpus_per_replica) for i in range(k)]
    return gpus


def _multi_jointly(problem: Problem, models: list) -> tuple[list[Gpu], dict[str, int], float] | None:
    """Every multi-GPU model's pools chosen at once (:func:`choose_pools`) where no order of
    :func:`_multi_in_order` placed them: the fuzzed fleet mg-999 has four models that only its
    A100 nodes hold and two that fit its L4s too; every order put one of the two on the cheaper
    A100s first and left no node for the others."""
    choices = {m.name: multi_options(problem, m, multi_replicas, splits=JOINT_SPLITS) for m in models}
    options = {name: [(cost, [(p.name, k, problem.fleet.model(name).gpus_per_replica) for p, k in parts if k])
                      for cost, _, parts in opts] for name, opts in choices.items()}
    chosen, _ = choose_pools(problem, options, MULTI_S)
    if chosen is None:
        return None
    gpus: list[Gpu] = []
    counts: dict[str, int] = {}
    exact = 0.0
    for m in models:
        cost, n, parts = choices[m.name][chosen[m.name]]
        gpus += replica_gpus(m, parts)
        counts[m.name] = n
        exact += cost
    if not fits_nodes(problem, gpus):
        return None
    problem.multi_counts = counts
    return gpus, counts, exact


def choose_pools(problem: Problem, options: dict[str, list[Option]], seconds: float
                 ) -> tuple[dict[str, int] | None, str]:
    """One option per model (its index), at least cost, within every pool's GPUs and, for
    replicas of more than one GPU, its nodes: (choice, "optimal" or "feasible"), or (None,
    "infeasible") when no choice fits, (None, "unknown") when none was found in ``seconds``
    (deterministic).

    Replicas of one GPU fit any GPU left, so a pool's GPU count is their only limit; a wider
    replica needs that many GPUs of one node, so each pool's nodes are a bin packing (node loads
    in decreasing order, which loses no packing, as the nodes are alike)."""
    cp = cp_model.CpModel()
    x = {(name, i): cp.new_bool_var(f"{name}:{i}") for name, opts in options.items() for i in range(len(opts))}
    for name, opts in options.items():
        cp.add_exactly_one(x[name, i] for i in range(len(opts)))
    for pool in problem.fleet.pools:
        gpus, wide = [], defaultdict(list)  # wide: per model, (replicas, width) terms in this pool
        for name, opts in options.items():
            for i, (_, parts) in enumerate(opts):
                for where, k, width in parts:
                    if where == pool.name:
                        gpus.append(k * width * x[name, i])
                        if width > 1:
                            wide[name, width].append((k, x[name, i]))
        if not gpus:
            continue
        cp.add(sum(gpus) <= pool.max_gpus)
        if not wide:
            continue
        most = sum(max(k for k, _ in terms) for terms in wide.values())
        nodes = min(pool.max_nodes, most)
        load = []
        on = {key: [cp.new_int_var(0, pool.gpus_per_node // key[1], f"b[{key[0]},{pool.name},{j}]")
                    for j in range(nodes)] for key in wide}
        for key, terms in wide.items():
            cp.add(sum(on[key]) == sum(k * v for k, v in terms))
        for j in range(nodes):
            load.append(sum(key[1] * on[key][j] for key in wide))
            cp.add(load[j] <= pool.gpus_per_node)
        for j in range(nodes - 1):
            cp.add(load[j] >= load[j + 1])
    cp.minimize(sum(round(opts[i][0] * 10_000) * x[name, i] for name, opts in options.items()
                    for i in range(len(opts))))
    solver = cp_model.CpSolver()
    solver.parameters.num_workers = 1
    solver.parameters.max_deterministic_time = seconds
    status = solver.solve(cp)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return None, "infeasible" if status == cp_model.INFEASIBLE else "unknown"
    choice = {name: next(i for i in range(len(opts)) if solver.value(x[name, i])) for name, opts in options.items()}
    return choice, "optimal" if status == cp_model.OPTIMAL else "feasible"
