"""The scaling policy in the simulator runs the slots its plan says: one model of a slot for the
policy, the Triton writer and the simulator (``sims/policy_packer.py`` passes each changed slot's
configuration; ``sims/engine.py`` tells every member)."""

from __future__ import annotations

from packer.fleetfile import load_fleet
from packer.planner import PlanSettings, plan_fleet
from packer_cli.plan import example_path
from sims.engine import Simulation
from sims.scenario import load_scenario
from sims.server import batcher_config


def test_every_slot_the_policy_changes_runs_its_plans_config() -> None:
    """The diurnal day's first 40 minutes from midnight, seed 0: the policy consolidates the
    night's groups (0:32) and moves replicas. Configured at each model's peak share instead, the
    consolidated groups ran full batches one after another and 669 intervals in the first 1.7 h
    had a model's p99 over its SLO (punct-fr 150-170 ms of 100); with the plan's, none."""
    plan = plan_fleet(load_fleet(example_path()), PlanSettings(seed=0, time_limit_s=4))
    sc = load_scenario("diurnal")
    sim = Simulation(plan, sc, seed=0, policy="packer")
    r = sim.run(2400)
    pol = sim.policy
    changed = [a for a in r.actions if a["action"].startswith(("start ", "add slot", "remove "))]
    assert changed, "the policy must change some slot in this window for the test to mean anything"
    checked = 0
    for p in pol.plan.placements:
        s = sim.slots.get(pol.ids.get(p.id, ""))
        if s is None:
            continue
        live = {m.model: m.cfg for m in s.live if not m.draining}
        for mem in p.models:
            if mem.name not in live:
                continue
            want = batcher_config(plan.fleet.model(mem.name), s.st, mem.batch_size, p.duty_cycle_ms,
                                  queue_delay_ms=sc.server.queue_delay_ms, timeouts=sc.server.queue_timeouts,
                                  queue_bound=sc.server.queue_bound)
            assert live[mem.name] == want, (p.id, mem.name)
            checked += 1
    assert checked >= 20
    late = [m["name"] for m in r.to_dict()["models"] if m["slo_attainment"] is not None and m["slo_attainment"] < 0.99]
    assert not late


def test_a_slot_built_on_another_gpu_goes_back_where_its_plan_puts_it() -> None:
    """A migration that re-lays out a MIG GPU builds the new slices while the old ones still
    serve, so the simulator starts them on a second GPU; they stayed there, and the simulator
    billed two A100s where the policy's plan had one (17.00/h against 12.90/h for the rest of the
    diurnal day, seed 1). Once the plan's GPU has room the adapter rebuilds the slot there, make
    before break: the old one goes only when the new one serves."""
    from sims.policies import ClusterView, ModelSignals, ReplicaView, SlotView
    from sims.policy_packer import PackerPolicy

    plan = plan_fleet(load_fleet(example_path()), PlanSettings(seed=0, time_limit_s=4))
    mig = next(p for p in plan.placements if p.slot != "whole")
    pol = PackerPolicy(plan)

    def view(moved_to: int) -> ClusterView:
        slots = {}
        for p in plan.placements:
            sid = "stray" if p is mig else p.id
            gpu = moved_to if p is mig else p.gpu
            if p is not mig and p.node == mig.node and p.gpu == mig.gpu:
                continue  # the plan's GPU holds nothing else: the old layout has gone
            slots[sid] = SlotView(sid, p.pool, p.slot, p.node, False, tuple(m.name for m in p.models), 0.0,
                                  1.0, p.memory_capacity_gb, True, gpu=gpu)
        models = {m.name: ModelSignals(m.name, m.kind, m.slo_ms, (1.0,), 0, 0, 0.0, 0.0, 0,
                                       tuple(ReplicaView(m.name, sid, True, 0.0) for sid, v in slots.items()
                                             if m.name in v.models))
                  for m in plan.fleet.models}
        return ClusterView(0.0, 15.0, plan, models, slots, {})

    pol.ids[mig.id] = "stray"
    new: dict = {}
    pol._realign(view(mig.gpu + 1), new)
    assert new[mig.id].node == mig.node and new[mig.id].gpu == mig.gpu and new[mig.id].profile == mig.slot
    assert [r.sim_slot for r in pol.removals] == ["stray"]
    pol._view = view(mig.gpu + 1)
    assert pol._due(pol._view) == [] and pol.removals  # not before the new slot serves
    again: dict = {}
    pol._realign(view(mig.gpu + 1), again)
    assert not again  # one at a time, not while a move is under way
