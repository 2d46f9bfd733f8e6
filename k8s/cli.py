"""``packer render k8s`` and ``packer reconcile``: the Kubernetes adapter's commands.

Nothing reaches a cluster that a dry run has not shown: ``reconcile --dry-run`` prints the diff of
one cycle and writes nothing; without it the reconciler runs its loop (normally in the cluster).
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import click
import yaml

from k8s.devices import parse_form
from k8s.names import check_namespace
from k8s.render import devices_of, node_labels, render_plan
from k8s.settings import ManifestSettings, ReconcileSettings

from packer.cliutil import (Number, Spinner, check_output_dir, check_output_file, emit, format_option, note,
                            out_dir_option, output_option, resolve_out_dir)
from packer.errors import UserError
from packer.plan import Plan
from packer.planfile import load_plan
from packer.safeload import MAX_BYTES


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings as ``|`` block scalars: a ConfigMap's file (the mig-parted config, a
    model's config.pbtxt) reads as the file it is, not as one escaped line."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None  # PyYAML still quotes what a block cannot hold
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str)


def dump_objects(objs: list[dict]) -> str:
    """Kubernetes objects as one multi-document YAML file, multi-line strings as block scalars."""
    return yaml.dump_all(objs, Dumper=_BlockDumper, sort_keys=False, allow_unicode=True)


LABELS_DIR = "labels"
"""Node labels live here: ``kubectl apply -f DIR`` reads only DIR's own *.yaml/*.yml/*.json files,
each of which must be a Kubernetes object, and a list of labels is not one."""
LABEL_SCRIPT = "label-nodes.sh"


def label_script(plan_id: str, labels: dict[str, dict[str, str]]) -> str:
    """``kubectl label node`` for each logical node, its real node named by an environment variable.

    The plan's nodes (``a100-n0``) are logical; which real node plays each is the operator's
    choice (the reconciler binds them itself), so the script asks for the mapping rather than
    guess: ``NODE_A100_N0=gpu-node-7 sh label-nodes.sh``.
    """
    lines = ["#!/bin/sh", f"# Node labels of plan {plan_id} (packer render k8s). The reconciler sets them itself;",
             "# run this only to deploy without it. Name the real node of each logical node, e.g.:"]
    env = {node: "NODE_" + re.sub(r"[^A-Za-z0-9]", "_", node).upper() for node in labels}
    lines.append("#   " + " ".join(f"{v}=<node>" for v in env.values()) + f" sh {LABEL_SCRIPT}")
    lines.append("set -eu")
    for node, ls in labels.items():
        kv = " ".join(shlex.quote(f"{k}={v}") for k, v in sorted(ls.items()))
        lines.append(f'kubectl label node --overwrite "${{{env[node]}:?set {env[node]} to the real node of '
                     f'logical node {re.sub(r"[^A-Za-z0-9._-]", "_", node)}}}" {kv}')  # never shell code
    return "\n".join(lines) + "\n"


def _devices(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, str | None]:
    try:
        return parse_form(value)
    except UserError as e:
        raise click.BadParameter(str(e).split(": ", 1)[1]) from None


def _namespace(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        return check_namespace(value, param.opts[0])
    except UserError as e:
        raise click.BadParameter(str(e).split(" ", 1)[1]) from None


_IMAGE = re.compile(r"[a-z0-9]([a-z0-9._/:-]*[a-z0-9])?(@sha256:[0-9a-f]{64})?", re.IGNORECASE)


def _image(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """An image reference as a container's ``image:`` takes it (``name[:tag][@sha256:digest]``): one
    with a space or a quote was written into every Deployment, and refused only when applied."""
    if value is not None and not _IMAGE.fullmatch(value):
        raise click.BadParameter(f"{value!r} is not an image reference. Fix: e.g. "
                                 "nvcr.io/nvidia/tritonserver:24.08-py3 (name[:tag][@sha256:digest])")
    return value


def image_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--triton-image`` and ``--fetch-image``, checked as image references when parsed (``_image``)."""
    f = click.option("--fetch-image", default=None, callback=_image,
                     help="Image of the init container that fetches artifacts (needs sh, wget, sha256sum).")(f)
    return click.option("--triton-image", default=None, callback=_image,
                        help="tritonserver image (default: a release tag; pin by digest: name@sha256:...).")(f)


def namespace_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--namespace`` and ``--gpu-operator-namespace``, checked as namespace names when parsed:
    before a plan is read or a cluster reached, one line names the flag and the rule."""
    f = click.option("--gpu-operator-namespace", default="gpu-operator", show_default=True, callback=_namespace,
                     help="Namespace the device plugin and mig-manager read their ConfigMaps from.")(f)
    return click.option("--namespace", default="packer", show_default=True, callback=_namespace,
                        help="Namespace of the serving objects (and of the reconciler).")(f)


devices_option = click.option(
    "--devices", default="device-plugin", show_default=True, callback=_devices, metavar="FORM",
    help="How each server gets its GPU: device-plugin (nvidia.com/gpu, nvidia.com/mig-*), dra (a ResourceClaim "
         "per slot, NVIDIA DRA driver), hami (HAMi gpumem/gpucores shares) or kai[:QUEUE] (KAI Scheduler "
         "gpu-fraction shares). See docs/kubernetes.md, 'Device backends'.")


def devices_settings(devices: tuple[str, str | None]) -> dict[str, str]:
    """``--devices`` as ManifestSettings fields."""
    form, queue = devices
    return {"devices": form, **({"kai_queue": queue} if queue else {})}


def devices_lines(plan: Plan, s: ManifestSettings, deployments: list[dict]) -> str:
    """What a backend other than the default needs, and what the plan's slots lose under it."""
    dev = devices_of(s)
    if dev.name == "device-plugin":
        return ""
    lines = [f"devices: {dev.name}: needs {dev.needs}"]
    mig = sum(p.slot != "whole" for p in plan.placements)
    if mig and dev.shares:
        lines.append(f"devices: {mig} MIG slot(s) {dev.shares}")
    stop_first = [d["metadata"]["name"] for d in deployments
                  if d["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0]
    if stop_first:
        more = ", ..." if len(stop_first) > 3 else ""
        lines.append(f"devices: {len(stop_first)} server(s) would not fit twice on their claimed device: a rolling "
                     f"update stops the old pod first ({', '.join(stop_first[:3])}{more})")
    return "".join(line + "\n" for line in lines)


@click.command("k8s")
@click.argument("plan_path", metavar="PLAN", type=click.Path(dir_okay=False))
@out_dir_option("the objects (one file per kind), labels/ and label-nodes.sh", old=("-o", "--out"))
@namespace_options
@image_options
@devices_option
@format_option
def render_k8s(plan_path: str, out_dir: str | None, old_out_dir: str | None, namespace: str,
               gpu_operator_namespace: str, triton_image: str | None, fetch_image: str | None,
               devices: tuple[str, str | None], fmt: str) -> None:
    """Write the plan's Kubernetes objects to DIR, one file per kind: `kubectl apply -f DIR` takes it.

    The labels each real node must carry (the reconciler sets them) go to DIR/labels/, which
    `kubectl apply -f DIR` does not read, and DIR/label-nodes.sh runs `kubectl label node` for them.
    """
    out = resolve_out_dir(out_dir, old_out_dir, "-o/--out")
    if not out:
        raise UserError("no output directory. Fix: give -d/--out-dir DIR, e.g. -d k8s-out/")
    check_output_dir(out, "--out-dir")
    plan = load_plan(plan_path)  # every problem is one line naming the file and the fix
    s = ManifestSettings(namespace=namespace, gpu_operator_namespace=gpu_operator_namespace, **devices_settings(devices))
    if triton_image:
        s = replace(s, triton_image=triton_image)
    if fetch_image:
        s = replace(s, fetch_image=fetch_image)
    objs = render_plan(plan, s)
    by_kind: dict[str, list[dict]] = defaultdict(list)
    for o in objs:
        by_kind[o["kind"]].append(o)
    d = Path(out)
    (d / LABELS_DIR).mkdir(parents=True, exist_ok=True)
    files = []
    for kind, items in by_kind.items():
        k = kind.lower()  # the resource's plural, as kubectl names it: networkpolicies, configmaps
        files.append(d / f"{k[:-1] + 'ies' if k.endswith('y') else k + 's'}.yaml")
        files[-1].write_text(dump_objects(items))
    labels = node_labels(plan, s)
    (d / LABELS_DIR / "node-labels.yaml").write_text(yaml.safe_dump(labels, sort_keys=True))
    (d / LABEL_SCRIPT).write_text(label_script(plan.id, labels))
    (d / LABEL_SCRIPT).chmod(0o755)
    stale = d / "node-labels.yaml"
    if stale.is_file():  # an earlier render's, which `kubectl apply -f DIR` would fail on
        stale.unlink()
        note(f"removed {stale} of an earlier render: the labels are in {d / LABELS_DIR} now")
    doc = {"plan": plan.id, "out_dir": str(d), "objects": {k: len(v) for k, v in by_kind.items()},
           "files": [str(f) for f in files], "node_labels": str(d / LABELS_DIR / "node-labels.yaml"),
           "label_script": str(d / LABEL_SCRIPT), "devices": s.devices}
    counts = ", ".join(f"{len(v)} {k}" for k, v in by_kind.items())
    emit(doc, fmt, lambda: (f"plan {plan.id}: wrote {counts} to {d}\n"
                            + devices_lines(plan, s, by_kind.get("Deployment", []))
                            + f"apply with: kubectl apply -f {d}\n"
                            f"node labels (the reconciler sets them; without it: {d / LABEL_SCRIPT}): "
                            f"{d / LABELS_DIR / 'node-labels.yaml'}"))


@click.command("reconcile")
@click.option("--kubeconfig", type=click.Path(dir_okay=False), default=None,
              help="Run from outside the cluster with this kubeconfig (default: in-cluster account).")
@click.option("--context", default=None, help="kubeconfig context.")
@click.option("--server", "host", default=None, help="API server URL, no auth (a kubectl proxy, tests).")
@namespace_options
@click.option("--dry-run", is_flag=True, help="Run one cycle, print what it would do and its diff id; write nothing.")
@click.option("--confirm", "confirm", metavar="DIFF_ID", default=None,
              help="Apply one cycle, only if its diff is the one a dry run printed with this id.")
@click.option("--interval", type=Number(0, 86400, lo_open=True, unit="seconds"), default=15.0, show_default=True,
              help="Seconds between cycles.")
@click.option("--planner-time-limit", type=Number(0, 1e6, lo_open=True, unit="seconds"), default=20.0,
              show_default=True, help="Seconds for each re-plan's search (as packer plan --time-limit).")
@click.option("--port", type=Number(0, 65535, integer=True), default=8080, show_default=True,
              help="HTTP port of /healthz, /metrics, /.")
@click.option("--scaling/--no-scaling", default=True, show_default=True,
              help="In the cluster: move the plan with live load (the groups' Triton metrics -> the scaling "
                   "policy). A dry run from outside sees no metrics and shows fleet-driven changes only.")
@image_options
@devices_option
@format_option
@output_option("the cycle's report (diff id, actions, errors)")
def reconcile(kubeconfig: str | None, context: str | None, host: str | None, namespace: str,
              gpu_operator_namespace: str, dry_run: bool, confirm: str | None, interval: float,
              planner_time_limit: float, port: int, scaling: bool, triton_image: str | None,
              fetch_image: str | None, devices: tuple[str, str | None], fmt: str, output: str | None) -> None:
    """Keep the cluster at the plan for the fleet in ConfigMap packer-fleet.

    In the cluster it loops and serves HTTP. From outside, it only ever runs one cycle: first
    `--dry-run` (prints the diff and its id), then `--confirm ID` applies exactly that diff.
    """
    # The cluster client and the status page's web server take a second to import; `packer render
    # k8s`, which loads this module too, needs neither.
    from k8s.cluster import Cluster, connect
    from k8s.reconciler import Reconciler, default_identity, default_planner

    in_cluster = bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and not (kubeconfig or host)
    if dry_run and confirm:
        raise UserError("--dry-run and --confirm exclude each other. Fix: dry-run first, then --confirm its id")
    if not in_cluster and not (dry_run or confirm):
        raise UserError("outside the cluster the reconciler applies nothing unseen. "
                        "Fix: run with --dry-run, read the diff, then run with --confirm <diff id>")
    images = {k: v for k, v in (("triton_image", triton_image), ("fetch_image", fetch_image)) if v}
    s = ReconcileSettings(interval_s=interval, render=ManifestSettings(
        namespace=namespace, gpu_operator_namespace=gpu_operator_namespace, **images, **devices_settings(devices)))
    check_output_file(output, "-o", not_=(kubeconfig,))
    if kubeconfig and not os.path.exists(kubeconfig):  # else the client says "no configuration found"
        raise UserError(f"--kubeconfig {kubeconfig}: no such file. Fix: give the path of a kubeconfig "
                        "(often ~/.kube/config)")
    if kubeconfig and not os.path.isfile(kubeconfig):  # a directory, /dev/zero, a pipe: the client would read it
        raise UserError(f"--kubeconfig {kubeconfig}: is not a regular file. Fix: give the path of a kubeconfig "
                        "(often ~/.kube/config)")
    if kubeconfig and os.path.getsize(kubeconfig) > MAX_BYTES:
        raise UserError(f"--kubeconfig {kubeconfig}: is larger than {MAX_BYTES // 2 ** 20} MiB, no kubeconfig is. "
                        "Fix: give the path of a kubeconfig (often ~/.kube/config)")
    try:
        api = connect(kubeconfig=kubeconfig, context=context, host=host)
    except Exception as e:  # kubeconfig missing or broken
        raise UserError(f"cannot reach the cluster ({e}). Fix: give --kubeconfig, or run in the cluster") from None
    if dry_run or confirm:
        _probe(api, host, kubeconfig, context)
    signals = scaler = None
    if scaling and in_cluster:  # group Services resolve only in the cluster's DNS

        from k8s.scaling import TritonSignals, packer_scaler, service_url

        signals = TritonSignals(service_url(namespace), clock=time.time)
        scaler = packer_scaler()
    rec = Reconciler(Cluster(api, s), s, planner=default_planner(planner_time_limit), signals=signals,
                     scaler=scaler, identity=default_identity(in_cluster))
    if dry_run or confirm:
        _one_cycle(rec, dry_run, confirm, fmt, output)
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from k8s.server import serve

    serve(rec, port=port)


def _one_cycle(rec: "Reconciler", dry_run: bool, confirm: str | None, fmt: str, output: str | None) -> None:
    """The one cycle run from outside the cluster: a dry run prints the diff and the command that
    applies it; ``--confirm`` applies that diff only. Errors, and a lease held by another
    reconciler, end in one error line (exit 2)."""
    # What the cycle logs (a lost lease, say) is in its report: one error line, not a second one
    # from logging's last-resort handler.
    logging.getLogger("packer.reconciler").addHandler(logging.NullHandler())
    with Spinner(label="reconciling (one cycle: read, plan, diff)"):
        try:
            rep = rec.cycle(dry_run=dry_run, expect=confirm)
        finally:
            if not dry_run:  # this run's identity is its own: the next --confirm must not wait 30 s
                rec.elector.release(rec.clock())
    apply_with = f"packer reconcile {_given_flags()}--confirm {rep.diff_id}"
    if dry_run:
        last = (f"diff id: {rep.diff_id} ({len(rep.done)} action(s), {len(rep.waiting)} waiting); "
                f"apply with: {apply_with}")
    else:
        last = f"applied {len(rep.done)} action(s)"
    doc = {"diff_id": rep.diff_id, "dry_run": dry_run, "leader": rep.leader, "lines": rep.lines(),
           "errors": list(rep.errors), "warnings": list(rep.warnings)}
    ok = rep.leader and not rep.errors
    if dry_run and ok:  # a diff that errors (no fleet ConfigMap, say) is not one to confirm
        doc["apply_with"] = apply_with
    # The errors go to the one error line below, not to stdout as well (they were printed twice).
    shown = [ln for ln in rep.lines() if not ln.startswith("error ")]
    emit(doc, fmt, lambda: "\n".join(shown + ([last] if ok else [])), output)
    lost = next((e for e in rep.errors if e.startswith("cycle stopped, leadership lost")), None)
    if not rep.leader and lost is not None:
        raise UserError(f"{lost}; {len(rep.done)} action(s) applied before it stopped. Fix: the API server "
                        "answered too slowly to keep the lease: check it (`kubectl get --raw /readyz`), then run "
                        "the dry run again: it shows what is left")
    if not rep.leader:
        raise UserError("another reconciler holds the lease. Fix: scale the in-cluster one to 0 first")
    if rep.errors:
        first = rep.errors[0]
        more = f" (and {len(rep.errors) - 1} more: {'; '.join(rep.errors[1:])})" if len(rep.errors) > 1 else ""
        if "Fix:" in first:
            fix = ""
        elif "did not answer" in first or "connection was dropped" in first or "could not connect" in first:
            fix = (". Fix: check that the API server is up and not overloaded (`kubectl get --raw /readyz`), "
                   "then run the dry run again: it shows what is left")
        else:
            fix = ". Fix: correct what it names, then run the dry run again"
        held = ""
        if rep.held and "held back" not in first:
            names = ", ".join(f"{a.verb} {a.kind}/{a.name}" for a, _ in rep.held[:5])
            held = f"; held back, as they rely on what failed: {names}" + (", ..." if len(rep.held) > 5 else "")
        raise UserError(f"{first}{held}{fix}{more}")


CONNECTION_FLAGS = (("kubeconfig", "--kubeconfig"), ("context", "--context"), ("host", "--server"),
                    ("namespace", "--namespace"), ("gpu_operator_namespace", "--gpu-operator-namespace"),
                    ("planner_time_limit", "--planner-time-limit"), ("scaling", "--scaling"), ("devices", "--devices"),
                    ("triton_image", "--triton-image"), ("fetch_image", "--fetch-image"))
"""The flags that decide which cluster a cycle reads and what diff it computes: ``--confirm``
must be given them again, or it applies to another cluster or computes another diff."""


def _given_flags() -> str:
    """The connection flags the user gave this run, quoted for the shell, each followed by a space."""
    ctx = click.get_current_context()
    out = []
    for name, flag in CONNECTION_FLAGS:
        src = ctx.get_parameter_source(name)
        if src not in (click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT):
            continue
        v = ctx.params[name]
        if name == "devices":
            v = ":".join(x for x in v if x)
        if isinstance(v, bool):
            out.append(flag if v else f"--no-{flag[2:]}")
        else:
            out += [flag, shlex.quote(f"{v:g}" if isinstance(v, float) else str(v))]
    return "".join(f"{x} " for x in out)


def _why(e: BaseException) -> str:
    """What a connection failure comes to, in a few words: urllib3 nests it three levels deep."""
    text = str(e)
    m = re.search(r"\[Errno -?\d+\] ([^'\"\)\]]+)", text)
    if m:
        return m.group(1).strip().rstrip(".").lower()
    low = text.lower()
    if "timed out" in low or "timeout" in low:
        return "no answer within 5 s"
    if "certificate" in low or "ssl" in low:
        return "its TLS certificate is not trusted"
    return type(e).__name__


def _probe(api: object, host: str | None, kubeconfig: str | None, context: str | None) -> None:
    """Ask the API server its version once, so an unreachable one is one line naming it and the fix
    (the cycle's retries would end in urllib3's truncated message, printed twice)."""
    from kubernetes import client

    server = api.configuration.host  # type: ignore[attr-defined]
    try:
        client.VersionApi(api).get_code(_request_timeout=5)
    except client.exceptions.ApiException:
        return  # it answered (even 401/403/404): the cycle reports what follows
    except Exception as e:  # urllib3's MaxRetryError, a socket or TLS error
        if host:
            fix = f"check --server {host} (is `kubectl proxy` running there?)"
        elif kubeconfig or context:
            fix = ("check the cluster of " + " ".join(x for x in (kubeconfig and f"--kubeconfig {kubeconfig}",
                                                                   context and f"--context {context}") if x)
                   + " (`kubectl cluster-info` shows which server it names)")
        else:
            fix = "check the current kubeconfig context (`kubectl cluster-info`), or give --kubeconfig/--server"
        raise UserError(f"the Kubernetes API server at {server} cannot be reached ({_why(e)}). Fix: {fix}") from None
