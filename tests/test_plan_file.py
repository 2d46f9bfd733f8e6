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
    # A member's memory edited to 0 passed the slot's memory check, which added the plan's figures.
    ("member-memory", lambda d: d["placements"][0]["models"][0].__setitem__("memory_gb", 0),
     "but the fleet's model needs"),
    ("gpus", lambda d: d["gpus"].__setitem__(next(iter(d["gpus"])), 999), "from the plan's layouts"),
    ("replica-twice", lambda d: _twice(d), "placed 2 times"),
    # The numbers a report prints beside the bounds, edited: they passed until the thirty-first session.
    ("share", lambda d: d["placements"][0]["models"][0].__setitem__("share", 0.01), "share 0.0100 reported"),
    ("compute-share", lambda d: d["placements"][0].__setitem__("compute_share", 0.01),
     "compute_share 0.0100 reported"),
    ("slot-memory", lambda d: d["placements"][0].__setitem__("memory_gb", 0.01), "but its members need"),
    ("slo", lambda d: d["placements"][0]["models"][0].__setitem__("slo_ms", 1e9), "but the fleet's SLO is"),
    ("binding", lambda d: _other_binding(d["placements"][0]), "binding "),
    ("greedy", lambda d: d["baselines"]["greedy"].__setitem__("cost_per_hour", 0.5), "baseline greedy: cost 0.5"),
    ("baseline-pool", lambda d: d["baselines"]["greedy"].__setitem__("gpus", {"nope": 1}), "not a pool of the fleet"),
    ("optimal", lambda d: d.update(status="optimal", lower_bound_cost_per_hour=d["cost_per_hour"] / 2),
     "status optimal, but the bound"),
    ("solve-seconds", lambda d: d.__setitem__("solve_seconds", -1), "solve_seconds: is"),
]


def _other_binding(p: dict) -> None:
    """The slot's limit named as one that is not nearest its cap."""
    p["binding"] = "memory" if p["binding"] != "memory" else "compute"


def _twice(d: dict) -> None:
    """A member placed again as another member's replica of the same model."""
    members: dict[str, dict] = {}
    for p in d["placements"]:
        for m in p["models"]:
            if m["name"] in members:
                m["replica"] = members[m["name"]]["replica"]
                return
            members[m["name"]] = m
    raise AssertionError("the plan has no model with two replicas")


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


# -- a hostile sweep of plan files (twenty-ninth session, A2-A8, C6): fields that went unchecked
# crashed every reader with a traceback (a TypeError in check_plan, StopIteration on an unknown
# layout pool, an unhashable mig_start in render k8s) or were accepted and broke a later stage (a
# layout's node 'a;$(id)' became a node label; a slot of 0 GB crashed scale and simulate).


def _whole(d: dict) -> int:
    return next(i for i, p in enumerate(d["placements"]) if p["slot"] == "whole")


def _lay(d: dict, mig: bool = False) -> int:
    return next(i for i, l in enumerate(d["layouts"]) if (l["layout"] != "whole") == mig)


def _set(d: dict, where: str, i: int, key: str, value: Any) -> str:
    d[where][i][key] = value
    return f"{where}[{i}].{key}"


def _model(d: dict) -> str:
    return d["placements"][0]["models"][0]["name"]


HOSTILE: list[tuple[str, Callable[[dict], str], str]] = [
    *[(f"replicas-{n}", lambda d, v=v: d["replicas"].__setitem__(_model(d), v) or f"replicas.{_model(d)}",
       "must be a whole number of replicas") for n, v in (("null", None), ("str", "x"), ("list", []), ("obj", {}),
                                                          ("neg", -1), ("half", 0.5))],
    ("replicas-unknown", lambda d: d["replicas"].__setitem__("nope", 1) or "replicas.nope", "is not a model"),
    *[(f"layout-pool-{n}", lambda d, v=v: _set(d, "layouts", 0, "pool", v), "is not a pool of the plan's fleet")
      for n, v in (("null", None), ("str", "x"), ("list", []), ("obj", {}))],
    *[(f"layout-node-{n}", lambda d, v=v: _set(d, "layouts", _lay(d), "node", v), "the form is <pool>-n<k>")
      for n, v in (("null", None), ("int", 3), ("list", []), ("obj", {}), ("str", "x"), ("shell", "a;$(id)"),
                   ("path", "../../etc/passwd"), ("zeros", "l4-n00"), ("past", "l4-n99"), ("other", "a100-80-n0"))],
    *[(f"layout-gpu-{n}", lambda d, v=v: _set(d, "layouts", _lay(d), "gpu", v), "is not a GPU index")
      for n, v in (("null", None), ("str", "x"), ("list", []), ("neg", -1), ("big", 99))],
    ("layout-name", lambda d: _set(d, "layouts", _lay(d), "layout", "a;$(id)"), "pool l4 does not partition"),
    ("layout-mig-name", lambda d: _set(d, "layouts", _lay(d, True), "layout", "9g.99gb"), "is not whole or a MIG"),
    ("creation-order-whole", lambda d: _set(d, "layouts", _lay(d), "creation_order", ["1g.10gb"]), "must be empty"),
    ("creation-order-str", lambda d: _set(d, "layouts", _lay(d), "creation_order", "x"), "must be a JSON list"),
    ("creation-order-mig", lambda d: _set(d, "layouts", _lay(d, True), "creation_order",
                                          d["layouts"][_lay(d, True)]["creation_order"][::-1]), "order that creates"),
    ("layout-twice", lambda d: d["layouts"].append(dict(d["layouts"][1])) or f"layouts[{len(d['layouts']) - 1}]",
     "again (layouts[1])"),
    ("placements-null", lambda d: d.__setitem__("placements", None) or "placements", "must be a JSON list"),
    *[(f"mig-start-{n}", lambda d, v=v: _set(d, "placements", _whole(d), "mig_start", v), "must be null on a whole")
      for n, v in (("list", []), ("obj", {}), ("int", 0))],
    *[(f"capacity-{n}", lambda d, v=v: _set(d, "placements", _whole(d), "memory_capacity_gb", v), "GB its members need")
      for n, v in (("zero", 0), ("half", 0.5))],
    ("capacity-not-the-slots", lambda d: _slot(d, lambda p: p.__setitem__("memory_capacity_gb", 80.0)),
     "memory_capacity_gb 80 GB, but pool l4's whole slot has 22.50 GB"),
    ("unpaid-gpu", lambda d: _slot(d, lambda p: d["layouts"].remove(next(
        l for l in d["layouts"] if (l["node"], l["gpu"]) == (p["node"], p["gpu"])))), "the plan's layouts do not list"),
]


def _slot(d: dict, edit: Callable[[dict], Any]) -> str:
    """Edit a whole-GPU slot; the check of the plan against its fleet names it by its id."""
    p = d["placements"][_whole(d)]
    edit(p)
    return p["id"]


@pytest.mark.parametrize("name,edit,says", HOSTILE, ids=[e[0] for e in HOSTILE])
def test_a_hostile_plan_field_is_named_not_a_python_error(plan_doc, tmp_path, name, edit, says) -> None:
    """Each value is refused where the plan is read, as one user error naming its field (``field``
    is what the edit returns: the error names it)."""
    d = json.loads(json.dumps(plan_doc))
    field = edit(d)
    (tmp_path / "bad.json").write_text(json.dumps(d))
    with pytest.raises(InputError) as e:
        load_plan(tmp_path / "bad.json")
    msg = str(e.value)
    assert f"{field}:" in msg and says in msg and "\n" not in msg, msg


READERS = [
    ["plan", str(EXAMPLE), "--time-limit", "1", "--current", "{plan}"],
    ["render", "k8s", "{plan}", "-d", "{tmp}/k8s"],
    ["render", "triton", "{plan}", "-d", "{tmp}/triton", "--device", "cpu"],
    ["simulate", "{plan}", "--scenario", "peak", "--duration", "1m", "--no-progress"],
    ["scale", "--plan", "{plan}", "--metrics", "{tmp}/snap.json"],
    ["serve-local", "{plan}", "--group", "0", "--seconds", "1"],
]


@pytest.mark.parametrize("argv", READERS, ids=["plan-current", "render-k8s", "render-triton", "simulate", "scale",
                                              "serve-local"])
@pytest.mark.parametrize("edit,field", [
    (lambda d: d["replicas"].__setitem__(_model(d), None), "replicas."),
    (lambda d: d["layouts"][0].__setitem__("node", "a;$(id)"), "layouts[0].node"),
    (lambda d: d["placements"][_whole(d)].__setitem__("memory_capacity_gb", 0.5), ".memory_capacity_gb"),
], ids=["replicas", "layout-node", "capacity"])
def test_every_plan_reader_refuses_a_hostile_plan_in_one_line(plan_doc, tmp_path, capsys, argv, edit, field) -> None:
    d = json.loads(json.dumps(plan_doc))
    edit(d)
    (tmp_path / "bad.json").write_text(json.dumps(d))
    (tmp_path / "snap.json").write_text(json.dumps({"time": 0, "models": {}}))
    args = [a.format(plan=tmp_path / "bad.json", tmp=tmp_path) for a in argv]
    assert main(args) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and field in lines[0] and "Traceback" not in err, err
    assert not (tmp_path / "k8s").exists() and not (tmp_path / "triton").exists()
