"""The search's parts: multi-start greedy orders and the LNS's emptying windows."""

from __future__ import annotations

import math
import time
from types import SimpleNamespace

import pytest

from packer_cli.plan import example_path
from packer.fleetfile import load_fleet, parse_fleet
from packer.planner.assemble import Gpu
from packer.planner.build import cost_of, gpu_counts
from packer.planner.cpsat import solve_window
from packer.planner.greedy import NoRoom, choose_counts, orderings, pack, reps_for
from packer.planner import model
from packer.planner.model import PlanSettings, Problem, Rep, Slot, allowed
from packer.planner.solve import _lns, _relocating_window, _spread, consolidate, multi_start, plan_fleet, plan_multi
from packer.planner.assemble import to_gpus

EXAMPLES = example_path().parent


def _problem(name: str) -> Problem:
    problem = Problem(load_fleet(EXAMPLES / f"{name}.yaml"), PlanSettings())
    plan_multi(problem)
    return problem


def test_orderings_are_reproducible_and_start_with_largest_first():
    problem = _problem("long-tail")
    reps = reps_for(problem, choose_counts(problem))
    a = orderings(problem, reps, 6, seed=3)
    b = orderings(problem, reps, 6, seed=3)
    c = orderings(problem, reps, 6, seed=4)
    assert len(a) == 6 and a[0] is None
    seq = lambda order: [(r.model.name, r.index) for r in sorted(reps, key=order)]  # noqa: E731
    assert [seq(o) for o in a[1:]] == [seq(o) for o in b[1:]]
    assert seq(a[-1]) != seq(c[-1])  # the noisy orders follow the seed


def test_multi_start_packs_long_tail_tighter_than_largest_first():
    # Largest-first mixes 100 ms and 300 ms models in one slot, shortening everyone's cycle;
    # inserting by duty-cycle class keeps them apart: 34 L4s (27.20/h) against 36 (28.80/h).
    problem = _problem("long-tail")
    reps = reps_for(problem, choose_counts(problem))
    far = time.monotonic() + 600
    plain = consolidate(problem, to_gpus(problem, pack(problem, reps)), far)
    best = multi_start(problem, reps, {}, time.monotonic(), far)
    plain_cost = cost_of(problem, gpu_counts(problem, plain))
    best_cost = cost_of(problem, gpu_counts(problem, best))
    assert best_cost <= plain_cost + 1e-9
    placed = sorted((r.model.name, r.index) for g in best for s in g.slots for r in s.reps)
    assert placed == sorted((r.model.name, r.index) for r in reps)


def test_how_many_greedy_starts_run_does_not_depend_on_the_clock(monkeypatch: pytest.MonkeyPatch):
    """Counted work ends the starts, not the wall clock (which guards at twice the share): a
    machine busy enough that 60 % of the span has gone by after the first start gets the same
    packing as an idle one. The wall clock used to end them at 40 %, so a busier machine ran fewer
    starts and got another plan."""
    import packer.planner.solve as solve

    problem = _problem("long-tail")
    reps = reps_for(problem, choose_counts(problem))
    shape = lambda gs: sorted(sorted((r.model.name, r.index) for s in g.slots for r in s.reps) for g in gs)  # noqa: E731
    packed = {}
    for now in (100.0, 106.0):  # the span runs from 100 to 110
        monkeypatch.setattr(solve.time, "monotonic", lambda now=now: now)
        packed[now] = shape(multi_start(problem, reps, {}, 100.0, 110.0))
    assert packed[100.0] == packed[106.0]


def test_emptying_window_moves_load_onto_fewer_gpus_at_equal_cost():
    # Four idle models of 10, 6, 6 and 6 GB need two 22.5 GB L4s. Split 16 + 12 GB, neither GPU
    # can go; 22 + 6 GB leaves one nearly empty for a later window to drop.
    doc = {"name": "four", "pools": [{"name": "l4", "gpu": "l4-24gb", "gpus_per_node": 4, "max_nodes": 1,
                                      "cost_per_gpu_hour": 0.8, "sharing": ["time-slicing"]}],
           "models": [{"name": n, "kind": "streaming", "memory_gb": mem, "traffic": {"rps": 0.5, "peak_rps": 1},
                       "slo_ms": 500, "latency_ms": {"gpu": "l4-24gb", "base": 5, "per_item": 1},
                       "max_batch": 8, "min_replicas": 1}
                      for n, mem in [("a", 10), ("b", 6), ("c", 6), ("d", 6)]]}
    problem = Problem(parse_fleet(doc), PlanSettings())
    st = problem.types["l4"][0]
    model = problem.fleet.model
    hint = [Gpu(st.pool, [Slot(st, [Rep(model("a"), 0, 1), Rep(model("b"), 0, 1)])]),
            Gpu(st.pool, [Slot(st, [Rep(model("c"), 0, 1), Rep(model("d"), 0, 1)])])]
    free = {n: [1] for n in "abcd"}
    res = solve_window(problem, free_models=free, fixed_reps=[], gpu_limit={"l4": 2}, hint=hint,
                       upper_cost=1.6, time_limit=5, seed=0, concentrate=True)
    assert res is not None
    gpus, cost, _ = res
    assert cost == pytest.approx(1.6)
    mems = sorted(sum(r.model.memory_gb for s in g.slots for r in s.reps) for g in gpus)
    assert mems == [6, 22]
    assert _spread(problem, gpus) > _spread(problem, hint)
    # Without it, the same window must cost less than the hint or give nothing.
    assert solve_window(problem, free_models=free, fixed_reps=[], gpu_limit={"l4": 2}, hint=hint,
                        upper_cost=1.6, time_limit=5, seed=0) is None


def test_a_dear_gpus_replicas_move_onto_a_cheaper_pools_free_gpus():
    """A whole A100 (3.67/h) holding three small models whose replicas fit two of the L4 pool's
    free GPUs (1.60/h): no emptying window (its own pool) nor pair window (two half-used GPUs)
    tries that first; the relocating window does, and one window is all the budget allows."""
    doc = {"name": "dear", "pools": [
        {"name": "a100", "gpu": "a100-40gb", "gpus_per_node": 1, "max_nodes": 2, "cost_per_gpu_hour": 3.67,
         "sharing": ["time-slicing"]},
        {"name": "l4", "gpu": "l4-24gb", "gpus_per_node": 4, "max_nodes": 1, "cost_per_gpu_hour": 0.8,
         "sharing": ["time-slicing"]}],
        "models": [{"name": n, "kind": "streaming", "memory_gb": mem, "traffic": {"rps": 0.5, "peak_rps": 1},
                    "slo_ms": 500, "latency_ms": {"gpu": "l4-24gb", "base": 5, "per_item": 1},
                    "max_batch": 8, "min_replicas": 1}
                   for n, mem in [("a", 10), ("b", 8), ("c", 12), ("d", 20), ("e", 20)]]}
    problem = Problem(parse_fleet(doc), PlanSettings())
    a100, l4 = problem.types["a100"][0], problem.types["l4"][0]
    model = problem.fleet.model
    start = [Gpu(a100.pool, [Slot(a100, [Rep(model(n), 0, 1) for n in "abc"])])] + [
        Gpu(l4.pool, [Slot(l4, [Rep(model(n), 0, 1)])]) for n in "de"]
    limit = {"a100": 2, "l4": 4}
    assert _relocating_window(problem, start, limit, set(), {}) == [start[0]]
    assert _relocating_window(problem, start, {"a100": 2, "l4": 2}, set(), {}) is None  # no L4 free
    after = _lns(problem, start, limit, budget=0.02, guard=time.monotonic() + 30, progress=None)
    assert {g.pool.name for g in after} == {"l4"}
    assert sum(g.pool.cost_per_gpu_hour for g in after) == pytest.approx(3.2)


def test_swaps_spread_replicas_the_node_filling_left_together():
    from packer.planner.assemble import _spread_by_swaps, assign_nodes

    # Two nodes of two L4s. a and b need two nodes each; a's replicas both landed on node 0.
    doc = {"name": "spread", "pools": [{"name": "l4", "gpu": "l4-24gb", "gpus_per_node": 2, "max_nodes": 2,
                                        "cost_per_gpu_hour": 0.8, "sharing": ["time-slicing"]}],
           "models": [{"name": n, "kind": "streaming", "memory_gb": 1, "traffic": {"rps": 1, "peak_rps": 1},
                       "slo_ms": 500, "latency_ms": {"gpu": "l4-24gb", "base": 5, "per_item": 1},
                       "max_batch": 8, "min_replicas": k} for n, k in [("a", 2), ("b", 2), ("c", 1)]]}
    problem = Problem(parse_fleet(doc), PlanSettings())
    st = problem.types["l4"][0]
    m = problem.fleet.model

    def gpu(node: int, index: int, *names_idx: tuple[str, int]) -> Gpu:
        reps = [Rep(m(n), i, 2 if n != "c" else 1) for n, i in names_idx]
        return Gpu(st.pool, [Slot(st, reps)], node=node, index=index)

    gpus = [gpu(0, 0, ("a", 0), ("b", 0)), gpu(0, 1, ("a", 1)), gpu(1, 0, ("b", 1)), gpu(1, 1, ("c", 0))]
    _spread_by_swaps(problem, gpus)
    nodes = lambda name: {g.node for g in gpus if name in g.models()}  # noqa: E731
    assert nodes("a") == {0, 1} and nodes("b") == {0, 1}
    assert sorted((g.node, g.index) for g in gpus) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    # and assign_nodes, whose node filling came first, warns of nothing left unspread
    assert assign_nodes(problem, gpus) == []


def _apart_fleet(min_replicas: dict[str, int]) -> dict:
    """A one-node pool of two L4s at 0.8/h and a dearer pool of one-GPU nodes (1.6/h), and small
    streaming models with these ``min_replicas``: the spread rule's smallest case."""
    pool = {"gpu": "l4-24gb", "sharing": ["time-slicing"]}
    return {"name": "apart", "pools": [dict(pool, name="one", gpus_per_node=2, max_nodes=1, cost_per_gpu_hour=0.8),
                                       dict(pool, name="many", gpus_per_node=1, max_nodes=4, cost_per_gpu_hour=1.6)],
            "models": [{"name": n, "kind": "streaming", "memory_gb": 1, "traffic": {"rps": 1, "peak_rps": 2},
                        "slo_ms": 500, "latency_ms": {"gpu": "l4-24gb", "base": 5, "per_item": 1},
                        "max_batch": 8, "min_replicas": k} for n, k in min_replicas.items()]}


def test_the_greedy_keeps_a_last_replica_off_the_one_node_pool_holding_the_others(monkeypatch: pytest.MonkeyPatch):
    """The greedy baseline obeys the plan's spread rule (issue 14: one set of rules): x's second
    replica goes to the dearer pool, not beside the first on the one-node pool, where another
    pool holds it; where none does, the spread gives way rather than the fleet."""
    from packer.planner import greedy

    doc = _apart_fleet({"x": 2})
    problem = Problem(parse_fleet(doc), PlanSettings())

    def pools() -> list[str]:
        slots = pack(problem, reps_for(problem, {"x": 2}))
        return sorted(sl.type.pool.name for sl in slots)

    assert pools() == ["many", "one"]
    monkeypatch.setattr(greedy, "_lone_pool", lambda *a: None)
    assert pools() == ["one", "one"]
    monkeypatch.undo()
    # No other pool: both stay on the one node rather than the fleet being refused.
    doc["pools"] = doc["pools"][:1]
    problem = Problem(parse_fleet(doc), PlanSettings())
    assert pools() == ["one", "one"]


def test_a_plan_keeps_the_spread_rule_from_its_first_packing_and_says_what_it_costs():
    """x (min_replicas 2) on a one-node pool and a dearer one: the greedy spreads it, the starts'
    consolidation used to undo that (1.6/h, both on the one node), and every later stage keeps
    the rule. The plan is 2.4/h, optimal over the plans that keep it, and names where the rule
    binds: a found packing that breaks it and what it saves, or, where the pattern LP with the
    rule's rows proves the plan before any stage makes one, the model and pool whose row binds."""
    doc = _apart_fleet({"x": 2, "y": 1, "z": 1})
    from packer.planner import plan_fleet

    plan = plan_fleet(parse_fleet(doc))
    assert plan.cost_per_hour == pytest.approx(2.4) and plan.status == "optimal"
    assert "spread rule" in plan.bound_method
    assert not [w for w in plan.warnings if "fewer than min_replicas" in w]
    assert any(w.startswith("spread:") and ("0.80/h cheaper" in w or "binds for x on pool one" in w)
               for w in plan.warnings)


def test_the_pattern_lps_spread_rows_bound_the_plans_that_keep_the_rule():
    """family-3800121-multilingual-32's bound, 39.27/h, was a plan with both replicas of two ASR
    models on its one A100 node, which the planner does not make: the plan cost 52.36/h (gap
    25 %). With the spread rule's rows (``Patterns.apart``: at most n - 1 of a min_replicas >= 2
    model's n replicas on a pool of one node) the LP is over the plans that keep the rule, and
    its columns make one (39.27/h, proven). Here every plan that keeps x apart costs 2.4/h and
    the one that does not 1.6/h: the LP without the rows stays at 1.6, with them it is 2.4 and
    names the row that binds."""
    from packer.planner.patterns import pattern_bound

    doc = _apart_fleet({"x": 2, "y": 1, "z": 1})
    every = pattern_bound(Problem(parse_fleet(doc), PlanSettings()), 2.0)
    kept = pattern_bound(Problem(parse_fleet(doc), PlanSettings()), 2.0, apart=True)
    assert every.value == pytest.approx(1.6) and not every.patterns.apart_rows
    assert kept.value == pytest.approx(2.4) and kept.patterns.apart_binding() == ["x on pool one"]
    # No row for a model no other pool holds (every plan has its replicas on the one node), nor
    # for one that may have one replica (min_replicas 1).
    doc["pools"] = doc["pools"][:1]
    assert not pattern_bound(Problem(parse_fleet(doc), PlanSettings()), 2.0, apart=True).patterns.apart_rows
    alone = pattern_bound(Problem(parse_fleet(_apart_fleet({"x": 1, "y": 1, "z": 1})), PlanSettings()), 2.0,
                          apart=True)
    assert not alone.patterns.apart_rows


def test_a_fleet_whose_bound_broke_the_spread_rule_is_planned_at_it_and_proven():
    """The member that showed it (seed 38's sample): both replicas of two ASR models fit the
    one A100 node, a plan the planner refuses. Planned at 52.36/h against that 39.27/h before;
    the columns now keep the rule too, and their packing is 39.27/h, proven over the plans that
    keep it, with every min_replicas-2 model on two nodes."""
    from bench.family import family_fleet
    from packer.check import check_plan
    from packer.planner import plan_fleet

    doc = family_fleet(3800121, max_models=2000)
    assert doc["name"] == "family-3800121-multilingual-32"
    plan = plan_fleet(parse_fleet(doc))
    assert check_plan(plan) == []
    assert plan.cost_per_hour == pytest.approx(39.27) and plan.status == "optimal"
    assert "spread rule" in plan.bound_method
    nodes: dict[str, set[str]] = {}
    for p in plan.placements:
        for member in p.models:
            nodes.setdefault(member.name, set()).add(p.node)
    apart = [m.name for m in plan.fleet.models if m.min_replicas >= 2]
    assert apart and all(len(nodes[name]) >= 2 for name in apart)


def test_a_window_never_buys_its_saving_with_replicas_on_one_node(monkeypatch: pytest.MonkeyPatch):
    """The one spread rule (``solve._spread_kept``) holds in the LNS windows too: x (min_replicas 2)
    has a replica on the one-node pool and one on the dearer pool; the only cheaper packing puts
    both on the one node, which the windows used to take."""
    import time as _time

    from packer.planner import solve
    from packer.planner.assemble import assign_nodes

    doc = _apart_fleet({"x": 2, "y": 1, "z": 1})
    problem = Problem(parse_fleet(doc), PlanSettings())
    m = problem.fleet.model
    one, many = problem.types["one"][0], problem.types["many"][0]

    def start() -> list[Gpu]:
        return [Gpu(one.pool, [Slot(one, [Rep(m("x"), 0, 2), Rep(m("y"), 0, 1)])]),
                Gpu(many.pool, [Slot(many, [Rep(m("x"), 1, 2), Rep(m("z"), 0, 1)])])]

    limit = {"one": 2, "many": 4}

    def search() -> list[Gpu]:
        return solve._lns(problem, start(), limit, 3.0, _time.monotonic() + 30, None)

    assert assign_nodes(problem, start()) == []
    kept = search()
    assert cost_of(problem, gpu_counts(problem, kept)) == pytest.approx(2.4)
    assert assign_nodes(problem, kept) == []
    # The plan says what the spread costs, and which pool's one node the cheaper packing used.
    assert problem.unspread == (pytest.approx(1.6), ["x on pool one"])
    (note,) = solve._spread_cost(problem, kept)
    assert "0.80/h cheaper" in note and "x on pool one" in note
    # Without the rule the windows take the cheaper packing, and the plan would warn.
    monkeypatch.setattr(solve, "_one_node", lambda problem, gpus: [])
    taken = search()
    assert cost_of(problem, gpu_counts(problem, taken)) == pytest.approx(1.6)
    assert any("fewer than min_replicas" in w for w in assign_nodes(problem, taken))


def test_priced_packing_leaves_the_a100_to_models_that_fit_nowhere_else():
    # 30 GB models fit only the A100 (79.1 GB usable); 20 GB ones fit an L4 (22.5 GB) too.
    # In the order big1, mid1, mid2, big2, plain best fit puts both mids beside big1 (70 GB) and
    # big2 needs a second A100: 8.20/h. Priced, a mid takes a fresh L4 (0.80 x 20/22.5 = 0.71)
    # rather than a quarter of the A100 (4.10 x 20/79.1 = 1.04): 4.10 + 2 x 0.80 = 5.70/h.
    def pool(name: str, gpu: str, cost: float) -> dict:
        return {"name": name, "gpu": gpu, "gpus_per_node": 4, "max_nodes": 1, "cost_per_gpu_hour": cost,
                "sharing": ["time-slicing"]}

    doc = {"name": "priced", "pools": [pool("a100", "a100-80gb", 4.1), pool("l4", "l4-24gb", 0.8)],
           "models": [{"name": n, "kind": "streaming", "memory_gb": mem, "traffic": {"rps": 0.5, "peak_rps": 1},
                       "slo_ms": 500, "latency_ms": {"gpu": "a100-80gb", "base": 2, "per_item": 0.5},
                       "max_batch": 8, "min_replicas": 1}
                      for n, mem in [("big1", 30), ("mid1", 20), ("mid2", 20), ("big2", 30)]]}
    problem = Problem(parse_fleet(doc), PlanSettings())
    reps = reps_for(problem, choose_counts(problem))
    rank = {"big1": 0, "mid1": 1, "mid2": 2, "big2": 3}
    order = lambda r: (rank[r.model.name], r.index)  # noqa: E731

    def packed(priced: bool) -> tuple[float, dict[str, list[str]]]:
        gpus = to_gpus(problem, pack(problem, reps, order=order, priced=priced))
        where = {g.pool.name: sorted(r.model.name for g2 in gpus if g2.pool is g.pool for s in g2.slots
                                     for r in s.reps) for g in gpus}
        return cost_of(problem, gpu_counts(problem, gpus)), where

    assert packed(False) == (pytest.approx(8.2), {"a100": ["big1", "big2", "mid1", "mid2"]})
    assert packed(True) == (pytest.approx(5.7), {"a100": ["big1", "big2"], "l4": ["mid1", "mid2"]})


def test_a_start_that_runs_out_of_gpus_does_not_sink_the_fleet():
    # Two H100s and two L4s (no time-slicing). The priced largest-first start opens slots more
    # readily and runs out of GPUs for m0's second replica; the plain start fits everything.
    # (A review found the planner refusing this fleet when any largest-first start failed.)
    def model(name: str, kind: str, mem: float, rps: float, slo: int, base: float, per: float, mr: int) -> dict:
        return {"name": name, "kind": kind, "memory_gb": mem, "traffic": {"rps": rps, "peak_rps": rps},
                "slo_ms": slo, "latency_ms": {"gpu": "a100-80gb", "base": base, "per_item": per},
                "max_batch": 128 if name != "m1" else 32, "min_replicas": mr}

    doc = {"name": "small-pools",
           "pools": [{"name": "mig", "gpu": "h100-80gb", "gpus_per_node": 2, "max_nodes": 1, "cost_per_gpu_hour": 4.1,
                      "sharing": ["mig", "time-slicing"]},
                     {"name": "l4", "gpu": "l4-24gb", "gpus_per_node": 2, "max_nodes": 1, "cost_per_gpu_hour": 0.8,
                      "sharing": []}],
           "models": [model("m0", "batch", 16.9, 14.0, 5000, 701, 0.47, 2),
                      model("m1", "streaming", 2.7, 227.2, 200, 16, 1.06, 1),
                      model("m2", "streaming", 6.3, 38.4, 100, 30, 0.36, 1),
                      model("m3", "streaming", 18.0, 187.8, 500, 34, 0.82, 1)]}
    problem = Problem(parse_fleet(doc), PlanSettings())
    multi, _, _ = plan_multi(problem)
    reps = reps_for(problem, choose_counts(problem))
    try:  # under the slot maths of the review this start ran out of GPUs; whether or not it does,
        pack(problem, reps, priced=True)  # the multi-start must place everything
    except NoRoom:
        pass
    far = time.monotonic() + 600
    best = multi_start(problem, reps, {}, time.monotonic(), far)
    placed = sorted((r.model.name, r.index) for g in best for s in g.slots for r in s.reps)
    assert placed == sorted((r.model.name, r.index) for r in reps)


# Found under the duty cycle's maths alone: conftest.duty_cycle_only.
def test_the_sequential_fill_packs_every_replica_validly_and_beats_the_dive_where_the_lp_is_fractional(duty_cycle_only) -> None:
    """family-2-mixed-35 (H100 and L4 pools): its pattern LP converges in a fraction of a second
    and spreads models over many columns, so the dive's rounded-up columns duplicate replicas
    (285.72/h); filling one slot at a time by the duals packs 243.20/h. The packing must hold every
    replica of one count per model, once, one replica of a model per GPU, in slots the slot maths
    admits, within the pools."""
    from bench.family import family_fleet
    from packer.planner import colplan
    from packer.planner.patterns import pattern_bound

    problem = Problem(parse_fleet(family_fleet(2, max_models=120, min_models=30)), PlanSettings())
    found = pattern_bound(problem, 20.0)
    assert found is not None and found.converged and found.patterns is not None
    pat = found.patterns
    gpus = colplan.sequential(problem, pat, {}, 3.0, float("inf"))
    assert gpus is not None
    _holds_every_replica_once(problem, gpus)
    dive = colplan.dive(problem, pat, {}, 3.0, float("inf"))
    assert dive is not None
    assert cost_of(problem, gpu_counts(problem, gpus)) < 0.9 * cost_of(problem, gpu_counts(problem, dive))


def _holds_every_replica_once(problem: Problem, gpus: list[Gpu]) -> None:
    """A packing's invariants: every shared model at one count, each replica once, one replica of
    a model per GPU, groups the slot maths admits, within the pools."""
    from packer.slot import feasible

    placed: dict[str, list[Rep]] = {}
    for g in gpus:
        assert len(g.models()) == sum(len(sl.reps) for sl in g.slots)
        for sl in g.slots:
            assert feasible([problem.item(r, sl.type) for r in sl.reps], sl.type.memory_gb, problem.u)
            for r in sl.reps:
                placed.setdefault(r.model.name, []).append(r)
    assert set(placed) == {m.name for m in problem.shared_models}
    for reps in placed.values():
        assert sorted(r.index for r in reps) == list(range(reps[0].count))
    for pool, n in gpu_counts(problem, gpus).items():
        assert n <= problem.fleet.pool(pool).max_gpus


def _columns(seed: int, max_models: int):
    from bench.family import family_fleet
    from packer.planner.patterns import pattern_bound

    problem = Problem(parse_fleet(family_fleet(seed, max_models=max_models)), PlanSettings())
    choose_counts(problem)
    found = pattern_bound(problem, 20.0)
    assert found is not None and found.converged and found.patterns is not None
    return problem, found


# Found under the duty cycle's maths alone: conftest.duty_cycle_only.
def test_the_integer_master_puts_its_mig_slots_on_the_fewest_gpus_where_first_fit_opens_more(duty_cycle_only, monkeypatch) -> None:
    """family-300020-multilingual-40 (A100-80 MIG and L4 pools): the master's whole columns cost
    38.35/h, 2 % over the pattern LP; first fit put their MIG slots on more A100s than the master
    paid for, and the packing cost 43.38/h. CP-SAT's dealing (``colplan.DEAL_FEWEST_S``) holds
    them in the GPUs paid for."""
    from packer.planner import assemble, colplan

    problem, found = _columns(300020, 60)
    gpus = colplan.integer_master(problem, found.patterns, {}, 5.0, math.inf)
    assert gpus is not None
    _holds_every_replica_once(problem, gpus)
    cost = cost_of(problem, gpu_counts(problem, gpus))
    assert cost <= 1.03 * found.value
    monkeypatch.setattr(assemble, "FEWEST_CELLS", 0)  # first fit only
    first = colplan.integer_master(problem, found.patterns, {}, 5.0, math.inf)
    assert first is not None and cost < 0.95 * cost_of(problem, gpu_counts(problem, first))


def test_the_same_mig_slots_are_put_on_the_fewest_gpus_once(duty_cycle_only, monkeypatch) -> None:
    """CP-SAT's dealing (``assemble.fewest_gpus``) is deterministic, so the same slots asked again
    are looked up (``Problem.fewest``): the same GPUs, layouts and offsets, one CP-SAT solve, where
    the dives and the master dealt the same slots twice (family-3800115-mixed-41: 2.6 s each)."""
    from packer.planner import assemble, colplan

    problem, found = _columns(300020, 60)
    calls: list[int] = []
    real = assemble._fewest_mig
    monkeypatch.setattr(assemble, "_fewest_mig", lambda *a: (calls.append(1), real(*a))[1])
    first = colplan.integer_master(problem, found.patterns, {}, 5.0, math.inf)
    solved = len(calls)
    assert first is not None and solved >= 1
    again = colplan.integer_master(problem, found.patterns, {}, 5.0, math.inf)
    assert len(calls) == solved

    def shape(gpus):
        return sorted((g.pool.name, g.layout.name if g.layout else "",
                       tuple(sorted((s.type.profile, s.start, tuple(r.model.name for r in s.reps)) for s in g.slots)))
                      for g in gpus)

    assert shape(again) == shape(first)
    problem.fewest.clear()
    fresh = colplan.integer_master(problem, found.patterns, {}, 5.0, math.inf)
    assert len(calls) == 2 * solved and shape(fresh) == shape(first)


# Found before lone replicas' batches were capped: conftest.uncapped.
def test_the_integer_master_solves_again_with_one_replica_of_a_model_per_mig_gpu_where_its_choice_dealt_dearer(
        monkeypatch, uncapped) -> None:
    """family-4-mixed-33 (L40S, and H200 MIG): the master chose 75.56/h of columns with two
    replicas of a model in one H200's slots, which dealt onto a second H200 (83.80/h). Solved again
    with a model's MIG replicas at most the pool's MIG GPUs (``_master(spread=True)``), it deals at
    75.56/h. It keeps at most ``MASTER_COLUMNS`` of the 2,300 columns, those of least reduced cost."""
    from packer.planner import colplan

    problem, found = _columns(4, 500)
    assert len(found.patterns.columns) > colplan.MASTER_COLUMNS
    gpus = colplan.integer_master(problem, found.patterns, {}, 5.0, math.inf)
    assert gpus is not None
    _holds_every_replica_once(problem, gpus)
    cost = cost_of(problem, gpu_counts(problem, gpus))
    master = colplan._master
    monkeypatch.setattr(colplan, "_master", lambda *a, **k: master(*a, **{**k, "spread": False}))
    once = colplan.integer_master(problem, found.patterns, {}, 5.0, math.inf)
    assert once is not None and cost < 0.95 * cost_of(problem, gpu_counts(problem, once))


def test_the_fill_finishes_its_first_pass_where_its_share_is_for_the_passes_after(monkeypatch) -> None:
    """The fill's later passes only perturb the first; the first is the packing. Given a share
    too small for one pass (30 % of the time, where a pass takes 50 %), the fill still packs every
    replica, with the whole time as its first pass's limit (``FIRST_PASS_SHARE``); with the
    share as that limit too, as before, it returns nothing. The shares are counted work; the
    wall-clock guard (``DIVE_GUARD`` times a limit of a few milliseconds) is set out of the way, or
    a pass slowed by a busy machine ends the fill (it failed so once in a full suite, and passes
    alone)."""
    import numpy as np

    from bench.family import family_fleet
    from packer.planner import colplan
    from packer.planner.patterns import pattern_bound

    monkeypatch.setattr(colplan, "DIVE_GUARD", 1e6)

    problem = Problem(parse_fleet(family_fleet(2, max_models=120, min_models=30)), PlanSettings())

    def columns():
        found = pattern_bound(problem, 20.0)
        assert found is not None and found.converged and found.patterns is not None
        return found.patterns

    pat = columns()
    counts = {name: pat.reps[max(ks, key=lambda k: pat.shares[k])][1] for name, ks in pat.model_reps.items()}
    types = {key: ti.st for key, ti in pat.types.items()}
    before = pat.work
    one = colplan._fill_by_value(problem, pat, counts, np.maximum(pat.duals[0][:len(pat.reps)], 1e-4), types, {},
                                 math.inf, math.inf)
    assert one and one is not colplan._OUT_OF_TIME
    per_pass = pat.work - before
    limit = per_pass / (2 * colplan.SEQUENTIAL_SHARE)
    assert colplan.sequential(problem, columns(), {}, limit, math.inf) is not None
    monkeypatch.setattr(colplan, "FIRST_PASS_SHARE", colplan.SEQUENTIAL_SHARE)
    assert colplan.sequential(problem, columns(), {}, limit, math.inf) is None


def test_the_fills_passes_are_its_counts_not_the_dealings_clock(monkeypatch) -> None:
    """The fill's passes end at its counted share; the clock is a guard for a much slower machine.
    Each pass's dealing (``_deal``: CP-SAT to its own deterministic limit) is outside the count, so
    its wall clock does not use up the guard (up to the guard once more): on long-tail's MIG pools
    it took 1.8 s of a 3.2-s guard, the 106.43/h pass came at 2.8 s, and a machine 12 % busier
    ended the fill before it (110.10/h). Here a dealing that takes twice the guard over the passes
    leaves the passes as they were with a dealing that takes no time."""
    from bench.family import family_fleet
    from packer.planner import colplan
    from packer.planner.patterns import pattern_bound

    problem = Problem(parse_fleet(family_fleet(2, max_models=120, min_models=30)), PlanSettings())
    found = pattern_bound(problem, 20.0)
    assert found is not None and found.patterns is not None
    pat = found.patterns
    real_fill, real_deal = colplan._fill_by_value, colplan._deal
    passes, ticks, slow = [0], [0.0], [0.0]

    def fill(*args):
        passes[0] += 1
        return real_fill(*args)

    def deal(*args, **kwargs):
        ticks[0] += slow[0]
        return real_deal(*args, **kwargs)

    monkeypatch.setattr(colplan, "_fill_by_value", fill)
    monkeypatch.setattr(colplan, "_deal", deal)
    clock = SimpleNamespace(monotonic=lambda: ticks[0])  # only dealing takes time
    monkeypatch.setattr(colplan, "time", clock)
    monkeypatch.setattr(model, "time", clock)  # where ``Problem.past`` reads it
    work = pat.work
    limit = 0.5  # counted seconds
    first = colplan.sequential(problem, pat, {}, limit, math.inf)
    assert first is not None
    counted = passes[0]
    assert counted >= 4
    guard = colplan.DIVE_GUARD * colplan.SEQUENTIAL_SHARE * limit
    passes[0], slow[0], ticks[0], pat.work = 0, 2 * guard / counted, 0.0, work
    again = colplan.sequential(problem, pat, {}, limit, math.inf)
    assert passes[0] == counted
    assert cost_of(problem, gpu_counts(problem, again)) == pytest.approx(cost_of(problem, gpu_counts(problem, first)))


def test_a_dive_ends_on_its_count_not_the_clock(monkeypatch) -> None:
    """A dive counts its LPs' simplex iterations (``DIVE_WORK``), so where it ends does not hang
    on the machine's load: the same dive, cut at its count, gives up after the same LPs however
    slow the clock runs; and one whose first LP, ``DIVE_FIRST_TIMES`` over, passes the count does
    not go on past it (generated-2000: 19 s of a cut dive)."""
    from ortools.linear_solver import pywraplp

    from packer.planner import colplan
    from packer.planner.patterns import pattern_bound

    problem = Problem(load_fleet(example_path("multilingual-10.yaml")), PlanSettings())
    choose_counts(problem)
    pat = pattern_bound(problem, 3.0).patterns
    assert pat is not None
    solves: list[int] = []
    real = pywraplp.Solver.Solve

    def counted(self, *args):
        solves.append(self.iterations())
        return real(self, *args)

    monkeypatch.setattr(pywraplp.Solver, "Solve", counted)
    assert colplan.dive(problem, pat, {}, 30.0, math.inf) is not None
    whole = len(solves)
    assert whole > 3
    # A share of a thousandth of the count: cut after the same LPs, whatever the clock says.
    cuts = []
    for slow in (0.0, 0.5):  # an idle clock, and one that runs half a second an LP
        solves.clear()
        ticks = [0.0]

        def clock(ticks=ticks, slow=slow) -> float:
            ticks[0] += slow
            return ticks[0]

        monkeypatch.setattr(colplan, "time", SimpleNamespace(monotonic=clock))
        monkeypatch.setattr(colplan, "DIVE_FIRST_TIMES", 0.0)
        monkeypatch.setattr(colplan, "DIVE_GUARD", 1e9)
        assert colplan.dive(problem, pat, {}, 2e-3 / colplan.DIVE_WORK, math.inf) is None
        cuts.append(len(solves))
    assert cuts[0] == cuts[1] and 1 <= cuts[0] < whole
    monkeypatch.setattr(colplan, "time", time)
    solves.clear()
    monkeypatch.setattr(colplan, "DIVE_FIRST_TIMES", 1e9)
    assert colplan.dive(problem, pat, {}, 30.0, math.inf) is None
    assert len(solves) == 1


def test_a_dive_lp_stops_at_the_iterations_its_count_has_left(monkeypatch) -> None:
    """Each of a dive's LPs gets only the simplex iterations its count has left
    (``colplan._iterations_left``), so one LP GLOP cycles on cannot hang the plan (the Lagrangian's
    GPU part did, for minutes): with a count far below what the first LP needs, GLOP stops at the
    cap, and the dive gives up (None) instead of reading a stopped LP as an infeasible fix."""
    from ortools.linear_solver import pywraplp

    from packer.planner import colplan
    from packer.planner.patterns import pattern_bound

    problem = Problem(load_fleet(example_path("multilingual-10.yaml")), PlanSettings())
    choose_counts(problem)
    pat = pattern_bound(problem, 3.0).patterns
    assert pat is not None
    ran: list[tuple[int, int]] = []
    real = pywraplp.Solver.Solve

    def counted(self, *args):
        status = real(self, *args)
        ran.append((status, self.iterations()))
        return status

    monkeypatch.setattr(pywraplp.Solver, "Solve", counted)
    monkeypatch.setattr(colplan, "DIVE_FIRST_TIMES", 0.0)  # only the count ends it,
    monkeypatch.setattr(colplan, "DIVE_GUARD", 1e9)  # not the clock
    assert colplan.dive(problem, pat, {}, 30.0, math.inf) is not None
    full = ran[0][1]
    assert full > 20
    ran.clear()
    built = colplan._master(problem, pat, {}, math.inf, integer=False, spread=False)
    rows = built[0].NumConstraints()
    size = built[0].NumVariables() + rows
    # A count that leaves the first LP a tenth of its iterations.
    allowed = colplan.DIVE_SOLVE_S * size + colplan.DIVE_ITER_S * rows * full / 10
    cap = colplan._iterations_left(allowed, size, rows)
    assert 1 <= cap < full
    assert colplan.dive(problem, pat, {}, allowed / colplan.DIVE_WORK, math.inf) is None
    assert ran == [(pywraplp.Solver.NOT_SOLVED, cap)]


def test_a_dive_over_part_of_the_columns_covers_every_replica_and_deals_a_valid_packing(monkeypatch) -> None:
    """Past ``DIVE_COLUMNS`` a dive keeps the columns of least reduced cost and each replica's two
    best: every replica class is still in two kept columns (or all of its own), and the packing
    dealt from them holds every replica of the counts it chose."""
    from packer.planner import colplan
    from packer.planner.patterns import pattern_bound

    problem = Problem(load_fleet(example_path("multilingual-10.yaml")), PlanSettings())
    choose_counts(problem)
    pat = pattern_bound(problem, 3.0).patterns
    assert pat is not None and pat.duals is not None and len(pat.columns) > 300
    monkeypatch.setattr(colplan, "DIVE_COLUMNS", 150)
    kept = colplan.kept_columns(pat, colplan.DIVE_COLUMNS)
    assert kept is not None and 150 <= len(kept) < len(pat.columns)
    for k in range(len(pat.reps)):
        mine = [j for j, (_, reps) in enumerate(pat.columns) if k in reps]
        assert sum(1 for j in mine if j in set(kept)) >= min(2, len(mine))
    gpus = colplan.dive(problem, pat, {}, 30.0, float("inf"))
    assert gpus is not None
    counts: dict[str, int] = {}
    for g in gpus:
        for sl in g.slots:
            for r in sl.reps:
                counts[r.model.name] = counts.get(r.model.name, 0) + 1
                assert r.count >= 1
    assert set(counts) == {m.name for m in problem.shared_models}
    # Every replica of the count a model was dealt at, one per GPU.
    assert all(r.count == counts[r.model.name] for g in gpus for sl in g.slots for r in sl.reps)
    assert all(len(g.models()) == sum(len(sl.reps) for sl in g.slots) for g in gpus)


def test_a_dive_whose_slots_need_more_gpus_than_a_pool_has_dives_again_with_one_replica_of_a_model_per_mig_gpu(
        monkeypatch) -> None:
    """The dive's LP counts a pool's MIG slots against its GPUs, where the dealing puts one replica
    of a model on a GPU: in family-3600116-mixed-81's plan both dives ended on slots that took 21
    GPUs of its 20-GPU A100 pool, and their packing was dropped (the plan 261.12/h, its bound
    237.90/h). Where the dealing finds no room, the dive runs again with that rule in its LP
    (``_master(spread=True)``), within what the first left of its count; its packing holds every
    replica once, within the pools."""
    from bench.family import family_fleet
    from packer.planner import colplan, solve

    problem_of: list[Problem] = []
    real_lp, real_dive = colplan._dive_lp, solve.dive
    runs: list[tuple[bool, float, float | None]] = []
    dealt: list[list[Gpu] | None] = []

    def recorded(problem, pat, reserved, columns, share, end, allowed, spread):
        result = real_lp(problem, pat, reserved, columns, share, end, allowed, spread)
        runs.append((spread, allowed, None if result is None else result[2]))
        return result

    def dive(problem, *args, **kw):
        problem_of.append(problem)
        dealt.append(real_dive(problem, *args, **kw))
        return dealt[-1]

    monkeypatch.setattr(colplan, "_dive_lp", recorded)
    monkeypatch.setattr(solve, "dive", dive)
    plan_fleet(parse_fleet(family_fleet(3600116, max_models=500)), PlanSettings())
    assert dealt and len(runs) == 2 * len(dealt)  # every dive's first slots overfilled the pool
    for i, gpus in enumerate(dealt):
        first, again = runs[2 * i], runs[2 * i + 1]
        assert (first[0], again[0]) == (False, True) and first[2] is not None
        assert again[1] == pytest.approx(first[1] - first[2])  # what the first left of the count
        assert gpus is not None
        _holds_every_replica_once(problem_of[i], gpus)


def _consolidate_plainly(problem, gpus):
    """The oracle: the same rule as consolidate, asked afresh every time (no remembered answers)."""
    from packer.planner.assemble import spare_slots
    from packer.planner.model import can_add
    from packer.planner.solve import _fill_of

    def empty(g, gpus):  # move g's replicas elsewhere, largest first; undo and say False if one has no room
        moved = []
        for r in sorted((r for s in g.slots for r in s.reps), key=lambda r: -r.model.memory_gb):
            to = next((s for h in gpus if h is not g and r.model.name not in h.models()
                       for s in h.slots if can_add(problem, s, r)), None)
            if to is None:
                for s, m in moved:
                    s.reps.remove(m)
                return False
            to.reps.append(r)
            moved.append((to, r))
        return True

    gpus = list(gpus)
    spare_slots(problem, gpus)
    while True:
        ranked = sorted(gpus, key=lambda g: (_fill_of(problem, g) - g.pool.cost_per_gpu_hour, g.pool.name))
        gone = next((g for g in ranked if empty(g, gpus)), None)
        if gone is None:
            return gpus
        gpus.remove(gone)


@pytest.mark.parametrize("seed", range(6))
def test_consolidate_remembering_answers_empties_the_same_gpus(seed):
    """Remembering whether a slot takes a model's replica (2,598 GPUs: 85 s -> under 10 s), across
    passes but for the slots an emptied GPU filled, and not trying again a GPU that could not be
    emptied, must not change what consolidation does: the oracle asks everything afresh."""
    from bench.family import family_fleet
    from packer.planner.solve import copy_gpus

    fleet = parse_fleet(family_fleet(seed, max_models=30, shape=["mixed", "long-tail", "multilingual"][seed % 3]))
    problem = Problem(fleet, PlanSettings())
    reserved = gpu_counts(problem, plan_multi(problem)[0])
    start = to_gpus(problem, pack(problem, reps_for(problem, choose_counts(problem)), reserved=reserved))
    shape = lambda gs: [(g.pool.name, [sorted((r.model.name, r.index) for r in s.reps) for s in g.slots]) for g in gs]  # noqa: E731
    assert shape(consolidate(problem, copy_gpus(start), float("inf"))) == shape(_consolidate_plainly(problem, copy_gpus(start)))


def test_consolidation_asks_the_slots_not_known_to_refuse_and_those_just_filled_in_order():
    """Consolidation skips the slots known to refuse a replica (``solve._unknown``): what it asks
    must be every other slot, and every slot just filled whatever was known of it, in order, so
    that the first slot that fits and the work counted are those of asking every slot."""
    import random

    from packer.planner.solve import _unknown

    rng = random.Random(5)
    for _ in range(300):
        n = rng.randrange(0, 40)
        no = bytearray(1 if rng.random() < rng.choice((0.1, 0.5, 0.95)) else 0 for _ in range(n))
        filled = sorted(rng.sample(range(n), rng.randrange(0, min(n, 5) + 1))) if n else []
        assert list(_unknown(no, filled)) == [i for i in range(n) if not no[i] or i in filled]


@pytest.mark.parametrize("seed", range(4))
def test_can_add_from_a_slots_sums_is_the_plain_test(seed):
    """``can_add`` works from the slot's sums (``SlotSums``), which consolidation keeps per slot:
    the answer must be the plain one, from the members' items as ``feasible`` reads them, for
    every slot of a packing and every replica of the fleet (yes and no both asked)."""
    from bench.family import family_fleet
    from packer.planner.assemble import spare_slots
    from packer.planner.model import can_add
    from packer.slot import feasible

    fleet = parse_fleet(family_fleet(seed, max_models=40, shape=["mixed", "long-tail", "multilingual", "llm"][seed]))
    problem = Problem(fleet, PlanSettings())
    reserved = gpu_counts(problem, plan_multi(problem)[0])
    reps = reps_for(problem, choose_counts(problem))
    gpus = to_gpus(problem, pack(problem, reps, reserved=reserved))
    spare_slots(problem, gpus)  # empty MIG instances too, as consolidation asks of them
    for g in gpus[::2]:  # and slots with room: half the GPUs lose their last replica
        for s in g.slots[-1:]:
            del s.reps[-1:]
    answers = []
    for slot in (s for g in gpus for s in g.slots):
        st = slot.type
        for rep in reps:
            kinds = {r.model.kind for r in slot.reps} | {rep.model.kind}
            plain = (rep.model.name not in slot.models() and allowed(rep, st)
                     and (st.pool.time_slicing or len(kinds) == 1)
                     and feasible([problem.item(r, st) for r in slot.reps] + [problem.item(rep, st)], st.memory_gb,
                                  problem.u))
            assert can_add(problem, slot, rep) == plain
            answers.append(plain)
    assert any(answers) and not all(answers)


def test_consolidate_stops_at_its_deadline_between_gpus():
    fleet = load_fleet(example_path())
    problem = Problem(fleet, PlanSettings())
    start = to_gpus(problem, pack(problem, reps_for(problem, choose_counts(problem))))
    assert len(consolidate(problem, start, time.monotonic() - 1)) == len(start)


def test_consolidate_never_moves_a_floor_replica_to_spot_on_a_remembered_answer():
    """Whether a slot takes a model's replica is remembered per (model, count), but on a spot pool
    replicas of one model and count differ: the floor's may not go there. Here the first GPU tried
    asks whether replica 2 of m (spot allowed) fits the spot slot (yes) and cannot be emptied; the
    next holds replica 0 (the floor). Remembering the yes moved it to the spot GPU."""
    lat = {"gpu": "a100-80gb", "base": 5.0, "per_item": 1.0}

    def model(name: str, mem: float, **spot) -> dict:
        return {"name": name, "kind": "batch", "memory_gb": mem, "traffic": {"rps": 0.1, "peak_rps": 0.1},
                "slo_ms": 2000, "latency_ms": lat, "max_batch": 4, **spot}

    def pool(name: str, price: float, **spot) -> dict:
        return {"name": name, "gpu": "a100-80gb", "gpus_per_node": 1, "cost_per_gpu_hour": price,
                "sharing": ["time-slicing"], "max_nodes": 4, **spot}

    only_on_demand = {"spot_policy": "floor", "on_demand_floor": 1.0}
    fleet = parse_fleet({"name": "floor-memo", "pools": [
        pool("od-dear", 4.0), pool("od-cheap", 3.0), pool("sp", 1.5, spot=True, preemption_notice_s=30)],
        "models": [model("m", 40, spot_policy="floor", on_demand_floor=0.5, spot_loss="pool"),
                   model("b", 35, **only_on_demand), model("c", 30), model("d", 5)]})
    problem = Problem(fleet, PlanSettings())
    m, b, c, d = (fleet.model(n) for n in "mbcd")
    types = {t.pool.name: t for t in problem.all_types() if t.pool.time_slicing}
    gpu = lambda pool, *reps: Gpu(fleet.pool(pool), [Slot(types[pool], list(reps))])  # noqa: E731
    spot = gpu("sp", Rep(c, 0, 1))
    first = gpu("od-dear", Rep(m, 2, 4), Rep(b, 0, 1))  # m's replica 2 fits the spot slot; b fits nowhere
    floor = gpu("od-cheap", Rep(m, 0, 4), Rep(d, 0, 1))  # m's replica 0 is the floor
    assert not allowed(Rep(m, 0, 4), types["sp"]) and allowed(Rep(m, 2, 4), types["sp"])
    left = consolidate(problem, [spot, first, floor], float("inf"))
    placed = [(r, s.type) for g in left for s in g.slots for r in s.reps]
    assert all(allowed(r, t) for r, t in placed)
    assert sorted((r.model.name, r.index) for r, _ in placed) == [("b", 0), ("c", 0), ("d", 0), ("m", 0), ("m", 2)]


def test_the_greedy_stage_past_its_share_comes_off_the_search_then_the_bound():
    """The budget holds the greedy stage: counted work past 20 % of the limit comes off the
    search's share first, then the bound's, each keeping half; a small fleet keeps its shares.
    family-100007-mixed-401 spent 6.7 of a 22-s limit there on top of the rest, and took up to 34 s."""
    from packer.planner.solve import _budget, _charge_greedy

    large, small = _problem("long-tail"), _problem("multilingual-meetings")
    for problem, work in ((large, 0.1), (small, 50.0)):  # under the share; a small fleet
        b = _budget(problem.fleet, problem.settings, 0.0)
        shares = (b.bound_s, b.search_s)
        problem.packing_work = work
        _charge_greedy(problem, b)
        assert (b.bound_s, b.search_s) == shares
    b = _budget(large.fleet, large.settings, 0.0)
    bound_s, search_s = b.bound_s, b.search_s
    large.packing_work = 0.2 * b.limit + 0.25 * search_s
    _charge_greedy(large, b)
    assert b.search_s == pytest.approx(0.75 * search_s) and b.bound_s == bound_s
    b = _budget(large.fleet, large.settings, 0.0)
    large.packing_work = 0.2 * b.limit + 0.5 * search_s + 0.1 * bound_s
    _charge_greedy(large, b)
    assert b.search_s == pytest.approx(0.5 * search_s) and b.bound_s == pytest.approx(0.9 * bound_s)
    b = _budget(large.fleet, large.settings, 0.0)
    large.packing_work = 1000.0
    _charge_greedy(large, b)
    assert b.search_s == pytest.approx(0.5 * search_s) and b.bound_s == pytest.approx(0.5 * bound_s)


def test_an_extra_node_within_max_nodes_spreads_what_the_nodes_in_use_cannot() -> None:
    """Four single GPUs on two 8-GPU nodes (of at most four), holding four ``min_replicas: 2``
    models pairwise: a on GPUs 0 and 1, b on 1 and 2, c on 0 and 2, d on 0 and 3. GPU 0 must
    be apart from 1, 2 and 3, and 1 from 2: two nodes cannot spread them all
    (family-500030-multilingual-16's A100s). A third node, which costs no GPU, does; a fourth is
    not opened, and the nodes are numbered from 0."""
    from packer.planner.assemble import _spread_exactly, _spread_warnings

    def model(name: str) -> dict:
        return {"name": name, "kind": "streaming", "memory_gb": 5, "slo_ms": 500, "min_replicas": 2,
                "latency_ms": {"gpu": "h100-80gb", "base": 10, "per_item": 1}, "max_batch": 8, "traffic": {"rps": 1}}

    doc = {"name": "extra-node", "pools": [{"name": "p", "gpu": "h100-80gb", "gpus_per_node": 8, "max_nodes": 4,
                                            "cost_per_gpu_hour": 1.0, "sharing": ["time-slicing"]}],
           "models": [model(n) for n in "abcd"]}
    fleet = parse_fleet(doc)
    problem = Problem(fleet, PlanSettings())
    pool = fleet.pool("p")
    whole = next(st for st in problem.all_types() if st.pool.name == "p")
    held = {0: "acd", 1: "ab", 2: "bc", 3: "d"}
    seen: dict[str, int] = {}
    gpus = []
    for k, names in held.items():
        slot = Slot(whole)
        for n in names:
            slot.reps.append(Rep(fleet.model(n), seen.get(n, 0), 2))
            seen[n] = seen.get(n, 0) + 1
        gpus.append(Gpu(pool, slots=[slot], node=k // 2, index=k % 2))
    assert _spread_warnings(problem, gpus)
    _spread_exactly(problem, gpus)
    assert not _spread_warnings(problem, gpus)
    assert sorted({g.node for g in gpus}) == [0, 1, 2]
    for n in range(3):
        taken = [g.index for g in gpus if g.node == n]
        assert len(taken) == len(set(taken))


def test_nodes_spread_a_model_that_single_gpu_swaps_cannot_where_multi_gpu_replicas_fill_the_nodes() -> None:
    """Three 4-GPU nodes: 3-, 3- and 2-GPU replicas, and two single GPUs of a ``min_replicas: 2``
    model, both on the node of the 2-GPU replica. No swap of equal widths spreads them (the other
    nodes hold only 3-GPU replicas), and the plan said to raise max_nodes (family-900030-llm-40);
    dealing the GPUs to the nodes anew puts one beside a 3-GPU replica."""
    from packer.planner.assemble import _spread_by_swaps, _spread_exactly, _spread_warnings

    doc = {"name": "spread", "pools": [{"name": "p", "gpu": "h100-80gb", "gpus_per_node": 4, "max_nodes": 3,
                                        "cost_per_gpu_hour": 1.0, "sharing": ["time-slicing"]}],
           "models": [{"name": "big", "kind": "batch", "memory_gb": 150, "gpus_per_replica": 3, "slo_ms": 5000,
                       "latency_ms": {"gpu": "h100-80gb", "base": 100, "per_item": 10}, "max_batch": 8, "traffic": {"rps": 1}},
                      {"name": "mid", "kind": "batch", "memory_gb": 100, "gpus_per_replica": 2, "slo_ms": 5000,
                       "latency_ms": {"gpu": "h100-80gb", "base": 100, "per_item": 10}, "max_batch": 8, "traffic": {"rps": 1}},
                      {"name": "m", "kind": "streaming", "memory_gb": 10, "slo_ms": 500, "min_replicas": 2,
                       "latency_ms": {"gpu": "h100-80gb", "base": 10, "per_item": 1}, "max_batch": 8, "traffic": {"rps": 1}}]}
    fleet = parse_fleet(doc)
    problem = Problem(fleet, PlanSettings())
    pool = fleet.pool("p")
    whole = next(st for st in problem.all_types() if st.pool.name == "p")
    m = fleet.model("m")
    singles = []
    for i in range(2):
        slot = Slot(whole)
        slot.reps.append(Rep(m, i, 2))
        singles.append(Gpu(pool, slots=[slot], node=0, index=2 + i))
    gpus = [Gpu(pool, multi=(fleet.model("mid"), 0), width=2, node=0, index=0),
            Gpu(pool, multi=(fleet.model("big"), 0), width=3, node=1, index=0),
            Gpu(pool, multi=(fleet.model("big"), 1), width=3, node=2, index=0)] + singles
    _spread_by_swaps(problem, gpus)
    assert singles[0].node == singles[1].node  # the swaps cannot
    assert _spread_warnings(problem, gpus)
    _spread_exactly(problem, gpus)
    assert singles[0].node != singles[1].node and not _spread_warnings(problem, gpus)
    for n in range(3):  # every node within its GPUs, each GPU index used once
        held = [g for g in gpus if g.node == n]
        taken = [i for g in held for i in range(g.index, g.index + g.width)]
        assert sum(g.width for g in held) <= 4 and len(taken) == len(set(taken)) and max(taken, default=0) < 4


def test_a_pool_too_large_for_one_deal_spreads_on_its_unspread_models_nodes_and_a_few_others(monkeypatch) -> None:
    """A pool past ``SPREAD_VARS`` GPU-and-node pairs is dealt anew only on the nodes of its models
    short of nodes and ``SPREAD_NEAR`` others (family-3500115-mixed-484: 1,975 T4s on 494 nodes,
    one model short, made a model of 980,000 pairs, 13 s and 1.7 GB). Here 159 single GPUs on 40
    4-GPU nodes, a ``min_replicas: 2`` model's three replicas on a 41st, at most 42 nodes, and
    ``SPREAD_VARS`` 2,000 (162 GPUs times 42 nodes is 6,804): the model is spread, no model deals
    more pairs than ``SPREAD_VARS``, and only GPUs of its node and ``SPREAD_NEAR`` others move."""
    from ortools.sat.python import cp_model
    from packer.planner import assemble
    from packer.planner.assemble import _spread_exactly, _spread_warnings

    monkeypatch.setattr(assemble, "SPREAD_VARS", 2_000)
    made = []
    real = cp_model.CpModel.new_bool_var

    def counted(self, name):
        made.append(id(self))
        return real(self, name)
    monkeypatch.setattr(cp_model.CpModel, "new_bool_var", counted)

    def model(name: str, replicas: int) -> dict:
        return {"name": name, "kind": "streaming", "memory_gb": 5, "slo_ms": 500, "min_replicas": replicas,
                "latency_ms": {"gpu": "h100-80gb", "base": 10, "per_item": 1}, "max_batch": 8, "traffic": {"rps": 1}}

    doc = {"name": "large-pool", "pools": [{"name": "p", "gpu": "h100-80gb", "gpus_per_node": 4, "max_nodes": 42,
                                            "cost_per_gpu_hour": 1.0, "sharing": ["time-slicing"]}],
           "models": [model("s", 2)] + [model(f"m{i}", 1) for i in range(159)]}
    fleet = parse_fleet(doc)
    problem = Problem(fleet, PlanSettings())
    pool = fleet.pool("p")
    whole = next(st for st in problem.all_types() if st.pool.name == "p")
    gpus = []
    for k in range(159):
        slot = Slot(whole)
        slot.reps.append(Rep(fleet.model(f"m{k}"), 0, 1))
        gpus.append(Gpu(pool, slots=[slot], node=k // 4, index=k % 4))
    for i in range(3):  # node 40: the three replicas of s
        slot = Slot(whole)
        slot.reps.append(Rep(fleet.model("s"), i, 3))
        gpus.append(Gpu(pool, slots=[slot], node=40, index=i))
    before = {id(g): (g.node, g.index) for g in gpus}
    assert _spread_warnings(problem, gpus)
    _spread_exactly(problem, gpus)
    assert not _spread_warnings(problem, gpus)
    assert max(made.count(m) for m in set(made)) <= 2_000 + 200  # the pairs, and a few per model and node
    moved = {before[id(g)][0] for g in gpus if (g.node, g.index) != before[id(g)]}
    assert len(moved - {40, 41}) <= assemble.SPREAD_NEAR
    for n in {g.node for g in gpus}:
        taken = [g.index for g in gpus if g.node == n]
        assert len(taken) == len(set(taken)) and len(taken) <= 4


def test_past_the_wall_clock_cap_no_packing_step_or_window_runs(monkeypatch) -> None:
    """Past ``PATTERN_FIRST`` models the packing steps from the pattern LP's columns and the LNS
    windows stop at ``WALL_CAP`` times the limit on the wall clock (family-7700261-mixed-497 took
    37 s of a 26-s limit, past issue 14's 30 s): at a cap of 0 none runs, and the plan is the
    start's, sound and no dearer than the greedy baseline; at the default they run. Small fleets
    have no cap (their exact search needs its time)."""
    from bench.family import family_fleet
    from packer.check import check_plan
    from packer.planner import colplan, solve

    fleet = parse_fleet(family_fleet(4, max_models=90, min_models=61, shape="long-tail"))
    assert len(fleet.models) > solve.PATTERN_FIRST
    calls: dict[str, int] = {"windows": 0, "dive LPs": 0}
    real_window = solve.solve_window

    def window(*args, **kw):
        calls["windows"] += 1
        return real_window(*args, **kw)

    real_dive = colplan.dive

    def dive(*args, **kw):
        calls["dive LPs"] += 1 if kw.get("until", math.inf) > time.monotonic() else 0
        return real_dive(*args, **kw)

    monkeypatch.setattr(solve, "solve_window", window)
    monkeypatch.setattr(solve, "dive", dive)
    settings = PlanSettings(time_limit_s=4.0)
    monkeypatch.setattr(solve, "WALL_CAP", 0.0)
    capped = solve.plan_fleet(fleet, settings)
    assert calls == {"windows": 0, "dive LPs": 0}
    assert check_plan(capped) == []
    assert capped.cost_per_hour <= capped.baselines["greedy"].cost_per_hour + 1e-9
    monkeypatch.setattr(solve, "WALL_CAP", 1.12)
    solve.plan_fleet(fleet, settings)
    assert calls["windows"] > 0 and calls["dive LPs"] > 0
    assert math.isinf(solve._budget(parse_fleet(family_fleet(3, max_models=40, shape="long-tail")), settings,
                                    time.monotonic()).wall_end)
