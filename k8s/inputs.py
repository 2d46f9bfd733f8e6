"""Reading what others can write into the reconciler's ConfigMaps, within bounded time and memory.

The fleet ConfigMap is edited by people and the status ConfigMap by anyone with ConfigMap access
in the namespace: both may hold anything. Every read here caps its input before parsing (size,
nesting depth, YAML alias expansion, decompressed size) and fails with :class:`BadInput`, one
short line naming the limit, instead of a RecursionError, a MemoryError or an OOM kill.
"""

from __future__ import annotations

import json
import zlib
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, SequenceNode

MAX_TEXT = 1 << 20
"""Bytes of YAML or JSON text: a ConfigMap holds at most 1 MiB anyway."""
MAX_DEPTH = 64
"""Nesting of YAML/JSON containers: a fleet needs 5."""
MAX_NODES = 200_000
"""YAML nodes after alias expansion (a 500-model fleet has ~20 000): stops a billion laughs."""
MAX_PLAN_BYTES = 32 << 20
"""Decompressed bytes of the stored plan (a 500-group plan is well under 1 MiB): stops a gzip bomb."""


class BadInput(ValueError):
    """Input refused before or while parsing; the message is one short line."""


def short(e: BaseException | str, n: int = 300) -> str:
    """One line of at most ``n`` characters (an error may echo a megabyte of input)."""
    text = " ".join(str(e).split())
    return text if len(text) <= n else text[: n - 1] + "…"


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses deep nesting and too many aliases while composing."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node:  # type: ignore[override]
        if self.check_event(AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_NODES // 100:
                raise BadInput(f"more than {MAX_NODES // 100} YAML aliases")
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise BadInput(f"nested deeper than {MAX_DEPTH} levels")
            return Composer.compose_node(self, parent, index)
        finally:
            self._depth -= 1


def _expanded(node: Node, memo: dict[int, int]) -> int:
    """Nodes ``node`` stands for once every alias is expanded (shared nodes counted each time)."""
    k = id(node)
    if k in memo:
        return memo[k]
    memo[k] = 1  # a recursive anchor counts once
    n = 1
    if isinstance(node, SequenceNode):
        n += sum(_expanded(c, memo) for c in node.value)
    elif isinstance(node, MappingNode):
        n += sum(_expanded(a, memo) + _expanded(b, memo) for a, b in node.value)
    memo[k] = min(n, MAX_NODES + 1)
    return memo[k]


def _check_size(text: str | bytes, what: str) -> None:
    if len(text) > MAX_TEXT:
        raise BadInput(f"{what}: {len(text)} bytes, more than the {MAX_TEXT} limit")


def load_yaml(text: str, what: str) -> Any:
    """``yaml.safe_load`` within the limits above; :class:`BadInput` otherwise."""
    _check_size(text, what)
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded(node, {}) > MAX_NODES:
            raise BadInput(f"{what}: more than {MAX_NODES} values once YAML aliases are expanded")
        return loader.construct_document(node)
    except BadInput as e:
        raise BadInput(str(e) if str(e).startswith(what) else f"{what}: {e}") from None
    except yaml.YAMLError as e:
        raise BadInput(f"{what}: not valid YAML: {short(e, 200)}") from None
    except RecursionError:
        raise BadInput(f"{what}: nested too deeply") from None
    finally:
        loader.dispose()


def load_json(text: str | bytes, what: str, *, limit: int = MAX_TEXT) -> Any:
    """``json.loads`` with a size cap and no RecursionError; :class:`BadInput` otherwise."""
    if len(text) > limit:
        raise BadInput(f"{what}: {len(text)} bytes, more than the {limit} limit")
    try:
        return json.loads(text)
    except RecursionError:
        raise BadInput(f"{what}: nested too deeply") from None
    except ValueError as e:
        raise BadInput(f"{what}: not JSON: {short(e, 200)}") from None


def gunzip(data: bytes, what: str, limit: int = MAX_PLAN_BYTES) -> bytes:
    """Decompress gzip ``data`` to at most ``limit`` bytes."""
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(data, limit)
    except zlib.error as e:
        raise BadInput(f"{what}: not gzip: {short(e, 200)}") from None
    if d.unconsumed_tail:
        raise BadInput(f"{what}: more than {limit} bytes once decompressed")
    return out
