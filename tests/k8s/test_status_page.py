"""The reconciler's status page as HTML text: a clean header with health at a glance, readable GPU
counts, the CLI's money format, the last cycle's time and result, and auto-refresh."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from k8s.diff import Change, Conflict
from k8s.reconciler import CycleReport
from k8s.server import _page, health
from k8s.settings import ReconcileSettings

T0 = 1_796_212_800.0  # 2026-12-02 12:00:00 UTC


@pytest.fixture()
def rec(plans):
    plan = plans.build(plans.base_slots)
    done = [Change("create", "Deployment", "packer", "pk-l4-n0-g0-whole", "planned: punct b=8")]
    rep = CycleReport(leader=True, plan=plan, replanned="fleet changed", done=done, writes=7, seconds=0.42)
    now = [T0 + 12]
    return SimpleNamespace(identity="packer-reconciler-0", last=rep, cycles=41, last_cycle_end=T0,
                           clock=lambda: now[0], s=ReconcileSettings(), now=now,
                           history=[{"at": T0, "action": a.describe()} for a in done])


def test_page_reads_at_a_glance(rec) -> None:
    page = _page(rec, T0 - 60)
    head = page[:page.index("<svg")]
    assert "<meta http-equiv='refresh' content='15'>" in page  # one refresh per reconcile interval
    assert "<h1>packer reconciler</h1>" in head and "packer-reconciler-0 · leader" in head
    assert ">healthy</span>" in head
    assert "2026-12-02 12:00:00 UTC (12 s ago), took 0.42 s" in head  # when the last cycle ran, how long
    assert "1 applied, 0 waiting, 0 conflict(s), 0 error(s), 7 write(s)" in head  # and what it did
    assert "3 (a100: 1, l4: 2)" in head and "{'" not in page and "{&#x27;" not in page  # no dict repr
    assert "9.80/h (lower bound 8.00/h, gap 18.4%)" in head and "$" not in page  # as `packer plan` prints
    assert "create Deployment/pk-l4-n0-g0-whole: planned: punct b=8" in page


def test_health_shows_stalls_errors_and_work_left(rec) -> None:
    rec.now[0] = T0 + 3 * rec.s.interval_s + rec.s.request_timeout_s * rec.s.max_attempts + 1
    assert health(rec, T0)[0] == "stalled"
    assert ">stalled</span>" in _page(rec, T0)
    rec.now[0] = T0 + 5
    rec.last.errors.append("cycle aborted: 503 from the API server")
    assert health(rec, T0)[0] == "failing"
    page = _page(rec, T0)
    assert ">failing</span>" in page and "<h2>Errors</h2>" in page and "503 from the API server" in page
    rec.last.errors.clear()
    rec.last.conflicts.append(Conflict("Service", "packer", "pk-x", "not ours"))
    assert health(rec, T0)[0] == "attention"
    rec.last = CycleReport(leader=False)
    assert health(rec, T0)[0] == "follower" and "· follower" in _page(rec, T0)
    rec.last = None
    assert health(rec, T0)[0] == "starting" and "no cycle yet" in _page(rec, T0)


def test_a_cycle_that_waits_on_a_slow_api_server_is_alive_not_stalled(rec) -> None:
    """A webhook timing out on four Deployment creates makes a cycle of about 200 s; counting only
    cycles' ends, /healthz failed at 95 s and the kubelet restarted the reconciler mid-apply, over
    and over. An API call's try ending (answered or timed out) is a sign of life too."""
    stall = 3 * rec.s.interval_s + rec.s.request_timeout_s * rec.s.max_attempts
    rec.now[0] = T0 + stall + 5
    rec.cluster = SimpleNamespace(answered_at=None)
    assert health(rec, T0 - 60)[0] == "stalled"
    rec.cluster.answered_at = T0 + stall  # a try ended 5 s ago
    assert health(rec, T0 - 60)[0] != "stalled"
