"""The plan file's ``settings``: one typed object (``PlanSettings``), written and read back whole,
and plans written before it (a plain dict of four keys, or none at all) still load."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import jsonschema
import pytest

from packer.check import check_plan
from packer.plan import PlanSettings, from_dict, to_dict
from packer.scaling.room import headroom_u
from test_scaling_helpers import tiny_plan

SCHEMA = json.loads((Path(__file__).resolve().parent.parent / "docs" / "plan.schema.json").read_text())
SETTINGS_SCHEMA = SCHEMA["properties"]["settings"]  # hand-built plans have no baselines, which the whole schema wants


def _through_json(d: dict) -> dict:
    return json.loads(json.dumps(d))


def test_settings_round_trip_through_the_plan_file() -> None:
    s = PlanSettings(headroom=0.1, time_limit_s=5.0, seed=3, use_mig=False, prove_s=0.0, max_replica_options=2,
                     reproducible=True)
    plan = replace(tiny_plan(), settings=s)
    d = _through_json(to_dict(plan))
    jsonschema.validate(d["settings"], SETTINGS_SCHEMA)
    assert d["settings"] == {"headroom": 0.1, "time_limit_s": 5.0, "seed": 3, "use_mig": False, "prove_s": 0.0,
                             "max_replica_options": 2, "reproducible": True}
    back = from_dict(d)
    assert back.settings == s and isinstance(back.settings, PlanSettings)
    assert to_dict(back) == to_dict(plan)


def test_a_plan_with_the_old_dict_settings_still_loads() -> None:
    d = _through_json(to_dict(tiny_plan()))
    # what the planner wrote before PlanSettings: four keys, integers where JSON had them
    d["settings"] = {"headroom": 0.2, "seed": 7, "use_mig": True, "time_limit_s": 12}
    jsonschema.validate(d["settings"], SETTINGS_SCHEMA)
    back = from_dict(d)
    assert back.settings == PlanSettings(headroom=0.2, seed=7, use_mig=True, time_limit_s=12.0)
    assert back.settings.prove_s is None and back.settings.max_replica_options == PlanSettings().max_replica_options
    assert headroom_u(back) == pytest.approx(0.8)
    # no settings at all (hand-written plans), or a key a newer packer added: the defaults
    del d["settings"]
    assert from_dict(d).settings == PlanSettings()
    d["settings"] = {"headroom": 0.15, "from_the_future": 1}
    assert from_dict(d).settings == PlanSettings()


def test_readers_take_the_headroom_from_the_plan() -> None:
    plan = tiny_plan(rate=400.0)  # every model at its peak, slots sized at the default headroom
    assert headroom_u(plan) == pytest.approx(1 - PlanSettings().headroom)
    assert check_plan(plan) == []
    # the same slots (45% busy) claimed to keep 60% of every cycle free: the check holds them to it
    tight = replace(plan, settings=PlanSettings(headroom=0.6))
    assert headroom_u(tight) == pytest.approx(0.4)
    assert any("over 40%" in e for e in check_plan(tight))


def test_headroom_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="headroom"):
        PlanSettings(headroom=1.0)
    d = _through_json(to_dict(tiny_plan()))
    d["settings"] = {"headroom": -0.1}
    with pytest.raises(ValueError, match="headroom"):
        from_dict(d)


def test_the_simulator_runs_at_the_plans_headroom() -> None:
    pytest.importorskip("numpy")
    from sims.engine import Simulation
    from packer.handplan import HandGroup, hand_plan
    from sims.scenario import Scenario

    plan = replace(tiny_plan(rate=400.0), settings=PlanSettings(headroom=0.3))
    assert Simulation(plan, Scenario(process="peak"), seed=0, policy="static").u == pytest.approx(0.7)
    assert Simulation(tiny_plan(), Scenario(process="peak"), seed=0, policy="static").u == pytest.approx(
        PlanSettings().u)
    # a hand-written plan records the utilisation its slots were sized at
    f = tiny_plan().fleet
    assert hand_plan(f, [HandGroup("l4", "whole", ("asr-a",))], u=0.7).settings.headroom == pytest.approx(0.3)
    assert hand_plan(f, [HandGroup("l4", "whole", ("asr-a",))]).settings == PlanSettings()
