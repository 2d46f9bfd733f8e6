"""Simulator vs a real Triton: p50 and p99 at the serving benchmark's load levels.

``bench/triton.py --json triton.json`` serves one slot (a stand-in model alone, or a packed group)
at ~30/60/85 % of its capacity under open-loop arrivals and records every parameter, every request
it sent (time, latency), Triton's per-batch-size execution statistics and the per-request overhead
measured at near-zero load. This script simulates each level on the same slot (same fleet, members,
placement via ``packer.handplan.placement``, so the batchers get exactly the settings Triton got) and
prints p50 and p99 beside the real ones with the relative error; the issue's target is 10 %.

    python bench/triton.py --json /tmp/triton.json          # needs tritonserver
    python bench/fidelity.py /tmp/triton.json [--json out.json]
    python bench/fidelity.py --simulate-only                # the simulator's side alone, default levels

Two simulations per level, both replaying the exact recorded arrival times as a trace (the first
``warmup_s`` served but not measured, as on the real server) with the queue bound Triton is given
(``server.queue_bound``):

* **profile**: the model's run time from its fleet profile (what the plan assumed), no overhead;
* **calibrated**: run times ``base + per_item * b`` fitted (least squares, weighted by batch count)
  to Triton's own ``compute_input + compute_infer + compute_output`` per batch size over that level,
  plus the instance's turnaround between batches (median, from the separate overloaded run before
  the level: ``turnaround_ms``), plus the per-request overhead (client latency minus Triton's
  queue + compute at near-zero load, measured before the level). None of it is fitted to the
  latencies being compared.

For JSON from an older ``bench/triton.py`` without recorded requests, or ``--simulate-only``, the
simulator generates Poisson arrivals at the level's rate (mean of 5 seeds) instead;
``--overhead-ms`` then adds a fixed per-request cost by hand.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def simulate_level(fleet_name: str, slot: str, rates: dict[str, float], seconds: float, seed: int, *,
                   streams: dict[str, int | None] | None = None, arrivals: str = "poisson",
                   overhead_ms: float = 0.0, replications: int = 5) -> dict[str, dict[str, float]]:
    """The simulator's p50/p99 per model for one benchmark level (mean over ``replications`` seeds).

    ``rates``: each member's rps in the slot (one model, or a packed group). ``arrivals``:
    ``poisson`` (per request, or per stream, which sums to Poisson), or ``periodic per stream``
    (streams sending evenly spaced chunks, random phases; the simulator's stream count is Poisson
    around the bench's fixed count).
    """
    import numpy as np

    from packer.fleetfile import load_fleet
    from packer.handplan import placement, plan_of
    from sims.engine import simulate
    from sims.scenario import Scenario

    path = Path(fleet_name)
    fleet = load_fleet(path if path.suffix in (".yaml", ".yml") else ROOT / "packer" / "examples" / f"{fleet_name}.yaml")
    pool, _, profile = slot.partition("/")
    models = []
    for name, rate in rates.items():
        m = fleet.model(name)
        n = (streams or {}).get(name) or m.traffic.streams
        models.append(replace(m, traffic=replace(m.traffic, rps=rate, peak_rps=rate, streams=n), min_replicas=1,
                              max_replicas=None))
    sub = replace(fleet, models=tuple(models))
    plan = plan_of(sub, [placement(sub, pool, list(rates.items()), profile=profile or "whole")])
    periodic = arrivals.startswith("periodic")
    sc = Scenario(process="poisson", policy="static", stream_arrivals="sessions" if periodic else "poisson",
                  session_s=1e9)
    acc: dict[str, dict[str, list[float]]] = {n: {"p50": [], "p99": [], "rej": []} for n in rates}
    for k in range(replications):
        r = simulate(plan, sc, duration_s=seconds, seed=seed + 1000 * k)
        for mm in r.models:
            acc[mm["name"]]["p50"].append(mm["p50_ms"] + overhead_ms)
            acc[mm["name"]]["p99"].append(mm["p99_ms"] + overhead_ms)
            acc[mm["name"]]["rej"].append(sum(mm["rejected"].values()))
    return {n: {"sim_p50_ms": float(np.mean(a["p50"])), "sim_p99_ms": float(np.mean(a["p99"])),
                "sim_p99_spread_ms": float(np.std(a["p99"])), "sim_rejected": float(np.mean(a["rej"]))}
            for n, a in acc.items()}


def fit_run_time(batch_stats: list[dict], per_item_ms: float) -> tuple[float, float]:
    """``(base_ms, per_item_ms)`` fitted to Triton's mean execution time per batch size.

    Weighted least squares (weights: batches of each size); with one batch size only, or a negative
    slope, the profile's ``per_item_ms`` is kept and the base fitted alone.
    """
    import numpy as np

    b = np.array([s["batch_size"] for s in batch_stats], float)
    t = np.array([s["mean_exec_ms"] for s in batch_stats], float)
    w = np.array([s["batches"] for s in batch_stats], float)
    per = per_item_ms
    if len(b) >= 2 and np.ptp(b) > 0:
        bm, tm = np.average(b, weights=w), np.average(t, weights=w)
        slope = float(np.sum(w * (b - bm) * (t - tm)) / np.sum(w * (b - bm) ** 2))
        if slope >= 0:
            per = slope
    base = float(np.average(t - per * b, weights=w))
    return base, per


def turnaround_ms(occ: dict, delay_ms: float, base_ms: float) -> tuple[float, int]:
    """``(median ms, intervals)``: how much longer than Triton's ``compute_*`` statistics a batch
    holds the slot (the instance's turnaround between batches), from the overloaded calibration run
    of ``bench/triton.py`` (``occupancy``).

    Requests of one batch complete together, so the run's completions (send + latency) cluster: a
    gap over a third of the profile's base time starts a new batch (the count matches Triton's own
    batch count within a few). Where the next batch's oldest request had waited out the queue delay
    before the previous batch completed, the slot went straight from one batch to the next, and the
    interval between the two completions is the next batch's whole hold on the slot. Minus
    Triton's mean execution time for that batch size, that is the turnaround; the median is taken
    because the intervals also hold this shared machine's stalls (tens to hundreds of ms, a few a
    minute), which are not a property of the server.
    """
    import numpy as np

    end, oldest, size, _ = _batches(occ["requests"], base_ms)
    b2b = oldest[1:] + delay_ms / 1000.0 < end[:-1]
    exec_ms = {s["batch_size"]: s["mean_exec_ms"] for s in occ["batch_stats"]}
    gaps = [iv * 1000.0 - exec_ms[b] for iv, b in zip(np.diff(end)[b2b], size[1:][b2b]) if b in exec_ms]
    if len(gaps) < 10:
        raise ValueError(f"occupancy run: {len(gaps)} back-to-back batches, too few to measure the turnaround")
    return float(np.median(gaps)), len(gaps)


def _batches(req: dict, base_ms: float) -> tuple:
    """A recorded run's batches, rebuilt from its completions (send + latency): requests of one
    batch complete together, so a gap over a third of the profile's base time starts a new batch
    (the count matches Triton's own batch count within a few). Returns per batch (completion,
    oldest send, size) and every send time."""
    import numpy as np

    ok = np.array(req["ok"], bool)
    every = np.sort(np.array(req["sent_s"]))
    sent = np.array(req["sent_s"])[ok]
    done = sent + np.array(req["latency_ms"])[ok] / 1000.0
    o = np.argsort(done)
    sent, done = sent[o], done[o]
    lo = np.r_[0, np.flatnonzero(np.diff(done) > base_ms / 3000.0) + 1]
    return (np.maximum.reduceat(done, lo), np.minimum.reduceat(sent, lo), np.diff(np.r_[lo, done.size]), every)


def missed_wake(rows: list[dict]) -> tuple[float, int]:
    """``(share, cases)``: how often Triton's batcher slept through its instance freeing.

    From recorded levels of ``bench/triton.py`` (pass a *different* run than the one compared). A
    batch whose oldest request queued while the instance was busy should start when the instance
    frees or its delay ends, whichever is later (``timer``); it may instead start only when the
    next request arrives (``arrival``, the batcher was not woken). Where the two predictions differ
    by over 3 ms and the batch's start (completion minus Triton's mean execution time for its size
    and half the overhead) is within 2 ms of one of them, the case counts for it.
    """
    import numpy as np

    timer = arrival = 0
    for r in rows:
        if not r.get("occupancy") or not r.get("requests"):
            continue
        delay = r["queue_delay_ms"] / 1000.0
        ex = {s["batch_size"]: s["mean_exec_ms"] / 1000.0 for s in r["batch_stats"]}
        turn = turnaround_ms(r["occupancy"], r["queue_delay_ms"], r["base_ms"])[0] / 1000.0
        half = (r.get("overhead") or {}).get("overhead_ms", 0.0) / 2000.0
        end, oldest, size, every = _batches(r["requests"], r["base_ms"])
        # On the server's clock: a request arrives half the overhead after it was sent, a batch's
        # answers leave half the overhead before the client has them.
        oldest, every = oldest + half, every + half
        for k in range(1, end.size):
            if size[k] not in ex:
                continue
            free = end[k - 1] - half + turn
            if oldest[k] > free - 0.001:
                continue  # it did not queue while the instance was busy
            start = end[k] - ex[size[k]] - half
            t1 = max(free, oldest[k] + delay)
            j = np.searchsorted(every, free, side="right")
            t2 = max(every[j] if j < every.size else np.inf, oldest[k] + delay)
            if abs(t1 - t2) < 0.003:
                continue
            e1, e2 = abs(start - t1), abs(start - t2)
            if min(e1, e2) < 0.002:
                timer += e1 < e2
                arrival += e2 < e1
    n = timer + arrival
    return (arrival / n if n else 0.0), n


def replay_level(fleet_name: str, slot: str, members: list[dict], *, calibrated: bool,
                 wake: float = 0.0, replications: int = 5) -> dict[str, dict]:
    """Replay one recorded level: exact arrivals, measured p50/p99 over the same requests as the real.

    ``calibrated``: run times fitted to the level's Triton batch statistics, plus the turnaround
    between batches measured in the benchmark's separate overloaded run (``turnaround_ms``) when it
    recorded one, the measured per-request overhead added, and ``wake`` as the batcher's
    ``missed_wake`` share; else the fleet profile, no overhead, no missed wakes.
    """
    import tempfile

    import numpy as np

    from packer.fleetfile import load_fleet
    from packer.handplan import placement, plan_of
    from sims.engine import Simulation
    from sims.scenario import RunTime, Scenario, Server, Trace

    path = Path(fleet_name)
    fleet = load_fleet(path if path.suffix in (".yaml", ".yml") else ROOT / "packer" / "examples" / f"{fleet_name}.yaml")
    pool, _, profile = slot.partition("/")
    rates = {r["model"]: r["rate_rps"] for r in members}
    models = []
    for name, rate in rates.items():
        m = fleet.model(name)
        n = next(r.get("streams") for r in members if r["model"] == name) or m.traffic.streams
        models.append(replace(m, traffic=replace(m.traffic, rps=rate, peak_rps=rate, streams=n), min_replicas=1,
                              max_replicas=None))
    sub = replace(fleet, models=tuple(models))
    plan = plan_of(sub, [placement(sub, pool, list(rates.items()), profile=profile or "whole")])
    # Rendered with the rejecting queue (bench/triton.py --shed; every run before the flag had it)?
    shed = all(r.get("shed", True) for r in members)
    runs, over, fits = [], {}, {}
    for r in members:
        if calibrated:
            base, per = fit_run_time(r["batch_stats"], r["per_item_ms"])
            if r.get("occupancy"):
                base += turnaround_ms(r["occupancy"], r["queue_delay_ms"], r["base_ms"])[0]
            runs.append(RunTime(r["model"], base, per))
            fits[r["model"]] = (base, per)
            over[r["model"]] = (r.get("overhead") or {}).get("overhead_ms", 0.0)
    t_first = min(min(r["requests"]["sent_s"]) for r in members if r["requests"]["sent_s"])
    t_last = max(max(r["requests"]["sent_s"]) for r in members if r["requests"]["sent_s"])
    with tempfile.TemporaryDirectory(prefix="packer-fidelity-") as tmp:
        trace = Path(tmp) / "trace.csv"
        with trace.open("w") as f:
            f.write("timestamp,model\n")
            for r in members:
                f.writelines(f"{t!r},{r['model']}\n" for t in r["requests"]["sent_s"])
        sc = Scenario(process="poisson", policy="static", trace=Trace(str(trace), loop=False),
                      server=Server(run_ms=tuple(runs), missed_wake=wake if calibrated else 0.0,
                                    queue_timeouts=shed, queue_bound=shed))
        # Missed wakes are random draws: average the percentiles over a few seeds (the rest is exact).
        seeds = range(replications if calibrated and wake > 0 else 1)
        per: dict[str, dict[str, list[float]]] = {}
        for seed in seeds:
            sim = Simulation(plan, sc, seed=seed)
            for i in range(len(sim.names)):
                sim.stats.keep(i)
            res = sim.run(t_last - t_first + 10.0)
            for i, name in enumerate(sim.names):
                mm = res.models[i]  # everything sent was answered or rejected: nothing left queued
                assert mm["queued_at_end"] == 0 and mm["in_flight_at_end"] == 0, name
                row = next(r for r in members if r["model"] == name)
                kept = sim.stats.kept[i]
                arr = np.concatenate([a for a, _ in kept]) if kept else np.empty(0)
                lat = np.concatenate([x for _, x in kept]) if kept else np.empty(0)
                measured = arr >= row.get("warmup_s", 0.0) - t_first  # the trace starts at the first request sent
                ms = lat[measured] * 1000.0 + over.get(name, 0.0)
                acc = per.setdefault(name, {"p50": [], "p99": [], "rej": []})
                if ms.size:
                    acc["p50"].append(float(np.percentile(ms, 50)))
                    acc["p99"].append(float(np.percentile(ms, 99)))
                acc["rej"].append(sum(mm["rejected"].values()))
    out = {}
    for name, acc in per.items():
        out[name] = {"sim_p50_ms": float(np.mean(acc["p50"])) if acc["p50"] else None,
                     "sim_p99_ms": float(np.mean(acc["p99"])) if acc["p99"] else None,
                     "sim_p99_spread_ms": float(np.std(acc["p99"])) if acc["p99"] else None,
                     "sim_rejected": float(np.mean(acc["rej"])), "seeds": len(seeds),
                     "run_time_ms": fits.get(name), "overhead_ms": over.get(name)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("triton_json", nargs="?", help="output of bench/triton.py --json")
    ap.add_argument("--simulate-only", action="store_true", help="no Triton results: print the simulator's side")
    ap.add_argument("--fleet", default="long-tail")
    ap.add_argument("--model", default="ft-0002")
    ap.add_argument("--slot", default="l4/whole")
    ap.add_argument("--loads", default="0.3,0.6,0.85")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--overhead-ms", type=float, default=0.0)
    ap.add_argument("--calibrate-from", metavar="OTHER_JSON",
                    help="another bench/triton.py run: measure there how often Triton's batcher sleeps through its "
                         "instance freeing (missed_wake) and simulate with that share")
    ap.add_argument("--json", dest="json_path")
    a = ap.parse_args(argv)
    if a.triton_json:
        rows = json.loads(Path(a.triton_json).read_text())["results"]
    elif a.simulate_only:
        from packer.fleetfile import load_fleet
        from packer.settings import PlanSettings
        from packer.slot import SlotType, single_capacity

        fleet = load_fleet(ROOT / "packer" / "examples" / f"{a.fleet}.yaml")
        pool, _, profile = a.slot.partition("/")
        cap = single_capacity(fleet.model(a.model), SlotType(fleet.pool(pool), profile or "whole"),
                              PlanSettings().u)
        rows = [{"fleet": a.fleet, "model": a.model, "slot": a.slot, "load": float(x), "rate_rps": cap * float(x),
                 "seconds": a.seconds, "seed": i, "arrivals": "poisson"} for i, x in enumerate(a.loads.split(","))]
    else:
        ap.error("give the JSON of bench/triton.py, or --simulate-only")
    out = []
    levels: dict[tuple, list[dict]] = {}
    for row in rows:  # one level = one slot at one load: a model alone, or every member of a group
        key = (row["fleet"], row["slot"], row["load"], row["seed"], tuple(row.get("group") or [row["model"]]))
        levels.setdefault(key, []).append(row)
    f = lambda v: f"{v:8.1f}" if v is not None else "       -"  # noqa: E731
    e = lambda v: f"{v:+7.1%}" if v is not None else "      -"  # noqa: E731
    err = lambda sim, real: (sim - real) / real if real and sim is not None else None  # noqa: E731
    replay = all("requests" in r for r in rows)
    wake, cases = 0.0, 0
    if a.calibrate_from:
        wake, cases = missed_wake(json.loads(Path(a.calibrate_from).read_text())["results"])
    if replay:
        print(f"missed wakes: {wake:.2f} of {cases} cases in {a.calibrate_from}" if a.calibrate_from else
              "missed wakes: not modelled (give --calibrate-from OTHER_JSON, a separate run, to measure them)")
        print("exact recorded arrivals replayed; profile = fleet profile, no overhead; calibrated = run time fitted "
              "to Triton's batch statistics + turnaround (overloaded run) + overhead (near-zero load)")
        print(f"{'model':<10}{'load':>5}{'rate':>7} | {'p50 real':>8}{'profile':>8}{'err':>7}{'calib.':>8}{'err':>7} | "
              f"{'p99 real':>8}{'profile':>8}{'err':>7}{'calib.':>8}{'err':>7} | {'run ms (fit)':>14}{'over ms':>8}")
    else:
        print(f"{'model':<12}{'slot':<16}{'load':>5}{'rate':>8}  {'p50 real':>9}{'p50 sim':>9}{'err':>7}  "
              f"{'p99 real':>9}{'p99 sim':>9}{'err':>7}")
    for (fleet_name, slot, _, seed, _), members in levels.items():
        if replay:
            prof = replay_level(fleet_name, slot, members, calibrated=False)
            cal = replay_level(fleet_name, slot, members, calibrated=True, wake=wake)
            for row in members:
                n = row["model"]
                p, c = prof[n], cal[n]
                res = {**row, "requests": None, "occupancy": None, "profile": p, "calibrated": c,
                       "missed_wake": wake, "missed_wake_from": a.calibrate_from}
                for q in ("p50", "p99"):
                    res[f"{q}_err_profile"] = err(p[f"sim_{q}_ms"], row.get(f"{q}_ms"))
                    res[f"{q}_err"] = err(c[f"sim_{q}_ms"], row.get(f"{q}_ms"))
                out.append(res)
                base, per = c["run_time_ms"]
                print(f"{n:<10}{row['load']:>5.0%}{row['rate_rps']:>7.1f} | {f(row.get('p50_ms'))}"
                      f"{f(p['sim_p50_ms'])}{e(res['p50_err_profile'])}{f(c['sim_p50_ms'])}{e(res['p50_err'])} | "
                      f"{f(row.get('p99_ms'))}{f(p['sim_p99_ms'])}{e(res['p99_err_profile'])}{f(c['sim_p99_ms'])}"
                      f"{e(res['p99_err'])} | {base:6.2f}+{per:.3f}b {c['overhead_ms']:7.2f}", flush=True)
            continue
        sims = simulate_level(fleet_name, slot, {r["model"]: r["rate_rps"] for r in members}, members[0]["seconds"],
                              seed, streams={r["model"]: r.get("streams") for r in members},
                              arrivals=str(members[0].get("arrivals", "poisson")), overhead_ms=a.overhead_ms)
        for row in members:
            sim = sims[row["model"]]
            res = {**row, **sim}
            for q in ("p50", "p99"):
                res[f"{q}_err"] = err(sim[f"sim_{q}_ms"], row.get(f"{q}_ms"))
            out.append(res)
            print(f"{row['model']:<12}{row['slot']:<16}{row['load']:>5.0%}{row['rate_rps']:>8.1f}  "
                  f" {f(row.get('p50_ms'))}{f(sim['sim_p50_ms'])} {e(res['p50_err'])}  {f(row.get('p99_ms'))}"
                  f" {f(sim['sim_p99_ms'])}{e(res['p99_err'])}", flush=True)
    if a.json_path:
        Path(a.json_path).write_text(json.dumps({"bench": "fidelity", "rows": out}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
