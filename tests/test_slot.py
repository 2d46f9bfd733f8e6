"""Slot maths with worked numbers (the same as docs/slot-maths.md)."""

import pytest

from packer.fleet import FleetError, LatencyProfile, Model, Pool, Traffic
from packer.arrivals import batch_bound, envelope
from packer.slot import (LONE_RELAXED_HI, ItemMaker, SlotType, duty_window, evaluate, item, latency_scale, lone_capacity,
                         lone_result, round_at, single_capacity, turns)

POOL = Pool("a100", "a100-80gb", 8, 1, 4.1, ("mig", "time-slicing"))
WHOLE = SlotType(POOL)


def model(name="asr", base=4.0, per=0.132, slo=200, mb=128, mem=2.5, kind="streaming", gpu="a100-80gb"):
    return Model(name, kind, mem, Traffic(1000, 1000), slo, (LatencyProfile(gpu, base, per),), mb)


U = 0.85


def test_worked_example_single_model():
    # asr at 1000 rps (r = 1 request/ms) on a whole A100, SLO 200 ms, max_batch 128.
    it = item(model(), 1000.0, WHOLE, U)
    # latency: d + C <= (1 + u) d <= 200 gives d <= 108.1 ms; one turn must cover the window:
    # c + s r (1 + u) d <= 128 with the envelope tight at 128 (c = 21.15, s = 1.1385): d <= 50.6;
    # two turns: (1 + 2u) d <= 200 -> 74.07 ms, and the cover (256 - c') / (s' 2.7) is larger.
    assert it.hi == pytest.approx(200 / (1 + 2 * U))
    c, s = envelope(128)
    assert (128 - c) / (s * 1.85) < it.hi
    # The load line is a full batch a turn at this hi: 4 + 0.132 * 128 = 20.896 ms, no slope.
    assert it.A == pytest.approx(4 + 0.132 * 128) and it.B == pytest.approx(0.0)
    lo, hi = duty_window([it], U)
    assert lo == pytest.approx(20.896 / 0.85)
    r = evaluate([it], 79.1, U, lone=False)
    d, m = r.duty_cycle_ms, r.members[0]
    # Alone on the slot, its window is the cycle: the batch is Poisson(r d) at 99.9 %, plus itself.
    assert m.batch_size == batch_bound(1.0 * d)
    run = 4 + 0.132 * m.batch_size
    assert r.round_ms == pytest.approx(run)
    assert m.p99_bound_ms == pytest.approx(d + run) and m.p99_bound_ms <= 200
    assert r.compute_share == pytest.approx(run / d) and r.compute_share <= U
    # Served as its requests come instead (packer/queue.py), alone it waits out one full batch at
    # most and runs in the next: 2 x 20.896 ms at 1000 rps, under the cycle's 65.6 ms, so that is
    # how a plan serves it.
    q = evaluate([it], 79.1, U)
    assert q.duty_cycle_ms == 0 and q.members[0].p99_bound_ms == pytest.approx(2 * 20.896)
    assert q.compute_share == pytest.approx(1.0 * 20.896 / 128)


def test_worked_example_pair_waits_for_each_others_batch():
    a = item(model("asr"), 1000.0, WHOLE, U)
    p = item(model("punct", base=2.0, per=0.05, slo=100, mb=64), 200.0, WHOLE, U)
    lo, hi = duty_window([a, p], U)
    assert hi == pytest.approx(100 / 1.85)  # punct's SLO over (1 + u)
    assert lo == pytest.approx((a.A + p.A) / (U - a.B - p.B))
    r = evaluate([a, p], 79.1, U)
    d = r.duty_cycle_ms
    ra, rp = r.members
    runs = [4 + 0.132 * ra.batch_size, 2 + 0.05 * rp.batch_size]
    C = sum(runs)
    # Each waits for its cut, then for the other's batch: both bounds are d + C.
    assert r.round_ms == pytest.approx(C)
    assert ra.p99_bound_ms == pytest.approx(d + C) and rp.p99_bound_ms == pytest.approx(d + C)
    # Each batch holds the arrivals of the cut plus the other's batch, at 99.9 %.
    assert ra.batch_size >= batch_bound(1.0 * (d + C - runs[0]))
    assert rp.batch_size >= batch_bound(0.2 * (d + C - runs[1]))
    assert all(m.p99_bound_ms <= m.slo_ms for m in r.members)
    assert C <= U * d


def test_a_window_over_max_batch_takes_several_turns():
    # diarize-like: 800 ms + 150 ms per item, max_batch 8, SLO 5 min, 1 rps: a cycle's window
    # holds more than 8 at 99.9 %, so the batcher sends full batches over k turns.
    m = model("diar", base=800, per=150, slo=300000, mb=8, kind="batch")
    it = item(m, 1.0, WHOLE, U)
    r = evaluate([it], 79.1, U, lone=False)
    d, mr = r.duty_cycle_ms, r.members[0]
    assert mr.batch_size == 8
    k = turns(1.0, 8, d, r.round_ms)
    assert k > 1
    assert batch_bound(0.001 * (d + k * r.round_ms)) <= k * 8
    assert mr.p99_bound_ms == pytest.approx(d + k * r.round_ms) and mr.p99_bound_ms <= 300000
    # Alone and served as its requests come, it waits out one full batch (2 s) and runs in the
    # next: 4 s at 1 rps, but a second batch is ahead of it more often than once in ten thousand: 6 s. A plan
    # serves it so.
    q = evaluate([it], 79.1, U)
    assert q.duty_cycle_ms == 0 and q.members[0].p99_bound_ms == pytest.approx(6000)
    assert q.members[0].p99_bound_ms < mr.p99_bound_ms


def test_a_long_batch_model_cannot_share_with_a_latency_bound_one():
    asr = item(model("asr"), 1000.0, WHOLE, U)
    summ = item(model("summ", base=4000, per=900, slo=600000, mb=16, kind="batch"), 0.1, WHOLE, U)
    assert duty_window([summ], U) is not None
    assert duty_window([asr, summ], U) is None


def test_the_lines_bound_the_exact_numbers_for_generated_groups():
    """For any feasible group and any cycle in its window, the exact round fits in u d and every
    bound meets its SLO: the linear test the planner uses never admits a group the exact numbers
    reject."""
    import random
    rng = random.Random(7)
    for _ in range(300):
        items = []
        for j in range(rng.randint(1, 5)):
            base = rng.choice([0.5, 2, 4, 10, 40, 800])
            per = base * rng.choice([0.01, 0.05, 0.2, 1.0])
            slo = rng.choice([50, 100, 200, 1000, 60000])
            mb = rng.choice([1, 4, 8, 32, 128])
            rate = rng.choice([0.5, 5, 50, 300, 2000]) * rng.random()
            items.append(item(model(f"m{j}", base=base, per=per, slo=slo, mb=mb), rate, WHOLE, U))
        win = duty_window(items, U)
        if win is None:
            continue
        if any(it.lone for it in items):  # only alone, served without a cycle (test_queue.py)
            assert len(items) == 1 and lone_result(items[0], 80.0, U) is not None
            continue
        for d in (win[0], (win[0] + win[1]) / 2, win[1]):
            rd = round_at(items, d, U)
            assert rd.round_ms <= U * d + 1e-6
            for it, bound in zip(items, rd.bounds):
                assert bound <= it.model.slo_ms + 1e-6


def test_mig_slice_scales_latency_by_seven_over_g():
    base, per = latency_scale(model(), SlotType(POOL, "2g.20gb"))
    assert base == pytest.approx(4.0 * 7 / 2) and per == pytest.approx(0.132 * 7 / 2)


def test_measured_profile_for_a_slice_wins_and_speed_scales_other_gpus():
    m = Model("x", "batch", 1, Traffic(1, 1), 1000, (LatencyProfile("a100-80gb", 10, 1),
                                                      LatencyProfile("a100-80gb/1g.10gb", 50, 5)), 8)
    assert latency_scale(m, SlotType(POOL, "1g.10gb")) == (50, 5)
    l4 = Pool("l4", "l4-24gb", 4, 1, 0.8, ("time-slicing",))
    assert latency_scale(m, SlotType(l4)) == pytest.approx((10 / 0.4, 1 / 0.4))


@pytest.mark.parametrize("m", [model(), model(base=10, per=2, slo=100, mb=4), model(slo=400, mb=2, base=50, per=5),
                               model(kind="batch", slo=5000, mb=256, per=0.01)])
def test_single_capacity_is_the_largest_feasible_rate(m):
    cap = single_capacity(m, WHOLE, U)
    assert cap > 0
    assert duty_window([item(m, cap * (1 - 1e-7), WHOLE, U)], U) is not None
    assert duty_window([item(m, cap * (1 + 1e-7), WHOLE, U)], U) is None


def test_capacities_are_shared_only_where_the_bisection_reads_the_same_numbers(monkeypatch):
    """``single_capacity`` keeps one bisection per (batch, SLO, latency line, u): two slot types
    with one speed and two models alike but in name share it; another u, SLO or speed does not."""
    import packer.slot as slot

    monkeypatch.setattr(slot, "_CAPACITIES", {})
    runs = []
    real = slot._compiled_capacity
    monkeypatch.setattr(slot, "_compiled_capacity", lambda m, base, per, u: runs.append(m) or real(m, base, per, u))
    a, twin = model(), model(name="asr-twin", mem=1.0)
    slow = model(base=8.0)
    a100_40 = SlotType(Pool("a100-40", "a100-40gb", 8, 1, 3.7, ("mig", "time-slicing")))
    caps = [single_capacity(a, WHOLE, U), single_capacity(twin, WHOLE, U), single_capacity(a, WHOLE, 0.6),
            single_capacity(slow, WHOLE, U), single_capacity(model(slo=300), WHOLE, U),
            single_capacity(a, SlotType(POOL, "1g.10gb"), U), single_capacity(a, SlotType(POOL, "1g.20gb"), U),
            single_capacity(a, a100_40, U)]
    fresh = [max(slot._bisected_capacity(ItemMaker(m, st, u)), lone_capacity(m, st, u)) for m, st, u in [
        (a, WHOLE, U), (twin, WHOLE, U), (a, WHOLE, 0.6), (slow, WHOLE, U), (model(slo=300), WHOLE, U),
        (a, SlotType(POOL, "1g.10gb"), U), (a, SlotType(POOL, "1g.20gb"), U), (a, a100_40, U)]]
    assert caps == fresh
    assert caps[0] == caps[1] and caps[5] == caps[6] and caps[2] != caps[0] and caps[3] < caps[0]
    same_speed = latency_scale(a, a100_40) == latency_scale(a, WHOLE)
    assert len(runs) == 8 - 2 - same_speed
    monkeypatch.setattr(slot, "CAPACITY_CACHE", 2)
    single_capacity(model(slo=500), WHOLE, U)  # full: cleared, then kept
    assert len(slot._CAPACITIES) == 1


def test_an_item_maker_reused_over_rates_gives_the_items_of_fresh_ones():
    """Its table of turns fills as scans need it (low rates stop at one turn, high rates need
    several): a maker that has seen other rates must give what a fresh one gives."""
    m = model(mb=8, slo=400)
    make = ItemMaker(m, WHOLE, U)
    rates = [0.0, 5.0, 3000.0, 0.5, 800.0, 40.0, 12000.0, 1.0]
    assert [make(r) for r in rates] == [item(m, r, WHOLE, U) for r in rates]
    assert [make(r) for r in reversed(rates)] == [ItemMaker(m, WHOLE, U)(r) for r in reversed(rates)]


def test_the_cycle_a_plan_states_keeps_the_round_within_the_cap():
    """Found by fuzzing: one model, four replicas of 224 rps with batches of ``max_batch`` (8) on
    whole A100s, SLO 50 ms. The slot's least cycle is 11.0646 / 0.85 = 13.0172 ms and the plan
    floored it to 13.017 ms, where the round is over 85 % (``check_plan`` rejected the plan).
    The cycle is now put on the microsecond grid inside the feasible window, or left as it is
    where the window is narrower than a step, before the batches are worked out."""
    from packer.fleetfile import parse_fleet
    from packer.planner import PlanSettings, plan_fleet
    from packer.check import check_plan

    fleet = parse_fleet({"name": "edge", "pools": [{"name": "a", "gpu": "a100-80gb", "gpus_per_node": 4,
                                                     "max_nodes": 1, "cost_per_gpu_hour": 2.84}],
                         "models": [{"name": "m", "kind": "streaming", "memory_gb": 4.29,
                                     "traffic": {"rps": 384.9483, "peak_rps": 896.2792}, "slo_ms": 50,
                                     "latency_ms": {"gpu": "a100-80gb", "base": 3.603, "per_item": 0.9327},
                                     "max_batch": 8}]})
    plan = plan_fleet(fleet, PlanSettings(time_limit_s=0.5, prove_s=0))
    assert check_plan(plan) == []
    for p in plan.placements:
        if p.duty_cycle_ms > 0:  # a replica alone without a cycle has no round (check_plan above)
            run = sum(3.603 + 0.9327 * m.batch_size for m in p.models)
            assert run <= U * p.duty_cycle_ms + 1e-9
    it = item(model(base=3.603, per=0.9327, slo=50, mb=8, mem=4.29), 224.0698, WHOLE, U)
    lo, hi = duty_window([it], U)
    d = evaluate([it], 79.1, U, lone=False).duty_cycle_ms
    assert lo <= d <= hi


def test_a_batch_too_small_for_any_rate_names_max_batch_not_the_slo():
    """Found by bench/truth.py's random slots: ``max_batch: 1``, 56 ms a request, SLO 411 ms. The
    SLO allows a cycle (123 ms would do), but no number of turns of one request covers the 99.9 %
    line of a window at any rate, and the fleet was refused with "411 ms cannot be met ... raise
    slo_ms to at least 123". Alone and served as its requests come (packer/queue.py) it now plans:
    at most one request ahead of it runs first. Where two full batches miss the SLO alone (20 ms a
    request, ``max_batch`` 4, SLO 90: 100 ms) and turns of 4 cover no window shared, the fleet was
    refused naming max_batch; alone, its batches are now capped (3 serves, two runs of 40 ms; 2
    leaves the most headroom at this rate, 60 ms), so it plans, and only an SLO under two runs of
    one request is refused."""
    from packer.fleetfile import parse_fleet

    def fleet(mb, base=55.9, per=0.37, slo=411):
        return {"name": "x", "pools": [{"name": "l4", "gpu": "l4-24gb", "gpus_per_node": 1, "max_nodes": 1,
                                        "cost_per_gpu_hour": 0.8}],
                "models": [{"name": "i0", "kind": "streaming", "memory_gb": 2, "slo_ms": slo, "max_batch": mb,
                            "latency_ms": {"gpu": "l4-24gb", "base": base, "per_item": per},
                            "traffic": {"rps": 0.48}}]}

    m = parse_fleet(fleet(1), "x").models[0]
    st = SlotType(Pool("l4", "l4-24gb", 1, 1, 0.8))
    assert lone_capacity(m, st, U) > 0.48 and single_capacity(m, st, U) == lone_capacity(m, st, U)
    m4 = parse_fleet(fleet(4, base=10, per=10, slo=90), "x").models[0]
    assert lone_capacity(m4, st, U) > 0.48
    res = evaluate([item(m4, 0.48, st, U)], st.memory_gb, U)
    assert res.duty_cycle_ms == 0 and res.members[0].batch_size == 2 and res.members[0].p99_bound_ms == pytest.approx(60)
    with pytest.raises(FleetError) as e:
        parse_fleet(fleet(4, base=10, per=10, slo=39), "x")  # two runs of one request: 40 ms
    assert e.value.field == "models[0] (i0).slo_ms" and "raise slo_ms to at least 40" in str(e.value)
    assert parse_fleet(fleet(4, base=10, per=10, slo=40), "x").models[0].max_batch == 4
    assert parse_fleet(fleet(2, base=10, per=10, slo=90), "x").models[0].max_batch == 2
    assert parse_fleet(fleet(8, base=10, per=10, slo=90), "x").models[0].max_batch == 8


@pytest.mark.parametrize("u", [0.5, 0.85, 1.0])
def test_the_relaxations_admit_every_cycle_the_slot_maths_admits(u):
    """The exact search (``prove``) and ``relaxed_limit`` may only exclude what the slot maths
    excludes: a member at rate ``r`` whose own limit is ``hi`` must pass both at any cycle up to
    ``hi``. They used to cap ``r d`` at ``max_batch - 1``, one turn's mean, which a member taking
    many turns exceeds (``max_batch`` 2 and long SLOs: ``r d`` up to 1.03), so a plan could be
    "proven" optimal against purchases it did not rule out."""
    from packer.planner.prove import _max_rate
    from packer.slot import relaxed_limit

    checked = 0
    for mb in (1, 2, 3, 4, 8, 32, 128):
        for base, per, slo in ((4.0, 0.132, 200), (10.0, 1.0, 3000), (2.0, 0.5, 60000), (50.0, 5.0, 500)):
            m = model(base=base, per=per, slo=slo, mb=mb)
            cap = single_capacity(m, WHOLE, u)
            for f in (0.01, 0.1, 0.3, 0.6, 0.9, 0.999):
                r = cap * f
                it = item(m, r, WHOLE, u)
                if r <= 0 or it.hi <= 0:
                    continue
                A, per_s = latency_scale(m, WHOLE)[0] + latency_scale(m, WHOLE)[1], latency_scale(m, WHOLE)[1]
                assert relaxed_limit(m, r, WHOLE, u)[2] >= it.hi * (1 - 1e-12), (mb, base, slo, f)
                if it.lone:  # served alone without a cycle: the relaxation's unbounded cell holds it
                    assert relaxed_limit(m, r, WHOLE, u)[2] == LONE_RELAXED_HI
                    assert _max_rate(m, A, per_s, LONE_RELAXED_HI, u, lone_capacity(m, WHOLE, u)) >= r * (1 - 1e-9)
                    checked += 1
                    continue
                for d in (it.hi * 0.5, it.hi * (1 - 1e-9)):
                    if d + (base + per) <= slo:
                        assert _max_rate(m, A, per_s, d, u, lone_capacity(m, WHOLE, u)) >= r * (1 - 1e-9), \
                            (mb, base, slo, f, d)
                        checked += 1
    assert checked > 100


def test_the_compiled_duty_capacity_is_the_bisection_to_the_bit():
    """``duty_capacity`` bisects ``ItemMaker.alone`` compiled (a 2,000-model plan asks for 19,000
    profiles): on random models, SLOs from 20 ms to ten minutes, ``max_batch`` 1-512 and
    headrooms from 0 to a half, it returns what the Python bisection returns, float for float,
    zero where nothing fits included."""
    import random

    from packer.slot import _bisected_capacity, _compiled_capacity

    rng = random.Random(11)
    zeros = 0
    for i in range(300):
        st = SlotType(POOL, rng.choice([p for p in ("whole", "1g.10gb", "3g.40gb")]))
        m = Model(f"m{i}", rng.choice(["batch", "streaming"]), 1.0, Traffic(1, 1),
                  rng.choice([20, 50, 100, 300, 2000, 30000, 600000]) * rng.uniform(0.5, 1.5),
                  (LatencyProfile("a100-80gb", rng.uniform(0.5, 80), rng.uniform(0.01, 8)),),
                  rng.choice([1, 2, 4, 8, 16, 32, 64, 128, 512]))
        u = rng.uniform(0.5, 1.0)
        base, per = latency_scale(m, st)
        want = _bisected_capacity(ItemMaker(m, st, u))
        assert _compiled_capacity(m, base, per, u) == want, (m, st.key, u)
        zeros += want == 0.0
    assert 0 < zeros < 300


def test_the_compiled_line_is_its_source_and_reads_the_envelope_at_its_point():
    """``item_line`` and ``own_limit`` are compiled, and the only source of an item's line (the
    Python plan and the duty cycle's capacity search both call them): run compiled they return what
    their Python source returns, float for float, on random models and rates from none to past
    what fits; and the row of the envelope table the line reads at ``m`` is ``arrivals.envelope(m)``."""
    import random

    from packer.arrivals import envelope_table
    from packer.slot import envelope_row, item_line, own_limit, turn_table

    rng = random.Random(5)
    for i in range(300):
        M = rng.choice([1, 2, 4, 8, 16, 32, 64, 128, 512])
        slo = rng.choice([20, 50, 100, 300, 2000, 30000, 600000]) * rng.uniform(0.5, 1.5)
        base, per, u = rng.uniform(0.5, 80), rng.uniform(0.01, 8), rng.uniform(0.5, 1.0)
        turns, env = turn_table(slo, M, u), envelope_table(M)
        for rate in (0.0, 1e-3, rng.uniform(0, 10), rng.uniform(0, 1000), rng.uniform(0, 1e5)):
            args = (rate, base, per, M, slo, u, turns, env)
            assert item_line(*args) == item_line.py_func(*args), args
            assert own_limit(turns, rate / 1000.0) == own_limit.py_func(turns, rate / 1000.0), args
    table = envelope_table(1e6)
    for m in [0.0, 1e-5, 1e-4, 1.0, 1.05, 100.0, 1e6] + [rng.uniform(0, 1e3) for _ in range(500)]:
        assert tuple(table[envelope_row(m)]) == envelope(m), m
