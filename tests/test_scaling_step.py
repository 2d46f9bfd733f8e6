"""The one re-plan step (``packer.scaling.step``) the reconciler and the simulator both call:
decide, run the injected re-planner when the decision asks for a packing, judge its answer."""

from __future__ import annotations

from packer.plan import Plan
from packer.scaling import Replan, ScalingSettings, Signals, Targets, Windows, step
from test_scaling_helpers import three_slot_plan_for_cli, tiny_plan

S = ScalingSettings(targets=Targets(noise_z=0.0, target_utilisation=1.0, replan_every_s=600.0, replan_headroom=0.05),
                    windows=Windows(panic_threshold=1.5))
LOW = {"asr-a": 100.0, "asr-b": 100.0, "punct": 10.0}


def signals() -> dict[str, Signals]:
    return {k: Signals(k, arrival_rps=v) for k, v in LOW.items()}


def until_replan(plan: Plan, replanner):  # type: ignore[no-untyped-def]
    """Steps every 15 s at a steady low load until the policy asks for a re-plan (600 s of history)."""
    state, t = None, 0.0
    while True:
        out = step(plan, signals(), state, t, S, replanner)
        if any(isinstance(a, Replan) for a in out.actions):
            return out
        state, t = out.state, t + 15.0
        assert t <= 900.0, "no re-plan asked for"


def test_a_cheaper_packing_is_taken_and_becomes_the_next_plan() -> None:
    big, small = three_slot_plan_for_cli(), tiny_plan()  # 3 L4 (2.40/h), 2 L4 (1.60/h)
    asked: list[tuple[dict[str, float], float | None, bool]] = []

    def replanner(current, fleet, headroom, fresh):  # type: ignore[no-untyped-def]
        asked.append(({m.name: m.traffic.peak_rps for m in fleet.models}, headroom, fresh))
        return small

    out = until_replan(big, replanner)
    assert out.replan is not None and out.replan.taken
    assert asked == [(LOW, 0.05, False)]  # the fleet at the asked-for rates, the policy's headroom
    assert out.plan is out.replan.answer and out.plan.fleet is big.fleet
    assert "saves 0.80/h" in out.reasons[-1]


def test_a_refused_packing_keeps_the_plan_and_says_why() -> None:
    big = three_slot_plan_for_cli()
    out = until_replan(big, lambda current, fleet, headroom, fresh: big)
    assert out.replan is not None and not out.replan.taken
    assert out.reasons[-1].startswith("packing not taken: ")
    assert out.plan is None or out.plan is out.replan.base  # only the decision's own resizes, if any


def test_retry_from_scratch_only_when_asked() -> None:
    big, small = three_slot_plan_for_cli(), tiny_plan()
    calls: list[bool] = []

    def replanner(current, fleet, headroom, fresh):  # type: ignore[no-untyped-def]
        calls.append(fresh)
        return small if fresh else big  # keeping the groups locks in the dear packing

    out = until_replan(big, replanner)
    assert calls == [False] and out.replan is not None and not out.replan.taken
    calls.clear()
    state = None
    t = 0.0
    while True:
        res = step(big, signals(), state, t, S, replanner, retry_fresh=True)
        if res.replan is not None:
            break
        state, t = res.state, t + 15.0
    assert calls == [False, True] and res.replan.taken and res.replan.why.endswith("(packed from scratch)")


def test_no_replanner_leaves_the_request_unrun() -> None:
    out = until_replan(three_slot_plan_for_cli(), None)
    assert out.replan is None and isinstance(out.actions[-1], Replan)


def test_a_taken_migration_marks_what_it_rebuilds_as_loading() -> None:
    """The simulator and the reconciler keep the old slots until the new ones serve, but the plan
    is the new one at once: a consolidation in between would count replicas still loading. Every
    model of a rebuilt slot may not shrink until the slowest rebuilt GPU serves (migration_cost):
    one L4 on a fresh node with asr's 2.5 GB, 240 + 120 + 15 + 2.5 = 377.5 s after the step."""
    from packer.scaling.demand import observe
    from test_scaling_helpers import fleet, placement, plan_of

    f = fleet()
    one = plan_of(f, [placement(f, "l4", "l4-n0", 0, [("asr-a", 0, 100.0), ("asr-b", 0, 100.0), ("punct", 0, 10.0)])])
    big = three_slot_plan_for_cli()
    out = until_replan(big, lambda current, fleet_, headroom, fresh: one)
    assert out.replan is not None and out.replan.taken
    t = out.state.since + 600.0  # the first step with a whole scale-down window of history
    assert {m: out.state.models[m].serving_at for m in LOW} == {m: t + 377.5 for m in LOW}
    demands, _ = observe(out.plan, signals(), out.state, t + 15.0, S)
    assert not any(d.may_shrink for d in demands.values())
    demands, _ = observe(out.plan, signals(), out.state, t + 390.0, S)
    assert all(d.may_shrink for d in demands.values())
