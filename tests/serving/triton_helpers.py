"""Helpers shared by the serving tests: example fleets, hand-picked groups, stand-in requests."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from packer.fleet import Fleet
from packer.fleetfile import load_fleet
from packer.plan import Plan
from packer.handplan import placement, plan_of

EXAMPLES = Path(__file__).resolve().parents[2] / "packer" / "examples"
GOLDEN = Path(__file__).resolve().parent / "golden"
# Stand-ins sleep 1/100 of their profile: a 4 ms ASR batch takes 40 µs, a 4 s summary 40 ms.
FAST = 0.01


def fleet(name: str) -> Fleet:
    return load_fleet(EXAMPLES / f"{name}.yaml")


@lru_cache(maxsize=None)
def planned(name: str) -> Plan:
    """The planner's plan of an example fleet, made once per test session (it takes seconds)."""
    from packer.planner import PlanSettings, plan_fleet

    return plan_fleet(fleet(name), PlanSettings(time_limit_s=1))


def meetings_plan() -> Plan:
    """Two hand-picked groups of the meetings fleet, sized by the slot maths: a whole A100 with
    Spanish ASR (sequence batcher) and punctuation (dynamic batcher), and one with Spanish and
    German batch work. Deterministic, so it backs the golden files."""
    f = fleet("multilingual-meetings")
    live = placement(f, "a100-80", [("asr-es", 350.0), ("punct-es", 11.0)], node="a100-80-n0", gpu=0)
    batch = placement(f, "a100-80", [("diarize-es", 0.05), ("summarizer-es", 0.0156), ("diarize-de", 0.04)],
                      profile="3g.40gb", node="a100-80-n0", gpu=1)
    return plan_of(f, [live, batch])


def one(value: float, dtype: str = "FP32") -> grpcclient.InferInput:
    x = grpcclient.InferInput("INPUT", [1, 1], dtype)
    x.set_data_from_numpy(np.array([[value]], dtype=np.float32))
    return x
