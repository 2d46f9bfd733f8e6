"""What every ``packer`` command shares at its edge: number options in a sane range, outputs
checked before the work starts, the check that two plans or a plan and a fleet belong together,
and one output convention for every command:

* ``--format table|json|yaml``: how the result is printed on stdout (a table for people);
* ``-o/--output FILE``: also write the result to FILE, as JSON, the form later stages read
  (``plan``: the plan; ``scale``: the plan after the actions; ``simulate``, ``capacity``,
  ``reconcile``, ``gpus``: the same document ``--format json`` prints);
* ``-d/--out-dir DIR``: where a command writes several files (``render``, ``simulate``'s report,
  ``capacity``'s plots). ``-o`` never names a directory; the old spellings still work, with a note.

Progress goes to stderr (:class:`Spinner`), so stdout stays the result alone.
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import yaml

from packer.errors import UserError
from packer.safeload import cut, cut_path, listing


class Number(click.ParamType):
    """A finite number in ``[lo, hi]`` (``lo_open``: above ``lo``): ``--time-limit -1`` and ``nan`` are refused."""

    def __init__(self, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
                 integer: bool = False, unit: str = "") -> None:
        self.lo, self.hi, self.lo_open, self.integer, self.unit = lo, hi, lo_open, integer, unit
        self.name = "integer" if integer else "number"

    def _range(self) -> str:
        lo = "" if self.lo is None else (f"more than {self.lo:g}" if self.lo_open else f"at least {self.lo:g}")
        hi = "" if self.hi is None else f"at most {int(self.hi) if self.integer else f'{self.hi:g}'}"
        return " and ".join(x for x in (lo, hi) if x) + (f" {self.unit}" if self.unit else "")

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, bool):
            self.fail(f"{value!r} is not a number", param, ctx)
        if isinstance(value, (int, float)):
            v = value
        else:
            s = str(value).strip()
            try:
                v = int(s) if self.integer else float(s)
            except ValueError:
                self.fail(f"{cut(s, 40)!r} is not {'an integer' if self.integer else 'a number'}; give "
                          f"{self._range() or 'a number'}", param, ctx)
        if isinstance(v, float) and not math.isfinite(v):
            self.fail(f"{v} is not a finite number; give {self._range()}", param, ctx)
        below = self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo)
        above = self.hi is not None and v > self.hi
        if below or above:
            self.fail(f"{v:g} is out of range; give {self._range()}", param, ctx)
        return v


SECONDS = Number(0, 1e6, lo_open=True, unit="seconds")
SEED = Number(0, 2**31 - 1, integer=True)


def check_output_file(path: str | None, option: str, *, not_: tuple[str | None, ...] = ()) -> None:
    """Refuse, before any work, an output file that cannot be written (or would overwrite an input).
    An empty path (``-o ''``, an unset shell variable) is refused: it used to write nothing and say
    nothing."""
    if path is None:
        return
    if not path.strip():
        raise UserError(f"{option}: the path is empty. Fix: give a file path, e.g. {option} plan.json, or leave "
                        f"{option} out")
    p = Path(path)
    for other in not_:
        if other and p.exists() and Path(other).exists() and p.resolve() == Path(other).resolve():
            raise UserError(f"{option} {cut_path(path)}: would overwrite the input file {cut_path(other)}. "
                            "Fix: write to another file, e.g. plan.json")
    if p.is_dir():
        raise UserError(f"{option} {cut_path(path)}: is a directory. "
                        f"Fix: give a file path, e.g. {cut_path(path)}/plan.json")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"{option} {cut_path(path)}: the directory {cut_path(str(parent))} does not exist. "
                        f"Fix: create it (mkdir -p {cut_path(str(parent))}) or give another path")
    if not os.access(parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise UserError(f"{option} {cut_path(path)}: cannot be written (permission denied). Fix: give a writable path")


def check_output_dir(path: str | None, option: str) -> None:
    """Refuse, before any work, an output directory that is a file or cannot be created, or an empty
    path (as :func:`check_output_file`)."""
    if path is None:
        return
    if not path.strip():
        raise UserError(f"{option}: the path is empty. Fix: give a directory, e.g. {option} out/")
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UserError(f"{option} {cut_path(path)}: is a file, not a directory. Fix: give a directory path")
    q = p
    while not q.exists():
        q = q.parent
    if not q.is_dir() or not os.access(q, os.W_OK):
        raise UserError(f"{option} {cut_path(path)}: cannot be created under {cut_path(str(q))}. "
                        "Fix: give a writable path")


def write_output(path: str, text: str, option: str) -> None:
    """Write an output file; a failure (disk full, removed directory) is one line, not a traceback."""
    try:
        Path(path).write_text(text)
    except OSError as e:
        raise UserError(f"{option} {cut_path(path)}: cannot be written ({e.strerror or e}). "
                        "Fix: give a writable path") from None


def same_fleet(plan_fleet: Any, fleet: Any, plan_path: str, fleet_path: str) -> None:
    """Refuse ``plan FLEET --current PLAN`` where PLAN was made for another fleet.

    A fleet evolves (traffic, models added or removed), so identity is loose: the same name and a
    model in common, or, renamed, at least half of the plan's models still in the fleet.
    """
    old = {m.name for m in plan_fleet.models}
    new = {m.name for m in fleet.models}
    common = len(old & new)
    if (plan_fleet.name == fleet.name and (common or not old or not new)) or 2 * common >= max(len(old), 1):
        return
    raise UserError(f"--current {cut_path(plan_path)}: a plan of fleet {cut(plan_fleet.name)!r} "
                    f"({len(old)} models, {common} in common), not of fleet {cut(fleet.name)!r} "
                    f"({cut_path(fleet_path)}, {len(new)} models). "
                    "Fix: give the plan made from this fleet, or drop --current")


def same_traffic(a: Any, b: Any, a_path: str, b_path: str) -> None:
    """Refuse ``simulate A --compare B`` where B serves other traffic: the comparison promises the same.

    Plans of one fleet on other pools or settings compare; their models and traffic must match.
    """
    ta = {m.name: (m.kind, m.traffic) for m in a.fleet.models}
    tb = {m.name: (m.kind, m.traffic) for m in b.fleet.models}
    if ta == tb:
        return
    only_a, only_b = sorted(set(ta) - set(tb)), sorted(set(tb) - set(ta))
    if only_a or only_b:
        what = "; ".join(x for x in (f"only in {cut_path(a_path)}: {listing(only_a, 4)}" if only_a else "",
                                     f"only in {cut_path(b_path)}: {listing(only_b, 4)}" if only_b else "") if x)
    else:
        diff = sorted(n for n in ta if ta[n] != tb[n])
        what = f"traffic differs for {listing(diff, 4)}"
    raise UserError(f"--compare {cut_path(b_path)}: serves other traffic than {cut_path(a_path)} (fleet "
                    f"{cut(b.fleet.name)!r} vs {cut(a.fleet.name)!r}; {what}). Fix: compare plans of the same "
                    "fleet and traffic, e.g. two `packer plan` runs of one fleet file")


# ---------------------------------------------------------------------------------------------
# One output convention for every command

FORMATS = ("table", "json", "yaml")
F = TypeVar("F", bound=Callable[..., Any])


def format_option(f: F) -> F:
    """``--format table|json|yaml``: the same option, default and help in every command."""
    return click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
                        help="How the result is printed: a table for people, JSON or YAML for tools.")(f)


def output_option(what: str) -> Callable[[F], F]:
    """``-o/--output FILE``: write ``what`` to FILE as JSON (checked before the work starts)."""
    return click.option("-o", "--output", "output", type=click.Path(dir_okay=False), metavar="FILE",
                        help=f"Also write {what} to FILE as JSON.")


def json_alias(f: F) -> F:
    """The old ``--json`` flag, hidden: scripts that use it keep working (see :func:`resolve_format`)."""
    return click.option("--json", "as_json", is_flag=True, hidden=True,
                        help="Deprecated: use --format json.")(f)


def out_dir_option(what: str, *, old: tuple[str, ...] = ("--out",)) -> Callable[[F], F]:
    """``-d/--out-dir DIR`` plus the old spelling(s), hidden, that :func:`resolve_out_dir` merges."""
    def deco(f: F) -> F:
        f = click.option(*old, "old_out_dir", type=click.Path(file_okay=False), hidden=True, default=None,
                         help="Deprecated: use -d/--out-dir.")(f)
        return click.option("-d", "--out-dir", "out_dir", type=click.Path(file_okay=False), default=None,
                            metavar="DIR", help=f"Write {what} to DIR.")(f)
    return deco


def note(msg: str) -> None:
    """One line on stderr that is neither the result nor an error (a deprecation, where a file went)."""
    click.echo(f"note: {msg}", err=True)


PENDING: list[str] = []
"""Deprecation notes of this run, printed by :func:`flush_notes` when the command has succeeded:
a user error stays the one line of its run."""


def deprecated(msg: str) -> None:
    """Note an old spelling, shown after the command's output (only if the command succeeds)."""
    if msg not in PENDING:
        PENDING.append(msg)


def flush_notes(ok: bool) -> None:
    """Print the pending notes if the run succeeded; forget them either way."""
    if ok:
        for msg in PENDING:
            note(msg)
    PENDING.clear()


def resolve_format(fmt: str, as_json: bool) -> str:
    """``--json`` is ``--format json``, with a note saying so."""
    if as_json:
        deprecated("--json is deprecated; use --format json (every command takes --format table|json|yaml)")
        return "json"
    return fmt


def resolve_out_dir(out_dir: str | None, old: str | None, old_name: str = "--out") -> str | None:
    """The output directory from ``-d/--out-dir`` or, with a deprecation note, its old spelling."""
    if old and out_dir and Path(old) != Path(out_dir):
        raise UserError(f"{old_name} {cut_path(old)} and --out-dir {cut_path(out_dir)}: two output directories. "
                        "Fix: give only -d/--out-dir")
    if old and not out_dir:
        deprecated(f"{old_name} DIR is deprecated; use -d/--out-dir DIR (-o names a result file in every command)")
        return old
    return out_dir


def dump(doc: Any, fmt: str) -> str:
    """``doc`` as JSON or YAML text (``fmt`` is not ``table``)."""
    if fmt == "yaml":
        return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True).rstrip("\n")
    return json.dumps(doc, indent=2)


def emit(doc: Any, fmt: str, table_text: Callable[[], str], output: str | None = None,
         option: str = "-o") -> None:
    """Print the result as ``fmt`` (``table_text()`` for a table) and write it as JSON to ``output``."""
    if output:
        write_output(output, json.dumps(doc, indent=2) + "\n", option)
    click.echo(table_text() if fmt == "table" else dump(doc, fmt))


# ---------------------------------------------------------------------------------------------
# Progress


FRAMES = "|/-\\"


def progress_enabled() -> bool:
    """Progress lines only on a terminal: logs and pipes get the result alone."""
    return sys.stderr.isatty()


class Spinner:
    """A progress line on stderr once work has taken more than a second, cleared when it ends.

    ``label`` says what the command is doing ("solving", "starting tritonserver"); ``update`` (the
    planner's progress callback) adds the current stage. A silent terminal for 10 s or a minute
    looks hung; a line that ticks does not.
    """

    def __init__(self, enabled: bool = True, label: str = "solving") -> None:
        self.enabled = enabled and progress_enabled()
        self.label = label
        self.stage = ""
        self.shown = False
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Spinner":
        if self.enabled:
            self._thread.start()
        return self

    def update(self, stage: str, _elapsed: float = 0.0) -> None:
        self.stage = stage

    def line(self, elapsed: float, frame: int = 0) -> str:
        return f"{FRAMES[frame % 4]} {self.label}… {elapsed:5.1f} s  {self.stage[:50]}"

    def _run(self) -> None:
        i = 0
        while not self._stop.wait(0.2):
            el = time.monotonic() - self._t0
            if el > 1.0:
                sys.stderr.write("\r" + self.line(el, i).ljust(80))
                sys.stderr.flush()
                self.shown = True
                i += 1

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self.enabled:
            self._thread.join()
            if self.shown:
                sys.stderr.write("\r" + " " * 80 + "\r")
                sys.stderr.flush()
