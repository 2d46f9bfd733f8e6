"""The rendered repositories on a real ``tritonserver`` (CPU instances of the stand-in models).

These tests start real servers; if tritonserver cannot start they fail with its log, never skip.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from packer.errors import UserError
from packer.plan import save_plan
from packer.slot import servable
from serving.config import timing
from serving.control import ServerControl, digest
from packer.handplan import placement, plan_of
from serving.local import LocalTriton, free_ports
from serving.metrics import scrape, signals
from serving.repository import group_repositories, repositories, write_repository
from serving.settings import TritonSettings
from triton_helpers import FAST, fleet, meetings_plan, one, planned

pytestmark = pytest.mark.slow
LIVE = TritonSettings(device="cpu", sequence_idle_s=1.0)  # real-time stand-ins, short idle for drains
BATCH = TritonSettings(device="cpu", time_scale=FAST)


@pytest.fixture(scope="module")
def plan():
    return meetings_plan()


@pytest.fixture(scope="module")
def live(plan, tmp_path_factory):
    """One server on the streaming repository of the first group (asr-es + punct-es)."""
    (repo,) = group_repositories(plan, plan.placements[0], LIVE)
    with LocalTriton(write_repository(repo, tmp_path_factory.mktemp("live") / "streaming")) as s:
        yield s


@pytest.fixture(scope="module")
def batch(plan, tmp_path_factory):
    """One server on the batch repository of the second group (diarize-es, summarizer-es, diarize-de)."""
    (repo,) = group_repositories(plan, plan.placements[1], BATCH)
    with LocalTriton(write_repository(repo, tmp_path_factory.mktemp("batch") / "batch")) as s:
        yield s


def ready(url: str) -> dict[str, str]:
    c = httpclient.InferenceServerClient(url)
    return {m["name"]: m.get("state", "") for m in c.get_model_repository_index()}


def batch_counts(url: str, model: str) -> dict[int, int]:
    c = grpcclient.InferenceServerClient(url)
    st = c.get_inference_statistics(model, as_json=True)["model_stats"][0]
    return {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in st.get("batch_stats", [])}


@pytest.mark.parametrize("name", ["llm-platform", "long-tail", "multilingual-meetings"])
def test_first_groups_of_each_example_fleet_load_ready(name, tmp_path):
    plan = planned(name)
    repos = repositories(plan, TritonSettings(device="cpu", time_scale=FAST), groups=2)
    assert repos
    for r in repos:
        with LocalTriton(write_repository(r, tmp_path / r.slot / r.kind)) as s:
            assert ready(s.http_url) == {n: "READY" for n in r.names}, s.log_tail()


def test_sequences_keep_their_state_apart_over_one_grpc_stream(live):
    """Six interleaved streams on one gRPC stream: each chunk sees only its own stream's history."""
    results: queue.Queue = queue.Queue()
    c = grpcclient.InferenceServerClient(live.grpc_url)
    before = batch_counts(live.grpc_url, "asr-es")
    c.start_stream(callback=lambda result, error: results.put((result, error)))
    streams, chunks = 6, 5
    try:
        for j in range(chunks):
            for k in range(streams):
                c.async_stream_infer("asr-es", [one(100 * k + j)], request_id=f"{k}-{j}", sequence_id=1000 + k,
                                     sequence_start=j == 0, sequence_end=j == chunks - 1)
            time.sleep(0.01)
        got = {}
        for _ in range(streams * chunks):
            result, error = results.get(timeout=30)
            assert error is None, error
            r = result.get_response()
            got[r.id] = (float(result.as_numpy("SEQ_SUM")[0, 0]), int(result.as_numpy("SEQ_LEN")[0, 0]))
    finally:
        c.stop_stream()
    for k in range(streams):
        for j in range(chunks):
            own = sum(100 * k + i for i in range(j + 1))
            assert got[f"{k}-{j}"] == (own, j + 1), (k, j)
    after = batch_counts(live.grpc_url, "asr-es")
    assert any(after.get(b, 0) > before.get(b, 0) for b in after if b > 1), "concurrent streams were never batched"


def test_batch_model_batches_concurrent_requests_and_metrics_show_it(batch):
    model, n = "diarize-es", 20
    before_counts = batch_counts(batch.grpc_url, model)
    before = scrape(batch.metrics_url, time.monotonic())
    c = httpclient.InferenceServerClient(batch.http_url, concurrency=n)
    inputs = []
    for i in range(n):
        x = httpclient.InferInput("INPUT", [1, 1], "FP32")
        x.set_data_from_numpy(np.array([[i]], dtype=np.float32))
        inputs.append(x)
    pending = [c.async_infer(model, [x]) for x in inputs]
    outs = sorted(float(p.get_result().as_numpy("OUTPUT")[0, 0]) for p in pending)
    assert outs == list(range(n))
    after_counts = batch_counts(batch.grpc_url, model)
    grew = {b: after_counts[b] - before_counts.get(b, 0) for b in after_counts if after_counts[b] > before_counts.get(b, 0)}
    assert max(grew) > 1, grew
    assert sum(b * k for b, k in grew.items()) == n
    time.sleep(0.6)  # Triton refreshes metrics every 500 ms here
    sig = signals(before, scrape(batch.metrics_url, time.monotonic()))[model]
    assert sig.avg_batch == pytest.approx(n / sum(grew.values()))
    assert sig.avg_batch > 1
    assert sig.request_rate > 0 and sig.failure_rate == 0 and sig.pending == 0
    assert sig.queue_ms > 0


def test_a_burst_beyond_what_can_meet_the_slo_is_rejected_at_once_when_shedding(tmp_path):
    """With ``TritonSettings.shed``: ft-0002 (10.25 ms + 2.69 ms/item, SLO 100 ms) on a duty cycle,
    provisioned for batches of 2 (15.6 ms), has 84.4 ms to queue, in which it can finish at most 27
    requests; of a burst of 150, the rest are turned away at once instead of queueing to fail late.
    (Alone at 1 rps the planner serves it as its requests come, its batches capped at 2: a queue
    policy stops Triton's batcher prefetching (docs/serving.md), and of such a burst the real server
    then served 3 before the rest timed out.)"""
    f = fleet("long-tail")
    p = placement(f, "l4", [("ft-0002", 1.0)], lone=False)
    assert p.duty_cycle_ms > 0
    (repo,) = group_repositories(plan_of(f, [p]), p, TritonSettings(device="cpu", shed=True))
    bound = repo.models[0].config.dynamic_batching.default_queue_policy.max_queue_size
    t = timing(f, p, "ft-0002", TritonSettings(device="cpu", shed=True))
    assert t.batch == 2 and t.max_batch == 32 and bound == servable(t.budget_ms, t.base_ms, t.per_item_ms, 32) == 27
    burst = 150

    res: queue.Queue = queue.Queue()
    with LocalTriton(write_repository(repo, tmp_path / "r")) as s:
        c = grpcclient.InferenceServerClient(s.grpc_url)
        c.infer("ft-0002", [one(0)])  # connect first, so the burst arrives together
        sent0 = time.monotonic()
        for i in range(burst):
            t0 = time.monotonic()
            c.async_infer("ft-0002", [one(i)], callback=lambda result, error, t0=t0: res.put(
                (error is None, time.monotonic() - t0, error.message() if error else "")))
        sending_s = time.monotonic() - sent0
        res = [res.get(timeout=60) for _ in range(burst)]
    ok = [r for r in res if r[0]]
    rejected = [r for r in res if not r[0]]
    # On a loaded machine the burst takes a while to send, and full batches (32 in at least
    # 10.25 + 2.69 * 32 ms) are served meanwhile; only the rest must be turned away.
    m = f.model("ft-0002")
    served_while_sending = math.ceil(sending_s / ((10.25 + 2.69 * m.max_batch) / 1000)) * m.max_batch
    assert len(rejected) >= burst - bound - m.max_batch - served_while_sending, (len(ok), len(rejected), sending_s)
    assert len(ok) >= bound  # what was queued is served in batches as large as the queue, in time
    assert all("queue" in r[2].lower() or "timeout" in r[2].lower() for r in rejected), rejected[0][2]
    assert sorted(r[1] for r in rejected)[len(rejected) // 2] < 0.1  # most are told at once


def test_control_moves_the_server_without_cutting_an_open_sequence(plan, tmp_path):
    f = plan.fleet
    old = group_repositories(plan, plan.placements[0], LIVE)[0]
    # The new group: German ASR joins, Spanish ASR leaves, punct-es is re-sized (a changed config).
    moved = placement(f, "a100-80", [("asr-de", 278.0), ("punct-es", 20.0)], node="a100-80-n0", gpu=0)
    new = group_repositories(plan_of(f, [moved]), moved, LIVE)[0]
    with LocalTriton(write_repository(old, tmp_path / "old")) as s:
        ctl = ServerControl(s.grpc_url)
        c = grpcclient.InferenceServerClient(s.grpc_url)
        r = c.infer("asr-es", [one(1.0)], sequence_id=77, sequence_start=True)
        assert int(r.as_numpy("SEQ_LEN")[0, 0]) == 1
        done: dict = {}
        t = threading.Thread(target=lambda: done.update(report=ctl.apply(new, drain_timeout_s=30), at=time.monotonic()))
        t.start()
        seen_new_before_end = False
        for j in range(2, 22):  # the stream goes on for ~4 s while the server moves
            time.sleep(0.2)
            r = c.infer("asr-es", [one(1.0)], sequence_id=77)
            assert int(r.as_numpy("SEQ_LEN")[0, 0]) == j and float(r.as_numpy("SEQ_SUM")[0, 0]) == j
            seen_new_before_end |= c.is_model_ready("asr-de")
        r = c.infer("asr-es", [one(1.0)], sequence_id=77, sequence_end=True)
        ended = time.monotonic()
        assert int(r.as_numpy("SEQ_LEN")[0, 0]) == 22
        t.join(60)
        report = done["report"]
        assert seen_new_before_end, "new models load before old ones drain"
        assert report.cut == [] and "asr-es" in report.drained
        assert done["at"] >= ended + LIVE.sequence_idle_s, "unloaded before the stream had been quiet for its idle time"
        verbs = {a.model: a.verb for a in report.steps}
        assert verbs == {"asr-de": "load", "punct-es": "reload", "asr-es": "unload"}
        assert c.is_model_ready("asr-de") and c.is_model_ready("punct-es") and not c.is_model_ready("asr-es")
        want = {m.name: digest(m) for m in new.models}
        assert ctl.loaded(also=("asr-de",)) == want
        assert [a.verb for a in ctl.apply(new).steps] == ["keep", "keep"]  # idempotent


def test_cli_renders_and_serves_a_plan(plan, tmp_path, capsys):
    from packer_cli.main import main

    save_plan(plan, tmp_path / "plan.json")
    assert main(["render", "triton", str(tmp_path / "plan.json"), "-o", str(tmp_path / "out"), "--device", "cpu"]) == 0
    assert (tmp_path / "out" / "index.json").is_file()
    assert (tmp_path / "out" / plan.placements[0].id / "streaming" / "asr-es" / "1" / "model.py").is_file()
    assert main(["serve-local", str(tmp_path / "plan.json"), "--group", "1", "--seconds", "0.2",
                 "--time-scale", str(FAST)]) == 0
    out = capsys.readouterr().out
    assert "batch: diarize-es, summarizer-es, diarize-de" in out and "gRPC 127.0.0.1:" in out and "HTTP http://127.0.0.1:" in out
    # issue 16 item 7: a request to paste, and the batch group's wait said to be by design
    assert "  try: curl -s -X POST http://127.0.0.1:" in out and "/v2/models/diarize-es/infer" in out
    assert "note: a batch group: each request waits up to" in out and "by design" in out
    assert main(["serve-local", str(tmp_path / "plan.json"), "--group", "9"]) == 2
    assert "give --group 0..1" in capsys.readouterr().err


def test_a_model_that_cannot_load_stops_the_server_with_its_log(plan, tmp_path):
    (repo,) = group_repositories(plan, plan.placements[0], LIVE)[:1]
    bad = replace(repo, models=(replace(repo.models[0], files={"1/model.py": b"raise SystemExit('broken stand-in')"}),))
    with pytest.raises(UserError, match="asr-es"):
        LocalTriton(write_repository(bad, tmp_path / "bad"), start_timeout_s=60).start()


def test_a_refused_command_line_names_its_reason_not_the_usage_text(plan, tmp_path):
    """CI once drew the same port twice for two endpoints; tritonserver printed its usage and the
    error showed only the usage's tail. The ports are now distinct, and the reason comes first."""
    (repo,) = group_repositories(plan, plan.placements[0], LIVE)[:1]
    server = LocalTriton(write_repository(repo, tmp_path / "r"), extra_args=("--http-port=0", "--grpc-port=0"))
    with pytest.raises(UserError, match="cannot listen to HTTP requests and GRPC requests") as e:
        server.start()
    assert "Usage" not in str(e.value)


def test_free_ports_are_distinct():
    ports = free_ports(64)
    assert len(set(ports)) == 64 and all(0 < p < 65536 for p in ports)


def test_models_sharing_a_slot_take_turns_on_it(tmp_path):
    """With the slot rate limiter, two packed models' batches run one after the other (the duty
    cycle the plan's shares assume). Without it, the stand-ins' device lock still makes them take
    turns, as two processes on one GPU would; a stand-in that only slept would run them at once."""
    f = fleet("long-tail")
    p = placement(f, "l4", [("ft-0002", 1.0), ("ft-0003", 1.0)])
    settings = TritonSettings(device="cpu", time_scale=10.0, lock_dir=str(tmp_path))
    (repo,) = group_repositories(plan_of(f, [p]), p, settings)
    # one request each: a batch of 1, on the stand-ins' compressed clock
    run = {m.name: (timing(f, p, m.name, settings).base_ms + timing(f, p, m.name, settings).per_item_ms)
           * settings.time_scale for m in p.models}

    def variant(rate_limiter: bool, lock: bool):
        # About turn-taking, not the batcher: no queue delay, each request runs on arrival.
        return replace(repo, models=tuple(replace(m, config=_tweaked(m.config, rate_limiter=rate_limiter, lock=lock))
                                          for m in repo.models))

    def both_at_once(server: LocalTriton) -> float:
        t0 = time.monotonic()
        with ThreadPoolExecutor(2) as ex:
            list(ex.map(lambda n: grpcclient.InferenceServerClient(server.grpc_url).infer(n, [one(1.0)]), run))
        return (time.monotonic() - t0) * 1000

    measured = {}
    for name, rl, lock in (("limiter", True, True), ("lock", False, True), ("neither", False, False)):
        with LocalTriton(write_repository(variant(rl, lock), tmp_path / name)) as s:
            both_at_once(s)  # first calls pay for connections
            measured[name] = min(both_at_once(s) for _ in range(2))
    assert measured["limiter"] >= 0.95 * sum(run.values()), (measured, run)
    assert measured["lock"] >= 0.95 * sum(run.values()), (measured, run)
    assert measured["neither"] < max(run.values()) + 0.5 * min(run.values()), (measured, run)


def test_a_slots_streaming_and_batch_repositories_share_one_server_and_its_turns(tmp_path):
    """Both classes of a slot load into one server; a streaming and a batch member take turns on
    the slot's one rate-limiter unit, as one GPU slot runs one batch at a time."""
    from packer.fleetfile import parse_fleet

    f = parse_fleet({"name": "pair", "pools": [{"name": "l4", "gpu": "l4-24gb", "gpus_per_node": 1, "max_nodes": 1,
                                                "cost_per_gpu_hour": 1.0, "sharing": ["time-slicing"]}],
                     "models": [{"name": "live", "kind": "streaming", "memory_gb": 1, "traffic": {"rps": 1},
                                 "slo_ms": 4000, "latency_ms": {"gpu": "l4-24gb", "base": 200, "per_item": 10},
                                 "max_batch": 8},
                                {"name": "bulk", "kind": "batch", "memory_gb": 1, "traffic": {"rps": 0.1},
                                 "slo_ms": 60000, "latency_ms": {"gpu": "l4-24gb", "base": 300, "per_item": 10},
                                 "max_batch": 8}]})
    p = placement(f, "l4", [("live", 1.0), ("bulk", 0.1)], node="l4-n0", gpu=0)
    plan = plan_of(f, [p])
    # A separate lock directory per server would let them overlap: this is the rate limiter alone.
    settings = TritonSettings(device="cpu")
    repos = group_repositories(plan, p, settings)
    assert [r.kind for r in repos] == ["streaming", "batch"]
    for r in repos:
        for m in r.models:
            assert [(x.name, x.count) for x in m.config.instance_group[0].rate_limiter.resources] == [("slot", 1)]
    repos = [replace(r, models=tuple(replace(m, config=_tweaked(m.config, rate_limiter=True, lock=False))
                                     for m in r.models)) for r in repos]
    run = {m.name: timing(f, p, m.name, settings).base_ms + timing(f, p, m.name, settings).per_item_ms
           for m in p.models}  # one request each
    with LocalTriton([write_repository(r, tmp_path / r.kind) for r in repos]) as s:
        assert set(ready(s.http_url)) == {"live", "bulk"}

        def both() -> float:
            t0 = time.monotonic()
            with ThreadPoolExecutor(2) as ex:
                list(ex.map(lambda n: grpcclient.InferenceServerClient(s.grpc_url).infer(n, [one(1.0)]), run))
            return (time.monotonic() - t0) * 1000

        both()
        took = min(both() for _ in range(2))
    assert took >= 0.95 * sum(run.values()), (took, run)


def _tweaked(cfg, *, rate_limiter: bool, lock: bool = True):
    out = type(cfg)()
    out.CopyFrom(cfg)
    if out.HasField("dynamic_batching"):
        out.dynamic_batching.max_queue_delay_microseconds = 0
    assert out.instance_group[0].HasField("rate_limiter")
    if not rate_limiter:
        out.instance_group[0].ClearField("rate_limiter")
    if not lock:
        del out.parameters["device_lock"]
    return out


@pytest.mark.parametrize("group,kinds", [("0", ["streaming"]), ("1", ["batch"])])  # sequence and dynamic batcher
def test_serve_local_prints_a_request_that_works_when_pasted(plan, tmp_path, group, kinds):
    """The printed curl, run by a shell against the running server, gets the stand-in's answer."""
    import json
    import os
    import signal
    import subprocess
    import sys

    save_plan(plan, tmp_path / "plan.json")
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-m", "packer_cli", "serve-local", str(tmp_path / "plan.json"), "--group", group,
                             "--seconds", "120", "--time-scale", str(FAST), "--format", "json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=root,
                            env=dict(os.environ, PYTHONPATH=str(root)))
    try:
        text = ""
        while True:  # the endpoints come as one JSON document once every server is ready
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            text += line
            if line.rstrip() == "}":
                break
        groups = json.loads(text)["groups"]
        assert [g["kind"] for g in groups] == kinds
        for g in groups:
            r = subprocess.run(g["try"], shell=True, capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, r.stderr
            answer = json.loads(r.stdout)
            assert answer["model_name"] == g["models"][0]
            assert {o["name"]: o["data"] for o in answer["outputs"]}["OUTPUT"] == [1.0]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)


def test_a_replica_has_sequence_slots_for_the_streams_it_carries_at_peak(tmp_path):
    """``streams`` counts the sessions at the mean rate: at a peak of twice the mean a replica
    carries twice as many, and their count varies about that. The writer gave a slot its share of
    ``streams`` alone (20 here), and on the real server the streams past those slots waited in
    Triton's backlog until a stream ended (or idled out, 30 s): with 20 slots, 44 streams of six
    chunks, the 24 opened last waited 2.3 s for their first answer, against 6 ms with 75. Now the
    slots cover the count at peak at one in a million (``arrivals.session_slots``: 75 for a mean
    of 40)."""
    from packer.fleetfile import parse_fleet

    f = parse_fleet({"name": "peaky", "pools": [{"name": "l4", "gpu": "l4-24gb", "gpus_per_node": 1, "max_nodes": 1,
                                                 "cost_per_gpu_hour": 0.8}],
                     "models": [{"name": "asr", "kind": "streaming", "memory_gb": 1, "slo_ms": 200, "max_batch": 16,
                                 "latency_ms": {"gpu": "l4-24gb", "base": 2.0, "per_item": 0.1},
                                 "traffic": {"rps": 40, "peak_rps": 80, "streams": 20}}]}, "peaky")
    p = placement(f, "l4", [("asr", 80.0)])
    settings = TritonSettings(device="cpu")
    (repo,) = group_repositories(plan_of(f, [p]), p, settings)
    assert repo.models[0].config.sequence_batching.oldest.max_candidate_sequences == 75
    results: queue.Queue = queue.Queue()
    streams, chunks = 44, 6  # the mean at peak, 40, and a tenth more; three seconds each
    with LocalTriton(write_repository(repo, tmp_path / "peaky")) as s:
        c = grpcclient.InferenceServerClient(s.grpc_url)
        c.start_stream(callback=lambda result, error: results.put((time.monotonic(), result, error)))
        sent: dict[str, float] = {}
        try:
            for j in range(chunks):
                for k in range(streams):
                    sent[f"{k}-{j}"] = time.monotonic()
                    c.async_stream_infer("asr", [one(float(k))], request_id=f"{k}-{j}", sequence_id=5000 + k,
                                         sequence_start=j == 0, sequence_end=j == chunks - 1)
                    time.sleep(0.5 / streams)  # each stream a chunk every half second: 88 chunks a second
            waited = {}
            for _ in range(streams * chunks):
                at, result, error = results.get(timeout=10)
                assert error is None, error
                rid = result.get_response().id
                waited[rid] = at - sent[rid]
        finally:
            c.stop_stream()
    assert len(waited) == streams * chunks
    # Streams past the slots wait for one to free: 24 of these 44 waited 2.3 s for every chunk
    # until their stream began. A real server on a shared CI machine can stall one answer now
    # and then (one of 264 waited 0.58 s in a fresh clone's run, the rest under 10 ms), so the
    # SLO is asked of 99 % of answers and no answer may wait a second.
    slowest = sorted(waited.values())
    assert slowest[int(0.99 * len(slowest))] < 0.2, sorted(waited.items(), key=lambda kv: -kv[1])[:5]  # the SLO
    assert slowest[-1] < 1.0, sorted(waited.items(), key=lambda kv: -kv[1])[:3]
