"""The reconciler's only door to the API server: the official ``kubernetes`` client, with retries,
per-call accounting and plain dicts in and out.

Responses are read raw (``_preload_content=False``) and parsed as JSON: the typed models cost
milliseconds per object, which a 500-group cluster would pay on every cycle. Updates are JSON
merge patches of what the reconciler owns; creates are POSTs, so a name taken by someone else
comes back as 409 and is never overwritten.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import urllib3.exceptions
from kubernetes import client, config

from k8s.settings import ReconcileSettings

MERGE_PATCH = "application/merge-patch+json"
RETRY_STATUS = frozenset({409, 429, 500, 502, 503, 504})
WRITE_VERBS = frozenset({"create", "patch", "delete"})


@dataclass(frozen=True)
class Kind:
    api: str
    """Attribute of :class:`Cluster` holding the typed API object."""
    snake: str
    """Suffix of the generated method names (``config_map`` -> ``list_namespaced_config_map``)."""
    api_version: str
    namespaced: bool = True


KINDS: dict[str, Kind] = {
    "ConfigMap": Kind("core", "config_map", "v1"),
    "Service": Kind("core", "service", "v1"),
    "Event": Kind("core", "event", "v1"),
    "Node": Kind("core", "node", "v1", namespaced=False),
    "Deployment": Kind("apps", "deployment", "apps/v1"),
    "PodDisruptionBudget": Kind("policy", "pod_disruption_budget", "policy/v1"),
    "Lease": Kind("coordination", "lease", "coordination.k8s.io/v1"),
    "NetworkPolicy": Kind("networking", "network_policy", "networking.k8s.io/v1"),
    "ResourceClaim": Kind("resource", "resource_claim", "resource.k8s.io/v1"),  # --devices dra only
}


class ApiError(Exception):
    """An API call that failed for good (after retries, or with a status not worth retrying)."""

    def __init__(self, verb: str, kind: str, name: str, status: int | None, detail: str) -> None:
        self.verb, self.kind, self.name, self.status = verb, kind, name, status
        super().__init__(f"{verb} {kind}/{name}: {status or 'no response'} {detail}".strip())


def _retry_after(e: client.ApiException) -> float:
    """Seconds the server's ``Retry-After`` asks for (priority and fairness sends it with a 429), or
    0: the retries ignored it and gave up in about 9 s under throttling the server said would
    pass. Capped at a minute; the try's budget (the lease) caps it again."""
    try:
        return min(60.0, max(0.0, float((e.headers or {}).get("Retry-After", 0))))
    except (TypeError, ValueError):  # an HTTP date, or junk: the backoff's own delay stands
        return 0.0


class Cluster:
    """Typed-API calls by kind name, counted, retried with jittered exponential backoff.

    ``calls`` counts every attempt by verb (``list``, ``get``, ``create``, ``patch``, ``delete``),
    so a cycle's reads and writes can be measured and a no-op cycle shown to write nothing.
    """

    def __init__(self, api_client: client.ApiClient, settings: ReconcileSettings | None = None, *,
                 sleep: Callable[[float], None] = time.sleep, rng: random.Random | None = None) -> None:
        self.settings = settings or ReconcileSettings()
        self.core = client.CoreV1Api(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.policy = client.PolicyV1Api(api_client)
        self.coordination = client.CoordinationV1Api(api_client)
        self.networking = client.NetworkingV1Api(api_client)
        self.resource = client.ResourceV1Api(api_client)
        self.calls: Counter[str] = Counter()
        self.by_kind: Counter[tuple[str, str]] = Counter()
        self.retries = 0
        self.guard: Callable[[], float] | None = None
        """Set by a leading reconciler: called before every try of every call except the Lease's,
        returns the seconds that try may take (the lease's remaining time) or raises
        :class:`k8s.lease.LeaseLost`, which stops the call and the cycle."""
        self._sleep = sleep
        self._rng = rng or random.Random(0)
        self.clock: Callable[[], float] = time.time
        """The reconciler's clock (it sets it): what :attr:`answered_at` is read on."""
        self.answered_at: float | None = None
        """When the last try of any call ended, answered or timed out: a cycle that waits on a slow
        API server is working, not wedged (``k8s.server`` counts it as alive)."""

    @property
    def lease_writes(self) -> int:
        """Leader-election heartbeats, counted apart from the reconciler's real work."""
        return sum(n for (verb, kind), n in self.by_kind.items() if kind == "Lease" and verb in WRITE_VERBS)

    def _method(self, verb: str, kind: str) -> Callable[..., Any]:
        k = KINDS[kind]
        scope = "namespaced_" if k.namespaced else ""
        return getattr(getattr(self, k.api), f"{verb}_{scope}{k.snake}")

    def _budget(self, kind: str, end: float | None) -> float:
        if end is not None:
            return end - time.monotonic()
        if self.guard is not None and kind != "Lease":
            return self.guard()
        return self.settings.request_timeout_s

    def _call(self, verb: str, kind: str, name: str, *args: Any, retry_conflict: bool = True,
              timeout_s: float | None = None, **kwargs: Any) -> Any:
        """One logical call: retried on 409 (if allowed), 429, 5xx and timeouts; JSON or None on 404.

        Each try's timeout is ``request_timeout_s``, or less: what the guard (the lease) leaves,
        or ``timeout_s`` for all tries together; a backoff never sleeps past it, and the guard is
        asked again after."""
        s = self.settings
        fn = self._method("read" if verb == "get" else verb, kind)
        last: Exception | None = None
        end = None if timeout_s is None else time.monotonic() + timeout_s
        last_timeout: float | None = None
        asked = 0.0  # what the server's Retry-After asked of the next try (429, 503)
        for attempt in range(s.max_attempts):
            budget = self._budget(kind, end)
            if attempt:
                self.retries += 1
                delay = self._rng.uniform(0, min(s.backoff_max_s, s.backoff_base_s * 2 ** attempt))
                delay = max(delay, asked)  # a server that says when to come back is believed
                self._sleep(min(delay, max(0.0, budget)))
                budget = self._budget(kind, end)
            if budget <= 0:
                raise ApiError(verb, kind, name, None, f"out of time after {attempt} tries: {_reason(last, last_timeout)}")
            self.calls[verb] += 1
            self.by_kind[(verb, kind)] += 1
            timeout = last_timeout = max(0.001, min(s.request_timeout_s, budget))
            try:
                try:
                    resp = fn(*args, _preload_content=False, _request_timeout=timeout, **kwargs)
                finally:
                    self.answered_at = self.clock()
                return json.loads(resp.data) if resp.data else {}
            except client.ApiException as e:
                if e.status == 404 and verb in ("get", "delete"):
                    return None
                if e.status not in RETRY_STATUS or (e.status == 409 and not retry_conflict):
                    raise ApiError(verb, kind, name, e.status, _reason(e)) from None
                last, asked = e, _retry_after(e)
            except Exception as e:  # urllib3 timeouts and connection errors
                if not _transient(e):
                    raise
                last, asked = e, 0.0
        status = getattr(last, "status", None)
        raise ApiError(verb, kind, name, status, f"after {s.max_attempts} tries: {_reason(last, last_timeout)}")

    def list(self, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        args = (namespace,) if KINDS[kind].namespaced else ()
        return list((self._call("list", kind, "*", *args) or {}).get("items") or [])

    def get(self, kind: str, namespace: str | None, name: str, *,
            timeout_s: float | None = None) -> dict[str, Any] | None:
        args = (name, namespace) if KINDS[kind].namespaced else (name,)
        return self._call("get", kind, name, *args, timeout_s=timeout_s)

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        """POST: a 409 on a retry means an earlier try landed (the caller checks whose it is)."""
        kind, meta = obj["kind"], obj["metadata"]
        args = (meta["namespace"],) if KINDS[kind].namespaced else ()
        return self._call("create", kind, meta["name"], *args, obj, retry_conflict=False)

    def patch(self, kind: str, namespace: str | None, name: str, patch: dict[str, Any], *,
              retry_conflict: bool = True, timeout_s: float | None = None) -> dict[str, Any]:
        """Merge patch. ``retry_conflict=False`` when the patch carries a resourceVersion
        precondition: a 409 then means someone else changed the object first."""
        args = (name, namespace) if KINDS[kind].namespaced else (name,)
        return self._call("patch", kind, name, *args, patch, _content_type=MERGE_PATCH,
                          retry_conflict=retry_conflict, timeout_s=timeout_s)

    def delete(self, kind: str, namespace: str | None, name: str) -> None:
        args = (name, namespace) if KINDS[kind].namespaced else (name,)
        self._call("delete", kind, name, *args)


def _reason(e: Exception | None, timeout_s: float | None = None) -> str:
    """What a failed try comes to, in words: the API server's message, or what happened to the
    connection (never urllib3's nested repr, cut mid-string)."""
    if isinstance(e, client.ApiException):
        try:
            return str(json.loads(e.body or "{}").get("message") or e.reason)[:200]
        except ValueError:
            return str(e.reason)
    if e is None:
        return "no try was made"
    return _transport(e, timeout_s)


def _transport(e: BaseException, timeout_s: float | None) -> str:
    """A connection failure, by the innermost cause urllib3 wraps it in (MaxRetryError's reason)."""
    seen: list[BaseException] = []
    todo: list[Any] = [e]
    while todo:
        x = todo.pop(0)
        if not isinstance(x, BaseException) or any(x is y for y in seen) or len(seen) > 20:
            continue
        seen.append(x)
        todo += [getattr(x, "reason", None), x.__cause__, x.__context__, *x.args]
    names = {type(x).__name__ for x in seen}
    if names & {"ReadTimeoutError", "ConnectTimeoutError", "TimeoutError", "timeout", "ReadTimeout"}:
        return f"the API server did not answer in {timeout_s:.3g} s" if timeout_s else "the API server did not answer in time"
    if names & {"ProtocolError", "RemoteDisconnected", "ConnectionResetError", "BrokenPipeError",
                "IncompleteRead", "ConnectionAbortedError"}:
        return "the connection was dropped"
    if names & {"NewConnectionError", "ConnectionRefusedError"}:
        return "could not connect (connection refused)"
    if names & {"SSLError", "SSLCertVerificationError"}:
        return "could not connect (TLS error)"
    return f"could not connect ({type(e).__name__})"


def _transient(e: Exception) -> bool:
    return isinstance(e, (urllib3.exceptions.HTTPError, TimeoutError, ConnectionError))


def connect(*, kubeconfig: str | None = None, context: str | None = None,
            host: str | None = None) -> client.ApiClient:
    """An API client: in-cluster service account, a kubeconfig, or a bare URL (tests, proxies).

    urllib3's own retries are off: :class:`Cluster` retries with backoff and counts every try.
    """
    cfg = client.Configuration()
    if host:
        cfg.host = host
    elif kubeconfig or not os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=cfg)
    else:
        config.load_incluster_config(client_configuration=cfg)
    cfg.retries = 0
    api = client.ApiClient(cfg)
    api.user_agent = "packer-reconciler"
    return api
