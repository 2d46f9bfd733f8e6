"""``packer scale``: what the scaling policy would do now, and why (a dry run; nothing changes).

``packer scale --plan plan.json --metrics snapshot.json`` reads a metrics snapshot (JSON, see
``docs/scaling.md``); ``--triton URL`` (repeatable) scrapes live Triton ``/metrics`` endpoints
twice, ``--window`` seconds apart, and sums each model's signals over the servers. ``--steady``
treats the snapshot as the load of the whole stabilisation window, so scale-down shows too (a
single snapshot is otherwise too little history to shrink on). ``-o NEXT.json`` writes the plan
the actions lead to.
"""

from __future__ import annotations

import time

import click

from packer.cliutil import Number, Spinner, check_output_file, emit, format_option, deprecated, json_alias, resolve_format
from packer.errors import UserError
from packer.plan import Plan, round_cost, save_plan
from packer.planfile import load_plan
from packer.safeload import cut_path, listing, parse_json, read_text
from packer.scaling import Replan, ScalingSettings, ScalingState, Signals, apply, decide, observe, snapshot_from_dict


SNAPSHOT_FIX = 'give a metrics snapshot JSON ({"time": s, "models": {name: {"arrival_rps": ..}}}, docs/scaling.md)'


def _read_snapshot(path: str) -> tuple[float | None, dict[str, Signals]]:
    p = cut_path(path)
    doc = parse_json(read_text(path, SNAPSHOT_FIX), p)  # bounded: size, depth, NaN, huge numbers
    try:
        return snapshot_from_dict(doc)
    except (ValueError, TypeError) as e:
        raise UserError(f"{p}: {e}. Fix: {SNAPSHOT_FIX}") from None


def _read_triton(urls: tuple[str, ...], window_s: float) -> dict[str, Signals]:
    """Scrape every server twice and sum per model (replicas of one model on several servers)."""
    from serving import metrics  # the serving extra, needed only to scrape

    t0 = time.monotonic()
    first = [metrics.scrape(u, time.monotonic()) for u in urls]
    time.sleep(max(0.0, window_s - (time.monotonic() - t0)))
    return metrics.policy_signals(metrics.signals(prev, metrics.scrape(u, time.monotonic()))
                                  for u, prev in zip(urls, first))


@click.command("scale")
@click.option("--plan", "plan_path", required=True, type=click.Path(dir_okay=False),
              help="The deployed plan (plan.json from `packer plan`).")
@click.option("--metrics", "metrics_path", type=click.Path(dir_okay=False), help="Metrics snapshot JSON.")
@click.option("--triton", "urls", multiple=True, help="Triton metrics URL (repeatable), e.g. http://host:8002/metrics.")
@click.option("--window", "window_s", default=10.0, show_default=True, type=Number(0, 3600, unit="seconds"),
              help="Seconds between the two Triton scrapes.")
@click.option("--steady", is_flag=True, help="Treat the snapshot as the whole stabilisation window (shows scale-down).")
@format_option
@json_alias
@click.option("-o", "--output", "out_path", type=click.Path(dir_okay=False), metavar="FILE",
              help="Also write the plan after the actions to FILE as JSON (what the next stage reads).")
@click.option("--out", "old_out", type=click.Path(dir_okay=False), hidden=True, help="Deprecated: use -o/--output.")
def scale(plan_path: str, metrics_path: str | None, urls: tuple[str, ...], window_s: float, steady: bool,
          fmt: str, as_json: bool, out_path: str | None, old_out: str | None) -> None:
    """Print the scaling actions for a plan under the given load, each with its reason and cost."""
    fmt = resolve_format(fmt, as_json)
    if old_out:
        deprecated("--out is deprecated; use -o/--output FILE")
        out_path = out_path or old_out
    if bool(metrics_path) == bool(urls):
        raise UserError("give exactly one of --metrics SNAPSHOT.json or --triton URL")
    check_output_file(out_path, "-o", not_=(plan_path, metrics_path))
    plan: Plan = load_plan(plan_path)  # one line naming the file and the fix, whatever is wrong
    if metrics_path:
        t, signals = _read_snapshot(metrics_path)
    else:
        with Spinner(label=f"reading {len(urls)} Triton server(s) twice, {window_s:g} s apart"):
            t, signals = None, _read_triton(urls, window_s)
    unknown = sorted(set(signals) - {m.name for m in plan.fleet.models})
    if unknown:
        raise UserError(f"metrics name models not in the plan: {listing(unknown)}. Fix: give the snapshot of "
                        "this plan's servers, or the plan they serve")
    settings = ScalingSettings()
    now = t if t is not None else 0.0
    state = ScalingState()
    if steady:  # the same load seen every 15 s over the stabilisation window
        span = settings.windows.scale_down_s
        k = int(span // 15) + 1
        for i in range(k):
            _, state = observe(plan, signals, state, now - span + 15 * i - 15, settings)
    actions, _ = decide(plan, signals, state, now, settings)
    after = apply(plan, [a for a in actions if not isinstance(a, Replan)])
    replan = any(isinstance(a, Replan) for a in actions)
    # One document for tools: the actions, and what the table's last line says (the cost before and
    # after them, and whether a re-plan is asked for), which a list of actions alone left out.
    doc = {"cost_per_hour": round_cost(plan.cost_per_hour), "cost_per_hour_after": round_cost(after.cost_per_hour),
           "replan_asked": replan,
           "actions": [{"kind": a.kind, "summary": a.summary(), "reason": a.reason,
                        "cost_per_hour": round(a.cost_per_hour, 4), "ready_in_s": round(a.ready_in_s, 1)}
                       for a in actions]}

    def text() -> str:
        lines = [] if actions else ["no action: every model is within its target and nothing can be released"]
        for a in actions:
            lines += [f"{a.kind:<14} {a.summary()}", f"{'':<14} cost {a.cost_per_hour:+.2f}/h, serving in "
                      f"{a.ready_in_s:.0f} s", f"{'':<14} because {a.reason}"]
        lines.append(f"cost per hour: {plan.cost_per_hour:.2f} -> {after.cost_per_hour:.2f}"
                     + (" (a re-plan is asked for: run `packer plan` with --current)" if replan else ""))
        return "\n".join(lines)

    emit(doc, fmt, text)
    if out_path:
        save_plan(after, out_path)
