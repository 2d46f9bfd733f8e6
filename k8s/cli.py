"""``packer render k8s`` and ``packer reconcile``: the Kubernetes adapter's commands.

Nothing reaches a cluster that a dry run has not shown: ``reconcile --dry-run`` prints the diff of
one cycle and writes nothing; without it the reconciler runs its loop (normally in the cluster).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import click
import yaml

from packer.cliutil import Number, check_output_dir
from packer.errors import UserError


def _load_plan(path: str):  # -> Plan; deferred import keeps ``import k8s.cli`` light
    from packer.plan import load_plan

    return load_plan(path)  # every problem is one line naming the file and the fix


@click.command("k8s")
@click.argument("plan_path", metavar="PLAN", type=click.Path(dir_okay=False))
@click.option("-o", "--out", "out", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--namespace", default="packer", show_default=True, help="Namespace of the serving objects.")
@click.option("--gpu-operator-namespace", default="gpu-operator", show_default=True,
              help="Namespace the device plugin and mig-manager read their ConfigMaps from.")
@click.option("--triton-image", default=None, help="tritonserver image (default: a pinned release).")
def render_k8s(plan_path: str, out: str, namespace: str, gpu_operator_namespace: str,
               triton_image: str | None) -> None:
    """Write the plan's Kubernetes objects to DIR: one file per kind, plus node-labels.yaml.

    node-labels.yaml is not an object: it lists, per logical node of the plan, the labels its real
    node must carry (the reconciler sets them; by hand: `kubectl label node`).
    """
    from dataclasses import replace

    from k8s.render import node_labels, render_plan
    from k8s.settings import RenderSettings

    check_output_dir(out, "-o")
    plan = _load_plan(plan_path)
    s = RenderSettings(namespace=namespace, gpu_operator_namespace=gpu_operator_namespace)
    if triton_image:
        s = replace(s, triton_image=triton_image)
    objs = render_plan(plan, s)
    by_kind: dict[str, list[dict]] = defaultdict(list)
    for o in objs:
        by_kind[o["kind"]].append(o)
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    for kind, items in by_kind.items():
        (d / f"{kind.lower()}s.yaml").write_text(yaml.safe_dump_all(items, sort_keys=False))
    (d / "node-labels.yaml").write_text(yaml.safe_dump(node_labels(plan), sort_keys=True))
    counts = ", ".join(f"{len(v)} {k}" for k, v in by_kind.items())
    click.echo(f"plan {plan.id}: wrote {counts} to {d}")


@click.command("reconcile")
@click.option("--kubeconfig", type=click.Path(dir_okay=False), default=None,
              help="Run from outside the cluster with this kubeconfig (default: in-cluster account).")
@click.option("--context", default=None, help="kubeconfig context.")
@click.option("--server", "host", default=None, help="API server URL, no auth (a kubectl proxy, tests).")
@click.option("--namespace", default="packer", show_default=True)
@click.option("--gpu-operator-namespace", default="gpu-operator", show_default=True)
@click.option("--dry-run", is_flag=True, help="Run one cycle, print what it would do and its diff id; write nothing.")
@click.option("--confirm", "confirm", metavar="DIFF_ID", default=None,
              help="Apply one cycle, only if its diff is the one a dry run printed with this id.")
@click.option("--interval", type=Number(0, 86400, lo_open=True, unit="seconds"), default=15.0, show_default=True,
              help="Seconds between cycles.")
@click.option("--planner-time-limit", type=Number(0, 1e6, lo_open=True, unit="seconds"), default=20.0,
              show_default=True)
@click.option("--port", type=Number(0, 65535, integer=True), default=8080, show_default=True,
              help="HTTP port of /healthz, /metrics, /.")
@click.option("--scaling/--no-scaling", default=True, show_default=True,
              help="In the cluster: move the plan with live load (the groups' Triton metrics -> the scaling "
                   "policy). A dry run from outside sees no metrics and shows fleet-driven changes only.")
def reconcile(kubeconfig: str | None, context: str | None, host: str | None, namespace: str,
              gpu_operator_namespace: str, dry_run: bool, confirm: str | None, interval: float,
              planner_time_limit: float, port: int, scaling: bool) -> None:
    """Keep the cluster at the plan for the fleet in ConfigMap packer-fleet.

    In the cluster it loops and serves HTTP. From outside, it only ever runs one cycle: first
    `--dry-run` (prints the diff and its id), then `--confirm ID` applies exactly that diff.
    """
    import logging
    import os

    from k8s.cluster import Cluster, connect
    from k8s.reconciler import Reconciler, default_planner
    from k8s.settings import ReconcileSettings, RenderSettings

    in_cluster = bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and not (kubeconfig or host)
    if dry_run and confirm:
        raise UserError("--dry-run and --confirm exclude each other. Fix: dry-run first, then --confirm its id")
    if not in_cluster and not (dry_run or confirm):
        raise UserError("outside the cluster the reconciler applies nothing unseen. "
                        "Fix: run with --dry-run, read the diff, then run with --confirm <diff id>")
    s = ReconcileSettings(interval_s=interval, render=RenderSettings(
        namespace=namespace, gpu_operator_namespace=gpu_operator_namespace))
    try:
        api = connect(kubeconfig=kubeconfig, context=context, host=host)
    except Exception as e:  # kubeconfig missing or broken
        raise UserError(f"cannot reach the cluster ({e}). Fix: give --kubeconfig, or run in the cluster") from None
    signals = scaler = None
    if scaling and in_cluster:  # group Services resolve only in the cluster's DNS
        import time

        from k8s.scaling import TritonSignals, packer_scaler, service_url

        signals = TritonSignals(service_url(namespace), clock=time.time)
        scaler = packer_scaler()
    rec = Reconciler(Cluster(api, s), s, planner=default_planner(planner_time_limit), signals=signals,
                     scaler=scaler)
    if dry_run or confirm:
        rep = rec.cycle(dry_run=dry_run, expect=confirm)
        for line in rep.lines():
            click.echo(line)
        if not rep.leader:
            raise UserError("another reconciler holds the lease. Fix: scale the in-cluster one to 0 first")
        if rep.errors:
            raise UserError(f"{len(rep.errors)} error(s); first: {rep.errors[0]}")
        if dry_run:
            click.echo(f"diff id: {rep.diff_id} ({len(rep.done)} action(s), {len(rep.waiting)} waiting); "
                       f"apply with: packer reconcile --confirm {rep.diff_id}")
        else:
            click.echo(f"applied {len(rep.done)} action(s)")
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from k8s.server import serve

    serve(rec, port=port)
