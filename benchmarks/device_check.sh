#!/usr/bin/env bash
# The GPU checks of this project as one short script, for a lent CUDA machine that has
# PyTorch but no network (the workplace's device tool): 3-5 minutes on an H200, each step
# capped, 10 minutes at most.
#
#   bash benchmarks/device_check.sh fetch   # here, with network: the missing packages as
#                                           # wheels in .whl/ (Python 3.12, x86-64 Linux)
#   bash benchmarks/device_check.sh         # there, from the repository root, with .whl carried
#   QUICK=1 bash benchmarks/device_check.sh # the same with only our defaults in the GPU table
#
# There it installs the wheels into /tmp/site, runs the package from src/ (no install), and
# writes every log to $OUT (or /tmp/device-check): the CUDA tests (tests/core/test_gpu.py),
# the end-to-end GPU throughput table and the training loop vs a bare loop on the GPU.
set -uo pipefail
cd "$(dirname "$0")/.."

# Versions this project resolves to (pip freeze of the CI environment), minus what the GPU
# image already has (torch, numpy, scipy, scikit-image, tifffile, safetensors, pyyaml, tqdm,
# imageio, toolz, cloudpickle, fsspec, pandas, pytest).
WHEELS="dask==2026.8.0 dask-image==2026.5.0 donfig==0.8.1.post1 google-crc32c==1.9.0
locket==1.0.0 numcodecs==0.16.6 partd==1.4.2 zarr==3.1.6"
PURE="pims==0.7 slicerator==1.1.0"  # published as source only: built into wheels here

if [ "${1:-}" = "fetch" ]; then
    mkdir -p .whl
    grep -qx "/.whl/" .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo "/.whl/" >> .git/info/exclude; }
    # shellcheck disable=SC2086
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl $WHEELS || exit 1
    # shellcheck disable=SC2086
    python3 -m pip wheel -q --no-deps -w .whl $PURE || exit 1
    ls .whl
    exit 0
fi

OUT=${OUT:-/tmp/device-check}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, napari_unet; print('torch', torch.__version__, torch.cuda.get_device_name())" \
    | tee -a "$OUT/gpu.txt" || exit 1

status=0
# The throughput table first: it is what only a GPU can tell, and each row prints as it ends.
timeout 330 python3 benchmarks/gpu_throughput.py --peak-tflops 790 ${QUICK:+--quick} 2>&1 \
    | tee "$OUT/gpu_throughput.txt" || status=1
timeout 100 python3 -m pytest -q -p no:cacheprovider tests/core/test_gpu.py 2>&1 \
    | tee "$OUT/test_gpu.txt" || status=1
timeout 150 python3 benchmarks/training_throughput.py --device cuda --steps 40 --rounds 2 \
    --diagnose 2>&1 \
    | tee "$OUT/training_cuda.txt" || status=1
exit $status
