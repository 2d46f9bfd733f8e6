"""Arrival processes and scenario files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from packer.errors import UserError
from packer.fleetfile import parse_fleet
from sims.scenario import Burst, Scenario, Spike, load_scenario, parse_duration, parse_scenario
from sims.traffic import sources

SCENARIOS = sorted((Path(__file__).resolve().parents[2] / "sims" / "scenarios").glob("*.yaml"))


def fleet():
    return parse_fleet({
        "name": "t", "pools": [{"name": "l4", "gpu": "l4-24gb", "gpus_per_node": 4, "max_nodes": 2,
                                "cost_per_gpu_hour": 1.0}],
        "models": [
            {"name": "asr-en", "kind": "streaming", "memory_gb": 1.0,
             "traffic": {"rps": 400.0, "peak_rps": 700.0, "streams": 120}, "slo_ms": 300,
             "latency_ms": {"gpu": "l4-24gb", "base": 4.0, "per_item": 0.1}, "max_batch": 64},
            {"name": "punct-de", "kind": "streaming", "memory_gb": 1.0, "traffic": {"rps": 50.0, "peak_rps": 100.0},
             "slo_ms": 100, "latency_ms": {"gpu": "l4-24gb", "base": 2.0, "per_item": 0.1}, "max_batch": 32},
        ],
    })


def take_all(src, t_end: float, step: float = 15.0) -> np.ndarray:
    out = [src.take(t, min(t + step, t_end)).times for t in np.arange(0.0, t_end, step)]
    return np.concatenate(out)


def test_diurnal_curve_averages_rps_and_peaks_at_peak_rps() -> None:
    """amplitude auto: a = peak/rps - 1 = 1; over a day the mean is rps, the top peak_rps at 14:00."""
    sc = Scenario(process="diurnal", start_hour=0.0)
    src = sources(fleet(), sc, seed=1)[1]
    assert src.expected(0.0, 86400.0) / 86400.0 == pytest.approx(50.0, rel=1e-3)
    assert src.expected(14 * 3600.0, 14 * 3600.0 + 1.0) == pytest.approx(100.0, rel=1e-3)
    # Time zones shift the peak: +1 h peaks at 13:00 UTC.
    sc2 = Scenario(process="diurnal", models=(__import__("sims.scenario").scenario.ModelTraffic("*-de", 1.0, 1.0),))
    src2 = sources(fleet(), sc2, seed=1)[1]
    assert src2.expected(13 * 3600.0, 13 * 3600.0 + 1.0) == pytest.approx(100.0, rel=1e-3)


def test_poisson_counts_and_sorted_windows() -> None:
    src = sources(fleet(), Scenario(process="poisson"), seed=2)[1]
    t = take_all(src, 2000.0)
    assert np.all(np.diff(t) >= 0) and t.min() >= 0 and t.max() < 2000.0
    assert t.size == pytest.approx(100_000, abs=4 * np.sqrt(100_000))
    gaps = np.diff(t)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.02)  # exponential gaps


def test_streams_send_chunks_every_interval_at_the_fleet_rate() -> None:
    """120 streams at 400 rps: a chunk every 0.3 s per stream; the chunk rate averages 400 rps."""
    src = sources(fleet(), Scenario(process="poisson", session_s=120.0), seed=3)[0]
    ts, sids = [], []
    for t in np.arange(0.0, 1800.0, 15.0):
        a = src.take(t, t + 15.0)
        assert np.all(np.diff(a.times) >= 0)
        ts.append(a.times)
        sids.append(a.streams)
    t, s = np.concatenate(ts), np.concatenate(sids)
    assert t.size / 1800.0 == pytest.approx(400.0, rel=0.05)
    one = t[s == s[len(s) // 2]]
    assert np.allclose(np.diff(one), 0.3)


def test_stream_spike_reaches_factor_within_a_minute() -> None:
    sc = Scenario(process="poisson", spikes=(Spike("asr-*", 600.0, 4.0, 60.0, 3600.0),))
    src = sources(fleet(), sc, seed=4)[0]
    t = take_all(src, 1200.0)
    before = np.count_nonzero((t >= 300) & (t < 600)) / 300.0
    after = np.count_nonzero((t >= 690) & (t < 750)) / 60.0
    assert before == pytest.approx(400.0, rel=0.1)
    assert after == pytest.approx(4 * 400.0 * (1 - 60 / 3600), rel=0.1)


def test_bursts_raise_the_mean_by_the_time_spent_high() -> None:
    """MMPP with x3 for 1/11 of the time: mean rate (10 + 3) / 11 = 1.18 x."""
    sc = Scenario(process="poisson", bursts=(Burst("punct-*", 3.0, 100.0, 10.0),))
    src = sources(fleet(), sc, seed=5)[1]
    t = take_all(src, 20000.0, step=100.0)
    assert t.size / 20000.0 == pytest.approx(50.0 * 13 / 11, rel=0.06)


def test_same_seed_same_arrivals_whatever_the_other_models() -> None:
    a = sources(fleet(), Scenario(process="poisson"), seed=9)[1].take(0.0, 60.0).times
    f2 = fleet()
    from dataclasses import replace
    f2 = replace(f2, models=f2.models[1:])  # drop asr-en: punct-de must not change
    b = sources(f2, Scenario(process="poisson"), seed=9)[0].take(0.0, 60.0).times
    assert np.array_equal(a, b)


def test_trace_replay_loops(tmp_path: Path) -> None:
    p = tmp_path / "t.csv"
    p.write_text("timestamp,model\n100.0,punct-de\n100.5,punct-de\n101.0,asr-en\n")
    sc = parse_scenario({"trace": {"file": "t.csv", "loop": True}}, base_dir=tmp_path)
    src = sources(fleet(), sc, seed=0)
    # The trace lasts 1.5 s (last line at +1.0 s, then the median gap, 0.5 s); every model keeps
    # its place in it, loop after loop.
    assert np.allclose(src[1].take(0.0, 4.0).times, [0.0, 0.5, 1.5, 2.0, 3.0, 3.5])
    assert np.allclose(src[0].take(0.0, 4.0).times, [1.0, 2.5])


def test_trace_keeps_models_aligned(tmp_path: Path) -> None:
    """A model whose first request comes 5 s into the trace starts 5 s in, not at 0 (a packed
    group's members replayed as recorded)."""
    p = tmp_path / "t.csv"
    p.write_text("timestamp,model\n10.0,punct-de\n10.25,punct-de\n15.0,asr-en\n15.5,asr-en\n")
    sc = parse_scenario({"trace": {"file": "t.csv", "loop": False}}, base_dir=tmp_path)
    src = sources(fleet(), sc, seed=0)
    assert np.allclose(src[0].take(0.0, 60.0).times, [5.0, 5.5])
    assert np.allclose(src[1].take(0.0, 60.0).times, [0.0, 0.25])


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_shipped_scenarios_load(path: Path) -> None:
    sc = load_scenario(path)
    assert sc.name == path.stem
    assert sc.about
    assert load_scenario(path.stem) == load_scenario(path).with_(source=load_scenario(path.stem).source)


@pytest.mark.parametrize("doc,needle", [
    ({"bogus": 1}, "unknown key"),
    ({"process": "sine"}, "process"),
    ({"spikes": [{"factor": 4}]}, "spikes[0].at"),
    ({"cluster": {"image_pull": "soon"}}, "cluster.image_pull"),
    ({"diurnal": {"amplitude": 2}}, "amplitude"),
    ({"batch_jobs": [{"size": 0}]}, "size"),
    ({"server": {"run_ms": [{"models": "asr-*"}]}}, "server.run_ms[0]"),
    ({"server": {"missed_wake": 2}}, "server.missed_wake"),
    ({"session": 0}, "session: 0 must be > 0"),  # sessions start at C / session: an infinite rate
    ({"grid": "0.1ms"}, "grid: '0.1ms' is finer than 1 ms"),  # 600,000 rate cells a minute
], ids=["unknown-key", "bad-process", "spike-without-at", "bad-duration", "amplitude", "job-size", "run-ms",
        "missed-wake", "session-0", "grid-too-fine"])
def test_scenario_errors_name_the_field(doc: dict, needle: str) -> None:
    with pytest.raises(UserError, match=None) as e:
        parse_scenario(doc)
    assert needle in str(e.value)


def test_durations() -> None:
    assert parse_duration("90s") == 90 and parse_duration("4m") == 240 and parse_duration("1.5h") == 5400
    assert parse_duration("1d") == 86400 and parse_duration(30) == 30
    with pytest.raises(UserError):
        parse_duration("-1h")


def test_arrivals_do_not_depend_on_how_time_is_cut() -> None:
    """Two policies cut time at different events; each model's arrivals must stay the same."""
    a = sources(fleet(), Scenario(process="diurnal"), seed=8)
    b = sources(fleet(), Scenario(process="diurnal"), seed=8)
    cuts_a = [0.0, 15.0, 30.0, 45.0, 60.0, 75.0, 90.0, 200.0]
    cuts_b = [0.0, 7.3, 61.0, 62.5, 130.0, 200.0]
    for sa, sb in zip(a, b):
        ta = np.concatenate([sa.take(x, y).times for x, y in zip(cuts_a, cuts_a[1:])])
        tb = np.concatenate([sb.take(x, y).times for x, y in zip(cuts_b, cuts_b[1:])])
        assert np.array_equal(ta, tb)


def test_stream_chunks_can_arrive_as_one_poisson_process() -> None:
    """``stream_arrivals: poisson`` (how bench/triton.py drives Triton) keeps the rate, drops the period."""
    sc = parse_scenario({"process": "poisson", "stream_arrivals": "poisson"})
    t = take_all(sources(fleet(), sc, seed=6)[0], 600.0)
    assert t.size / 600.0 == pytest.approx(400.0, rel=0.03)
    gaps = np.diff(t)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.03)
    with pytest.raises(UserError, match="stream_arrivals"):
        parse_scenario({"stream_arrivals": "sometimes"})


# -- hostile traces: one ScenarioError line naming the file and the fix, in bounded time ----------

def _trace(tmp_path: Path, data: bytes) -> str:
    p = tmp_path / "t.csv"
    p.write_bytes(data)
    return str(p)


@pytest.mark.parametrize("data,needle", [
    (b"0,asr-en\nnan,asr-en\n", "t.csv:2: timestamp 'nan' is not a finite number of seconds"),
    (b"0,asr-en\ninf,asr-en\n", "t.csv:2: timestamp 'inf' is not a finite number"),  # made 3,091 requests of 2
    (b"0,asr-en\n1e400,asr-en\n", "t.csv:2: timestamp '1e400' is not a finite number"),
    (b"0,asr-en\n1,asr-\xff\n", "t.csv: is not UTF-8 text (byte 0xff at line 2)"),
    (b"0,asr-en\n1," + b"x" * 200_000 + b"\n", "t.csv:2: is not a `timestamp,model` CSV (field larger than"),
], ids=["nan", "inf", "overflow", "not-utf8", "long-field"])
def test_a_bad_trace_is_one_line_naming_the_file_and_line(tmp_path: Path, data: bytes, needle: str) -> None:
    """nan, a byte that is not UTF-8 and a 200,000-character field ended in tracebacks (ValueError,
    UnicodeDecodeError, _csv.Error); inf was replayed as thousands of requests."""
    from sims.traffic import read_trace

    with pytest.raises(UserError) as e:
        read_trace(_trace(tmp_path, data))
    msg = str(e.value)
    assert needle in msg and "Fix:" in msg and "\n" not in msg and len(msg) < 400, msg


def test_a_trace_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    """``trace: /tmp`` was an IsADirectoryError traceback."""
    from sims.traffic import read_trace

    with pytest.raises(UserError, match=f"^trace.file: {tmp_path}: is a directory. Fix: "):
        read_trace(str(tmp_path))


def test_a_trace_over_the_size_cap_is_refused_naming_the_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``trace: /dev/zero`` grew to 24 GB: a trace is read up to MAX_TRACE_BYTES and no further."""
    from sims import traffic

    p = _trace(tmp_path, b"".join(b"%d,asr-en\n" % i for i in range(1000)))  # 8,890 bytes
    monkeypatch.setattr(traffic, "MAX_TRACE_BYTES", 4096)
    with pytest.raises(UserError, match="is larger than 4 KiB, the most packer reads. Fix: give a trace CSV file of "
                                        "at most 4 KiB"):
        traffic.read_trace(p)
    monkeypatch.setattr(traffic, "MAX_TRACE_BYTES", 2**20)
    assert traffic.read_trace(p)["asr-en"].size == 1000
    # Short lines pass the byte cap in larger numbers: the requests are capped too.
    monkeypatch.setattr(traffic, "MAX_TRACE_ROWS", 999)
    (tmp_path / "rows").mkdir()
    p2 = _trace(tmp_path / "rows", b"".join(b"%d,asr-en\n" % i for i in range(1000)))
    with pytest.raises(UserError, match="holds more than 999 requests, the most a trace may hold. Fix: "):
        traffic.read_trace(p2)


@pytest.mark.timeout(10)
def test_a_trace_on_a_pipe_nobody_writes_to_is_refused_in_bounded_time(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A trace that was a named pipe with no writer blocked forever: it is read like a fleet,
    through ``packer.safeload.read_text``, which gives up after PIPE_WAIT_S."""
    import os
    import threading
    import time

    from packer import safeload
    from sims.traffic import read_trace

    monkeypatch.setattr(safeload, "PIPE_WAIT_S", 0.2)
    fifo = tmp_path / "trace.csv"
    os.mkfifo(fifo)
    t = time.monotonic()
    with pytest.raises(UserError, match=f"^trace.file: {fifo}: is a pipe that sent nothing for 0.2 s. Fix: "):
        read_trace(str(fifo))
    assert time.monotonic() - t < 1.0

    def write() -> None:  # a pipe with a writer is still read, and once per run
        with open(fifo, "w") as fh:
            fh.write("0,asr-en\n0.5,asr-en\n")

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    assert read_trace(str(fifo))["asr-en"].tolist() == [0.0, 0.5]
    writer.join()
    assert read_trace(str(fifo))["asr-en"].tolist() == [0.0, 0.5]


def test_a_scenario_duration_of_zero_is_refused() -> None:
    """``duration: 0`` ran the default hour (``duration_s or 3600``); ``--duration 0`` is refused."""
    with pytest.raises(UserError, match=r"^duration: 0 must be > 0\. Fix: "):
        parse_scenario({"duration": 0})
    with pytest.raises(UserError, match=r"^duration: '0s' must be > 0\. Fix: "):
        parse_scenario({"duration": "0s"})
    assert parse_scenario({"duration": "2m"}).duration_s == 120 and parse_scenario({}).duration_s is None


@pytest.mark.parametrize("text,kind", [("- 1\n", "a list"), ("abc\n", "the text 'abc'"), ("3\n", "the number 3")])
def test_a_scenario_that_is_not_a_mapping_names_its_file(tmp_path: Path, text: str, kind: str) -> None:
    """It said ``(top level): is not a mapping``, without the file."""
    p = tmp_path / "s.yaml"
    p.write_text(text)
    with pytest.raises(UserError, match=f"^{p}: is {kind}, not a mapping. Fix: "):
        load_scenario(p)


def test_a_trace_of_any_origin_starts_at_zero_negative_times_too(tmp_path: Path) -> None:
    """docs/simulator.md: timestamps in seconds, any origin; times before an event are negative."""
    from sims.traffic import read_trace

    got = read_trace(_trace(tmp_path, b"timestamp,model\n-5,asr-en\n-4.5,asr-en\n0,punct-en\n"))
    assert got["asr-en"].tolist() == [0.0, 0.5] and got["punct-en"].tolist() == [5.0]
