"""The reconciler's HTTP endpoints over a real socket, and the CLI's dry-run-then-confirm flow
with the project's real planner."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest
import uvicorn
from click.testing import CliRunner

from k8s.cli import reconcile
from k8s.server import create_app


@pytest.fixture()
def http(cluster):
    """Start the app of a converged reconciler on a free loopback port."""
    now = [time.time()]
    r = cluster.reconciler(clock=lambda: now[0])
    cluster.converge(r)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = uvicorn.Server(uvicorn.Config(create_app(r), host="127.0.0.1", port=port, log_level="error"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    for _ in range(100):
        if server.started:
            break
        time.sleep(0.05)
    yield r, f"http://127.0.0.1:{port}", now
    server.should_exit = True
    t.join(5)


def test_probes_metrics_and_status_page(http) -> None:
    r, url, now = http
    assert httpx.get(f"{url}/healthz").status_code == 200
    assert httpx.get(f"{url}/readyz").status_code == 200
    text = httpx.get(f"{url}/metrics").text
    plan = r.last.plan
    assert f"packer_plan_cost_per_hour {plan.cost_per_hour}" in text
    assert "packer_plan_lower_bound_per_hour" in text and "packer_plan_gap" in text
    assert 'packer_actions_total{kind="Deployment",verb="create"} 4.0' in text
    assert "packer_cycle_seconds_count" in text and "packer_errors_total 0.0" in text
    assert "packer_cycle_writes 0.0" in text  # the converged cycle wrote nothing
    page = httpx.get(url).text
    assert "<svg" in page and plan.id in page
    assert "create Deployment/pk-l4-n0-g0-whole: planned: punct b=8" in page
    st = httpx.get(f"{url}/status.json").json()
    assert st["leader"] and st["plan"]["id"] == plan.id
    # a loop that stops cycling fails its liveness probe
    now[0] += 3 * r.s.interval_s + r.s.request_timeout_s * r.s.max_attempts + 1
    assert httpx.get(f"{url}/healthz").status_code == 503


def test_cli_applies_only_what_a_dry_run_showed(cluster) -> None:
    run = CliRunner()
    args = ["--server", cluster.emu.url, "--planner-time-limit", "2"]
    res = run.invoke(reconcile, args)
    assert res.exit_code != 0 and "--dry-run" in str(res.exception)
    before = cluster.writes()
    res = run.invoke(reconcile, args + ["--dry-run"])
    assert res.exit_code == 0, res.output
    assert cluster.writes() == before
    assert "would create Deployment/pk-l4-n0-g0-whole" in res.output
    diff_id = res.output.strip().splitlines()[-1].split()[2]
    res = run.invoke(reconcile, args + ["--confirm", "000000000000"])
    assert res.exit_code != 0 and "dry-run again" in str(res.exception)
    assert cluster.writes() - before <= 2  # the lease only: taken, then given back
    res = run.invoke(reconcile, args + ["--confirm", diff_id])
    assert res.exit_code == 0, res.output
    assert "pk-l4-n0-g0-whole" in cluster.objects("apps/v1/deployments")
    res = run.invoke(reconcile, args + ["--dry-run"])
    assert "(0 action(s)" in res.output


def test_the_loop_cycles_until_stopped(cluster) -> None:
    r = cluster.reconciler(interval_s=0.2)
    stop = threading.Event()
    t = threading.Thread(target=r.run, args=(stop,), daemon=True)
    t.start()
    for _ in range(200):
        if r.cycles >= 3:
            break
        cluster.ready()
        time.sleep(0.05)
    stop.set()
    t.join(10)
    assert not t.is_alive() and r.cycles >= 3
    assert "pk-l4-n0-g0-whole" in cluster.objects("apps/v1/deployments")


def test_dry_run_prints_the_confirm_command_with_the_flags_given(cluster, tmp_path) -> None:
    """Issue 16 item 8: `apply with:` named only --confirm ID, and the user's --server, namespaces
    or planner time were lost; run as printed, the confirm applies the diff the dry run showed."""
    import json
    import shlex

    from packer_cli.main import main

    run = CliRunner()
    args = ["--server", cluster.emu.url, "--planner-time-limit", "2", "--namespace", "packer"]
    res = run.invoke(reconcile, args + ["--dry-run", "-o", str(tmp_path / "rep.json")])
    assert res.exit_code == 0, res.output
    last = res.output.strip().splitlines()[-1]
    cmd = last.split("apply with: ", 1)[1]
    diff_id = last.split()[2]
    assert cmd == f"packer reconcile --server {cluster.emu.url} --namespace packer --planner-time-limit 2 " \
                  f"--confirm {diff_id}"
    rep = json.loads((tmp_path / "rep.json").read_text())
    assert rep["diff_id"] == diff_id and rep["apply_with"] == cmd and rep["errors"] == []
    assert main(shlex.split(cmd)[1:]) == 0  # what was printed works as is
    assert "pk-l4-n0-g0-whole" in cluster.objects("apps/v1/deployments")


def test_unreachable_api_server_is_one_line_with_a_fix(capsys) -> None:
    from packer_cli.main import main

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    t0 = time.monotonic()
    assert main(["reconcile", "--server", f"http://127.0.0.1:{port}", "--dry-run"]) == 2
    assert time.monotonic() - t0 < 10
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1, err
    assert err.startswith(f"error: the Kubernetes API server at http://127.0.0.1:{port} cannot be reached "
                          "(connection refused). Fix: check --server")
    assert "MaxRetryError" not in err and "Traceback" not in err


def test_a_dry_run_that_fails_offers_no_command_to_confirm(cluster, tmp_path) -> None:
    """No fleet ConfigMap: the dry run fails (exit 2), and its JSON offered `apply_with ...
    --confirm ID` all the same, a diff that is nothing to confirm."""
    import json

    cluster.client.CoreV1Api(cluster.api).delete_namespaced_config_map("packer-fleet", "packer")
    from packer_cli.main import main

    assert main(["reconcile", "--server", cluster.emu.url, "--dry-run", "-o", str(tmp_path / "rep.json")]) == 2
    rep = json.loads((tmp_path / "rep.json").read_text())
    assert rep["errors"] and "apply_with" not in rep
