"""Scaling packed groups: a pure policy that decides, explains and prices each action.

``decide(plan, signals, state, now, settings) -> (actions, state)``; ``apply(plan, actions)`` gives
the next plan. No I/O, no clock, no global state. ``step(plan, signals, state, now, settings,
replanner)`` adds the one thing ``decide`` leaves out, the planner's re-plan and whether to take
it: the reconciler and the simulator both call it.
"""

from packer.scaling.actions import (Action, AddGroup, AddReplica, Consolidate, RemoveReplica, Replan, Resize, SplitOut,
                                    Standby,
                                    apply, flaps)
from packer.scaling.policy import Demand, ModelState, ScalingState, decide, observe
from packer.scaling.settings import ColdStart, ScalingSettings, Targets, Windows
from packer.scaling.signals import Signals, load_rps, snapshot_from_dict, sojourn_s
from packer.scaling.stepping import Replanner, ReplanOutcome, Step, planner_replanner, run_replan, step

__all__ = ["Action", "AddGroup", "AddReplica", "ColdStart", "Consolidate", "Demand", "ModelState", "Replan",
           "RemoveReplica", "Replanner", "ReplanOutcome", "Resize", "ScalingSettings", "ScalingState", "Signals", "SplitOut", "Standby", "Step", "Targets", "Windows",
           "apply", "decide", "flaps", "load_rps", "observe", "planner_replanner", "run_replan", "snapshot_from_dict",
           "sojourn_s", "step"]
