"""Does a served slot behave as planned? Packed slots on the real tritonserver against their bounds.

For slots of 1, 3 and 5 members mixing interactive, streaming and batch models (a fleet written
here, profiles in tens of ms so the CPU stand-ins dominate Triton's own overhead), or with
``--random N`` for N slots drawn from a broad domain (``random_slot``), this:

1. plans the slot at its capacity with the slot maths (``packer.slot``): the largest multiple of
   the members' rate mix that the planner's test admits, and ``packer.handplan.placement`` at it,
   the duty cycle, provisioned batches and each member's ``p99_bound_ms``;
2. renders it with the Triton writer (``device=cpu``: KIND_CPU instances, stand-ins that hold the
   slot's device lock while they run) and serves the streaming and the batch repository in **one**
   ``tritonserver`` with the rate limiter on, as production does;
3. drives it at 30/60/90 % of the planned rates: Poisson arrivals for the interactive and batch
   models, and for streaming models ``streams`` sessions sending a chunk every interval from a
   random phase (sequence batcher, one sequence per session), open loop, ``--runs`` seeds;
4. replays the same arrivals in the simulator (``sims``), with the batchers as rendered
   (``packer.batching``) and the run times fitted to Triton's own execution statistics of the
   level (not to the latencies compared), plus the per-request overhead measured at near-zero load.

Per member and level it prints real p50/p99, the bound, simulated p50/p99 and the share within
SLO. ``--json FILE`` records everything.

    python bench/truth.py                       # 3 slots x 3 levels x 2 runs of 20 s (~12 min)
    python bench/truth.py --slots 3 --runs 1 --seconds 10
    python bench/truth.py --random 10 --seed 0 --loads 1.0 --runs 1 --seconds 15
                                                # 10 slots drawn by random_slot, at 100 % of
                                                # the planned rates (~6 min); prints the
                                                # distribution of real p99 / bound
    python bench/truth.py --device gpu          # on a GPU machine: real kernels, KIND_GPU instances
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from packer.fleet import FleetError  # noqa: E402
from packer.fleetfile import parse_fleet  # noqa: E402
from packer.slot import SlotType, feasible, item, largest  # noqa: E402

U = 0.85
"""The planner's usable share at its default 15 % headroom."""

FLEET = {
    "name": "truth-bench",
    "pools": [{"name": "l4", "gpu": "l4-24gb", "gpus_per_node": 4, "max_nodes": 1, "cost_per_gpu_hour": 0.8,
               "sharing": ["time-slicing"]}],
    "models": [
        {"name": "chat", "kind": "streaming", "memory_gb": 2, "slo_ms": 400, "max_batch": 16,
         "latency_ms": {"gpu": "l4-24gb", "base": 12, "per_item": 3}, "traffic": {"rps": 20}},
        {"name": "asr-a", "kind": "streaming", "memory_gb": 2, "slo_ms": 300, "max_batch": 64,
         "latency_ms": {"gpu": "l4-24gb", "base": 8, "per_item": 0.6}, "traffic": {"rps": 50, "streams": 20}},
        {"name": "asr-b", "kind": "streaming", "memory_gb": 2, "slo_ms": 300, "max_batch": 64,
         "latency_ms": {"gpu": "l4-24gb", "base": 6, "per_item": 0.5}, "traffic": {"rps": 40, "streams": 20}},
        {"name": "batch-a", "kind": "batch", "memory_gb": 2, "slo_ms": 4000, "max_batch": 32,
         "latency_ms": {"gpu": "l4-24gb", "base": 20, "per_item": 3}, "traffic": {"rps": 8}},
        {"name": "batch-b", "kind": "batch", "memory_gb": 2, "slo_ms": 6000, "max_batch": 16,
         "latency_ms": {"gpu": "l4-24gb", "base": 25, "per_item": 5}, "traffic": {"rps": 3}},
    ],
}
SLOTS = {1: ["chat"], 3: ["asr-a", "chat", "batch-a"], 5: ["asr-a", "asr-b", "chat", "batch-a", "batch-b"]}
STREAM_INTERVAL_S = {"asr-a": 0.4, "asr-b": 0.5}
"""Seconds between a session's chunks: streams = rate * interval."""


def fleet(spec: dict | None = None):
    return parse_fleet(spec or FLEET, "bench/truth.py")


def random_slot(seed: int, members: int | None = None) -> tuple[dict, list[str], dict[str, float]]:
    """One slot drawn from a broad domain: ``(fleet spec, members, session intervals)``.

    1-6 members (or ``members``) on a whole L4 (one alone is served without a duty cycle,
    ``packer/queue.py``); each interactive (Poisson), streaming (sessions sending a chunk
    every 0.2-1 s) or batch; run time ``base + per_item * b`` with base 5-60 ms and per item
    0.2-6 ms (log-uniform), ``max_batch`` 1-64, SLOs 150 ms-2 s (interactive, streaming) or
    1-10 s (batch), rate mix log-normal. The floors keep what is measured the slot, not the CPU
    test bed: Triton's own per-request cost here is about 1-2 ms (``calibrate_overhead``), which a
    5 ms stand-in still dominates, and one client sends at most a few hundred requests a second
    (``random_design`` redraws slots whose capacity is above ``MAX_SLOT_RPS``).
    """
    rng = np.random.default_rng([seed, 7919])
    lu = lambda lo, hi: float(np.exp(rng.uniform(math.log(lo), math.log(hi))))  # noqa: E731
    models, intervals = [], {}
    n = int(rng.integers(1, 7))
    for i in range(members or n):
        kind = str(rng.choice(["interactive", "streaming", "batch"], p=[0.35, 0.35, 0.3]))
        name = f"{kind[0]}{i}"
        slo = lu(1000, 10000) if kind == "batch" else lu(150, 2000)
        models.append({"name": name, "kind": "batch" if kind == "batch" else "streaming",
                       "memory_gb": int(rng.integers(1, 5)), "slo_ms": round(slo),
                       "max_batch": int(rng.choice([1, 2, 4, 8, 16, 32, 64])),
                       "latency_ms": {"gpu": "l4-24gb", "base": round(lu(5, 60), 1),
                                      "per_item": round(lu(0.2, 6), 2)},
                       "traffic": {"rps": round(float(rng.lognormal(2.0, 1.0)), 2)}})
        if kind == "streaming":
            intervals[name] = round(float(rng.uniform(0.2, 1.0)), 2)
    spec = {**FLEET, "name": f"truth-random-{seed}", "models": models}
    return spec, [m["name"] for m in models], intervals


MAX_SLOT_RPS = 400.0
"""The most requests a second one open-loop client here sends on time (2 cores, Python)."""


def random_design(seed: int, members: int | None = None) -> tuple[dict, list[str], dict[str, float], int]:
    """``random_slot`` at the first seed from ``seed`` on whose slot admits some rate at all and
    whose capacity one client can drive; also returns that seed, so a row can be re-run alone."""
    for s in range(seed, seed + 1000):
        spec, names, intervals = random_slot(s, members)
        try:
            f = fleet(spec)
        except FleetError:  # a member no slot serves at any rate: not a slot to measure
            continue
        mix = {n: f.model(n).traffic.rps for n in names}
        k = capacity(f, SlotType(f.pool("l4")), mix)
        if k > 0 and k * sum(mix.values()) <= MAX_SLOT_RPS:
            return spec, names, intervals, s
    raise SystemExit(f"no drivable slot in 1000 seeds from {seed}")


def capacity(f, st: SlotType, mix: dict[str, float]) -> float:
    """Largest k with the group at ``k * mix`` admitted by the planner's test (bisection)."""
    def ok(k: float) -> bool:
        return feasible([item(f.model(n), k * r, st, U) for n, r in mix.items()], st.memory_gb, U)

    return largest(ok)


def planned_slot(names: list[str], spec: dict | None = None, intervals: dict[str, float] | None = None):
    """The slot at capacity: (fleet with the members' streams sized to their planned rates, plan,
    planned rates, session intervals). A session stream whose planned rate is under one chunk an
    interval becomes one session at the planned rate (its interval stretched)."""
    from packer.errors import UserError
    from packer.handplan import placement, plan_of

    f = fleet(spec)
    given = dict(STREAM_INTERVAL_S if intervals is None else intervals)
    st = SlotType(f.pool("l4"))
    mix = {n: f.model(n).traffic.rps for n in names}
    k = capacity(f, st, mix) * 0.999
    # Whole sessions change a stream member's chunks a stream, and a replica alone is sized for
    # its streams' count (slot.lone_rate): where the group at k is then refused, k steps down 1 %.
    for _ in range(100):
        intervals = dict(given)
        models = []
        for m in f.models:
            if m.name not in names:
                continue
            rate = k * mix[m.name]
            streams = None
            if m.name in intervals:
                if rate * intervals[m.name] < 1:
                    intervals[m.name] = 1.0 / rate
                streams = math.floor(rate * intervals[m.name] + 1e-9)
                rate = streams / intervals[m.name]  # whole sessions at the planned chunk rate
            models.append(replace(m, traffic=replace(m.traffic, rps=rate, peak_rps=rate, streams=streams)))
        sub = replace(f, models=tuple(models))
        rates = {m.name: m.traffic.peak_rps for m in models}
        try:
            p = placement(sub, "l4", list(rates.items()), node="l4-n0", gpu=0, u=U)
        except UserError:
            k *= 0.99
            continue
        return sub, plan_of(sub, [p]), rates, intervals
    raise UserError(f"no rate of {', '.join(names)} that the planner admits near its capacity")


def served_bound(sub, p, fits: dict[str, tuple[float, float]], overhead: dict[str, float]) -> dict[str, float]:
    """Each member's bound with the run times Triton served (``fits``) in place of the profile's,
    at the rendered cycle and rates, plus the per-request overhead outside the server: what the
    slot maths says once its inputs are what the server did. Real p99 above the bound but within
    this is the profile's error (the stand-in sleeps the profile; Triton's own work per batch comes
    on top), not the slot maths'; a user profiles the model as served, which includes it."""
    from packer.fleet import LatencyProfile
    from packer.slot import round_at

    st = SlotType(sub.pool("l4"))
    if p.duty_cycle_ms == 0:  # alone, served as its requests come
        from packer.queue import queue_bound
        mem = p.models[0]
        return {mem.name: queue_bound(mem.rate_rps, *fits[mem.name], sub.model(mem.name).max_batch)
                + overhead.get(mem.name, 0.0)}
    its = []
    for mem in p.models:
        m = sub.model(mem.name)
        its.append(item(replace(m, latency=(LatencyProfile(m.latency[0].gpu, *fits[mem.name]),)), mem.rate_rps, st, U))
    rd = round_at(its, p.duty_cycle_ms, U)
    return {mem.name: rd.bounds[i] + overhead.get(mem.name, 0.0) for i, mem in enumerate(p.models)}


def arrivals(rates: dict[str, float], streams: dict[str, int], total_s: float, seed: int) -> list[tuple]:
    """``(t, model, sequence id, start, end)``: Poisson, or sessions with evenly spaced chunks."""
    rng = np.random.default_rng(seed)
    out, seq = [], 1
    for name in sorted(rates):
        n = streams.get(name, 0)
        if n:
            interval = n / rates[name]
            for _ in range(n):
                t = np.arange(rng.uniform(0, interval), total_s, interval)
                for j, x in enumerate(t):
                    out.append((float(x), name, seq, j == 0, j == len(t) - 1))
                seq += 1
        else:
            t = np.cumsum(rng.exponential(1.0 / rates[name], int(rates[name] * total_s * 1.5) + 20))
            out += [(float(x), name, 0, False, False) for x in t[t < total_s]]
    return sorted(out)


def simulate(plan, rates: dict[str, float], sent: dict[str, list[float]], fits: dict[str, tuple[float, float]],
             overhead: dict[str, float], warmup_s: float, wake: float) -> dict[str, dict]:
    """Replay the sent arrivals on the simulator with the slot as rendered."""
    from sims.engine import Simulation
    from sims.scenario import RunTime, Scenario, Server, Trace

    t0 = min(min(v) for v in sent.values() if v)
    t1 = max(max(v) for v in sent.values() if v)
    with tempfile.TemporaryDirectory(prefix="packer-truth-") as tmp:
        trace = Path(tmp) / "trace.csv"
        with trace.open("w") as fh:
            fh.write("timestamp,model\n")
            for name, ts in sent.items():
                fh.writelines(f"{t!r},{name}\n" for t in ts)
        runs = tuple(RunTime(n, b, p) for n, (b, p) in fits.items())
        sc = Scenario(process="poisson", policy="static", trace=Trace(str(trace), loop=False),
                      server=Server(run_ms=runs, missed_wake=wake))
        acc: dict[str, dict[str, list[float]]] = {}
        for seed in range(3 if wake > 0 else 1):
            sim = Simulation(plan, sc, seed=seed)
            for i in range(len(sim.names)):
                sim.stats.keep(i)
            sim.run(t1 - t0 + 10.0)
            for i, name in enumerate(sim.names):
                kept = sim.stats.kept[i]
                arr = np.concatenate([a for a, _ in kept]) if kept else np.empty(0)
                lat = np.concatenate([x for _, x in kept]) if kept else np.empty(0)
                ms = lat[arr >= warmup_s - t0] * 1000.0 + overhead.get(name, 0.0)
                a = acc.setdefault(name, {"p50": [], "p99": []})
                if ms.size:
                    a["p50"].append(float(np.percentile(ms, 50)))
                    a["p99"].append(float(np.percentile(ms, 99)))
    return {n: {"sim_p50_ms": float(np.mean(a["p50"])) if a["p50"] else None,
                "sim_p99_ms": float(np.mean(a["p99"])) if a["p99"] else None} for n, a in acc.items()}


def run_slot(names: list[str], loads: list[float], runs: int, seconds: float, warmup_s: float,
             wake: float, device: str = "cpu", server_log: str | None = None, spec: dict | None = None,
             intervals: dict[str, float] | None = None, label: str | None = None) -> list[dict]:
    """Serve one slot (the fixed fleet's ``names``, or ``spec``'s) and drive it at each load."""
    import tritonclient.grpc as grpcclient
    from fidelity import fit_run_time
    from triton import _stats, batch_stats_delta, calibrate_overhead, send_open_loop

    from serving.local import LocalTriton
    from serving.repository import group_repositories, write_repository
    from serving.settings import TritonSettings

    sub, plan, rates, intervals = planned_slot(names, spec, intervals)
    label = label or str(len(names))
    p = plan.placements[0]
    bound = {m.name: m.p99_bound_ms for m in p.models}
    streams = {m.name: m.traffic.streams for m in sub.models if m.traffic.streams}
    out = []
    with tempfile.TemporaryDirectory(prefix="packer-truth-") as tmp:
        settings = TritonSettings(device=device, lock_dir=tmp)
        repos = group_repositories(plan, p, settings)
        paths = [write_repository(r, Path(tmp) / r.kind) for r in repos]
        print(f"slot {label} of {len(names)}: d = {p.duty_cycle_ms:.1f} ms, round share {p.compute_share:.0%}; "
              + ", ".join(f"{m.name} {m.rate_rps:.1f} rps b={m.batch_size} bound {m.p99_bound_ms:.0f} ms"
                          for m in p.models), flush=True)
        log = Path(f"{server_log}-{label}.log") if server_log else None
        with LocalTriton(paths, start_timeout_s=300, log_path=log) as server:
            over = calibrate_overhead(server, names, 20, 0.05, streams)
            overhead = {n: max(0.0, o["overhead_ms"]) for n, o in over.items()}
            client = grpcclient.InferenceServerClient(server.grpc_url)
            for load in loads:
                level = {n: r * load for n, r in rates.items()}
                lvl_streams = {n: max(1, round(s * load)) for n, s in streams.items()}
                level.update({n: lvl_streams[n] / intervals[n] for n in lvl_streams})
                for run in range(runs):
                    seed = 1000 * len(names) + 10 * run + int(load * 100)
                    before = {n: _stats(client, n) for n in names}
                    plan_req = arrivals(level, lvl_streams, warmup_s + seconds, seed)
                    done, _ = send_open_loop(server, plan_req)
                    after = {n: _stats(client, n) for n in names}
                    sent = {n: [s for m, s, _, _ in done if m == n] for n in names}
                    fits = {}
                    for n in names:
                        bs = batch_stats_delta(before[n], after[n])
                        m = sub.model(n)
                        fits[n] = fit_run_time(bs, m.latency[0].per_item) if bs else (m.latency[0].base,
                                                                                      m.latency[0].per_item)
                    sim = simulate(plan, level, sent, fits, overhead, warmup_s, wake)
                    served = served_bound(sub, p, fits, overhead)
                    for n in names:
                        rows = [(lat * 1000.0, err) for m, s, lat, err in done if m == n and s >= warmup_s]
                        ok = np.array([l for l, e in rows if not e])
                        slo = sub.model(n).slo_ms
                        within = sum(1 for l, e in rows if not e and l <= slo) / max(1, len(rows))
                        r = {"slot": label, "members": len(names), "load": load, "run": run, "model": n,
                             "rate_rps": level[n],
                             "sent": len(rows), "rejected": sum(1 for _, e in rows if e),
                             "p50_ms": float(np.percentile(ok, 50)) if ok.size else None,
                             "p99_ms": float(np.percentile(ok, 99)) if ok.size else None,
                             "bound_ms": bound[n], "served_bound_ms": served[n], "slo_ms": slo, "within_slo": within,
                             "fit_base_ms": fits[n][0], "fit_per_item_ms": fits[n][1],
                             "overhead_ms": overhead.get(n, 0.0), **sim[n]}
                        out.append(r)
                        print(_row(r), flush=True)
                    time.sleep(0.5)
            client.close()
    return out


def _row(r: dict) -> str:
    f = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
    flag = "" if r["p99_ms"] is None or r["p99_ms"] <= r["bound_ms"] else "  OVER"
    return (f"| {r['slot']} | {r['load']:.0%} | {r['run']} | {r['model']} | {r['rate_rps']:.1f} | {f(r['p50_ms'])} | "
            f"{f(r['p99_ms'])} | {r['bound_ms']:.1f} | {f(r['sim_p50_ms'])} | {f(r['sim_p99_ms'])} | "
            f"{r['within_slo']:.2%} | {r['rejected']} |{flag}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slots", default="1,3,5", help="slot sizes to run (members): 1, 3, 5")
    ap.add_argument("--loads", default="0.3,0.6,0.9", help="fractions of the planned rates")
    ap.add_argument("--runs", type=int, default=2, help="seeds per level")
    ap.add_argument("--seconds", type=float, default=20.0, help="measured seconds per run")
    ap.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each run")
    ap.add_argument("--missed-wake", type=float, default=0.0,
                    help="the simulator's missed-wake share: 0 for the rendered (prefetching) batchers; "
                         "0.45 was measured with a queue policy (bench/fidelity.py)")
    ap.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                    help="gpu: KIND_GPU instances whose stand-ins run real matrix products on GPU 0 "
                         "(needs PyTorch with CUDA in the server's Python)")
    ap.add_argument("--server-log", metavar="PREFIX", help="keep each slot's server log as PREFIX-<members>.log")
    ap.add_argument("--random", type=int, default=0, metavar="N",
                    help="instead of the fixed slots, N slots drawn by random_slot (1-6 members, any mix)")
    ap.add_argument("--seed", type=int, default=0, help="the first design seed of --random")
    ap.add_argument("--members", type=int, default=None, metavar="K",
                    help="with --random: K members a slot (1: replicas alone, served without a duty cycle)")
    ap.add_argument("--json", help="write every row here")
    a = ap.parse_args(argv)
    rows = []
    print("| slot | load | run | model | rps | p50 | p99 | bound | sim p50 | sim p99 | within SLO | rejected |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    loads = [float(x) for x in a.loads.split(",")]
    designs = []
    if a.random:
        seed = a.seed
        for _ in range(a.random):
            spec, names, intervals, used = random_design(seed, a.members)
            designs.append({"seed": used, "spec": spec, "intervals": intervals})
            print(f"design r{used}: " + "; ".join(
                f"{m['name']} b<={m['max_batch']} {m['latency_ms']['base']}+{m['latency_ms']['per_item']}/item "
                f"slo {m['slo_ms']} ms"
                + (f" sessions every {intervals[m['name']]} s" if m["name"] in intervals else "")
                for m in spec["models"]), flush=True)
            rows += run_slot(names, loads, a.runs, a.seconds, a.warmup, a.missed_wake, a.device, a.server_log,
                             spec=spec, intervals=intervals, label=f"r{used}")
            seed = used + 1
    else:
        for k in (int(x) for x in a.slots.split(",")):
            rows += run_slot(SLOTS[k], loads, a.runs, a.seconds, a.warmup, a.missed_wake, a.device, a.server_log)
    over = [r for r in rows if r["p99_ms"] is not None and r["p99_ms"] > r["bound_ms"]]
    sims = [abs(r[k2] / r[k1] - 1) for r in rows for k1, k2 in (("p50_ms", "sim_p50_ms"), ("p99_ms", "sim_p99_ms"))
            if r[k1] and r[k2]]
    at90 = [r["within_slo"] for r in rows if r["load"] >= 0.9]
    measured = [r for r in rows if r["p99_ms"] is not None]
    print(f"\nreal p99 over its bound: {len(over)} of {len(measured)} member-runs"
          + (f" (worst {max(r['p99_ms'] / r['bound_ms'] for r in over):.3f}x)" if over else "")
          + (f"; {len(rows) - len(measured)} drew no request after the warm-up" if len(measured) < len(rows) else ""))
    if over:
        print(f"  of those, over the bound at the run times Triton served (+ per-request overhead): "
              f"{sum(1 for r in over if r['p99_ms'] > r['served_bound_ms'])} ("
              + ", ".join(f"{r['slot']}/{r['model']} {r['p99_ms']:.1f} ms: bound {r['bound_ms']:.1f}, "
                          f"as served {r['served_bound_ms']:.1f}" for r in over) + ")")
    print(f"simulator vs real, p50 and p99: median error {np.median(sims):.1%}, worst {max(sims):.1%}, "
          f"{sum(1 for s in sims if s <= 0.10)} of {len(sims)} within 10 %")
    if at90:
        print(f"within SLO at 90 %: worst member {min(at90):.3%}")
    ratios = sorted(r["p99_ms"] / r["bound_ms"] for r in measured)
    if ratios:
        q = lambda x: ratios[min(len(ratios) - 1, int(x * len(ratios)))]  # noqa: E731
        print(f"real p99 / bound over {len(ratios)} member-runs: median {q(0.5):.2f}, 90th {q(0.9):.2f}, "
              f"worst {ratios[-1]:.2f}")
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": rows, "designs": designs, "args": vars(a)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
