"""The writer, without a server: configs follow the plan's numbers and survive text_format."""

from __future__ import annotations

import json
import math
import os
from dataclasses import replace
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from packer.errors import UserError
from packer.fleet import Artifact
from packer.slot import SlotType, latency_scale
from packer.slot import servable
from serving.config import from_text, model_config, timing, to_text
from serving.repository import read_repository, repositories, write
from serving.settings import TritonSettings
from packer.handplan import placement
from triton_helpers import GOLDEN, fleet, meetings_plan, planned

GOLDEN_FLEET = GOLDEN / "multilingual-meetings"


@pytest.fixture(scope="module")
def plan():
    return meetings_plan()


@pytest.fixture(scope="module")
def repos(plan):
    return repositories(plan, TritonSettings())


def configs(repos) -> dict[str, mc.ModelConfig]:
    return {m.name: m.config for r in repos for m in r.models}


def test_streaming_and_batch_models_never_share_a_repository(plan, repos):
    kinds = {plan.fleet.model(m.name).kind for r in repos for m in r.models if r.kind == "batch"}
    assert kinds == {"batch"}
    for r in repos:
        assert {plan.fleet.model(n).kind for n in r.names} == {r.kind}
    assert [r.key for r in repos] == ["a100-80-n0-g0-whole/streaming", "a100-80-n0-g1-3g.40gb@0/batch"]


def test_sequence_model_uses_oldest_with_control_inputs_and_duty_cycle_delay(plan, repos):
    cfg = configs(repos)["asr-es"]
    sb = cfg.sequence_batching
    assert sb.WhichOneof("strategy_choice") == "oldest"
    assert not cfg.HasField("dynamic_batching")
    assert {c.name for c in sb.control_input} == {"START", "END", "READY", "CORRID"}
    assert sb.max_sequence_idle_microseconds == 30_000_000
    p = plan.placements[0]
    member = next(m for m in p.models if m.name == "asr-es")
    assert not sb.oldest.preferred_batch_size  # a batch takes what is queued: grows under a burst
    assert cfg.parameters["planned_batch"].string_value == str(member.batch_size)
    # The cut comes one duty cycle after the oldest chunk: one batch per cycle (packer.batching).
    assert sb.oldest.max_queue_delay_microseconds == round(p.duty_cycle_ms * 1000)
    # 112 Spanish streams at the mean 385 rps, 3.44 chunks a second each: at 350 rps this replica
    # carries 101.8 of them on average at peak (56, half of 112, left 46 in Triton's backlog), and
    # slots up to their count at one in a million: 101.8 + 4.9 sqrt(101.8) + 4.
    assert sb.oldest.max_candidate_sequences == 156


def test_dynamic_batchers_have_no_queue_policy_so_they_prefetch(plan, repos):
    """Any queue policy (timeout, queue bound, priority levels) stops Triton's batcher prefetching,
    and then it can sleep through its own instance freeing (docs/serving.md)."""
    for cfg in configs(repos).values():
        if cfg.HasField("dynamic_batching"):
            db = cfg.dynamic_batching
            assert db.default_queue_policy == mc.ModelQueuePolicy()
            assert db.priority_levels == 0 and not db.priority_queue_policy


def test_dynamic_queue_rejects_what_can_no_longer_meet_the_slo_when_asked(plan, tmp_path):
    cfg = configs(repositories(plan, replace(TritonSettings(), shed=True)))["punct-es"]
    p = plan.placements[0]
    model = plan.fleet.model("punct-es")
    member = next(m for m in p.models if m.name == "punct-es")
    base, per = latency_scale(model, SlotType(plan.fleet.pool(p.pool), p.slot))
    run = base + per * member.batch_size
    q = cfg.dynamic_batching.default_queue_policy
    assert q.timeout_action == mc.ModelQueuePolicy.REJECT
    assert q.default_timeout_microseconds == round((model.slo_ms - run) * 1000)
    assert not q.allow_timeout_override
    # The most requests it could finish in the time left, in k batches of up to max_batch each.
    best = max(k * min(model.max_batch, math.floor(((model.slo_ms - run) / k - base) / per)) for k in range(1, 40))
    assert q.max_queue_size == best
    assert servable(model.slo_ms - run, base, per, model.max_batch) == best
    assert cfg.dynamic_batching.max_queue_delay_microseconds == round(p.duty_cycle_ms * 1000)
    assert not cfg.dynamic_batching.preferred_batch_size
    assert cfg.dynamic_batching.priority_levels == 0


def test_batch_models_wait_one_cycle_name_no_preferred_size_and_take_equal_turns(plan, repos):
    p = plan.placements[1]
    for member in p.models:
        cfg = configs(repos)[member.name]
        db = cfg.dynamic_batching
        # A preferred size would cut batches early and pay the per-batch cost more often than planned.
        assert not db.preferred_batch_size
        assert db.max_queue_delay_microseconds == round(p.duty_cycle_ms * 1000)
        assert db.priority_levels == 0
        # The slot's members take equal turns on its rate-limiter unit.
        assert cfg.instance_group[0].rate_limiter.priority == 1


def test_instances_are_explicit_gpu_groups_rate_limited_when_the_slot_is_shared(plan, repos):
    for r in repos:
        for m in r.models:
            (g,) = m.config.instance_group
            assert g.kind == mc.ModelInstanceGroup.KIND_GPU
            assert list(g.gpus) == [0]  # the slot as its server sees it
            assert g.count == 1
            assert [(x.name, x.count) for x in g.rate_limiter.resources] == [("slot", 1)]
    node = repositories(plan, TritonSettings(gpu_index="node"))
    assert [list(m.config.instance_group[0].gpus) for r in node for m in r.models] == [[0], [0], [1], [1], [1]]


def test_a_lone_model_needs_no_rate_limiter(plan):
    p = plan.placements[0]
    alone = replace(p, models=tuple(m for m in p.models if m.name == "punct-es"))
    cfg = model_config(plan.fleet, alone, "punct-es", TritonSettings(), shared=False)
    assert not cfg.instance_group[0].HasField("rate_limiter")


def test_cpu_device_changes_only_the_instance_kind_and_locks_the_slot(plan):
    """On CPU only the instance kind changes, plus the stand-ins' ``device_lock``: one lock file
    per slot, so a slot's members take turns as on one GPU (serving/standin/model.py)."""
    settings = TritonSettings(device="cpu")
    gpu = configs(repositories(plan, TritonSettings()))
    cpu = configs(repositories(plan, settings))
    locks: dict[str, set[str]] = {}
    for name, c in cpu.items():
        assert c.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
        assert not c.instance_group[0].gpus
        assert "device_lock" not in gpu[name].parameters
        slot = c.parameters["slot"].string_value
        lock = c.parameters["device_lock"].string_value
        assert lock == settings.device_lock(slot)
        locks.setdefault(slot, set()).add(lock)
        g = mc.ModelConfig()
        g.CopyFrom(gpu[name])
        del g.instance_group[0].gpus[:]
        g.instance_group[0].kind = mc.ModelInstanceGroup.KIND_CPU
        g.parameters["device_lock"].string_value = lock
        assert g == c
    assert all(len(v) == 1 for v in locks.values())  # one lock per slot
    assert len({next(iter(v)) for v in locks.values()}) == len(locks) > 1  # and slots do not share one


def test_time_scale_compresses_stand_in_run_and_queue_times_alike(plan):
    slow = configs(repositories(plan, TritonSettings()))["punct-es"]
    fast = configs(repositories(plan, TritonSettings(time_scale=0.1)))["punct-es"]
    assert fast.parameters["time_scale"].string_value == "0.1"
    assert fast.dynamic_batching.max_queue_delay_microseconds == pytest.approx(
        slow.dynamic_batching.max_queue_delay_microseconds * 0.1, abs=1)
    assert fast.dynamic_batching.default_queue_policy.default_timeout_microseconds == pytest.approx(
        slow.dynamic_batching.default_queue_policy.default_timeout_microseconds * 0.1, abs=1)


def test_stand_in_sleeps_the_profile_scaled_to_its_slot(plan, repos):
    # diarize-es: 800 ms + 150 ms/item on a whole A100; on a 3g.40gb slice (3 of 7 compute slices) x 7/3.
    cfg = configs(repos)["diarize-es"]
    assert float(cfg.parameters["base_ms"].string_value) == pytest.approx(800 * 7 / 3, rel=1e-5)
    assert float(cfg.parameters["per_item_ms"].string_value) == pytest.approx(150 * 7 / 3, rel=1e-5)
    t = timing(plan.fleet, plan.placements[1], "diarize-es", TritonSettings())
    assert t.run_ms == pytest.approx((800 + 150 * t.batch) * 7 / 3)


def test_warmup_runs_one_planned_batch(repos):
    for r in repos:
        for m in r.models:
            (w,) = m.config.model_warmup
            assert w.batch_size == int(w.name.rsplit("-", 1)[1]) >= 1
            assert "INPUT" in w.inputs


def test_artifact_is_referenced_never_invented(plan, tmp_path):
    weights = tmp_path / "model.onnx"
    weights.write_bytes(b"onnx")
    models = tuple(replace(m, artifact=Artifact(str(weights), "onnxruntime")) if m.name == "punct-es" else
                   replace(m, artifact=Artifact("s3://bucket/asr/model.plan", "tensorrt", "tensorrt_plan"))
                   if m.name == "asr-es" else m for m in plan.fleet.models)
    p2 = replace(plan, fleet=replace(plan.fleet, models=models))
    rs = repositories(p2, TritonSettings(), groups=1)
    by = {m.name: m for m in rs[0].models}
    punct, asr = by["punct-es"], by["asr-es"]
    assert punct.config.backend == "onnxruntime" and not punct.files
    assert punct.config.default_model_filename == "model.onnx"
    assert asr.config.platform == "tensorrt_plan" and asr.config.parameters["artifact_uri"].string_value.startswith("s3://")
    assert not punct.config.input and not punct.config.model_warmup  # Triton auto-completes real models' tensors
    index = write(rs, tmp_path / "out")
    link = tmp_path / "out" / rs[0].slot / "streaming" / "punct-es" / "1" / "model.onnx"
    assert link.is_symlink() and link.read_bytes() == b"onnx"
    assert '"fetch"' in index.read_text() and "s3://bucket/asr/model.plan" in index.read_text()


def test_bad_settings_say_what_to_use():
    with pytest.raises(UserError, match="gpu"):
        TritonSettings(device="tpu")


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("config.pbtxt"))}


def test_golden_configs_and_round_trip(repos, tmp_path):
    """Every emitted config.pbtxt equals the golden file and parses back into the same message.

    Regenerate after an intended change: ``PACKER_UPDATE_GOLDEN=1 pytest tests/serving``.
    """
    write(repos, tmp_path)
    got = _tree(tmp_path)
    if os.environ.get("PACKER_UPDATE_GOLDEN"):
        for rel, text in got.items():
            (GOLDEN_FLEET / rel).parent.mkdir(parents=True, exist_ok=True)
            (GOLDEN_FLEET / rel).write_text(text)
    assert got == _tree(GOLDEN_FLEET)
    by_name = configs(repos)
    for rel, text in got.items():
        parsed = text_format.Parse(text, mc.ModelConfig())
        assert parsed == by_name[parsed.name], rel
    for r in repos:
        back = read_repository(tmp_path / r.slot / r.kind)
        assert [m.config for m in back.models] == sorted((m.config for m in r.models), key=lambda c: c.name)
        assert all(m.files["1/model.py"].startswith(b'"""Stand-in model') for m in back.models)


@pytest.mark.parametrize("name", ["llm-platform", "long-tail", "multilingual-meetings"])
def test_planner_output_round_trips(name):
    plan = planned(name)
    for r in repositories(plan, TritonSettings()):
        assert len({plan.fleet.model(n).kind for n in r.names}) == 1
        for m in r.models:
            assert from_text(to_text(m.config)) == m.config


def _with_artifacts(plan, tmp_path, uris: dict[str, str]) -> str:
    """``plan`` saved to a file with the given models' artifacts (as the fleet would name them)."""
    from packer.plan import save_plan

    models = tuple(replace(m, artifact=Artifact(uris[m.name], "onnxruntime")) if m.name in uris else m
                   for m in plan.fleet.models)
    path = tmp_path / "plan.json"
    save_plan(replace(plan, fleet=replace(plan.fleet, models=models)), path)
    return str(path)


@pytest.mark.parametrize("form", ["path", "file-uri"])
def test_a_missing_local_artifact_is_refused_before_anything_is_written(plan, tmp_path, capsys, form):
    """Sweep D6: a local artifact that does not exist was linked as a dangling ``1/<file>`` (rc 0),
    to fail only when Triton loads it. Now: one line naming the model, the path and both fixes."""
    from packer_cli.main import main

    gone = tmp_path / "does" / "not" / "exist.onnx"
    p = _with_artifacts(plan, tmp_path, {"punct-es": str(gone) if form == "path" else f"file://{gone}"})
    rc = main(["render", "triton", p, "-d", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert f"model punct-es: artifact {gone} does not exist" in err and "--allow-missing-artifacts" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_allow_missing_artifacts_links_them_with_one_warning_per_model(plan, tmp_path, capsys):
    """On a build machine the weights may live only where Triton runs: the opt-out writes the links
    and warns once per model (not once per repository linking it); remote URIs are never checked."""
    from packer_cli.main import main

    gone = tmp_path / "exist.onnx"
    p = _with_artifacts(plan, tmp_path, {"punct-es": str(gone), "asr-es": "s3://bucket/asr/model.onnx"})
    assert main(["render", "triton", p, "-d", str(tmp_path / "out"), "--allow-missing-artifacts"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"warning: model punct-es: artifact {gone} does not exist on this machine; linked anyway, "
                   "Triton loads it only where that path exists"]
    index = json.loads((tmp_path / "out" / "index.json").read_text())["repositories"]
    links = [tmp_path / "out" / r["path"] / "punct-es" / "1" / "exist.onnx" for r in index if "punct-es" in r["models"]]
    assert links and all(os.readlink(f) == str(gone) for f in links)


def test_existing_and_remote_artifacts_render_without_a_word(plan, tmp_path, capsys):
    from packer_cli.main import main

    weights = tmp_path / "model.onnx"
    weights.write_bytes(b"onnx")
    p = _with_artifacts(plan, tmp_path, {"punct-es": str(weights), "asr-es": "s3://bucket/asr/model.onnx"})
    assert main(["render", "triton", p, "-d", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().err == ""


def test_serve_local_refuses_a_missing_artifact_before_starting_triton(plan, tmp_path, capsys):
    """serve-local runs Triton on this machine: no opt-out, and no server started to find out."""
    from packer_cli.main import main

    gone = tmp_path / "exist.onnx"
    p = _with_artifacts(plan, tmp_path, {"asr-es": str(gone)})
    assert main(["serve-local", p, "--seconds", "0.1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: model asr-es: artifact {gone} does not exist on this machine, so Triton could not load "
                   "it. Fix: correct `artifact` in the fleet and plan again (serve-local runs Triton on this machine)")


def test_a_stream_silent_longer_than_the_idle_setting_keeps_its_state_between_chunks(tmp_path):
    """2,000 streams at 10 rps send a chunk every 200 s each: at the 30-s default Triton would drop
    every stream between two of its chunks and refuse the next (no START flag). Its idle time is
    twice its gap; a model whose streams speak more often keeps the setting."""
    from packer.fleetfile import parse_fleet
    from serving.config import model_config, sequence_idle_s

    f = parse_fleet({"name": "idle", "pools": [{"name": "l4", "gpu": "l4-24gb", "gpus_per_node": 4, "max_nodes": 5,
                                                "cost_per_gpu_hour": 0.8}],
                     "models": [{"name": "chat", "kind": "streaming", "memory_gb": 2, "slo_ms": 500, "max_batch": 16,
                                 "latency_ms": {"gpu": "l4-24gb", "base": 5, "per_item": 0.5},
                                 "traffic": {"rps": 10, "streams": 2000}}]}, "idle")
    settings = TritonSettings(device="cpu")
    assert sequence_idle_s(f.models[0], settings) == pytest.approx(400.0)
    p = placement(f, "l4", [("chat", 10.0)])
    cfg = model_config(f, p, "chat", settings, shared=False)
    assert cfg.sequence_batching.max_sequence_idle_microseconds == 400_000_000
    assert cfg.parameters["sequence_idle_s"].string_value == "400"
    assert sequence_idle_s(fleet("multilingual-meetings").model("asr-es"), settings) == 30.0


def test_a_replica_planned_alone_without_a_cycle_gets_no_queue_delay(plan):
    """Planned alone (``duty_cycle_ms: 0``), a replica's batch is cut as its instance frees, as the
    slot maths and the simulator take it: the config says 0, not the 1 us the writer used to floor
    every duration at."""
    p = plan.placements[0]
    alone = replace(p, models=tuple(m for m in p.models if m.name == "punct-es"), duty_cycle_ms=0.0)
    cfg = model_config(plan.fleet, alone, "punct-es", TritonSettings(), shared=False)
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 0
    shed = model_config(plan.fleet, alone, "punct-es", replace(TritonSettings(), shed=True), shared=False)
    assert shed.dynamic_batching.default_queue_policy.default_timeout_microseconds >= 1  # 0 would be "none"
