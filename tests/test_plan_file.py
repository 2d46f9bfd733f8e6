"""A plan file is checked when read: a hand-edited value is refused, never rendered, served,
simulated, scaled or applied. Found by a hostile sweep (twenty-fourth session): a slot id written
into a path let ``render triton`` delete a directory outside ``-d``, a node name became shell code
in ``label-nodes.sh``, and edited bounds, costs, batches and models went through every command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest

from packer.fleetfile import load_fleet
from packer.plan import save_plan
from packer.planfile import load_plan
from packer.planner import PlanSettings, plan_fleet
from packer.safeload import InputError
from packer_cli.main import main

EXAMPLE = Path(__file__).parents[1] / "packer" / "examples" / "multilingual-meetings.yaml"


@pytest.fixture(scope="module")
def plan_doc(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    path = tmp_path_factory.mktemp("plan") / "plan.json"
    save_plan(plan_fleet(load_fleet(EXAMPLE), PlanSettings(time_limit_s=5, prove_s=0)), path)
    return json.loads(path.read_text())


def _mig(d: dict) -> dict:
    return next(p for p in d["placements"] if p["slot"] != "whole")


EDITS: list[tuple[str, Callable[[dict], Any], str]] = [
    ("path", lambda d: _mig(d).__setitem__("mig_start", "0/../../../victim"), ".mig_start: must be"),
    ("shell", lambda d: [p.__setitem__("node", "a$(touch PWNED)") for p in d["placements"]], ".node: 'a$(touch"),
    ("model", lambda d: d["placements"][0]["models"][0].__setitem__("name", "asr-xx"), "is not a model of"),
    ("pool", lambda d: d["placements"][0].__setitem__("pool", "nope"), ".pool: 'nope' is not a pool"),
    ("profile", lambda d: d["placements"][0].__setitem__("slot", "9g.99gb"), ".slot: '9g.99gb'"),
    ("batch", lambda d: d["placements"][0]["models"][0].__setitem__("batch_size", 1.5), ".batch_size: must be"),
    ("duty", lambda d: d["placements"][0].__setitem__("duty_cycle_ms", -100), ".duty_cycle_ms: must be"),
    ("twice", lambda d: d["placements"].append(dict(d["placements"][0])), "again (placements[0])"),
    ("bound", lambda d: d["placements"][0]["models"][0].__setitem__("p99_bound_ms", 1.0), "reported p99 bound 1.00"),
    ("cost", lambda d: d.__setitem__("cost_per_hour", 0.01), "cost 0.01 does not match"),
    ("empty", lambda d: d.__setitem__("placements", []), "placements: is empty"),
    ("version", lambda d: d.__setitem__("version", 2), "version: is 2"),
    ("replicas", lambda d: d["replicas"].__setitem__(d["placements"][0]["models"][0]["name"], 50), "plan says 50"),
    ("gpu", lambda d: d["placements"][0].__setitem__("gpu", 99), ".gpu: must be GPU indices"),
    ("node", lambda d: d["placements"][0].__setitem__("node", d["placements"][0]["pool"] + "-n99"),
     "-n99 is not one of pool"),
    ("reason", lambda d: d["placements"][0].__setitem__("reason", "x" * 100_000), ".reason: must be text"),
]


@pytest.mark.parametrize("name,edit,says", EDITS, ids=[e[0] for e in EDITS])
def test_an_edited_plan_is_refused_where_it_is_read(plan_doc, tmp_path, name, edit, says) -> None:
    d = json.loads(json.dumps(plan_doc))
    edit(d)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(d))
    with pytest.raises(InputError) as e:
        load_plan(path)
    assert says in str(e.value), str(e.value)


SHAPES: list[tuple[Callable[[dict], Any], str]] = [
    (lambda d: d.__setitem__("baselines", {"x": 3}), "baselines.x: must be a JSON object"),
    (lambda d: d["placements"][0]["models"][0].__setitem__("extra", 1), "models[0]: has `extra`"),
    (lambda d: d["placements"][0]["models"][0].pop("share"), "models[0]: has no `share`"),
    (lambda d: d["placements"].__setitem__(0, "x"), "placements[0]: must be a JSON object"),
    (lambda d: d["placements"][2].pop("pool"), "placements[2]: has no `pool`"),
    (lambda d: d.__setitem__("settings", [1]), "settings: must be a JSON object"),
]


@pytest.mark.parametrize("edit,says", SHAPES)
def test_a_value_of_the_wrong_json_type_is_named_not_a_python_error(plan_doc, tmp_path, edit, says) -> None:
    d = json.loads(json.dumps(plan_doc))
    edit(d)
    (tmp_path / "bad.json").write_text(json.dumps(d))
    with pytest.raises(InputError) as e:
        load_plan(tmp_path / "bad.json")
    assert says in str(e.value) and "__init__" not in str(e.value), str(e.value)


def test_render_triton_refuses_a_slot_id_that_leaves_its_directory(plan_doc, tmp_path, capsys) -> None:
    victim = tmp_path / "victim" / "streaming"
    victim.mkdir(parents=True)
    (victim / "keep.txt").write_text("x")
    d = json.loads(json.dumps(plan_doc))
    _mig(d)["mig_start"] = "0/../../../victim"
    (tmp_path / "bad.json").write_text(json.dumps(d))
    out = tmp_path / "out" / "deep"
    assert main(["render", "triton", str(tmp_path / "bad.json"), "-d", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "mig_start" in err[0]
    assert (victim / "keep.txt").read_text() == "x"


def test_the_planners_plans_and_their_scaled_successors_are_read(plan_doc, tmp_path) -> None:
    """What the planner and the scaler write passes the same check (a plan of another status or
    with more replicas than a fresh plan's is still a plan)."""
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan_doc))
    assert load_plan(path).placements
    snap = {"time": 0, "models": {"asr-it": {"arrival_rps": 400, "queue_ms": 150, "late_share": 0.2,
                                             "in_flight": 40, "queued": 100}}}
    (tmp_path / "snap.json").write_text(json.dumps(snap))
    assert main(["scale", "--plan", str(path), "--metrics", str(tmp_path / "snap.json"),
                 "-o", str(tmp_path / "next.json")]) == 0
    nxt = load_plan(tmp_path / "next.json")
    assert nxt.status == "scaled" and len(nxt.placements) > len(plan_doc["placements"])
