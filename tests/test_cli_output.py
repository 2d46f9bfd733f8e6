"""The CLI's output contract (issue 16 items 6-8): a re-plan of an unchanged fleet keeps its proof
and lists its moves; every command takes ``--format table|json|yaml`` and ``-o FILE`` alike;
work that takes seconds shows a progress line; the reconciler's dry run prints a command that
applies it and an unreachable API server is one line with a fix."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from packer.cli import main
from packer.cli_plan import example_path
from packer.fleet import load_fleet
from packer.plan import load_plan, save_plan
from packer.planner import PlanSettings, plan_fleet
from test_scaling_helpers import FLEET as TINY
from test_scaling_helpers import tiny_plan

MULTI = example_path()  # multilingual-meetings: the relaxation's bound is 8.2 % below its optimum


# -- 6. re-planning an unchanged fleet ---------------------------------------------------------


def test_replan_of_an_unchanged_fleet_keeps_the_proof(tmp_path, capsys):
    p = plan_fleet(load_fleet(MULTI), PlanSettings(time_limit_s=2, prove_s=0))
    # what `packer plan` writes once its exact search has proven the plan optimal
    proven = replace(p, status="optimal", lower_bound_cost_per_hour=p.cost_per_hour,
                     bound_method="exact search: no cheaper plan exists (test)")
    save_plan(proven, tmp_path / "cur.json")
    assert main(["plan", str(MULTI), "--current", str(tmp_path / "cur.json"), "--time-limit", "2",
                 "-o", str(tmp_path / "next.json")]) == 0
    out = capsys.readouterr().out
    again = load_plan(tmp_path / "next.json")
    assert again.id == p.id and again.status == "optimal" and again.gap == 0, out
    assert "[optimal]" in out and "gap 0.0%" in out
    assert "carried from the current plan" in again.bound_method
    assert "moves against the current plan: none" in out


def test_replan_lists_each_move_in_the_table_and_json(tmp_path, capsys):
    save_plan(tiny_plan(), tmp_path / "cur.json")
    doc = copy.deepcopy(TINY)
    doc["models"] = [m for m in doc["models"] if m["name"] != "punct"]  # punct retired: both replicas go
    (tmp_path / "fleet.yaml").write_text(yaml.safe_dump(doc))
    args = ["plan", str(tmp_path / "fleet.yaml"), "--current", str(tmp_path / "cur.json"), "--time-limit", "1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    head = next(ln for ln in out.splitlines() if ln.startswith("moves against the current plan: "))
    assert "0 added, 2 removed)" in head  # the planner may also consolidate asr-a and asr-b
    listed = [ln.split() for ln in out.splitlines() if ln.startswith(("  remove", "  move", "  add"))]
    assert int(head.split(": ")[1].split()[0]) == len(listed)  # every move is listed, not only counted
    assert ["remove", "punct#0", "l4-n0-g0-whole", "->", "(removed)"] in listed
    assert ["remove", "punct#1", "l4-n0-g1-whole", "->", "(removed)"] in listed
    assert main(args + ["--format", "json"]) == 0
    moves = {(m["model"], m["replica"], m["src"], m["dst"]) for m in json.loads(capsys.readouterr().out)["moves"]}
    assert {("punct", 0, "l4-n0-g0-whole", None), ("punct", 1, "l4-n0-g1-whole", None)} <= moves
    assert len(moves) == len(listed)


def test_moves_say_added_moved_and_removed():
    from packer.plan import Move
    from packer.report import moves

    p = replace(tiny_plan(), moves=(Move("asr-a", 1, None, "l4-n0-g2-whole"), Move("asr-b", 0, "l4-n0-g1-whole",
                                                                                   "l4-n0-g3-whole")))
    text = moves(p).splitlines()
    assert text[0] == "moves against the current plan: 2 (1 moved, 1 added, 0 removed)"
    assert text[1].split() == ["add", "asr-a#1", "(new)", "->", "l4-n0-g2-whole"]
    assert text[2].split() == ["move", "asr-b#0", "l4-n0-g1-whole", "->", "l4-n0-g3-whole"]
