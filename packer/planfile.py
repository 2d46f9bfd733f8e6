"""Plan files a user hands us: read within bounds (``packer.safeload``) and checked before any
command trusts them.

A plan is written by the planner (``packer.plan.save_plan``) and then read by every other stage:
the Triton writer, the Kubernetes renderer, ``serve-local``, the simulator, the scaler, a re-plan's
``--current`` and the reconciler's stored plan. Between the two it is a file anyone can edit, so
reading one is where its numbers are checked again: here, in one place, so that no stage renders,
serves, simulates or applies a value the planner would not have written (a slot id that is a path,
a node name that is shell code, an edited bound or cost).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import fields
from pathlib import Path
from typing import Any

from packer.catalog import gpu_type, mig_layouts
from packer.check import check_plan
from packer.errors import UserError
from packer.plan import PLAN_VERSION, GpuLayout, Member, Plan, from_dict, node_name, node_parts
from packer.safeload import InputError, cut, cut_path, looks_like_json, parse_json, parse_yaml, read_text, show

NAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$")
"""What a node name in a plan may be: a Kubernetes label value (it becomes one), so also a safe
path segment and shell word. The planner writes ``<pool>-n<k>`` (:func:`node_name`)."""
REPLAN = "re-plan it: `packer plan FLEET -o plan.json`"
MAX_REASON = 4096
"""Longest ``reason`` or ``binding`` kept: they become annotations (Kubernetes allows 256 KiB in all)."""


def _number(x: Any, lo: float, hi: float = math.inf, *, integer: bool = False, low_open: bool = False) -> bool:
    """A JSON number (not a boolean) in ``[lo, hi]`` (``(lo, hi]`` with ``low_open``), integral if asked."""
    if isinstance(x, bool) or not isinstance(x, int if integer else (int, float)):
        return False
    return math.isfinite(x) and (x > lo if low_open else x >= lo) and x <= hi


def plan_problems(plan: Plan) -> list[tuple[str, str, str]]:
    """``(field, problem, fix)`` for each value of a read plan that no planner writes: unknown
    pools, profiles and models, out-of-range or mistyped numbers, unsafe node names, two slots
    with one id. What :func:`packer.check.check_plan` needs to run at all, and what every reader
    of a plan (Triton writer, renderer, simulator, scaler, reconciler) would otherwise trust."""
    out: list[tuple[str, str, str]] = []
    f = plan.fleet
    pools = {q.name: q for q in f.pools}
    models = {m.name: m for m in f.models}
    if not plan.placements:
        out.append(("placements", "is empty: a plan serves every model from some slot", REPLAN))
    if not _number(plan.cost_per_hour, 0.0) or not _number(plan.lower_bound_cost_per_hour, 0.0):
        out.append(("cost_per_hour", "and lower_bound_cost_per_hour must be non-negative numbers", REPLAN))
    if not _number(plan.solve_seconds, 0.0):
        out.append(("solve_seconds", f"is {show(str(plan.solve_seconds), 40)}: must be a non-negative number of "
                    "seconds", REPLAN))
    if plan.status not in ("optimal", "feasible", "scaled"):
        out.append(("status", f"is {show(str(plan.status), 40)}, not optimal, feasible or scaled", REPLAN))
    seen: dict[str, int] = {}
    for i, pl in enumerate(plan.placements):
        at, before = f"placements[{i}]", len(out)
        pool = pools.get(pl.pool) if isinstance(pl.pool, str) else None
        if pool is None:
            out.append((f"{at}.pool", f"{show(str(pl.pool), 40)} is not a pool of the plan's fleet", REPLAN))
            continue
        if not isinstance(pl.node, str) or not NAME_RE.match(pl.node):
            out.append((f"{at}.node", f"{show(str(pl.node), 40)} is not a node name (letters, digits, '-', '.', '_', "
                        "at most 63)", REPLAN))
            continue
        head, idx = node_parts(pl.node)
        if idx is not None and (head != pool.name or idx >= pool.max_nodes) and head in pools:
            out.append((f"{at}.node", f"{pl.node} is not one of pool {pool.name}'s nodes ({pool.name}-n0 to "
                        f"{pool.name}-n{pool.max_nodes - 1})", REPLAN))
            continue
        g = gpu_type(pool.gpu)
        if pl.slot != "whole" and (not isinstance(pl.slot, str) or not pool.mig
                                   or pl.slot not in {q.name for q in g.mig_profiles}):
            out.append((f"{at}.slot", f"{show(str(pl.slot), 40)} is not whole or a MIG profile of pool {pool.name}",
                        REPLAN))
            continue
        if pl.slot != "whole" and not _number(pl.mig_start, 0, 7, integer=True):
            out.append((f"{at}.mig_start", "must be a MIG memory-slice offset, 0 to 7", REPLAN))
        if pl.slot == "whole" and pl.mig_start is not None:
            out.append((f"{at}.mig_start", "must be null on a whole GPU (it is a MIG instance's offset)", REPLAN))
        gpus = pl.gpus if isinstance(pl.gpus, tuple) else ()
        if not gpus or not all(_number(x, 0, pool.gpus_per_node - 1, integer=True) for x in (pl.gpu, *gpus)) \
                or pl.gpu not in gpus or len(set(gpus)) != len(gpus):
            out.append((f"{at}.gpu", f"must be GPU indices 0 to {pool.gpus_per_node - 1} (a node of pool {pool.name}), "
                        "gpu among gpus, none twice", REPLAN))
        alone = isinstance(pl.models, tuple) and len(pl.models) == 1
        if not _number(pl.duty_cycle_ms, 0.0, 1e9, low_open=not alone):
            out.append((f"{at}.duty_cycle_ms", "must be a positive number of ms (0 only for a replica alone, "
                        "served as its requests come)", REPLAN))
        for key in ("memory_gb", "memory_capacity_gb", "compute_share"):
            if not _number(getattr(pl, key), 0.0, 1e9):
                out.append((f"{at}.{key}", "must be a non-negative number", REPLAN))
        for key in ("binding", "reason"):
            v = getattr(pl, key)
            if not isinstance(v, str) or len(v) > MAX_REASON:
                out.append((f"{at}.{key}", f"must be text of at most {MAX_REASON} characters", REPLAN))
        if not pl.models:
            out.append((f"{at}.models", "is empty: a slot holds at least one replica", REPLAN))
        for j, m in enumerate(pl.models):
            mat = f"{at}.models[{j}]"
            model = models.get(m.name) if isinstance(m.name, str) else None
            if model is None:
                out.append((f"{mat}.name", f"{show(str(m.name), 40)} is not a model of the plan's fleet",
                            REPLAN))
                continue
            if m.kind != model.kind:
                out.append((f"{mat}.kind", f"is {show(str(m.kind), 20)}, the fleet says {model.kind}", REPLAN))
            if not _number(m.batch_size, 1, model.max_batch, integer=True):
                out.append((f"{mat}.batch_size", f"must be a whole number 1 to max_batch ({model.max_batch})",
                            REPLAN))
            if not _number(m.replica, 0, 1e9, integer=True):
                out.append((f"{mat}.replica", "must be a whole number from 0", REPLAN))
            for key in ("share", "memory_gb", "p99_bound_ms", "slo_ms", "rate_rps"):
                if not _number(getattr(m, key), 0.0, 1e12):
                    out.append((f"{mat}.{key}", "must be a non-negative number", REPLAN))
        if len(out) == before and pl.memory_capacity_gb + 1e-6 < (need := sum(m.memory_gb for m in pl.models)):
            out.append((f"{at}.memory_capacity_gb", f"is {pl.memory_capacity_gb:g} GB, below the {need:g} GB its "
                        "members need", REPLAN))
        if len(out) == before:  # a slot id is only read from a placement without problems
            k = seen.setdefault(pl.id, i)
            if k != i:
                out.append((at, f"is slot {show(pl.id, 60)} again (placements[{k}])", REPLAN))
    for name, n in plan.replicas.items():
        at = f"replicas.{cut(str(name), 64)}"
        if name not in models:
            out.append((at, "is not a model of the plan's fleet", REPLAN))
        elif not _number(n, 0, 1e9, integer=True):
            out.append((at, f"is {show(n, 40)}: must be a whole number of replicas from 0", REPLAN))
    gpu_seen: dict[tuple[str, str, int], int] = {}
    for i, lay in enumerate(plan.layouts):
        at, before = f"layouts[{i}]", len(out)
        out += _layout_problems(lay, at, pools)
        if len(out) == before:
            k = gpu_seen.setdefault((lay.pool, lay.node, lay.gpu), i)
            if k != i:
                out.append((at, f"is GPU {lay.node}/gpu{lay.gpu} again (layouts[{k}])", REPLAN))
    return out


def _is_node_of(node: Any, pool: Any) -> bool:
    """``node`` is ``<pool>-n<k>`` (:func:`~packer.plan.node_name`), one of ``pool``'s nodes."""
    tail = node[len(pool.name) + 2:] if isinstance(node, str) and node.startswith(pool.name + "-n") else ""
    return (0 < len(tail) <= 9 and tail.isascii() and tail.isdigit() and int(tail) < pool.max_nodes
            and node == node_name(pool.name, int(tail)))


def _layout_problems(lay: GpuLayout, at: str, pools: dict[str, Any]) -> list[tuple[str, str, str]]:
    """``(field, problem, fix)`` of one GPU's entry in ``layouts``: a GPU of one of the pool's nodes
    (as :func:`~packer.plan.node_name` names them), ``whole`` or a MIG layout of its GPU type, and
    the catalog's creation order of that layout (or none). The first problem only: the later ones
    read the earlier fields."""
    pool = pools.get(lay.pool) if isinstance(lay.pool, str) else None
    if pool is None:
        return [(f"{at}.pool", f"{show(str(lay.pool), 40)} is not a pool of the plan's fleet", REPLAN)]
    if not _is_node_of(lay.node, pool):
        return [(f"{at}.node", f"{show(str(lay.node), 40)} is not one of pool {pool.name}'s nodes: the form is "
                 f"<pool>-n<k>, {pool.name}-n0 to {pool.name}-n{pool.max_nodes - 1}", REPLAN)]
    if not _number(lay.gpu, 0, pool.gpus_per_node - 1, integer=True):
        return [(f"{at}.gpu", f"{show(lay.gpu, 40)} is not a GPU index 0 to {pool.gpus_per_node - 1} "
                 f"(a node of pool {pool.name})", REPLAN)]
    mig = isinstance(lay.layout, str) and lay.layout != "whole"
    known = [l for l in mig_layouts(pool.gpu) if l.name == lay.layout] if mig and pool.mig else []
    if not isinstance(lay.layout, str) or mig and not known:
        what = (f"whole or a MIG layout of pool {pool.name}'s {pool.gpu}" if pool.mig
                else f"whole: pool {pool.name} does not partition its GPUs (no MIG)")
        return [(f"{at}.layout", f"{show(str(lay.layout), 40)} is not {what}", REPLAN)]
    order = lay.creation_order  # what the catalog says creates the layout (the scaler's GPUs: none)
    if order and all(l.creation_order != order for l in known):
        what = "its layout's MIG profiles, in the order that creates them" if mig else "empty on a whole GPU"
        return [(f"{at}.creation_order", f"must be {what}", REPLAN)]
    return []


def is_hand_written(plan: Plan) -> bool:
    """A plan of ``packer.handplan`` (groups picked by hand to put known servers in front of known
    traffic, for the simulator and the tests): its slots may break the slot maths on purpose, so
    only :func:`plan_problems` applies to it. It says so in every slot (``binding: hand``) or in
    its warnings, where every command that prints the plan shows it."""
    return bool(plan.placements) and (all(p.binding == "hand" for p in plan.placements)
                                      or any(w.startswith("hand-picked groups") for w in plan.warnings))


def validate_plan(plan: Plan, where: str) -> Plan:
    """``plan`` if it is one the planner could have written for its fleet: :func:`plan_problems`,
    then the first-principles check (``check_plan``: memory, batches, bounds, replicas, MIG
    geometry, pools, cost). Else one :class:`InputError` naming ``where`` and the first problem.
    Every command that reads a plan file (and the reconciler's stored plan) goes through it, so a
    hand-edited number is refused, not rendered, served, simulated or applied."""
    found = plan_problems(plan)
    if found:
        field, problem, fix = found[0]
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise InputError(f"{where}: {field}", problem + more, fix)
    errs = [] if is_hand_written(plan) else check_plan(plan)
    if errs:
        more = f" (and {len(errs) - 1} more)" if len(errs) > 1 else ""
        raise InputError(where, f"does not hold against its own fleet: {cut(errs[0], 160)}{more}",
                         REPLAN + "; a plan is not edited by hand")
    return plan


PLACEMENT_KEYS = ("pool", "node", "gpu", "slot", "models", "duty_cycle_ms", "memory_gb", "memory_capacity_gb",
                  "compute_share", "binding", "reason")
MEMBER_KEYS = tuple(f.name for f in fields(Member))
LAYOUT_KEYS = ("pool", "node", "gpu", "layout")


def shape_problem(doc: dict[str, Any]) -> tuple[str, str] | None:
    """``(field, problem)`` for the first value whose JSON type no plan has, before the plan is
    built from the document (so a hand-broken file names its field, not a Python error)."""
    objects = {"gpus": dict, "replicas": dict, "baselines": dict, "settings": dict, "layouts": list,
               "moves": list, "warnings": list, "placements": list}
    for key, kind in objects.items():  # only ``settings`` may be null (the defaults)
        if key in doc and not isinstance(doc[key], kind) and (doc[key] is not None or key != "settings"):
            return key, f"must be a JSON {'object' if kind is dict else 'list'}"
    for k, v in (doc.get("baselines") or {}).items():
        if not isinstance(v, dict):
            return f"baselines.{cut(str(k), 40)}", "must be a JSON object"
    for i, pl in enumerate(doc["placements"]):
        if not isinstance(pl, dict):
            return f"placements[{i}]", "must be a JSON object"
        if missing := [k for k in PLACEMENT_KEYS if k not in pl]:
            return f"placements[{i}]", f"has no `{missing[0]}`"
        if not isinstance(pl["models"], list):
            return f"placements[{i}].models", "must be a JSON list"
        for j, m in enumerate(pl["models"]):
            at = f"placements[{i}].models[{j}]"
            if not isinstance(m, dict):
                return at, "must be a JSON object"
            if missing := [k for k in MEMBER_KEYS if k not in m]:
                return at, f"has no `{missing[0]}`"
            if extra := sorted(k for k in m if k not in MEMBER_KEYS):
                return at, f"has `{cut(str(extra[0]), 40)}`, which no plan has"
    for i, lay in enumerate(doc.get("layouts") or []):
        if not isinstance(lay, dict):
            return f"layouts[{i}]", "must be a JSON object"
        if missing := [k for k in LAYOUT_KEYS if k not in lay]:
            return f"layouts[{i}]", f"has no `{missing[0]}`"
        if not isinstance(lay.get("creation_order", []), list):
            return f"layouts[{i}].creation_order", "must be a JSON list"
    return None


def load_plan(path: str | Path) -> Plan:
    """Read a plan file through the bounded loader (``packer.safeload``).

    Anything that is not a plan (a fleet file, other JSON, a truncated or hand-broken plan) is one
    :class:`~packer.safeload.InputError` naming the file and the fix, never a traceback.
    """

    p = cut_path(path)
    return plan_from_text(read_text(path, PLAN_FIX), p)


PLAN_FIX = "write one with `packer plan FLEET -o plan.json`"


def is_plan_text(text: str) -> bool:
    """Whether a file's text is a plan (JSON with ``fleet`` and ``placements``), not a fleet: what
    a command taking either reads it as, whatever the file's name ends with."""
    if not looks_like_json(text):
        return False
    try:
        doc = parse_json(text, "")
    except InputError:
        return True  # broken JSON: the plan reader says where
    return isinstance(doc, dict) and "placements" in doc and "fleet" in doc


def plan_from_text(text: str, p: str) -> Plan:
    """:func:`load_plan` on text already read; ``p`` names the file in errors."""
    fix = PLAN_FIX
    if looks_like_json(text):
        doc = parse_json(text, p)
    else:  # perhaps a fleet file where a plan belongs
        try:
            doc = parse_yaml(text, p)
        except InputError:
            doc = None
        if not (isinstance(doc, dict) and "pools" in doc and "models" in doc):
            what = ("is empty" if not text.strip() else
                    "is JSON null, not a plan" if text.strip() == "null" else
                    "is not a plan (not JSON)" if doc is None or isinstance(doc, (dict, list, str))
                    else f"is a JSON {'boolean' if isinstance(doc, bool) else 'number'}, not a plan")
            raise InputError(p, what, fix)
    if isinstance(doc, dict) and "placements" not in doc and "pools" in doc and "models" in doc:
        raise InputError(p, "is a fleet file, not a plan",
                         f"plan it first with `packer plan {p} -o plan.json`, then give plan.json")
    if not isinstance(doc, dict):
        raise InputError(p, f"is a JSON {type(doc).__name__}, not a plan", fix)
    missing = [k for k in ("fleet", "placements", "status", "cost_per_hour") if k not in doc]
    if missing:
        raise InputError(p, f"is not a plan: it has no `{missing[0]}`", fix)
    if doc.get("version", PLAN_VERSION) != PLAN_VERSION:
        raise InputError(f"{p}: version", f"is {cut(json.dumps(doc.get('version')), 20)}; this packer reads "
                         f"plans of version {PLAN_VERSION}", f"re-plan with this packer: {fix}")
    if shape := shape_problem(doc):
        raise InputError(f"{p}: {shape[0]}", shape[1], f"regenerate it: {fix}")
    try:
        plan = from_dict(doc)
    except InputError as e:  # the embedded fleet
        raise InputError(f"{p}: fleet {e.field}", e.problem, e.fix) from None
    except UserError as e:
        raise InputError(f"{p}: fleet", str(e), "regenerate the plan from a valid fleet") from None
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        what = f"no `{e.args[0]}`" if isinstance(e, KeyError) and e.args else show(str(e), 80)
        raise InputError(p, f"is not a valid plan ({what})", f"regenerate it: {fix}") from None
    return validate_plan(plan, p)
