"""Show a plan to a person: a table per pool, node, GPU and slot; an explanation; an SVG picture."""

from __future__ import annotations

import colorsys
import hashlib
import math
import re
from html import escape
from itertools import groupby

from packer.catalog import gpu_type, layout_named
from packer.plan import Placement, Plan
from packer.planner.prove import LEFT_FOR_PROOF
from packer.planner.spot import exposure_lines


def _money(x: float) -> str:
    """Two decimals, or three significant digits below 0.1: prices are in any currency, and a
    fleet priced at a ten-thousandth of the usual printed every cost as 0.00."""
    if x == float("inf"):
        return "n/a"
    if x == 0 or abs(x) >= 0.1:
        return f"{x:,.2f}"
    return f"{x:,.{2 - math.floor(math.log10(abs(x)))}f}"


def summary(plan: Plan) -> str:
    b = plan.baselines
    lines = [
        f"fleet {plan.fleet.name}: {len(plan.fleet.models)} models, {sum(plan.replicas.values())} replicas, "
        f"plan {plan.id}",
        f"cost {_money(plan.cost_per_hour)}/h on {sum(plan.gpus.values())} GPUs"
        + (f" ({', '.join(f'{k}: {v}' for k, v in plan.gpus.items())})" if plan.gpus else "") + f"  [{plan.status}]",
        f"lower bound {_money(plan.lower_bound_cost_per_hour)}/h ({plan.bound_method}); gap {plan.gap:.1%}"
        if plan.status != "scaled" else f"lower bound: none ({plan.bound_method})",
    ]
    for name in ("dedicated", "greedy"):
        if name in b:
            bl = b[name]
            if bl.cost_per_hour == float("inf"):
                lines.append(f"{name:>9} baseline n/a: {bl.note}")
                continue
            # A fleet with nothing to place (``models: []``, a fleet being retired) costs 0 both ways.
            ratio = (f"{plan.cost_per_hour / bl.cost_per_hour:.2f}x" if bl.cost_per_hour
                     else "the same" if plan.cost_per_hour == 0 else "more")
            lines.append(f"{name:>9} baseline {_money(bl.cost_per_hour)}/h on {sum(bl.gpus.values())} GPUs "
                         f"(plan costs {ratio})")
    lines.append(f"solved in {plan.solve_seconds:.1f} s")

    lines += exposure_lines(plan)

    if plan.gap > 1e-6 and LEFT_FOR_PROOF in plan.bound_method:
        # Not a promise of a proof: its model relaxes the slot maths, and on this very example it
        # fits two of the four cheaper purchases, so it can only say it could not rule them out.
        lines.append("hint: the gap may be the bound's, not the plan's: `--prove 120` tries to rule out each "
                     "cheaper GPU purchase exactly; if it rules out all, this plan is proven optimal, else it "
                     "says which it could not")
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
    rows = [("POOL/NODE/GPU", "SLOT", "MODEL", "BATCH", "SHARE", "MEM GB", "P99 BOUND", "SLO", "TIGHTEST")]
    layout = {(l.pool, l.node, l.gpu): l.layout for l in plan.layouts}
    key = lambda p: gpu_order((p.pool, p.node, p.gpu))  # noqa: E731
    for _, group in groupby(sorted(plan.placements, key=key), key=key):
        group = list(group)
        pool, node, gpu = group[0].pool, group[0].node, group[0].gpu
        gname = f"{node}/gpu{gpu}" + (f"-{gpu + len(group[0].gpus) - 1}" if len(group[0].gpus) > 1 else "")
        rows.append((gname, f"[{layout.get((pool, node, gpu), 'whole')}]", "", "", "", "", "", "", ""))
        for p in group:
            slot = p.slot if p.slot == "whole" else f"{p.slot}@{p.mig_start}"
            held = reserve(p)
            for i, m in enumerate(p.models):
                share = f"{m.share:.0%}" + (f"+{held:.0%}" if held else "")
                rows.append((
                    "", slot if i == 0 else "", f"{m.name}#{m.replica}", str(m.batch_size), share,
                    f"{m.memory_gb:g}", f"{m.p99_bound_ms:,.1f} ms", f"{m.slo_ms:,.0f} ms", tightest(plan, p) if i == 0 else "",
                ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    if any(reserve(p) for p in plan.placements):
        out.append("(a+b%: a replica alone is busy a on average and holds b more for its sticky streams, "
                   "whose count runs above its share for minutes)")
    return "\n".join(out)


def gpu_order(key: tuple[str, str, int]) -> tuple:
    """A (pool, node, GPU) key that sorts nodes by number: l4-n2 before l4-n10, not after it as text.
    For display only: the plan keeps its own order (its id is a hash of it)."""
    pool, node, gpu = key
    return pool, tuple(int(x) if x.isdigit() else x for x in re.split(r"(\d+)", node)), gpu


def reserve(p: Placement) -> float:
    """The share a replica alone holds beyond its mean load for its sticky streams' count (0 for any
    other slot): the compute cap binds on both together, so a picture of the mean alone would show
    room that is not there."""
    if p.duty_cycle_ms or len(p.models) != 1:
        return 0.0
    extra = p.compute_share - p.models[0].share
    return extra if extra >= 0.005 else 0.0


def _rounds(rest_ms: float, p: Placement) -> str:
    """The bound past the cycle's wait, as the slot maths make it (``d + k C``): ``k`` rounds of the
    slot's batches, ``C`` each (its compute share of the cycle). It read "run (142800.0)" for
    three rounds of 47,600 ms, a figure found nowhere else in the output."""
    c = p.compute_share * p.duty_cycle_ms
    k = max(1, round(rest_ms / c)) if c > 0 else 1
    if k == 1:
        return f"one round of the slot's batches, its own included ({rest_ms:.1f})"
    return f"{k} rounds of the slot's batches ({k} x {rest_ms / k:.1f})"


def explain(plan: Plan, model: str) -> str:
    """Why a model is where it is: each replica's slot, neighbours, batch, bound and binding limit."""
    m = plan.model(model)
    lines = [f"{m.name} ({m.kind}): peak {m.traffic.peak_rps:g} rps, SLO {m.slo_ms:g} ms, {m.memory_gb:g} GB, "
             f"max_batch {m.max_batch}; {plan.replicas.get(m.name, 0)} "
             f"replica{'' if plan.replicas.get(m.name, 0) == 1 else 's'} "
             f"(min {m.min_replicas}{', max ' + str(m.max_replicas) if m.max_replicas else ''})"]
    for p in plan.placements_of(model):
        me = next(x for x in p.models if x.name == model)
        others = [f"{x.name}#{x.replica}" for x in p.models if x.name != model]
        if p.duty_cycle_ms == 0:
            serves = [f"    serves {me.rate_rps:.1f} rps alone, each batch (up to {me.batch_size}) sent as the slot "
                      f"frees; takes {me.share:.0%} of what full batches serve"
                      + (f" and holds {held:.0%} more for its sticky streams' count" if (held := reserve(p)) else ""),
                      f"    p99 bound {me.p99_bound_ms:.1f} ms = the batch running, then the queue ahead in full "
                      f"batches; SLO {me.slo_ms:g} ms"]
        else:
            serves = [f"    serves {me.rate_rps:.1f} rps in batches of {me.batch_size} every {p.duty_cycle_ms:.1f} ms "
                      f"duty cycle; takes {me.share:.0%} of the slot",
                      f"    p99 bound {me.p99_bound_ms:.1f} ms = wait up to one cycle ({p.duty_cycle_ms:.1f}) + "
                      f"{_rounds(me.p99_bound_ms - p.duty_cycle_ms, p)}; SLO {me.slo_ms:g} ms"]
        lines += [
            f"  replica {me.replica}: {p.id} ({p.pool}, {p.slot})",
            *serves,
            f"    shares the slot with: {', '.join(others) or 'nobody'}; memory {p.memory_gb:.1f}/"
            f"{p.memory_capacity_gb:.1f} GB",
            f"    tightest limit: {tightest(plan, p)} used — {p.reason}",
        ]
    moves = [mv for mv in plan.moves if mv.model == model]
    for mv in moves:
        lines.append(f"  moved: replica {mv.replica} {mv.src or '(new)'} -> {mv.dst or '(removed)'}")
    return "\n".join(lines)


_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#393b79", "#bcbd22",
            "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#e7ba52",
            "#dbdb8d", "#9edae5")


def _colour(name: str) -> str:
    """A colour of its own per model name (hashed: the same model has the same colour in every plan)."""
    h = int(hashlib.md5(name.encode()).hexdigest()[:6], 16) / 0xFFFFFF
    r, g, b = colorsys.hls_to_rgb(h, 0.62, 0.55)
    return f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}"


def colours(names: list[str]) -> dict[str, str]:
    """Distinct colours for a picture's models: a 20-colour palette in name order, hashed beyond it.
    No grey among them: grey is the picture's free track; the simulator's plots use them too, so a
    model has the same colour in the plan's picture and in its simulation reports."""
    names = sorted(set(names))
    if len(names) > len(_PALETTE):
        return {n: _colour(n) for n in names}
    return dict(zip(names, _PALETTE))


def _ink(fill: str) -> str:
    """Black or white text, whichever reads on ``fill``."""
    r, g, b = (int(fill[i:i + 2], 16) for i in (1, 3, 5))
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 140 else "white"


def _short(text: str, px: float, char_px: float = 6.0) -> str:
    """``text`` cut to fit ``px`` pixels at about ``char_px`` per character ('' when nothing fits)."""
    n = int(px // char_px)
    return text if len(text) <= n else (text[: n - 1] + "…" if n - 1 >= min(8, len(text) - 1) else "")


def tightest(plan: Plan, p: Placement) -> str:
    """The slot's tightest limit and how much of it is used: ``compute 72%`` (of the cap the
    headroom leaves), ``memory 99%``, ``SLO of punct-en 83%`` (its p99 bound over its SLO). The
    column read "compute" alone, as if the slot were at its cap, on a slot at 61 % of a 85 % cap."""
    if p.binding == "memory":
        used = sum(m.memory_gb for m in p.models) / p.memory_capacity_gb if p.memory_capacity_gb else 0.0
    elif p.binding == "compute":
        used = p.compute_share / plan.settings.u if plan.settings.u else 0.0
    else:
        used = max((m.p99_bound_ms / m.slo_ms for m in p.models if f"slo:{m.name}" == p.binding and m.slo_ms),
                   default=0.0)
    return f"{_limit(p.binding)} {used:.0%}"


def _limit(binding: str) -> str:
    return f"SLO of {binding[4:]}" if binding.startswith("slo:") else binding


def _limits(bindings: list[str]) -> str:
    """A GPU's slots' limits once each, the SLOs last as one "SLOs of a, b" (a MIG GPU's seven
    "SLO of ..." ran past the picture's edge)."""
    slos = list(dict.fromkeys(b[4:] for b in bindings if b.startswith("slo:")))
    out = list(dict.fromkeys(b for b in bindings if not b.startswith("slo:")))
    if slos:
        out.append(f"SLO{'s' if len(slos) > 1 else ''} of {', '.join(slos)}")
    return ", ".join(out)


def _wrap(text: str, px: float, lines: int, char_px: float = 5.6) -> list[str]:
    """``text`` in at most ``lines`` lines of ``px`` pixels, broken after " · " or ", " where it can
    (at a space else), the last line cut with "…" if the rest does not fit."""
    n = int(px // char_px)
    out = []
    while len(text) > n and len(out) < lines - 1:
        cut = max([i + len(sep) - 1 for sep in (" · ", ", ", " ") if (i := text.rfind(sep, 0, n + 1)) > 0] or [n])
        out.append(text[:cut].rstrip())
        text = text[cut:].lstrip()
    return out + [_short(text, px, char_px)]


_HATCH = ('<defs><pattern id="held" width="5" height="5" patternUnits="userSpaceOnUse" '
          'patternTransform="rotate(45)"><rect width="2" height="5" fill="white" fill-opacity="0.8"/></pattern></defs>')


def _held(x: float, y: float, w: float, h: float, fill: str, attrs: str = "", title: str = "") -> list[str]:
    """A share held for sticky streams, drawn as its model's colour, paler and hatched (the chart and
    its legend alike: a pale colour alone read as another model's, or as grey)."""
    return [f'<rect{attrs} x="{x:.2f}" y="{y}" width="{w:.2f}" height="{h}" fill="{fill}" fill-opacity="0.35" '
            f'stroke="white" stroke-width="0.5">{title}</rect>',
            f'<rect x="{x:.2f}" y="{y}" width="{w:.2f}" height="{h}" fill="url(#held)" pointer-events="none"/>']


def _marks(plan: Plan, colour: dict[str, str], width: int, ly: float) -> tuple[list[str], int]:
    """The legend's first part, what the marks mean, one after another from the left and on to a new
    line where the next would run past ``width``; with the number of lines it takes."""
    cap = 1.0 - plan.settings.headroom
    marks = [
        (lambda x, y: [f'<rect x="{x}" y="{y - 10}" width="22" height="12" fill="none" stroke="#222" '
                       f'stroke-width="1.5"/>'], "slot (whole GPU, MIG instance or multi-GPU replica)"),
        (lambda x, y: [f'<rect x="{x}" y="{y - 10}" width="22" height="12" fill="none" stroke="#999" '
                       f'stroke-dasharray="3,2"/>'], "empty MIG instance"),
        (lambda x, y: [f'<line x1="{x + 11}" y1="{y - 11}" x2="{x + 11}" y2="{y + 3}" stroke="#c00" '
                       f'stroke-width="1.5" stroke-dasharray="3,2"/>'],
         f"compute cap ({cap:.0%} of a slot's time: {plan.settings.headroom:.0%} headroom)"),
        (lambda x, y: [f'<rect x="{x}" y="{y - 10}" width="22" height="12" fill="#eee"/>'], "free"),
    ]
    held = [p for p in plan.placements if reserve(p)]
    if held:  # drawn as the chart draws it, in the first such model's colour
        marks.append((lambda x, y: _held(x, y - 10, 22, 12, colour[held[0].models[0].name], ' class="legend-held"'),
                       "held for sticky streams (the model's colour, paler and hatched)"))
    out, x, y = [], 10, ly
    for draw, text in marks:
        w = 28 + len(text) * 5.6
        if x > 10 and x + w > width - 10:
            x, y = 10, y + 18
        out += draw(x, y) + [f'<text x="{x + 28}" y="{y}">{escape(text)}</text>']
        x += round(w + 16)
    return out, int((y - ly) // 18) + 1


def svg(plan: Plan) -> str:
    """Every GPU the plan uses as a row of two tracks, split into its slots (MIG instances by memory
    slices, or the whole GPU): the upper track is memory (each member's GB of the slot's usable
    memory), the lower one compute (each member's share of the slot's time), with the duty-cycle
    cap marked. A multi-GPU replica fills all its GPUs' rows inside one outline. Hover for details."""

    left, bar_w, right = 190, 620, 340
    track, inner, row_gap, top = 16, 3, 12, 96
    row_h = 2 * track + inner
    width = left + bar_w + right
    cap = 1.0 - plan.settings.headroom
    layout = {(l.pool, l.node, l.gpu): l for l in plan.layouts}
    spans = {p: (p.gpus or (p.gpu,)) for p in plan.placements}
    rows = sorted({(p.pool, p.node, g) for p, gs in spans.items() for g in gs} | set(layout), key=gpu_order)
    y_of = {key: top + i * (row_h + row_gap) for i, key in enumerate(rows)}
    chart_bottom = top + len(rows) * (row_h + row_gap) - row_gap
    colour = colours([m.name for p in plan.placements for m in p.models])
    per_line = max(1, (width - 20) // 180)
    swatches = len(colour) <= len(_PALETTE)  # beyond the palette colours repeat: a legend would mislead
    ly = chart_bottom + 40  # the legend: what the marks mean, then one swatch per model
    marks, mark_lines = _marks(plan, colour, width, ly)
    ly += 18 * (mark_lines - 1)
    height = ly + 24 + (18 * ((len(colour) + per_line - 1) // per_line) if swatches else 18)
    e = escape
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           *([_HATCH] if any(reserve(p) for p in plan.placements) else []),
           f'<text x="10" y="22" font-size="15" font-weight="bold">{e(plan.fleet.name)}: '
           f'{_money(plan.cost_per_hour)}/h on {sum(plan.gpus.values())} GPUs '
           f'({e(", ".join(f"{k}: {v}" for k, v in plan.gpus.items()))}), plan {e(plan.id)} '
           f'[{e(plan.status)}, gap {plan.gap:.1%}]</text>',
           f'<text x="10" y="42" fill="#444">Each GPU: upper track <tspan font-weight="bold">memory</tspan> '
           f'(each model\'s GB of its slot\'s usable memory), lower track <tspan font-weight="bold">compute'
           f'</tspan> (each model\'s share of its slot\'s time); grey is free. Hover for details.</text>',
           f'<text x="{left + bar_w / 2}" y="{top - 30}" text-anchor="middle" fill="#444">share of each GPU '
           f'(slots sized by their memory slices)</text>',
           f'<text x="{left + bar_w + 10}" y="{top - 30}" fill="#444">memory used / usable · limit</text>']
    for pct in (0, 25, 50, 75, 100):  # the scale, with gridlines through every row
        x = left + bar_w * pct / 100
        out.append(f'<line class="axis" x1="{x:.1f}" y1="{top - 6}" x2="{x:.1f}" y2="{chart_bottom + 4}" '
                   f'stroke="#ddd"/>')
        for ty in (top - 10, chart_bottom + 16):
            out.append(f'<text x="{x:.1f}" y="{ty}" text-anchor="middle" fill="#444">{pct} %</text>')

    by_row: dict[tuple[str, str, int], list] = {k: [] for k in rows}
    for p, gs in spans.items():
        for g in gs:
            by_row[(p.pool, p.node, g)].append(p)
    for key in rows:
        pool, node, gpu = key
        g = gpu_type(plan.fleet.pool(pool).gpu)
        y = y_of[key]
        out += [f'<g class="gpu" data-gpu="{e(pool)}/{e(node)}/gpu{gpu}">',
                f'<text x="10" y="{y + 13}">{e(node)}/gpu{gpu}</text>',
                f'<text x="10" y="{y + 29}" fill="#666">{e(g.name)}</text>',
                f'<text x="{left - 4}" y="{y + 12}" text-anchor="end" font-size="9" fill="#666">mem</text>',
                f'<text x="{left - 4}" y="{y + track + inner + 12}" text-anchor="end" font-size="9" '
                f'fill="#666">compute</text>']
        for ty in (y, y + track + inner):
            out.append(f'<rect x="{left}" y="{ty}" width="{bar_w}" height="{track}" fill="#eee"/>')
        lay = layout.get(key)
        if lay and lay.layout != "whole":
            known = layout_named(g.name, lay.layout)
            taken = {(p.slot, p.mig_start) for p in by_row[key]}
            for prof, start in (known.instances if known else ()):
                if (prof, start) in taken:
                    continue
                pr = g.profile(prof)
                x = left + bar_w * start / g.memory_slices
                w = bar_w * pr.memory_slices / g.memory_slices
                out.append(f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{row_h}" fill="none" stroke="#999" '
                           f'stroke-dasharray="3,2"><title>{e(prof)}@{start}: empty MIG instance</title></rect>')
        used = usable = 0.0
        limits, spread = [], 1
        for p in by_row[key]:
            n = len(spans[p])
            spread = max(spread, n)
            used, usable = used + p.memory_gb / n, usable + p.memory_capacity_gb / n
            limits.append(p.binding)
            if p.slot == "whole":
                x0, w0 = float(left), float(bar_w)
            else:
                prof = g.profile(p.slot)
                x0 = left + bar_w * (p.mig_start or 0) / g.memory_slices
                w0 = bar_w * prof.memory_slices / g.memory_slices
            xm = xc = x0
            for m in p.models:
                fill = colour[m.name]
                tip = (f"{e(m.name)}#{m.replica} in {e(p.id)}: memory {m.memory_gb:g} GB of "
                       f"{p.memory_capacity_gb:.1f} GB ({m.memory_gb / p.memory_capacity_gb:.0%}), compute "
                       f"{m.share:.0%} of the slot's time, batch {m.batch_size}, p99 ≤ {m.p99_bound_ms:,.0f} ms "
                       f"(SLO {m.slo_ms:,.0f} ms)")
                wm = w0 * m.memory_gb / p.memory_capacity_gb if p.memory_capacity_gb else 0.0
                wc = w0 * m.share
                for cls, x, ty, w in (("mem", xm, y, wm), ("compute", xc, y + track + inner, wc)):
                    out.append(f'<rect class="{cls}" data-slot="{e(p.id)}" data-model="{e(m.name)}" x="{x:.2f}" '
                               f'y="{ty}" width="{w:.2f}" height="{track}" fill="{fill}" stroke="white" '
                               f'stroke-width="0.5"><title>{tip}</title></rect>')
                label = _short(m.name, wm - 4)
                if label:
                    out.append(f'<text x="{xm + 3:.1f}" y="{y + 12}" font-size="10" fill="{_ink(fill)}" '
                               f'pointer-events="none">{e(label)}</text>')
                xm, xc = xm + wm, xc + wc
            if held := reserve(p):
                out += _held(xc, y + track + inner, w0 * held, track, colour[p.models[0].name],
                             f' class="reserve" data-slot="{e(p.id)}"',
                             f'<title>{e(p.models[0].name)} in {e(p.id)}: {held:.0%} more held for its sticky '
                             f'streams, whose count on this replica runs above its share for minutes (sized at the '
                             f'99.9 % level)</title>')
            xcap = x0 + w0 * cap
            out.append(f'<line class="cap" x1="{xcap:.1f}" y1="{y + track + inner - 2}" x2="{xcap:.1f}" '
                       f'y2="{y + row_h + 2}" stroke="#c00" stroke-width="1.5" stroke-dasharray="3,2"/>')
            if spans[p][0] == gpu:  # one outline around the slot, over every GPU it spans
                bottom = y_of.get((p.pool, p.node, spans[p][-1]), y) + row_h
                what = f"{e(p.id)}, one replica on {n} GPUs" if n > 1 else e(p.id)
                out.append(f'<rect class="slot" data-slot="{e(p.id)}" x="{x0:.1f}" y="{y - 1}" width="{w0:.1f}" '
                           f'height="{bottom - y + 2}" fill="none" stroke="#222" stroke-width="1.5"><title>{what}: '
                           f'memory {p.memory_gb:.1f}/{p.memory_capacity_gb:.1f} GB, compute {p.compute_share:.0%}; '
                           f'limit: {e(_limit(p.binding))} — {e(p.reason)}</title></rect>')
        note = f"{used:.1f}/{usable:.1f} GB" if usable else "empty"
        if limits:
            note += " · " + _limits(limits)
        if spread > 1:
            note += f" · 1 replica on {spread} GPUs"
        lines = _wrap(note, right - 14, 2)
        if len(lines) == 1:
            out.append(f'<text x="{left + bar_w + 10}" y="{y + row_h / 2 + 4:.1f}" fill="#333">'
                       f'{e(lines[0])}<title>{e(note)}</title></text>')
        else:  # two lines, level with the mem and compute labels
            out.append(f'<text fill="#333">' + "".join(
                f'<tspan x="{left + bar_w + 10}" y="{y + 13 + 16 * i}">{e(t)}</tspan>' for i, t in enumerate(lines))
                + f'<title>{e(note)}</title></text>')
        out.append("</g>")
    out += marks
    if not swatches:
        out.append(f'<text x="10" y="{ly + 22}">{len(colour)} models: too many for a colour each; hover a bar '
                   f'for its model, or see `packer plan --explain MODEL`</text>')
    for i, (name, fill) in enumerate(colour.items() if swatches else ()):
        x = 10 + (i % per_line) * 180
        yy = ly + 22 + 18 * (i // per_line)
        out.append(f'<rect class="legend" x="{x}" y="{yy - 10}" width="12" height="12" fill="{fill}"/>')
        out.append(f'<text x="{x + 17}" y="{yy}">{e(_short(name, 160))}</text>')
    out.append("</svg>")
    return "\n".join(out)
