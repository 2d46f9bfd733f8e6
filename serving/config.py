"""One Triton ``ModelConfig`` per model of a packed group, derived from the plan's numbers.

Pure: plan in, protobuf message out, no files. The batching (queue delay, preferred sizes, queue
budget and bound, sequence candidates) is ``packer.batching``'s, the one the simulator serves, so
the server batches the way the slot maths (``packer/slot.py``) assumed:

* every member's queue delay is the slot's duty cycle ``d`` and no member names a preferred
  batch size: a member runs at most one batch per cycle, holding what queued meanwhile,
* all members of a slot share one ``slot`` rate-limiter unit with equal priority, so the slot
  runs one batch at a time and the members take turns (``docs/serving.md`` says why this holds on
  a GPU too),
* a request that has queued ``slo - run`` is rejected at once instead of answered late, and the
  queue never holds more than one instance could finish within that budget.

Worked numbers: ``punct-en`` (base 2 ms, per_item 0.05 ms on a whole A100, SLO 100 ms) planned
at ``d = 20 ms`` with a provisioned batch of 9: run 2.45 ms, budget 97.55 ms, queue delay 20 ms,
no preferred batch.
"""

from __future__ import annotations

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from packer.fleet import Fleet, Model
from packer.plan import Placement
from packer.batching import Batching, batching
from packer.slot import SlotType
from serving.settings import TritonSettings

# The stand-in's tensors. A real artifact brings its own (Triton auto-completes them).
INPUT, OUTPUT, SEQ_SUM, SEQ_LEN = "INPUT", "OUTPUT", "SEQ_SUM", "SEQ_LEN"
# Sequence control inputs every sequence model (stand-in or artifact) must accept.
START, END, READY, CORRID = "START", "END", "READY", "CORRID"
SLOT_RESOURCE = "slot"


def timing(fleet: Fleet, placement: Placement, name: str, settings: TritonSettings) -> Batching:
    """The batching of ``name`` in ``placement``: ``packer.batching`` at the plan's numbers."""
    model = fleet.model(name)
    members = [m for m in placement.models if m.name == name]
    if not members:
        raise KeyError(f"{name} is not in slot {placement.id}")
    return batching(model, SlotType(fleet.pool(placement.pool), placement.slot), batch=members[0].batch_size,
                    duty_cycle_ms=placement.duty_cycle_ms, replicas=len(members),
                    rate_rps=sum(m.rate_rps for m in members), min_delay_ms=settings.min_queue_delay_ms)


def _us(ms: float) -> int:
    """A timeout or idle time in microseconds, at least 1: Triton reads 0 there as "none" or
    "the default", not as zero."""
    return max(1, round(ms * 1000))


def _delay_us(ms: float) -> int:
    """A batcher's queue delay in microseconds. 0 stays 0: a replica planned alone without a
    cycle (``duty_cycle_ms: 0``) cuts its batch as its instance frees, as the slot maths and the
    simulator take it (``docs/slot-maths.md``, "Alone on a slot"); ``_us`` wrote 1 there."""
    return max(0, round(ms * 1000))


def _tensor(name: str, dtype: int, *, input: bool) -> mc.ModelInput | mc.ModelOutput:
    t = mc.ModelInput() if input else mc.ModelOutput()
    t.name, t.data_type = name, dtype
    t.dims.append(1)
    return t


def _sequence(cfg: mc.ModelConfig, t: Batching, model: Model, settings: TritonSettings, scale: float) -> None:
    """Sequence batcher, ``oldest`` strategy: requests of one stream run in order on one instance,
    and a batch takes at most one chunk from each of the oldest ``streams`` sequences.

    Triton's oldest strategy has no queue policy; its queue is bounded by the candidate sequences
    (one chunk each in flight), and further streams wait in Triton's backlog until one ends.
    """
    sb = cfg.sequence_batching
    sb.max_sequence_idle_microseconds = _us(sequence_idle_s(model, settings) * 1000)
    for name, kind in ((START, mc.ModelSequenceBatching.Control.CONTROL_SEQUENCE_START),
                       (END, mc.ModelSequenceBatching.Control.CONTROL_SEQUENCE_END),
                       (READY, mc.ModelSequenceBatching.Control.CONTROL_SEQUENCE_READY)):
        ci = sb.control_input.add(name=name)
        ci.control.add(kind=kind, int32_false_true=[0, 1])
    ci = sb.control_input.add(name=CORRID)
    ci.control.add(kind=mc.ModelSequenceBatching.Control.CONTROL_SEQUENCE_CORRID, data_type=mc.TYPE_UINT64)
    sb.oldest.max_candidate_sequences = t.candidates or t.batch
    sb.oldest.preferred_batch_size.extend(t.preferred)
    sb.oldest.max_queue_delay_microseconds = _delay_us(t.queue_delay_ms * scale)


def _dynamic(cfg: mc.ModelConfig, t: Batching, model: Model, settings: TritonSettings, scale: float) -> None:
    """Dynamic batcher with the default queue policy: no queue timeout, no queue bound, no priority
    levels.

    Those three are what decides whether Triton's batcher may *prefetch* (``PriorityQueue``'s
    ``support_prefetching_``): with any of them, an arrival wakes the batcher only when an instance
    thread is idle and waiting, so a request that arrives while the model's one instance executes
    sleeps past the instance freeing until the next arrival or the batcher's 500 ms wait (measured:
    0.2-0.5 of such batches, tails of 400-540 ms; docs/serving.md). Without them the batcher cuts
    a batch once its oldest request has waited the queue delay, whatever the instance is doing,
    and hands it to the rate limiter, which is the slot maths' cut-then-wait-for-the-round."""
    db = cfg.dynamic_batching
    db.preferred_batch_size.extend(t.preferred)
    db.max_queue_delay_microseconds = _delay_us(t.queue_delay_ms * scale)
    if settings.shed:  # TritonSettings.shed: refuse what can no longer finish in time
        q = db.default_queue_policy
        q.timeout_action = mc.ModelQueuePolicy.REJECT
        q.default_timeout_microseconds = _us(t.budget_ms * scale)
        q.allow_timeout_override = False
        q.max_queue_size = t.queue_bound


def sequence_idle_s(model: Model, settings: TritonSettings) -> float:
    """How long the server keeps a silent stream of ``model``: ``settings.sequence_idle_s``, or twice
    the gap between a stream's chunks (``streams / rps``) where that is longer, so that Triton never
    drops a live stream between two of its chunks and refuses the next (no START flag)."""
    per = model.traffic.per_stream_rps
    return settings.sequence_idle_s if per is None else max(settings.sequence_idle_s, 2.0 / per)


def model_config(fleet: Fleet, placement: Placement, name: str, settings: TritonSettings,
                 *, shared: bool) -> mc.ModelConfig:
    """The config of model ``name`` in slot ``placement``.

    ``shared``: other models are served by the same server in this slot (the slot's streaming and
    batch repositories load into one server), so executions take turns on the ``slot``
    rate-limiter resource (one unit, one batch at a time), as the slot maths assumes. The server
    must run with ``--rate-limit=execution_count``.
    """
    model = fleet.model(name)
    members = [m for m in placement.models if m.name == name]
    t = timing(fleet, placement, name, settings)
    cfg = mc.ModelConfig(name=name, max_batch_size=t.max_batch)
    art = model.artifact
    if art is None:
        cfg.backend = "python"
        cfg.input.append(_tensor(INPUT, mc.TYPE_FP32, input=True))
        cfg.output.append(_tensor(OUTPUT, mc.TYPE_FP32, input=False))
        if model.traffic.streams is not None:
            cfg.output.append(_tensor(SEQ_SUM, mc.TYPE_FP32, input=False))
            cfg.output.append(_tensor(SEQ_LEN, mc.TYPE_INT32, input=False))
        for k, v in (("base_ms", t.base_ms), ("per_item_ms", t.per_item_ms), ("time_scale", settings.time_scale),
                     ("sequence_idle_s", sequence_idle_s(model, settings))):
            cfg.parameters[k].string_value = f"{v:.6g}"
        if settings.device == "cpu":
            # The CPU stand-ins of one slot hold one lock while they run, as batches on one GPU
            # slot cannot run at the same time (serving/standin/model.py).
            cfg.parameters["device_lock"].string_value = settings.device_lock(placement.id)
    else:
        if art.platform:
            cfg.platform = art.platform
        else:
            cfg.backend = art.backend
        cfg.default_model_filename = art.uri.rstrip("/").rsplit("/", 1)[-1]
        cfg.parameters["artifact_uri"].string_value = art.uri
    cfg.parameters["slot"].string_value = placement.id
    cfg.parameters["planned_batch"].string_value = str(t.batch)
    cfg.parameters["compute_share"].string_value = f"{sum(m.share for m in members):.4g}"
    cfg.parameters["p99_bound_ms"].string_value = f"{max(m.p99_bound_ms for m in members):.1f}"

    # A stand-in runs on a compressed clock (``time_scale``); its queue times follow, so the
    # batching policy keeps the plan's proportions. A real artifact runs in real time.
    scale = settings.time_scale if art is None else 1.0
    if model.traffic.streams is not None:
        _sequence(cfg, t, model, settings, scale)
    else:
        _dynamic(cfg, t, model, settings, scale)

    g = cfg.instance_group.add(count=len(members))
    if settings.device == "cpu":
        g.kind = mc.ModelInstanceGroup.KIND_CPU
    else:
        g.kind = mc.ModelInstanceGroup.KIND_GPU
        node_gpus = list(placement.gpus or (placement.gpu,))
        # A multi-GPU replica is one instance that uses all its GPUs; its backend spreads the work.
        g.gpus.append(node_gpus[0] if settings.gpu_index == "node" else 0)
        if len(node_gpus) > 1:
            cfg.parameters["replica_gpus"].string_value = ",".join(
                str(i) for i in (node_gpus if settings.gpu_index == "node" else range(len(node_gpus))))
    if shared:
        # One unit per slot, equal priority: one batch at a time, members in turn (packer.batching).
        g.rate_limiter.resources.add(name=SLOT_RESOURCE, count=1)
        g.rate_limiter.priority = 1

    if art is None:
        # Warm every instance with one planned-size batch, so the first real batch does not pay
        # for lazy initialisation. Artifacts are warmed by their own inputs, which we do not know.
        w = cfg.model_warmup.add(name=f"planned-batch-{t.batch}", batch_size=t.batch, count=1)
        w.inputs[INPUT].data_type = mc.TYPE_FP32
        w.inputs[INPUT].dims.append(1)
        w.inputs[INPUT].zero_data = True
        if model.traffic.streams is not None:
            for c in (START, END, READY):
                w.inputs[c].data_type = mc.TYPE_INT32
                w.inputs[c].dims.append(1)
                w.inputs[c].zero_data = True
            w.inputs[CORRID].data_type = mc.TYPE_UINT64
            w.inputs[CORRID].dims.append(1)
            w.inputs[CORRID].zero_data = True
    return cfg


def to_text(cfg: mc.ModelConfig) -> str:
    """``config.pbtxt`` text, as Triton reads it."""
    return text_format.MessageToString(cfg)


def from_text(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())
