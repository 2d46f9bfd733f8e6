"""The pricing problem's searches (``packer.planner.knapsack``): exact where they say so, bounds
where they say so, and the compiled search means what its Python source says."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from packer.planner import knapsack
from packer.planner.knapsack import branch_and_bound, cell_lps, grid_bound
from packer.planner.mip import knapsack_mip


def _instances(seed: int, count: int, most: int) -> list[tuple]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        n = int(rng.integers(1, most + 1))
        scale = float(rng.choice([0.05, 0.3, 0.7]))
        v = rng.random(n) * float(rng.choice([0.01, 1.0, 10.0]))
        w, mm = rng.random(n) * scale, rng.random(n) * scale
        model = rng.integers(0, max(1, n // int(rng.integers(1, 4))), n)
        out.append((v, w, mm, model, float(rng.choice([0.0, 0.3, 0.5, 1.0]))))
    return out


def _best(v: np.ndarray, w: np.ndarray, mm: np.ndarray, model: np.ndarray, cap: float = 1.0) -> float:
    """Every set, one item per model, within both capacities: the most it holds."""
    best = 0.0
    for r in range(1, len(v) + 1):
        for s in itertools.combinations(range(len(v)), r):
            idx = list(s)
            if len(set(model[idx].tolist())) == r and w[idx].sum() <= cap and mm[idx].sum() <= cap:
                best = max(best, float(v[idx].sum()))
    return best


@pytest.mark.parametrize("seed", range(3))
def test_branch_and_bound_is_exact_when_it_finishes_and_an_upper_bound_when_cut_short(seed: int) -> None:
    # extra_from=0: every node also pruned by its LPs in time alone and memory alone, as deep
    # searches are (knapsack.EXTRA_FROM); those bounds must never cut off the best set.
    for v, w, mm, model, lam in _instances(seed, 60, 10):
        best = _best(v, w, mm, model)
        for extra_from in (knapsack.EXTRA_FROM, 0):
            value, chosen, upper, nodes, _ = branch_and_bound(v, w, mm, model, lam, 1.0, 0.0, 10**7, extra_from)
            assert value == pytest.approx(best, abs=1e-12) and upper == pytest.approx(best, abs=1e-12)
            assert len({int(model[j]) for j in chosen}) == len(chosen)
            assert w[chosen].sum() <= 1.0 and mm[chosen].sum() <= 1.0
            assert float(v[chosen].sum()) == pytest.approx(value)
            for limit in (2, 5):
                if nodes > limit:
                    _, _, cut_upper, cut_nodes, _ = branch_and_bound(v, w, mm, model, lam, 1.0, 0.0, limit, extra_from)
                    assert cut_nodes == limit + 1 and cut_upper >= best - 1e-12


@pytest.mark.parametrize("seed", range(2))
def test_the_mip_of_a_cell_finds_the_best_set_and_bounds_it(seed: int) -> None:
    """``mip.knapsack_mip``, the check on the pricing's search: exact on small cells, with a bound
    at or above the best set, and one item per model within both capacities; cut at one node it
    still bounds. A row taken wrong (either capacity, or one item per model) fails it."""
    for v, w, mm, model, _ in _instances(seed + 10, 40, 10):
        best = _best(v, w, mm, model)
        value, chosen, upper = knapsack_mip(v, w, mm, model, 1.0, 1000)
        assert value == pytest.approx(best, abs=1e-9) and upper >= best - 1e-9
        if chosen is not None:
            idx = np.flatnonzero(chosen)
            assert len({int(model[j]) for j in idx}) == idx.size
            assert w[idx].sum() <= 1.0 + 1e-9 and mm[idx].sum() <= 1.0 + 1e-9
            assert float(v[idx].sum()) == pytest.approx(value)
        assert knapsack_mip(v, w, mm, model, 1.0, 1)[2] >= best - 1e-9


@pytest.mark.parametrize("seed", range(3))
def test_grid_bound_is_never_below_the_best_set_and_exact_on_its_grid(seed: int) -> None:
    for v, w, mm, model, _ in _instances(100 + seed, 60, 9):
        assert grid_bound(v, w, mm, model, 1.0, 50) >= _best(v, w, mm, model) - 1e-12
        # Weights already on the grid: nothing is rounded, so the programme is exact.
        wq, mq = np.round(w * 20) / 20, np.round(mm * 20) / 20
        assert grid_bound(v, wq, mq, model, 1.0, 20) == pytest.approx(_best(v, wq, mq, model), abs=1e-12)


def _ratio_lp(v: np.ndarray, c: np.ndarray, cap: float) -> float:
    """The LP of ``max v x, c x <= cap, 0 <= x <= 1`` the textbook way: sorted by ratio, whole
    items while they fit, then a share of the next."""
    total, room = 0.0, cap
    for j in sorted(range(len(v)), key=lambda j: -v[j] / c[j]):
        if c[j] <= room:
            total, room = total + v[j], room - c[j]
        else:
            return total + v[j] * room / c[j]
    return total


def _cell_instance(seed: int) -> tuple:
    """Items with ties in ratio (values and weights on a coarse grid), free memory, and some that
    fit no cell alone; cells from the items' own ``hi`` values."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 80))
    coarse = bool(rng.integers(0, 2))
    v = rng.random(n) * float(rng.choice([0.1, 1.0, 5.0]))
    A, B = rng.random(n) * 0.4, rng.random(n) * 0.1
    mm = rng.random(n) * float(rng.choice([0.05, 0.3, 1.2]))
    if coarse:
        v, A, B, mm = (np.round(x * 4) / 4 + 0.25 for x in (v, A, B, mm))
    mm[rng.random(n) < 0.2] = 0.0
    hi = rng.choice([0.05, 0.1, 0.2, 0.5, 1.0], n)
    d = np.unique(hi)
    floor = d * float(rng.choice([1.0, 0.5]))
    return v, A, B, mm, hi, floor, d


@pytest.mark.parametrize("seed", range(4))
def test_cell_lps_are_the_ratio_sorted_lp_of_each_cells_items(seed: int) -> None:
    lams = (0.0, 0.3, 1.0)
    for k in range(50):
        v, A, B, mm, hi, floor, d = _cell_instance(1000 * seed + k)
        u, cap = 2.0, 1.0
        least, lam_of, start, held = cell_lps(v, A, B, mm, hi, floor, d, lams, u, cap)
        for i in range(d.size):
            w = (A / d[i] + B) / u
            items = (hi >= floor[i]) & (w <= cap) & (mm <= cap)
            assert held[start[i]:start[i + 1]].tolist() == np.flatnonzero(items).tolist()
            if not items.any():
                continue
            lps = [_ratio_lp(v[items], np.maximum(lam * w[items] + (1 - lam) * mm[items], 1e-15), cap) for lam in lams]
            assert least[i] == pytest.approx(min(lps), rel=1e-12, abs=1e-12)
            assert lps[lams.index(lam_of[i])] == pytest.approx(min(lps), rel=1e-12, abs=1e-12)
            if items.sum() <= 9:  # above every set of the cell's items that fits
                assert least[i] >= _best(v[items], w[items], mm[items], np.arange(int(items.sum()))) - 1e-9


_PROBE = """
import json, sys
import numpy as np
sys.path.insert(0, {root!r})
from tests.test_knapsack import _instances
from packer.planner.knapsack import branch_and_bound, cell_lps, grid_bound
from tests.test_knapsack import _cell_instance
out = []
for k in range(40):
    least, lam_of, start, held = cell_lps(*_cell_instance(k), (0.0, 0.5, 1.0), 2.0, 1.0)
    out.append(['cells', [x.hex() for x in least.tolist()], lam_of.tolist(), start.tolist(), held.tolist()])
for v, w, mm, model, lam in _instances(7, 40, 120):
    for limit in (30, 3000):
        for extra_from in (64, 0):
            val, chosen, upper, nodes, steps = branch_and_bound(v, w, mm, model, lam, 1.0, 0.0, limit, extra_from)
            out.append([val.hex(), chosen, upper.hex(), nodes, steps])
    out.append([grid_bound(v, w, mm, model, 1.0, 40).hex()])
print(json.dumps(out))
"""


def test_the_compiled_searches_equal_their_python_source_bit_for_bit() -> None:
    """numba's typing (integer widths, float contraction) must not change what the planner's
    budgets and bounds were measured on: the same nodes, values and sets as the source run as
    Python (``NUMBA_DISABLE_JIT``)."""
    if not hasattr(knapsack._dfs, "py_func"):
        pytest.skip("numba is not installed: the searches already run as Python")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = _PROBE.format(root=root)
    runs = []
    for jit_off in ("0", "1"):
        env = dict(os.environ, NUMBA_DISABLE_JIT=jit_off)
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600,
                              check=True)
        runs.append(json.loads(done.stdout))
    assert runs[0] == runs[1]
    assert any(r[3] > 30 for r in runs[0] if len(r) == 5 and r[0] != "cells")  # some searches were cut short
    assert any(r[4] > 0 for r in runs[0] if len(r) == 5 and r[0] != "cells")  # and some pruned by the node bounds
