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
"""

import fcntl
import json
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
