"""A kustomize build of exactly the features k8s/deploy uses, for machines without kubectl.

resources (files and kustomization folders), components, patches (JSON 6902, selected by
group/kind/name/namespace), images (newName, newTag, digest) and replacements (a source field
copied to target fields, ``[key=value]`` list selectors, ``delimiter``/``index``), applied in
kustomize's order: resources, components, patches, images, replacements. Anything else in a
kustomization is refused, so a new feature in k8s/deploy cannot pass untested. Where kubectl is
installed, tests/k8s/test_devices_deploy.py checks this against ``kubectl kustomize``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

KNOWN = {"apiVersion", "kind", "resources", "components", "patches", "images", "replacements"}


def build(root: Path) -> list[dict[str, Any]]:
    doc = yaml.safe_load((root / "kustomization.yaml").read_text())
    unknown = set(doc) - KNOWN
    if unknown:
        raise ValueError(f"{root}: kustomize_lite does not do {sorted(unknown)}")
    objs: list[dict[str, Any]] = []
    for r in doc.get("resources") or []:
        p = root / r
        objs += build(p) if p.is_dir() else [d for d in yaml.safe_load_all(p.read_text()) if d]
    for c in doc.get("components") or []:
        objs = _component(root / c, objs)
    _patch(objs, doc.get("patches") or [])
    for img in doc.get("images") or []:
        for o in objs:
            for c in _containers(o):
                name = c["image"].split("@")[0].rsplit(":", 1)[0] if ":" in c["image"].split("/")[-1] else c["image"]
                if name == img["name"]:
                    new = img.get("newName", name)
                    c["image"] = f"{new}@{img['digest']}" if "digest" in img else f"{new}:{img['newTag']}"
    for rep in doc.get("replacements") or []:
        src = rep["source"]
        (s,) = [o for o in objs if _selected(o, src)]
        value = _get(s, src["fieldPath"])
        for t in rep["targets"]:
            for o in objs:
                if _selected(o, t["select"]):
                    for fp in t["fieldPaths"]:
                        _set(o, fp, value, t.get("options") or {})
    return objs


def _component(root: Path, objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    doc = yaml.safe_load((root / "kustomization.yaml").read_text())
    assert doc["kind"] == "Component", root
    unknown = set(doc) - {"apiVersion", "kind", "patches"}
    if unknown:
        raise ValueError(f"{root}: kustomize_lite does not do {sorted(unknown)} in a component")
    out = copy.deepcopy(objs)
    _patch(out, doc.get("patches") or [])
    return out


def _patch(objs: list[dict[str, Any]], patches: list[dict[str, Any]]) -> None:
    """JSON 6902 patches, each applied to the objects its target selects."""
    for p in patches:
        ops = yaml.safe_load(p["patch"])
        for o in objs:
            if _selected(o, p.get("target") or {}):
                for op in ops:
                    _json_patch(o, op)


def _selected(o: dict[str, Any], sel: dict[str, Any]) -> bool:
    group = o["apiVersion"].rsplit("/", 1)[0] if "/" in o["apiVersion"] else ""
    m = o["metadata"]
    return all(v == {"group": group, "kind": o["kind"], "name": m.get("name"),
                     "namespace": m.get("namespace")}[k] for k, v in sel.items() if k != "fieldPath")


def _containers(o: dict[str, Any]) -> list[dict[str, Any]]:
    pod = ((o.get("spec") or {}).get("template") or {}).get("spec") or {}
    return (pod.get("containers") or []) + (pod.get("initContainers") or [])


def _json_patch(o: dict[str, Any], op: dict[str, Any]) -> None:
    *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].strip("/").split("/")]
    node: Any = o
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    if op["op"] == "add" and isinstance(node, list):
        node.insert(len(node) if last == "-" else int(last), op["value"])
    elif op["op"] in ("add", "replace"):
        if op["op"] == "replace" and (last not in node if isinstance(node, dict) else int(last) >= len(node)):
            raise KeyError(op["path"])
        node[int(last) if isinstance(node, list) else last] = op["value"]
    elif op["op"] == "remove":
        del node[int(last) if isinstance(node, list) else last]
    else:
        raise ValueError(f"op {op['op']}")


def _steps(path: str) -> list[str]:
    out, cur, depth = [], "", 0
    for ch in path:
        if ch == "." and depth == 0:
            out.append(cur)
            cur = ""
            continue
        depth += ch == "["
        depth -= ch == "]"
        cur += ch
    return out + [cur]


def _step(node: Any, step: str) -> tuple[Any, Any]:
    """(container, key) of one step of a field path: a map key, a list index or ``[k=v]``."""
    if step.startswith("["):
        k, v = step[1:-1].split("=", 1)
        (i,) = [i for i, x in enumerate(node) if isinstance(x, dict) and str(x.get(k)) == v]
        return node, i
    if isinstance(node, list):
        return node, int(step)
    return node, step


def _get(o: dict[str, Any], path: str) -> Any:
    node: Any = o
    for step in _steps(path):
        parent, k = _step(node, step)
        node = parent[k]
    return node


def _set(o: dict[str, Any], path: str, value: Any, options: dict[str, Any]) -> None:
    node: Any = o
    steps = _steps(path)
    for step in steps[:-1]:
        parent, k = _step(node, step)
        node = parent[k]
    parent, k = _step(node, steps[-1])
    if "delimiter" in options:
        parts = parent[k].split(options["delimiter"])
        parts[options["index"]] = value
        value = options["delimiter"].join(parts)
    parent[k] = value


def deploy_with(tmp: Path, *, components: tuple[str, ...] = (), example: bool = False) -> Path:
    """A copy of k8s/deploy with one more overlay, ``overlays/test``: the base (or the example
    overlay) with ``components`` added. Kustomize loads only paths below an overlay's parent
    folders, so the overlay lives in the copy; returns its folder."""
    import shutil

    import k8s

    shutil.copytree(Path(k8s.__file__).parent / "deploy", tmp / "deploy")
    root = tmp / "deploy" / "overlays" / "test"
    root.mkdir()
    base = "../example" if example else "../../base"
    doc = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "resources": [base]}
    if components:
        doc["components"] = [f"../../components/{c}" for c in components]
    (root / "kustomization.yaml").write_text(yaml.safe_dump(doc))
    return root
