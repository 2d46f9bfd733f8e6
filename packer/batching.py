"""How a slot's member forms its batches: what the Triton writer renders and the simulator serves.

One definition, read by both (``serving/config.py`` writes it into ``config.pbtxt``,
``sims/server.py`` replays it), so the served slot batches as the slot maths (``packer/slot.py``)
assumed:

* **queue delay = the duty cycle ``d``**, for streaming and batch members alike: a batch is cut
  once its oldest request has waited ``d``, so a member runs at most one batch per cycle (plus one
  per ``max_batch`` arrivals when a window overflows) and pays its per-batch cost as planned. The
  slot maths bounds the wait that follows (a round of the other members' batches).
* **no queue delay for a replica planned alone without a cycle** (``d = 0``, ``packer/queue.py``):
  its batcher sends everything queued, up to its planned batch (``max_batch``, or a smaller cap
  where two full batches of ``max_batch`` would miss its SLO), as soon as its instance frees.
* **no preferred batch sizes**: Triton sends the largest preferred batch it can form as soon as
  it can, which cuts batches early and pays the per-batch cost more often than planned; without
  them a batch takes everything queued (up to ``max_batch``) when the delay ends.
* **one turn each**: the members of a slot share one rate-limiter unit with equal priority, so
  the slot runs one batch at a time and a member that just ran goes behind those waiting
  (Triton's rate limiter raises an instance's scaled priority each time it runs).
* **no queue policy** by default: any timeout, queue bound or priority level stops Triton's batcher
  prefetching, and then it can sleep through its own instance freeing (docs/serving.md). The
  *queue budget* below (a request that has queued ``slo - run`` cannot finish in time; the queue
  holds no more than could finish within it) is rendered only on request (``--shed``).

Worked numbers (``tests/test_batching.py``): ``punct-en`` (base 2 ms, per_item 0.05 ms on a whole
A100, SLO 100 ms, max_batch 64) planned at ``d = 20 ms`` with a provisioned batch of 9: run
``2 + 0.05 * 9 = 2.45 ms``, budget ``97.55 ms``, queue delay 20 ms, no preferred size; the queue
bound is the most one instance finishes in 97.55 ms (``packer.slot.servable``).
"""

from __future__ import annotations

from dataclasses import dataclass

from packer.arrivals import session_slots
from packer.fleet import Model
from packer.slot import SlotType, latency_scale, servable

MIN_DELAY_MS = 0.1
"""Floor of every queue delay, so a group with a very short cycle still batches requests that
arrive together."""


@dataclass(frozen=True)
class Batching:
    """The batching of one model in one slot (ms)."""

    base_ms: float
    per_item_ms: float
    max_batch: int
    """The batch cap rendered as ``max_batch_size``: the model's ``max_batch``, or for a replica
    alone without a cycle its planned batch (``packer.queue.lone_caps``)."""
    batch: int
    """The batch the plan provisions a turn for (at the 99.9 % level of its window's arrivals)."""
    duty_cycle_ms: float
    queue_delay_ms: float
    run_ms: float
    budget_ms: float
    """How long a request may queue and still finish within its SLO."""
    queue_bound: int
    """Requests the queue holds: what the instances could finish within the budget."""
    candidates: int | None
    """Concurrent sequences (streams) this slot's replicas carry, for sequence models."""
    preferred: tuple[int, ...] = ()
    """Preferred batch sizes: none (see the module docstring)."""


def batching(model: Model, st: SlotType, *, batch: int, duty_cycle_ms: float, replicas: int = 1,
             rate_rps: float | None = None, min_delay_ms: float = MIN_DELAY_MS) -> Batching:
    """The batching of ``model`` with ``replicas`` replicas in one slot of type ``st``.

    ``batch`` and ``duty_cycle_ms`` are the plan's (``Member.batch_size``,
    ``Placement.duty_cycle_ms``); ``rate_rps`` is what the slot's replicas carry together at peak
    (None: the model's peak), used to give a sequence model slots for its streams: at peak they are
    ``rate / (rps / streams)`` on average (``streams`` is the count at the mean rate; a stream sends
    ``rps / streams`` chunks a second), and their count on a replica is Poisson about that
    (``arrivals.session_slots``). Slots for a share of ``streams`` alone (the count at the mean,
    split by rate) left a replica short at peak: multilingual-meetings' asr-en carries 1.8 times
    as many streams at its peak as at its mean, and the streams past its slots waited for one to end.
    """
    base, per = latency_scale(model, st)
    b = max(1, min(batch, model.max_batch))
    # A cycle of 0 is a replica alone, served as its requests come: no delay, not even the floor,
    # and its batches capped at its planned batch (``queue.lone_caps``: below max_batch where two
    # full batches of max_batch would miss its SLO).
    d = max(duty_cycle_ms, min_delay_ms) if duty_cycle_ms > 0 else 0.0
    cap = model.max_batch if duty_cycle_ms > 0 else b
    run = base + per * b
    budget = max(model.slo_ms - run, min_delay_ms)
    bound = max(b, servable(budget, base, per, cap)) * replicas
    streams = None
    per_stream = model.traffic.per_stream_rps
    if model.traffic.streams is not None:
        rate = model.traffic.peak_rps if rate_rps is None else rate_rps
        streams = session_slots(rate / per_stream) if per_stream else max(1, model.traffic.streams)
    return Batching(base, per, cap, b, d, d, run, budget, bound, streams)
