"""Drive a real tritonserver with stand-in models at ~30/60/85% of their slot's capacity.

Ground truth for the simulator: one slot (a model alone, or a packed group with ``--model`` given
more than once), sized by the plan's slot maths at each load level (duty cycle -> queue delay,
batch -> provisioned batch, SLO -> queue timeout, shared slot -> rate limiter), served by stand-ins
that sleep ``base + per_item * b`` ms per batch, under open-loop Poisson arrivals (one process per
model, or per stream for a sequence model, seeded). Prints achieved throughput, p50 and p99 (client-measured, gRPC included) beside the
plan's p99 bound, and the server's mean batch and run time beside the profile's run time at that
batch (the stand-in's own overhead and CPU contention show as the difference). ``--json`` writes
every scenario parameter and measurement.

For the simulator's fidelity check (``bench/fidelity.py``) each level also records, in the JSON:

* ``requests``: every request's send time (seconds from the level's start, warm-up included), its
  client-measured latency and whether it succeeded, so the simulator can replay the exact arrivals;
* ``batch_stats``: Triton's own statistics per batch size over the level (count, mean
  ``compute_input + compute_infer + compute_output``), i.e. what a batch of ``b`` really took on
  this machine, to calibrate the run-time profile from the server rather than from latencies;
* ``overhead``: the per-request cost outside Triton's queue and execution (gRPC, client library,
  callback thread), measured before the level at near-zero load: ``--calibrate`` requests sent one
  at a time, mean client latency minus the mean queue + compute time the server reports for them;
* ``occupancy``: before the level, each model alone at ``--overload`` x capacity for
  ``--occupancy`` seconds (evenly spaced requests, recorded like the level's), so that batches run
  back to back and the time a batch of ``b`` really holds the slot can be read off the intervals
  between batch completions.

    python bench/triton.py                                  # ft-0002 alone on a whole L4 (long-tail fleet)
    python bench/triton.py --model ft-0002 --model ft-0003  # a packed pair, rates in the fleet's ratio
    python bench/triton.py --fleet multilingual-meetings --model asr-es --pool a100-80 --profile 1g.10gb
                                                            # a sequence model: Poisson chunks per stream
    python bench/triton.py --json bench-triton.json --seconds 30

Capacity is the largest multiple of the models' rates (their fleet peak rates, or ``name=rps``)
at which the slot maths still proves every SLO at the planner's default utilisation cap
(``PlanSettings().u``); alone, that is ``packer.slot.single_capacity``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from packer.fleet import Fleet
from packer.fleetfile import load_fleet  # noqa: E402
from packer.settings import PlanSettings  # noqa: E402
from packer.slot import SlotType, feasible, item, largest  # noqa: E402
from serving.config import timing  # noqa: E402
from packer.handplan import placement, plan_of  # noqa: E402
from serving.local import LocalTriton  # noqa: E402
from serving.metrics import scrape, signals  # noqa: E402
from serving.repository import group_repositories, write_repository  # noqa: E402
from serving.settings import TritonSettings  # noqa: E402

U = PlanSettings().u
"""The planner's default usable share of a duty cycle (1 - its default headroom)."""


def capacity(fleet: Fleet, st: SlotType, mix: dict[str, float]) -> float:
    """Largest k such that the group with rates ``k * mix`` is feasible on ``st`` (bisection)."""
    def ok(k: float) -> bool:
        return feasible([item(fleet.model(n), k * r, st, U) for n, r in mix.items()], st.memory_gb, U)

    if not ok(1e-9):
        return 0.0
    return largest(ok, steps=60)


def arrivals(rates: dict[str, float], total_s: float, seed: int, streams: dict[str, int] | None = None,
             periodic: bool = False) -> list[tuple[float, str, int, bool, bool]]:
    """Merged arrivals ``(time, model, sequence id, start, end)``, seeded.

    A model in ``streams`` gets that many independent streams at ``rate / streams`` each: Poisson,
    or with ``periodic`` one chunk every ``streams / rate`` s from a random phase (live audio sends
    fixed-length chunks). A stream's first chunk starts its sequence, its last ends it. Other
    models' requests are Poisson and carry sequence id 0.
    """
    rng = np.random.default_rng(seed)
    streams = streams or {}
    out = []
    seq = 1
    for name in sorted(rates):
        n = streams.get(name, 0)
        for _ in range(max(n, 1)):
            r = rates[name] / max(n, 1)
            times = []
            regular = periodic and n > 0
            t = rng.uniform(0, 1.0 / r) if regular else rng.exponential(1.0 / r)
            while t < total_s:
                times.append(t)
                t += 1.0 / r if regular else rng.exponential(1.0 / r)
            for j, t in enumerate(times):
                out.append((t, name, seq if n else 0, n > 0 and j == 0, n > 0 and j == len(times) - 1))
            seq += 1 if n else 0
    return sorted(out)


def _stats(client: grpcclient.InferenceServerClient, model: str) -> dict:
    """Triton's cumulative statistics for ``model``: per-request (``count``, ``queue_ns``,
    ``compute_ns``: input + infer + output) and per batch size (``{b: [batches, exec ns]}``)."""
    s = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    inf = s.get("inference_stats", {})
    ns = lambda d, k: int(d.get(k, {}).get("ns", 0))  # noqa: E731
    parts = ("compute_input", "compute_infer", "compute_output")
    batches = {int(b["batch_size"]): [int(b.get("compute_infer", {}).get("count", 0)), sum(ns(b, k) for k in parts)]
               for b in s.get("batch_stats", [])}
    return {"count": int(inf.get("success", {}).get("count", 0)), "queue_ns": ns(inf, "queue"),
            "compute_ns": sum(ns(inf, k) for k in parts), "batches": batches}


def batch_stats_delta(before: dict, after: dict) -> list[dict]:
    """Batches run between two ``_stats`` reads: per batch size, how many and their mean run time."""
    out = []
    for b, (n, t) in sorted(after["batches"].items()):
        n0, t0 = before["batches"].get(b, [0, 0])
        if n > n0:
            out.append({"batch_size": b, "batches": n - n0, "mean_exec_ms": (t - t0) / (n - n0) / 1e6})
    return out


def calibrate_overhead(server: LocalTriton, models: list[str], n: int, gap_s: float,
                       streams: dict[str, int] | None = None) -> dict[str, dict]:
    """Per-request overhead outside Triton's queue and execution, at near-zero load.

    ``n`` requests per model, one at a time, ``gap_s`` apart (after 5 unmeasured ones): mean client
    latency minus the mean queue + compute time Triton's statistics report for the same requests.
    A sequence model's requests each open and close their own sequence.
    """
    client = grpcclient.InferenceServerClient(server.grpc_url)
    x = grpcclient.InferInput("INPUT", [1, 1], "FP32")
    x.set_data_from_numpy(np.zeros((1, 1), dtype=np.float32))
    out = {}
    seq = 10_000_000
    for name in models:
        kw = lambda: {}  # noqa: E731
        if (streams or {}).get(name):
            kw = lambda: {"sequence_id": seq, "sequence_start": True, "sequence_end": True}  # noqa: E731
        lat = []
        for k in range(n + 5):
            if k == 5:
                before = _stats(client, name)
            seq += 1
            t = time.perf_counter()
            client.infer(name, [x], **kw())
            if k >= 5:
                lat.append(time.perf_counter() - t)
            time.sleep(gap_s)
        after = _stats(client, name)
        cnt = after["count"] - before["count"]
        server_ms = ((after["queue_ns"] - before["queue_ns"]) + (after["compute_ns"] - before["compute_ns"])) / cnt / 1e6
        client_ms = float(np.mean(lat)) * 1000.0
        out[name] = {"requests": n, "client_mean_ms": client_ms, "client_median_ms": float(np.median(lat)) * 1000.0,
                     "server_queue_compute_ms": server_ms, "overhead_ms": client_ms - server_ms}
    client.close()
    return out


def send_open_loop(server: LocalTriton, plan: list[tuple[float, str, int, bool, bool]],
                   at_mark: tuple[float, object] | None = None) -> tuple[list[tuple[str, float, float, str]], object]:
    """Send ``plan``'s requests at their times, never waiting for answers; wait for every answer.

    Returns ``(model, sent s from the start, latency s, error)`` per request (error ``""`` when it
    succeeded, else Triton's message, e.g. a full queue or an expired timeout), and whatever
    ``at_mark = (t, fn)`` returned when called once at time ``t`` (the warm-up's end).
    """
    client = grpcclient.InferenceServerClient(server.grpc_url)
    x = grpcclient.InferInput("INPUT", [1, 1], "FP32")
    x.set_data_from_numpy(np.zeros((1, 1), dtype=np.float32))
    lock = threading.Lock()
    done: list[tuple[str, float, float, str]] = []
    answered = threading.Semaphore(0)

    def callback(model: str, sent: float, result, error) -> None:
        t = time.perf_counter()
        with lock:
            done.append((model, sent, t - sent, "" if error is None else str(error)))
        answered.release()

    t0 = time.perf_counter()
    marked = None
    for at, model, seq, start, end in plan:
        now = time.perf_counter() - t0
        if at_mark is not None and marked is None and at >= at_mark[0]:
            marked = at_mark[1]()  # type: ignore[operator]
        if at > now:
            time.sleep(at - now)
        sent = time.perf_counter()
        client.async_infer(model, [x], callback=lambda result, error, m=model, s=sent: callback(m, s, result, error),
                           sequence_id=seq, sequence_start=start, sequence_end=end)
    deadline = time.monotonic() + 60
    for _ in plan:
        if not answered.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise SystemExit(f"{len(plan) - len(done)} of {len(plan)} requests never answered within 60 s")
    client.close()
    return [(m, sent - t0, lat, err) for m, sent, lat, err in done], marked


def _requests(done: list[tuple[str, float, float, str]], name: str) -> dict:
    """One model's requests in send order, as the JSON records them."""
    mine = sorted((s, lat, err) for m, s, lat, err in done if m == name)
    errors: dict[str, int] = {}
    for _, _, err in mine:
        if err:
            errors[err] = errors.get(err, 0) + 1
    return {"sent_s": [round(r[0], 6) for r in mine], "latency_ms": [round(r[1] * 1000.0, 4) for r in mine],
            "ok": [not r[2] for r in mine], "errors": errors}


def calibrate_occupancy(server: LocalTriton, rates: dict[str, float], seconds: float,
                        streams: dict[str, int] | None = None) -> dict[str, dict]:
    """How long the slot is really held per batch: each model alone, overloaded for ``seconds``.

    Requests evenly spaced at ``rates`` (above capacity, so batches run back to back); the
    simulator's run times are fitted to the intervals between successive batch completions
    (``bench/fidelity.py``), which include what Triton's ``compute_*`` statistics leave out (the
    instance's turnaround between batches). A sequence model's requests each open and close their
    own sequence.
    """
    client = grpcclient.InferenceServerClient(server.grpc_url)
    out = {}
    for name, rate in rates.items():
        n = int(seconds * rate)
        seq = 20_000_000
        plan = [(k / rate, name, seq + k if (streams or {}).get(name) else 0, bool((streams or {}).get(name)),
                 bool((streams or {}).get(name))) for k in range(n)]
        before = _stats(client, name)
        done, _ = send_open_loop(server, plan)
        after = _stats(client, name)
        out[name] = {"rate_rps": rate, "seconds": seconds, "batch_stats": batch_stats_delta(before, after),
                     "requests": _requests(done, name)}
        time.sleep(0.2)
    client.close()
    return out


def run_level(server: LocalTriton, rates: dict[str, float], seconds: float, warmup_s: float,
              seed: int, streams: dict[str, int] | None = None, periodic: bool = False) -> dict[str, dict]:
    """Send the arrivals open-loop (never waiting for answers); measure those sent after warm-up."""
    client = grpcclient.InferenceServerClient(server.grpc_url)
    plan = arrivals(rates, warmup_s + seconds, seed, streams, periodic)
    before = {n: _stats(client, n) for n in rates}
    done, m0 = send_open_loop(server, plan, (warmup_s, lambda: scrape(server.metrics_url, time.monotonic())))
    time.sleep(0.6)  # metrics refresh every 500 ms
    sig = signals(m0, scrape(server.metrics_url, time.monotonic())) if m0 is not None else {}
    after = {n: _stats(client, n) for n in rates}
    client.close()
    out = {}
    for name in rates:
        measured = [(lat, not err) for m, sent, lat, err in done if m == name and sent >= warmup_s]
        lat = np.array([l for l, ok in measured if ok]) * 1000.0
        s = sig.get(name)
        out[name] = {
            "sent": len(measured), "ok": len(lat), "rejected": len(measured) - len(lat),
            "throughput_rps": len(lat) / seconds,
            "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
            "p99_ms": float(np.percentile(lat, 99)) if len(lat) else None,
            "mean_ms": float(lat.mean()) if len(lat) else None,
            "server_avg_batch": s.avg_batch if s else None,
            "server_queue_ms": s.queue_ms if s else None,
            "server_compute_ms": s.compute_ms if s else None,
            "warmup_s": warmup_s,
            "batch_stats": batch_stats_delta(before[name], after[name]),
            "requests": _requests(done, name),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fleet", default="long-tail", help="example fleet name or a fleet file path")
    ap.add_argument("--model", action="append", help="NAME or NAME=RPS (repeat for a packed group); "
                    "default ft-0002")
    ap.add_argument("--pool", default="l4")
    ap.add_argument("--profile", default="whole", help="MIG profile of the slot, or whole")
    ap.add_argument("--loads", default="0.3,0.6,0.85", help="fractions of the slot's capacity")
    ap.add_argument("--seconds", type=float, default=20.0, help="measured seconds per level")
    ap.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each level")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--periodic-streams", action="store_true",
                    help="sequence models: each stream sends evenly spaced chunks (else Poisson per stream)")
    ap.add_argument("--calibrate", type=int, default=50,
                    help="requests sent one at a time before each level to measure the per-request overhead (0: skip)")
    ap.add_argument("--occupancy", type=float, default=3.0,
                    help="seconds per model at --overload x capacity before each level, to measure how long a batch "
                         "holds the slot (0: skip)")
    ap.add_argument("--overload", type=float, default=1.3)
    ap.add_argument("--shed", action="store_true",
                    help="render the rejecting queue policy (TritonSettings.shed): batchers then miss wake-ups")
    ap.add_argument("--json", dest="json_path", default=None, help="also write the results here")
    a = ap.parse_args(argv)

    path = Path(a.fleet)
    fleet = load_fleet(path if path.suffix in (".yaml", ".yml") else ROOT / "packer" / "examples" / f"{a.fleet}.yaml")
    mix: dict[str, float] = {}
    for spec in a.model or ["ft-0002"]:
        name, _, rps = spec.partition("=")
        model = fleet.model(name)
        mix[name] = float(rps) if rps else (model.traffic.peak_rps or 1.0)
    st = SlotType(fleet.pool(a.pool), a.profile)
    k = capacity(fleet, st, mix)
    if k <= 0:
        ap.error(f"{', '.join(mix)} cannot share {st.key} within their SLOs")
    settings = TritonSettings(device="cpu", shed=a.shed)
    results = []
    total = sum(mix.values()) * k
    print(f"{' + '.join(mix)} on {st.key}: capacity {total:.1f} rps in all within the SLOs (u={U})")
    print(f"{'load':>5} {'model':>10} {'rate':>7} {'batch':>5} {'delay':>7} {'got rps':>8} {'p50':>7} {'p99':>7} "
          f"{'bound':>7} {'rej':>4} {'srv b':>5} {'srv run':>7} {'profile':>7}")
    fmt = lambda v: f"{v:7.1f}" if v is not None else "      -"  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="packer-bench-") as tmp:
        for i, load in enumerate(float(v) for v in a.loads.split(",")):
            rates = {n: r * k * load for n, r in mix.items()}
            p = placement(fleet, a.pool, list(rates.items()), profile=a.profile)
            (repo,) = group_repositories(plan_of(fleet, [p]), p, settings)
            cfgs = {m.name: m.config for m in repo.models}
            # The sessions a level's rate takes on average (a stream sends rps / streams chunks a second).
            streams = {n: max(1, round(rates[n] / fleet.model(n).traffic.per_stream_rps)) for n in rates
                       if fleet.model(n).traffic.streams}
            with LocalTriton(write_repository(repo, Path(tmp) / f"level{i}")) as server:
                delay_us = [(cfgs[n].sequence_batching.oldest if cfgs[n].HasField("sequence_batching")
                             else cfgs[n].dynamic_batching).max_queue_delay_microseconds for n in rates]
                gap = max(delay_us) / 1e6 + 0.03  # each request alone: past the queue delay and its run
                over = calibrate_overhead(server, list(rates), a.calibrate, gap, streams) if a.calibrate else {}
                occ = calibrate_occupancy(server, {n: r * k * a.overload for n, r in mix.items()}, a.occupancy,
                                          streams) if a.occupancy else {}
                measured = run_level(server, rates, a.seconds, a.warmup, a.seed + i, streams, a.periodic_streams)
            for member in p.models:
                t = timing(fleet, p, member.name, settings)
                cfg = cfgs[member.name]
                seqb = cfg.HasField("sequence_batching")
                db = cfg.sequence_batching.oldest if seqb else cfg.dynamic_batching
                m = measured[member.name]
                row = {
                    "shed": a.shed, "fleet": fleet.name, "model": member.name, "group": list(mix), "slot": st.key, "load": load,
                    "group_capacity_rps": total, "rate_rps": rates[member.name],
                    "arrivals": "periodic per stream" if a.periodic_streams and member.name in streams else
                    ("poisson per stream" if member.name in streams else "poisson"),
                    "seed": a.seed + i, "seconds": a.seconds, "base_ms": t.base_ms, "per_item_ms": t.per_item_ms,
                    "max_batch": fleet.model(member.name).max_batch, "planned_batch": member.batch_size,
                    "duty_cycle_ms": p.duty_cycle_ms, "group_compute_share": p.compute_share,
                    "batcher": "sequence-oldest" if seqb else "dynamic",
                    "streams": streams.get(member.name),
                    "queue_delay_ms": db.max_queue_delay_microseconds / 1000.0,
                    "queue_timeout_ms": None if seqb else db.default_queue_policy.default_timeout_microseconds / 1000.0,
                    "max_queue_size": None if seqb else db.default_queue_policy.max_queue_size,
                    "rate_limited": len(p.models) > 1, "slo_ms": member.slo_ms,
                    "plan_p99_bound_ms": member.p99_bound_ms, "overhead": over.get(member.name),
                    "occupancy": occ.get(member.name), **m,
                }
                results.append(row)
                print(f"{load:5.0%} {member.name:>10} {row['rate_rps']:7.1f} {member.batch_size:5d} "
                      f"{row['queue_delay_ms']:7.1f} {m['throughput_rps']:8.1f} {fmt(m['p50_ms'])} {fmt(m['p99_ms'])} "
                      f"{member.p99_bound_ms:7.1f} {m['rejected']:4d} {m['server_avg_batch'] or 0:5.2f} "
                      f"{fmt(m['server_compute_ms'])} {fmt(t.base_ms + t.per_item_ms * (m['server_avg_batch'] or 0))}",
                      flush=True)
    if a.json_path:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        doc = {"bench": "triton", "command": " ".join(["python", "bench/triton.py", *(argv or sys.argv[1:])]),
               "machine": {"python": platform.python_version(), "cpus": cpus, "load_avg": os.getloadavg(),
                           "device": "cpu: stand-ins sleep the profile"}, "results": results}
        Path(a.json_path).write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {a.json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
