"""``packer plan`` (the dry run a user runs first) and ``packer gpus`` (the catalog, or this machine)."""

from __future__ import annotations

import json
import sys
import threading
import time
from importlib import resources
from pathlib import Path

import click
import yaml

from packer.catalog import GPU_TYPES, mig_layouts
from packer.errors import UserError
from packer.fleet import load_fleet
from packer.plan import load_plan, save_plan, to_dict
from packer.planner import PlanSettings, plan_fleet
from packer.report import explain, summary, svg, table

DEFAULT_FLEET = "multilingual-meetings.yaml"


def example_path(name: str = DEFAULT_FLEET) -> Path:
    """A bundled example fleet (the fleets of ../shared/fleets ship inside the package)."""
    return Path(str(resources.files("packer") / "examples" / name))


class Spinner:
    """A progress line on stderr while solving takes longer than a second (TTY only)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.stage = "packing"
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Spinner":
        if self.enabled:
            self._thread.start()
        return self

    def update(self, stage: str, _elapsed: float) -> None:
        self.stage = stage

    def _run(self) -> None:
        frames = "|/-\\"
        i = 0
        while not self._stop.wait(0.2):
            el = time.monotonic() - self._t0
            if el > 1.0:
                sys.stderr.write(f"\r{frames[i % 4]} solving… {el:5.1f} s  {self.stage[:50]:<50}")
                sys.stderr.flush()
                i += 1

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self.enabled:
            self._thread.join()
            sys.stderr.write("\r" + " " * 80 + "\r")


@click.command()
@click.argument("fleet", required=False, type=click.Path(dir_okay=False))
@click.option("--current", type=click.Path(exists=True, dir_okay=False),
              help="The plan running now: keep what still fits where it is and report the moves.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "yaml"]), default="table", show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the plan (JSON) here for later stages.")
@click.option("--explain", "explain_model", metavar="MODEL", help="Explain where a model went and why.")
@click.option("--svg", "svg_path", type=click.Path(dir_okay=False), help="Draw the packing as an SVG picture.")
@click.option("--seed", default=0, show_default=True, help="Seed of the search: the same seed gives the same plan.")
@click.option("--time-limit", type=float, help="Seconds for the search (default: from the fleet size).")
@click.option("--headroom", default=0.15, show_default=True, help="Share of every slot's time kept free.")
@click.option("--no-mig", is_flag=True, help="Plan whole GPUs only.")
@click.option("--prove", "prove_s", type=float, default=None, metavar="SECONDS",
              help="Spend up to SECONDS, after the search, on an exact search that can prove the plan "
                   "optimal (fleets of tens of models). By default a short one runs on small fleets "
                   "before the search; 0 turns it off.")
def plan(fleet: str | None, current: str | None, fmt: str, output: str | None, explain_model: str | None,
         svg_path: str | None, seed: int, time_limit: float | None, headroom: float, no_mig: bool,
         prove_s: float | None) -> None:
    """Plan FLEET (default: the bundled multilingual example). A dry run: nothing is applied."""
    if not 0 <= headroom < 1:
        raise UserError(f"--headroom {headroom}: must be in [0, 1). Fix: e.g. --headroom 0.15")
    path = Path(fleet) if fleet else example_path()
    f = load_fleet(path)
    cur = load_plan(current) if current else None
    if prove_s is not None and prove_s < 0:
        raise UserError(f"--prove {prove_s}: must be 0 or more seconds. Fix: e.g. --prove 120")
    settings = PlanSettings(headroom=headroom, time_limit_s=time_limit, seed=seed, use_mig=not no_mig,
                            prove_s=prove_s)
    with Spinner(enabled=True) as sp:
        p = plan_fleet(f, settings, current=cur, progress=sp.update)
    if output:
        save_plan(p, output)
    if svg_path:
        Path(svg_path).write_text(svg(p))
    if explain_model:
        try:
            click.echo(explain(p, explain_model))
        except KeyError:
            raise UserError(f"--explain {explain_model}: no such model in {f.name}. Fix: use one of "
                            f"{', '.join(m.name for m in f.models[:8])}{', …' if len(f.models) > 8 else ''}") from None
        return
    if fmt == "json":
        click.echo(json.dumps(to_dict(p), indent=2))
    elif fmt == "yaml":
        click.echo(yaml.safe_dump(to_dict(p), sort_keys=False))
    else:
        click.echo(table(p))
        click.echo("")
        click.echo(summary(p))
        if output:
            click.echo(f"plan written to {output}")
        if svg_path:
            click.echo(f"picture written to {svg_path}")


@click.command()
@click.option("--local", is_flag=True, help="Discover this machine's GPUs with NVML and print a pool entry.")
@click.option("--layouts", "show_layouts", is_flag=True, help="Also list every valid MIG layout.")
def gpus(local: bool, show_layouts: bool) -> None:
    """The GPU catalog: memory, speed and MIG profiles of each type the planner knows."""
    if local:
        from packer.discover import read_nvml, to_pool

        found = to_pool(read_nvml())
        for d in found["devices"]:
            click.echo(f"# gpu {d['index']}: {d['product']} ({d['memory_gb']} GB) -> {d['type'] or 'unknown'}",
                       err=True)
        for m in found["mig"]:
            click.echo(f"# gpu {m['gpu']}: MIG {'on' if m['mig_enabled'] else 'off'} "
                       f"{', '.join(m['instances']) or ''}", err=True)
        click.echo(yaml.safe_dump({"pools": [found["pool"]]}, sort_keys=False))
        return
    for t in GPU_TYPES.values():
        click.echo(f"{t.name:<11} {t.memory_gb:>5g} GB nominal, {t.usable_gb:>6.1f} usable, speed {t.speed:.2f}x A100-80GB"
                   f"{'' if t.has_mig else ', no MIG'}")
        for p in t.mig_profiles:
            click.echo(f"    {p.name:<9} {p.compute_slices}/{t.compute_slices} compute, {p.memory_slices}/"
                       f"{t.memory_slices} memory slices, {p.memory_gb:5.1f} GB, up to {p.max_instances}, "
                       f"starts {list(p.placements)}")
        if t.has_mig:
            ls = mig_layouts(t.name)
            click.echo(f"    {len(ls)} maximal layouts" + ("" if show_layouts else " (--layouts lists them)"))
            if show_layouts:
                for l in ls:
                    click.echo(f"      {l.name:<60} create: {' '.join(l.creation_order)}")
