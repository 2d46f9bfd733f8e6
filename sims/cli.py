"""``packer simulate`` and ``packer capacity``: the simulator's command line.

``packer simulate FLEET_OR_PLAN --scenario diurnal --duration 1h --seed 1`` replays the scenario
against a plan (a ``plan.json`` from ``packer plan``, or a fleet file, planned first) and prints
per-model latency, SLO attainment and cost; ``-d/--out-dir DIR`` adds JSON, plots and an HTML report
(``--format``, ``-o FILE``: the convention of every command, ``packer.cliutil``).
``--compare OTHER`` runs a second plan (a path) or a second policy (a name) on the same traffic;
``--compare spot`` runs the plan against its all-on-demand and spot-unaware plans (``sims.spot``).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import click

from packer.cliutil import (SECONDS, SEED, Number, Spinner, check_output_dir, check_output_file, emit, format_option,
                            json_alias, out_dir_option, output_option, resolve_format, resolve_out_dir, same_traffic)
from packer.errors import UserError
from packer.fleet import Fleet
from packer.fleetfile import fleet_from_text, load_fleet
from packer.plan import Plan
from packer.planfile import is_plan_text, plan_from_text
from packer.safeload import cut_path, read_text
from packer import planner
from sims import engine, report
from sims.registry import policy_names
from sims.scenario import Scenario, load_scenario, parse_duration
from sims.spot import run_comparison


def _plan_fleet(fleet: Fleet, seed: int, time_limit_s: float | None, progress: bool = False,
                label: str = "planning the fleet") -> Plan:
    """Plan ``fleet``; a progress line on stderr while it takes (seconds to a minute)."""
    with Spinner(enabled=progress, label=label) as sp:
        return planner.plan_fleet(fleet, settings=planner.PlanSettings(seed=seed, time_limit_s=time_limit_s),
                                  progress=sp.update)


def load_plan_or_fleet(path: str, seed: int = 0, time_limit_s: float | None = None, progress: bool = False) -> Plan:
    """A plan file as is; a fleet file planned with default settings. Which one is read from the
    text, not the name: a JSON fleet named ``.json`` was "not a plan", a plan saved as ``.yaml``
    "a plan, not a fleet file". Read once (a pipe can be read only once)."""
    p = Path(path)
    text = read_text(path, "give a fleet YAML or a plan JSON from `packer plan`")
    if is_plan_text(text):
        return plan_from_text(text, cut_path(path))  # one line naming the file and the fix, whatever is wrong
    return _plan_fleet(fleet_from_text(text, str(path)), seed, time_limit_s, progress, f"planning {p.name} first")


class _Bar:
    """A progress bar on stderr, only when it is a terminal (CI logs stay clean)."""

    def __init__(self, label: str, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.label, self.last = label, -1

    def __call__(self, now: float, total: float) -> None:
        if not self.enabled:
            return
        pct = int(100 * now / total) if total > 0 else 100
        if pct != self.last:
            self.last = pct
            fill = pct // 4
            sys.stderr.write(f"\r{self.label} [{'#' * fill}{'.' * (25 - fill)}] {pct:3d}%")
            if pct >= 100:
                sys.stderr.write("\n")
            sys.stderr.flush()


def _positive(duration_s: float) -> float:
    """``--duration`` as simulate and capacity take it: above 0."""
    if not duration_s > 0:
        raise UserError("--duration must be positive. Fix: e.g. --duration 10m")
    return duration_s


def run_one(plan: Plan, scenario: Scenario, duration_s: float, seed: int, policy: str | None,
            progress: bool, label: str, duration_name: str = "--duration") -> dict[str, Any]:
    """One simulation as JSON; ``duration_name`` is where the duration came from, for the errors
    that refuse a run too long or too heavy to simulate (``sims.engine.Simulation.check``)."""
    r = engine.simulate(plan, scenario, duration_s=duration_s, seed=seed, policy=policy, progress=_Bar(label, progress),
                        duration_name=duration_name)
    return r.to_dict()


@click.command()
@click.argument("fleet_or_plan", type=click.Path(dir_okay=False))
@click.option("--scenario", "scenario_path", default="diurnal", show_default=True,
              help="Scenario YAML, or the name of a shipped one (diurnal, peak, spike, bursty, spot).")
@click.option("--duration", default=None, help="Simulated time, e.g. 10m, 1h, 1d (default: the scenario's, else 1h).")
@click.option("--policy", default=None, help="Scaling policy (default: the scenario's, else static).")
@click.option("--compare", default=None,
              help="A second plan/fleet file, or a second policy name, on the same traffic; `spot`: the plan "
                   "against its all-on-demand plan (static) and its spot-unaware plan (same policy).")
@click.option("--seed", default=0, show_default=True, type=SEED,
              help="Seed of the traffic drawn and of the planner where a fleet is planned first.")
@out_dir_option("result.json, plots (PNG and SVG) and report.html")
@format_option
@output_option("the result")
@json_alias
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def simulate(fleet_or_plan: str, scenario_path: str, duration: str | None, policy: str | None, compare: str | None,
             seed: int, out_dir: str | None, old_out_dir: str | None, fmt: str, output: str | None, as_json: bool,
             no_progress: bool) -> None:
    """Replay a traffic scenario against a plan and a scaling policy; report latency, SLOs and cost."""
    fmt = resolve_format(fmt, as_json)
    out_dir = resolve_out_dir(out_dir, old_out_dir)
    check_output_dir(out_dir, "--out-dir")
    check_output_file(output, "-o", not_=(fleet_or_plan, compare))
    scenario = load_scenario(scenario_path)
    # The scenario's duration is None or > 0 (sims.scenario refuses 0, as _positive does --duration 0).
    own = scenario.duration_s
    dur = _positive(parse_duration(duration, "--duration") if duration else (3600.0 if own is None else own))
    # The field an error about the run's length names: the option, else the scenario file's key.
    dname = "--duration" if duration or own is None else f"duration (in {scenario.source})"
    if compare and compare != "spot" and compare not in policy_names() and not Path(compare).exists():
        raise UserError(f"--compare {compare!r} is neither a policy ({', '.join(policy_names())}) nor a file")
    plan = load_plan_or_fleet(fleet_or_plan, seed, progress=not no_progress)
    other = None
    if compare == "spot":
        def run(p: Plan, pol: str | None, lab: str) -> dict[str, Any]:
            return run_one(p, scenario, dur, seed, pol, not no_progress, f"simulating {lab}", dname) | {"label": lab}

        runs = run_comparison(plan, policy, run)
        emit({"runs": runs}, fmt, lambda: report.table(runs), output)
        if out_dir:
            click.echo(f"wrote {report.write(runs, Path(out_dir))}", err=True)
        return
    if compare and compare not in policy_names():  # a second plan: checked before either simulation runs
        other = load_plan_or_fleet(compare, seed, progress=not no_progress)
        same_traffic(plan, other, fleet_or_plan, compare)
    runs = [run_one(plan, scenario, dur, seed, policy, not no_progress, "simulating", dname)]
    if compare:
        if other is None:
            runs.append(run_one(plan, scenario, dur, seed, compare, not no_progress, f"simulating {compare}", dname))
        else:
            runs.append(run_one(other, scenario, dur, seed, policy, not no_progress, "simulating the other plan",
                                dname))
    emit(runs[0] if len(runs) == 1 else {"runs": runs}, fmt, lambda: report.table(runs), output)
    if out_dir:
        page = report.write(runs, Path(out_dir))
        click.echo(f"wrote {page}", err=True)


def held(run: dict[str, Any], attainment: float) -> bool:
    """Every model meets its SLO: p99 within it, and at least ``attainment`` of requests in time.
    A model with no finished request (attainment ``None``: undefined) holds or misses on its p99."""
    return all(m["p99_ms"] <= m["slo_ms"] and (m["slo_attainment"] is None or m["slo_attainment"] >= attainment)
               for m in run["models"] if m["arrivals"] > 0)


def _worst(models: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The model with the lowest SLO attainment, among those where it is defined."""
    return min((m for m in models if m["slo_attainment"] is not None), key=lambda m: m["slo_attainment"],
               default=None)


@click.command()
@click.argument("fleet_path", type=click.Path(dir_okay=False))
@click.option("--growth", default="1,1.5,2,3", show_default=True, help="Traffic factors to plan and simulate at.")
@click.option("--scenario", "scenario_path", default="peak", show_default=True,
              help="Traffic scenario: a built-in name or a scenario YAML file.")
@click.option("--duration", default="10m", show_default=True, help="Simulated time per growth factor, e.g. 10m.")
@click.option("--policy", default=None, help="Scaling policy (default: the scenario's, else static).")
@click.option("--seed", default=0, show_default=True, type=SEED,
              help="Seed of the traffic drawn and of the planner where a fleet is planned first.")
@click.option("--attainment", default=0.99, show_default=True, type=Number(0, 1),
              help="Share of requests within the SLO that counts as holding it.")
@click.option("--time-limit", default=None, type=SECONDS, help="Planner time per growth factor, seconds.")
@out_dir_option("capacity.json and plots (PNG and SVG)")
@format_option
@output_option("the rows")
@click.option("--no-progress", is_flag=True, help="No progress line or bar.")
def capacity(fleet_path: str, growth: str, scenario_path: str, duration: str, policy: str | None, seed: int,
             attainment: float, time_limit: float | None, out_dir: str | None, old_out_dir: str | None, fmt: str,
             output: str | None, no_progress: bool) -> None:
    """Re-plan at each traffic growth factor, simulate it, and print the GPUs and cost that hold the SLOs."""
    out_dir = resolve_out_dir(out_dir, old_out_dir)
    check_output_file(output, "-o", not_=(fleet_path,))
    try:
        factors = list(dict.fromkeys(float(x) for x in growth.split(",") if x.strip()))  # each once
    except ValueError:
        raise UserError(f"--growth {growth!r}: give comma-separated numbers, e.g. 1,1.5,2,3") from None
    if not factors or any(not math.isfinite(f) or f <= 0 or f > 1000 for f in factors):
        raise UserError("--growth: every factor must be a number above 0 and at most 1000. Fix: e.g. 1,1.5,2,3")
    check_output_dir(out_dir, "--out-dir")
    fleet = load_fleet(fleet_path)
    scenario = load_scenario(scenario_path)
    dur = _positive(parse_duration(duration, "--duration"))  # capacity divided by 0 (a ZeroDivisionError)
    rows = []
    for g in factors:
        try:
            plan = _plan_fleet(fleet.with_traffic(g), seed, time_limit, not no_progress, f"planning at x{g:g}")
        except UserError as e:
            rows.append({"growth": g, "fits": False, "error": str(e)})
            continue
        run = run_one(plan, scenario, dur, seed, policy, not no_progress, f"growth x{g:g}")
        worst = _worst(run["models"])
        rows.append({"growth": g, "fits": True, "gpus": dict(plan.gpus), "gpus_total": sum(plan.gpus.values()),
                     "plan_cost_per_hour": plan.cost_per_hour, "sim_cost_per_hour": run["fleet"]["mean_cost_per_hour"],
                     "slo_attainment": run["fleet"]["slo_attainment"], "holds": held(run, attainment),
                     "requests": run["fleet"]["requests"], "worst_model": worst["name"] if worst else None,
                     "worst_attainment": worst["slo_attainment"] if worst else None})

    def text() -> str:
        lines = [f"{'growth':>7}{'GPUs':>6}  {'by pool':<28}{'cost/h':>9}{'in SLO':>9}  holds  worst model"]
        for r in rows:
            if not r["fits"]:
                lines.append(f"{r['growth']:>7g}  does not fit: {r['error']}")
                continue
            pools = ", ".join(f"{k} {v}" for k, v in r["gpus"].items())
            lines.append(f"{r['growth']:>7g}{r['gpus_total']:>6}  {pools:<28}{r['plan_cost_per_hour']:>9.2f}"
                         f"{report.attainment(r['slo_attainment'], r['requests'], '.2%'):>9}  "
                         f"{'yes' if r['holds'] else 'NO ':<5}  "
                         + (f"{r['worst_model']} {r['worst_attainment']:.2%}" if r["worst_model"] else "-"))
        return "\n".join(lines)

    emit(rows, fmt, text, output)
    if out_dir:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "capacity.json").write_text(json.dumps(rows, indent=1) + "\n")
        _plot_capacity(rows, out, f"{fleet.name}: GPUs and cost as traffic grows ({scenario.name} scenario, "
                                  f"{dur / 60:g} min simulated per factor)")
        click.echo(f"wrote {', '.join(str(out / n) for n in ('capacity.json', 'capacity.png', 'capacity.svg') if (out / n).exists())}",
                   err=True)


def _plot_capacity(rows: list[dict[str, Any]], out: Path, title: str = "Capacity as traffic grows") -> None:
    report.plot_capacity(rows, out, title)
