"""``packer scale``: the dry run prints every action with its cost and reason."""

from __future__ import annotations

import json

from packer.cli import main
from packer.plan import load_plan, save_plan
from test_scaling_helpers import three_slot_plan_for_cli, tiny_plan


def _files(tmp_path, plan, models):
    save_plan(plan, tmp_path / "plan.json")
    (tmp_path / "snap.json").write_text(json.dumps({"time": 1000, "models": models}))
    return str(tmp_path / "plan.json"), str(tmp_path / "snap.json")


def test_scale_up_dry_run(tmp_path, capsys):
    plan_p, snap_p = _files(tmp_path, tiny_plan(), {"asr-a": {"arrival_rps": 1800}})
    out_p = tmp_path / "next.json"
    assert main(["scale", "--plan", plan_p, "--metrics", snap_p, "-o", str(out_p)]) == 0
    out = capsys.readouterr().out
    # one 1800 rps sample, less its Poisson allowance 2 sqrt(1800 / 60) = 10.95, over 0.85: 2104.8,
    # more than the 1897.4 rps asr-a's L4 holds
    assert "add_replica" in out and "because asr-a wants 2104.8 rps" in out and "cost +0.00/h" in out
    assert "cost per hour: 1.60 -> 1.60" in out
    assert load_plan(out_p).replicas["asr-a"] == 2


def test_steady_shows_scale_down(tmp_path, capsys):
    plan_p, snap_p = _files(tmp_path, three_slot_plan_for_cli(),
                            {"asr-a": {"arrival_rps": 50}, "asr-b": {"arrival_rps": 50}, "punct": {"arrival_rps": 5}})
    assert main(["scale", "--plan", plan_p, "--metrics", snap_p]) == 0
    assert "consolidate" not in capsys.readouterr().out  # one snapshot is no history
    assert main(["scale", "--plan", plan_p, "--metrics", snap_p, "--steady", "--json"]) == 0
    acts = json.loads(capsys.readouterr().out)
    assert [a["kind"] for a in acts if a["kind"] == "consolidate"] == ["consolidate"]
    assert all(a["reason"] and "cost_per_hour" in a for a in acts)


def test_user_errors_exit_2(tmp_path, capsys):
    plan_p, snap_p = _files(tmp_path, tiny_plan(), {"nope": {"arrival_rps": 1}})
    assert main(["scale", "--plan", plan_p, "--metrics", snap_p]) == 2
    assert "not in the plan: nope" in capsys.readouterr().err
    assert main(["scale", "--plan", plan_p]) == 2
    assert main(["scale", "--plan", str(tmp_path / "missing.json"), "--metrics", snap_p]) == 2
