"""Simulator speed: requests simulated per second of wall (and CPU) time, and peak memory.

    python bench/sim.py                  # all cases, a table
    python bench/sim.py --case day       # one case
    python bench/sim.py --json           # machine-readable

Cases (each runs in its own process, so its peak RSS is its own; plans are made first, untimed):

* ``fifty-peak``: a 50-model fleet (the multilingual example's 20 models plus ASR, punctuation and
  diarization for 10 more languages, at 0.4x-1.3x Spanish traffic) at constant peak traffic, 10 min.
* ``fifty-night``: the same fleet on the diurnal scenario from 03:00 UTC for 1 h, the quietest hour:
  small batches, the most Python work per request.
* ``day``: one simulated day of ``packer/examples/multilingual-meetings.yaml`` on the diurnal
  scenario (the issue's "one day in under 2 minutes").

Targets (issue 4): >= 1,000,000 requests/s on one core for a 50-model fleet; a day of the
multilingual example in < 120 s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CACHE = Path(os.environ.get("PACKER_BENCH_CACHE", "/tmp/packer-bench"))
LANGS = ("pt", "nl", "pl", "sv", "ja", "ko", "zh", "ar", "hi", "ru")
CASES = {
    "fifty-peak": ("fifty", "peak", 600.0, 0.0),
    "fifty-night": ("fifty", "diurnal", 3600.0, 3.0),
    "day": ("multilingual", "diurnal", 86400.0, 0.0),
}


def fifty_fleet():
    """The multilingual example grown to 50 models with 10 more languages (deterministic)."""
    from packer.fleetfile import load_fleet

    base = load_fleet(ROOT / "packer" / "examples" / "multilingual-meetings.yaml")
    models = list(base.models)
    for k, lang in enumerate(LANGS):
        f = 0.4 + 0.1 * k
        for kind in ("asr", "punct", "diarize"):
            m = base.model(f"{kind}-es")
            t = m.traffic
            streams = None if t.streams is None else max(1, round(t.streams * f))
            models.append(replace(m, name=f"{kind}-{lang}",
                                  traffic=replace(t, rps=t.rps * f, peak_rps=t.peak_rps * f, streams=streams)))
    pools = tuple(replace(p, max_nodes=p.max_nodes * 4) for p in base.pools)
    return replace(base, name="fifty-languages", models=tuple(models), pools=pools)


def plan_for(which: str):
    from packer.fleetfile import load_fleet
    from packer.plan import save_plan
    from packer.planfile import load_plan
    from packer.planner import PlanSettings, plan_fleet

    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"{which}.plan.json"
    if not path.exists():
        fleet = fifty_fleet() if which == "fifty" else load_fleet(ROOT / "packer/examples/multilingual-meetings.yaml")
        save_plan(plan_fleet(fleet, settings=PlanSettings(seed=0, time_limit_s=10)), path)
    return path


def child(case: str, seed: int) -> dict:
    from packer.planfile import load_plan
    from sims.engine import simulate
    from sims.scenario import load_scenario

    which, scen, dur, start = CASES[case]
    plan = load_plan(plan_for(which))
    sc = load_scenario(scen).with_(start_hour=start)
    t0 = time.perf_counter()
    r = simulate(plan, sc, duration_s=dur, seed=seed)
    wall = time.perf_counter() - t0
    return {"case": case, "models": len(plan.fleet.models), "slots": len(plan.placements),
            "simulated_s": dur, "requests": r.fleet["requests"], "wall_s": round(wall, 2), "cpu_s": r.perf["cpu_s"],
            "requests_per_wall_s": round(r.fleet["requests"] / wall), "requests_per_cpu_s": r.perf["requests_per_cpu_s"],
            "peak_rss_mb": r.perf["peak_rss_mb"], "slo_attainment": r.fleet["slo_attainment"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", choices=sorted(CASES), action="append")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    cases = a.case or list(CASES)
    if a.child:
        print(json.dumps(child(cases[0], a.seed)))
        return
    for which in sorted({CASES[c][0] for c in cases}):
        plan_for(which)
    rows = []
    for c in cases:
        out = subprocess.run([sys.executable, __file__, "--child", "--case", c, "--seed", str(a.seed)],
                             check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        if not a.json:
            r = rows[-1]
            print(f"{r['case']:<12} {r['models']:>3} models {r['slots']:>3} slots  {r['simulated_s'] / 3600:>6.2f} h  "
                  f"{r['requests']:>12,} req  wall {r['wall_s']:>7.1f} s  cpu {r['cpu_s']:>7.1f} s  "
                  f"{r['requests_per_wall_s'] / 1e6:>5.2f} M req/s wall  {r['requests_per_cpu_s'] / 1e6:>5.2f} M/s cpu  "
                  f"peak RSS {r['peak_rss_mb']:>5.0f} MB", flush=True)
    if a.json:
        print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
