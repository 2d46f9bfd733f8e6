"""Reading what users hand us (fleets, plans, snapshots), bounded in time and memory.

Every command that reads a fleet, a plan or a metrics snapshot reads it through here (so do the
simulator's scenarios and traffic traces), so hostile or broken input fails the same way
everywhere: one :class:`InputError` line naming the file (or the field) and the fix, exit code 2.
The bounds:

* at most :data:`MAX_BYTES` are read (``packer plan /dev/zero`` stops at once; a reader of larger
  files, such as ``sims.traffic.read_trace``, passes its own cap); a named pipe whose writer stays
  silent for :data:`PIPE_WAIT_S` is refused;
* the text must be UTF-8;
* YAML is parsed as events first, without recursion, and refused when nesting is deeper than
  :data:`MAX_DEPTH` or when aliases would expand it past :data:`MAX_NODES` values (billion laughs);
* JSON refuses ``NaN``/``Infinity`` and overlong integers; its nesting gets the same depth bound;
* every number in the document must be finite and at most :data:`MAX_NUMBER` in size.

Field-specific ranges (an ``rps`` of 10⁹ is finite but absurd) belong to the readers of each
format (``packer.fleet``, ``packer.scaling.signals``); :func:`number` helps them say the range.
"""

from __future__ import annotations

import json
import math
import os
import re
import select
import stat
from pathlib import Path
from typing import Any

import yaml

from packer.errors import UserError

MAX_BYTES = 16 * 2**20
MAX_DEPTH = 32
MAX_NODES = 1_000_000
MAX_NUMBER = 1e15
"""Larger than any count, rate or time a fleet, plan or snapshot holds; far below overflow."""
MAX_NUMBER_CHARS = 1000
"""Longest plain YAML scalar that may be read as a number (a float needs about 25)."""
SHOW = 60
"""Characters of a user's value echoed in a message."""


class InputError(UserError, ValueError):
    """A file or value a user can fix: ``field`` says where, the message says how."""

    def __init__(self, field: str, problem: str, fix: str) -> None:
        self.field, self.problem, self.fix = field, problem, fix
        super().__init__(f"{field}: {problem}. Fix: {fix}")


def show(v: Any, limit: int = SHOW) -> str:
    """``repr(v)`` cut to ``limit`` characters, so a 1 MB name is echoed as its first few."""
    if isinstance(v, (list, dict, tuple, set)) and len(v) > 20:
        return f"a {type(v).__name__} of {len(v)} items"
    try:
        r = repr(v)
    except (ValueError, RecursionError, OverflowError):  # e.g. an int of over 4300 digits
        return f"a {type(v).__name__}"
    return r if len(r) <= limit else r[: limit - 1] + "…"


def cut(s: str, limit: int = SHOW) -> str:
    """A string cut to ``limit`` characters (no quotes added)."""
    return s if len(s) <= limit else s[: limit - 1] + "…"


def kind_of(doc: Any) -> str:
    """What a document that should be a mapping is, as a message names it: ``a list``, ``the text
    'abc'``, ``the number 3`` (fleet and scenario files alike)."""
    if isinstance(doc, list):
        return "a list"
    if isinstance(doc, str):
        return f"the text {show(doc)}"
    if isinstance(doc, (int, float)) and not isinstance(doc, bool):
        return f"the number {show(doc)}"
    return f"a {type(doc).__name__}"


def cut_path(path: Any, limit: int = 160) -> str:
    """A path cut from the front, so the file's name stays: ``…/deep/dir/plan.json``."""
    s = str(path)
    return s if len(s) <= limit else "…" + s[-(limit - 1):]


def listing(names: Any, limit: int = 8) -> str:
    """``a, b, c, … (N more)``: an error lists a few names, never 100 000 of them."""
    names = [str(n) for n in names]
    shown = [n if len(n) <= SHOW else n[: SHOW - 1] + "…" for n in names[:limit]]
    more = f", … ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(shown) + more


PIPE_WAIT_S = 30.0
"""Longest wait for a pipe's writer (``packer plan <(make-fleet)``, a named pipe) to say more."""


def _read_pipe(path: str | Path, p: str, limit: int, fix: str) -> bytes:
    """A pipe read without blocking past :data:`PIPE_WAIT_S` between chunks: ``packer plan`` on
    a named pipe nobody writes to waited forever (found by fuzzing); it is now refused once no
    writer has sent anything for that long. At most ``limit + 1`` bytes are kept."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    chunks: list[bytes] = []
    size = 0
    try:
        while size <= limit:
            ready, _, _ = select.select([fd], [], [], PIPE_WAIT_S)
            if not ready:
                raise InputError(p, f"is a pipe that sent nothing for {PIPE_WAIT_S:g} s", fix)
            try:
                chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            except BlockingIOError:
                continue
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


def size_text(n: int) -> str:
    """A byte count as a cap is named: ``16 MiB``, ``512 KiB``, ``100 bytes``."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n:,} bytes"


def read_text(path: str | Path, fix: str, *, max_bytes: int | None = None,
              whole: str = "give the fleet, plan or snapshot file itself") -> str:
    """The file's text: at most ``max_bytes`` (default :data:`MAX_BYTES`), UTF-8, else an
    :class:`InputError` naming the file. A named pipe waits at most :data:`PIPE_WAIT_S` for its
    writer. ``fix`` is the advice for a missing or unreadable file, ``whole`` for a pipe that
    stays silent and for a file over the cap (each reader says what it expected)."""
    p = str(path)
    limit = MAX_BYTES if max_bytes is None else max_bytes
    try:
        if stat.S_ISFIFO(os.stat(path).st_mode):
            data = _read_pipe(path, p, limit, whole)
        else:
            with open(path, "rb") as fh:
                data = fh.read(limit + 1)
    except FileNotFoundError:
        raise InputError(p, "no such file", fix) from None
    except IsADirectoryError:
        raise InputError(p, "is a directory", fix) from None
    except PermissionError:
        raise InputError(p, "is not readable (permission denied)", "check the file's permissions") from None
    except OSError as e:
        raise InputError(p, f"cannot be read ({e.strerror or e})", fix) from None
    if len(data) > limit:
        raise InputError(p, f"is larger than {size_text(limit)}, the most packer reads", whole)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise InputError(p, f"is not UTF-8 text (byte 0x{data[e.start]:02x} at line {line})",
                         "save the file as UTF-8") from None


# ---------------------------------------------------------------------------------------------
# YAML

_Base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Repeated(yaml.YAMLError):
    """A mapping names one key twice (YAML would keep the last value without a word)."""

    def __init__(self, key: str, line: int) -> None:
        super().__init__(key)
        self.key, self.line = key, line


class _Misread(yaml.YAMLError):
    """A number YAML 1.1 reads other than as written: ``010`` is 8 (octal), ``1:30`` is 90 (base 60)."""

    def __init__(self, text: str, value: Any, node: yaml.Node, why: str, meant: str) -> None:
        super().__init__(text)
        self.text, self.value, self.node, self.why, self.meant = text, value, node, why, meant
        self.key: str | None = None


_OCTAL = re.compile(r"^[-+]?0[0-7_]+$")


class _Loader(_Base):  # type: ignore[misc, valid-type]
    """Safe YAML, plus YAML 1.2 floats: ``1e3`` is the number 1000, not the string "1e3"; and a
    key given twice in one mapping is an error (``gpus_per_node: 2`` then ``gpus_per_node: 64``
    planned on 64 without a word; found by fuzzing). Merge keys (``<<``) still override. A
    number YAML 1.1 reads other than as written (``010``, ``1:30``) is refused (:func:`_number`)."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key, _ in node.value:
                if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                    if key.value in seen:
                        raise _Repeated(key.value, key.start_mark.line + 1)
                    seen.add(key.value)
        try:
            return super().construct_mapping(node, deep=deep)
        except _Misread as e:  # name the key whose value it is
            if e.key is None:
                e.key = next((k.value for k, v in node.value if v is e.node and isinstance(k, yaml.ScalarNode)), None)
            raise


def _number(loader: yaml.SafeLoader, node: yaml.ScalarNode, base: Any) -> Any:
    """A YAML 1.1 number, refused where it reads other than as written: PyYAML takes ``max_nodes:
    010`` for 8 and ``peak_rps: 1:30`` for 90, where a reader (and YAML 1.2) sees 10 and a string."""
    value = base(loader, node)
    text = node.value
    if isinstance(value, int) and _OCTAL.match(text) and int(text.replace("_", ""), 10) != value:
        raise _Misread(text, value, node, "an octal number", f"{int(text.replace('_', ''), 10)} if that was meant")
    if ":" in text:
        raise _Misread(text, value, node, "a base-60 number", f"{value}")
    return value


_Loader.add_constructor("tag:yaml.org,2002:int",
                        lambda loader, node: _number(loader, node, yaml.SafeLoader.construct_yaml_int))
_Loader.add_constructor("tag:yaml.org,2002:float",
                        lambda loader, node: _number(loader, node, yaml.SafeLoader.construct_yaml_float))
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _yaml_error(where: str, e: yaml.YAMLError) -> InputError:
    mark = getattr(e, "problem_mark", None)
    at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    if isinstance(e, yaml.constructor.ConstructorError):  # a tag such as !!python/object, a list as a key
        return InputError(where, f"holds a value packer does not read{at} ({show(str(e.problem), 80)})",
                          "write plain values: text, numbers, lists and mappings")
    return InputError(where, f"is not valid YAML{at}", "fix the syntax (indentation, colons, quotes)")


def _check_events(text: str, where: str) -> None:
    """Depth and alias-expanded size from the event stream: no recursion, no expansion."""
    sizes: dict[str, int] = {}  # anchor -> values under it, aliases expanded
    stack: list[list[Any]] = []  # open collections: [anchor, values so far]
    total = 0
    aliased = False  # whether an alias was met: what the message blames

    def add(n: int) -> None:
        nonlocal total
        if stack:
            stack[-1][1] += n
            if stack[-1][1] > MAX_NODES:
                if aliased:
                    raise InputError(where, f"expands to more than {MAX_NODES:,} values (YAML aliases)",
                                     "write the values out, or use fewer aliases")
                raise InputError(where, f"holds more than {MAX_NODES:,} values, past what packer reads "
                                 "(a fleet of about 30,000 models)", "split it into smaller files")
        else:
            total += n

    for ev in yaml.parse(text, Loader=_Loader):
        if isinstance(ev, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            stack.append([ev.anchor, 1])
            if len(stack) > MAX_DEPTH:
                raise InputError(where, f"is nested deeper than {MAX_DEPTH} levels",
                                 "a fleet, plan or snapshot is a few levels deep; check the file")
        elif isinstance(ev, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            anchor, n = stack.pop()
            if anchor is not None:
                sizes[anchor] = n
            add(n)
        elif isinstance(ev, yaml.ScalarEvent):
            numeric = ev.implicit[0] or ev.tag in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
            if numeric and len(ev.value) > MAX_NUMBER_CHARS and ev.value[:1] in "+-.0123456789":
                # a plain scalar that may resolve as a number: 10**5000 or 1:2:3:… (base 60) would
                # take quadratic time to build, or fail past Python's 4300 digits
                raise InputError(where, f"holds a number of over {MAX_NUMBER_CHARS} characters "
                                 f"(line {ev.start_mark.line + 1})", "give numbers in their usual form")
            if ev.anchor is not None:
                sizes[ev.anchor] = 1
            add(1)
        elif isinstance(ev, yaml.AliasEvent):
            aliased = True
            add(sizes.get(ev.anchor, 1))


def parse_yaml(text: str, where: str, *, numbers: bool = True) -> Any:
    """One YAML document, within the bounds above (``numbers=False``: the caller checks numbers)."""
    try:
        _check_events(text, where)
        doc = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except InputError:
        raise
    except _Repeated as e:
        raise InputError(where, f"gives the key {show(e.key)} twice in one mapping (line {e.line})",
                         "keep one of them") from None
    except _Misread as e:
        key = f"{show(e.key)}: " if e.key is not None else ""
        raise InputError(where, f"reads {key}{cut(e.text)} (line {e.node.start_mark.line + 1}) as {cut(str(e.value))}, "
                         f"{e.why} in YAML 1.1", f"write it in decimal ({cut(e.meant)}), or quote it if it is text") from None
    except yaml.YAMLError as e:
        raise _yaml_error(where, e) from None
    except RecursionError:  # not reached after the depth check; kept as a last guard
        raise InputError(where, f"is nested deeper than {MAX_DEPTH} levels", "check the file") from None
    except (ValueError, TypeError, OverflowError) as e:  # a value YAML parses but cannot build: 2020-13-45
        raise InputError(where, f"holds a value that cannot be read ({show(str(e), 80)})",
                         "quote it if it is text, or fix it") from None
    check_tree(doc, where, numbers=numbers)
    return doc


# ---------------------------------------------------------------------------------------------
# JSON


class _Constant(ValueError):
    pass


def _no_constant(name: str) -> Any:
    raise _Constant(name)


def parse_json(text: str, where: str) -> Any:
    """One JSON document, within the bounds above (no NaN/Infinity)."""
    try:
        doc = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        raise InputError(where, f"is not JSON ({e.msg} at line {e.lineno}, column {e.colno})",
                         "fix the syntax, or regenerate the file") from None
    except RecursionError:
        raise InputError(where, f"is nested deeper than {MAX_DEPTH} levels", "check the file") from None
    except _Constant as e:
        raise InputError(where, f"holds {e}, not a number packer accepts",
                         f"give finite numbers of at most {MAX_NUMBER:g}") from None
    except ValueError as e:  # an integer of more than 4300 digits
        raise InputError(where, f"holds a value packer refuses ({show(str(e), 80)})",
                         f"give finite numbers of at most {MAX_NUMBER:g}") from None
    check_tree(doc, where)
    return doc


def looks_like_json(text: str) -> bool:
    return text.lstrip()[:1] in ("{", "[")


# ---------------------------------------------------------------------------------------------
# Both


def _join(path: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    k = cut(key) if isinstance(key, str) else show(key)
    return f"{path}.{k}" if path else k


def check_tree(doc: Any, where: str, *, numbers: bool = True) -> None:
    """Depth, size and numbers of a parsed document, iteratively; names the field at fault."""
    todo: list[tuple[Any, str, int]] = [(doc, "", 0)]
    seen = 0
    while todo:
        v, path, depth = todo.pop()
        seen += 1
        if seen > MAX_NODES:
            raise InputError(where, f"holds more than {MAX_NODES:,} values", "give a smaller file")
        if isinstance(v, (dict, list)):
            if depth >= MAX_DEPTH:
                raise InputError(where, f"is nested deeper than {MAX_DEPTH} levels",
                                 "a fleet, plan or snapshot is a few levels deep; check the file")
            items = v.items() if isinstance(v, dict) else enumerate(v)
            for k, x in items:
                todo.append((x, (path, k), depth + 1))  # type: ignore[arg-type]
        elif isinstance(v, bool) or v is None or isinstance(v, str) or not numbers:
            continue
        elif isinstance(v, (int, float)):
            if not (math.isfinite(v) if isinstance(v, float) else True) or abs(v) > MAX_NUMBER:
                raise InputError(f"{where}: {_path(path)}", f"{num(v)} is not a number packer accepts",
                                 f"give a finite number of at most {MAX_NUMBER:g}")


def _path(p: Any) -> str:
    """Paths are built lazily as nested ``(parent, key)`` pairs; only an error spells one out."""
    keys = []
    while isinstance(p, tuple):
        p, k = p
        keys.append(k)
    out = ""
    for k in reversed(keys):
        out = _join(out, k)
    return out or "(top level)"


def num(v: Any) -> str:
    """A number as a message shows it: ``nan``, ``1e+308``, ``12``, ``9.22e+18``."""
    if isinstance(v, int) and not isinstance(v, bool):
        if abs(v) < 10**15:
            return str(v)
        return f"{v:.3g}" if abs(v) < 10**300 else "an integer of over 300 digits"
    if isinstance(v, float):
        return f"{v:.6g}"
    return show(v)


def number(v: Any, where: str, lo: float, hi: float, unit: str, fix: str, *, lo_open: bool = False,
           err: type[InputError] = InputError) -> Any:
    """``v`` if it is finite and in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``), else an error saying the range."""
    ok = (math.isfinite(v) if isinstance(v, float) else True) and (v > lo if lo_open else v >= lo) and v <= hi
    if not ok:
        rng = f"more than {lo:g} and at most {hi:g}" if lo_open else f"{lo:g} to {hi:g}"
        raise err(where, f"is {num(v)}, outside the allowed range ({rng}{' ' + unit if unit else ''})", fix)
    return v
