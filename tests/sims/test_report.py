"""The simulator's report and the capacity plot, read from the HTML text and the figure objects:
a summary on top, the SLO on the p99 panel, whole replicas, each repeated action once, and a
capacity plot whose GPU and cost lines cannot lie on top of each other."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from sims import report


def _run(policy: str, cost: float, gpu_hours: float, attainment: float, models: list[dict[str, Any]],
         actions: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    t = [0.0, 60.0, 120.0, 180.0]
    return {
        "policy": policy, "plan": "abc123", "scenario": "spike", "duration_s": 180.0, "seed": 1,
        "fleet": {"gpu_hours": {"l4": gpu_hours}, "cost": cost, "mean_cost_per_hour": cost * 20,
                  "plan_cost_per_hour": 1.6, "requests": 1000, "slo_attainment": attainment},
        "models": models,
        "series": {"t": t, "cost_per_hour": [1.6] * 4,
                   "models": {m["name"]: {"rate": [10.0] * 4, "p50": [20.0] * 4, "p99": [40.0, 50.0, 60.0, 45.0],
                                          "rejected": [0] * 4, "replicas": [1, 2, 2, 3]} for m in models}},
        "actions": actions or [], "perf": {"wall_s": 0.1, "requests_per_wall_s": 10000, "peak_rss_mb": 100.0},
    }


def _model(name: str, slo: float, p99: float, attainment: float, arrivals: int = 500) -> dict[str, Any]:
    return {"name": name, "arrivals": arrivals, "completed": arrivals, "p50_ms": p99 / 2, "p99_ms": p99,
            "slo_ms": slo, "slo_attainment": attainment, "rejected": {}, "cdf": [[50, p99 / 2], [99, p99]]}


@pytest.fixture()
def runs() -> list[dict[str, Any]]:
    add = {"t": 15.0, "action": "add slot l4/whole with asr", "reason": "asr: busy 100% vs target 60%, want 4",
           "outcome": "applied"}
    a = _run("static", 0.08, 0.1, 0.9990, [_model("asr", 200, 150, 1.0), _model("punct", 100, 120, 0.97)])
    b = _run("hpa", 0.16, 0.2, 1.0, [_model("asr", 200, 90, 1.0), _model("punct", 100, 40, 1.0)],
             actions=[add, dict(add, t=15.0, outcome="applied: l4-new2"), dict(add, t=75.0),
                      {"t": 90.0, "action": "remove slot l4-new1", "reason": "idle", "outcome": "applied"}])
    return [a, b]


def test_summary_on_top_compares_the_policies(runs, tmp_path: Path) -> None:
    page = report.write(runs, tmp_path).read_text()
    top = page[:page.index("<img")]
    assert page.index("Summary") < page.index("<pre>")  # before the per-model table and the plots
    for text in ("static @ plan abc123", "hpa @ plan abc123", "0.08", "0.16", "GPU-hours", "0.10", "0.20",
                 "99.9000%", "100.0000%", "worst model", "punct: 97.00% in SLO", "+100.0%"):
        assert text in top, text
    s = report.summary(runs)
    assert [r["worst_model"] for r in s] == ["punct", "asr"]  # hpa: all in SLO, asr's p99 closest to it
    assert s[0]["missing"] == ["punct"] and s[1]["missing"] == []
    assert report.verdict(runs).startswith("hpa @ plan abc123 costs 0.08 more than static @ plan abc123")
    assert "costs" not in report.write(runs[:1], tmp_path / "one").read_text().split("<pre>")[0]


def test_each_repeated_reason_once_with_a_count(runs, tmp_path: Path) -> None:
    page = report.write(runs, tmp_path).read_text()
    assert page.count("asr: busy 100% vs target 60%, want 4") == 1
    assert "3&times;" in page and "15&ndash;75" in page
    assert "applied<br>applied: l4-new2" in page  # the distinct outcomes, each once
    g = report.grouped_actions(runs[1]["actions"])
    assert [(x["count"], x["first_t"], x["last_t"]) for x in g] == [(3, 15.0, 75.0), (1, 90.0, 90.0)]


def test_p99_panel_draws_each_slo_and_replicas_are_whole(runs) -> None:
    fig = report.series_figure(runs)
    try:
        _, p99, replicas = fig.axes
        flat = [tuple(ln.get_ydata()) for ln in p99.get_lines() if len(set(ln.get_ydata())) == 1]
        assert {v[0] for v in flat} >= {200, 100}  # a horizontal line at each plotted model's SLO
        assert any("SLO 200 ms" in t.get_text() for t in p99.texts)
        ticks = [t for t in replicas.get_yticks() if replicas.get_ylim()[0] <= t <= replicas.get_ylim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks)
    finally:
        report.plt.close(fig)


def test_capacity_plot_has_two_panels_and_a_title() -> None:
    rows = [{"growth": g, "fits": True, "gpus": {"a100": 1, "l4": n}, "gpus_total": n + 1,
             "plan_cost_per_hour": 4.1 + 0.8 * n, "sim_cost_per_hour": 4.0 + 0.8 * n, "holds": g < 3,
             "slo_attainment": 1.0, "worst_model": "asr", "worst_attainment": 1.0}
            for g, n in ((1, 7), (1.5, 10), (2, 13), (3, 19))]
    rows.append({"growth": 10.0, "fits": False, "error": "too big"})
    fig = report.capacity_figure(copy.deepcopy(rows), "multilingual: GPUs and cost as traffic grows")
    try:
        gpus, cost = fig.axes  # two panels, not two lines on one (they drew on top of each other)
        assert fig._suptitle is not None and "multilingual" in fig._suptitle.get_text()
        assert gpus.get_ylabel() == "GPUs" and cost.get_ylabel() == "cost per hour"
        assert list(gpus.get_lines()[0].get_ydata()) == [8, 11, 14, 20]
        assert [ln.get_label() for ln in gpus.get_lines()][-1] == "misses an SLO"
        assert list(cost.get_lines()[0].get_ydata()) == pytest.approx([9.7, 12.1, 14.5, 19.3])
        assert any("does not fit at x10" in t.get_text() for t in cost.texts)
        assert all(float(t).is_integer() for t in gpus.get_yticks())
    finally:
        report.plt.close(fig)


def _colour_of(fig: Any, model: str) -> set[str]:
    return {ln.get_color() for ax in fig.axes for ln in ax.get_lines() if ln.get_label().split(" (")[0] == model}


def test_a_model_keeps_its_colour_in_a_single_run_and_in_a_comparison() -> None:
    """Colours went by the first run's busiest models: asr-es was orange alone and green compared."""
    a = _run("static", 0.08, 0.1, 1.0, [_model("asr", 200, 150, 1.0, 300), _model("punct", 100, 50, 1.0, 900)])
    b = _run("hpa", 0.16, 0.2, 1.0, [_model("asr", 200, 90, 1.0, 900), _model("punct", 100, 40, 1.0, 300)])
    seen: dict[str, set[str]] = {"asr": set(), "punct": set()}
    for runs in ([a], [b], [a, b], [b, a]):
        for fig in (report.series_figure(runs),):
            try:
                for n in seen:
                    seen[n] |= _colour_of(fig, n)
            finally:
                report.plt.close(fig)
    assert len(seen["asr"]) == 1 and len(seen["punct"]) == 1 and seen["asr"] != seen["punct"]
    assert report.model_colours([a]) == report.model_colours([b, a])


def test_replica_lines_with_the_same_counts_are_all_visible(runs) -> None:
    """Both models run 1, 2, 2, 3 replicas in both runs: drawn on one place, three lines were hidden."""
    fig = report.series_figure(runs)
    try:
        fig.canvas.draw()
        lines = fig.axes[2].get_lines()
        assert len(lines) == 4 and len({tuple(ln.get_ydata()) for ln in lines}) == 1
        drawn = [tuple(ln.get_transform().transform((0, 2))[1:]) for ln in lines]
        assert len(set(drawn)) == 4  # each at its own height on the image
        per_replica = abs(fig.axes[2].transData.transform((0, 3))[1] - fig.axes[2].transData.transform((0, 2))[1])
        assert max(drawn)[0] - min(drawn)[0] < per_replica / 2  # and nearer its own count than the next
        assert len({ln.get_marker() for ln in lines}) >= 2
    finally:
        report.plt.close(fig)


def test_a_long_capacity_title_is_wrapped() -> None:
    rows = [{"growth": 1, "fits": True, "gpus": {"l4": 7}, "gpus_total": 7, "plan_cost_per_hour": 5.0,
             "sim_cost_per_hour": 5.0, "holds": True}]
    title = ("multilingual-meetings: GPUs and cost as traffic grows (peak scenario, 2 min simulated per "
             "factor)")
    fig = report.capacity_figure(rows, title)
    try:
        shown = fig._suptitle.get_text()
        assert shown.replace("\n", " ") == title
        assert max(len(line) for line in shown.splitlines()) <= 60
        fig.canvas.draw()
        box = fig._suptitle.get_window_extent()
        assert box.x0 >= 0 and box.x1 <= fig.bbox.x1
    finally:
        report.plt.close(fig)
