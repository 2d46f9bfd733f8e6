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
