"""``packer scale``: the dry run prints every action with its cost and reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from packer_cli.main import main
from packer.fleetfile import load_fleet
from packer.plan import PlanSettings, save_plan
from packer.planfile import load_plan
from packer.planner import plan_fleet
from test_scaling_helpers import three_slot_plan_for_cli, tiny_plan

EXAMPLES = Path(__file__).resolve().parent.parent / "packer" / "examples"


def _files(tmp_path, plan, models):
    save_plan(plan, tmp_path / "plan.json")
    (tmp_path / "snap.json").write_text(json.dumps({"time": 1000, "models": models}))
    return str(tmp_path / "plan.json"), str(tmp_path / "snap.json")


def test_scale_up_dry_run(tmp_path, capsys):
    plan_p, snap_p = _files(tmp_path, tiny_plan(), {"asr-a": {"arrival_rps": 1150}})
    out_p = tmp_path / "next.json"
    assert main(["scale", "--plan", plan_p, "--metrics", snap_p, "-o", str(out_p)]) == 0
    out = capsys.readouterr().out
    # one 1150 rps sample, less its Poisson allowance 2 sqrt(1150 / 60) = 8.76: 1141.2, more than
    # the 1041.4 rps asr-a's L4 holds beside punct at the plan's headroom (the target utilisation
    # is 1: the plan's headroom is the only margin). Alone on the free GPU, served as its requests
    # come (packer/queue.py), one replica holds 2108.5 rps, so asr-a moves out whole: still one
    # replica (two of 570.6 each, the second on the free GPU, before lone replicas were so served).
    assert "split_out" in out and "because asr-a wants 1141.2 rps" in out and "cost +0.80/h" in out
    assert "holds 2108.5 rps" in out and "cost per hour: 1.60 -> 2.40" in out
    assert load_plan(out_p).replicas["asr-a"] == 1


def test_steady_shows_scale_down(tmp_path, capsys):
    plan_p, snap_p = _files(tmp_path, three_slot_plan_for_cli(),
                            {"asr-a": {"arrival_rps": 50}, "asr-b": {"arrival_rps": 50}, "punct": {"arrival_rps": 5}})
    assert main(["scale", "--plan", plan_p, "--metrics", snap_p]) == 0
    assert "consolidate" not in capsys.readouterr().out  # one snapshot is no history
    assert main(["scale", "--plan", plan_p, "--metrics", snap_p, "--steady", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    acts = doc["actions"]
    # the totals the table's last line prints: a consolidation releases a GPU
    assert doc["cost_per_hour_after"] < doc["cost_per_hour"] and doc["replan_asked"] is False
    assert [a["kind"] for a in acts if a["kind"] == "consolidate"] == ["consolidate"]
    assert all(a["reason"] and "cost_per_hour" in a for a in acts)


def test_user_errors_exit_2(tmp_path, capsys):
    plan_p, snap_p = _files(tmp_path, tiny_plan(), {"nope": {"arrival_rps": 1}})
    assert main(["scale", "--plan", plan_p, "--metrics", snap_p]) == 2
    assert "not in the plan: nope" in capsys.readouterr().err
    assert main(["scale", "--plan", plan_p]) == 2
    assert main(["scale", "--plan", str(tmp_path / "missing.json"), "--metrics", snap_p]) == 2


@pytest.fixture(scope="module")
def multilingual_plan():
    # the planner's default headroom; a short search without the proof (the packing is what counts)
    return plan_fleet(load_fleet(EXAMPLES / "multilingual-meetings.yaml"), PlanSettings(time_limit_s=2, prove_s=0))


def _scale(tmp_path, capsys, plan, factor: dict[str, float], *extra: str) -> list[dict]:
    plan_p, snap_p = _files(tmp_path, plan, {m.name: {"arrival_rps": m.traffic.peak_rps * factor.get(m.name, 1.0)}
                                             for m in plan.fleet.models})
    assert main(["scale", "--plan", plan_p, "--metrics", snap_p, "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)["actions"]


def _costs_money(a: dict) -> bool:
    return a["cost_per_hour"] > 1e-9 or a["kind"] == "replan"


@pytest.mark.parametrize("steady", [False, True])
def test_planned_peaks_buy_nothing(tmp_path, capsys, multilingual_plan, steady):
    """Plan and policy agree on "enough": every model at exactly its planned peak is within what the
    plan holds at its headroom, so the policy proposes nothing that costs money. (With the policy's
    target utilisation stacked on the plan's headroom it bought an L4 for asr-en here.)"""
    acts = _scale(tmp_path, capsys, multilingual_plan, {}, *(["--steady"] if steady else []))
    assert not [a for a in acts if _costs_money(a)], acts


def test_half_again_over_one_peak_buys_capacity(tmp_path, capsys, multilingual_plan):
    """asr-en at 1.5x its planned peak is past what its replicas hold (alone on their L4s, four
    hold 1.33x): the policy adds capacity that costs money (a new GPU, or a re-plan)."""
    acts = _scale(tmp_path, capsys, multilingual_plan, {"asr-en": 1.5})
    paid = [a for a in acts if _costs_money(a)]
    assert paid, acts
    assert all("asr-en" in a["summary"] or a["kind"] == "replan" for a in paid)


def test_more_demand_than_one_step_reaches_still_buys_capacity(tmp_path, capsys, multilingual_plan):
    """Demand past what one step's actions can cover still gets the most they add, and more demand
    never gets less: asr-en at 5x its peak got nine new replicas, at 6x none (a new replica had to
    cover 5 % of the deficit, more than any one replica holds; and where nothing covered the want,
    the cheapest sequence, doing nothing, won)."""
    cost = []
    for f in (2.0, 4.0, 8.0, 30.0):
        acts = _scale(tmp_path, capsys, multilingual_plan, {"asr-en": f})
        cost.append(sum(a["cost_per_hour"] for a in acts if a["kind"] != "replan"))
    assert cost[0] > 0 and all(b >= a - 1e-9 for a, b in zip(cost, cost[1:])), cost


def test_a_late_model_short_of_its_want_gets_capacity_and_the_true_reason(tmp_path, capsys, multilingual_plan):
    """asr-en over what its replicas hold and late: a late model was offered only moves out of a
    crowded slot, and with every replica on a GPU of its own it got nothing, told 'max_replicas,
    pool limits' with GPUs free in both pools."""
    en = multilingual_plan.fleet.model("asr-en")
    models = {m.name: {"arrival_rps": m.traffic.peak_rps} for m in multilingual_plan.fleet.models}
    models["asr-en"] = {"arrival_rps": 1.45 * en.traffic.peak_rps, "late_share": 0.02}
    plan_p, snap_p = _files(tmp_path, multilingual_plan, models)
    assert main(["scale", "--plan", plan_p, "--metrics", snap_p, "--json"]) == 0
    acts = json.loads(capsys.readouterr().out)["actions"]
    assert [a for a in acts if _costs_money(a)], acts
    assert not any("max_replicas" in a["summary"] or "pool limits" in a["summary"] for a in acts), acts
