"""The planner: from a fleet to the cheapest packing it can find, with a proof of how close."""

from packer.planner.model import PlanSettings
from packer.planner.solve import plan_fleet

__all__ = ["PlanSettings", "plan_fleet"]
