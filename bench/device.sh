#!/usr/bin/env bash
# The checks that need a GPU, as one short run on a machine the `device` tool lends (about 4 min):
#   1. NVML discovery on a real driver (`packer gpus --local`'s reading and pool entry), kept as JSON
#      so that tests can replay it;
#   2. a real Triton slot on the GPU: bench/truth.py with KIND_GPU instances whose stand-ins run
#      matrix products on the device, against the planner's p99 bounds and the simulator.
# Needs, in .whl/ (ignored, carried), for the machine's Python 3.12: ortools and immutabledict,
# tritonclient's py3-none-any wheel, python-rapidjson, a protobuf as new as tritonclient's
# generated code wants, and the server pieces of nvidia-pytriton (below).
set -uo pipefail
OUT=${OUT:-/tmp/packer-device}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
# The server pieces of the nvidia-pytriton wheel, trimmed to fit the 64 MiB a call carries (no
# Python 3.13 library, one backend stub): tar -C WHEEL_DIR -cJf .whl/pytriton-trim.tar.xz pytriton
# nvidia_pytriton.libs, with pytriton/ holding an empty __init__.py and tritonserver/ alone.
for t in .whl/*.tar.xz; do [ -e "$t" ] && tar -C /tmp/site -xJf "$t"; done
export PYTHONPATH="/tmp/site:$PWD:$(python3 -c 'import site; print(site.getsitepackages()[0])')"
export PYTHONUNBUFFERED=1
nvidia-smi -L
nvidia-smi --query-gpu=name,memory.total,mig.mode.current,driver_version --format=csv
python3 - > "$OUT/nvml.json" <<'PY'
import dataclasses, json
from packer_cli.discover import read_nvml, to_pool
gpus = read_nvml()
print(json.dumps({"nvml": [dataclasses.asdict(g) for g in gpus], "pool": to_pool(gpus)}, indent=1))
PY
cat "$OUT/nvml.json"
timeout "${TRUTH_S:-330}" python3 bench/truth.py --device gpu --slots "${SLOTS:-3,5}" --loads "${LOADS:-0.5,0.9}" \
    --runs "${RUNS:-1}" --seconds "${SECONDS_PER_RUN:-15}" --json "$OUT/truth-gpu.json" --server-log "$OUT/server" 2>&1 \
    | tee "$OUT/truth-gpu.txt"
grep -h "stand-in" "$OUT"/server-*.log | head -20
