"""Flapping, as the issue defines it: a scale-up of a model inside the window after its scale-down."""

from packer.scaling import AddReplica, RemoveReplica, flaps
from packer.scaling.room import SlotRef

S = SlotRef("l4", "l4-n0", 0)


def up(model):
    return AddReplica(model=model, slot=S, rate_rps=1.0, cost_per_hour=0.8, reason="busy")


def down(model):
    return RemoveReplica(model=model, slot=S, cost_per_hour=-0.8, reason="quiet")


def test_up_inside_the_window_after_a_down_is_a_flap():
    log = [(0.0, down("asr-fr")), (100.0, up("asr-fr")), (150.0, up("asr-de"))]
    assert flaps(log, 600.0) == [("asr-fr", 0.0, 100.0)]


def test_up_after_the_window_or_before_any_down_is_not():
    assert flaps([(0.0, up("asr-fr")), (10.0, down("asr-fr")), (700.0, up("asr-fr"))], 600.0) == []
