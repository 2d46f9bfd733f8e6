"""Fleet files: the shared examples load; bad files get one message naming the field and the fix."""

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from packer_cli.plan import example_path

EXAMPLES = example_path().parent
SHARED = Path(__file__).resolve().parents[2] / "shared" / "fleets"
from packer_cli.main import main
from packer.fleet import FleetError
from packer.fleetfile import load_fleet, parse_fleet

FLEETS = sorted(EXAMPLES.glob("*.yaml"))


@pytest.mark.parametrize("path", FLEETS, ids=lambda p: p.stem)
def test_examples_load(path):
    f = load_fleet(path)
    assert f.models and f.pools


def test_bundled_examples_are_the_shared_ones():
    if not SHARED.is_dir():
        pytest.skip("../shared/fleets is not beside this checkout")
    for p in SHARED.glob("*.yaml"):
        assert (EXAMPLES / p.name).read_text() == p.read_text(), p.name
        load_fleet(p)


BASE = yaml.safe_load((EXAMPLES / "multilingual-meetings.yaml").read_text())


def mutate(fn):
    d = copy.deepcopy(BASE)
    fn(d)
    return d


BAD = {
    "wrong type": (lambda d: d["models"][0].update(memory_gb="lots"), "models[0] (asr-en).memory_gb"),
    "unknown gpu": (lambda d: d["pools"][0].update(gpu="a200-80gb"), "pools[0] (a100-80).gpu"),
    "negative memory": (lambda d: d["models"][1].update(memory_gb=-1), "models[1] (punct-en).memory_gb"),
    "duplicate name": (lambda d: d["models"][2].update(name="asr-en"), "models[2].name"),
    "bigger than any slot": (lambda d: d["models"][0].update(memory_gb=500), "models[0] (asr-en).memory_gb"),
    "impossible slo": (lambda d: d["models"][0].update(slo_ms=3), "models[0] (asr-en).slo_ms"),
    "unknown kind": (lambda d: d["models"][0].update(kind="online"), "models[0] (asr-en).kind"),
    "not dns": (lambda d: d["models"][0].update(name="ASR_en"), "models[0].name"),
    "peak below rps": (lambda d: d["models"][0]["traffic"].update(peak_rps=1), "models[0] (asr-en).traffic.peak_rps"),
    "unknown sharing": (lambda d: d["pools"][0].update(sharing=["mps"]), "pools[0] (a100-80).sharing"),
    "mig on l4": (lambda d: d["pools"][1].update(sharing=["mig"]), "pools[1] (l4).sharing"),
    "missing slo": (lambda d: d["models"][0].pop("slo_ms"), "models[0] (asr-en).slo_ms"),
    "bad mig profile": (lambda d: d["models"][0].update(latency_ms={"gpu": "a100-80gb/5g.50gb", "base": 1,
                                                                     "per_item": 1}), "latency_ms.gpu"),
    "same gpu twice in latency_ms": (lambda d: d["models"][0].update(latency_ms=[
        {"gpu": "a100-80gb", "base": 4, "per_item": 0.1}, {"gpu": "a100-80gb", "base": 400, "per_item": 0.1}]),
        "models[0] (asr-en).latency_ms[1].gpu"),
    "spot_policy never on spot pools alone": (lambda d: ([p.update(spot=True) for p in d["pools"]],
                                                          d["models"][0].update(spot_policy="never")),
                                               "models[0] (asr-en).spot_policy"),
    "max_replicas too low": (lambda d: d["models"][0].update(max_replicas=1, min_replicas=1),
                             "models[0] (asr-en).max_replicas"),
    # An integer no float holds, where a number goes: float() raised OverflowError (a traceback).
    "400-digit rps": (lambda d: d["models"][0]["traffic"].update(rps=10 ** 400), "models[0] (asr-en).traffic.rps"),
    "400-digit price": (lambda d: d["pools"][0].update(cost_per_gpu_hour=10 ** 400),
                        "pools[0] (a100-80).cost_per_gpu_hour"),
}


@pytest.mark.parametrize("fn,field", BAD.values(), ids=BAD.keys())
def test_bad_fleets_name_the_field_and_the_fix(fn, field):
    with pytest.raises(FleetError) as e:
        parse_fleet(mutate(fn))
    assert field in e.value.field
    assert e.value.fix


@pytest.mark.parametrize("fn,field", list(BAD.values())[:6], ids=list(BAD.keys())[:6])
def test_cli_bad_fleet_exits_2_without_traceback(tmp_path, capsys, fn, field):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(mutate(fn)))
    assert main(["plan", str(p)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Fix:" in err and "Traceback" not in err


def test_cli_missing_file_and_bad_yaml(tmp_path, capsys):
    assert main(["plan", str(tmp_path / "nope.yaml")]) == 2
    (tmp_path / "x.yaml").write_text("name: [unclosed\n")
    assert main(["plan", str(tmp_path / "x.yaml")]) == 2
    assert "is not valid YAML at line" in capsys.readouterr().err


def test_console_script_exit_code(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(mutate(BAD["unknown gpu"][0])))
    r = subprocess.run([sys.executable, "-m", "packer_cli", "plan", str(p)], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "a200-80gb" in r.stderr


def test_what_if_traffic_scaling():
    f = load_fleet(EXAMPLES / "multilingual-meetings.yaml")
    g = f.with_traffic({"asr-fr": 3.0})
    assert g.model("asr-fr").traffic.peak_rps == pytest.approx(3 * f.model("asr-fr").traffic.peak_rps)
    assert g.model("asr-en").traffic == f.model("asr-en").traffic


@pytest.mark.parametrize("text,says", [("", "is empty"), ("- a\n- b\n", "is a list, not a mapping"),
                                       ("hello\n", "is the text 'hello', not a mapping")])
def test_a_fleet_file_that_is_no_mapping_is_named(tmp_path, capsys, text, says):
    """An empty fleet (an unset variable's /dev/null, a file not yet written) said "(top level): is
    not a mapping", naming no file."""
    p = tmp_path / "fleet.yaml"
    p.write_text(text)
    assert main(["plan", str(p)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {p}: {says}. Fix: ")
