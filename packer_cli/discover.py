"""Discover this machine's GPUs with NVML and describe them as a fleet pool entry.

NVML is an adapter: the core never imports this module. ``read_nvml`` talks to the driver;
``to_pool`` is pure and is tested on recorded NVML answers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from packer.catalog import GPU_TYPES, GpuType
from packer.errors import UserError


@dataclass(frozen=True)
class NvmlGpu:
    """What NVML says about one GPU (recorded as such in tests)."""

    index: int
    name: str
    memory_total_bytes: int
    mig_mode: int | None = None
    """1 when MIG is enabled (current mode), 0 when disabled, None when the GPU has no MIG."""
    mig_devices: tuple[str, ...] = field(default=())
    """Names of the MIG devices that exist now, e.g. ``NVIDIA A100-SXM4-80GB MIG 3g.40gb``."""


def match_type(name: str, memory_total_bytes: int) -> GpuType | None:
    """Map an NVML product name to a catalog type: exact product name, then family and memory."""
    for t in GPU_TYPES.values():
        if name in t.products:
            return t
    low = name.lower()
    gb = memory_total_bytes / 1024**3
    fams = [t for t in GPU_TYPES.values() if t.name.split("-")[0] in low.replace(" ", "").replace("nvidia", "")]
    if fams:
        return min(fams, key=lambda t: abs(t.memory_gb - gb))
    return None


def read_nvml() -> list[NvmlGpu]:
    """Ask the driver. Raises UserError (exit 2) when there is no NVML, driver or GPU."""
    try:
        import pynvml
    except ImportError:
        raise UserError("NVML is not installed. Fix: pip install 'packer[gpu]' (nvidia-ml-py)") from None
    try:
        pynvml.nvmlInit()
    except Exception as e:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        raise UserError(f"no NVIDIA GPU or driver on this machine ({e}). Fix: run on a GPU node, or write the "
                        "pool into the fleet file by hand (`packer gpus` lists the types)") from None
    try:
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            name = name.decode() if isinstance(name, bytes) else name
            mem = pynvml.nvmlDeviceGetMemoryInfo(h).total
            mig_mode, migs = None, []
            try:
                mig_mode = pynvml.nvmlDeviceGetMigMode(h)[0]
            except pynvml.NVMLError:
                pass
            if mig_mode == 1:
                for j in range(pynvml.nvmlDeviceGetMaxMigDeviceCount(h)):
                    try:
                        mh = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(h, j)
                    except pynvml.NVMLError:
                        continue
                    mn = pynvml.nvmlDeviceGetName(mh)
                    migs.append(mn.decode() if isinstance(mn, bytes) else mn)
            out.append(NvmlGpu(i, name, mem, mig_mode, tuple(migs)))
        if not out:
            raise UserError("NVML found no GPUs. Fix: check `nvidia-smi`, or write the pool by hand")
        return out
    finally:
        pynvml.nvmlShutdown()


def to_pool(gpus: list[NvmlGpu], *, name: str = "local", cost_per_gpu_hour: float = 1.0) -> dict:
    """A ready fleet ``pools:`` entry for these GPUs (the most common type; others noted)."""
    typed = [(g, match_type(g.name, g.memory_total_bytes)) for g in gpus]
    unknown = [g.name for g, t in typed if t is None]
    if len(unknown) == len(typed):
        raise UserError(f"no catalog type matches {sorted(set(unknown))}. Fix: add the pool by hand with the "
                        "closest type from `packer gpus`")
    counts: dict[str, int] = {}
    for _, t in typed:
        if t is not None:
            counts[t.name] = counts.get(t.name, 0) + 1
    gpu = max(counts, key=lambda k: counts[k])
    t = GPU_TYPES[gpu]
    sharing = ["time-slicing"]
    if t.has_mig:
        sharing.insert(0, "mig")
    pool = {"name": name, "gpu": gpu, "gpus_per_node": counts[gpu], "max_nodes": 1,
            "cost_per_gpu_hour": cost_per_gpu_hour, "sharing": sharing}
    mig = [{"gpu": g.index, "mig_enabled": g.mig_mode == 1,
            "instances": [d.rsplit(" MIG ", 1)[-1] for d in g.mig_devices]} for g, _ in typed if g.mig_mode is not None]
    return {"pool": pool, "devices": [{"index": g.index, "product": g.name,
                                       "memory_gb": round(g.memory_total_bytes / 1e9, 1),
                                       "type": t.name if t else None} for g, t in typed],
            "mig": mig, "unknown": unknown}
