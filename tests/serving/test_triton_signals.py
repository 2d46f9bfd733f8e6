"""Pure parts of the adapters: metrics into signals, and the control client's decisions."""

from __future__ import annotations

import pytest

from serving.control import ControlStep, decide
from serving.metrics import ModelCounters, Scrape, parse, signals

# Shape of Triton 2.45's /metrics (captured from the local server), two versions of asr-es.
TEXT = """\
# HELP nv_inference_request_success Number of successful inference requests, all batch sizes
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="asr-es",version="1"} 100
nv_inference_request_success{model="asr-es",version="2"} 20
nv_inference_request_success{model="punct-es",version="1"} 2
nv_inference_request_failure{model="asr-es",version="1"} 4
nv_inference_count{model="asr-es",version="1"} 120
nv_inference_exec_count{model="asr-es",version="1"} 10
nv_inference_queue_duration_us{model="asr-es",version="1"} 240000
nv_inference_request_duration_us{model="asr-es",version="1"} 600000
nv_inference_compute_infer_duration_us{model="asr-es",version="1"} 300000
# TYPE nv_inference_pending_request_count gauge
nv_inference_pending_request_count{model="asr-es",version="1"} 7
nv_inference_pending_request_count{model="punct-es",version="1"} 0
nv_pinned_memory_pool_total_bytes 268435456
nv_cpu_utilization 1
"""


def test_parse_sums_versions_and_ignores_other_metrics():
    m = parse(TEXT)
    assert set(m) == {"asr-es", "punct-es"}
    assert m["asr-es"] == ModelCounters(pending=7, success=120, failure=4, inferences=120, executions=10,
                                        queue_us=240000, request_us=600000, compute_us=300000)
    assert m["punct-es"].success == 2


@pytest.mark.parametrize("line", ["garbage", 'nv_inference_count{model="x"} NaNish', "nv_inference_count 5"],
                         ids=["not-a-sample", "bad-value", "no-model-label"])
def test_parse_skips_lines_it_cannot_use(line):
    assert parse(line) == {}


def test_signals_are_differences_over_the_window():
    prev = Scrape(10.0, parse(TEXT))
    cur = Scrape(20.0, {"asr-es": ModelCounters(pending=3, success=220, failure=14, inferences=320, executions=20,
                                                queue_us=740000, request_us=1600000, compute_us=800000)})
    s = signals(prev, cur)["asr-es"]
    assert s.request_rate == pytest.approx((100 + 10) / 10)  # 100 answered + 10 rejected in 10 s
    assert s.failure_rate == pytest.approx(1.0)
    assert s.queue_ms == pytest.approx(500000 / 100 / 1000)  # 5 ms each
    assert s.latency_ms == pytest.approx(10.0)
    assert s.compute_ms == pytest.approx(5.0)
    assert s.avg_batch == pytest.approx(200 / 10)  # 200 inferences in 10 runs
    assert s.pending == 3 and s.window_s == 10.0


def test_a_restarted_server_counts_from_zero_and_an_idle_model_has_no_batch():
    prev = Scrape(0.0, {"m": ModelCounters(success=1000, inferences=1000, executions=100)})
    cur = Scrape(5.0, {"m": ModelCounters(success=50, inferences=50, executions=10), "idle": ModelCounters()})
    s = signals(prev, cur)
    assert s["m"].request_rate == pytest.approx(10.0) and s["m"].avg_batch == pytest.approx(5.0)
    assert s["idle"].avg_batch == 0.0 and s["idle"].queue_ms == 0.0


def test_signals_need_time_order():
    with pytest.raises(ValueError):
        signals(Scrape(5.0, {}), Scrape(5.0, {}))


def test_decide_loads_before_it_unloads_and_drains_only_sequence_models():
    acts = decide(loaded={"asr-es": "a", "punct-es": "b", "old": "c", "asr-de": "d"},
                  wanted={"punct-es": "b", "asr-es": "changed", "new": "n", "asr-de": "d2"},
                  sequence={"asr-es", "old"})
    assert [(a.verb, a.model, a.drain) for a in acts] == [
        ("keep", "punct-es", False), ("load", "new", False), ("reload", "asr-es", True),
        ("reload", "asr-de", False), ("unload", "old", True)]
    assert all(isinstance(a, ControlStep) and a.reason for a in acts)


def test_decide_reloads_a_model_it_did_not_load_itself():
    (a,) = decide(loaded={"m": None}, wanted={"m": "x"}, sequence=set())
    assert a.verb == "reload"


def test_control_says_how_to_reach_a_server_it_cannot_reach():
    from packer.errors import UserError
    from serving.control import ServerControl
    from serving.local import free_port

    with pytest.raises(UserError, match="model-control-mode=explicit"):
        ServerControl(f"127.0.0.1:{free_port()}").loaded()
