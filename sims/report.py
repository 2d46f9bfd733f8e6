"""Results for people: a text table, PNG/SVG plots and one self-contained HTML page.

Plots use matplotlib's Agg backend (no display). The HTML embeds the PNGs as base64 so one file can
be mailed or attached to a ticket. Runs are compared side by side by passing several results.
"""

from __future__ import annotations

import base64
import html
import json
import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.transforms import offset_copy  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator  # noqa: E402

from packer.report import colours  # noqa: E402

Run = dict[str, Any]


def label(r: Run) -> str:
    head = f"{r['label']}: " if r.get("label") else ""
    return f"{head}{r['policy']} @ plan {r['plan']}"


def attainment(value: float | None, arrivals: int, spec: str = ".4%") -> str:
    """SLO attainment as text. With no request finished it is undefined (``None`` in the JSON), and
    says why rather than showing a number: 0 % and 100 % would both be false."""
    return f"{value:{spec}}" if value is not None else f"n/a ({_why_none(arrivals)})"


def _why_none(arrivals: int) -> str:
    return "no requests" if not arrivals else "none finished"


def table(runs: list[Run]) -> str:
    """Per-model latency, SLO attainment and rejections, one column group per run."""
    lines = []
    for r in runs:
        f = r["fleet"]
        lines.append(f"== {label(r)}: {r['scenario']}, {r['duration_s'] / 3600:.2f} h, seed {r['seed']}")
        if r.get("policy_about"):
            lines.append(f"   {r['policy']}: {r['policy_about']}")
        lines.append(f"   cost {f['cost']:.2f} ({f['mean_cost_per_hour']:.2f}/h, plan {f['plan_cost_per_hour']:.2f}/h), "
                     f"GPU-hours {sum(f['gpu_hours'].values()):.2f}, requests {f['requests']:,}, "
                     f"SLO attainment {attainment(f['slo_attainment'], f['requests'])}")
        lines.append(f"   {'model':<22}{'arrivals':>11}{'p50 ms':>10}{'p99 ms':>11}{'SLO ms':>9}{'in SLO':>9}"
                     f"{'rejected':>10}")
        for m in r["models"]:
            rej = sum(m["rejected"].values())
            att = m["slo_attainment"]
            if att is None:  # nothing finished: "n/a" in the column, the reason where the flag goes
                cell, flag = "n/a", f"  ({_why_none(m['arrivals'])})"
            else:
                cell = f"{att:.2%}"
                flag = "" if m["p99_ms"] <= m["slo_ms"] and att >= 0.99 else "  <- misses SLO"
            p50, p99 = (f"{m[k]:.1f}" if m["completed"] else "-" for k in ("p50_ms", "p99_ms"))
            lines.append(f"   {m['name']:<22}{m['arrivals']:>11,}{p50:>10}{p99:>11}"
                         f"{m['slo_ms']:>9g}{cell:>9}{rej:>10,}{flag}")
        p = r["perf"]
        lines.append(f"   simulated in {p['wall_s']:.1f} s ({p['requests_per_wall_s']:,} requests/s), "
                     f"peak memory {p['peak_rss_mb']:.0f} MB")
    return "\n".join(lines)


def _misses(m: dict[str, Any], target: float = 0.99) -> bool:
    """Served some requests and missed: p99 over the SLO, or attainment below ``target`` (an
    undefined attainment, nothing finished, is no miss of its own)."""
    att = m["slo_attainment"]
    return m["arrivals"] > 0 and (m["p99_ms"] > m["slo_ms"] or (att is not None and att < target))


def summary(runs: list[Run]) -> list[dict[str, Any]]:
    """One row per run: cost, GPU-hours, SLO attainment, the worst model (lowest attainment, then
    the p99 closest to or furthest over its SLO) and the models that miss their SLO."""
    rows = []
    for r in runs:
        f = r["fleet"]
        served = [m for m in r["models"] if m["arrivals"] > 0 and m["completed"]]
        worst = min(served, key=lambda m: (m["slo_attainment"], -m["p99_ms"] / m["slo_ms"]), default=None)
        rows.append({
            "run": label(r), "policy": r["policy"], "plan": r["plan"], "cost": f["cost"],
            "cost_per_hour": f["mean_cost_per_hour"], "gpu_hours": sum(f["gpu_hours"].values()),
            "slo_attainment": f["slo_attainment"], "requests": f["requests"],
            "worst_model": worst["name"] if worst else None,
            "worst_attainment": worst["slo_attainment"] if worst else None,
            "worst_p99_ms": worst["p99_ms"] if worst else None, "worst_slo_ms": worst["slo_ms"] if worst else None,
            "missing": [m["name"] for m in r["models"] if _misses(m)]})
    return rows


def _pct(new: float, old: float) -> str:
    return "n/a" if not old else f"{(new - old) / old:+.1%}"


def verdict(runs: list[Run]) -> str:
    """One sentence comparing each later run with the first (empty for a single run)."""
    s = summary(runs)
    out = []
    for b in s[1:]:
        a = s[0]
        cheaper = "less" if b["cost"] < a["cost"] else "more"
        out.append(f"{b['run']} costs {abs(b['cost'] - a['cost']):,.2f} {cheaper} than {a['run']} "
                   f"({b['cost']:,.2f} vs {a['cost']:,.2f}, {_pct(b['cost'], a['cost'])}; GPU-hours "
                   f"{b['gpu_hours']:,.2f} vs {a['gpu_hours']:,.2f}, {_pct(b['gpu_hours'], a['gpu_hours'])}); "
                   f"SLO attainment {attainment(b['slo_attainment'], b['requests'])} vs "
                   f"{attainment(a['slo_attainment'], a['requests'])}; "
                   f"models missing their SLO: {len(b['missing'])} vs {len(a['missing'])}.")
    # A baseline's cost is its configuration's: name it (an HPA on busy time cost twice one on requests).
    out += [f"{r['policy']}: {r['policy_about']}." for r in runs if r.get("policy_about")][:2]
    return " ".join(out)


def grouped_actions(actions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Actions with the same action and reason once each, in order of first occurrence, with a count,
    the first and last time and their distinct outcomes."""
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for a in actions:
        g = groups.setdefault((a["action"], a["reason"]), {
            "action": a["action"], "reason": a["reason"], "count": 0, "first_t": a["t"], "last_t": a["t"],
            "outcomes": []})
        g["count"] += 1
        g["last_t"] = a["t"]
        if a["outcome"] not in g["outcomes"]:
            g["outcomes"].append(a["outcome"])
    return list(groups.values())


def _save(fig: Any, out: Path, name: str, formats: tuple[str, ...]) -> list[Path]:
    paths = []
    for ext in formats:
        p = out / f"{name}.{ext}"
        fig.savefig(p, dpi=110, bbox_inches="tight")
        paths.append(p)
    plt.close(fig)
    return paths


def _top_models(runs: list[Run], k: int) -> list[str]:
    m = sorted(runs[0]["models"], key=lambda m: -m["arrivals"])
    return [x["name"] for x in m[:k]]


def model_colours(runs: list[Run]) -> dict[str, str]:
    """A colour per model from its name among all the runs' models, as in the plan's picture: the
    same in a single run's report and in a comparison, whichever models are the busiest."""
    return colours([m["name"] for r in runs for m in r["models"]])


def plot_cdf(runs: list[Run], out: Path, formats: tuple[str, ...] = ("png",), k: int = 6) -> list[Path]:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    names = _top_models(runs, k)
    colour = model_colours(runs)
    styles = ["-", "--", ":", "-."]
    for j, r in enumerate(runs):
        by = {m["name"]: m for m in r["models"]}
        for n in names:
            cdf = by[n]["cdf"]
            if cdf:
                ax.plot([c[1] for c in cdf], [c[0] / 100 for c in cdf], styles[j % 4], color=colour[n],
                        label=f"{n} ({label(r)})" if len(runs) > 1 else n)
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("fraction of requests")
    ax.set_title("Latency CDF (busiest models)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # no request served, no line: nothing to name
        ax.legend(fontsize=7)
    return _save(fig, out, "latency_cdf", formats)


def _plain(v: float, _pos: Any = None) -> str:
    return f"{v:,.0f}" if v >= 1 else f"{v:g}"


def series_figure(runs: list[Run], k: int = 4) -> Any:
    """Arrivals, p99 per interval (each plotted model's SLO a dashed line) and ready replicas
    (integer ticks) over time, for the ``k`` busiest models. Replica lines that are the same are
    drawn a few points apart, each model with its own marker: they hid one another."""
    names = _top_models(runs, k)
    colour = model_colours(runs)
    fig, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    styles = ["-", "--", ":", "-."]
    markers = ["o", "s", "^", "D", "v", "P"]
    same: dict[tuple, list[tuple[int, int]]] = {}  # the replica lines that would lie on one another
    for j, r in enumerate(runs):
        for i, n in enumerate(names):
            same.setdefault(tuple(r["series"]["models"][n]["replicas"]), []).append((j, i))
    nudge = {ji: (pos - (len(g) - 1) / 2) * min(3.5, 12 / max(1, len(g) - 1))  # points from the true place
             for g in same.values() for pos, ji in enumerate(g)}
    for j, r in enumerate(runs):
        s = r["series"]
        t = [x / 3600 for x in s["t"]]
        for i, n in enumerate(names):
            ms = s["models"][n]
            lab = f"{n} ({label(r)})" if len(runs) > 1 else n
            axes[0].plot(t, ms["rate"], styles[j % 4], color=colour[n], label=lab)
            axes[1].plot(t, ms["p99"], styles[j % 4], color=colour[n], label=lab)
            every = max(1, len(t) // 15)
            ln, = axes[2].plot(t, ms["replicas"], styles[j % 4], color=colour[n], label=lab,
                               marker=markers[i % len(markers)], markersize=4,
                               markevery=((j * len(names) + i) * every // max(1, len(runs) * len(names)), every))
            ln.set_transform(offset_copy(axes[2].transData, fig=fig, y=nudge[j, i], units="points"))  # after autoscale
    slo = {m["name"]: m["slo_ms"] for m in runs[0]["models"]}
    by_slo: dict[float, list[str]] = {}
    for n in names:
        by_slo.setdefault(slo[n], []).append(n)
    for v, ns in sorted(by_slo.items()):
        axes[1].axhline(v, color="black", linestyle=(0, (6, 3)), linewidth=1.2, label="_slo")
        axes[1].annotate(f"SLO {v:,.0f} ms ({', '.join(ns)})", (1.0, v), xycoords=("axes fraction", "data"),
                         xytext=(-4, 3), textcoords="offset points", ha="right", fontsize=7)
    axes[0].set_ylabel("arrivals (rps)")
    axes[1].set_ylabel("p99 per interval (ms)")
    axes[1].set_yscale("log")
    axes[1].yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axes[1].yaxis.set_major_formatter(FuncFormatter(_plain))
    axes[1].yaxis.set_minor_formatter(FuncFormatter(lambda v, p: ""))
    top = max([max((x for x in r["series"]["models"][n]["p99"] if x == x), default=0.0)
               for r in runs for n in names] + list(by_slo))
    axes[1].set_ylim(top=top * 1.6)
    axes[2].set_ylabel("ready replicas")
    if any(len(g) > 1 for g in same.values()):
        axes[2].set_title("ready replicas (lines that are the same drawn a few pixels apart, so each stays "
                          "visible)", fontsize=8, loc="left")
    axes[2].yaxis.set_major_locator(MaxNLocator(integer=True))
    axes[2].margins(y=0.12)  # room for the lines drawn apart at the top and the bottom
    axes[2].set_xlabel("simulated hours")
    for a in axes:
        a.grid(alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2)
    axes[0].set_title(f"Busiest {len(names)} models over time (dashed black: SLO)")
    return fig


def plot_series(runs: list[Run], out: Path, formats: tuple[str, ...] = ("png",), k: int = 4) -> list[Path]:
    return _save(series_figure(runs, k), out, "timeseries", formats)


def plot_cost(runs: list[Run], out: Path, formats: tuple[str, ...] = ("png",)) -> list[Path]:
    fig, ax = plt.subplots(figsize=(8, 3.5))
    for j, r in enumerate(runs):
        s = r["series"]
        ax.step([x / 3600 for x in s["t"]], s["cost_per_hour"], where="post", label=label(r))
    ax.set_xlabel("simulated hours")
    ax.set_ylabel("cost per hour")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out, "cost", formats)


def capacity_figure(rows: list[dict[str, Any]], title: str = "Capacity as traffic grows") -> Any:
    """``packer capacity``'s rows as two panels over the growth factor: GPUs (total and per pool,
    integer ticks, red where the SLOs are missed) above, cost per hour (planned and simulated) below."""
    ok = [r for r in rows if r["fits"]]
    g = [r["growth"] for r in ok]
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True)
    ax.plot(g, [r["gpus_total"] for r in ok], "o-", color="C0", label="GPUs, all pools")
    pools = sorted({p for r in ok for p in r["gpus"]})
    if len(pools) > 1:
        for i, p in enumerate(pools):
            ax.plot(g, [r["gpus"].get(p, 0) for r in ok], ".:", color=f"C{i + 2}", label=p)
    miss = [r for r in ok if not r["holds"]]
    if miss:
        ax.plot([r["growth"] for r in miss], [r["gpus_total"] for r in miss], "x", color="red", markersize=10,
                mew=2, label="misses an SLO")
    ax.set_ylabel("GPUs")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(0, max([r["gpus_total"] for r in ok], default=1) * 1.12)
    ax.legend(fontsize=8, loc="upper left")
    same = all(abs(r["sim_cost_per_hour"] - r["plan_cost_per_hour"]) <= 0.005 * r["plan_cost_per_hour"] for r in ok)
    ax2.plot(g, [r["plan_cost_per_hour"] for r in ok], "s-", color="C1",
             label="planned cost per hour" + (" (= simulated mean)" if same else ""))
    if not same:  # a scaling policy moved the cost away from the plan's
        ax2.plot(g, [r["sim_cost_per_hour"] for r in ok], "^--", color="C4", label="simulated mean cost per hour")
    ax2.set_ylabel("cost per hour")
    ax2.set_ylim(bottom=0)
    ax2.set_xlabel("traffic growth factor (x today's peak)")
    ax2.legend(fontsize=8, loc="upper left")
    for a in (ax, ax2):
        a.grid(alpha=0.3)
    unfit = [r["growth"] for r in rows if not r["fits"]]
    if unfit:
        ax2.annotate(f"does not fit at x{', x'.join(f'{u:g}' for u in unfit)}", (0.99, 0.04),
                     xycoords="axes fraction", ha="right", fontsize=8, color="red")
    fig.suptitle(_wrapped(title))
    fig.tight_layout()
    return fig


def _wrapped(title: str, width: int = 60) -> str:
    """A figure title in lines of ``width`` characters, broken before its parenthesis first: one
    line ran past the image's right edge."""
    if len(title) <= width:
        return title
    head, paren, tail = title.partition(" (")
    parts = [head, "(" + tail] if paren else [title]
    return "\n".join(line for part in parts for line in textwrap.wrap(part, width))


def plot_capacity(rows: list[dict[str, Any]], out: Path, title: str = "Capacity as traffic grows",
                  formats: tuple[str, ...] = ("png", "svg")) -> list[Path]:
    return _save(capacity_figure(rows, title), out, "capacity", formats)


def write(runs: list[Run], out: Path, formats: tuple[str, ...] = ("png", "svg")) -> Path:
    """Write ``result.json``, the plots and ``report.html`` into ``out``; return the HTML path."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(runs[0] if len(runs) == 1 else {"runs": runs}, indent=1) + "\n")
    pngs = []
    for fn in (plot_cdf, plot_series, plot_cost):
        paths = fn(runs, out, formats)
        pngs += [p for p in paths if p.suffix == ".png"]
    imgs = "".join(f'<p><img alt="{p.stem}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}"></p>'
                   for p in pngs)
    e = html.escape
    r0 = runs[0]
    rows = "".join(
        f"<tr><td>{e(s['run'])}</td><td class=n>{s['cost']:,.2f}</td><td class=n>{s['cost_per_hour']:,.2f}/h</td>"
        f"<td class=n>{s['gpu_hours']:,.2f}</td><td class=n>{e(attainment(s['slo_attainment'], s['requests']))}</td>"
        + (f"<td>{e(s['worst_model'])}: {s['worst_attainment']:.2%} in SLO, p99 {s['worst_p99_ms']:,.0f} of "
           f"{s['worst_slo_ms']:,.0f} ms</td>" if s["worst_model"] else "<td>-</td>")
        + f"<td class={'bad' if s['missing'] else 'ok'}>{e(', '.join(s['missing'])) or 'none'}</td></tr>"
        for s in summary(runs))
    head = (f"<p>{e(r0['scenario'])}, {r0['duration_s'] / 3600:.2f} h simulated, seed {r0['seed']}.</p>"
            "<table class=summary><tr><th>run</th><th>cost</th><th>mean cost</th><th>GPU-hours</th>"
            f"<th>SLO attainment</th><th>worst model</th><th>models missing their SLO</th></tr>{rows}</table>")
    if len(runs) > 1:
        head += f"<p class=verdict>{e(verdict(runs))}</p>"
    acts = []
    for r in runs:
        groups = grouped_actions(r["actions"])
        shown = groups[:500]
        rows = "".join(
            f"<tr><td class=n>{g['first_t']:.0f}" + (f"&ndash;{g['last_t']:.0f}" if g["last_t"] != g["first_t"] else "")
            + f"</td><td class=n>{g['count']}&times;</td><td>{e(g['action'])}</td><td>{e(g['reason'])}</td><td>"
            + "<br>".join(e(o) for o in g["outcomes"][:3])
            + (f"<br>&hellip; and {len(g['outcomes']) - 3} more" if len(g["outcomes"]) > 3 else "") + "</td></tr>"
            for g in shown)
        more = f"<p>&hellip; and {len(groups) - len(shown)} more.</p>" if len(groups) > len(shown) else ""
        acts.append(f"<h3>Actions: {e(label(r))} ({len(r['actions'])}, {len(groups)} distinct)</h3>"
                    "<table><tr><th>t (s)</th><th>times</th><th>action</th><th>reason</th><th>outcome</th></tr>"
                    f"{rows}</table>{more}" if r["actions"] else f"<h3>Actions: {e(label(r))}</h3><p>none</p>")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>packer simulate</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}pre{{background:#f6f6f6;padding:1em;overflow:auto}}
table{{border-collapse:collapse;font-size:12px}}td,th{{border:1px solid #ccc;padding:2px 6px}}
td.n{{text-align:right;white-space:nowrap}}table.summary{{font-size:14px}}td.bad{{color:#b00;font-weight:bold}}
td.ok{{color:#070}}p.verdict{{font-size:15px}}</style></head><body>
<h1>Simulation report</h1><h2>Summary</h2>{head}
<h2>Per model</h2><pre>{e(table(runs))}</pre>{imgs}{''.join(acts)}</body></html>"""
    p = out / "report.html"
    p.write_text(page)
    return p
