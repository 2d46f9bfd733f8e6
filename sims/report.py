"""Results for people: a text table, PNG/SVG plots and one self-contained HTML page.

Plots use matplotlib's Agg backend (no display). The HTML embeds the PNGs as base64 so one file can
be mailed or attached to a ticket. Runs are compared side by side by passing several results.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

Run = dict[str, Any]


def label(r: Run) -> str:
    return f"{r['policy']} @ plan {r['plan']}"


def table(runs: list[Run]) -> str:
    """Per-model latency, SLO attainment and rejections, one column group per run."""
    lines = []
    for r in runs:
        f = r["fleet"]
        lines.append(f"== {label(r)}: {r['scenario']}, {r['duration_s'] / 3600:.2f} h, seed {r['seed']}")
        lines.append(f"   cost {f['cost']:.2f} ({f['mean_cost_per_hour']:.2f}/h, plan {f['plan_cost_per_hour']:.2f}/h), "
                     f"GPU-hours {sum(f['gpu_hours'].values()):.2f}, requests {f['requests']:,}, "
                     f"SLO attainment {f['slo_attainment']:.4%}")
        lines.append(f"   {'model':<22}{'arrivals':>11}{'p50 ms':>10}{'p99 ms':>11}{'SLO ms':>9}{'in SLO':>9}"
                     f"{'rejected':>10}")
        for m in r["models"]:
            rej = sum(m["rejected"].values())
            flag = "" if m["p99_ms"] <= m["slo_ms"] and m["slo_attainment"] >= 0.99 else "  <- misses SLO"
            p50, p99 = (f"{m[k]:.1f}" if m["completed"] else "-" for k in ("p50_ms", "p99_ms"))
            lines.append(f"   {m['name']:<22}{m['arrivals']:>11,}{p50:>10}{p99:>11}"
                         f"{m['slo_ms']:>9g}{m['slo_attainment']:>9.2%}{rej:>10,}{flag}")
        p = r["perf"]
        lines.append(f"   simulated in {p['wall_s']:.1f} s ({p['requests_per_wall_s']:,} requests/s), "
                     f"peak memory {p['peak_rss_mb']:.0f} MB")
    return "\n".join(lines)


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


def plot_cdf(runs: list[Run], out: Path, formats: tuple[str, ...] = ("png",), k: int = 6) -> list[Path]:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    names = _top_models(runs, k)
    styles = ["-", "--", ":", "-."]
    for j, r in enumerate(runs):
        by = {m["name"]: m for m in r["models"]}
        for i, n in enumerate(names):
            cdf = by[n]["cdf"]
            if cdf:
                ax.plot([c[1] for c in cdf], [c[0] / 100 for c in cdf], styles[j % 4], color=f"C{i}",
                        label=f"{n} ({label(r)})" if len(runs) > 1 else n)
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("fraction of requests")
    ax.set_title("Latency CDF (busiest models)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, out, "latency_cdf", formats)


def plot_series(runs: list[Run], out: Path, formats: tuple[str, ...] = ("png",), k: int = 4) -> list[Path]:
    names = _top_models(runs, k)
    fig, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    styles = ["-", "--", ":", "-."]
    for j, r in enumerate(runs):
        s = r["series"]
        t = [x / 3600 for x in s["t"]]
        for i, n in enumerate(names):
            ms = s["models"][n]
            lab = f"{n} ({label(r)})" if len(runs) > 1 else n
            axes[0].plot(t, ms["rate"], styles[j % 4], color=f"C{i}", label=lab)
            axes[1].plot(t, ms["p99"], styles[j % 4], color=f"C{i}", label=lab)
            axes[2].plot(t, ms["replicas"], styles[j % 4], color=f"C{i}", label=lab)
    axes[0].set_ylabel("arrivals (rps)")
    axes[1].set_ylabel("p99 per interval (ms)")
    axes[1].set_yscale("log")
    axes[2].set_ylabel("ready replicas")
    axes[2].set_xlabel("simulated hours")
    for a in axes:
        a.grid(alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2)
    return _save(fig, out, "timeseries", formats)


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
    acts = []
    for r in runs:
        rows = "".join(f"<tr><td>{a['t']:.0f}</td><td>{html.escape(a['action'])}</td><td>{html.escape(a['reason'])}</td>"
                       f"<td>{html.escape(a['outcome'])}</td></tr>" for a in r["actions"][:500])
        acts.append(f"<h3>Actions: {html.escape(label(r))}</h3><table><tr><th>t (s)</th><th>action</th><th>reason"
                    f"</th><th>outcome</th></tr>{rows}</table>")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>packer simulate</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}pre{{background:#f6f6f6;padding:1em;overflow:auto}}
table{{border-collapse:collapse;font-size:12px}}td,th{{border:1px solid #ccc;padding:2px 6px}}</style></head><body>
<h1>Simulation report</h1><pre>{html.escape(table(runs))}</pre>{imgs}{''.join(acts)}</body></html>"""
    p = out / "report.html"
    p.write_text(page)
    return p
