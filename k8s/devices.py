"""How a server gets its GPU: one backend per way a cluster hands out devices (``--devices``).

The plan packs models into slots: a whole GPU (or k of them), or a MIG instance of a profile on a
planned node. Each backend turns one slot into what a pod asks for, and says which of the plan's
assumptions the cluster then enforces (see the table in docs/kubernetes.md):

* ``device-plugin`` (default): the NVIDIA device plugin's extended resources, ``nvidia.com/gpu``
  or ``nvidia.com/mig-<profile>`` (mixed strategy); mig-manager lays out the plan's MIG geometry.
* ``dra``: a ResourceClaim per slot (resource.k8s.io/v1) for the NVIDIA DRA driver's
  DeviceClass ``gpu.nvidia.com`` or ``mig.nvidia.com``, selecting the pool's GPU product and the
  MIG profile by CEL; the server's pods reference it by name, so they share its one device.
* ``hami``: HAMi's vGPU resources: a whole GPU exclusively, a MIG slot as its memory
  (``nvidia.com/gpumem``, MiB) and compute (``nvidia.com/gpucores``, %) on a whole GPU.
* ``kai``: KAI Scheduler: whole GPUs as ``nvidia.com/gpu``, a MIG slot as a ``gpu-fraction``
  of a whole GPU, in a KAI queue.

Pure: a backend maps a placement to data; :mod:`k8s.render` builds the objects around it.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from k8s import names as N
from packer.catalog import gpu_type
from packer.errors import UserError
from packer.fleet import Fleet
from packer.plan import Placement

FORMS = ("device-plugin", "dra", "hami", "kai")
"""The values of ``--devices``; ``kai`` may name its queue: ``kai:QUEUE``."""

DRA_DRIVER = "gpu.nvidia.com"
"""The NVIDIA DRA driver's name: the domain of its device attributes (``productName``, ``profile``)."""
DRA_GPU_CLASS = "gpu.nvidia.com"
"""DeviceClass of whole GPUs, installed with the driver."""
DRA_MIG_CLASS = "mig.nvidia.com"
"""DeviceClass of MIG devices (mig-manager creates them; the driver announces them)."""
CLAIM_REF = "gpu"
"""The pod's name for its slot's claim, and the claim's one request."""
HAMI_SCHEDULER = "hami-scheduler"
KAI_SCHEDULER = "kai-scheduler"
KAI_QUEUE_LABEL = "kai.scheduler/queue"
_LABEL_VALUE = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")


@dataclass(frozen=True)
class Claim:
    """A named ResourceClaim. Its spec is immutable in the API, so its name carries a hash of it:
    a changed request is a new claim, which the server moves to before the old one is deleted."""

    name: str
    spec: dict[str, Any]


@dataclass(frozen=True)
class PodDevices:
    """What one slot's server pod asks for, in the terms of one backend."""

    resources: dict[str, str]
    """Extended resources of the server container (requests equal limits)."""
    claim: Claim | None = None
    scheduler: str | None = None
    """``schedulerName``; None: the default scheduler."""
    labels: dict[str, str] = field(default_factory=dict)
    """Pod-template labels the backend reads (KAI's queue)."""
    annotations: dict[str, str] = field(default_factory=dict)
    """Pod-template annotations the backend reads (KAI's ``gpu-fraction``)."""
    pin_node: bool = False
    """Required affinity to the planned node too, not only its pool: the slot is part of that
    node's per-GPU packing (a MIG instance, or a fraction standing in for one)."""
    surge: bool = True
    """A rolling update starts the new pod before the old one stops. False where the new pod
    would share the old one's device and both would not fit its memory."""


def gib_to_mib(gb: float) -> int:
    """The catalog's GB are the GPU's nominal binary gigabytes (an A100-80GB has 80 GiB)."""
    return int(gb * 1024)


class Backend:
    """One way of handing a slot's device to its server."""

    name = ""
    device_plugin = True
    """The NVIDIA device plugin hands out the GPUs: its per-pool config and node label are rendered."""
    mig_geometry = True
    """MIG slots run on MIG instances: mig-manager lays out the plan's geometry. Otherwise the
    plan's MIG nodes run whole GPUs, and a MIG slot becomes a share of one."""
    needs = "the NVIDIA device plugin (mixed MIG strategy) and mig-manager, as the GPU operator installs them"
    """What the cluster must run for these objects, in one line (``packer render k8s`` prints it)."""
    shares = ""
    """What a MIG slot becomes when it is not a MIG instance, in one line."""

    def pod(self, p: Placement, fleet: Fleet) -> PodDevices:
        raise NotImplementedError


class DevicePlugin(Backend):
    """``nvidia.com/mig-<profile>: 1`` (mixed MIG strategy) or ``nvidia.com/gpu: k``."""

    name = "device-plugin"

    def pod(self, p: Placement, fleet: Fleet) -> PodDevices:
        if p.slot != "whole":
            return PodDevices({f"nvidia.com/mig-{p.slot}": "1"}, pin_node=True)
        return PodDevices({"nvidia.com/gpu": str(max(1, len(p.gpus)))})


class Dra(Backend):
    """One ResourceClaim per slot, for the NVIDIA DRA driver. Selects the pool's GPU product
    (the device plugin cannot) and, for a MIG slot, its profile; the scheduler allocates a
    matching device on the pinned node (MIG) or anywhere in the pool (whole GPUs)."""

    name = "dra"
    device_plugin = False
    needs = ("Kubernetes >= 1.34 (resource.k8s.io/v1) and the NVIDIA DRA driver for GPUs (DeviceClasses "
             f"{DRA_GPU_CLASS}, {DRA_MIG_CLASS}) with the device plugin off; mig-manager still lays out MIG")

    def claim(self, p: Placement, fleet: Fleet) -> Claim:
        products = ", ".join(json.dumps(x) for x in gpu_type(fleet.pool(p.pool).gpu).products)
        selectors = [f'device.attributes["{DRA_DRIVER}"].productName in [{products}]']
        if p.slot != "whole":
            selectors.append(f'device.attributes["{DRA_DRIVER}"].profile == {json.dumps(p.slot)}')
        request = {"name": CLAIM_REF, "exactly": {
            "deviceClassName": DRA_GPU_CLASS if p.slot == "whole" else DRA_MIG_CLASS,
            "allocationMode": "ExactCount", "count": max(1, len(p.gpus)),
            "selectors": [{"cel": {"expression": e}} for e in selectors]}}
        spec = {"devices": {"requests": [request]}}
        return Claim(N.claim_name(p.id, N.digest(spec, 6)), spec)

    def pod(self, p: Placement, fleet: Fleet) -> PodDevices:
        # The new pod of a rolling update references the same claim, so it runs on the same
        # device as the old one: both servers' models must fit there at once.
        return PodDevices({}, claim=self.claim(p, fleet), pin_node=p.slot != "whole",
                          surge=2 * p.memory_gb <= p.memory_capacity_gb)


def _share(p: Placement, fleet: Fleet) -> tuple[int, int, float]:
    """A MIG slot as a share of its whole GPU: (memory MiB, compute %, memory fraction).

    Compute is the profile's compute slices over the GPU's, rounded down so the shares of one
    GPU's layout never add up to more than 100 % (7 x 1g = 7 x 14 %); memory is the instance's
    usable memory, as the planner packed against it.
    """
    gpu = gpu_type(fleet.pool(p.pool).gpu)
    prof = gpu.profile(p.slot)
    return (gib_to_mib(prof.memory_gb), math.floor(100 * prof.compute_slices / gpu.compute_slices),
            prof.memory_slices / gpu.memory_slices)


class Hami(Backend):
    """HAMi's device plugin and scheduler: a whole GPU exclusively (100 % of its memory and
    cores), a MIG slot as its memory and compute share of a whole GPU, enforced by HAMi-core
    inside the container. HAMi replaces the NVIDIA device plugin."""

    name = "hami"
    device_plugin = False
    mig_geometry = False
    needs = ("HAMi (hami-scheduler and its device plugin, in place of NVIDIA's); mig-manager turns MIG off "
             "on the plan's MIG nodes")
    shares = ("run as nvidia.com/gpumem + gpucores shares of whole GPUs, enforced by HAMi-core inside "
              "each container: no hardware isolation")

    def pod(self, p: Placement, fleet: Fleet) -> PodDevices:
        if p.slot == "whole":
            res = {"nvidia.com/gpu": str(max(1, len(p.gpus))), "nvidia.com/gpumem-percentage": "100",
                   "nvidia.com/gpucores": "100"}
            return PodDevices(res, scheduler=HAMI_SCHEDULER)
        mem, cores, _ = _share(p, fleet)
        return PodDevices({"nvidia.com/gpu": "1", "nvidia.com/gpumem": str(mem), "nvidia.com/gpucores": str(cores)},
                          scheduler=HAMI_SCHEDULER, pin_node=True)


class Kai(Backend):
    """KAI Scheduler, in one queue: whole GPUs through the NVIDIA device plugin, a MIG slot as a
    ``gpu-fraction`` of a whole GPU (its memory slices over the GPU's). KAI books the fraction
    and does not enforce it: no memory limit, no compute share."""

    name = "kai"
    mig_geometry = False
    shares = ("run as gpu-fraction shares of whole GPUs, which KAI books but does not enforce: "
              "no memory limit, no compute share, no isolation")

    def __init__(self, queue: str) -> None:
        self.queue = queue
        self.needs = (f"KAI Scheduler and its queue {queue}, with GPU sharing on (global.gpuSharing=true) for "
                      "fractions; the NVIDIA device plugin; mig-manager turns MIG off on the plan's MIG nodes")

    def pod(self, p: Placement, fleet: Fleet) -> PodDevices:
        labels = {KAI_QUEUE_LABEL: self.queue}
        if p.slot == "whole":
            return PodDevices({"nvidia.com/gpu": str(max(1, len(p.gpus)))}, scheduler=KAI_SCHEDULER, labels=labels)
        _, _, fraction = _share(p, fleet)
        if fraction >= 1:  # a 7g slot holds all of the GPU's memory: not a fraction
            return PodDevices({"nvidia.com/gpu": "1"}, scheduler=KAI_SCHEDULER, labels=labels, pin_node=True)
        return PodDevices({}, scheduler=KAI_SCHEDULER, labels=labels, annotations={"gpu-fraction": f"{fraction:g}"},
                          pin_node=True)


def parse_form(text: str) -> tuple[str, str | None]:
    """``--devices`` as (form, KAI queue or None): ``dra``, ``kai``, ``kai:team-a``."""
    form, _, queue = text.partition(":")
    if form not in FORMS:
        raise UserError(f"--devices {text!r}: not one of {', '.join(FORMS)}. Fix: e.g. --devices dra")
    if queue and form != "kai":
        raise UserError(f"--devices {text!r}: only kai takes a queue (kai:QUEUE). Fix: --devices {form}")
    if form == "kai" and ":" in text and not _LABEL_VALUE.fullmatch(queue):
        raise UserError(f"--devices {text!r}: the queue must be a label value (letters, digits, '-', '_', '.', "
                        "at most 63). Fix: --devices kai:QUEUE, or --devices kai for the default queue")
    return form, queue or None


def backend(form: str, kai_queue: str = "default-queue") -> Backend:
    """The backend of one ``--devices`` form."""
    if form == "device-plugin":
        return DevicePlugin()
    if form == "dra":
        return Dra()
    if form == "hami":
        return Hami()
    if form == "kai":
        return Kai(kai_queue)
    raise UserError(f"devices {form!r}: not one of {', '.join(FORMS)}")
