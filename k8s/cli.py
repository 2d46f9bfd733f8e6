"""``packer render k8s`` and ``packer reconcile``: the Kubernetes adapter's commands.

Nothing reaches a cluster that a dry run has not shown: ``reconcile --dry-run`` prints the diff of
one cycle and writes nothing; without it the reconciler runs its loop (normally in the cluster).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import click
import yaml

from packer.errors import UserError


def _load_plan(path: str):  # -> Plan; deferred import keeps ``import k8s.cli`` light
    from packer.plan import load_plan

    try:
        return load_plan(path)
    except FileNotFoundError:
        raise UserError(f"{path}: no such plan file. Fix: give the JSON written by `packer plan -o`") from None
    except (ValueError, KeyError) as e:
        raise UserError(f"{path}: not a plan file ({e}). Fix: give the JSON written by `packer plan -o`") from None


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
