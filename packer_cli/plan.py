"""``packer plan`` (the dry run a user runs first) and ``packer gpus`` (the catalog, or this machine)."""

from __future__ import annotations

import json
from difflib import get_close_matches
from importlib import resources
from pathlib import Path

import click
import yaml

from packer.catalog import GPU_TYPES, mig_layouts
from packer.cliutil import (SECONDS, SEED, Number, Spinner, check_output_file, dump, emit, format_option, output_option,
                            same_fleet, write_output)
from packer.errors import UserError
from packer.fleetfile import load_fleet
from packer.plan import save_plan, to_dict
from packer.planfile import load_plan
from packer.planner import PlanSettings, plan_fleet
from packer.planner.solve import PATTERN_FIRST, WALL_CAP, with_insurance
from packer.planner.spot import exposure_doc
from packer.report import explain, moves, summary, svg, table
from packer_cli.discover import read_nvml, to_pool

__all__ = ["Spinner", "example_path", "gpus", "plan"]  # Spinner moved to packer.cliutil; kept importable

DEFAULT_FLEET = "multilingual-meetings.yaml"


def example_path(name: str = DEFAULT_FLEET) -> Path:
    """A bundled example fleet (the fleets of ../shared/fleets ship inside the package)."""
    return Path(str(resources.files("packer") / "examples" / name))


@click.command()
@click.argument("fleet", required=False, type=click.Path(dir_okay=False))
@click.option("--current", type=click.Path(dir_okay=False),
              help="The plan running now: keep what still fits where it is and report the moves.")
@format_option
@output_option("the plan (what render, simulate, scale and serve-local read)")
@click.option("--explain", "explain_model", metavar="MODEL", help="Explain where a model went and why.")
@click.option("--svg", "svg_path", type=click.Path(dir_okay=False), help="Draw the packing as an SVG picture.")
@click.option("--seed", default=PlanSettings.seed, show_default=True, type=SEED,
              help="Seed of the search: the same seed gives the same plan.")
@click.option("--time-limit", type=SECONDS,
              help="Seconds for the search (default: from the fleet size). Counted as the solvers' "
                   "deterministic time, so a seed gives one plan on any machine; the greedy start, the "
                   "baselines and the bound's last step come on top, and a plan can take about twice it (at a "
                   "short limit on thousands of models they take about 17 ms a model: 3,000 models at 2 s "
                   "took 51 s); past "
                   f"{PATTERN_FIRST} models the packing and its search stop at {WALL_CAP:g} times it on the "
                   "wall clock (the plan says where that happens; --reproducible lifts it).")
@click.option("--headroom", default=PlanSettings.headroom, show_default=True, type=Number(0, 0.99),
              help="Share of every slot's time kept free.")
@click.option("--no-mig", is_flag=True, help="Plan whole GPUs only.")
@click.option("--prove", "prove_s", type=Number(0, 1e6, unit="seconds"), default=None, metavar="SECONDS",
              help="Spend up to SECONDS closing the gap (fleets of tens of models): up to a quarter "
                   "looking for a plan inside each cheaper GPU purchase, the rest on an exact search "
                   "that can prove the plan optimal. By default a short exact search runs on small "
                   "fleets before the search; 0 turns it off.")
@click.option("--reproducible", is_flag=True,
              help="Let the counted time alone end every stage: the same seed gives the same plan on "
                   "any machine and load, however long that takes there. Without it, a machine slower "
                   "or busier than the counts assume may have a stage ended by the wall clock first "
                   "(the plan warns where).")
def plan(fleet: str | None, current: str | None, fmt: str, output: str | None, explain_model: str | None,
         svg_path: str | None, seed: int, time_limit: float | None, headroom: float, no_mig: bool,
         prove_s: float | None, reproducible: bool) -> None:
    """Plan FLEET (default: the bundled multilingual example). A dry run: nothing is applied."""
    if not 0 <= headroom < 1:
        raise UserError(f"--headroom {headroom}: must be in [0, 1). Fix: e.g. --headroom {PlanSettings.headroom}")
    if fleet is not None and not fleet.strip():  # an unset $FLEET: not the bundled example
        raise UserError("FLEET: the path is empty. Fix: give a fleet file, or leave FLEET out for the bundled example")
    path = Path(fleet) if fleet else example_path()
    # Everything a user can get wrong is checked before the solve, which may take minutes.
    check_output_file(output, "-o", not_=(fleet, current))
    check_output_file(svg_path, "--svg", not_=(fleet, current))
    f = load_fleet(path)
    if explain_model is not None and explain_model not in {m.name for m in f.models}:  # before the solve
        raise UserError(f"--explain {explain_model!r}: no such model in {f.name}. Fix: use one of "
                        f"{', '.join(m.name for m in f.models[:8])}{', …' if len(f.models) > 8 else ''}")
    cur = load_plan(current) if current else None
    if cur is not None:
        same_fleet(cur.fleet, f, current, str(path))
    settings = PlanSettings(headroom=headroom, time_limit_s=time_limit, seed=seed, use_mig=not no_mig,
                            prove_s=prove_s, reproducible=reproducible)
    with Spinner(enabled=True) as sp:
        p = plan_fleet(f, settings, current=cur, progress=sp.update)
        if cur is None:  # the price of the on-demand floors: the same fleet planned free of them

            p = with_insurance(p, settings)
    doc = to_dict(p)
    spot = exposure_doc(p)
    if spot is not None:  # derived, so not part of the Plan: what the plan keeps when spot goes
        doc["spot_exposure"] = spot
    if output:
        try:
            Path(output).write_text(json.dumps(doc, indent=2) + "\n")
        except OSError as e:  # checked before the solve; the disk may still fill or the directory go
            raise UserError(f"-o {output}: cannot be written ({e.strerror or e}). Fix: give a writable path") from None
    if svg_path:
        write_output(svg_path, svg(p), "--svg")
    if explain_model is not None:
        text = explain(p, explain_model)
        # --format json/yaml asks for a document a tool can read: the explanation's lines in one
        click.echo(text if fmt == "table" else dump({"plan": p.id, "model": explain_model,
                                                     "explanation": text.splitlines()}, fmt))
        return
    if fmt != "table":
        click.echo(dump(doc, fmt))  # the moves are the plan's `moves` list
    else:
        click.echo(table(p))
        click.echo("")
        click.echo(summary(p))
        if cur is not None and not p.moves:
            click.echo(moves(p))  # say so: "0 moves" is what an unchanged fleet should show
        if output:
            click.echo(f"plan written to {output}")
        if svg_path:
            click.echo(f"picture written to {svg_path}")


def _gpu_doc(t: object, layouts: bool) -> dict:
    """One catalog entry as plain data (``--format json|yaml``)."""
    d = {"name": t.name, "memory_gb": t.memory_gb, "usable_gb": t.usable_gb, "speed": t.speed,
         "mig": t.has_mig,
         "mig_profiles": [{"name": p.name, "compute_slices": p.compute_slices, "memory_slices": p.memory_slices,
                           "memory_gb": p.memory_gb, "max_instances": p.max_instances,
                           "placements": list(p.placements)} for p in t.mig_profiles]}
    if t.has_mig:
        ls = mig_layouts(t.name)
        d["maximal_layouts"] = len(ls)
        if layouts:
            d["layouts"] = [{"name": l.name, "creation_order": list(l.creation_order)} for l in ls]
    return d


def _gpu_lines(t: object, layouts: bool) -> list[str]:
    out = [f"{t.name:<11} {t.memory_gb:>5g} GB nominal, {t.usable_gb:>6.1f} usable, speed {t.speed:.2f}x A100-80GB"
           f"{'' if t.has_mig else ', no MIG'}"]
    for p in t.mig_profiles:
        out.append(f"    {p.name:<9} {p.compute_slices}/{t.compute_slices} compute, {p.memory_slices}/"
                   f"{t.memory_slices} memory slices, {p.memory_gb:5.1f} GB, up to {p.max_instances}, "
                   f"starts {list(p.placements)}")
    if t.has_mig:
        ls = mig_layouts(t.name)
        out.append(f"    {len(ls)} maximal layouts" + ("" if layouts else f" (--layouts {t.name} lists them)"))
        if layouts:
            out += [f"      {l.name:<60} create: {' '.join(l.creation_order)}" for l in ls]
    return out


@click.command()
@click.argument("gpu_type", required=False, metavar="[GPU_TYPE]")
@click.option("--local", is_flag=True, help="Discover this machine's GPUs with NVML and print a pool entry.")
@click.option("--layouts", "layouts", is_flag=False, flag_value="all", default=None, metavar="[GPU_TYPE]",
              help="Also list every valid MIG layout; --layouts a100-80gb shows that GPU type only.")
@format_option
@output_option("the catalog entries shown")
def gpus(gpu_type: str | None, local: bool, layouts: str | None, fmt: str, output: str | None) -> None:
    """The GPU catalog: memory, speed and MIG profiles of each type the planner knows.

    GPU_TYPE (or --layouts GPU_TYPE) shows that type only: the 37 layouts of an A100 are what a user asks
    for, not every type's.
    """


    check_output_file(output, "-o")
    for what, given in (("GPU_TYPE", gpu_type), ("--layouts", layouts)):
        if given is not None and not given.strip():
            raise UserError(f"{what}: is empty. Fix: give a GPU type (packer gpus lists them), or leave it out")
    if local:
        found = to_pool(read_nvml())
        doc = {"pools": [found["pool"]]}
        if fmt == "table":
            for d in found["devices"]:
                click.echo(f"# gpu {d['index']}: {d['product']} ({d['memory_gb']} GB) -> {d['type'] or 'unknown'}",
                           err=True)
            for m in found["mig"]:
                click.echo(f"# gpu {m['gpu']}: MIG {'on' if m['mig_enabled'] else 'off'} "
                           f"{', '.join(m['instances']) or ''}", err=True)
        emit(doc, fmt, lambda: yaml.safe_dump(doc, sort_keys=False).rstrip("\n"), output)
        return
    want = [x for x in (gpu_type, layouts if layouts != "all" else None) if x]
    if len(set(want)) > 1:
        raise UserError(f"GPU_TYPE {want[0]} and --layouts {want[1]}: two GPU types. Fix: give one")
    types = list(GPU_TYPES.values())
    if want:
        name = want[0].lower()
        if name not in GPU_TYPES:
            near = get_close_matches(name, list(GPU_TYPES), n=1) or [t for t in GPU_TYPES if t.startswith(name)][:1]
            raise UserError(f"{'--layouts' if layouts == want[0] else 'GPU_TYPE'} {want[0]}: not a GPU type packer "
                            f"knows. Fix: {'did you mean ' + near[0] + '? ' if near else ''}"
                            f"known types: {', '.join(GPU_TYPES)}")
        types = [GPU_TYPES[name]]
    show = layouts is not None
    doc = {"gpus": [_gpu_doc(t, show) for t in types]}
    emit(doc, fmt, lambda: "\n".join(line for t in types for line in _gpu_lines(t, show)), output)
