"""``packer render triton`` and ``packer serve-local``: the plan as Triton runs it."""

from __future__ import annotations

import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import click

from packer.cliutil import Number, check_output_dir
from packer.errors import UserError
from packer.plan import Placement, Plan, load_plan
from serving.settings import RenderSettings


def _load(path: str) -> Plan:
    # load_plan says what is wrong in one line; a fleet file is told to be planned first, into
    # plan.json, never to be overwritten by `packer plan FLEET -o` the fleet's own path.
    return load_plan(path)


def _settings_options(f):
    f = click.option("--sequence-idle-s", type=Number(0, 1e6, lo_open=True, unit="seconds"),
                     default=RenderSettings.sequence_idle_s, show_default=True,
                     help="Silence after which Triton drops a stream's state.")(f)
    f = click.option("--time-scale", type=Number(0, 1e6, lo_open=True), default=RenderSettings.time_scale,
                     show_default=True,
                     help="Multiply the stand-in models' run time (demos: < 1).")(f)
    return f


@click.command("triton")
@click.argument("plan_path", metavar="PLAN", type=click.Path(dir_okay=False))
@click.option("-o", "--out", "out", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--device", type=click.Choice(["gpu", "cpu"]), default="gpu", show_default=True,
              help="Instance kind: gpu for clusters, cpu to try the stand-ins without a GPU.")
@click.option("--gpu-index", type=click.Choice(["slot", "node"]), default="slot", show_default=True,
              help="Number GPUs as the server's container sees its slot (slot) or as the node does (node).")
@click.option("--groups", type=Number(1, 10**6, integer=True), default=None, help="Only the first N packed groups.")
@_settings_options
def render_triton(plan_path: str, out: str, device: str, gpu_index: str, groups: int | None,
                  sequence_idle_s: float, time_scale: float) -> None:
    """Write one Triton model repository per packed group and workload class."""
    from serving.repository import repositories, write

    check_output_dir(out, "-o")
    plan = _load(plan_path)
    settings = RenderSettings(device=device, gpu_index=gpu_index, sequence_idle_s=sequence_idle_s,
                              time_scale=time_scale)
    repos = repositories(plan, settings, groups=groups)
    index = write(repos, Path(out))
    for r in repos:
        click.echo(f"{r.key}: {', '.join(r.names)}")
    click.echo(f"{len(repos)} repositories from {len(plan.placements if groups is None else plan.placements[:groups])} "
               f"packed groups; index at {index}")


def _pick(plan: Plan, group: str) -> Placement:
    if group.isdigit():
        i = int(group)
        if i >= len(plan.placements):
            raise UserError(f"the plan has {len(plan.placements)} packed groups; give --group 0..{len(plan.placements) - 1}")
        return plan.placements[i]
    for p in plan.placements:
        if p.id == group:
            return p
    raise UserError(f"no packed group {group!r}; give an index or one of: "
                    + ", ".join(p.id for p in plan.placements[:10]))


@click.command("serve-local")
@click.argument("plan_path", metavar="PLAN", type=click.Path(dir_okay=False))
@click.option("--group", default="0", show_default=True, help="Packed group: index or slot id.")
@click.option("--seconds", type=Number(0, 1e7, lo_open=True, unit="seconds"), default=None,
              help="Stop after this long (default: until Ctrl-C).")
@_settings_options
def serve_local(plan_path: str, group: str, seconds: float | None, sequence_idle_s: float, time_scale: float) -> None:
    """Serve one packed group on this machine with a real tritonserver (stand-in models on CPU).

    The group's streaming and batch repositories load into one server, as in production: the
    slot's members take turns on its rate limiter across both workload classes, as on the GPU.
    """
    from serving.local import LocalTriton
    from serving.repository import group_repositories, write_repository

    plan = _load(plan_path)
    placement = _pick(plan, group)
    settings = RenderSettings(device="cpu", sequence_idle_s=sequence_idle_s, time_scale=time_scale)
    with tempfile.TemporaryDirectory(prefix="packer-serve-") as tmp, ExitStack() as stack:
        repos = group_repositories(plan, placement, settings)
        paths = [write_repository(repo, Path(tmp) / repo.kind) for repo in repos]
        server = stack.enter_context(LocalTriton(paths))
        for repo in repos:
            click.echo(f"{placement.id} {repo.kind}: {', '.join(repo.names)}")
        click.echo(f"  http {server.http_url}  grpc {server.grpc_url}  metrics {server.metrics_url}")
        click.echo("serving; Ctrl-C stops" if seconds is None else f"serving for {seconds:g} s")
        try:
            deadline = None if seconds is None else time.monotonic() + seconds
            while deadline is None or time.monotonic() < deadline:
                time.sleep(0.2)
        except KeyboardInterrupt:
            pass
    click.echo("stopped")
