"""The reconciler's pure decisions (``k8s/cycle.py``): what a cycle records, with no cluster."""

from __future__ import annotations

from k8s.cycle import Observed, status_update
from k8s.settings import ReconcileSettings

S = ReconcileSettings()


def record(obs: Observed, errors: list[str] = (), now: float = 100.0):  # type: ignore[assignment,no-untyped-def]
    return status_update(obs, None, {"k": 1}, [], [], [], list(errors), [], "", now, S, None)


def test_a_quiet_cycle_writes_nothing_and_a_new_error_writes_once_with_an_event() -> None:
    first = record(Observed(None, [], [], None, {}, None))
    assert first.write and first.events == [] and first.summary["policy_saved_at"] == 100.0
    status = {"data": first.data(), "binaryData": first.binary}
    again = record(Observed(None, [], [], status, first.summary, None), now=200.0)
    assert not again.write and again.events == []
    bad = record(Observed(None, [], [], status, first.summary, None), errors=["boom"], now=300.0)
    assert bad.write and [e[3] for e in bad.events] == ["ReconcileError"]
    assert bad.summary["errors"] == ["boom"] and bad.summary["policy_saved_at"] == 100.0  # state unchanged


def test_a_foreign_status_name_is_a_conflict_and_nothing_is_written() -> None:
    up = record(Observed(None, [], [], {"metadata": {"name": S.status_configmap}}, {}, None, status_foreign=True))
    assert not up.write and [c.kind for c in up.conflicts] == ["ConfigMap"]
    assert [e[3] for e in up.events] == ["NameConflict"]
