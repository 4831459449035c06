#!/usr/bin/env bash
# The GPU check, for an NVIDIA machine with no package index (about 8 minutes on one H100).
#
#   bash tools/device_kit.sh                  # first, where an index is reachable
#   bash tools/gpu_check.sh [--kit DIR] [--report FILE] [--rehearse]
#
# Uses the machine's own Python (JAX with its CUDA plugin, torch, transformers, ...) and
# installs the wheels of tools/device_kit.sh from --kit (default device_kit/) into a
# scratch folder with no network (pip --no-index --no-deps); ffjax itself runs from this
# checkout (PYTHONPATH). Then, each step under its own time limit:
#   1. the device: nvidia-smi, JAX's devices and versions;
#   2. the bf16 matmul peak JAX reaches here (tools/matmul_peak.py, 8192^3);
#   3. the execute-only GPU tests (`pytest -m gpu`);
#   4. the full-size FLUX.1-dev transformer (random weights, bf16, cuDNN attention,
#      remat full, 4096 image + 512 text tokens): forward, a 10-step rollout and
#      forward+backward, MFU against step 2's peak (tools/bench.py --no-torch);
#   5. the same forward and 10-step rollout against Diffusers' FluxTransformer2DModel in
#      the same process (--skip-backward: two 12B gradients do not fit 80 GB).
# Writes a markdown report (--report, default gpu_check_report.md; also into $OUT when
# that folder exists) with every step's output, its exit status and seconds. A failed
# step is recorded and the next one runs; the exit status is 1 if any step failed.
#
# --rehearse runs the same steps on a machine without a GPU (tiny sizes, CPU, the GPU
# tests only collected), so a scarce GPU run is not spent on setup bugs.
set -uo pipefail
cd "$(dirname "$0")/.."
KIT=device_kit
REPORT=gpu_check_report.md
REHEARSE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --kit) KIT=${2:?--kit needs a folder}; shift 2 ;;
    --report) REPORT=${2:?--report needs a file}; shift 2 ;;
    --rehearse) REHEARSE=1; shift ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$1' (--kit DIR, --report FILE, --rehearse)" >&2; exit 2 ;;
  esac
done
if ! ls "$KIT"/*.whl >/dev/null 2>&1; then
  echo "gpu_check.sh: no wheels in '$KIT': run tools/device_kit.sh where a package index is reachable" >&2
  exit 2
fi
PY=${GPU_CHECK_PYTHON:-python3}
SITE=$(mktemp -d /tmp/ffjax_site.XXXXXX)
if ! "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$KIT"/*.whl; then
  echo "gpu_check.sh: installing the kit from '$KIT' failed" >&2
  exit 2
fi
export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # JAX and torch share the GPU in steps 4-5
if [ "$REHEARSE" = 1 ]; then
  export JAX_PLATFORMS=cpu
  N=512; SIZE=(--size tiny --device cpu); TESTS=(--collect-only -q); LIMIT=(60 120 240 240)
else
  N=8192; SIZE=(--size dev --device gpu --attention cudnn --remat full); TESTS=(-q -x)
  LIMIT=(45 120 150 105)  # with the device step's 60 s: 8 minutes at most
fi

: > "$REPORT"
FAILED=0
START=$(date +%s)
log() { printf '%s\n' "$@" >> "$REPORT"; }
step() {  # step TITLE LIMIT_S COMMAND...: runs it, appends its output to the report
  local title=$1 limit=$2; shift 2
  local t0 rc out
  t0=$(date +%s)
  echo "== $title" >&2
  out=$(timeout --kill-after=10 "$limit" "$@" 2>&1); rc=$?
  printf '%s\n' "$out" | tail -40 >&2
  log "## $title" "" "\`$*\` (limit ${limit} s): exit $rc, $(( $(date +%s) - t0 )) s" "" '```' "$out" '```' ""
  [ "$rc" = 0 ] || FAILED=1
  STEP_OUT=$out
}

log "# ffjax GPU check, $(date -u '+%Y-%m-%d %H:%M UTC')" ""
log "checkout $(git rev-parse --short HEAD 2>/dev/null || echo '?'); kit: $(ls "$KIT" | tr '\n' ' ')"
[ "$REHEARSE" = 1 ] && log "" "REHEARSAL on a machine without a GPU: tiny sizes on CPU; numbers mean nothing." ""

step "device" 60 bash -c "nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 || echo 'no nvidia-smi'; $PY - <<'PY'
import jax, flax, optax, torch, diffusers
print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__,
      'torch', torch.__version__, 'diffusers', diffusers.__version__)
print('devices:', jax.devices())
import ffjax.models  # the checkout imports against this machine's packages
PY"
if [ "$REHEARSE" = 0 ] && ! printf '%s' "$STEP_OUT" | grep -q "CudaDevice\|cuda(id"; then
  log "**no GPU visible to JAX: stopping.**"
  echo "gpu_check.sh: no GPU visible to JAX (see $REPORT)" >&2
  exit 1
fi

step "bf16 matmul peak" "${LIMIT[0]}" "$PY" tools/matmul_peak.py --n "$N"
PEAK=$(printf '%s' "$STEP_OUT" | sed -n 's/^peak_tflops \([0-9.]*\)$/\1/p')
PEAK_ARG=()
[ -n "$PEAK" ] && PEAK_ARG=(--peak-tflops "$PEAK")

step "GPU tests (pytest -m gpu)" "${LIMIT[1]}" "$PY" -m pytest -p no:cacheprovider -m gpu "${TESTS[@]}"

BENCH=("$PY" tools/bench.py --family flux "${SIZE[@]}" --dtype bfloat16 --steps 10 --repeats 3)
step "FLUX.1-dev transformer, ffjax: forward, 10-step rollout, forward+backward" "${LIMIT[2]}" \
  "${BENCH[@]}" --no-torch "${PEAK_ARG[@]}"
step "FLUX.1-dev transformer vs Diffusers: forward, 10-step rollout" "${LIMIT[3]}" \
  "${BENCH[@]}" --skip-backward "${PEAK_ARG[@]}"

log "## summary" "" "measured bf16 matmul peak: ${PEAK:-not measured} TFLOP/s;" \
  "total $(( $(date +%s) - START )) s; $([ "$FAILED" = 0 ] && echo 'every step passed' || echo 'SOME STEPS FAILED')"
grep -h "MFU\|TFLOP/s =" "$REPORT" | sort -u >> "$REPORT" || true
if [ -n "${OUT:-}" ] && [ -d "$OUT" ]; then cp "$REPORT" "$OUT/"; fi
echo "report: $REPORT" >&2
exit "$FAILED"
