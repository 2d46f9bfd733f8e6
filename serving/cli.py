"""``packer render triton`` and ``packer serve-local``: the plan as Triton runs it."""

from __future__ import annotations

import json
import shlex
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import click

from packer.cliutil import Number, Spinner, check_output_dir, emit, format_option, out_dir_option, resolve_out_dir
from packer.errors import UserError
from packer.plan import Placement, Plan
from packer.planfile import load_plan
from serving import local
from serving.repository import Repository, group_repositories, missing_artifacts, repositories, write, write_repository
from serving.settings import TritonSettings


def _load(path: str) -> Plan:
    # load_plan says what is wrong in one line; a fleet file is told to be planned first, into
    # plan.json, never to be overwritten by `packer plan FLEET -o` the fleet's own path.
    return load_plan(path)


def _check_artifacts(repos: list[Repository], *, allow_missing: bool, fix: str) -> dict[str, str]:
    """Refuse (or, with ``allow_missing``, warn about) local artifacts that are not on this machine.

    A missing path would be linked as a dangling ``1/<file>`` and fail only when Triton loads the
    model; said now, it is a typo fixed in seconds. The render may run on a build machine that does
    not hold the weights, hence the opt-out, which still warns once per model on stderr. Returns
    the missing artifacts (model -> path)."""
    missing = missing_artifacts(repos)
    if missing and not allow_missing:
        (name, path), *rest = missing.items()
        more = f" (and {len(rest)} more: {', '.join(n for n, _ in rest)})" if rest else ""
        raise UserError(f"model {name}: artifact {path} does not exist on this machine, so Triton could not load "
                        f"it{more}. Fix: correct `artifact` in the fleet and plan again{fix}")
    for name, path in missing.items():
        click.echo(f"warning: model {name}: artifact {path} does not exist on this machine; linked anyway, "
                   "Triton loads it only where that path exists", err=True)
    return missing


def _settings_options(f):
    f = click.option("--sequence-idle-s", type=Number(0, 1e6, lo_open=True, unit="seconds"),
                     default=TritonSettings.sequence_idle_s, show_default=True,
                     help="Silence after which Triton drops a stream's state.")(f)
    f = click.option("--time-scale", type=Number(0, 1e6, lo_open=True), default=TritonSettings.time_scale,
                     show_default=True,
                     help="Multiply the stand-in models' run time (demos: < 1).")(f)
    f = click.option("--shed/--no-shed", default=TritonSettings.shed, show_default=True,
                     help="Reject requests that can no longer meet their SLO in the server (Triton's queue "
                          "policy). Costs missed batcher wake-ups the plan's bounds do not count: "
                          "docs/serving.md.")(f)
    return f


@click.command("triton")
@click.argument("plan_path", metavar="PLAN", type=click.Path(dir_okay=False))
@out_dir_option("one model repository per packed group and class, and index.json", old=("-o", "--out"))
@click.option("--device", type=click.Choice(["gpu", "cpu"]), default="gpu", show_default=True,
              help="Instance kind: gpu for clusters, cpu to try the stand-ins without a GPU.")
@click.option("--gpu-index", type=click.Choice(["slot", "node"]), default="slot", show_default=True,
              help="Number GPUs as the server's container sees its slot (slot) or as the node does (node).")
@click.option("--groups", type=Number(1, 10**6, integer=True), default=None, help="Only the first N packed groups.")
@click.option("--allow-missing-artifacts", is_flag=True,
              help="Link local artifact paths this machine does not have (they exist where Triton runs): "
                   "a warning per model instead of an error.")
@_settings_options
@format_option
def render_triton(plan_path: str, out_dir: str | None, old_out_dir: str | None, device: str, gpu_index: str,
                  groups: int | None, allow_missing_artifacts: bool, sequence_idle_s: float, time_scale: float,
                  shed: bool, fmt: str) -> None:
    """Write one Triton model repository per packed group and workload class to DIR.

    A local artifact path (or file:// URI) must exist on this machine, or the render stops before
    writing anything; --allow-missing-artifacts links it anyway when it exists only where Triton runs.
    """
    out = resolve_out_dir(out_dir, old_out_dir, "-o/--out")
    if not out:
        raise UserError("no output directory. Fix: give -d/--out-dir DIR, e.g. -d triton-out/")
    check_output_dir(out, "--out-dir")
    plan = _load(plan_path)
    settings = TritonSettings(device=device, gpu_index=gpu_index, sequence_idle_s=sequence_idle_s,
                              time_scale=time_scale, shed=shed)
    repos = repositories(plan, settings, groups=groups)
    missing = _check_artifacts(repos, allow_missing=allow_missing_artifacts,
                               fix=", or pass --allow-missing-artifacts if it exists where Triton runs")
    index = write(repos, Path(out))
    n = len(plan.placements if groups is None else plan.placements[:groups])
    doc = {"plan": plan.id, "out_dir": out, "index": str(index),
           "repositories": [{"slot": r.slot, "kind": r.kind, "models": list(r.names)} for r in repos]}
    if missing:
        doc["missing_artifacts"] = missing
    emit(doc, fmt, lambda: "\n".join([f"{r.key}: {', '.join(r.names)}" for r in repos]
                                     + [f"{len(repos)} repositories from {n} packed groups; index at {index}"]))


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


def _queue_delay_ms(cfg: object) -> float:
    """The longest a request of this model waits for its batch to form, as the config says."""
    us = (cfg.sequence_batching.oldest.max_queue_delay_microseconds if cfg.HasField("sequence_batching")
          else cfg.dynamic_batching.max_queue_delay_microseconds)
    return us / 1000.0


def example_request(http_url: str, model: str, sequence: bool) -> str:
    """A ready-to-paste ``curl`` against Triton's HTTP v2 infer endpoint with the stand-in's input:
    ``INPUT``, FP32, shape ``[1, 1]`` (a batch of one item); a sequence model's request opens and
    closes its own sequence, so it runs alone."""
    body = {"inputs": [{"name": "INPUT", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}]}
    if sequence:
        body["parameters"] = {"sequence_id": 1, "sequence_start": True, "sequence_end": True}

    return (f"curl -s -X POST http://{http_url}/v2/models/{model}/infer -H 'Content-Type: application/json' "
            f"-d {shlex.quote(json.dumps(body, separators=(',', ':')))}")


def endpoints(placement: Placement, repo: object, server: object) -> dict:
    """What a user needs of one running server: its addresses, a request to try, and how long its
    requests wait by design (a batch server holds each request up to its queue delay, so one
    request alone is answered late on purpose, not because the server hangs)."""
    first = repo.models[0]
    stand_in = "artifact_uri" not in first.config.parameters
    seq = first.config.HasField("sequence_batching")
    waits = {m.name: round(_queue_delay_ms(m.config), 1) for m in repo.models}
    doc = {"slot": placement.id, "kind": repo.kind, "models": list(repo.names), "http": server.http_url,
           "grpc": server.grpc_url, "metrics": server.metrics_url,
           "health": f"http://{server.http_url}/v2/health/ready",
           "try": (example_request(server.http_url, first.name, seq) if stand_in
                   else f"curl -s http://{server.http_url}/v2/models/{first.name}  # its inputs"),
           "queue_delay_ms": waits, "duty_cycle_ms": round(placement.duty_cycle_ms, 1)}
    return doc


def endpoints_text(doc: dict) -> str:
    lines = [f"{doc['slot']} {doc['kind']}: {', '.join(doc['models'])}",
             f"  HTTP http://{doc['http']}  gRPC {doc['grpc']}  metrics {doc['metrics']}",
             f"  try: {doc['try']}"]
    if doc["kind"] == "batch":
        wait = max(doc["queue_delay_ms"].values())
        lines.append(f"  note: a batch group: each request waits up to {wait:g} ms for its batch to form, by design "
                     f"(the slot's duty cycle is {doc['duty_cycle_ms']:g} ms); a slow single answer is not a hang")
    return "\n".join(lines)


@click.command("serve-local")
@click.argument("plan_path", metavar="PLAN", type=click.Path(dir_okay=False))
@click.option("--group", default="0", show_default=True, help="Packed group: index or slot id.")
@click.option("--seconds", type=Number(0, 1e7, lo_open=True, unit="seconds"), default=None,
              help="Stop after this long (default: until Ctrl-C).")
@_settings_options
@format_option
def serve_local(plan_path: str, group: str, seconds: float | None, sequence_idle_s: float, time_scale: float,
                shed: bool, fmt: str) -> None:
    """Serve one packed group on this machine with a real tritonserver (stand-in models on CPU).

    The group's streaming and batch repositories load into one server, as in production: the
    slot's members take turns on its rate limiter across both workload classes, as on the GPU.
    Once it is ready it prints its endpoints and a request to paste per class (--format json:
    the same as JSON).
    """
    plan = _load(plan_path)
    placement = _pick(plan, group)
    settings = TritonSettings(device="cpu", sequence_idle_s=sequence_idle_s, time_scale=time_scale, shed=shed)
    with tempfile.TemporaryDirectory(prefix="packer-serve-") as tmp, ExitStack() as stack:
        repos = group_repositories(plan, placement, settings)
        # this server runs here: a missing local artifact would only fail its load a minute later
        _check_artifacts(repos, allow_missing=False, fix=" (serve-local runs Triton on this machine)")
        paths = [write_repository(repo, Path(tmp) / repo.kind) for repo in repos]
        # tritonserver takes up to a minute to load a group's models: say so while it does
        with Spinner(label=f"starting tritonserver for {placement.id}"):
            server = stack.enter_context(local.LocalTriton(paths))
        docs = [endpoints(placement, repo, server) for repo in repos]
        emit({"groups": docs}, fmt, lambda: "\n".join(endpoints_text(d) for d in docs))
        click.echo("serving; Ctrl-C stops" if seconds is None else f"serving for {seconds:g} s", err=fmt != "table")
        try:
            deadline = None if seconds is None else time.monotonic() + seconds
            while deadline is None or time.monotonic() < deadline:
                time.sleep(0.2)
        except KeyboardInterrupt:
            pass
    click.echo("stopped", err=fmt != "table")
