"""The plan picture (`packer plan --svg`): one drawn GPU per GPU the plan buys, memory and compute
both shown per slot (a memory-bound slot must not look empty), a legend and a scale."""

from __future__ import annotations

import colorsys
import dataclasses
import re
import xml.etree.ElementTree as ET

import pytest

from packer_cli.plan import example_path
from packer.fleetfile import load_fleet
from packer.planner import PlanSettings, plan_fleet
from packer.queue import busy_share
from packer import report
from packer.report import svg, table
from packer.slot import SlotType, item, lone_rate

EXAMPLES = example_path().parent
NS = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def llm_plan():
    return plan_fleet(load_fleet(EXAMPLES / "llm-platform.yaml"), PlanSettings(time_limit_s=2, seed=0))


@pytest.fixture(scope="module")
def mm_plan():
    return plan_fleet(load_fleet(EXAMPLES / "multilingual-meetings.yaml"), PlanSettings(time_limit_s=3, seed=0))


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


def test_a_lone_replica_of_sticky_streams_shows_what_it_holds_for_their_count(mm_plan) -> None:
    """asr-en's lone L4 replicas are busy 64 % on average but sized for their streams' 99.9 % count;
    the cap binds on that. Drawn at the mean alone, the picture showed room under the cap that a
    user could not use (the binding read ``compute`` beside a bar well short of the cap)."""
    plan = mm_plan
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


def _renamed(plan, old: str, new: str):
    """``plan`` with node ``old`` called ``new`` (its content otherwise the same)."""
    ren = lambda x: dataclasses.replace(x, node=new) if x.node == old else x  # noqa: E731
    return dataclasses.replace(plan, placements=tuple(ren(p) for p in plan.placements),
                               layouts=tuple(ren(l) for l in plan.layouts))


def test_nodes_are_shown_in_number_order_in_the_table_and_the_picture(mm_plan) -> None:
    """l4-n2 before l4-n10 (as text, l4-n10 came between l4-n1 and l4-n2), by pool, node, GPU."""
    assert {"l4-n0", "l4-n1", "l4-n2"} <= {p.node for p in mm_plan.placements}
    plan = _renamed(mm_plan, "l4-n1", "l4-n10")
    want = sorted({(p.pool, p.node, g) for p in plan.placements for g in (p.gpus or (p.gpu,))},
                  key=lambda k: (k[0], int(k[1].rsplit("-n", 1)[1]), k[2]))
    drawn = [g.get("data-gpu") for g in _tree(plan).iter(f"{NS}g") if g.get("class") == "gpu"]
    assert drawn == [f"{pool}/{node}/gpu{gpu}" for pool, node, gpu in want]
    shown = [m.group(1, 2) for m in re.finditer(r"^(\S+)/gpu(\d+)", table(plan), re.M)]
    assert shown == [(node, str(gpu)) for _, node, gpu in want]
    assert [p.id for p in plan.placements] == [p.id for p in _renamed(mm_plan, "l4-n1", "l4-n10").placements]


def test_the_held_legend_swatch_is_drawn_as_the_held_areas_are(mm_plan) -> None:
    """The chart draws a held share in its model's colour, paler (it was legended in grey)."""
    elems = list(_tree(mm_plan).iter())
    look = lambda r: (r.get("fill"), r.get("fill-opacity"))  # noqa: E731
    reserve = next(i for i, r in enumerate(elems) if r.get("class") == "reserve")
    after = next(r for r in elems[reserve + 1:] if r.tag == f"{NS}rect")  # a pattern over it, if any
    drawn = {look(elems[reserve])} | ({look(after)} if after.get("fill", "").startswith("url(") else set())
    text = next(i for i, t in enumerate(elems) if t.tag == f"{NS}text" and (t.text or "").startswith("held for"))
    start = max(i for i, t in enumerate(elems[:text]) if t.tag == f"{NS}text") + 1
    swatch = {look(r) for r in elems[start:text] if r.tag == f"{NS}rect"}
    assert swatch == drawn
    assert elems[reserve].get("fill") == report.colours([m for m in mm_plan.replicas])["asr-en"]


def test_no_model_colour_is_a_grey_of_the_picture() -> None:
    """summarizer-es was #c7c7c7, the free track's and the old held swatch's grey."""
    for c in report._PALETTE:
        _, _, sat = colorsys.rgb_to_hls(*(int(c[i:i + 2], 16) / 255 for i in (1, 3, 5)))
        assert sat > 0.2, c  # the greys had 0


def test_a_long_limit_note_is_wrapped_not_cut(mm_plan) -> None:
    """A GPU of many slots listed every slot's limit; the note ran past the picture's right edge."""
    a100 = [p for p in mm_plan.placements if p.pool.startswith("a100")]
    assert len(a100) >= 3
    slos = {p.id: f"slo:model-{i}" for i, p in enumerate(a100)}
    plan = dataclasses.replace(mm_plan, placements=tuple(
        dataclasses.replace(p, binding=slos[p.id]) if p.id in slos else p for p in mm_plan.placements))
    row = next(g for g in _tree(plan).iter(f"{NS}g") if g.get("data-gpu", "").startswith("a100"))
    note = [t for t in row.iter(f"{NS}text") if t.find(f"{NS}title") is not None][-1]
    shown = " ".join(filter(None, [note.text] + [t.text for t in note.findall(f"{NS}tspan")]))
    assert "…" not in shown
    for i in range(len(a100)):
        assert f"model-{i}" in shown


def test_the_table_says_how_much_of_its_tightest_limit_a_slot_uses():
    """The column read "compute" alone on a slot at 61 % of an 85 % cap, as if at its limit."""
    from packer.report import table, tightest

    plan = plan_fleet(load_fleet(example_path()), PlanSettings(time_limit_s=2))
    assert "TIGHTEST" in table(plan).splitlines()[0]
    for p in plan.placements:
        said = tightest(plan, p)
        pct = float(said.rsplit(" ", 1)[1].rstrip("%"))
        assert 0 < pct <= 100.5, said  # a sound plan is within every limit
        if p.binding == "compute":
            assert said == f"compute {p.compute_share / plan.settings.u:.0%}"
