"""Settings of the Triton writer: the few choices the plan does not make."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from packer.errors import UserError

DEVICES = ("gpu", "cpu")
GPU_INDEX = ("slot", "node")


@dataclass(frozen=True, kw_only=True)
class TritonSettings:
    """How the Triton writer renders a plan's repositories; the Kubernetes objects around the
    servers have their own settings (:class:`k8s.settings.ManifestSettings`)."""

    device: str = "gpu"
    """``gpu`` for production (``KIND_GPU``). ``cpu`` (``KIND_CPU``) lets the stand-ins run on a
    machine without a GPU (tests, ``packer serve-local``); everything else stays the same."""

    gpu_index: str = "slot"
    """Which device numbers ``instance_group.gpus`` names. ``slot``: as the server process sees its
    slot (a MIG instance or a GPU handed to a pod is device 0; a multi-GPU replica 0..n-1), which is
    right under Kubernetes' device plugin. ``node``: the node's GPU indices from the plan, for a
    bare-metal server that sees every GPU of the node."""

    sequence_idle_s: float = 30.0
    """How long a stream may be silent before Triton drops its state. Speakers pause for several
    seconds (turn-taking, thinking); 30 s keeps their context while still freeing the batch slot of
    a client that vanished without sending END."""

    time_scale: float = 1.0
    """Compresses the stand-ins' clock: their run time, queue delays and queue timeouts are all
    multiplied by it, so the batching policy keeps the plan's proportions. 1.0 behaves like the
    profile; tests and demos use a small factor so a 4 s summarizer batch takes milliseconds.
    Models with a real artifact always run on the real clock."""

    min_queue_delay_ms: float = 0.1
    """Floor of every dynamic/sequence batcher queue delay, so a group with a very short duty cycle
    still batches requests that arrive together."""

    shed: bool = False
    """Render Triton's rejecting queue policy for dynamic batchers: a request that has queued
    ``slo - run`` is refused, and the queue holds only what could still finish in time, so a
    burst is turned away at once instead of served late. Off by default because any queue policy
    stops the batcher prefetching: a request that arrives while its model's instance runs then
    waits past the instance freeing for the next arrival or 500 ms (measured 400-540 ms tails for
    members under 10 rps; docs/serving.md), which the plan's bounds do not count. With it off,
    shed load in front of the server (client deadlines do not help: Triton 2.44 still runs a
    request whose client gave up)."""

    lock_dir: str | None = None
    """Where ``device="cpu"`` stand-ins keep their per-slot device lock (default: the system's
    temporary directory). The stand-ins of one slot take it while they run, so they never run at
    the same time, as a GPU slot's batches do not."""

    def device_lock(self, slot: str) -> str:
        """The lock file the stand-ins of ``slot`` share."""
        safe = "".join(c if c.isalnum() or c in "-_.@" else "_" for c in slot)
        return str(Path(self.lock_dir or tempfile.gettempdir()) / f"packer-slot-{safe}.lock")

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise UserError(f"device {self.device!r} is unknown; use one of {DEVICES}")
        if self.gpu_index not in GPU_INDEX:
            raise UserError(f"gpu_index {self.gpu_index!r} is unknown; use one of {GPU_INDEX}")
        if self.sequence_idle_s <= 0 or self.time_scale <= 0:
            raise UserError("sequence_idle_s and time_scale must be positive")
