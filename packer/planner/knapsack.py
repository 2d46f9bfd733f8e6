"""The pricing problem's exact search: a two-constraint knapsack, one item per model, by branch and bound.

Column generation (``patterns.py``) spends nine tenths of its time here on large fleets
(generated-500: 22 of 25 s), so the search is compiled with numba. Written in NumPy per node it
took about 16 µs a node, nearly all of it the interpreter's overhead on arrays of a few hundred
items; compiled, the same nodes in the same order take well under 1 µs. The arithmetic is the same
statement for statement, so the compiled search and its Python source visit the same nodes and
return the same numbers, bit for bit (``tests/test_knapsack.py`` checks it); where numba cannot be
imported, the Python source runs (correct, far slower, and the planner's budgets assume the
compiled speed).
"""

from __future__ import annotations

import math

import numpy as np

from packer.jit import njit


def warm() -> None:
    """Compile the searches (or load them from numba's cache) now: the first run on a machine
    takes seconds, which the column generation's wall-clock guard would otherwise count."""
    one = np.ones(2)
    branch_and_bound(one, 0.1 * one, 0.1 * one, np.arange(2), 0.5, 1.0, 0.0, 10)
    grid_bound(one, 0.1 * one, 0.1 * one, np.arange(2), 1.0, 4)
    cell_lps(one, one, one, 0.1 * one, one, one[:1], one[:1], (0.5,), 4.0, 1.0)


EXTRA_FROM = 64
"""Nodes after which a search also prunes each node by the LPs of time alone and of memory alone
(``_entry_bound``): the weighting ``lam`` fixed at the root stops bounding well once the search
is deep in a group where the other constraint binds. generated-500's L4 slot, at one round's
duals: the search did not close in 300,000 nodes (best 1.2596), and closes in 89,480 with the
two LPs (best 1.2725, the optimum HiGHS finds). Below it, most searches (a few nodes each) skip
the two sorts it takes."""


def branch_and_bound(v: np.ndarray, w: np.ndarray, mm: np.ndarray, model: np.ndarray, lam: float,
                     cap: float, best: float, node_limit: int,
                     extra_from: int = EXTRA_FROM) -> tuple[float, list[int], float, int, int]:
    """The most ``v`` a set of items (one per model) within ``cap`` in both ``w`` and ``mm`` holds,
    when it beats ``best``: (value, the items, an upper bound on the most, nodes, steps of the
    node bounds). Finished, the upper bound is the value (or ``best``); cut short at
    ``node_limit``, it is the largest LP bound left open on the search's path, which is often far
    below the root's LP (family-100003-multilingual-80's L4 slot: 0.51 against 0.58, where the
    root's LP was the pricing bound and cost 12 % of the plan's bound). Depth first by ratio; each
    node keeps only the items that still fit beside its set (and not of a model in it), and is
    pruned by their one-constraint LP in ``lam w + (1 - lam) mm`` and, past ``extra_from`` nodes,
    by their LPs in ``w`` alone and ``mm`` alone (``EXTRA_FROM``; steps: the items those scanned).
    Stops after ``node_limit`` nodes with the best set found (its value is then not proven the
    most)."""
    fs, st, chosen = _search(np.ascontiguousarray(v, dtype=np.float64), np.ascontiguousarray(w, dtype=np.float64),
                             np.ascontiguousarray(mm, dtype=np.float64), np.ascontiguousarray(model, dtype=np.int64),
                             float(lam), float(cap), float(best), int(node_limit), int(extra_from))
    return float(fs[0]), chosen[:st[1]].tolist(), float(max(fs[0], fs[1])), int(st[0]), int(st[4])


@njit(cache=True)
def _search(v: np.ndarray, w: np.ndarray, mm: np.ndarray, model: np.ndarray, lam: float, cap: float, best: float,
            node_limit: int, extra_from: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`branch_and_bound`'s search, its set-up compiled too: the pricing runs it on up to
    5,600 cells a round (family-100007-mixed-401), where the set-up in NumPy cost twice the
    search."""
    c = np.maximum(lam * w + (1 - lam) * mm, 1e-15)
    order = np.argsort(-(v / c), kind="mergesort")  # stable
    first = order[(w[order] <= cap) & (mm[order] <= cap)]
    fs = np.array([best, -math.inf])  # the best value so far, the largest LP bound left open
    # nodes, size of the best set, depth of the path, the last node's stamp, steps, sorted yet
    st = np.zeros(6, dtype=np.int64)
    path = np.zeros(max(1, v.size), dtype=np.int64)
    chosen = np.zeros(max(1, v.size), dtype=np.int64)
    by = np.zeros((2, max(1, v.size)), dtype=np.int64)  # the items by ratio to w, and to mm
    mark = np.zeros(max(1, v.size), dtype=np.int64)
    if first.size:
        _dfs(first, 0.0, cap, cap, v, w, mm, model, c, lam, node_limit, fs, st, path, chosen, extra_from, by, mark)
    return fs, st, chosen


@njit(cache=True)
def _lp_marked(order: np.ndarray, mark: np.ndarray, stamp: int, v: np.ndarray, c: np.ndarray, room: float,
               st: np.ndarray) -> float:
    """The LP of the items marked ``stamp`` in weights ``c`` within ``room``, by the ratio order
    ``order`` of all the items (unmarked ones skipped, each a step)."""
    total = 0.0
    for q in range(order.size):
        j = order[q]
        if mark[j] != stamp:
            continue
        if c[j] <= room:
            total += v[j]
            room -= c[j]
        else:
            st[4] += q + 1
            return total + v[j] * room / c[j]
    st[4] += order.size
    return total


@njit(cache=True)
def _entry_bound(cand: np.ndarray, rt: float, rm: float, v: np.ndarray, w: np.ndarray, mm: np.ndarray,
                 st: np.ndarray, by: np.ndarray, mark: np.ndarray) -> float:
    """The least of the LPs of ``cand`` in time alone (``rt`` left) and in memory alone (``rm``):
    what any set of them can add. The two ratio orders are sorted on first use."""
    if st[5] == 0:
        by[0, :v.size] = np.argsort(-(v / np.maximum(w, 1e-15)), kind="mergesort")
        by[1, :v.size] = np.argsort(-(v / np.maximum(mm, 1e-15)), kind="mergesort")
        st[5] = 1
        st[4] += 2 * v.size
    st[3] += 1
    for q in range(cand.size):
        mark[cand[q]] = st[3]
    st[4] += cand.size
    n = v.size
    return min(_lp_marked(by[0, :n], mark, st[3], v, w, rt, st), _lp_marked(by[1, :n], mark, st[3], v, mm, rm, st))


@njit(cache=True)
def _lp_from(p: int, cand: np.ndarray, cs: np.ndarray, cv: np.ndarray, v: np.ndarray, c: np.ndarray,
             room: float) -> float:
    """The LP of the candidates from ``p`` on in the room left: the most a branch there can add."""
    n = cand.size
    if p >= n:
        return 0.0
    start_c = cs[p - 1] if p else 0.0
    start_v = cv[p - 1] if p else 0.0
    k = np.searchsorted(cs, start_c + room, side="right")  # items p..k-1 fit whole
    bound = (cv[k - 1] if k > 0 else 0.0) - start_v
    if k < n:
        bound += v[cand[k]] * max(0.0, start_c + room - (cs[k - 1] if k > 0 else 0.0)) / c[cand[k]]
    return bound


@njit(cache=True)
def _dfs(cand: np.ndarray, val: float, rt: float, rm: float, v: np.ndarray, w: np.ndarray, mm: np.ndarray,
         model: np.ndarray, c: np.ndarray, lam: float, node_limit: int, fs: np.ndarray, st: np.ndarray,
         path: np.ndarray, chosen: np.ndarray, extra_from: int, by: np.ndarray, mark: np.ndarray) -> bool:
    """Branch on each candidate in turn (the set so far is ``path[:st[2]]``, worth ``val``, with
    ``rt`` time and ``rm`` memory left). False when the node limit cut it short."""
    entry = math.inf  # what any set of the candidates adds, by the LPs of one constraint each
    if st[0] >= extra_from:
        entry = _entry_bound(cand, rt, rm, v, w, mm, st, by, mark)
        if val + entry <= fs[0] + 1e-12:
            return True
    cs = np.cumsum(c[cand])
    cv = np.cumsum(v[cand])
    room = lam * rt + (1 - lam) * rm
    for p in range(cand.size):
        bound = _lp_from(p, cand, cs, cv, v, c, room)
        if val + bound <= fs[0] + 1e-12:
            return True
        j = cand[p]
        st[0] += 1
        if st[0] > node_limit:
            fs[1] = max(fs[1], val + min(bound, entry))  # this node and its later siblings
            return False
        nv, nrt, nrm = val + v[j], rt - w[j], rm - mm[j]
        path[st[2]] = j
        st[2] += 1
        if nv > fs[0]:
            fs[0] = nv
            chosen[:st[2]] = path[:st[2]]
            st[1] = st[2]
        rest = cand[p + 1:]
        rest = rest[(w[rest] <= nrt) & (mm[rest] <= nrm) & (model[rest] != model[j])]
        ok = rest.size == 0 or _dfs(rest, nv, nrt, nrm, v, w, mm, model, c, lam, node_limit, fs, st, path, chosen,
                                    extra_from, by, mark)
        st[2] -= 1
        if not ok:
            # The child left its own subtree's open bound; the later siblings are open too.
            fs[1] = max(fs[1], val + min(_lp_from(p + 1, cand, cs, cv, v, c, room), entry))
            return False
    return True


def grid_bound(v: np.ndarray, w: np.ndarray, mm: np.ndarray, model: np.ndarray, cap: float, units: int) -> float:
    """An upper bound on the most ``v`` a set of items (one per model) within ``cap`` in both ``w``
    and ``mm`` holds, by dynamic programming over both constraints: each weight rounded *down* to
    a whole number of ``cap / units`` (so every set that fits still fits, and may gain less than
    one unit per member in each), then the exact most, one model at a time. Where the branch and
    bound cannot close (many items of nearly equal worth per weight at the column generation's
    duals: generated-500's L4 slot, 1.36 from the open LPs against 1.26 found after 40,000 nodes),
    this is close to the integer optimum, where the LPs are not. ``units`` squared times the items
    in operations."""
    if v.size == 0:
        return 0.0
    qt = np.floor(np.asarray(w, dtype=np.float64) / cap * units).astype(np.int64)
    qm = np.floor(np.asarray(mm, dtype=np.float64) / cap * units).astype(np.int64)
    order = np.argsort(model, kind="stable")
    return float(_grid_dp(np.ascontiguousarray(np.asarray(v, dtype=np.float64)[order]), np.ascontiguousarray(qt[order]),
                          np.ascontiguousarray(qm[order]), np.ascontiguousarray(np.asarray(model, dtype=np.int64)[order]),
                          int(units)))


@njit(cache=True)
def _grid_dp(v: np.ndarray, qt: np.ndarray, qm: np.ndarray, model: np.ndarray, units: int) -> float:
    """Most value within ``units`` of each weight, at most one item of each model (items sorted by
    model): ``best[t, m]`` is the most within ``t`` and ``m``, one model at a time."""
    best = np.zeros((units + 1, units + 1))
    new = best.copy()
    i, n = 0, v.size
    while i < n:
        new[:, :] = best
        g = i
        while g < n and model[g] == model[i]:
            a, b, vi = qt[g], qm[g], v[g]
            if a <= units and b <= units:
                for t in range(a, units + 1):
                    for m in range(b, units + 1):
                        cand = best[t - a, m - b] + vi
                        if cand > new[t, m]:
                            new[t, m] = cand
            g += 1
        best[:, :] = new
        i = g
    return best[units, units]


def cell_lps(v: np.ndarray, A: np.ndarray, B: np.ndarray, mm: np.ndarray, hi: np.ndarray, floor: np.ndarray,
             d: np.ndarray, lams: tuple[float, ...], u: float,
             cap: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per cell ``i``, the least over ``lams`` of the LP ``max v x, sum c x <= cap, 0 <= x <= 1``
    with ``c = lam w + (1 - lam) mm``, over the items with ``hi >= floor[i]`` that fit alone, where
    ``w = (A / d[i] + B) / u``: (the least LP, its first ``lam``, where each cell's items start in
    the next, the items of all cells one after another; ``start[i + 1] - start[i]`` of cell ``i``).

    The pricing's cell LPs (``patterns.Patterns._cell_problems``). In NumPy each was a row sorted
    by ratio, and they took 44 of the 52 counted seconds family-600025-long-tail-326's column
    generation needed to converge (argsort 3.1 s, take_along_axis 1.8 s of a 10-s profile); the
    LP needs no order, only the ratio where the capacity runs out, so each is a weighted
    quickselect here (expected linear), with no cells-by-items matrices built: the same pricing
    run's cell LPs went 5.8 -> 0.58 s, equal to 4e-15."""
    return _cell_lps(np.ascontiguousarray(v, dtype=np.float64), np.ascontiguousarray(A, dtype=np.float64),
                     np.ascontiguousarray(B, dtype=np.float64), np.ascontiguousarray(mm, dtype=np.float64),
                     np.ascontiguousarray(hi, dtype=np.float64), np.ascontiguousarray(floor, dtype=np.float64),
                     np.ascontiguousarray(d, dtype=np.float64), np.asarray(lams, dtype=np.float64), float(u),
                     float(cap))


@njit(cache=True)
def _cell_lps(v: np.ndarray, A: np.ndarray, B: np.ndarray, mm: np.ndarray, hi: np.ndarray, floor: np.ndarray,
              d: np.ndarray, lams: np.ndarray, u: float,
              cap: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    n_items, n_cells = v.size, floor.size
    least = np.full(n_cells, np.inf)
    lam_of = np.zeros(n_cells)
    start = np.zeros(n_cells + 1, dtype=np.int64)
    items = np.empty(max(1, 16 * n_items), dtype=np.int64)
    wb, r, c, vb = np.empty(n_items), np.empty(n_items), np.empty(n_items), np.empty(n_items)
    for i in range(n_cells):
        if items.size - start[i] < n_items:  # room for a cell of every item
            grown = np.empty(2 * items.size + n_items, dtype=np.int64)
            grown[:start[i]] = items[:start[i]]
            items = grown
        idx = items[start[i]:]
        n = 0
        for j in range(n_items):
            if hi[j] >= floor[i]:
                w = (A[j] / d[i] + B[j]) / u
                if w <= cap and mm[j] <= cap:
                    idx[n] = j
                    wb[n] = w
                    n += 1
        start[i + 1] = start[i] + n
        if n == 0:
            continue
        for lam in lams:
            for k in range(n):
                j = idx[k]
                c[k] = max(lam * wb[k] + (1 - lam) * mm[j], 1e-15)
                vb[k] = v[j]
                r[k] = v[j] / c[k]
            f = _lp_select(r, c, vb, n, cap)
            if f < least[i]:
                least[i] = f
                lam_of[i] = lam
    return least, lam_of, start, items[:start[n_cells]]


@njit(cache=True)
def _lp_select(r: np.ndarray, c: np.ndarray, v: np.ndarray, n: int, cap: float) -> float:
    """The LP of ``max v x, c x <= cap, 0 <= x <= 1`` over the first ``n`` items (ratios ``r``;
    the arrays are reordered): the items above a pivot ratio that fit whole are taken, those below
    searched only where room is left, and the pivot's own ratio fills the room where its items do
    not all fit. The greedy LP by ratio, without the sort."""
    lo, hi, room, total = 0, n, cap, 0.0
    while hi > lo:
        mid = (lo + hi) // 2
        p0, p1, p2 = r[lo], r[mid], r[hi - 1]  # pivot: the median of three
        if p0 > p1:
            p0, p1 = p1, p0
        if p1 > p2:
            p1 = p2
            if p0 > p1:
                p1 = p0
        a, i, b = lo, lo, hi - 1  # [lo, a) above the pivot, [a, b] equal, (b, hi) below
        while i <= b:
            if r[i] > p1:
                r[a], r[i] = r[i], r[a]
                c[a], c[i] = c[i], c[a]
                v[a], v[i] = v[i], v[a]
                a += 1
                i += 1
            elif r[i] < p1:
                r[b], r[i] = r[i], r[b]
                c[b], c[i] = c[i], c[b]
                v[b], v[i] = v[i], v[b]
                b -= 1
            else:
                i += 1
        b += 1
        above = 0.0
        for k in range(lo, a):
            above += c[k]
        if above > room:  # the room runs out above the pivot
            hi = a
            continue
        for k in range(lo, a):
            total += v[k]
        room -= above
        equal = 0.0
        for k in range(a, b):
            equal += c[k]
        if equal > room:
            return total + p1 * room
        for k in range(a, b):
            total += v[k]
        room -= equal
        lo = b
    return total
