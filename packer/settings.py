"""The planner's choices, as one typed object: what ``plan_fleet`` is given and what the plan
file records (``Plan.settings``, the ``settings`` object of ``docs/plan.schema.json``).

Every stage that needs one of these reads it from the plan (``plan.settings.headroom``,
``plan.settings.u``); each default is defined here and nowhere else. No imports from the rest of
the package, so the fleet parser, the plan and the planner can all use it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True)
class PlanSettings:
    headroom: float = 0.15
    """Share of every slot's duty cycle kept free. 15% absorbs run-time noise and short bursts
    above the peak rate without breaking the worst-case bound (Nexus runs GPUs near 100%, but it
    also re-plans every few minutes; a static plan needs slack). The scaling policy's capacity is
    this plan's capacity: a slot holds what it holds at ``u = 1 - headroom``."""
    time_limit_s: float | None = None
    """Budget for the search and the bound (``solve.auto_time_limit``); None picks one from the
    fleet size (7 s to 100 s). The default exact search of a small fleet gets at most this too."""
    seed: int = 0
    use_mig: bool = True
    """False plans whole GPUs only (time-slicing), as the greedy baseline does."""
    prove_s: float | None = None
    """Seconds for the exact search that can prove the plan optimal (``prove.py``), run on the
    final plan; 0 skips every exact search (the bound and the pattern LP's packing before the
    search still run). None (the default) runs a short one on the greedy plan instead, before
    the search for a cheaper plan, where few purchases are left to rule out
    (``solve._prove(first=True)``): it proves the multilingual example optimal in about 5 s."""
    max_replica_options: int = 4
    """Replica counts tried per model: fewer, larger replicas on big slots or more, smaller ones
    on MIG slices or cheap GPUs; the solver picks."""
    reproducible: bool = False
    """Let the counts alone end every stage of the search. Each stage counts its work in
    deterministic seconds, so a seed gives one plan whatever the machine; but by default the wall
    clock also guards them (past 60 models the packing stops at 1.12 times the time limit, so
    that a plan keeps to its budget), and on a machine slower or busier than the counts assume a
    guard can end a stage first: the plan then says so, and may differ from the same seed's plan
    on an idle machine. True lifts those guards: the plan is the counts' on any machine, however
    long that takes there."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.headroom < 1.0:
            raise ValueError(f"headroom {self.headroom}: must be in [0, 1)")

    @property
    def u(self) -> float:
        """Usable share of a duty cycle: ``1 - headroom``."""
        return 1.0 - self.headroom

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: PlanSettings | dict[str, Any] | None) -> PlanSettings:
        """Read the plan file's ``settings``. Missing keys take the defaults above: plans written
        before this type recorded only headroom, seed, use_mig and time_limit_s. Keys this version
        does not know are ignored, so a newer plan still loads."""
        if d is None:
            return cls()
        if isinstance(d, cls):
            return d
        known = {f.name for f in fields(cls)}
        kw: dict[str, Any] = {k: v for k, v in d.items() if k in known}
        if "headroom" in kw:
            kw["headroom"] = float(kw["headroom"])
        for k in ("time_limit_s", "prove_s"):
            if kw.get(k) is not None:
                kw[k] = float(kw[k])
        for k in ("seed", "max_replica_options"):
            if k in kw:
                kw[k] = int(kw[k])
        if "use_mig" in kw:
            kw["use_mig"] = bool(kw["use_mig"])
        return cls(**kw)
