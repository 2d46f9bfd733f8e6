"""The CLI's input contract (issue 16 items 1-5, 7): typos are named, plans of another fleet and
plans of other traffic are refused, bad numbers and unwritable outputs fail before any work, and
every such error is one line with exit code 2."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from packer_cli.main import main
from packer_cli.plan import example_path
from packer.fleet import FleetError
from packer.fleetfile import parse_fleet
from packer.plan import save_plan
from test_scaling_helpers import tiny_plan

FLEET = example_path()  # multilingual-meetings
BASE = yaml.safe_load(FLEET.read_text())
ROOT = Path(__file__).resolve().parents[1]


def one_error(capsys) -> str:
    """The run's error: exactly one line on stderr, nothing on stdout, no traceback."""
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and out == ""
    return lines[0]


def fleet_file(tmp_path: Path, fn=None, name: str = "fleet.yaml") -> str:
    d = copy.deepcopy(BASE)
    if fn:
        fn(d)
    p = tmp_path / name
    p.write_text(yaml.safe_dump(d, sort_keys=False))
    return str(p)


# -- 1. unknown keys ---------------------------------------------------------------------------


@pytest.mark.parametrize("fn,says", [
    (lambda d: d["models"][0].update(min_replica=3), "models[0] (asr-en).min_replica: is not a known key. "
                                                     "Fix: did you mean min_replicas?"),
    (lambda d: d["pools"][0].update(max_node=1), "pools[0] (a100-80).max_node: is not a known key. "
                                                 "Fix: did you mean max_nodes?"),
    (lambda d: d["models"][0].update(slo_msec=d["models"][0].pop("slo_ms")),
     "models[0] (asr-en).slo_ms: is missing; found slo_msec. Fix: did you mean slo_ms?"),
    (lambda d: d["models"][0]["traffic"].update(peak=5), "traffic.peak: is not a known key"),
    (lambda d: d.update(modles=d.pop("models")), "fleet.models: is missing; found modles"),
    (lambda d: d["models"][0].update(colour="red"), "colour: is not a known key. Fix: remove it; the keys here are"),
], ids=["min_replica", "max_node", "slo_msec", "traffic", "top", "no-match"])
def test_unknown_keys_are_refused_with_a_did_you_mean(tmp_path, capsys, fn, says):
    assert main(["plan", fleet_file(tmp_path, fn)]) == 2
    assert says in one_error(capsys)


def test_extension_keys_and_shared_fleets_still_load():
    doc = copy.deepcopy(BASE)
    doc["x-defaults"] = {"anything": [1, 2]}
    assert parse_fleet(doc).models
    for p in (ROOT.parent / "shared" / "fleets").glob("*.yaml"):
        parse_fleet(yaml.safe_load(p.read_text()))


@pytest.mark.parametrize("field,value,says", [
    ("base", 1e308, "latency_ms.base: is 1e+308, outside the allowed range (0 to 1e+06 ms)"),
    ("rps", 1e9, "traffic.rps: is 1e+09, outside the allowed range (0 to 1e+06 requests/s)"),
    ("peak_rps", 2**63, "traffic.peak_rps: is 9.22337e+18, outside the allowed range"),
    ("slo_ms", float("nan"), "slo_ms: is nan, outside the allowed range"),
    ("memory_gb", float("inf"), "memory_gb: is inf, outside the allowed range"),
])
def test_numbers_out_of_range_say_the_range(field, value, says):
    d = copy.deepcopy(BASE)
    m = d["models"][0]
    {"base": m["latency_ms"], "rps": m["traffic"], "peak_rps": m["traffic"]}.get(field, m)[field] = value
    if field == "rps":
        m["traffic"]["peak_rps"] = value
    with pytest.raises(FleetError) as e:
        parse_fleet(d)
    assert says in str(e.value) and "\n" not in str(e.value)


def test_the_reference_example_loads_and_names_every_key():
    import re

    from packer import fleet as fl

    text = (ROOT / "docs" / "fleet-format.md").read_text()
    parse_fleet(yaml.safe_load(re.search(r"```yaml\n(.*?)```", text, re.S).group(1)))
    for key in {*fl.FLEET_KEYS, *fl.POOL_KEYS, *fl.MODEL_KEYS, *fl.TRAFFIC_KEYS, *fl.LATENCY_KEYS, *fl.ARTIFACT_KEYS}:
        assert f"`{key}`" in text, key
    assert "docs/fleet-format.md" in (ROOT / "README.md").read_text()


def test_yaml_1_2_exponents_are_numbers(tmp_path):
    text = FLEET.read_text().replace("rps: 3437.5", "rps: 3.4375e3", 1)
    assert "3.4375e3" in text
    p = tmp_path / "f.yaml"
    p.write_text(text)
    from packer.fleetfile import load_fleet

    assert load_fleet(p).models[0].traffic.rps == 3437.5


@pytest.mark.parametrize("art,says", [
    ("", "artifact.uri: is '', not a URI"),
    ({"uri": "https://models.example/a b.onnx"}, "artifact.uri: is 'https://models.example/a b.onnx', not a URI"),
    ({"uri": "https://models.example/a.onnx", "backend": "onnx\x00runtime"},
     "artifact.backend: is 'onnx\\x00runtime', not a Triton backend name"),
], ids=["empty", "space", "nul"])
def test_an_artifact_that_cannot_be_rendered_is_refused(art, says):
    """Found by fuzzing: an empty ``uri`` or a NUL in ``backend`` passed and broke the rendered
    repository later."""
    d = copy.deepcopy(BASE)
    d["models"][0]["artifact"] = art
    with pytest.raises(FleetError) as e:
        parse_fleet(d)
    assert says in str(e.value)


def test_a_key_given_twice_is_refused(tmp_path, capsys):
    """YAML keeps the last of two equal keys without a word: a pool with ``gpus_per_node: 2`` then
    ``gpus_per_node: 64`` planned on 64 (found by fuzzing). Merge keys still override."""
    text = FLEET.read_text().replace("  gpus_per_node: 8\n", "  gpus_per_node: 8\n  gpus_per_node: 64\n", 1)
    assert text.count("gpus_per_node: 64") == 1
    p = tmp_path / "f.yaml"
    p.write_text(text)
    assert main(["plan", str(p)]) == 2
    assert "gives the key 'gpus_per_node' twice in one mapping (line" in one_error(capsys)
    from packer.safeload import parse_yaml

    assert parse_yaml("a: &x {k: 1, j: 2}\nb: {<<: *x, k: 3}\n", "t") == {"a": {"k": 1, "j": 2}, "b": {"k": 3, "j": 2}}


@pytest.mark.parametrize("written, says", [
    ("010", "reads 'gpus_per_node': 010 (line"),  # YAML 1.1 octal: 8
    ("1:04", "reads 'gpus_per_node': 1:04 (line"),  # YAML 1.1 base 60: 64
])
def test_a_number_yaml_reads_other_than_as_written_is_refused(tmp_path, capsys, written, says):
    """PyYAML reads YAML 1.1: ``gpus_per_node: 010`` is 8 and ``1:04`` is 64, where a reader (and
    YAML 1.2) sees 10 and text. Refused with the key and the number it would have been; leading
    zeros that read the same (``07``), hexadecimal and ``1_000`` still read as numbers."""
    text = FLEET.read_text().replace("  gpus_per_node: 8\n", f"  gpus_per_node: {written}\n", 1)
    assert f"gpus_per_node: {written}" in text
    p = tmp_path / "f.yaml"
    p.write_text(text)
    assert main(["plan", str(p)]) == 2
    err = one_error(capsys)
    assert says in err and "in YAML 1.1" in err and "write it in decimal" in err
    from packer.safeload import parse_yaml

    assert parse_yaml("a: 07\nb: 0x20\nc: 1_000\nd: '010'\ne: [0, 00, 1.5]\n", "t") == {
        "a": 7, "b": 32, "c": 1000, "d": "010", "e": [0, 0, 1.5]}


def test_a_named_pipe_nobody_writes_to_is_refused_in_bounded_time(tmp_path, capsys, monkeypatch):
    """``packer plan`` on a named pipe with no writer blocked forever in ``open`` (found by
    fuzzing); a pipe with a writer (``packer plan <(make-fleet)``) is still read."""
    import os
    import threading

    from packer import safeload

    monkeypatch.setattr(safeload, "PIPE_WAIT_S", 0.5)
    fifo = tmp_path / "fleet.yaml"
    os.mkfifo(fifo)
    t = time.monotonic()
    assert main(["plan", str(fifo)]) == 2
    assert time.monotonic() - t < 10
    assert "is a pipe that sent nothing for" in one_error(capsys)

    def write() -> None:
        with open(fifo, "w") as fh:
            fh.write(FLEET.read_text())

    writer = threading.Thread(target=write)
    writer.start()
    assert safeload.read_text(fifo, "fix") == FLEET.read_text()
    writer.join()


# -- 2. a plan of another fleet, a comparison of other traffic ----------------------------------


def test_current_plan_of_another_fleet_is_refused_before_solving(tmp_path, capsys):
    save_plan(tiny_plan(), tmp_path / "tiny.json")
    t0 = time.monotonic()
    assert main(["plan", str(FLEET), "--current", str(tmp_path / "tiny.json")]) == 2
    assert time.monotonic() - t0 < 10
    line = one_error(capsys)
    assert "a plan of fleet 'tiny'" in line and "not of fleet 'multilingual-meetings'" in line
    assert "0 in common" in line


def test_current_plan_of_an_evolved_fleet_is_accepted():
    from packer.cliutil import same_fleet

    plan = tiny_plan()
    grown = parse_fleet({"name": "renamed", "pools": [{"name": "l4", "gpu": "l4-24gb", "gpus_per_node": 4,
                                                       "cost_per_gpu_hour": 0.8}],
                         "models": [m for m in _tiny_models() if m["name"] != "punct"]})
    same_fleet(plan.fleet, grown, "cur.json", "f.yaml")  # 2 of 3 models kept: the same fleet, renamed


def _tiny_models():
    from test_scaling_helpers import FLEET as TINY

    return copy.deepcopy(TINY["models"])


def test_compare_with_other_traffic_is_refused_before_simulating(tmp_path, capsys):
    plan = tiny_plan()
    save_plan(plan, tmp_path / "a.json")
    save_plan(replace(plan, fleet=plan.fleet.with_traffic(2.0)), tmp_path / "b.json")
    assert main(["simulate", str(tmp_path / "a.json"), "--compare", str(tmp_path / "b.json"),
                 "--duration", "1s", "--no-progress"]) == 2
    line = one_error(capsys)
    assert "--compare" in line and "a.json" in line and "b.json" in line and "traffic differs for asr-a" in line


# -- 3. numeric options -------------------------------------------------------------------------


@pytest.mark.parametrize("args,says", [
    (["plan", "--time-limit", "-1"], "'--time-limit': -1 is out of range"),
    (["plan", "--time-limit", "nan"], "'--time-limit': nan is not a finite number"),
    (["plan", "--prove", "inf"], "'--prove': inf is not a finite number"),
    (["plan", "--seed", "-1"], "'--seed': -1 is out of range"),
    (["plan", "--headroom", "nan"], "'--headroom': nan"),
    (["capacity", str(FLEET), "--attainment", "2"], "'--attainment': 2 is out of range"),
    (["simulate", str(FLEET), "--seed", "x"], "'--seed': 'x' is not an integer"),
])
def test_negative_and_nan_options_are_refused(capsys, args, says):
    assert main(args) == 2
    line = one_error(capsys)
    assert says in line and "--help" in line


# -- 4. no tracebacks ---------------------------------------------------------------------------


@pytest.fixture
def snap(tmp_path):
    p = tmp_path / "snap.json"
    p.write_text(json.dumps({"time": 1, "models": {"asr-en": {"arrival_rps": 10}}}))
    return str(p)


def test_scale_given_a_fleet_where_the_plan_belongs(capsys, snap):
    assert main(["scale", "--plan", str(FLEET), "--metrics", snap]) == 2
    line = one_error(capsys)
    assert "is a fleet file, not a plan" in line and f"packer plan {FLEET} -o plan.json" in line


@pytest.mark.parametrize("text,says", [
    ("notjson", "is not a plan (not JSON)"),
    ("[]", "is a JSON list, not a plan"),
    ("", "is empty"),
    ('{"fleet": {}, "status": "optimal", "cost_per_hour": 1}', "it has no `placements`"),
    ('{"fleet": {"name": "x"}, "placements": [], "status": "optimal", "cost_per_hour": 1}', "fleet"),
    ('{"placements": [{"pool": 1}], "fleet": ' + json.dumps(BASE) + ', "status": "x", "cost_per_hour": 1}',
     "placements[0]: has no `node`"),
    ('{"a": [1, 2,', "is not JSON"),
], ids=["notjson", "list", "empty", "no-placements", "bad-fleet", "bad-placement", "truncated"])
def test_current_that_is_not_a_plan(tmp_path, capsys, text, says):
    p = tmp_path / "cur.json"
    p.write_text(text)
    assert main(["plan", str(FLEET), "--current", str(p)]) == 2
    assert says in one_error(capsys)


@pytest.mark.parametrize("opt", ["-o", "--svg"])
def test_outputs_are_checked_before_solving(tmp_path, capsys, opt):
    t0 = time.monotonic()
    assert main(["plan", str(FLEET), opt, "/nonexistent/dir/p.json"]) == 2
    assert time.monotonic() - t0 < 5  # the solve alone takes longer
    assert "the directory /nonexistent/dir does not exist" in one_error(capsys)


def test_output_onto_the_fleet_is_refused(tmp_path, capsys):
    f = fleet_file(tmp_path)
    assert main(["plan", f, "-o", f]) == 2
    assert "would overwrite the input file" in one_error(capsys)
    assert yaml.safe_load(Path(f).read_text())["models"]  # untouched


def test_scale_output_checked_first(tmp_path, capsys, snap):
    save_plan(tiny_plan(), tmp_path / "p.json")
    assert main(["scale", "--plan", str(tmp_path / "p.json"), "--metrics", snap, "-o", str(tmp_path)]) == 2
    assert "is a directory" in one_error(capsys)


# -- 5. the hint of render triton / serve-local given a fleet -----------------------------------


@pytest.mark.parametrize("cmd", [["render", "triton", "{f}", "-o", "{d}"], ["serve-local", "{f}"],
                                 ["render", "k8s", "{f}", "-o", "{d}"]])
def test_a_fleet_given_as_a_plan_is_not_told_to_be_overwritten(tmp_path, capsys, cmd):
    f = fleet_file(tmp_path)
    assert main([c.format(f=f, d=tmp_path / "out") for c in cmd]) == 2
    line = one_error(capsys)
    assert f"-o {f}" not in line and f"packer plan {f} -o plan.json" in line


# -- 7. python -m packer_cli ------------------------------------------------------------------------


def test_python_dash_m_packer_cli():
    r = subprocess.run([sys.executable, "-m", "packer_cli", "plan", "--time-limit", "-1"], capture_output=True,
                       text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 2 and r.stdout == "" and len(r.stderr.splitlines()) == 1
    assert "--time-limit" in r.stderr and "Traceback" not in r.stderr


def test_a_replan_without_mig_repacks_the_current_plans_mig_instances(tmp_path):
    """A current plan with MIG layouts, re-planned with MIG off (``--no-mig``, or a pool whose
    ``sharing`` drops ``mig``): its instances cannot be kept, so their replicas are packed again
    on whole GPUs (it used to end in a traceback from ``spare_slots``)."""
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(yaml.safe_dump(BASE))  # its plan runs MIG instances on the A100s
    cur = tmp_path / "cur.json"
    assert main(["plan", str(fleet), "--time-limit", "5", "--format", "json", "-o", str(cur)]) == 0
    assert any(p["slot"] != "whole" for p in json.loads(cur.read_text())["placements"])
    new = tmp_path / "new.json"
    assert main(["plan", str(fleet), "--no-mig", "--current", str(cur), "--time-limit", "5", "--format", "json",
                 "-o", str(new)]) == 0
    assert all(p["slot"] == "whole" for p in json.loads(new.read_text())["placements"])
    d = copy.deepcopy(BASE)
    for pool in d["pools"]:
        pool["sharing"] = ["time-slicing"]
    fleet.write_text(yaml.safe_dump(d))
    assert main(["plan", str(fleet), "--current", str(cur), "--time-limit", "5", "--format", "json"]) == 0


def test_a_replan_after_a_surge_keeps_the_scaled_replicas_and_says_so(tmp_path):
    """A plan scaled up for a surge (``packer scale -o``), re-planned at the fleet's own traffic:
    the planner sees only the fleet's traffic, so it keeps the scaling policy's replicas (a fleet
    edited during a surge must not drop them), and says so, naming the model and a fresh plan's
    count (it cost 1.30x the greedy baseline printed under it, without a word why)."""
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(yaml.safe_dump(BASE))
    cur, scaled, snap = tmp_path / "cur.json", tmp_path / "scaled.json", tmp_path / "snap.json"
    assert main(["plan", str(fleet), "--time-limit", "5", "--format", "json", "-o", str(cur)]) == 0
    plan = json.loads(cur.read_text())
    en = next(m for m in BASE["models"] if m["name"] == "asr-en")
    snap.write_text(json.dumps({"time": 0, "models": {"asr-en": {"arrival_rps": 3 * en["traffic"]["peak_rps"]}}}))
    assert main(["scale", "--plan", str(cur), "--metrics", str(snap), "--json", "-o", str(scaled)]) == 0
    surged = json.loads(scaled.read_text())
    assert surged["replicas"]["asr-en"] > plan["replicas"]["asr-en"]
    new = tmp_path / "new.json"
    assert main(["plan", str(fleet), "--current", str(scaled), "--time-limit", "5", "--format", "json",
                 "-o", str(new)]) == 0
    again = json.loads(new.read_text())
    assert again["replicas"]["asr-en"] == surged["replicas"]["asr-en"]
    said = [w for w in again["warnings"] if "kept replica counts" in w]
    assert said and f"asr-en {surged['replicas']['asr-en']} (a fresh plan: " in said[0]
