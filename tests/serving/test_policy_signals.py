"""Per-server Triton windows fold into the scaling policy's per-model signals."""

from serving.metrics import ModelSignals, policy_signals


def window(model, pending, rate, failures, queue_ms):
    return {model: ModelSignals(model, pending, rate, failures, queue_ms, latency_ms=queue_ms + 5,
                                compute_ms=5, avg_batch=4, window_s=10)}


def test_replicas_on_two_servers_add_up_and_the_worst_server_counts():
    out = policy_signals([window("asr-en", 3, 100.0, 0.0, 12.0), window("asr-en", 5, 50.0, 5.0, 30.0),
                          window("punct-en", 0, 10.0, 0.0, 1.0)])
    a = out["asr-en"]
    assert (a.queued, a.arrival_rps, a.queue_ms) == (8, 150.0, 30.0)
    assert a.late_share == 5.0 / 50.0  # the worst server's share, not the average
    assert out["punct-en"].arrival_rps == 10.0 and out["punct-en"].late_share == 0.0


def test_no_windows_no_signals():
    assert policy_signals([]) == {}
