"""The plan picture (`packer plan --svg`): one drawn GPU per GPU the plan buys, memory and compute
both shown per slot (a memory-bound slot must not look empty), a legend and a scale."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from packer_cli.plan import example_path
from packer.fleetfile import load_fleet
from packer.planner import PlanSettings, plan_fleet
from packer.queue import busy_share
from packer.report import svg, table
from packer.slot import SlotType, item, lone_rate

EXAMPLES = example_path().parent
NS = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def llm_plan():
    return plan_fleet(load_fleet(EXAMPLES / "llm-platform.yaml"), PlanSettings(time_limit_s=2, seed=0))


def _tree(plan):
    return ET.fromstring(svg(plan))


def _width(tree, cls, slot, gpu_group=None):
    root = gpu_group if gpu_group is not None else tree
    return sum(float(r.get("width")) for r in root.iter(f"{NS}rect")
               if r.get("class") == cls and r.get("data-slot") == slot)


def test_one_drawn_gpu_per_gpu_the_plan_uses(llm_plan) -> None:
    assert any(len(p.gpus) > 1 for p in llm_plan.placements)  # the example has multi-GPU replicas
    groups = [g for g in _tree(llm_plan).iter(f"{NS}g") if g.get("class") == "gpu"]
    assert len(groups) == sum(llm_plan.gpus.values())
    drawn = {g.get("data-gpu") for g in groups}
    for p in llm_plan.placements:  # every GPU a multi-GPU replica spans has its own row, showing it
        for i in p.gpus:
            assert f"{p.pool}/{p.node}/gpu{i}" in drawn
            row = next(g for g in groups if g.get("data-gpu") == f"{p.pool}/{p.node}/gpu{i}")
            assert _width(None, "mem", p.id, row) > 0


def test_a_memory_bound_slot_shows_its_memory_share(llm_plan) -> None:
    tree = _tree(llm_plan)
    bar = max(float(r.get("width")) for r in tree.iter(f"{NS}rect") if r.get("class") == "slot")
    bound = [p for p in llm_plan.placements if p.binding == "memory" and p.slot == "whole"]
    assert bound, "the example should have a memory-bound slot"
    for p in bound:
        row = next(g for g in tree.iter(f"{NS}g") if g.get("data-gpu") == f"{p.pool}/{p.node}/gpu{p.gpu}")
        mem, compute = _width(None, "mem", p.id, row) / bar, _width(None, "compute", p.id, row) / bar
        assert mem == pytest.approx(p.memory_gb / p.memory_capacity_gb, abs=0.01)
        assert compute == pytest.approx(sum(m.share for m in p.models), abs=0.01)
        assert mem > compute  # memory, not compute, fills this GPU, and the picture says so


def test_legend_scale_and_tooltips(llm_plan) -> None:
    text = svg(llm_plan)
    tree = ET.fromstring(text)
    legend = [r for r in tree.iter(f"{NS}rect") if r.get("class") == "legend"]
    assert len(legend) == len(llm_plan.replicas)  # one swatch per model
    labels = [t.text for t in tree.iter(f"{NS}text")]
    for tick in ("0 %", "50 %", "100 %"):
        assert tick in labels
    assert "compute cap (85% of a slot's time: 15% headroom)" in labels
    assert "<title>" in text and "limit: memory" in text
    assert f"{llm_plan.cost_per_hour:.2f}/h" in text  # the CLI's money format, no currency sign


def test_a_lone_replica_of_sticky_streams_shows_what_it_holds_for_their_count() -> None:
    """asr-en's lone L4 replicas are busy 64 % on average but sized for their streams' 99.9 % count;
    the cap binds on that. Drawn at the mean alone, the picture showed room under the cap that a
    user could not use (the binding read ``compute`` beside a bar well short of the cap)."""
    plan = plan_fleet(load_fleet(EXAMPLES / "multilingual-meetings.yaml"), PlanSettings(time_limit_s=3, seed=0))
    cap = 1.0 - plan.settings.headroom
    tree = _tree(plan)
    bar = max(float(r.get("width")) for r in tree.iter(f"{NS}rect") if r.get("class") == "slot")
    lone = [p for p in plan.placements if p.duty_cycle_ms == 0 and p.models[0].name == "asr-en"]
    assert lone
    for p in lone:
        m = plan.model("asr-en")
        it = item(m, p.models[0].rate_rps, SlotType(plan.fleet.pool(p.pool)), cap)
        sized = busy_share(lone_rate(m, it.rate), it.base, it.per_item, m.max_batch)
        assert p.compute_share == pytest.approx(sized, abs=1e-4) and sized <= cap + 1e-9
        assert p.compute_share > p.models[0].share + 0.05  # the streams' reserve is not a rounding
        drawn = (_width(tree, "compute", p.id) + _width(tree, "reserve", p.id)) / bar
        assert drawn == pytest.approx(p.compute_share, abs=0.005)
    assert not any(r.get("class") == "reserve" and r.get("data-slot") not in {p.id for p in lone}
                   for r in tree.iter(f"{NS}rect"))  # only such replicas hold a reserve
    assert "held for sticky streams" in svg(plan)
    rows = [line for line in table(plan).splitlines() if "asr-en#" in line]
    share, held = p.models[0].share, p.compute_share - p.models[0].share
    assert rows and all(f"{share:.0%}+{held:.0%}" in line for line in rows)
