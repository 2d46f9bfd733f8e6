"""Drive a real tritonserver with a stand-in model at ~30/60/85% of its slot's capacity.

Ground truth for the simulator: one model alone in one slot, sized by the plan's slot maths at each
load level (duty cycle -> queue delay, batch -> preferred batch, SLO -> queue timeout), served by
the stand-in that sleeps ``base + per_item * b`` ms per batch, under open-loop Poisson arrivals.
Prints achieved throughput, p50 and p99 (client-measured, gRPC included) beside the plan's p99
bound, and the server's mean batch and run time beside the profile's run time at that batch (the
stand-in's own overhead and CPU contention show as the difference). ``--json`` writes every
scenario parameter and measurement.

    python bench/triton.py                                  # ft-0002 on a whole L4 (long-tail fleet)
    python bench/triton.py --fleet multilingual-meetings --model punct-en --pool a100-80 --profile 1g.10gb
    python bench/triton.py --json bench-triton.json --seconds 30

Capacity is ``packer.slot.single_capacity`` at the planner's default utilisation cap (0.85): the
highest rate at which the slot maths still proves the SLO.
"""

from __future__ import annotations

import argparse
import json
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

from packer.fleet import load_fleet  # noqa: E402
from packer.slot import SlotType, single_capacity  # noqa: E402
from serving.config import timing  # noqa: E402
from serving.group import placement, plan_of  # noqa: E402
from serving.local import LocalTriton  # noqa: E402
from serving.metrics import scrape, signals  # noqa: E402
from serving.repository import group_repositories, write_repository  # noqa: E402
from serving.settings import RenderSettings  # noqa: E402

U = 0.85


def run_level(server: LocalTriton, model: str, rate: float, seconds: float, warmup_s: float,
              seed: int) -> dict:
    """Open-loop Poisson arrivals at ``rate`` for ``warmup_s + seconds``; measure after warm-up."""
    rng = np.random.default_rng(seed)
    client = grpcclient.InferenceServerClient(server.grpc_url)
    x = grpcclient.InferInput("INPUT", [1, 1], "FP32")
    x.set_data_from_numpy(np.zeros((1, 1), dtype=np.float32))
    lock = threading.Lock()
    done: list[tuple[float, float, bool]] = []  # (sent, latency_s, ok)
    outstanding = threading.Semaphore(0)

    def callback(sent: float, result, error) -> None:
        t = time.perf_counter()
        with lock:
            done.append((sent, t - sent, error is None))
        outstanding.release()

    total = warmup_s + seconds
    n = 0
    t0 = time.perf_counter()
    m0 = None
    next_at = 0.0
    while next_at < total:
        now = time.perf_counter() - t0
        if m0 is None and now >= warmup_s:
            m0 = scrape(server.metrics_url, time.monotonic())
        if next_at > now:
            time.sleep(next_at - now)
        sent = time.perf_counter()
        client.async_infer(model, [x], callback=lambda result, error, s=sent: callback(s, result, error))
        n += 1
        next_at += rng.exponential(1.0 / rate)
    deadline = time.monotonic() + 60
    for _ in range(n):
        if not outstanding.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise SystemExit(f"{n - len(done)} of {n} requests never answered within 60 s")
    time.sleep(0.6)  # metrics refresh every 500 ms
    m1 = scrape(server.metrics_url, time.monotonic())
    client.close()
    measured = [(lat, ok) for sent, lat, ok in done if sent - t0 >= warmup_s]
    lat = np.array([l for l, ok in measured if ok]) * 1000.0
    ok = len(lat)
    sig = signals(m0, m1).get(model) if m0 is not None else None
    return {
        "sent": len(measured), "ok": ok, "rejected": len(measured) - ok,
        "throughput_rps": ok / seconds,
        "p50_ms": float(np.percentile(lat, 50)) if ok else None,
        "p99_ms": float(np.percentile(lat, 99)) if ok else None,
        "mean_ms": float(lat.mean()) if ok else None,
        "server_avg_batch": sig.avg_batch if sig else None,
        "server_queue_ms": sig.queue_ms if sig else None,
        "server_compute_ms": sig.compute_ms if sig else None,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fleet", default="long-tail", help="example fleet name or a fleet file path")
    ap.add_argument("--model", default="ft-0002")
    ap.add_argument("--pool", default="l4")
    ap.add_argument("--profile", default="whole", help="MIG profile of the slot, or whole")
    ap.add_argument("--loads", default="0.3,0.6,0.85", help="fractions of the slot's capacity")
    ap.add_argument("--seconds", type=float, default=20.0, help="measured seconds per level")
    ap.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each level")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", dest="json_path", default=None, help="also write the results here")
    a = ap.parse_args(argv)

    path = Path(a.fleet)
    fleet = load_fleet(path if path.suffix in (".yaml", ".yml") else ROOT / "packer" / "examples" / f"{a.fleet}.yaml")
    model = fleet.model(a.model)
    if model.traffic.streams is not None:
        ap.error(f"{a.model} is a sequence model; this bench drives dynamic-batched models (stateless requests)")
    st = SlotType(fleet.pool(a.pool), a.profile)
    cap = single_capacity(model, st, U)
    if cap <= 0:
        ap.error(f"{a.model} cannot meet its SLO on {st.key}")
    settings = RenderSettings(device="cpu")
    results = []
    print(f"{a.model} alone on {st.key}: capacity {cap:.1f} rps within its {model.slo_ms:g} ms SLO (u={U})")
    print(f"{'load':>5} {'rate':>7} {'batch':>5} {'delay':>7} {'got rps':>8} {'p50':>7} {'p99':>7} "
          f"{'bound':>7} {'rej':>4} {'srv b':>5} {'srv run':>7} {'profile':>7}")
    with tempfile.TemporaryDirectory(prefix="packer-bench-") as tmp:
        for i, load in enumerate(float(v) for v in a.loads.split(",")):
            rate = cap * load
            p = placement(fleet, a.pool, [(a.model, rate)], profile=a.profile)
            plan = plan_of(fleet, [p])
            (repo,) = group_repositories(plan, p, settings)
            cfg = repo.models[0].config
            t = timing(fleet, p, a.model, settings)
            member = p.models[0]
            with LocalTriton(write_repository(repo, Path(tmp) / f"level{i}")) as server:
                m = run_level(server, a.model, rate, a.seconds, a.warmup, a.seed + i)
            row = {
                "fleet": fleet.name, "model": a.model, "slot": st.key, "load": load, "capacity_rps": cap,
                "rate_rps": rate, "arrivals": "poisson", "seed": a.seed + i, "seconds": a.seconds,
                "base_ms": t.base_ms, "per_item_ms": t.per_item_ms, "max_batch": model.max_batch,
                "preferred_batch": member.batch_size, "duty_cycle_ms": p.duty_cycle_ms,
                "queue_delay_ms": cfg.dynamic_batching.max_queue_delay_microseconds / 1000.0,
                "queue_timeout_ms": cfg.dynamic_batching.default_queue_policy.default_timeout_microseconds / 1000.0,
                "max_queue_size": cfg.dynamic_batching.default_queue_policy.max_queue_size,
                "slo_ms": model.slo_ms, "plan_p99_bound_ms": member.p99_bound_ms, **m,
            }
            results.append(row)
            fmt = lambda v: f"{v:7.1f}" if v is not None else "      -"  # noqa: E731
            print(f"{load:5.0%} {rate:7.1f} {member.batch_size:5d} {row['queue_delay_ms']:7.1f} "
                  f"{m['throughput_rps']:8.1f} {fmt(m['p50_ms'])} {fmt(m['p99_ms'])} {member.p99_bound_ms:7.1f} "
                  f"{m['rejected']:4d} {m['server_avg_batch'] or 0:5.2f} {fmt(m['server_compute_ms'])} "
                  f"{fmt(t.base_ms + t.per_item_ms * (m['server_avg_batch'] or 0))}", flush=True)
    if a.json_path:
        doc = {"bench": "triton", "machine": {"python": platform.python_version(), "cpus": _cpus(),
                                              "device": "cpu (stand-in sleeps)"}, "results": results}
        Path(a.json_path).write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {a.json_path}")
    return 0


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 0)


if __name__ == "__main__":
    sys.exit(main())
