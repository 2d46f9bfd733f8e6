"""The GPU catalog: what each GPU type offers and how it may be split with MIG.

MIG layouts are *derived* from NVIDIA's placement rules (MIG user guide, "Supported MIG Profiles"):
every GPU instance profile may start only at certain memory-slice offsets and occupies a fixed
number of memory slices; instances on one GPU may not overlap and may not use more compute slices
than the GPU has. Enumerating non-overlapping placements gives exactly the supported combinations,
less the one NVIDIA excludes explicitly (4g + 3g; see ``_EXCLUDED``). Each layout also carries a
creation order that realises it under the driver's first-fit placement, so that mig-parted or
``nvidia-smi mig -cgi`` reproduce the planned geometry.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from functools import cache


@dataclass(frozen=True)
class MigProfile:
    """One GPU instance profile, e.g. ``3g.40gb`` on an A100-80GB."""

    name: str
    compute_slices: int
    memory_slices: int
    memory_gb: float
    """Usable memory of the instance, what the planner packs against."""
    max_instances: int
    placements: tuple[int, ...]
    """Memory-slice offsets at which the driver may create this profile."""


@dataclass(frozen=True)
class GpuType:
    name: str
    products: tuple[str, ...]
    """NVML product names that map to this type (``nvmlDeviceGetName``)."""
    memory_gb: float
    """Nominal memory, as the product name says."""
    usable_gb: float
    """What a process can allocate on the whole GPU: nominal less ECC, driver and CUDA context."""
    speed: float
    """Inference speed relative to an A100-80GB (1.0); a default the fleet may override with
    measured per-GPU latency profiles."""
    compute_slices: int = 0
    memory_slices: int = 0
    mig_profiles: tuple[MigProfile, ...] = field(default=())

    @property
    def has_mig(self) -> bool:
        return bool(self.mig_profiles)

    def profile(self, name: str) -> MigProfile:
        for p in self.mig_profiles:
            if p.name == name:
                return p
        raise KeyError(f"{self.name} has no MIG profile {name!r}")


@dataclass(frozen=True)
class MigLayout:
    """A valid MIG geometry for one GPU: which instances, where, and how to create them."""

    gpu: str
    instances: tuple[tuple[str, int], ...]
    """(profile, start) pairs sorted by start: the geometry."""
    creation_order: tuple[str, ...]
    """Profiles in the order to create them so the driver's first-fit yields ``instances``."""

    @property
    def profiles(self) -> tuple[str, ...]:
        return tuple(p for p, _ in self.instances)

    @property
    def name(self) -> str:
        """mig-parted style name, e.g. ``3g.40gb+2g.20gb+1g.10gb+1g.10gb``."""
        return "+".join(self.profiles)


def _mig(total_gb: float, mem_slices_total: int, name: str, c: int, m: int, n: int,
         placements: tuple[int, ...]) -> MigProfile:
    # Usable instance memory: the instance's share of the GPU's memory, less ~2% that the
    # driver keeps per instance (an A100-80GB 1g.10gb shows 9.75 GiB of 10).
    return MigProfile(name, c, m, round(total_gb * m / mem_slices_total * 0.975, 2), n, placements)


def _a100_like(total: float, names: tuple[str, str, str, str, str, str]) -> tuple[MigProfile, ...]:
    g1, g1d, g2, g3, g4, g7 = names
    return (
        _mig(total, 8, g1, 1, 1, 7, (0, 1, 2, 3, 4, 5, 6)),
        _mig(total, 8, g1d, 1, 2, 4, (0, 2, 4, 6)),
        _mig(total, 8, g2, 2, 2, 3, (0, 2, 4)),
        _mig(total, 8, g3, 3, 4, 2, (0, 4)),
        _mig(total, 8, g4, 4, 4, 1, (0,)),
        _mig(total, 8, g7, 7, 8, 1, (0,)),
    )


GPU_TYPES: dict[str, GpuType] = {
    t.name: t
    for t in (
        GpuType("a100-40gb", ("NVIDIA A100-SXM4-40GB", "NVIDIA A100-PCIE-40GB", "A100-SXM4-40GB"),
                40, 39.4, 0.95, 7, 8,
                _a100_like(40, ("1g.5gb", "1g.10gb", "2g.10gb", "3g.20gb", "4g.20gb", "7g.40gb"))),
        GpuType("a100-80gb", ("NVIDIA A100-SXM4-80GB", "NVIDIA A100 80GB PCIe", "NVIDIA A100-PCIE-80GB"),
                80, 79.1, 1.0, 7, 8,
                _a100_like(80, ("1g.10gb", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"))),
        GpuType("h100-80gb", ("NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe", "NVIDIA H100 NVL"),
                80, 79.1, 2.0, 7, 8,
                _a100_like(80, ("1g.10gb", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"))),
        GpuType("h200-141gb", ("NVIDIA H200", "NVIDIA H200 NVL"),
                141, 139.8, 2.3, 7, 8,
                _a100_like(141, ("1g.18gb", "1g.35gb", "2g.35gb", "3g.71gb", "4g.71gb", "7g.141gb"))),
        GpuType("a30-24gb", ("NVIDIA A30",), 24, 23.5, 0.55, 4, 4, (
            _mig(24, 4, "1g.6gb", 1, 1, 4, (0, 1, 2, 3)),
            _mig(24, 4, "2g.12gb", 2, 2, 2, (0, 2)),
            _mig(24, 4, "4g.24gb", 4, 4, 1, (0,)),
        )),
        GpuType("l4-24gb", ("NVIDIA L4",), 24, 22.5, 0.4),
        GpuType("l40s-48gb", ("NVIDIA L40S",), 48, 45.6, 0.9),
        GpuType("t4-16gb", ("Tesla T4", "NVIDIA T4"), 16, 15.0, 0.2),
    )
}

# NVIDIA's table of supported A100/H100/H200 configurations omits 4g + 3g although their
# placements (memory slices 0-3 and 4-7) do not overlap: the two would need 7 compute slices
# laid out across the GPC boundary, which the hardware does not allow.
_EXCLUDED: frozenset[frozenset[int]] = frozenset({frozenset({4, 3})})


def gpu_type(name: str) -> GpuType:
    try:
        return GPU_TYPES[name]
    except KeyError:
        raise KeyError(f"unknown GPU type {name!r}; known: {', '.join(sorted(GPU_TYPES))}") from None


def _fits(occupied: list[tuple[int, int]], start: int, size: int) -> bool:
    return all(start + size <= s or e <= start for s, e in occupied)


def _first_fit(gpu: GpuType, order: tuple[str, ...]) -> tuple[tuple[str, int], ...] | None:
    """Where the driver puts instances created in ``order`` (lowest free placement first)."""
    occupied: list[tuple[int, int]] = []
    placed: list[tuple[str, int]] = []
    for name in order:
        p = gpu.profile(name)
        start = next((s for s in p.placements if _fits(occupied, s, p.memory_slices)), None)
        if start is None:
            return None
        occupied.append((start, start + p.memory_slices))
        placed.append((name, start))
    return tuple(sorted(placed, key=lambda x: x[1]))


def valid_instances(gpu: GpuType, instances: tuple[tuple[str, int], ...]) -> bool:
    """True when the (profile, start) set obeys placement, overlap and compute-slice rules."""
    occupied: list[tuple[int, int]] = []
    compute = 0
    counts: dict[str, int] = {}
    for name, start in instances:
        p = gpu.profile(name)
        if start not in p.placements or not _fits(occupied, start, p.memory_slices):
            return False
        occupied.append((start, start + p.memory_slices))
        compute += p.compute_slices
        counts[name] = counts.get(name, 0) + 1
        if counts[name] > p.max_instances:
            return False
    if compute > gpu.compute_slices:
        return False
    sizes = frozenset(gpu.profile(n).compute_slices for n, _ in instances)
    return not any(ex <= sizes and len(instances) == len(ex) for ex in _EXCLUDED)


def _creation_order(gpu: GpuType, instances: tuple[tuple[str, int], ...]) -> tuple[str, ...]:
    # Largest first realises almost every layout under first-fit; search the rest.
    names = [n for n, _ in instances]
    key = sorted(names, key=lambda n: (-gpu.profile(n).memory_slices, -gpu.profile(n).compute_slices))
    if _first_fit(gpu, tuple(key)) == instances:
        return tuple(key)
    for order in itertools.permutations(names):
        if _first_fit(gpu, order) == instances:
            return order
    raise AssertionError(f"no creation order realises {instances} on {gpu.name}")


@cache
def mig_layouts(gpu_name: str, maximal_only: bool = True) -> tuple[MigLayout, ...]:
    """All valid MIG geometries of a GPU type, derived from the placement rules.

    With ``maximal_only`` only layouts to which no further instance can be added are returned:
    a partially used GPU costs the same as a full one, so the planner never needs the others
    (an unused instance is simply an empty slot).
    """
    gpu = gpu_type(gpu_name)
    found: set[tuple[tuple[str, int], ...]] = set()

    def extend(current: tuple[tuple[str, int], ...]) -> None:
        grew = False
        last = current[-1][1] if current else -1
        for p in gpu.mig_profiles:
            for s in p.placements:
                if s < last:
                    continue
                cand = tuple(sorted(current + ((p.name, s),), key=lambda x: (x[1], x[0])))
                if valid_instances(gpu, cand):
                    grew = True
                    extend(cand)
        if current and (not grew or not maximal_only):
            found.add(current)

    extend(())
    if maximal_only:
        # Drop layouts that are a subset of another (growing in placement order can miss some).
        def sub(a: tuple, b: tuple) -> bool:
            return a != b and set(a) <= set(b)
        found = {f for f in found if not any(sub(f, g) for g in found)}
    # Layouts that realise the same profile multiset are the same to the planner; keep the
    # first in placement order so the output is deterministic.
    by_profiles: dict[tuple[str, ...], tuple[tuple[str, int], ...]] = {}
    for inst in sorted(found):
        key = tuple(sorted(n for n, _ in inst))
        by_profiles.setdefault(key, inst)
    layouts = [MigLayout(gpu.name, inst, _creation_order(gpu, inst)) for inst in by_profiles.values()]
    layouts.sort(key=lambda l: (-max(gpu.profile(p).compute_slices for p in l.profiles), l.name))
    return tuple(layouts)


def layout_named(gpu_name: str, name: str) -> MigLayout | None:
    """The maximal layout of a GPU type with this mig-parted style name, as plans record it."""
    return next((l for l in mig_layouts(gpu_name) if l.name == name), None)


def is_valid_combination(gpu_name: str, profiles: list[str]) -> bool:
    """Can these instances coexist on one GPU, in some placement? (the question users ask)."""
    gpu = gpu_type(gpu_name)
    try:
        profs = sorted((gpu.profile(p) for p in profiles), key=lambda p: -p.memory_slices)
    except KeyError:
        return False
    if sum(p.compute_slices for p in profs) > gpu.compute_slices:
        return False

    def place(i: int, chosen: tuple[tuple[str, int], ...]) -> bool:
        if i == len(profs):
            return valid_instances(gpu, tuple(sorted(chosen, key=lambda x: x[1])))
        occupied = [(s, s + gpu.profile(n).memory_slices) for n, s in chosen]
        return any(place(i + 1, chosen + ((profs[i].name, s),))
                   for s in profs[i].placements if _fits(occupied, s, profs[i].memory_slices))

    return place(0, ())
