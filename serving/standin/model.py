"""Stand-in model: behaves like a latency profile, for demos, tests and benchmarks.

Each batch of ``b`` requests takes ``(base_ms + per_item_ms * b) * time_scale`` ms from the start
of ``execute`` (the profile already scaled to the slot by the writer; the stand-in's own work is
counted in it, not added), and returns its input. For sequence models it keeps
per-sequence state (running sum and chunk count of ``INPUT``, keyed by correlation id) and
returns it as ``SEQ_SUM``/``SEQ_LEN``, so a client can check that every chunk of its stream
reached the same state and no other stream's.

A stand-in that only slept would let the members of one slot run at the same time, which a GPU
slot's batches cannot. With a ``device_lock`` parameter (the writer sets one per slot for CPU
instances) a batch holds an exclusive ``flock`` on that file while it runs, and its run time
starts once it holds it: the stand-ins of a slot take turns on one emulated device whatever
serves them (one server's rate limiter, or two servers that would contend on a real GPU).

On a GPU instance (``KIND_GPU``, where PyTorch sees CUDA) the run time is real GPU work instead:
bf16 matrix products on the instance's device, as many as fill the profile's time when the stand-in
has the GPU to itself (timed at start-up), then a wait for them to finish. So a slot's members
contend for the GPU as real models do: what else runs on it (another server, another process)
stretches the batch, and the latencies measured are the device's, not a timer's. Without PyTorch
or CUDA the stand-in sleeps as on a CPU, and says so in the server's log.
"""

import fcntl
import json
import random
import sys
import time

import numpy as np
import triton_python_backend_utils as pb_utils


def _quiet_capsule_noise(unraisable, _default=sys.unraisablehook):
    """``from_dlpack`` leaves NumPy 2 a renamed capsule whose deleter complains on every response;
    the data is already copied, so drop that one message and keep every other."""
    if "PyCapsule_GetPointer called with incorrect name" not in str(unraisable.exc_value):
        _default(unraisable)


sys.unraisablehook = _quiet_capsule_noise


def _tensor(name, array):
    """An output tensor. ``from_dlpack`` first: the wheel's stub, built against NumPy 1, sizes a
    NumPy 2 array passed to ``Tensor()`` as 0 bytes (Triton then rejects the response)."""
    array = np.ascontiguousarray(array)
    try:
        return pb_utils.Tensor.from_dlpack(name, array)
    except (ValueError, TypeError, AttributeError):
        return pb_utils.Tensor(name, array)


def _log(level, message):
    """The server's log where the stub offers its logger, else standard error."""
    logger = getattr(pb_utils, "Logger", None)
    if logger is not None:
        getattr(logger, f"log_{level}")(message)
    else:
        print(message, file=sys.stderr, flush=True)


class _GpuWork:
    """Matrix products on one CUDA device, counted out to fill a given time."""

    SIZE = 4096  # 137 GFLOP a product: about 0.2 ms on an H100-class GPU, fine-grained enough

    def __init__(self, device_id):
        import torch

        self.torch = torch
        self.device = torch.device(f"cuda:{device_id}")
        torch.cuda.set_device(self.device)
        self.a = torch.randn(self.SIZE, self.SIZE, device=self.device, dtype=torch.bfloat16)
        self.b = torch.randn(self.SIZE, self.SIZE, device=self.device, dtype=torch.bfloat16)
        self.c = torch.empty_like(self.a)
        for _ in range(20):  # clocks up, kernels chosen
            torch.matmul(self.a, self.b, out=self.c)
        torch.cuda.synchronize(self.device)
        # The least of a few windows at random moments: a slot's instances start together, and one
        # timed while the others warmed up measured a product 2-3 times too slow (0.36-0.51 ms
        # against 0.18 on an H200), so its batches held the GPU a third of their time and slept.
        windows = []
        for _ in range(8):
            time.sleep(random.uniform(0.0, 0.05))
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(25):
                torch.matmul(self.a, self.b, out=self.c)
            end.record()
            torch.cuda.synchronize(self.device)
            windows.append(start.elapsed_time(end) / 25)
        self.product_ms = min(windows)

    def run(self, ms):
        """Products worth ``ms`` on an idle GPU, and the wait for them."""
        for _ in range(int(ms / self.product_ms)):
            self.torch.matmul(self.a, self.b, out=self.c)
        self.torch.cuda.synchronize(self.device)


def _gpu_work(args):
    """A :class:`_GpuWork` for a GPU instance, or None (a CPU instance, or no PyTorch or CUDA)."""
    if args.get("model_instance_kind") != "GPU":
        return None
    try:
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("CUDA is not available to PyTorch")
        return _GpuWork(int(args.get("model_instance_device_id", "0")))
    except Exception as e:  # noqa: BLE001 - any failure means: sleep, and say why
        _log("warn", f"stand-in {args.get('model_name')}: no GPU work ({e}); its batches sleep")
        return None


class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        p = {k: v["string_value"] for k, v in cfg.get("parameters", {}).items()}
        self.base_ms = float(p["base_ms"])
        self.per_item_ms = float(p["per_item_ms"])
        self.time_scale = float(p.get("time_scale", "1"))
        self.idle_s = float(p.get("sequence_idle_s", "30"))
        self.sequence = "sequence_batching" in cfg
        self.state = {}  # corrid -> [sum, count, last_seen]
        lock = p.get("device_lock")
        self.lock = open(lock, "a+") if lock else None
        self.gpu = _gpu_work(args)
        if self.gpu is not None:
            _log("info", f"stand-in {args.get('model_name')}: GPU work on {self.gpu.device}, "
                                     f"{self.gpu.product_ms:.3f} ms a product")

    def execute(self, requests):
        if self.lock is None:
            return self._run(requests)
        fcntl.flock(self.lock, fcntl.LOCK_EX)  # the slot's device: one batch at a time
        try:
            return self._run(requests)
        finally:
            fcntl.flock(self.lock, fcntl.LOCK_UN)

    def finalize(self):
        if self.lock is not None:
            self.lock.close()

    def _run(self, requests):
        # The batch takes the profile's time from the moment it starts, the stand-in's own work
        # (reading inputs, state, building responses) included: sleep only what is left of it.
        t0 = time.perf_counter()
        xs = [pb_utils.get_input_tensor_by_name(r, "INPUT").as_numpy() for r in requests]
        b = sum(int(x.shape[0]) for x in xs)
        until = t0 + (self.base_ms + self.per_item_ms * b) * self.time_scale / 1000.0
        now = time.monotonic()
        out = []
        for r, x in zip(requests, xs):
            tensors = [_tensor("OUTPUT", x.astype(np.float32))]
            if self.sequence:
                tensors += self._step(r, x, now)
            out.append(pb_utils.InferenceResponse(output_tensors=tensors))
        if self.sequence:
            # Triton does not tell the model when it drops an idle sequence; forget it ourselves.
            for k in [k for k, s in self.state.items() if now - s[2] > self.idle_s]:
                del self.state[k]
        if self.gpu is not None:
            self.gpu.run((until - time.perf_counter()) * 1000.0)
        left = until - time.perf_counter()
        if left > 0:
            time.sleep(left)
        return out

    def _step(self, request, x, now):
        def ctl(name):
            t = pb_utils.get_input_tensor_by_name(request, name)
            return t.as_numpy().reshape(-1) if t is not None else None

        start, end, corrid = ctl("START"), ctl("END"), ctl("CORRID")
        sums, lens = [], []
        for i in range(x.shape[0]):
            key = int(corrid[i]) if corrid is not None else 0
            if (start is not None and start[i]) or key not in self.state:
                self.state[key] = [0.0, 0, now]
            s = self.state[key]
            s[0] += float(np.sum(x[i]))
            s[1] += 1
            s[2] = now
            sums.append(s[0])
            lens.append(s[1])
            if end is not None and end[i]:
                del self.state[key]
        return [_tensor("SEQ_SUM", np.array(sums, dtype=np.float32).reshape(-1, 1)),
                _tensor("SEQ_LEN", np.array(lens, dtype=np.int32).reshape(-1, 1))]
