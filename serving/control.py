"""Bring a running Triton (``--model-control-mode=explicit``) to a given repository.

``decide`` is pure: from what the server holds and what the repository wants it returns the
steps, each with its reason. ``ServerControl.apply`` carries them out through the repository API:
new and changed models load first (with their config and files sent over gRPC, so the server's own
repository path does not matter), then models no longer wanted are unloaded.

A model with a sequence batcher keeps per-stream state on its instance: unloading or reloading it
would cut every open stream. It is first drained: it is cut only once it has been quiet (no
request answered) for its own ``max_sequence_idle`` time, after which Triton itself would have
dropped any sequence still open, or once the drain timeout passes.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

import tritonclient.grpc as grpcclient
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import InferenceServerException

from packer.errors import UserError
from serving.config import to_text
from serving.repository import ModelDir, Repository

DIGEST = "packer_digest"
MAX_SEND_BYTES = 64 << 20


def digest(m: ModelDir) -> str:
    """Content hash of a model's config and files: equal digests need no reload."""
    h = hashlib.sha256(to_text(m.config).encode())
    for rel in sorted(m.files):
        h.update(rel.encode() + b"\0" + m.files[rel])
    h.update((m.artifact_link or "").encode())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class ControlStep:
    """One step of Triton's model control for one model, with the reason it is taken. Not a
    Kubernetes write (:class:`k8s.diff.Change`) nor a scaling action (:class:`packer.scaling.Action`):
    this one acts on a running server's loaded models."""

    verb: str
    """``load``, ``reload``, ``unload`` or ``keep``."""
    model: str
    reason: str
    drain: bool = False
    """Wait for open sequences to end first (a sequence model being reloaded or unloaded)."""


def decide(loaded: dict[str, str | None], wanted: dict[str, str], sequence: set[str]) -> list[ControlStep]:
    """Steps taking a server from ``loaded`` (name -> digest, None if unknown) to ``wanted``.

    Loads come before unloads, so traffic has somewhere to go while old models drain.
    """
    acts = []
    for name, dg in wanted.items():
        if name not in loaded:
            acts.append(ControlStep("load", name, "in the repository, not on the server"))
        elif loaded[name] != dg:
            acts.append(ControlStep("reload", name, f"config or files changed ({loaded[name]} -> {dg})",
                               drain=name in sequence))
        else:
            acts.append(ControlStep("keep", name, "already serving this config"))
    for name in loaded:
        if name not in wanted:
            acts.append(ControlStep("unload", name, "no longer in the repository", drain=name in sequence))
    order = {"keep": 0, "load": 1, "reload": 2, "unload": 3}
    return sorted(acts, key=lambda a: order[a.verb])


@dataclass
class ApplyReport:
    steps: list[ControlStep] = field(default_factory=list)
    drained: dict[str, float] = field(default_factory=dict)
    """Seconds each sequence model took to drain."""
    cut: list[str] = field(default_factory=list)
    """Sequence models unloaded or reloaded at the drain timeout, possibly with streams open."""

    def lines(self) -> list[str]:
        out = [f"{a.verb:7s} {a.model}: {a.reason}" for a in self.steps]
        out += [f"drained {n} in {s:.1f} s" for n, s in self.drained.items()]
        out += [f"CUT     {n}: drain timeout passed with traffic still flowing" for n in self.cut]
        return out


class ServerControl:
    """Repository-API client for one Triton server (gRPC address ``host:port``)."""

    def __init__(self, url: str, *, poll_s: float = 0.1) -> None:
        self.url = url
        self.client = grpcclient.InferenceServerClient(url)
        self.poll_s = poll_s

    def loaded(self, also: tuple[str, ...] = ()) -> dict[str, str | None]:
        """Models READY on the server, with the digest they were loaded with (None: not by us).

        The repository index lists only models of the server's own repository path; models loaded
        from sent files are not in it, so ``also`` names models to ask about one by one.
        """
        try:
            index = self.client.get_model_repository_index(as_json=True).get("models", [])
        except InferenceServerException as e:
            raise UserError(f"cannot reach Triton's repository API at {self.url}: {e.message()}. Fix: give the "
                            "gRPC address (port 8001 by default) of a server started with "
                            "--model-control-mode=explicit") from None
        names = [m["name"] for m in index if m.get("state") == "READY"]
        names += [n for n in also if n not in names and self.client.is_model_ready(n)]
        out: dict[str, str | None] = {}
        for n in names:
            cfg = self.client.get_model_config(n, as_json=True)["config"]
            out[n] = cfg.get("parameters", {}).get(DIGEST, {}).get("string_value")
        return out

    def load(self, m: ModelDir) -> None:
        cfg = mc.ModelConfig()
        cfg.CopyFrom(m.config)
        cfg.parameters[DIGEST].string_value = digest(m)
        files = {f"file:{rel}": data for rel, data in m.files.items()}
        if m.artifact_link or sum(len(v) for v in files.values()) > MAX_SEND_BYTES:
            files = {}  # large or linked weights: the server's own repository must hold them
        try:
            self.client.load_model(m.name, config=json_format.MessageToJson(cfg, preserving_proto_field_name=True),
                                   files=files or None)
        except InferenceServerException as e:
            raise UserError(f"Triton at {self.url} could not load {m.name}: {e.message()}. Fix: check its "
                            "config.pbtxt and, for an artifact, that the server's repository holds it") from None

    def unload(self, name: str) -> None:
        self.client.unload_model(name)

    def activity(self, name: str) -> int:
        """Requests the model has ever answered: it changes while any stream is active."""
        stats = self.client.get_inference_statistics(name, as_json=True)["model_stats"]
        return sum(int(st.get("inference_stats", {}).get(k, {}).get("count", 0))
                   for st in stats for k in ("success", "fail"))

    def idle_s(self, name: str) -> float:
        cfg = self.client.get_model_config(name, as_json=True)["config"]
        us = int(cfg.get("sequence_batching", {}).get("max_sequence_idle_microseconds", 1_000_000))
        return us / 1e6

    def drain(self, names: list[str], timeout_s: float) -> dict[str, float | None]:
        """Wait until each model has been quiet for its sequence idle time; None where it timed out.

        Quiet means the count of answered requests did not change, measured on this client's clock
        (no reliance on the server's). A chunk still queued ends the quiet when it is answered.
        """
        t0 = time.monotonic()
        need = {n: self.idle_s(n) for n in names}
        last = {n: self.activity(n) for n in names}
        since = {n: t0 for n in names}
        done: dict[str, float | None] = {}
        while len(done) < len(names):
            now = time.monotonic()
            for n in names:
                if n in done:
                    continue
                act = self.activity(n)
                if act != last[n]:
                    last[n], since[n] = act, now
                if now - since[n] >= need[n]:
                    done[n] = now - t0
                elif now - t0 >= timeout_s:
                    done[n] = None
            time.sleep(self.poll_s)
        return done

    def apply(self, repo: Repository, *, drain_timeout_s: float = 120.0) -> ApplyReport:
        """Make the server serve exactly ``repo``'s models with its configs."""
        wanted = {m.name: digest(m) for m in repo.models}
        by_name = {m.name: m for m in repo.models}
        loaded = self.loaded(also=tuple(wanted))
        sequence = {n for n in loaded if self.client.get_model_config(n, as_json=True)["config"].get("sequence_batching")}
        acts = decide(loaded, wanted, sequence)
        rep = ApplyReport(acts)
        for a in acts:
            if a.verb == "load" or (a.verb == "reload" and not a.drain):
                self.load(by_name[a.model])
            elif a.verb == "unload" and not a.drain:
                self.unload(a.model)
        draining = [a.model for a in acts if a.drain]
        if draining:
            for n, s in self.drain(draining, drain_timeout_s).items():
                if s is None:
                    rep.cut.append(n)
                else:
                    rep.drained[n] = s
        for a in acts:
            if a.verb == "reload" and a.drain:
                self.load(by_name[a.model])
            elif a.verb == "unload" and a.drain:
                self.unload(a.model)
        return rep

    def close(self) -> None:
        self.client.close()
