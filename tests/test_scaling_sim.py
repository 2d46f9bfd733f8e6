"""The policy inside the simulator (``--policy packer``): its actions are obeyed and they help."""

from __future__ import annotations

import pytest

pytest.importorskip("numpy")

from packer.scaling import Signals  # noqa: E402
from sims.engine import Simulation  # noqa: E402
from sims.policies import ModelSignals, get_policy, policy_names  # noqa: E402
from sims.policy_packer import _signals, flaps_free  # noqa: E402
from sims.scenario import parse_scenario  # noqa: E402
from test_scaling_helpers import tiny_plan  # noqa: E402

SPIKE = {"name": "t", "process": "peak", "session": "1m",
         "spikes": [{"models": "asr-a", "at": "2m", "factor": 6, "rise": "30s", "decay": "1h"}]}


def test_registered():
    assert "packer" in policy_names()


def test_spike_is_absorbed_and_every_action_obeyed():
    plan = tiny_plan()
    runs = {}
    for name in ("static", "packer"):
        sim = Simulation(plan, parse_scenario(SPIKE), seed=3, policy=get_policy(name, plan, {}))
        runs[name] = (sim, sim.run(600.0))
    sim, res = runs["packer"]
    att = {m["name"]: m["slo_attainment"] for m in res.models}
    static_att = {m["name"]: m["slo_attainment"] for m in runs["static"][1].models}
    # asr-a at 6 x 400 = 2400 rps is past the 1897 rps its L4 holds: static drowns, packer adds
    assert static_att["asr-a"] < 0.9
    assert att["asr-a"] >= 0.97 and min(att.values()) >= 0.97
    assert all(a["outcome"].startswith("applied") for a in res.actions), res.actions
    kinds = {a.kind for _, a in sim.policy.log}
    assert kinds & {"add_replica", "split_out", "add_group"}
    assert flaps_free(sim.policy.log, sim.policy.settings.windows.scale_down_s)


def test_signals_from_the_simulator():
    s = ModelSignals("m", "streaming", 100.0, (10.0, 20.0), queued=3, in_flight=2, queue_ms_mean=5.0,
                     p99_ms=150.0, rejected=3, replicas=())
    # 3 rejections of 20 rps x 15 s = 1%, and a p99 over the SLO means at least 1% late
    assert _signals(s, 15.0) == Signals("m", in_flight=2.0, queued=3.0, arrival_rps=20.0, queue_ms=5.0,
                                        late_share=0.01)
