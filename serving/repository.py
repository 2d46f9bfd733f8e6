"""Triton model repositories for a plan: one per packed group and workload class.

Layout written by :func:`write`::

    DIR/index.json                         what was written, for servers and deploy tooling
    DIR/<slot id>/streaming/<model>/config.pbtxt
    DIR/<slot id>/streaming/<model>/1/model.py      (stand-in; or a link to a local artifact)
    DIR/<slot id>/batch/<model>/...

Streaming and batch models of one slot never share a repository: each class keeps its own
batching policy. Both repositories of a slot load into one server (``--model-repository``
twice), whose rate limiter makes all the slot's members take turns, as the slot maths assumes
and a GPU slot does: two servers on one slot would run their batches at the same time.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from packer.errors import UserError
from packer.plan import Placement, Plan
from serving.config import from_text, model_config, to_text
from serving.settings import TritonSettings
from serving.standin import MODEL_PY

CONFIG = "config.pbtxt"


@dataclass(frozen=True)
class ModelDir:
    """One model directory: its config and the files of version 1 (relative path -> bytes)."""

    name: str
    config: mc.ModelConfig
    files: dict[str, bytes] = field(default_factory=dict)
    artifact_link: str | None = None
    """A local artifact path that ``1/<default_model_filename>`` links to."""


@dataclass(frozen=True)
class Repository:
    """The models one Triton server in one slot serves."""

    slot: str
    kind: str
    models: tuple[ModelDir, ...]
    placement: Placement | None = None

    @property
    def key(self) -> str:
        return f"{self.slot}/{self.kind}"

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.models)


def group_repositories(plan: Plan, placement: Placement, settings: TritonSettings) -> list[Repository]:
    """The repositories of one packed group, streaming first."""
    out = []
    shared = len(placement.models) > 1
    for kind in ("streaming", "batch"):
        names = list(dict.fromkeys(m.name for m in placement.models if m.kind == kind))
        if not names:
            continue
        models = []
        for name in names:
            cfg = model_config(plan.fleet, placement, name, settings, shared=shared)
            art = plan.fleet.model(name).artifact
            if art is None:
                models.append(ModelDir(name, cfg, {"1/model.py": MODEL_PY.read_bytes()}))
            else:
                local = art.uri[len("file://"):] if art.uri.startswith("file://") else art.uri
                is_local = "://" not in local
                models.append(ModelDir(name, cfg, {}, str(Path(local).resolve()) if is_local else None))
        out.append(Repository(placement.id, kind, tuple(models), placement))
    return out


def repositories(plan: Plan, settings: TritonSettings | None = None, *, groups: int | None = None) -> list[Repository]:
    """All repositories of a plan (or of its first ``groups`` packed groups)."""
    settings = settings or TritonSettings()
    placements = plan.placements if groups is None else plan.placements[:groups]
    return [r for p in placements for r in group_repositories(plan, p, settings)]


def missing_artifacts(repos: list[Repository]) -> dict[str, str]:
    """Each model whose local artifact is not on this machine, with the path its link would name.

    A dangling ``1/<file>`` link renders fine and fails only when Triton loads the model, on
    another machine and much later; this is what the render says now instead. Remote URIs are
    fetched where Triton runs and are not checked. A model is named once, however many
    repositories (replicas) link it."""
    return {m.name: m.artifact_link for r in repos for m in r.models
            if m.artifact_link and not os.path.exists(m.artifact_link)}


def write_repository(repo: Repository, path: Path) -> Path:
    """Write one repository to ``path`` (replacing what was there) and return ``path``."""
    if path.exists():
        shutil.rmtree(path)
    for m in repo.models:
        d = path / m.name
        (d / "1").mkdir(parents=True)
        (d / CONFIG).write_text(to_text(m.config))
        for rel, data in m.files.items():
            (d / rel).parent.mkdir(parents=True, exist_ok=True)
            (d / rel).write_bytes(data)
        if m.artifact_link:
            os.symlink(m.artifact_link, d / "1" / m.config.default_model_filename)
    return path


def write(repos: list[Repository], out: Path) -> Path:
    """Write every repository under ``out`` plus ``index.json``; return the index path."""
    out.mkdir(parents=True, exist_ok=True)
    index = []
    for r in repos:
        path = write_repository(r, out / r.slot / r.kind)
        entry = {"slot": r.slot, "kind": r.kind, "path": str(path.relative_to(out)), "models": list(r.names)}
        if r.placement is not None:
            entry |= {"pool": r.placement.pool, "node": r.placement.node, "gpus": list(r.placement.gpus),
                      "profile": r.placement.slot,
                      "rate_limited": len(r.placement.models) > 1}
        remote = [m.config.parameters["artifact_uri"].string_value for m in r.models
                  if "artifact_uri" in m.config.parameters and not m.artifact_link]
        if remote:
            entry["fetch"] = remote
        index.append(entry)
    p = out / "index.json"
    p.write_text(json.dumps({"repositories": index}, indent=2) + "\n")
    return p


def read_repository(path: Path) -> Repository:
    """Read a repository written by :func:`write_repository` (configs parsed with ``text_format``)."""
    if not path.is_dir():
        raise UserError(f"{path} is not a model repository directory; render one with `packer render triton`")
    models = []
    for d in sorted(p for p in path.iterdir() if (p / CONFIG).is_file()):
        cfg = from_text((d / CONFIG).read_text())
        files = {str(f.relative_to(d)): f.read_bytes() for f in sorted(d.rglob("*"))
                 if f.is_file() and not f.is_symlink() and f.name != CONFIG and "__pycache__" not in f.parts}
        link = next((os.readlink(f) for f in d.rglob("*") if f.is_symlink()), None)
        models.append(ModelDir(cfg.name or d.name, cfg, files, link))
    if not models:
        raise UserError(f"{path} holds no model (no */config.pbtxt); render one with `packer render triton`")
    return Repository(path.parent.name, path.name, tuple(models))
