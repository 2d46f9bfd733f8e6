"""A replica alone on its slot: what the duty cycle's maths let it serve, what it serves sent as its
requests come (``packer/queue.py``), and that bound against the batcher itself.

    python bench/lone.py [--arrivals 2000000] [--random N --seed S [--slo-from 0.5]] [--windows]

For each profile (base, per item, ``max_batch``, SLO) on one slot it prints the duty cycle's
capacity, the lone capacity, their ratio, the batch cap it is served with, the lone bound at the lone capacity and the 99.99th
percentile latency (``packer.queue.LEVEL``) of ten million Poisson arrivals served by the batcher (everything queued, up to
``max_batch``, as the instance frees). ``--random`` draws profiles from a broad domain (base
0.5-200 ms, per item 0.01-20 ms, ``max_batch`` 1-256, SLO 2-50x a full batch) and prints the
distribution of the ratio and of served / bound. ``--windows`` serves the truth bench's lone
slots that went over (and five random ones) for six hours at their planned rates and counts the
15-second windows whose p99 is above the bound at the 99.9 % and the 99.99 % level
(``packer.queue.LEVEL``).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
from numba import njit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # this checkout's packer, not an installed one

from packer.fleet import LatencyProfile, Model, Pool, Traffic  # noqa: E402
from packer.queue import LEVEL, capped_capacity, full_run, queue_bound  # noqa: E402
from packer.slot import SlotType, duty_capacity, lone_capacity  # noqa: E402

U = 0.85
SLOT = SlotType(Pool("l4", "l4-24gb", 1, 1, 0.8))
PROFILES = [(4.0, 0.17, 1, 100), (4.0, 0.17, 4, 100), (4.0, 0.17, 32, 100), (4.0, 0.132, 128, 200),
            (20.0, 2.0, 1, 300), (20.0, 2.0, 16, 300), (10.0, 1.0, 32, 150), (30.0, 0.5, 64, 150),
            (50.0, 5.0, 8, 1000), (800.0, 150.0, 8, 300000), (20.0, 2.0, 32, 120), (20.0, 2.0, 32, 200),
            (10000.0, 200.0, 32, 30000)]


@njit
def served_latencies(arr: np.ndarray, base: float, per: float, M: int) -> np.ndarray:  # pragma: no cover - compiled
    """Each request's latency (ms) when a lone instance sends everything queued, up to ``M``, as
    soon as it frees (Triton's dynamic batcher without a queue delay): the reference the bound is
    checked against (``tests/test_queue.py``), written apart from the simulator's batcher."""
    n = arr.shape[0]
    lat = np.empty(n)
    i, free = 0, 0.0
    while i < n:
        start = max(free, arr[i])
        j = i
        while j < n and j - i < M and arr[j] <= start:
            j += 1
        end = start + base + per * (j - i)
        for k in range(i, j):
            lat[k] = end - arr[k]
        i, free = j, end
    return lat


def served_quantile(rate: float, base: float, per: float, M: int, q: float, n: int, seed: int = 11) -> float:
    """The ``q`` quantile of ``n`` Poisson arrivals at ``rate`` rps through the lone batcher, the
    first tenth left out as warm-up."""
    arr = np.cumsum(np.random.default_rng(seed).exponential(1000.0 / rate, n))
    return float(np.quantile(served_latencies(arr, base, per, M)[n // 10:], q))


def served_at_level(rate: float, base: float, per: float, M: int, n: int) -> float:
    """The served latency one request in ten thousand exceeds (``packer.queue.LEVEL``)."""
    return served_quantile(rate, base, per, M, LEVEL, n)


def row(base: float, per: float, M: int, slo: float, n: int) -> dict:
    """One profile at its lone capacity, served with its batches capped where the planner caps them
    (``packer.queue.capped_capacity``: below ``max_batch`` where two full batches miss the SLO or
    a smaller cap serves more)."""
    m = Model("m", "streaming", 1.0, Traffic(1, 1), slo, (LatencyProfile("l4-24gb", base, per),), M)
    duty, lone = duty_capacity(m, SLOT, U), lone_capacity(m, SLOT, U)
    cap = capped_capacity(base, per, M, slo, U)[1]
    bound = queue_bound(lone, base, per, cap) if lone > 0 else math.nan
    served = served_at_level(lone, base, per, cap, n) if lone > 0 else math.nan
    return {"base": base, "per": per, "M": M, "slo": slo, "duty": duty, "lone": lone, "cap": cap, "bound": bound,
            "served": served}


WINDOW_CASES = [(47.7, 4.86, 1, 912), (6.6, 0.24, 1, 1780), (16.8, 1.84, 8, 185), (22.6, 0.25, 4, 344),
                (24.1, 1.04, 2, 785)]
"""``bench/truth.py --random 10 --members 1 --seed 100``'s r100, r107, r106, r103 and r104."""


def windows(seed: int, hours: float = 6.0, window_s: float = 15.0) -> None:
    """Per profile at its lone capacity: the share of ``window_s`` windows whose p99 is above the
    bound, at the two levels."""
    rng = np.random.default_rng(seed)
    cases = list(WINDOW_CASES)
    while len(cases) < 10:
        base, per, M = float(rng.uniform(5, 60)), float(rng.uniform(0.2, 6)), int(rng.choice([1, 2, 4, 8, 16]))
        cases.append((round(base, 1), round(per, 2), M, round(float(rng.uniform(3, 30)) * full_run(base, per, M))))
    print("| base ms | per item ms | max_batch | SLO ms | rps | windows | over the 99.9 % bound | over the 99.99 % bound |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for base, per, M, slo in cases:
        m = Model("m", "streaming", 1.0, Traffic(1, 1), slo, (LatencyProfile("l4-24gb", base, per),), M)
        rate = lone_capacity(m, SLOT, U)
        if rate <= 0:
            continue
        cap = capped_capacity(base, per, M, slo, U)[1]
        arr = np.cumsum(np.random.default_rng(3).exponential(1000.0 / rate, int(rate * hours * 3600)))
        lat = served_latencies(arr, base, per, cap)
        w = (arr // (window_s * 1000.0)).astype(np.int64)
        p99 = np.array([np.quantile(x, 0.99) for x in np.split(lat, np.flatnonzero(np.diff(w)) + 1) if len(x) >= 20])
        over = [float(np.mean(p99 > queue_bound(rate, base, per, cap, lv))) for lv in (0.999, 0.9999)]
        print(f"| {base:g} | {per:g} | {M} | {slo:g} | {rate:.1f} | {len(p99)} | {over[0]:.2%} | {over[1]:.2%} |")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arrivals", type=int, default=10_000_000)
    ap.add_argument("--random", type=int, default=0, metavar="N")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--windows", action="store_true")
    ap.add_argument("--slo-from", type=float, default=2.0, metavar="X",
                    help="--random's SLOs from X full batches (below 2, only a capped batch serves alone)")
    a = ap.parse_args(argv)
    if a.windows:
        windows(a.seed)
        return
    if a.random:
        rng = np.random.default_rng(a.seed)
        lu = lambda lo, hi: float(np.exp(rng.uniform(math.log(lo), math.log(hi))))  # noqa: E731
        rows = []
        for _ in range(a.random):
            base, per, M = lu(0.5, 200), lu(0.01, 20), int(rng.choice([1, 2, 4, 8, 16, 32, 64, 128, 256]))
            slo = lu(a.slo_from, 50) * full_run(base, per, M)
            rows.append(row(base, per, M, slo, a.arrivals))
        ok = [r for r in rows if r["lone"] > 0]
        ratio = np.array([r["lone"] / r["duty"] if r["duty"] > 0 else math.inf for r in ok])
        tight = np.array([r["served"] / r["bound"] for r in ok])
        finite = ratio[np.isfinite(ratio)]
        print(f"{len(rows)} profiles, {len(ok)} served alone at some rate, {int(np.sum(~np.isfinite(ratio)))} of them "
              f"by no duty cycle at all")
        print(f"lone / duty capacity: median {np.median(finite):.2f}, 10th {np.percentile(finite, 10):.2f}, "
              f"90th {np.percentile(finite, 90):.2f}, least {finite.min():.2f}")
        print(f"served p99.99 / bound at the lone capacity: median {np.median(tight):.2f}, worst {tight.max():.3f}; "
              f"over the bound: {int(np.sum(tight > 1))}")
        capped = [r for r in ok if r["cap"] < r["M"]]
        if capped:
            ct = np.array([r["served"] / r["bound"] for r in capped])
            print(f"{len(capped)} served with batches capped below max_batch: served / bound median "
                  f"{np.median(ct):.2f}, worst {ct.max():.3f}; over the bound: {int(np.sum(ct > 1))}")
        return
    print("| base ms | per item ms | max_batch | SLO ms | duty rps | lone rps | lone / duty | cap | bound ms | served p99.99 ms |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for p in PROFILES:
        r = row(*p, a.arrivals)
        ratio = f"{r['lone'] / r['duty']:.2f}" if r["duty"] > 0 else "inf"
        print(f"| {r['base']:g} | {r['per']:g} | {r['M']} | {r['slo']:g} | {r['duty']:.1f} | {r['lone']:.1f} | {ratio} "
              f"| {r['cap']} | {r['bound']:.1f} | {r['served']:.1f} |")


if __name__ == "__main__":
    main()
