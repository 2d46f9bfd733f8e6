"""Test configuration shared by every suite (adapters keep their own conftest files)."""

from hypothesis import settings

# 20 generated fleets per property in CI, the same 20 every run (derandomize): a property that a
# random draw breaks once in a while makes CI flaky, not the code better. New cases are searched
# for with `pytest --hypothesis-profile=deep` (300 random examples), and what it finds is kept
# as an explicit @example.
settings.register_profile("ci", max_examples=20, derandomize=True)
settings.register_profile("deep", max_examples=300)
settings.load_profile("ci")


import pytest  # noqa: E402


@pytest.fixture
def uncapped(monkeypatch):
    """Serve a lone replica with full batches of ``max_batch`` only, as before its batches were
    capped where a smaller cap serves more (``packer.queue.lone_caps``): for the regression tests
    whose fleets were found, and their numbers worked out, before the caps (a family member's
    search story, a worked spot example). What the caps do is tested in tests/test_queue.py and
    by the property tests, which run with them."""
    import packer.queue as queue
    import packer.slot as slot

    monkeypatch.setattr(queue, "MAX_CAPS", 0)
    slot._LONE.clear()
    yield
    slot._LONE.clear()


@pytest.fixture
def duty_cycle_only(monkeypatch):
    """Plan with the duty cycle's maths alone: no replica is served alone as its requests come
    (``packer/queue.py``). For the regression tests of the search and the bounds whose fleets were
    found, and their numbers worked out, before lone replicas were so served: the mechanism each
    one pins (a branching, a pool's cap, a purchase ruled out) is the planner's whatever the slot
    model, and with lone replicas those fleets no longer reach it. What lone replicas do to plans
    is tested in tests/test_queue.py and by the property tests, which run with them."""
    import packer.planner.bound as bound
    import packer.slot as slot

    monkeypatch.setattr(slot, "lone_capacity", lambda *a, **k: 0.0)
    monkeypatch.setattr(slot, "lone_result", lambda *a, **k: None)
    monkeypatch.setattr(bound, "lone_capacity", lambda *a, **k: 0.0)
