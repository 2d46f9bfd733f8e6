"""``packer simulate`` / ``packer capacity`` end to end, and the contracts with other packages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from packer_cli.main import main
from packer.fleetfile import parse_fleet
from packer.plan import save_plan
from packer.slot import SlotType
from packer.handplan import HandGroup, hand_plan
from sims.policies import ClusterView
from sims.registry import get_policy, policy_names, register_policy
from sims.server import batcher_config

FLEET = {
    "name": "cli", "pools": [{"name": "l4", "gpu": "l4-24gb", "gpus_per_node": 4, "max_nodes": 2,
                              "cost_per_gpu_hour": 0.8, "sharing": ["time-slicing"]}],
    "models": [
        {"name": "asr", "kind": "streaming", "memory_gb": 2.0, "traffic": {"rps": 200.0, "peak_rps": 300.0,
                                                                            "streams": 60},
         "slo_ms": 200, "latency_ms": {"gpu": "l4-24gb", "base": 8.0, "per_item": 0.4}, "max_batch": 64},
        {"name": "punct", "kind": "streaming", "memory_gb": 1.0, "traffic": {"rps": 40.0, "peak_rps": 60.0},
         "slo_ms": 100, "latency_ms": {"gpu": "l4-24gb", "base": 3.0, "per_item": 0.1}, "max_batch": 32},
        {"name": "summ", "kind": "batch", "memory_gb": 6.0, "traffic": {"rps": 0.5, "peak_rps": 1.0},
         "slo_ms": 60000, "latency_ms": {"gpu": "l4-24gb", "base": 400.0, "per_item": 80.0}, "max_batch": 8},
    ],
}


@pytest.fixture()
def plan_file(tmp_path: Path) -> Path:
    f = parse_fleet(FLEET)
    p = tmp_path / "plan.json"
    save_plan(hand_plan(f, [HandGroup("l4", "whole", ("asr", "punct")), HandGroup("l4", "whole", ("summ",))]), p)
    return p


def test_simulate_writes_json_plots_and_html(plan_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    rc = main(["simulate", str(plan_file), "--scenario", "peak", "--duration", "2m", "--seed", "3",
               "--compare", "hpa", "--out", str(out), "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "static @ plan" in text and "hpa @ plan" in text and "asr" in text
    d = json.loads((out / "result.json").read_text())
    assert [r["policy"] for r in d["runs"]] == ["static", "hpa"]
    # Same seed, same traffic: both runs saw exactly the same arrivals.
    assert [m["arrivals"] for m in d["runs"][0]["models"]] == [m["arrivals"] for m in d["runs"][1]["models"]]
    for name in ("latency_cdf.png", "latency_cdf.svg", "timeseries.png", "cost.png", "report.html"):
        assert (out / name).stat().st_size > 1000, name
    assert "<img" in (out / "report.html").read_text()


def test_simulate_json_is_deterministic(plan_file: Path, capsys: pytest.CaptureFixture) -> None:
    outs = []
    for _ in range(2):
        assert main(["simulate", str(plan_file), "--scenario", "bursty", "--duration", "1m", "--seed", "5", "--json",
                     "--no-progress"]) == 0
        d = json.loads(capsys.readouterr().out)
        d.pop("perf")
        outs.append(d)
    assert outs[0] == outs[1]


@pytest.mark.parametrize("args,needle", [
    (["--scenario", "nope"], "no such scenario"),
    (["--policy", "nope"], "unknown policy"),
    (["--compare", "nope"], "neither a policy"),
    (["--duration", "soon"], "--duration"),
], ids=["scenario", "policy", "compare", "duration"])
def test_user_errors_exit_2(plan_file: Path, args: list[str], needle: str, capsys: pytest.CaptureFixture) -> None:
    assert main(["simulate", str(plan_file), "--duration", "10s", "--no-progress", *args]) == 2
    assert needle in capsys.readouterr().err


def test_capacity_replans_per_growth(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import yaml

    f = tmp_path / "fleet.yaml"
    f.write_text(yaml.safe_dump(FLEET))
    rc = main(["capacity", str(f), "--growth", "1,4", "--duration", "1m", "--time-limit", "1", "--out",
               str(tmp_path / "cap"), "--no-progress"])
    assert rc == 0
    rows = json.loads((tmp_path / "cap" / "capacity.json").read_text())
    assert [r["growth"] for r in rows] == [1.0, 4.0]
    assert rows[1]["gpus_total"] >= rows[0]["gpus_total"]
    assert rows[1]["plan_cost_per_hour"] >= rows[0]["plan_cost_per_hour"]
    assert (tmp_path / "cap" / "capacity.png").exists()
    assert "growth" in capsys.readouterr().out


def test_batcher_matches_the_triton_writer() -> None:
    """The simulator batches with the numbers serving/config.py writes into Triton's config, with
    the rejecting queue (``shed``) and without it (the default: no timeout, no bound)."""
    serving = pytest.importorskip("serving.config")
    from serving.settings import TritonSettings

    f = parse_fleet(FLEET)
    plan = hand_plan(f, [HandGroup("l4", "whole", ("asr", "punct")), HandGroup("l4", "whole", ("summ",))])
    checked = 0
    for p, shed in ((p, shed) for p in plan.placements for shed in (False, True)):
        st = SlotType(f.pool(p.pool), p.slot)
        for mem in p.models:
            cfg = serving.model_config(f, p, mem.name, TritonSettings(shed=shed), shared=len(p.models) > 1)
            c = batcher_config(f.model(mem.name), st, mem.batch_size, p.duty_cycle_ms, timeouts=shed,
                               queue_bound=shed)
            if cfg.HasField("sequence_batching") or not shed:
                b = cfg.sequence_batching.oldest if cfg.HasField("sequence_batching") else cfg.dynamic_batching
                assert not cfg.dynamic_batching.HasField("default_queue_policy")
                timeout_us = None
            else:
                b = cfg.dynamic_batching
                timeout_us = b.default_queue_policy.default_timeout_microseconds
            assert c.max_batch == cfg.max_batch_size
            assert c.preferred == (min(b.preferred_batch_size) if b.preferred_batch_size else cfg.max_batch_size)
            assert c.delay_s * 1e6 == pytest.approx(b.max_queue_delay_microseconds, abs=1)
            if timeout_us is None:
                assert c.timeout_s == float("inf")
                assert c.max_queue == float("inf")
            else:
                assert c.timeout_s * 1e6 == pytest.approx(timeout_us, abs=1)
                assert c.max_queue == b.default_queue_policy.max_queue_size
            checked += 1
    assert checked == 6


def test_registry_builds_registered_policies() -> None:
    f = parse_fleet(FLEET)
    plan = hand_plan(f, [HandGroup("l4", "whole", ("asr", "punct"))])

    class Nothing:
        interval_s = 30.0

        def __init__(self, plan, options) -> None:
            self.options = options

        def decide(self, view: ClusterView, now: float) -> list:
            return []

    register_policy("nothing-test", Nothing)
    assert {"static", "hpa", "nothing-test"} <= set(policy_names())
    p = get_policy("nothing-test", plan, {"x": 1})
    assert p.interval_s == 30.0 and p.options == {"x": 1}  # type: ignore[attr-defined]
    with pytest.raises(Exception, match="unknown options"):
        get_policy("hpa", plan, {"targte": 0.5})


def test_a_plan_or_fleet_is_told_apart_by_its_text_not_its_name(plan_file: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    """FLEET_OR_PLAN: a plan saved as ``.yaml`` was refused as "a plan, not a fleet file", and a
    JSON fleet named ``.json`` as "a fleet file, not a plan"."""
    import yaml

    as_yaml = tmp_path / "plan.yaml"
    as_yaml.write_text(plan_file.read_text())
    assert main(["simulate", str(as_yaml), "--scenario", "peak", "--duration", "1m", "--no-progress",
                 "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["models"]
    fleet = Path(__file__).resolve().parents[2] / "packer" / "examples" / "multilingual-meetings.yaml"
    as_json = tmp_path / "fleet.json"
    as_json.write_text(json.dumps(yaml.safe_load(fleet.read_text())))
    assert main(["simulate", str(as_json), "--scenario", "peak", "--duration", "1m", "--no-progress",
                 "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["models"]
