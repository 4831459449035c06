#!/usr/bin/env bash
# Downloads, where a package index is reachable, the wheels that tools/gpu_check.sh
# installs on an offline NVIDIA machine: what ffjax and its GPU check need that a
# typical CUDA image lacks. The image this was written for (JAX 0.11 with its CUDA 13
# plugin, flax, optax, orbax-checkpoint, torch, transformers, tokenizers, safetensors,
# peft, tqdm, absl-py, pyyaml, pillow, pytest, pytest-xdist; Python 3.12) lacks
# diffusers, ml-collections and tensorboardX, and diffusers' importlib-metadata (and its
# lazy-importer).
# tensorflow-datasets is left out: ffjax imports it only for `tfds:` prompt sets.
#
#   bash tools/device_kit.sh [KIT_DIR]      # default: device_kit/ (git-ignored)
#   KIT_PYTHON=3.12 KIT_EXTRA="pkg==1.0" bash tools/device_kit.sh   # other target / more
#
# Pure-Python wheels only (py3-none-any), so the same folder installs on any CPU
# architecture and Python >= 3.11; the kit is checked to stay under 60 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
KIT=${1:-device_kit}
PY=${KIT_PYTHON:-3.12}
# Pinned to the versions the test suite runs with here (pyproject's dev extras).
PACKAGES=(diffusers==0.42.1 ml-collections==1.1.0 tensorboardX==2.6.5 importlib-metadata==10.2.0
  lazy-importer==0.1.0)
# shellcheck disable=SC2206
PACKAGES+=(${KIT_EXTRA:-})
mkdir -p "$KIT"
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PY" \
  --implementation py --abi none --platform any -d "$KIT" "${PACKAGES[@]}"
size_kb=$(du -sk "$KIT" | cut -f1)
ls -1 "$KIT"
echo "device kit: $(ls "$KIT" | wc -l) wheels, $((size_kb / 1024)) MB in $KIT"
if [ "$size_kb" -gt $((60 * 1024)) ]; then
  echo "device kit is over 60 MB: it must travel with the working tree" >&2
  exit 1
fi
