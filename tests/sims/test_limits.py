"""The simulator's limits: a run that would not finish in bounded time and memory is refused with
one line naming the field and the fix (exit code 2), before anything is drawn; the draws and the
queues are bounded even where the up-front estimate is wrong. And an SLO attainment with no
request behind it is undefined (null, "n/a"), not 0 % or 100 %."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from packer.errors import UserError
from packer.fleetfile import load_fleet, parse_fleet
from packer.handplan import HandGroup, hand_plan
from packer.plan import save_plan
from test_scaling_helpers import tiny_plan
from packer_cli.main import main
from sims import engine, report, traffic
from sims.cli import held
from sims.engine import Simulation, simulate
from sims.scenario import BatchJobs, Scenario, Server, Spike, load_scenario
from sims.traffic import sources
from test_cli import FLEET as CLI_FLEET

ROOT = Path(__file__).resolve().parents[2]

# The simulator CLI tests' fleet, its two streaming models (a copy: tests here change it)
FLEET = {**copy.deepcopy(CLI_FLEET), "name": "lim", "models": copy.deepcopy(CLI_FLEET["models"][:2])}


def fleet(punct_rps: float = 40.0):
    doc = json.loads(json.dumps(FLEET))
    doc["models"][1]["traffic"]["rps"] = punct_rps
    return parse_fleet(doc)


def plan_of(f=None):
    return hand_plan(f or fleet(), [HandGroup("l4", "whole", ("asr", "punct"))])


@pytest.fixture()
def plan_file(tmp_path: Path) -> Path:
    p = tmp_path / "plan.json"
    save_plan(plan_of(), p)
    return p


def run_cli(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    rc = main(args)
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(err: str) -> str:
    """The stderr of a refused run: one line, no traceback."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# -- D2: traffic too heavy to draw ---------------------------------------------------------------

@pytest.mark.timeout(60)
@pytest.mark.parametrize("doc,field", [
    ({"process": "peak", "spikes": [{"models": "*", "at": "1m", "factor": 1e9, "rise": "1s", "decay": "1m"}],
      "duration": "3m"}, "spikes[0].factor"),
    ({"process": "poisson", "bursts": [{"models": "*", "high": 1e9, "mean_low": "1s", "mean_high": "1m"}],
      "duration": "3m"}, "bursts[0].high"),
    ({"process": "peak", "traffic_scale": 1e6, "duration": "1m"}, "traffic_scale"),
    ({"process": "peak", "models": [{"models": "asr", "scale": 1e5}], "duration": "1m"}, "models[0].scale"),
    ({"process": "peak", "batch_jobs": [{"models": "punct", "size": 10 ** 12}], "duration": "1m"},
     "batch_jobs[0].size"),
], ids=["spike", "burst", "scale", "model-scale", "job-size"])
def test_huge_traffic_is_refused_naming_the_field(plan_file: Path, tmp_path: Path, doc: dict, field: str,
                                                  capsys: pytest.CaptureFixture) -> None:
    """The sweep's numpy MemoryError (13.2 TiB) and 24 GB OOM: now one line, rc 2, the field named."""
    sc = tmp_path / "s.yaml"
    sc.write_text(yaml.safe_dump({"name": "huge", **doc}))
    rc, _, err = run_cli(["simulate", str(plan_file), "--scenario", str(sc), "--no-progress"], capsys)
    line = one_line_error(err)
    assert rc == 2
    assert line.startswith(f"error: {field}:") and "Fix: lower" in line, line


def test_every_draw_is_checked_before_it_is_allocated(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the estimate is wrong (it is not consulted here at all), no numpy draw passes MAX_DRAW:
    the Poisson points, a batch job's requests, the streams' grid, a window of blocks."""
    monkeypatch.setattr(traffic, "MAX_DRAW", 1000)
    with pytest.raises(UserError, match="would allocate"):
        traffic._poisson_points(np.random.default_rng(0), 1e15)
    jobs = sources(fleet(), Scenario(process="peak", batch_jobs=(BatchJobs("punct", 5000),)), seed=0)[1]
    with pytest.raises(UserError, match="batch jobs of 5000"):
        for t in range(0, 3600, 60):  # jobs of 5,000 at 60 rps: one every 83 s or so
            jobs.take(float(t), t + 60.0)
    streams = sources(fleet(), Scenario(process="peak"), seed=0)[0]
    with pytest.raises(UserError, match="asr"):
        streams.take(0.0, 60.0)  # 300 rps × 60 s: 18,000 chunks
    monkeypatch.setattr(traffic, "MAX_DRAW", 30_000)
    punct = sources(fleet(), Scenario(process="peak"), seed=0)[1]
    with pytest.raises(UserError, match="one window"):
        punct.take(0.0, 600.0)  # 10 blocks of 3,600 held at once: 36,000


def test_requests_drawn_are_capped_even_where_the_estimate_was_low(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(traffic, "MAX_REQUESTS", 10_000)
    src = sources(fleet(), Scenario(process="peak"), seed=0)
    with pytest.raises(UserError, match="requests drawn by t="):
        for t in range(0, 600, 60):
            for s in src:
                s.take(float(t), t + 60.0)


# -- D7: durations -----------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_absurd_duration_is_refused_naming_the_option(plan_file: Path, capsys: pytest.CaptureFixture) -> None:
    rc, _, err = run_cli(["simulate", str(plan_file), "--scenario", "peak", "--duration", "100000d",
                          "--no-progress"], capsys)
    line = one_line_error(err)
    assert rc == 2 and line.startswith("error: --duration: 100000d is too long") and "Fix: at most" in line, line


@pytest.mark.timeout(60)
def test_absurd_duration_in_a_scenario_names_the_file_field(plan_file: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    sc = tmp_path / "long.yaml"
    sc.write_text("name: long\nprocess: peak\nduration: 100000d\n")
    rc, _, err = run_cli(["simulate", str(plan_file), "--scenario", str(sc), "--no-progress"], capsys)
    line = one_line_error(err)
    assert rc == 2 and line.startswith(f"error: duration (in {sc}): 100000d is too long"), line


@pytest.mark.timeout(60)
def test_too_many_requests_names_the_duration_and_how_long_fits(plan_file: Path, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture) -> None:
    """360 rps at peak: 2 h is 2.6 M requests; with a cap of 1 M at most 46 minutes fit."""
    monkeypatch.setattr(traffic, "MAX_REQUESTS", 1_000_000)
    rc, _, err = run_cli(["simulate", str(plan_file), "--scenario", "peak", "--duration", "2h", "--no-progress"],
                         capsys)
    line = one_line_error(err)
    assert rc == 2 and line.startswith("error: --duration: 2h is about 2.59e+06 requests"), line
    assert "Fix: at most 46.2m" in line, line


@pytest.mark.timeout(60)
@pytest.mark.parametrize("interval", [0.0, -15.0, float("inf")])
def test_policy_interval_must_be_positive(interval: float) -> None:
    """interval_s 0 looped for ever at t=0."""
    sc = Scenario(process="peak", policy_options={"interval_s": interval})
    with pytest.raises(UserError, match="policy_options.interval_s"):
        simulate(plan_of(), sc, duration_s=60.0)


def test_a_long_policy_interval_is_a_long_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """Arrivals are held a window at a time, and a window lasts up to one policy interval."""
    # asr's 300 rps as a grid of stream chunks (x 1 + 60 s / 300 s of sessions) and punct's 60 rps:
    # 25,200 a minute, 151,200 in 6 minutes.
    monkeypatch.setattr(traffic, "MAX_DRAW", 100_000)
    sim = Simulation(plan_of(), Scenario(process="peak", policy_options={"interval_s": 360.0}))
    with pytest.raises(UserError, match=r"policy_options.interval_s: 360 s .*1.51e\+05.* Fix: at most 238$"):
        sim.check(3600.0)


@pytest.mark.timeout(120)
def test_queues_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A plan far below its traffic, no queue timeouts: the queues are what grows with the run."""
    monkeypatch.setattr(engine, "MAX_QUEUED", 20_000)
    sc = Scenario(process="peak", traffic_scale=20.0, server=Server(queue_timeouts=False))
    with pytest.raises(UserError, match=r"requests are queued .* over the simulator's cap of 20,000") as e:
        simulate(plan_of(), sc, duration_s=600.0, duration_name="--duration")
    assert str(e.value).startswith("--duration: at t=")


def test_estimate_matches_the_rate_curves() -> None:
    """The estimate integrates the same curves the sources draw from (exactly, on their grid): a
    day, a spike, a spike that jumps (rise and decay 0) between two samples."""
    f = fleet()
    jumps = (Spike("asr", 30.0, 50.0, 0.0, 600.0), Spike("punct", 100.0, 20.0, 60.0, 0.0))
    for sc in (load_scenario("diurnal"), load_scenario("spike").with_(spikes=(Spike("*", 600.0, 4.0, 60.0, 3600.0),)),
               Scenario(process="peak", spikes=jumps)):
        sc = sc.with_(stream_arrivals="poisson")  # every source a PoissonSource, which has expected()
        exact = sum(s.expected(0.0, 7200.0) for s in sources(f, sc, seed=0))
        assert traffic.expected_load(f, sc, 7200.0).requests == pytest.approx(exact, rel=0.01), sc.name


def test_shipped_scenarios_and_fleets_are_far_below_the_caps() -> None:
    for fleet_path in sorted((ROOT / "packer" / "examples").glob("*.yaml")):
        f = load_fleet(fleet_path)
        for path in sorted((ROOT / "sims" / "scenarios").glob("*.yaml")):
            sc = load_scenario(path)
            load = traffic.check_load(f, sc, sc.duration_s or 3600.0)
            assert load.requests < traffic.MAX_REQUESTS / 4, (fleet_path.name, path.name, load)
            assert load.per_minute < traffic.MAX_DRAW / 4, (fleet_path.name, path.name, load)


# -- D10: attainment with no requests ------------------------------------------------------------

def test_no_requests_means_no_attainment(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """punct has rps 0 (poisson: no arrivals), then nobody sends anything (traffic_scale 0): the
    attainment is null in the JSON and "n/a" in the table, for the model and for the fleet alike."""
    p = tmp_path / "plan.json"
    save_plan(plan_of(fleet(punct_rps=0.0)), p)
    for name, scale in (("none", 1.0), ("zero", 0.0)):
        (tmp_path / f"{name}.yaml").write_text(f"name: {name}\nprocess: poisson\ntraffic_scale: {scale}\n")
    rc, out, _ = run_cli(["simulate", str(p), "--scenario", str(tmp_path / "none.yaml"), "--duration", "1m",
                          "--format", "json", "--no-progress"], capsys)
    d = json.loads(out)
    by = {m["name"]: m for m in d["models"]}
    assert rc == 0 and by["punct"]["arrivals"] == 0 and by["punct"]["slo_attainment"] is None
    assert by["asr"]["slo_attainment"] is not None and d["fleet"]["slo_attainment"] is not None
    assert held(d, 0.99) == held({**d, "models": [by["asr"]]}, 0.99)
    rc, out, _ = run_cli(["simulate", str(p), "--scenario", str(tmp_path / "zero.yaml"), "--duration", "1m",
                          "--format", "json", "--no-progress", "-d", str(tmp_path / "out")], capsys)
    d = json.loads(out)
    assert rc == 0 and d["fleet"]["requests"] == 0 and d["fleet"]["slo_attainment"] is None
    assert all(m["slo_attainment"] is None for m in d["models"])
    assert "null" in (tmp_path / "out" / "result.json").read_text()
    assert "n/a (no requests)" in (tmp_path / "out" / "report.html").read_text()
    text = report.table([d])
    assert "SLO attainment n/a (no requests)" in text and "0.0000%" not in text and "100.00%" not in text
    rows = [ln.split() for ln in text.splitlines() if ln.strip().startswith(("asr ", "punct "))]
    assert rows and all(r[5] == "n/a" and r[-2:] == ["(no", "requests)"] for r in rows), text
    assert report.summary([d])[0]["worst_model"] is None and "n/a (no requests) vs" in report.verdict([d, d])


def test_a_policy_option_that_is_not_a_number_is_one_line(tmp_path):
    """``policy_options: {interval_s: "abc"}`` ended in a ValueError traceback from the policy."""
    from sims.registry import get_policy

    plan = tiny_plan()
    for name in ("static", "hpa", "packer"):
        with pytest.raises(UserError) as e:
            get_policy(name, plan, {"interval_s": "abc"} if name != "packer" else {"stable_s": "abc"})
        assert "policy_options" in str(e.value) and "Fix:" in str(e.value)


def test_capacity_refuses_a_zero_duration_as_simulate_does(capsys):
    """``packer capacity --duration 0`` divided by it (a ZeroDivisionError traceback, exit 1)."""
    fleet = str(ROOT / "packer" / "examples" / "multilingual-meetings.yaml")
    assert main(["capacity", fleet, "--duration", "0", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--duration must be positive" in err and "Traceback" not in err


def test_capacity_plans_each_factor_once_and_names_every_file_it_writes(tmp_path, capsys):
    """``--growth 1,1`` printed the same row twice; ``-d DIR`` said it wrote capacity.png alone."""
    fleet = str(ROOT / "packer" / "examples" / "multilingual-meetings.yaml")
    assert main(["capacity", fleet, "--growth", "1,1", "--duration", "1m", "--time-limit", "2", "--no-progress",
                 "-d", str(tmp_path / "cap")]) == 0
    out, err = capsys.readouterr()
    assert sum(1 for ln in out.splitlines() if ln.strip().startswith("1 ")) == 1, out
    assert all(str(tmp_path / "cap" / n) in err for n in ("capacity.json", "capacity.png", "capacity.svg")), err


# -- hostile traces and scenario files, end to end: exit 2, one line, no traceback ----------------

@pytest.mark.timeout(60)
@pytest.mark.parametrize("trace,start", [
    (None, "error: trace.file: {dir}: is a directory. Fix: "),
    (b"0,asr\nnan,asr\n", "error: {csv}:2: timestamp 'nan' is not a finite number of seconds. Fix: "),
    (b"0,asr\ninf,asr\n", "error: {csv}:2: timestamp 'inf' is not a finite number of seconds. Fix: "),
    (b"0,asr\n1,\xff\n", "error: trace.file: {csv}: is not UTF-8 text (byte 0xff at line 2). Fix: "),
    (b"0,asr\n1," + b"p" * 140_000 + b"\n", "error: {csv}:2: is not a `timestamp,model` CSV (field larger than "),
], ids=["directory", "nan", "inf", "not-utf8", "long-field"])
@pytest.mark.parametrize("command", ["simulate", "capacity"])
def test_a_bad_trace_exits_2_with_one_line(plan_file: Path, tmp_path: Path, trace: bytes | None, start: str,
                                           command: str, capsys: pytest.CaptureFixture) -> None:
    """Audit A9-A12, C5: tracebacks (exit 1), or a run of thousands of requests from a two-line trace."""
    csv_path = tmp_path / "t.csv"
    if trace is not None:
        csv_path.write_bytes(trace)
    sc = tmp_path / "s.yaml"
    sc.write_text(yaml.safe_dump({"process": "peak", "trace": str(tmp_path if trace is None else csv_path)}))
    if command == "simulate":
        args = ["simulate", str(plan_file), "--scenario", str(sc), "--duration", "1m", "--no-progress"]
    else:
        (tmp_path / "fleet.yaml").write_text(yaml.safe_dump(FLEET))
        args = ["capacity", str(tmp_path / "fleet.yaml"), "--growth", "1", "--duration", "1m", "--time-limit", "1",
                "--scenario", str(sc), "--no-progress"]
    rc, _, err = run_cli(args, capsys)
    line = one_line_error(err)
    assert rc == 2 and line.startswith(start.format(dir=tmp_path, csv=csv_path)), line


@pytest.mark.timeout(60)
@pytest.mark.parametrize("text,start", [
    ("process: peak\nduration: 0\n", "error: duration: 0 must be > 0. Fix: "),  # ran the default hour
    ("- process: peak\n", "error: {sc}: is a list, not a mapping. Fix: "),  # did not name the file
], ids=["duration-0", "list"])
def test_a_bad_scenario_file_exits_2_with_one_line(plan_file: Path, tmp_path: Path, text: str, start: str,
                                                   capsys: pytest.CaptureFixture) -> None:
    sc = tmp_path / "s.yaml"
    sc.write_text(text)
    rc, _, err = run_cli(["simulate", str(plan_file), "--scenario", str(sc), "--no-progress"], capsys)
    line = one_line_error(err)
    assert rc == 2 and line.startswith(start.format(sc=sc)), line
