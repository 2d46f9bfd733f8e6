"""Spot capacity in the simulator: the packer policy under preemptions (issue 18)."""

from __future__ import annotations

import pytest

pytest.importorskip("numpy")

from packer.fleetfile import parse_fleet  # noqa: E402
from sims.engine import Simulation  # noqa: E402
from packer.handplan import HandGroup, hand_plan  # noqa: E402
from sims.registry import get_policy  # noqa: E402
from sims.scenario import Cluster, Scenario  # noqa: E402


def two_gpu_fleet():
    return parse_fleet({
        "name": "big", "pools": [{"name": "h100", "gpu": "h100-80gb", "gpus_per_node": 4, "max_nodes": 3,
                                  "cost_per_gpu_hour": 2.0, "spot": True}],
        "models": [{"name": "llm", "kind": "streaming", "memory_gb": 140.0, "gpus_per_replica": 2,
                    "traffic": {"rps": 2.0}, "slo_ms": 20000,
                    "latency_ms": {"gpu": "h100-80gb", "base": 500.0, "per_item": 50.0}, "max_batch": 16}],
    })


@pytest.mark.parametrize("seed", [0, 1, 2], ids=["seed0", "seed1", "seed2"])
def test_packer_policy_survives_losing_a_multi_gpu_replica(seed: int) -> None:
    """The crash of issue 18: a preempted 2-GPU replica's slot is ``…-g0-x2`` in the plan, and the
    policy's shadow asked to remove ``…-g0-whole`` (ValueError: no replica of llama-70b in
    h100-spot-n0-g0-whole to remove). The policy now drops it and buys it back."""
    plan = hand_plan(two_gpu_fleet(), [HandGroup("h100", "whole", ("llm",))])
    sc = Scenario(process="poisson", cluster=Cluster(spot_preemptions_per_node_hour=3.0, preemption_notice_s=30.0))
    sim = Simulation(plan, sc, seed=seed, policy=get_policy("packer", plan, {}))
    r = sim.run(3600)
    lost = [a for a in r.actions if "preempted" in a["action"]]
    if not lost:
        pytest.skip("no preemption drawn on this seed")
    adds = [a for a in r.actions if a["action"].startswith("add slot") and a["outcome"].startswith("applied")]
    assert adds, "the lost replica must be bought back"
    assert any(s.width == 2 for s in sim.slots.values())


SPOT_FLEET = {
    "name": "cli-spot", "pools": [
        {"name": "l4", "gpu": "l4-24gb", "gpus_per_node": 4, "max_nodes": 2, "cost_per_gpu_hour": 0.8,
         "sharing": ["time-slicing"]},
        {"name": "l4-spot", "gpu": "l4-24gb", "gpus_per_node": 1, "max_nodes": 3, "cost_per_gpu_hour": 0.3,
         "sharing": ["time-slicing"], "spot": True, "preemption_notice_s": 30, "preemptions_per_node_hour": 60}],
    "models": [
        {"name": "asr", "kind": "streaming", "memory_gb": 2.0, "traffic": {"rps": 200.0, "peak_rps": 300.0},
         "slo_ms": 200, "latency_ms": {"gpu": "l4-24gb", "base": 8.0, "per_item": 0.4}, "max_batch": 64,
         "min_replicas": 2, "spot_policy": "floor", "spot_loss": "pool"},
        {"name": "punct", "kind": "streaming", "memory_gb": 1.0, "traffic": {"rps": 40.0, "peak_rps": 60.0},
         "slo_ms": 100, "latency_ms": {"gpu": "l4-24gb", "base": 3.0, "per_item": 0.1}, "max_batch": 32}],
}


def test_compare_spot_runs_the_plan_against_all_on_demand_and_spot_unaware(tmp_path, capsys) -> None:
    import json

    import yaml

    from packer_cli.main import main

    f = tmp_path / "fleet.yaml"
    f.write_text(yaml.safe_dump(SPOT_FLEET))
    out = tmp_path / "r.json"
    rc = main(["simulate", str(f), "--scenario", "peak", "--policy", "packer", "--compare", "spot",
               "--duration", "3m", "--no-progress", "-o", str(out)])
    assert rc == 0, capsys.readouterr().err
    runs = json.loads(out.read_text())["runs"]
    assert [(r["label"], r["policy"]) for r in runs] == [("spot-aware", "packer"), ("all-on-demand", "static"),
                                                        ("spot-unaware", "packer")]
    assert [m["arrivals"] for m in runs[0]["models"]] == [m["arrivals"] for m in runs[1]["models"]]
    od, cheap = runs[1]["fleet"]["plan_cost_per_hour"], runs[2]["fleet"]["plan_cost_per_hour"]
    # against the whole pool asr keeps one of its two replicas on-demand; against one node both
    # could run on spot, one a node, and the spot-aware plan would cost what the spot-unaware does
    assert cheap < runs[0]["fleet"]["plan_cost_per_hour"] <= od
    assert runs[1]["fleet"]["gpu_hours"].get("l4-spot", 0) == 0  # nothing on spot
    # the peak scenario sets no preemption rate: the pool's own (60 per node-hour) applies
    assert any("preempted" in a["action"] for r in (runs[0], runs[2]) for a in r["actions"])


def test_compare_spot_needs_an_on_demand_pool(tmp_path, capsys) -> None:
    import yaml

    from packer_cli.main import main

    doc = dict(SPOT_FLEET, pools=SPOT_FLEET["pools"][1:],
               models=[{k: v for k, v in m.items() if k != "spot_loss"} | {"spot_policy": "free"}
                       for m in SPOT_FLEET["models"]])
    f = tmp_path / "fleet.yaml"
    f.write_text(yaml.safe_dump(doc))
    assert main(["simulate", str(f), "--scenario", "spot", "--compare", "spot", "--duration", "1m",
                 "--no-progress"]) == 2
    assert "every pool is spot" in capsys.readouterr().err


def test_a_notice_reaches_the_policy_for_the_node_it_is_for() -> None:
    """The multilingual example with a spot twin of every pool at 0.4x, every model at a 0.5
    on-demand floor (``bench/spot.py``'s plan, stored), seed 9: one spot node (l4-spot-n3) is
    preempted at 596 s. The adapter matched the doomed asr-en slot, which a move had let go of, to
    the request for its replacement, and the slot the policy put on another node on the
    simulator's first free GPU: the policy was told three healthy nodes were going, emptied them
    before their replacements served, and asr-en fell to 96.6 % within SLO."""
    from pathlib import Path

    from packer.planfile import load_plan
    from sims.scenario import load_scenario

    plan = load_plan(Path(__file__).parent / "data" / "multilingual-spot-floor-0.5.json")
    sim = Simulation(plan, load_scenario("spot"), seed=9, policy="packer")
    r = sim.run(1200.0).to_dict()
    gone = {a["action"].split()[2] for a in r["actions"] if a["action"].startswith("spot node ")}
    assert gone == {"l4-spot-n3"}
    told = {a["reason"].split(" is preempted in ")[0] for a in r["actions"] if " is preempted in " in a["reason"]}
    assert told == gone  # no healthy node evacuated for another's notice
    assert all(m["slo_attainment"] >= 0.99 for m in r["models"] if m["arrivals"]), \
        {m["name"]: m["slo_attainment"] for m in r["models"]}
