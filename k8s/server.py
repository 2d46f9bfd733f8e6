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

from fastapi import FastAPI, Response
from fastapi.responses import HTMLResponse, JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from k8s.reconciler import Reconciler


def status(rec: Reconciler) -> dict[str, Any]:
    rep = rec.last
    plan = rep.plan if rep else None
    return {
        "identity": rec.identity,
        "leader": bool(rep and rep.leader),
        "cycles": rec.cycles,
        "plan": None if plan is None else {
            "id": plan.id, "cost_per_hour": plan.cost_per_hour,
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


def _page(rec: Reconciler) -> str:
    from packer.report import svg

    st = status(rec)
    rep = rec.last
    e = html.escape
    parts = [f"<h1>packer reconciler <small>{e(rec.identity)}</small></h1>"]
    if rep is None:
        parts.append("<p>No cycle yet.</p>")
    elif not rep.leader:
        parts.append("<p>Follower: another replica holds the lease and does the work.</p>")
    if st["plan"]:
        p = st["plan"]
        parts.append(f"<p>Plan <code>{e(p['id'])}</code>: {p['groups']} groups, {e(str(p['gpus']))}, "
                     f"${p['cost_per_hour']:.2f}/h (lower bound ${p['lower_bound_cost_per_hour']:.2f}/h, "
                     f"gap {p['gap']:.1%})</p>")
        parts.append(f"<div>{svg(rep.plan)}</div>")  # type: ignore[union-attr, arg-type]
    for title, items in (("Waiting", (st["last_cycle"] or {}).get("waiting", [])),
                         ("Conflicts", (st["last_cycle"] or {}).get("conflicts", [])),
                         ("Errors", (st["last_cycle"] or {}).get("errors", []))):
        if items:
            parts.append(f"<h2>{title}</h2><ul>" + "".join(f"<li>{e(i)}</li>" for i in items) + "</ul>")
    parts.append("<h2>Last actions</h2><table><tr><th>at</th><th>action and reason</th></tr>" + "".join(
        f"<tr><td>{e(a['at'])}</td><td>{e(a['action'])}</td></tr>" for a in st["recent_actions"]) + "</table>")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>packer</title><style>"
            "body{font-family:sans-serif;margin:2em}td{padding:2px 8px;vertical-align:top}</style></head>"
            f"<body>{''.join(parts)}</body></html>")


def create_app(rec: Reconciler, *, started: float | None = None) -> FastAPI:
    app = FastAPI(title="packer reconciler", docs_url=None, redoc_url=None)
    t0 = started if started is not None else rec.clock()
    stall_s = 3 * rec.s.interval_s + rec.s.request_timeout_s * rec.s.max_attempts

    @app.get("/healthz")
    def healthz() -> Response:
        last = rec.last_cycle_end or t0
        ok = rec.clock() - last < stall_s
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
        return _page(rec)

    return app


def serve(rec: Reconciler, *, host: str = "0.0.0.0", port: int = 8080) -> None:
    """Run the loop in a thread and the HTTP server in this one, until interrupted."""
    import uvicorn

    stop = threading.Event()
    loop = threading.Thread(target=rec.run, args=(stop,), name="reconcile", daemon=True)
    loop.start()
    try:
        uvicorn.run(create_app(rec), host=host, port=port, log_level="warning")
    finally:
        stop.set()
        loop.join(rec.s.request_timeout_s * 2)
