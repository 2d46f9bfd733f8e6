"""What every ``packer`` command shares at its edge: number options in a sane range, outputs
checked before the work starts, and the check that two plans or a plan and a fleet belong together.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import click

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
    """Refuse, before any work, an output file that cannot be written (or would overwrite an input)."""
    if not path:
        return
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
    """Refuse, before any work, an output directory that is a file or cannot be created."""
    if not path:
        return
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
