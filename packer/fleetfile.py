"""The fleet file: parse and validate a fleet document into the types of ``packer.fleet``.

Every field is checked where it is read, so an error names the field and the fix (``FleetError``),
and the document is bounded in size, nesting and alias expansion (``packer.safeload``). Last, every
model must be servable on some slot at all (``packer.slot.check_model_servable``): the slot maths
sit between the fleet's types and this parser, so the types never import them back.
"""

from __future__ import annotations

import difflib
import math
import re
from pathlib import Path
from typing import Any

from packer.catalog import GPU_TYPES, gpu_type
from packer.fleet import (ARTIFACT_KEYS, Artifact, DEFAULT_FLOOR, FLEET_KEYS, Fleet, FleetError, KINDS, LATENCY_KEYS, LatencyProfile, MAX_BATCH, MAX_COST, MAX_GPUS_PER_NODE, MAX_LATENCY_MS, MAX_MEMORY_GB, MAX_NODES, MAX_NOTICE_S, MAX_PREEMPTION_RATE, MAX_REPLICAS, MAX_RPS, MAX_SLO_MS, MAX_STREAMS, MODEL_KEYS, Model, POOL_KEYS, Pool, REQUIRED, SHARING_MODES, SPOT_LOSSES, SPOT_POLICIES, TRAFFIC_KEYS, Traffic, _DNS1123)
from packer.safeload import InputError, cut, kind_of, number, parse_yaml, read_text, show
from packer.settings import PlanSettings
from packer.slot import check_model_servable


_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def _check_artifact(art: Artifact, where: str) -> None:
    """A URI of printable characters without spaces, and backend and platform names Triton could
    have: an empty ``uri`` or a NUL byte in ``backend`` used to pass and break the rendered
    repository later (found by fuzzing)."""
    if not art.uri or len(art.uri) > 2048 or any(c.isspace() or not c.isprintable() for c in art.uri):
        raise FleetError(f"{where}.uri", f"is {show(art.uri)}, not a URI",
                         "give where the weights live, e.g. https://host/path/model.onnx")
    for key, v in (("backend", art.backend), ("platform", art.platform)):
        if v is not None and not _NAME.fullmatch(v):
            raise FleetError(f"{where}.{key}", f"is {show(v)}, not a Triton {key} name",
                             f"give a name such as {'onnxruntime' if key == 'backend' else 'onnxruntime_onnx'}")


def _get(d: dict, key: str, where: str, typ: type | tuple, *, required: bool = True, default: Any = None,
         fix: str = "") -> Any:
    if key not in d or d[key] is None:
        if required:
            raise FleetError(f"{where}.{key}", "is missing", fix or f"add `{key}:`")
        return default
    v = d[key]
    types = typ if isinstance(typ, tuple) else (typ,)
    if float in types and isinstance(v, int) and not isinstance(v, bool):
        try:
            v = float(v)
        except OverflowError:  # an integer of hundreds of digits: no float holds it
            raise FleetError(f"{where}.{key}", f"is an integer of {len(str(abs(v)))} digits, too large for a number",
                             fix or f"give `{key}` a realistic value") from None
    if isinstance(v, bool) and bool not in types:
        raise FleetError(f"{where}.{key}", f"is {v!r}, not a {types[0].__name__}", fix or f"give a {types[0].__name__}")
    if not isinstance(v, types):
        names = " or ".join(t.__name__ for t in types)
        shown = show(v)
        shown = shown if shown.startswith("a ") else f"{type(v).__name__} {shown}"
        raise FleetError(f"{where}.{key}", f"is {shown}, expected {names}",
                         fix or f"write `{key}` as a {names}")
    return v


def _keys(d: dict, where: str, known: tuple[str, ...], *, extensions: bool = False) -> None:
    """Refuse keys the format does not have, with a did-you-mean (a typo must not read as a default)."""
    for k in d:
        if isinstance(k, str) and (k in known or (extensions and k.startswith("x-"))):
            continue
        ks = cut(k, 40) if isinstance(k, str) else show(k, 40)
        close = difflib.get_close_matches(ks, known, n=1, cutoff=0.6) if isinstance(k, str) else []
        if close and close[0] not in d and close[0] in REQUIRED:
            raise FleetError(f"{where}.{close[0]}", f"is missing; found {ks}",
                             f"did you mean {close[0]}? Rename `{ks}` to `{close[0]}`")
        if close:
            raise FleetError(f"{where}.{ks}", "is not a known key", f"did you mean {close[0]}?")
        raise FleetError(f"{where}.{ks}", "is not a known key",
                         f"remove it; the keys here are {', '.join(known)}"
                         + (" (and x-… for your own notes)" if extensions else ""))


def _where(d: dict, base: str) -> str:
    n = d.get("name")
    return f"{base} ({n})" if isinstance(n, str) and _DNS1123.match(n) and len(n) <= 63 else base


def _positive(v: float, where: str, fix: str, *, zero_ok: bool = False, hi: float = math.inf,
              unit: str = "") -> float:
    if math.isinf(hi):
        if not math.isfinite(v) or v < 0 or (v == 0 and not zero_ok):
            raise FleetError(where, f"is {show(v)}, must be {'non-negative' if zero_ok else 'positive'}", fix)
        return v
    return number(v, where, 0, hi, unit, fix, lo_open=not zero_ok, err=FleetError)


def _count(d: dict, key: str, where: str, lo: int, hi: int, fix: str, *, required: bool = True,
           default: Any = None) -> Any:
    v = _get(d, key, where, int, required=required, default=default)
    return v if v is None else number(v, f"{where}.{key}", lo, hi, "", fix, err=FleetError)


def _name(d: dict, where: str) -> str:
    n = _get(d, "name", where, str)
    if not _DNS1123.match(n) or len(n) > 63:
        raise FleetError(f"{where}.name", f"{show(n)} is not a DNS-1123 label",
                         "use lower-case letters, digits and '-', starting and ending alphanumeric, ≤ 63 chars")
    return n


def _entry(d: Any, where: str, keys: tuple[str, ...], what: str) -> tuple[str, str]:
    """An entry of a list (a pool, a model): a mapping with known keys and a DNS-1123 name; its
    name, and where it is as errors name it (``pools[2] (l4)``)."""
    if not isinstance(d, dict):
        raise FleetError(where, "is not a mapping", f"write each {what} as `- name: ...` with its fields")
    _keys(d, _where(d, where), keys)
    name = _name(d, where)
    return name, f"{where} ({name})"


def _pool(d: Any, i: int) -> Pool:
    name, where = _entry(d, f"pools[{i}]", POOL_KEYS, "pool")
    gpu = _get(d, "gpu", where, str)
    if gpu not in GPU_TYPES:
        raise FleetError(f"{where}.gpu", f"unknown GPU type {show(gpu)}",
                         f"use one of {', '.join(sorted(GPU_TYPES))} (`packer gpus` lists them)")
    gpn = _count(d, "gpus_per_node", where, 1, MAX_GPUS_PER_NODE, "give the GPUs of one node, e.g. 8")
    max_nodes = _count(d, "max_nodes", where, 1, MAX_NODES, "give the most nodes the pool may grow to",
                       required=False, default=1)
    cost = _positive(_get(d, "cost_per_gpu_hour", where, float), f"{where}.cost_per_gpu_hour",
                     "give the hourly price of one GPU, > 0", hi=MAX_COST, unit="per GPU-hour")
    sharing = _get(d, "sharing", where, list, required=False, default=[])
    for s in sharing:
        if not isinstance(s, str) or s not in SHARING_MODES:
            raise FleetError(f"{where}.sharing", f"unknown mode {show(s)}", f"use any of {list(SHARING_MODES)}")
    if "mig" in sharing and not gpu_type(gpu).has_mig:
        raise FleetError(f"{where}.sharing", f"{gpu} has no MIG", "remove `mig` or pick a MIG-capable GPU type")
    spot = _get(d, "spot", where, bool, required=False, default=False)
    notice = _get(d, "preemption_notice_s", where, float, required=False)
    rate = _get(d, "preemptions_per_node_hour", where, float, required=False)
    for key, v, hi, unit, fix in (("preemption_notice_s", notice, MAX_NOTICE_S, "s",
                                   "give the seconds of warning before a node goes, e.g. 30"),
                                  ("preemptions_per_node_hour", rate, MAX_PREEMPTION_RATE, "per node-hour",
                                   "give the expected preemptions of one node per hour, e.g. 0.05")):
        if v is None:
            continue
        if not spot:
            raise FleetError(f"{where}.{key}", "is set on a pool that is not spot",
                             f"add `spot: true` to the pool or remove `{key}`")
        number(v, f"{where}.{key}", 0, hi, unit, fix, err=FleetError)
    return Pool(name, gpu, gpn, max_nodes, cost, tuple(sharing), spot, notice, rate)


def _latency(v: Any, where: str) -> tuple[LatencyProfile, ...]:
    entries = v if isinstance(v, list) else [v]
    if not entries:
        raise FleetError(where, "is empty", "give at least one {gpu, base, per_item} entry")
    out = []
    seen: dict[str, int] = {}  # gpu (and MIG profile) -> its entry: two would leave which one holds open
    for j, e in enumerate(entries):
        w = f"{where}[{j}]" if isinstance(v, list) else where
        if not isinstance(e, dict):
            raise FleetError(w, "is not a mapping", "write `gpu:`, `base:` and `per_item:` under it")
        _keys(e, w, LATENCY_KEYS)
        gpu = _get(e, "gpu", w, str)
        gname, _, prof = gpu.partition("/")
        if gname not in GPU_TYPES:
            raise FleetError(f"{w}.gpu", f"unknown GPU type {show(gname)}",
                             f"use one of {', '.join(sorted(GPU_TYPES))}")
        if gpu in seen:
            raise FleetError(f"{w}.gpu", f"{show(gpu)} is also {where.rsplit('.', 1)[-1]}[{seen[gpu]}]",
                             "give one entry per GPU type (or MIG profile)")
        seen[gpu] = j
        if prof:
            try:
                gpu_type(gname).profile(prof)
            except KeyError:
                names = ", ".join(p.name for p in gpu_type(gname).mig_profiles) or "(none: no MIG)"
                raise FleetError(f"{w}.gpu", f"{gname} has no MIG profile {show(prof)}",
                                 f"use one of {names}") from None
        base = _positive(_get(e, "base", w, float), f"{w}.base", "give the fixed ms per batch, ≥ 0", zero_ok=True,
                         hi=MAX_LATENCY_MS, unit="ms")
        per = _positive(_get(e, "per_item", w, float), f"{w}.per_item", "give the ms per request in a batch, ≥ 0",
                        zero_ok=True, hi=MAX_LATENCY_MS, unit="ms")
        if base + per <= 0:
            raise FleetError(w, "base and per_item are both 0", "give the measured run time of a batch")
        out.append(LatencyProfile(gpu, base, per))
    return tuple(out)


def _model(d: Any, i: int) -> Model:
    name, where = _entry(d, f"models[{i}]", MODEL_KEYS, "model")
    kind = _get(d, "kind", where, str)
    if kind not in KINDS:
        raise FleetError(f"{where}.kind", f"is {show(kind)}", "use `streaming` or `batch`")
    mem = _positive(_get(d, "memory_gb", where, float), f"{where}.memory_gb",
                    "give the resident GPU memory of one replica in GB, > 0", hi=MAX_MEMORY_GB, unit="GB")
    gpr = _count(d, "gpus_per_replica", where, 1, MAX_GPUS_PER_NODE, "give 1 or more GPUs on one node",
                 required=False, default=1)
    t = _get(d, "traffic", where, dict)
    _keys(t, f"{where}.traffic", TRAFFIC_KEYS)
    rps = _positive(_get(t, "rps", f"{where}.traffic", float), f"{where}.traffic.rps",
                    "give the mean requests per second, ≥ 0", zero_ok=True, hi=MAX_RPS, unit="requests/s")
    peak = _get(t, "peak_rps", f"{where}.traffic", float, required=False, default=rps)
    _positive(peak, f"{where}.traffic.peak_rps", "give the peak requests per second", zero_ok=True, hi=MAX_RPS,
              unit="requests/s")
    if peak < rps:
        raise FleetError(f"{where}.traffic.peak_rps", f"{peak:g} is below rps {rps:g}", "peak_rps must be ≥ rps")
    streams = _count(t, "streams", f"{where}.traffic", 1, MAX_STREAMS, "give at least 1 concurrent stream",
                     required=False)
    if streams is not None and kind != "streaming":
        raise FleetError(f"{where}.traffic.streams", "is set on a batch model",
                         "remove `streams` or make the model `kind: streaming`")
    slo = _positive(_get(d, "slo_ms", where, float), f"{where}.slo_ms", "give the p99 latency target in ms, > 0",
                    hi=MAX_SLO_MS, unit="ms")
    lat = _latency(_get(d, "latency_ms", where, (dict, list)), f"{where}.latency_ms")
    mb = _count(d, "max_batch", where, 1, MAX_BATCH, "give the largest batch the model runs, at least 1")
    minr = _count(d, "min_replicas", where, 0, MAX_REPLICAS, "give the replicas kept for availability, 0 or more",
                  required=False, default=1)
    maxr = _count(d, "max_replicas", where, 1, MAX_REPLICAS, "give the most replicas allowed", required=False)
    if maxr is not None and maxr < max(minr, 1):
        raise FleetError(f"{where}.max_replicas", f"{maxr} is below min_replicas {minr}",
                         "raise max_replicas or lower min_replicas")
    art = d.get("artifact")
    artifact = None
    if art is not None:
        if isinstance(art, str):
            artifact = Artifact(art)
        elif isinstance(art, dict):
            _keys(art, f"{where}.artifact", ARTIFACT_KEYS)
            artifact = Artifact(_get(art, "uri", f"{where}.artifact", str),
                                _get(art, "backend", f"{where}.artifact", str, required=False, default="python"),
                                _get(art, "platform", f"{where}.artifact", str, required=False),
                                _get(art, "sha256", f"{where}.artifact", str, required=False))
        else:
            raise FleetError(f"{where}.artifact", "is neither a string nor a mapping",
                             "give `artifact: s3://...` or `artifact: {uri: ..., backend: onnxruntime}`")
        _check_artifact(artifact, f"{where}.artifact")
    policy = _get(d, "spot_policy", where, str, required=False, default="free")
    if policy not in SPOT_POLICIES:
        close = difflib.get_close_matches(cut(policy, 40), SPOT_POLICIES, n=1, cutoff=0.5)
        raise FleetError(f"{where}.spot_policy", f"is {show(policy)}",
                         (f"did you mean {close[0]}? " if close else "") + f"use one of {', '.join(SPOT_POLICIES)}")
    floor = _get(d, "on_demand_floor", where, float, required=False)
    if floor is not None and policy != "floor":
        raise FleetError(f"{where}.on_demand_floor", f"is set but spot_policy is {policy}",
                         "add `spot_policy: floor` or remove `on_demand_floor`")
    if floor is not None:
        number(floor, f"{where}.on_demand_floor", 0, 1, "of peak_rps",
               "give the share of peak_rps the on-demand replicas alone must hold, e.g. 0.5", lo_open=True,
               err=FleetError)
    share = {"free": 0.0, "never": 1.0}.get(policy, DEFAULT_FLOOR if floor is None else floor)
    loss = _get(d, "spot_loss", where, str, required=False)
    if loss is not None and policy != "floor":
        raise FleetError(f"{where}.spot_loss", f"is set but spot_policy is {policy}",
                         "add `spot_policy: floor` or remove `spot_loss`")
    if loss is not None and loss not in SPOT_LOSSES:
        raise FleetError(f"{where}.spot_loss", f"is {show(loss)}",
                         "use node (the floor survives any one spot node) or pool (every spot node)")
    return Model(name, kind, mem, Traffic(rps, peak, streams), slo, lat, mb, gpr, minr, maxr, artifact, policy, share,
                 loss or "node")


def parse_fleet(doc: Any, source: str | None = None) -> Fleet:
    """Build a :class:`Fleet` from a parsed YAML document, validating as it goes."""
    if not isinstance(doc, dict):  # an empty file, /dev/null, a list: named, not "(top level)"
        what = "is empty" if doc is None else f"is {kind_of(doc)}, not a mapping"
        raise FleetError(source or "(top level)", what, "a fleet file has `name:`, `pools:` and `models:`")
    _keys(doc, "fleet", FLEET_KEYS, extensions=True)
    name = _get(doc, "name", "fleet", str)
    pools_doc = _get(doc, "pools", "fleet", list)
    models_doc = _get(doc, "models", "fleet", list)
    if not pools_doc:
        raise FleetError("pools", "is empty", "add at least one GPU pool")
    pools = tuple(_pool(p, i) for i, p in enumerate(pools_doc))
    models = tuple(_model(m, i) for i, m in enumerate(models_doc))
    for what, items in (("pools", pools), ("models", models)):
        seen: dict[str, int] = {}
        for i, it in enumerate(items):
            if it.name in seen:
                raise FleetError(f"{what}[{i}].name", f"{it.name!r} is also {what}[{seen[it.name]}]",
                                 "give every entry a unique name")
            seen[it.name] = i
    about = _get(doc, "about", "fleet", (str, int, float), required=False, default="")
    fleet = Fleet(name, pools, models, str(about), source)
    for i, m in enumerate(models):  # servable at all: at the planner's default headroom
        check_model_servable(fleet, m, f"models[{i}] ({m.name})", u=PlanSettings().u)
    return fleet


def load_fleet(path: str | Path) -> Fleet:
    """Read and validate a fleet file, bounded in size, nesting and alias expansion (``packer.safeload``)."""
    p = str(path)
    return fleet_from_text(read_text(path, "give the path of a fleet YAML file"), p)


def fleet_from_text(text: str, p: str) -> Fleet:
    """:func:`load_fleet` on text already read; ``p`` names the file in errors."""
    # Numbers are range-checked field by field below, where the error can say the field's range.
    doc = parse_yaml(text, p, numbers=False)
    if isinstance(doc, dict) and "placements" in doc and "fleet" in doc:
        raise InputError(p, "is a plan, not a fleet file",
                         f"give the fleet YAML it was planned from (`packer plan FLEET --current {p}` re-plans from this plan)")
    return parse_fleet(doc, p)
