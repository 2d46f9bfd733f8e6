"""Drive a real tritonserver with stand-in models at ~30/60/85% of their slot's capacity.

Ground truth for the simulator: one slot (a model alone, or a packed group with ``--model`` given
more than once), sized by the plan's slot maths at each load level (duty cycle -> queue delay,
batch -> preferred batch, SLO -> queue timeout, shared slot -> rate limiter), served by stand-ins
that sleep ``base + per_item * b`` ms per batch, under open-loop Poisson arrivals (one process per
model, or per stream for a sequence model, seeded). Prints achieved throughput, p50 and p99 (client-measured, gRPC included) beside the
plan's p99 bound, and the server's mean batch and run time beside the profile's run time at that
batch (the stand-in's own overhead and CPU contention show as the difference). ``--json`` writes
every scenario parameter and measurement.

    python bench/triton.py                                  # ft-0002 alone on a whole L4 (long-tail fleet)
    python bench/triton.py --model ft-0002 --model ft-0003  # a packed pair, rates in the fleet's ratio
    python bench/triton.py --fleet multilingual-meetings --model asr-es --pool a100-80 --profile 1g.10gb
                                                            # a sequence model: Poisson chunks per stream
    python bench/triton.py --json bench-triton.json --seconds 30

Capacity is the largest multiple of the models' rates (their fleet peak rates, or ``name=rps``)
at which the slot maths still proves every SLO at the planner's utilisation cap (0.85); alone,
that is ``packer.slot.single_capacity``.
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

from packer.fleet import Fleet, load_fleet  # noqa: E402
from packer.slot import SlotType, feasible, item  # noqa: E402
from serving.config import timing  # noqa: E402
from serving.group import placement, plan_of  # noqa: E402
from serving.local import LocalTriton  # noqa: E402
from serving.metrics import scrape, signals  # noqa: E402
from serving.repository import group_repositories, write_repository  # noqa: E402
from serving.settings import RenderSettings  # noqa: E402

U = 0.85


def capacity(fleet: Fleet, st: SlotType, mix: dict[str, float]) -> float:
    """Largest k such that the group with rates ``k * mix`` is feasible on ``st`` (bisection)."""
    def ok(k: float) -> bool:
        return feasible([item(fleet.model(n), k * r, st) for n, r in mix.items()], st.memory_gb, U)

    if not ok(1e-9):
        return 0.0
    lo, hi = 0.0, 1.0
    while ok(hi):
        lo, hi = hi, hi * 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


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


def run_level(server: LocalTriton, rates: dict[str, float], seconds: float, warmup_s: float,
              seed: int, streams: dict[str, int] | None = None, periodic: bool = False) -> dict[str, dict]:
    """Send the arrivals open-loop (never waiting for answers); measure those sent after warm-up."""
    client = grpcclient.InferenceServerClient(server.grpc_url)
    x = grpcclient.InferInput("INPUT", [1, 1], "FP32")
    x.set_data_from_numpy(np.zeros((1, 1), dtype=np.float32))
    lock = threading.Lock()
    done: list[tuple[str, float, float, bool]] = []  # (model, sent, latency_s, ok)
    answered = threading.Semaphore(0)

    def callback(model: str, sent: float, result, error) -> None:
        t = time.perf_counter()
        with lock:
            done.append((model, sent, t - sent, error is None))
        answered.release()

    plan = arrivals(rates, warmup_s + seconds, seed, streams, periodic)
    t0 = time.perf_counter()
    m0 = None
    for at, model, seq, start, end in plan:
        now = time.perf_counter() - t0
        if m0 is None and at >= warmup_s:
            m0 = scrape(server.metrics_url, time.monotonic())
        if at > now:
            time.sleep(at - now)
        sent = time.perf_counter()
        client.async_infer(model, [x], callback=lambda result, error, m=model, s=sent: callback(m, s, result, error),
                           sequence_id=seq, sequence_start=start, sequence_end=end)
    deadline = time.monotonic() + 60
    for _ in plan:
        if not answered.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise SystemExit(f"{len(plan) - len(done)} of {len(plan)} requests never answered within 60 s")
    time.sleep(0.6)  # metrics refresh every 500 ms
    sig = signals(m0, scrape(server.metrics_url, time.monotonic())) if m0 is not None else {}
    client.close()
    out = {}
    for name in rates:
        measured = [(lat, ok) for m, sent, lat, ok in done if m == name and sent - t0 >= warmup_s]
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
    settings = RenderSettings(device="cpu")
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
            streams = {n: timing(fleet, p, n, settings).streams for n in rates if fleet.model(n).traffic.streams}
            with LocalTriton(write_repository(repo, Path(tmp) / f"level{i}")) as server:
                measured = run_level(server, rates, a.seconds, a.warmup, a.seed + i, streams, a.periodic_streams)
            for member in p.models:
                t = timing(fleet, p, member.name, settings)
                cfg = cfgs[member.name]
                seqb = cfg.HasField("sequence_batching")
                db = cfg.sequence_batching.oldest if seqb else cfg.dynamic_batching
                m = measured[member.name]
                row = {
                    "fleet": fleet.name, "model": member.name, "group": list(mix), "slot": st.key, "load": load,
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
                    "plan_p99_bound_ms": member.p99_bound_ms, **m,
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
