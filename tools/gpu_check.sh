#!/usr/bin/env bash
# Runs the GPU-only tests and the benchmarks on an NVIDIA machine.
#   bash tools/gpu_check.sh            # from the repository root
# Installs the CUDA extra into .venv-gpu, checks that JAX sees a GPU, then runs the
# `gpu`-marked tests (which are skipped with a reason on machines without a GPU) and
# tools/bench.py. Record the numbers in docs/benchmarks.md with date and device.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-gpu
. .venv-gpu/bin/activate
pip install -q -e '.[dev,cuda]'
python - <<'PY'
import jax
gpus = [d for d in jax.devices() if d.platform == "gpu"]
if not gpus:
    raise SystemExit(f"no GPU visible to JAX (devices: {jax.devices()}); nothing to check")
print("GPU:", gpus[0].device_kind)
PY
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
python -m pytest -q -m gpu
if [ -f tools/bench.py ]; then
  python tools/bench.py --device gpu "$@"
fi
