"""Scaling packed groups: a pure policy that decides, explains and prices each action.

``decide(plan, signals, state, now, settings) -> (actions, state)``; ``apply(plan, actions)`` gives
the next plan. No I/O, no clock, no global state: the reconciler and the simulator both call it.
"""

from packer.scaling.actions import (Action, AddGroup, AddReplica, Consolidate, RemoveReplica, Replan, Resize, SplitOut,
                                    Standby,
                                    apply, flaps)
from packer.scaling.policy import Demand, ModelState, ScalingState, decide, observe
from packer.scaling.settings import ColdStart, ScalingSettings, Targets, Windows
from packer.scaling.signals import Signals, load_rps, snapshot_from_dict, sojourn_s

__all__ = ["Action", "AddGroup", "AddReplica", "ColdStart", "Consolidate", "Demand", "ModelState", "Replan",
           "RemoveReplica", "Resize", "ScalingSettings", "ScalingState", "Signals", "SplitOut", "Standby", "Targets", "Windows",
           "apply", "decide", "flaps", "load_rps", "observe", "snapshot_from_dict", "sojourn_s"]
