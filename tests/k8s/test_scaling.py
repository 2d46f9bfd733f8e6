"""Live traffic moves the plan: Triton metrics over HTTP -> the scaling policy -> new servers.

A stand-in for the groups' Triton metrics endpoints serves cumulative counters in Triton's
Prometheus format, growing at a rate the test sets, on the same clock the reconciler reads.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from k8s.reconciler import default_planner
from k8s.scaling import TritonSignals, packer_scaler, state_from_json, state_to_json


class TritonMetrics:
    """``GET /<service>/metrics``: each service's own cumulative counter per model, growing at the
    model's rate split evenly over the services that serve it (re-split when they change)."""

    def __init__(self, clock) -> None:
        self.clock = clock
        self.rates: dict[str, float] = {}
        self.serving: dict[str, list[str]] = {}
        self.counters: dict[tuple[str, str], tuple[float, float, float]] = {}  # (svc, model) -> t0, c0, rps
        me = self

        class H(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                svc = self.path.strip("/").split("/")[0]
                lines = []
                for (s, model) in me.counters:
                    if s == svc:
                        lines.append(f'nv_inference_request_success{{model="{model}",version="1"}} {me.count(s, model)}')
                        lines.append(f'nv_inference_pending_request_count{{model="{model}",version="1"}} 0')
                body = ("\n".join(lines) + "\n").encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def count(self, svc: str, model: str) -> float:
        t0, c0, rps = self.counters[(svc, model)]
        return c0 + rps * (self.clock() - t0)

    def _rebase(self) -> None:
        now = self.clock()
        old = {k: self.count(*k) for k in self.counters}
        self.counters = {}
        for model, services in self.serving.items():
            for svc in services:
                rate = self.rates.get(model, 0.0) / len(services)
                self.counters[(svc, model)] = (now, old.get((svc, model), 0.0), rate)

    def set_rate(self, model: str, rps: float) -> None:
        self.rates[model] = rps
        self._rebase()

    def set_serving(self, serving: dict[str, list[str]]) -> None:
        self.serving = serving
        self._rebase()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/{name}/metrics"


@pytest.fixture()
def scaled(cluster):
    now = [1_000_000.0]
    clock = lambda: now[0]  # noqa: E731
    triton = TritonMetrics(clock)
    r = cluster.reconciler(clock=clock, planner=default_planner(2.0), scaler=packer_scaler(),
                           signals=TritonSignals(triton.url, clock=clock))
    yield cluster, r, triton, now
    triton.server.shutdown()


def serving_map(cluster) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, d in cluster.objects("apps/v1/deployments").items():
        for k in d["spec"]["template"]["metadata"]["labels"]:
            if k.startswith("model.packer.dev/"):
                out.setdefault(k.removeprefix("model.packer.dev/"), []).append(name)
    return out


def test_a_traffic_surge_adds_servers_with_reasons_and_quiet_cycles_write_nothing(scaled) -> None:
    cluster, r, triton, now = scaled
    cluster.converge(r)
    triton.set_serving(serving_map(cluster))
    before = set(cluster.objects("apps/v1/deployments"))
    triton.set_rate("asr", 100.0)
    for _ in range(3):  # baseline scrapes at the planned load: nothing to do
        now[0] += 15
        rep = r.cycle()
        assert rep.replanned == "" and rep.done == [] and rep.writes == 0
    triton.set_rate("asr", 6000.0)
    now[0] += 15
    rep = r.cycle()
    # The policy's choice of action is its own business; that it acts on asr, here, is ours.
    assert rep.replanned.startswith("scaling: ") and "asr" in rep.replanned
    added = set(cluster.objects("apps/v1/deployments")) - before
    assert added and all(cluster.objects("apps/v1/deployments")[n]["spec"]["template"]["metadata"]["labels"]
                         .get("model.packer.dev/asr") for n in added)
    events = [e for e in cluster.objects("v1/events").values() if e["reason"] == "Replanned"]
    assert any("asr" in e["message"] and e["message"].startswith(f"plan {rep.plan.id}: scaling: ") for e in events)
    summary = json.loads(cluster.objects("v1/configmaps")["packer-status"]["data"]["summary.json"])
    assert summary["policy_state"]["models"]["asr"]["samples"]
    # Once the policy has settled on capacity for the new load, quiet cycles decide nothing and
    # write nothing, although its samples move (they are checkpointed every policy_checkpoint_s).
    quiet = 0
    for _ in range(16):
        cluster.ready()
        triton.set_serving(serving_map(cluster))
        now[0] += 15
        rep = r.cycle()
        quiet = quiet + 1 if not rep.done and not rep.replanned else 0
        if quiet == 2:
            break
        assert rep.writes == 0 or rep.done or rep.replanned, rep.lines()
    assert quiet == 2 and rep.writes == 0
    assert len(cluster.objects("apps/v1/deployments")) < 12  # it did not run away


def test_the_ceiling_is_the_first_plans_cost_until_the_fleet_is_planned_again(scaled) -> None:
    """The scaling policy re-plans when the fleet costs more than the plan it started from
    (``ScalingState.ceiling``): the reconciler keeps that cost in its policy state (checkpointed
    to its status), and drops it when an edited fleet is planned, so that the new plan is the new
    ceiling."""
    from packer.scaling.replan import plan_cost

    cluster, r, triton, now = scaled
    cluster.converge(r)
    triton.set_serving(serving_map(cluster))
    triton.set_rate("asr", 100.0)
    first = r.cycle().plan
    for _ in range(2):
        now[0] += 15
        r.cycle()
    assert r.policy_state["ceiling"] == pytest.approx(plan_cost(first))
    now[0] += 300  # past policy_checkpoint_s: the status has it too
    r.cycle()
    summary = json.loads(cluster.objects("v1/configmaps")["packer-status"]["data"]["summary.json"])
    assert summary["policy_state"]["ceiling"] == pytest.approx(plan_cost(first))
    cluster.set_fleet(2.0)
    now[0] += 15
    rep = r.cycle()
    assert rep.replanned == "fleet changed" and r.policy_state.get("ceiling") is None
    triton.set_serving(serving_map(cluster))
    now[0] += 15
    r.cycle()
    assert r.policy_state["ceiling"] == pytest.approx(plan_cost(rep.plan)) != pytest.approx(plan_cost(first))


def test_policy_state_round_trips_through_json() -> None:
    from packer.scaling import ModelState, ScalingState

    st = ScalingState(models={"asr": ModelState(samples=((1.0, 2.0),), wants=((1.0, 3.0),), panic_until=5.0)},
                      since=1.0, starting={"l4-n1": 99.0}, ceiling=12.1)
    assert state_from_json(json.loads(json.dumps(state_to_json(st)))) == st


def test_a_replan_hands_the_policy_rates_and_headroom_to_the_planner(cluster) -> None:
    """A right-sizing re-plan packs for the demand the policy measured, at its headroom, as in the
    simulator; before, the reconciler re-planned the fleet file's peak at the planner's 15 %."""
    from packer.scaling import ScalingSettings, Targets

    now = [1_000_000.0]
    clock = lambda: now[0]  # noqa: E731
    triton = TritonMetrics(clock)
    real = default_planner(2.0)
    calls: list[tuple] = []

    def planner(fleet, current, headroom=None):
        calls.append((fleet, headroom))
        return real(fleet, current, headroom=headroom) if headroom is not None else real(fleet, current)

    settings = ScalingSettings(targets=Targets(replan_every_s=600.0, replan_headroom=0.05))
    r = cluster.reconciler(clock=clock, planner=planner, scaler=packer_scaler(settings),
                           signals=TritonSignals(triton.url, clock=clock))
    try:
        cluster.converge(r)
        assert [h for _, h in calls] == [None]  # the first plan: the fleet file at the planner's default
        calls.clear()
        triton.set_serving(serving_map(cluster))
        for model, rps in (("asr", 50.0), ("punct", 30.0), ("summ", 0.1)):
            triton.set_rate(model, rps)
        reasons = []
        for _ in range(60):
            now[0] += 15
            rep = r.cycle()
            cluster.ready()
            triton.set_serving(serving_map(cluster))
            reasons.append(rep.replanned)
            if calls:
                break
        assert calls, reasons
        fleet, headroom = calls[0]
        assert headroom == 0.05
        # asr steady at 50 rps for the stabilisation window: 50 + 2 sqrt(50 / 60) of Poisson noise
        # = 51.83 rps; the fleet file's peak was 200. The margin is the re-plan's headroom, which
        # the planner applies; the policy's target utilisation (1) adds none on top.
        assert fleet.model("asr").traffic.peak_rps == pytest.approx(50 + 2 * (50 / 60) ** 0.5, rel=1e-3)
        assert fleet.model("punct").traffic.peak_rps == pytest.approx(30 + 2 * (30 / 60) ** 0.5, rel=1e-3)
    finally:
        triton.server.shutdown()


def test_policy_state_keeps_the_last_replan_rates() -> None:
    from packer.scaling import ScalingState

    st = ScalingState(since=1.0, last_replan=600.0, replan_traffic={"asr": 60.97})
    assert state_from_json(json.loads(json.dumps(state_to_json(st)))).replan_traffic == {"asr": 60.97}
