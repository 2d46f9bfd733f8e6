"""The reconciler's HTTP face (FastAPI): probes, Prometheus metrics and a read-only status page.

``/healthz`` fails when the loop has stalled (no cycle for three intervals), so the kubelet
restarts a wedged reconciler; ``/readyz`` passes once a cycle has completed. The page at ``/``
draws the current packing (the plan SVG) with the last actions and why each was taken.
"""

from __future__ import annotations

import html
import threading
import time
from typing import Any

import uvicorn
from fastapi import FastAPI, Response
from fastapi.responses import HTMLResponse, JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from k8s.reconciler import Reconciler
from packer.report import _money, svg


def status(rec: Reconciler) -> dict[str, Any]:
    rep = rec.last
    plan = rep.plan if rep else None
    return {
        "identity": rec.identity,
        "leader": bool(rep and rep.leader),
        "cycles": rec.cycles,
        "plan": None if plan is None else {
            "id": plan.id, "status": plan.status, "cost_per_hour": plan.cost_per_hour,
            "lower_bound_cost_per_hour": plan.lower_bound_cost_per_hour, "gap": round(plan.gap, 4),
            "gpus": plan.gpus, "groups": len(plan.placements)},
        "last_cycle": None if rep is None else {
            "seconds": round(rep.seconds, 4), "calls": dict(rep.calls), "writes": rep.writes,
            "replanned": rep.replanned, "done": [a.describe() for a in rep.done],
            "waiting": [f"{a.describe()} -- {why}" for a, why in rep.waiting],
            "conflicts": [f"{c.kind}/{c.name}: {c.reason}" for c in rep.conflicts],
            "errors": rep.errors, "warnings": rep.warnings},
        "recent_actions": [{"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(h["at"])), "action": h["action"]}
                           for h in reversed(rec.history[-30:])],
    }


def _stall_s(rec: Reconciler) -> float:
    """No cycle and no API answer for this long means the loop is wedged (``/healthz`` fails)."""
    return 3 * rec.s.interval_s + rec.s.request_timeout_s * rec.s.max_attempts


def _alive_at(rec: Reconciler, started: float) -> float:
    """The last sign of life: a cycle's end, or any API call's try ending (answered or timed out).
    Cycles alone made a cycle slowed by a webhook that times out (four creates at 50 s each)
    look wedged at 95 s, and the kubelet restarted the reconciler mid-apply, again and again."""
    answered = getattr(getattr(rec, "cluster", None), "answered_at", None)  # a page's stand-in has no cluster
    return max(rec.last_cycle_end or started, answered or 0.0)


def health(rec: Reconciler, started: float) -> tuple[str, str, str]:
    """(state, colour, one line) at a glance: stalled, starting, failing, follower, waiting or healthy."""
    now = rec.clock()
    rep = rec.last
    if now - _alive_at(rec, started) >= _stall_s(rec):
        return "stalled", "#b00020", (f"no cycle and no API answer for {now - _alive_at(rec, started):,.0f} s "
                                      f"(limit {_stall_s(rec):,.0f} s): /healthz fails and the kubelet restarts it")
    if rep is None:
        return "starting", "#666", "no cycle yet"
    if rep.errors:
        return "failing", "#b00020", f"the last cycle had {len(rep.errors)} error(s), listed below"
    if not rep.leader:
        return "follower", "#1565c0", "another replica holds the lease and does the work"
    if rep.conflicts or rep.waiting or rep.warnings:
        n = len(rep.conflicts) + len(rep.waiting) + len(rep.warnings)
        return "attention", "#b26a00", f"{n} waiting action(s), conflict(s) or warning(s), listed below"
    return "healthy", "#2e7d32", "the cluster matches the plan" if not rep.done else "converging: actions applied"


def _ago(seconds: float) -> str:
    s = max(0.0, seconds)
    return f"{s:.0f} s ago" if s < 120 else f"{s / 60:.0f} min ago" if s < 7200 else f"{s / 3600:.1f} h ago"


def _page(rec: Reconciler, started: float | None = None) -> str:
    st = status(rec)
    rep = rec.last
    e = html.escape
    now = rec.clock()
    state, colour, why = health(rec, now if started is None else started)
    refresh = max(5, int(round(rec.s.interval_s)))
    role = "no cycle yet" if rep is None else "leader" if rep.leader else "follower"
    parts = [f"<header><h1>packer reconciler</h1><span class=badge style='background:{colour}'>{e(state)}</span>"
             f"<span class=who>{e(rec.identity)} · {e(role)}</span></header>",
             f"<p class=why>{e(why)}</p><table class=facts>"]
    facts = []
    if rep is not None:
        lc = st["last_cycle"]
        result = (f"{len(rep.done)} applied, {len(rep.waiting)} waiting, {len(rep.conflicts)} conflict(s), "
                  f"{len(rep.errors)} error(s), {rep.writes} write(s)") if rep.leader else "follower: nothing done"
        facts += [("last cycle", f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(rec.last_cycle_end))} "
                                 f"({_ago(now - rec.last_cycle_end)}), took {lc['seconds']:.2f} s"),
                  ("result", result), ("cycles", f"{rec.cycles:,}, one every {rec.s.interval_s:g} s")]
        if rep.replanned:
            facts.append(("re-planned", rep.replanned))
    if st["plan"]:
        p = st["plan"]
        gpus = ", ".join(f"{k}: {v}" for k, v in p["gpus"].items())
        facts += [("plan", f"<code>{e(p['id'])}</code>: {p['groups']} groups"),
                  ("GPUs", f"{sum(p['gpus'].values())} ({e(gpus)})"),
                  ("cost", f"{_money(p['cost_per_hour'])}/h (lower bound {_money(p['lower_bound_cost_per_hour'])}/h, "
                           f"gap {p['gap']:.1%})" if p["status"] != "scaled" else
                   f"{_money(p['cost_per_hour'])}/h (scaled from a plan: no lower bound until the next re-plan)")]
    parts[-1] += "".join(f"<tr><th>{k}</th><td>{v if k == 'plan' else e(v)}</td></tr>" for k, v in facts) + "</table>"
    for title, items in (("Errors", (st["last_cycle"] or {}).get("errors", [])),
                         ("Conflicts", (st["last_cycle"] or {}).get("conflicts", [])),
                         ("Waiting", (st["last_cycle"] or {}).get("waiting", [])),
                         ("Warnings", (st["last_cycle"] or {}).get("warnings", []))):
        if items:
            parts.append(f"<h2>{title}</h2><ul>" + "".join(f"<li>{e(i)}</li>" for i in items) + "</ul>")
    if rep is not None and rep.plan is not None:
        parts.append(f"<h2>Packing</h2><div class=pic>{svg(rep.plan)}</div>")
    rows = "".join(f"<tr><td>{e(a['at'].replace('T', ' ').rstrip('Z'))}</td><td>{e(a['action'])}</td></tr>"
                   for a in st["recent_actions"])
    parts.append("<h2>Last actions</h2>" + (f"<table class=acts><tr><th>at (UTC)</th><th>action and reason</th></tr>"
                                            f"{rows}</table>" if rows else "<p>none yet</p>"))
    parts.append(f"<footer>Refreshes every {refresh} s · <a href='status.json'>status.json</a> · "
                 "<a href='metrics'>metrics</a> · <a href='healthz'>healthz</a> · <a href='readyz'>readyz</a></footer>")
    return ("<!doctype html><html><head><meta charset='utf-8'>"
            f"<meta http-equiv='refresh' content='{refresh}'><title>packer: {e(state)}</title><style>"
            "body{font-family:sans-serif;margin:0 2em 2em;color:#222}"
            "header{display:flex;align-items:center;gap:1em;border-bottom:1px solid #ddd;padding:.6em 0}"
            "header h1{font-size:1.4em;margin:0}"
            ".badge{color:white;padding:.2em .7em;border-radius:1em;font-weight:bold}"
            ".who{color:#555}.why{font-size:1.1em}table.facts th{text-align:left;padding:2px 12px 2px 0;color:#555}"
            "table.acts{border-collapse:collapse;font-size:13px}table.acts td,table.acts th{border:1px solid #ddd;"
            "padding:2px 8px;vertical-align:top;text-align:left}.pic{overflow-x:auto}"
            "footer{margin-top:2em;color:#777;font-size:.9em}</style></head>"
            f"<body>{''.join(parts)}</body></html>")


def create_app(rec: Reconciler, *, started: float | None = None) -> FastAPI:
    app = FastAPI(title="packer reconciler", docs_url=None, redoc_url=None)
    t0 = started if started is not None else rec.clock()
    stall_s = _stall_s(rec)

    @app.get("/healthz")
    def healthz() -> Response:
        ok = rec.clock() - _alive_at(rec, t0) < stall_s
        return JSONResponse({"ok": ok}, status_code=200 if ok else 503)

    @app.get("/readyz")
    def readyz() -> Response:
        ok = rec.last is not None and not any(e.startswith("cycle aborted") for e in rec.last.errors)
        return JSONResponse({"ok": ok}, status_code=200 if ok else 503)

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(rec.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/status.json")
    def status_json() -> dict[str, Any]:
        return status(rec)

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return _page(rec, t0)

    return app


def serve(rec: Reconciler, *, host: str = "0.0.0.0", port: int = 8080) -> None:
    """Run the loop in a thread and the HTTP server in this one, until interrupted."""
    stop = threading.Event()
    loop = threading.Thread(target=rec.run, args=(stop,), name="reconcile", daemon=True)
    loop.start()
    try:
        uvicorn.run(create_app(rec), host=host, port=port, log_level="warning")
    finally:
        stop.set()
        loop.join(rec.s.request_timeout_s * 2)
