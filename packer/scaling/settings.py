"""Scaling settings, grouped by concern; each default says why it was chosen.

Times are in seconds of the caller's clock (``now`` is passed to :func:`decide`, never read).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Windows:
    """Knative-style averaging windows and the stabilisation that keeps scale-down slow."""

    stable_s: float = 60.0
    """Load is averaged over this window for normal decisions (Knative's default stable window):
    long enough that one noisy scrape does not move replicas."""
    panic_s: float = 6.0
    """Short window, 10% of the stable one as in Knative: a spike shows here within seconds."""
    panic_threshold: float = 1.1
    """Enter panic when the panic-window want is this many times what the replicas hold. With
    ``target_utilisation`` 1 that is a load of 1.1x the plan's capacity, over 93% of the duty
    cycle at the default 15% headroom: the slot is already queueing. (The same load as the 1.3 of
    the days when the target was 0.85: 1.3 x 0.85 = 1.1.) In panic the policy scales up on the
    panic window and never scales down."""
    scale_down_s: float = 600.0
    """Stabilisation window: scale-down sizes for the *highest* demand seen over the last 10
    minutes (the HPA default is 5; packed groups pay for a flap twice, once per member moved)."""
    scale_down_band: float = 0.10
    """After a scale-down at least 10% above that highest demand must remain, so stationary
    noise cannot push the stable average back over capacity right after a consolidation."""


@dataclass(frozen=True)
class ColdStart:
    """How long new capacity takes to serve; decides which action is safe while load grows.

    The one cold-start type: the simulator's cluster (``sims/scenario.py`` ``Cluster``, a
    scenario's ``cluster:`` times) is made of it, so the policy and the simulator tell one story.
    """

    weights_base_s: float = 15.0
    """Triton model load, fixed part: CUDA context, backend init, warm-up batch."""
    weights_gb_per_s: float = 1.0
    """Reading weights into GPU memory: a 2.5 GB ASR model loads in 17.5 s in all."""
    image_s: float = 120.0
    """Pull the Triton image (~12 GB) on a fresh node. Nodes already serving have it cached."""
    node_s: float = 240.0
    """Provision a cloud GPU node (3-6 minutes on GKE/EKS); the dominant cold start."""

    def weights_s(self, memory_gb: float) -> float:
        return self.weights_base_s + memory_gb / self.weights_gb_per_s


@dataclass(frozen=True)
class Targets:
    """How full the policy lets capacity get, and when it gives up on local moves."""

    target_utilisation: float = 1.0
    """Capacity is kept at demand / this, where capacity is the plan's own: what a slot holds at
    the plan's duty-cycle headroom (``plan.settings.u``, :func:`packer.scaling.room.headroom_u`)
    within the worst-case latency bound. The headroom is the plan's one safety margin, so 1.0:
    the policy calls "enough" what the planner called enough, and a fleet at its planned peak
    rates buys nothing. Below 1 it stacks a second margin on the plan's: with 0.85 the policy
    bought an L4 for asr-en at exactly the multilingual plan's peak (``packer scale``). For more
    slack, plan with more headroom (``packer plan --headroom``), which the planner, the Triton
    writer, the simulator and this policy then all share; a value below 1 here is for
    experiments. The scaling benchmarks in docs/scaling.md that predate this default ran at 0.85
    with a panic threshold of 1.3 (the same panic load as 1.1 now)."""
    max_forecast_factor: float = 2.0
    """A trend forecast over the cold start never asks for more than twice the current demand, so
    one steep minute does not buy a day's worth of GPUs."""
    queue_alarm: float = 0.5
    """A mean queue time above half the SLO, and above the wait the plan allows the model
    (``signals.planned_wait_ms``: a member of a group waits for the others' batches by design),
    means requests are already late: panic regardless of the load estimate (the estimate may lag
    when the signal is throughput, not arrivals)."""
    fragmentation_replan: float = 0.30
    """Ask the planner for a re-plan when this share of paid slot capacity is idle and no single
    consolidation can release a GPU: local moves are stuck, a global packing is cheaper. (Local
    scale-ups add whole GPUs for single models, so 30% idle is common after a busy hour.)"""
    waste_replan: float = 0.5
    """Also re-plan when round-robin leaves half of some model's replica room unused (replicas of
    very different room, from scale-ups one at a time): a packing evens them out."""
    replan_cooldown_s: float = 1800.0
    """A fragmentation or round-robin-waste re-plan moves replicas (the planner keeps those that
    still fit); at most one per 30 min."""
    ceiling_replan: float = 0.05
    """Also re-plan (after :attr:`replan_cooldown_s`) when the fleet costs more than this share
    above the plan it started from: that plan holds every model's peak, so such a fleet is packed
    worse than the planner's. A scale-up buys the replica that serves soonest where a cheap one
    would land too late (an A100 on a running node, not an L4 on a new one), one at a time, and
    nothing packs those back: on the multilingual example's diurnal day (seed 0) the fleet
    reached 37.40/h at 18:00 against the plan's 12.10/h, 443.10 for the day against the static
    plan's 290.40; with this re-plan 354.56 (``python bench/scaling.py --only diurnal --seed 0``).
    Only on a quiet decision with no model in a panic, and not while some model's load is past
    its peak (then a dearer fleet may be what the demand costs). ``inf`` turns it off."""
    replan_every_s: float = 0.0
    """Right-sizing: this often, when demand moved (:attr:`replan_change`) since the last re-plan,
    ask the planner for a packing of the demand expected until the next look plus a new node's
    cold start. Diurnal traffic moves ~10% an hour; local moves add a replica at a time (whole
    GPUs for single models) and release one slot at a time, so without a periodic global packing
    the fleet lags the curve by hours. 0 (the default) turns it off: on at 600 s (with target
    utilisation 1 and 5 % headroom) it saved 15 % of the static plan's GPU-hours on the diurnal
    day but flapped 34 times on the stationary one (a tight re-plan, then a scale-up on punct
    models' concurrency), see docs/scaling.md."""
    replan_change: float = 0.10
    """A model's re-plan demand must have moved by this share (and by more than its Poisson noise)
    since the last re-plan for a right-sizing re-plan: stationary noise does not re-plan."""
    replan_headroom: float | None = None
    """Duty-cycle headroom the policy's re-plans ask the planner for (None keeps the plan's).
    The planner's 15% default is for a static plan that must absorb bursts on its own; here the
    panic window and scale-up absorb them within a scrape interval, so 5% (run-time noise) is
    left (0.05 is what the right-sizing measurements used). Slots already placed keep the headroom
    they were planned with until re-planned. None (default) keeps the plan's."""
    replan_payback_s: float = 3600.0
    """A cheaper re-plan is taken only when its saving from the moment it serves until this long
    after the decision pays for the make-before-break overlap (rebuilt GPUs paid twice while nodes
    start and weights load, :func:`packer.scaling.replan.migration_cost`). An hour: diurnal demand
    moves ~10 % an hour, so a saving expected to last less is likely to be taken back, and a
    re-laid-out A100 (4.10/h for ~6 min) is moved only for a saving worth it."""
    min_useful_rps: float = 1e-3
    """Room smaller than this is not worth a replica's memory."""
    min_gain_share: float = 0.05
    """A new replica must cover 5% of the deficit, or half of what each replica holds now where
    that is less (a deficit of many replicas' worth). With round-robin routing a replica beside a
    saturated one adds only the saturated one's share; such replicas are not worth their memory,
    moving the saturated one out is."""
    noise_z: float = 2.0
    """Poisson noise allowance in standard deviations: scale up on the load's lower bound, record
    the upper bound for scale-down (``sqrt(rate / window)``: +-0.1 rps for a 0.14 rps summarizer
    over 60 s, +-8 rps for 1000 rps of ASR). Low-rate models stop chasing their own noise."""
    late_alarm: float = 0.005
    """More than 0.5% of a model's requests late (over SLO or rejected) in an interval: the slot
    maths were optimistic for its group: move it out of its most crowded slot, one move per
    scale-down window (the signal lags the move's cold start), rather than adding replicas beside
    it, and never again put it in a group that large (:attr:`ModelState.crowd_limit`). Late
    requests block the model's scale-down; they do not start a panic."""



@dataclass(frozen=True)
class ScalingSettings:
    windows: Windows = field(default_factory=Windows)
    cold_start: ColdStart = field(default_factory=ColdStart)
    targets: Targets = field(default_factory=Targets)
    max_consolidations: int = 1
    """Slots released per decision: scale-down one step at a time, each re-measured before the next."""
    consolidation_candidates: int = 4
    """Slots tried per decision (costliest, emptiest first): bounds the work of a decision."""
    scale_down_every_s: float = 60.0
    """Look for a consolidation at most this often; scale-up is looked for at every decision."""
    standby_gpus: int = 0
    """Spare whole GPUs kept provisioned in the cheapest pool (optional; costs their price): a
    scale-up that needs a new slot then waits only for weights. 0 by default because a free GPU on
    a node that already exists is just as fast, and consolidation leaves those behind. (A choice
    of the policy, not a cold-start time: the simulator's cluster shares :class:`ColdStart`.)"""
