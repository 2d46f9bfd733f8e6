"""Names and labels: how a plan's groups, pools and nodes map to Kubernetes identifiers.

Names derive from the Placement id (a stable slot identifier), so the same slot keeps the same
objects across plans and a re-plan that keeps a slot rewrites nothing.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from packer.errors import UserError

MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "packer"
PLAN_LABEL = "packer.dev/plan"
GROUP_LABEL = "packer.dev/group"
"""On a slot's server pods, Service and repository ConfigMap: the server's name."""
POOL_LABEL = "packer.dev/pool"
NODE_LABEL = "packer.dev/node"
"""Logical node name from the plan (``a100-80-n0``), set by the reconciler on the bound real node."""
PDB_LABEL = "packer.dev/pdb"
MODEL_LABEL_PREFIX = "model.packer.dev/"
SPEC_HASH = "packer.dev/spec-hash"
"""Hash of the desired object as rendered: unchanged hash and intact fields mean nothing to write."""
OWNED_KEYS_ANNOTATION = "packer.dev/owned-keys"
"""On a rendered object: the label, pod-template label and ConfigMap data keys packer set (JSON).
A restore nulls only those packer no longer wants; keys others added stay."""
PLACEMENT_ANNOTATION = "packer.dev/placement"
REASON_ANNOTATION = "packer.dev/reason"
OWNED_LABELS_ANNOTATION = "packer.dev/owned-labels"
"""On a node: the labels packer set there (comma-separated). Only those it may change or remove;
an administrator's ``nvidia.com/*`` labels on other nodes, or on spare ones, are never touched."""
MIG_CONFIG_LABEL = "nvidia.com/mig.config"
MIG_STATE_LABEL = "nvidia.com/mig.config.state"
DEVICE_PLUGIN_CONFIG_LABEL = "nvidia.com/device-plugin.config"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_COUNT_LABEL = "nvidia.com/gpu.count"
_BAD = re.compile(r"[^a-z0-9-]+")
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
NAMESPACE_RULE = ("an RFC 1123 DNS label: lower-case letters, digits and '-', starting and ending with a "
                  "letter or digit, at most 63 characters")


def check_namespace(value: str, what: str) -> str:
    """``value`` if it is a valid namespace name, else a :class:`UserError` naming ``what`` (the flag
    or field) and the rule. Every rendered object carries its namespace as given: an invalid one
    renders, then fails at ``kubectl apply`` (or in every API call of the reconciler)."""
    if not isinstance(value, str) or not _NAMESPACE.fullmatch(value):
        like = dns_label(value, prefix="") if isinstance(value, str) else ""
        like = like if _NAMESPACE.fullmatch(like) else "packer"
        raise UserError(f"{what} {value!r} is not a namespace name: it must be {NAMESPACE_RULE}. "
                        f"Fix: e.g. {what} {like}")
    return value


def digest(obj: Any, n: int = 10) -> str:
    """Short content hash of JSON-able data (sorted keys), for names and change detection."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def dns_label(text: str, *, prefix: str = "pk-", limit: int = 63) -> str:
    """A DNS-1035 label (Service names need it): lower-case, '-' for anything else, hash if too long.

    ``a100-80-n0-g3-3g.40gb@4`` becomes ``pk-a100-80-n0-g3-3g-40gb-4``.
    """
    slug = _BAD.sub("-", text.lower()).strip("-")
    name = f"{prefix}{slug}"
    if len(name) > limit:
        h = digest(text, 8)
        name = f"{name[: limit - 9].rstrip('-')}-{h}"
    return name


def group_name(placement_id: str) -> str:
    """Deployment and Service name of one packed group's server: one per slot, whatever classes
    its members are (``pk-a100-n0-g0-3g-40gb-4``). Older versions ran one server per slot and
    class, named ``<this>-s`` and ``<this>-b``; a slot id never ends in ``-s`` or ``-b`` (it ends
    in ``whole``, ``@<start>`` or ``x<gpus>``;
    a long name ends in an 8-digit hash), so the old names never clash with the new ones."""
    return dns_label(placement_id)


def repo_configmap_name(placement_id: str) -> str:
    """The group's repository ConfigMap: ``<group name>-repo`` (hashed to fit 63 characters)."""
    return dns_label(placement_id, limit=58) + "-repo"


def claim_name(placement_id: str, spec_digest: str) -> str:
    """A slot's ResourceClaim (``--devices dra``): ``<group name>-<hash of its spec>``, at most
    63 characters. A claim's spec cannot change, so a changed request gets a new name."""
    return dns_label(placement_id, limit=63 - len(spec_digest) - 1) + "-" + spec_digest


def model_label(model: str) -> str:
    return MODEL_LABEL_PREFIX + model


def owned(obj: dict[str, Any]) -> bool:
    """Objects the reconciler may change: those carrying its managed-by label, nothing else."""
    return ((obj.get("metadata") or {}).get("labels") or {}).get(MANAGED_BY) == MANAGER
