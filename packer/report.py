"""Show a plan to a person: a table per pool, node, GPU and slot; an explanation; an SVG picture."""

from __future__ import annotations

import colorsys
import hashlib
from html import escape
from itertools import groupby

from packer.plan import Plan


def _money(x: float) -> str:
    return "n/a" if x == float("inf") else f"{x:,.2f}"


def summary(plan: Plan) -> str:
    b = plan.baselines
    lines = [
        f"fleet {plan.fleet.name}: {len(plan.fleet.models)} models, {sum(plan.replicas.values())} replicas, "
        f"plan {plan.id}",
        f"cost {_money(plan.cost_per_hour)}/h on {sum(plan.gpus.values())} GPUs "
        f"({', '.join(f'{k}: {v}' for k, v in plan.gpus.items())})  [{plan.status}]",
        f"lower bound {_money(plan.lower_bound_cost_per_hour)}/h ({plan.bound_method}); gap {plan.gap:.1%}",
    ]
    for name in ("dedicated", "greedy"):
        if name in b:
            bl = b[name]
            ratio = plan.cost_per_hour / bl.cost_per_hour if bl.cost_per_hour not in (0, float("inf")) else 0
            lines.append(f"{name:>9} baseline {_money(bl.cost_per_hour)}/h on {sum(bl.gpus.values())} GPUs "
                         f"(plan costs {ratio:.2f}x)")
    lines.append(f"solved in {plan.solve_seconds:.1f} s")
    from packer.planner.prove import MAX_MODELS

    shared = sum(1 for m in plan.fleet.models if m.gpus_per_replica == 1)
    if plan.gap > 1e-6 and shared <= MAX_MODELS and "no cheaper plan exists" not in plan.bound_method:
        lines.append("hint: the gap may be the bound's, not the plan's: `--prove 120` searches exactly for a "
                     "cheaper plan, and proves this one optimal if there is none (where at most a dozen "
                     "cheaper GPU purchases are left to rule out)")
    if plan.moves:
        lines.append(moves(plan))
    for w in plan.warnings:
        lines.append(f"warning: {w}")
    return "\n".join(lines)


def moves(plan: Plan) -> str:
    """The moves against the current plan, one per line: an operator re-planning wants to see what
    will be disturbed (which replica leaves which slot for which), not only how many moves there are.
    """
    if not plan.moves:
        return "moves against the current plan: none (every replica stays where it is)"
    kind = lambda mv: "add" if mv.src is None else "remove" if mv.dst is None else "move"  # noqa: E731
    n = {k: sum(1 for mv in plan.moves if kind(mv) == k) for k in ("move", "add", "remove")}
    rows = [(kind(mv), f"{mv.model}#{mv.replica}", mv.src or "(new)", mv.dst or "(removed)") for mv in plan.moves]
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    head = (f"moves against the current plan: {len(plan.moves)} ({n['move']} moved, {n['add']} added, "
            f"{n['remove']} removed)")
    return "\n".join([head] + [f"  {a:<{w[0]}}  {b:<{w[1]}}  {c:<{w[2]}} -> {d}" for a, b, c, d in rows])


def table(plan: Plan) -> str:
    """Pool → node → GPU → slot → models, with memory, share, p99 bound and the binding constraint."""
    rows = [("POOL/NODE/GPU", "SLOT", "MODEL", "BATCH", "SHARE", "MEM GB", "P99 BOUND", "SLO", "BINDING")]
    layout = {(l.pool, l.node, l.gpu): l.layout for l in plan.layouts}
    key = lambda p: (p.pool, p.node, p.gpu)  # noqa: E731
    for (pool, node, gpu), group in groupby(sorted(plan.placements, key=key), key=key):
        group = list(group)
        gname = f"{node}/gpu{gpu}" + (f"-{gpu + len(group[0].gpus) - 1}" if len(group[0].gpus) > 1 else "")
        rows.append((gname, f"[{layout.get((pool, node, gpu), 'whole')}]", "", "", "", "", "", "", ""))
        for p in group:
            slot = p.slot if p.slot == "whole" else f"{p.slot}@{p.mig_start}"
            for i, m in enumerate(p.models):
                rows.append((
                    "", slot if i == 0 else "", f"{m.name}#{m.replica}", str(m.batch_size), f"{m.share:.0%}",
                    f"{m.memory_gb:g}", f"{m.p99_bound_ms:,.1f} ms", f"{m.slo_ms:,.0f} ms", p.binding if i == 0 else "",
                ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def explain(plan: Plan, model: str) -> str:
    """Why a model is where it is: each replica's slot, neighbours, batch, bound and binding limit."""
    m = plan.model(model)
    lines = [f"{m.name} ({m.kind}): peak {m.traffic.peak_rps:g} rps, SLO {m.slo_ms:g} ms, {m.memory_gb:g} GB, "
             f"max_batch {m.max_batch}; {plan.replicas.get(m.name, 0)} replicas "
             f"(min {m.min_replicas}{', max ' + str(m.max_replicas) if m.max_replicas else ''})"]
    for p in plan.placements_of(model):
        me = next(x for x in p.models if x.name == model)
        others = [f"{x.name}#{x.replica}" for x in p.models if x.name != model]
        lines += [
            f"  replica {me.replica}: {p.id} ({p.pool}, {p.slot})",
            f"    serves {me.rate_rps:g} rps in batches of {me.batch_size} every {p.duty_cycle_ms:.1f} ms duty cycle; "
            f"takes {me.share:.0%} of the slot",
            f"    p99 bound {me.p99_bound_ms:.1f} ms = wait up to one cycle ({p.duty_cycle_ms:.1f}) + run "
            f"({me.p99_bound_ms - p.duty_cycle_ms:.1f}); SLO {me.slo_ms:g} ms",
            f"    shares the slot with: {', '.join(others) or 'nobody'}; memory {p.memory_gb:.1f}/"
            f"{p.memory_capacity_gb:.1f} GB",
            f"    binding: {p.binding} — {p.reason}",
        ]
    moves = [mv for mv in plan.moves if mv.model == model]
    for mv in moves:
        lines.append(f"  moved: replica {mv.replica} {mv.src or '(new)'} -> {mv.dst or '(removed)'}")
    return "\n".join(lines)


def _colour(name: str) -> str:
    h = int(hashlib.md5(name.encode()).hexdigest()[:6], 16) / 0xFFFFFF
    r, g, b = colorsys.hls_to_rgb(h, 0.62, 0.55)
    return f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}"


def svg(plan: Plan) -> str:
    """GPUs as horizontal bars split into slots (MIG by memory slices), members coloured per model."""
    from packer.catalog import gpu_type, layout_named

    bar_w, bar_h, left, gap = 700, 34, 190, 10
    layout = {(l.pool, l.node, l.gpu): l for l in plan.layouts}
    gpus = sorted({(p.pool, p.node, p.gpu) for p in plan.placements})
    height = 70 + len(gpus) * (bar_h + gap)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + bar_w + 20}" height="{height}" '
           f'font-family="sans-serif" font-size="11">',
           f'<text x="10" y="20" font-size="14" font-weight="bold">{escape(plan.fleet.name)}: '
           f'{plan.cost_per_hour:.2f}/h on {sum(plan.gpus.values())} GPUs, gap {plan.gap:.1%}</text>']
    y = 40
    for key in gpus:
        pool, node, gpu = key
        g = gpu_type(plan.fleet.pool(pool).gpu)
        lay = layout.get(key)
        out.append(f'<text x="10" y="{y + 21}">{escape(node)}/gpu{gpu} ({escape(g.name)})</text>')
        out.append(f'<rect x="{left}" y="{y}" width="{bar_w}" height="{bar_h}" fill="#f3f3f3" stroke="#888"/>')
        if lay and lay.layout != "whole":
            known = layout_named(g.name, lay.layout)
            for prof, start in (known.instances if known else ()):
                p = g.profile(prof)
                x = left + bar_w * start / g.memory_slices
                w = bar_w * p.memory_slices / g.memory_slices
                out.append(f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="none" '
                           f'stroke="#333" stroke-width="1.5"><title>{prof}@{start} (empty)</title></rect>')
        for p in plan.placements:
            if (p.pool, p.node, p.gpu) != key:
                continue
            if p.slot == "whole":
                x0, w0 = left, bar_w
            else:
                prof = g.profile(p.slot)
                x0 = left + bar_w * (p.mig_start or 0) / g.memory_slices
                w0 = bar_w * prof.memory_slices / g.memory_slices
            x = x0
            for m in p.models:
                w = max(1.0, w0 * m.share)
                out.append(f'<rect x="{x:.1f}" y="{y + 2}" width="{w:.1f}" height="{bar_h - 4}" '
                           f'fill="{_colour(m.name)}"><title>{escape(m.name)}#{m.replica}: {m.share:.0%} of '
                           f'{escape(p.slot)}, batch {m.batch_size}, p99 ≤ {m.p99_bound_ms:.0f} ms</title></rect>')
                if w > 40:
                    out.append(f'<text x="{x + 3:.1f}" y="{y + 21}" font-size="10">{escape(m.name)}</text>')
                x += w
            out.append(f'<rect x="{x0:.1f}" y="{y}" width="{w0:.1f}" height="{bar_h}" fill="none" stroke="#333" '
                       f'stroke-width="1.5"><title>{escape(p.id)}: {escape(p.reason)}</title></rect>')
        y += bar_h + gap
    out.append("</svg>")
    return "\n".join(out)
