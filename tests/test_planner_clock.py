"""The wall clock and the plan: each stage of the search ends on its own count (deterministic
seconds), so a seed gives one plan on any machine, and the wall clock is only a guard. Where a
guard ends a stage first (a machine slower or busier than the counts assume), the plan names the
stages; with ``--reproducible`` no guard does, and the plan is the one an idle machine makes.

The slow machine is a clock that runs six times as fast as the real one (``time.monotonic``,
which every guard reads); CP-SAT's and HiGHS's own clocks are real, and their guards are lifted
the same way."""

from __future__ import annotations

import json
import math
import time

import pytest

from bench.family import family_fleet
from packer.fleetfile import parse_fleet
from packer.planner import PlanSettings, plan_fleet
from packer.planner.model import Problem
from packer_cli.main import main

FLEET = family_fleet(0, max_models=80, min_models=62)  # family-0-long-tail-76: past solve.PATTERN_FIRST
LIMIT = 2.0  # seconds: the counts, and the wall-clock cap at solve.WALL_CAP times it
FAST = 6.0  # the slow machine's clock runs this many times as fast as the real one


@pytest.fixture
def slow_clock(monkeypatch):
    real = time.monotonic
    start = real()
    monkeypatch.setattr(time, "monotonic", lambda: start + FAST * (real() - start))


def _placed(plan) -> list:
    return sorted((p.id, tuple(sorted((m.name, m.replica) for m in p.models))) for p in plan.placements)


def _clock_warnings(plan) -> list[str]:
    return [w for w in plan.warnings if w.startswith("the wall clock ended")]


@pytest.fixture(scope="module")
def idle():
    """The plan the counts give: reproducible, on the real clock of the machine the suite runs on."""
    return plan_fleet(parse_fleet(FLEET), PlanSettings(time_limit_s=LIMIT, reproducible=True))


def test_reproducible_plans_on_a_slow_machine_as_an_idle_one_does(idle, slow_clock) -> None:
    slow = plan_fleet(parse_fleet(FLEET), PlanSettings(time_limit_s=LIMIT, reproducible=True))
    assert not _clock_warnings(idle) and not _clock_warnings(slow)
    assert slow.cost_per_hour == idle.cost_per_hour
    assert slow.lower_bound_cost_per_hour == idle.lower_bound_cost_per_hour
    assert _placed(slow) == _placed(idle)


def test_a_plan_the_wall_clock_cut_says_which_stages(idle, slow_clock) -> None:
    """Without ``reproducible`` the guards end stages on the slow machine (the cap, 1.12 times the
    limit, comes after a third of the limit's real seconds), and the plan says so."""
    cut = plan_fleet(parse_fleet(FLEET), PlanSettings(time_limit_s=LIMIT))
    said = _clock_warnings(cut)
    assert len(said) == 1 and "--reproducible" in said[0]
    assert "the packing from the pattern LP's columns" in said[0] or "the LNS windows" in said[0]
    assert cut.cost_per_hour >= cut.lower_bound_cost_per_hour > 0  # still a plan, and a bound under it


def test_past_names_a_stage_once_and_never_when_reproducible(monkeypatch) -> None:
    fleet = parse_fleet(FLEET)
    problem = Problem(fleet, PlanSettings())
    now = time.monotonic()
    assert not problem.past(now + 60, "a stage") and problem.clock_cuts == []
    assert problem.past(now - 1, "a stage") and problem.past(now - 1, "a stage")
    assert problem.past(now - 1, "another") and problem.clock_cuts == ["a stage", "another"]
    assert problem.guard(now) == now
    steady = Problem(fleet, PlanSettings(reproducible=True))
    assert not steady.past(-math.inf, "a stage") and steady.clock_cuts == []
    assert steady.guard(now) == math.inf


def test_the_cli_flag_reaches_the_plan_file(tmp_path, capsys) -> None:
    out = tmp_path / "plan.json"
    assert main(["plan", "--reproducible", "--time-limit", "1", "--prove", "0", "-o", str(out)]) == 0
    assert json.loads(out.read_text())["settings"]["reproducible"] is True
    capsys.readouterr()



def test_the_cap_leaves_the_first_packing_from_the_columns(monkeypatch) -> None:
    """Past the plan's wall-clock cap before the columns are packed at all, the fill's first pass
    still runs (it is what turns the columns into a packing; cut there, generated-500's plan was
    the greedy start's, 152.08/h against 137.50/h), and the steps after it do not."""
    from packer.planner import colplan, solve
    from packer.planner.build import cost_of, gpu_counts
    from packer.planner.patterns import pattern_bound

    problem = Problem(parse_fleet(FLEET), PlanSettings())
    start, _ = solve.greedy_packing(problem.fleet, problem.settings)
    found = pattern_bound(problem, 3.0, seeds=solve._groups(start))
    assert found is not None and found.patterns is not None
    steps: list[str] = []
    for name in ("sequential", "dive", "integer_master"):
        real = getattr(colplan, name)
        monkeypatch.setattr(solve, name, lambda *a, _n=name, _r=real, **k: (steps.append(_n), _r(*a, **k))[1])
    past = time.monotonic() - 1.0
    packed = solve._from_patterns(problem, found.patterns, start, {}, 2.0, until=past)
    assert steps == ["sequential"]
    assert cost_of(problem, gpu_counts(problem, packed)) < cost_of(problem, gpu_counts(problem, start))
    assert solve.COLUMNS_PACKING in problem.clock_cuts


def test_column_generation_charged_by_the_clock_is_named(monkeypatch) -> None:
    """Column generation's seconds are the wall clock's over ``WALL_FACTOR`` where those are more:
    its loop ends sooner and a caller counting them (``purchases.rule_out``) has less left, so the
    plan names it; reproducible, it counts its work alone."""
    from packer.planner.patterns import COLUMN_GENERATION, pattern_bound

    real = time.monotonic
    start = real()
    monkeypatch.setattr(time, "monotonic", lambda: start + 200.0 * (real() - start))
    fast = Problem(parse_fleet(FLEET), PlanSettings())
    walled = pattern_bound(fast, 1.0)
    assert walled is not None and COLUMN_GENERATION in fast.clock_cuts
    steady = Problem(parse_fleet(FLEET), PlanSettings(reproducible=True))
    counted = pattern_bound(steady, 1.0)
    assert counted is not None and steady.clock_cuts == [] and counted.rounds > walled.rounds
