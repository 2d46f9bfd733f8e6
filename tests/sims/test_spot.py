"""Spot capacity in the simulator: the packer policy under preemptions (issue 18)."""

from __future__ import annotations

import pytest

pytest.importorskip("numpy")

from packer.fleet import parse_fleet  # noqa: E402
from sims.engine import Simulation  # noqa: E402
from sims.handplan import Group, hand_plan  # noqa: E402
from sims.policies import get_policy  # noqa: E402
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
    plan = hand_plan(two_gpu_fleet(), [Group("h100", "whole", ("llm",))])
    sc = Scenario(process="poisson", cluster=Cluster(spot_preemptions_per_node_hour=3.0, preemption_notice_s=30.0))
    sim = Simulation(plan, sc, seed=seed, policy=get_policy("packer", plan, {}))
    r = sim.run(3600)
    lost = [a for a in r.actions if "preempted" in a["action"]]
    if not lost:
        pytest.skip("no preemption drawn on this seed")
    adds = [a for a in r.actions if a["action"].startswith("add slot") and a["outcome"].startswith("applied")]
    assert adds, "the lost replica must be bought back"
    assert any(s.width == 2 for s in sim.slots.values())
