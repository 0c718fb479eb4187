#!/usr/bin/env bash
# Every GPU check and the GPU benchmark, in one call (device time is short):
#
#   bash bench/gpu_check.sh              # on a machine with a CUDA GPU
#   bash bench/gpu_check.sh --dry-run    # anywhere: what runs without a GPU
#
# On a GPU, in this order (the benchmark comes second so that its CSV is
# written even if the longer test runs after it are cut short):
#   1. tests/test_gpu.py: fast vs teaching kernels at real sizes, the cached
#      launch path and its stream, F.interpolate's CUDA nearest rule;
#   2. bench/gpu.py: CUDA-event timings -> bench/gpu_reference.csv (names the GPU);
#   3. the op tests on CUDA tensors (conftest's "cuda" backend is the GPU
#      there, with the fast kernels) and tests/test_fast_kernels.py;
#   4. the PTX check (needs no GPU; run here too so one log has everything).
# Exit status: 0 when every step passed.
set -u
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python

if [ "${1:-}" = "--dry-run" ]; then
    "$PYTHON" -m pytest -q tests/test_gpu.py -rs | tail -3
    exec "$PYTHON" bench/gpu.py --dry-run
fi

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
export UPSAMPLELIB_CUDA=gpu
status=0
step() { echo "== $*"; "$@" || { echo "!! failed: $*"; status=1; }; }
step "$PYTHON" -m pytest -q -x tests/test_gpu.py
step "$PYTHON" bench/gpu.py --csv bench/gpu_reference.csv
step "$PYTHON" -m pytest -q tests/test_fast_kernels.py tests/test_carafe.py tests/test_sapa.py \
    tests/test_fade.py tests/test_interpolate.py tests/test_custom_ops.py
step "$PYTHON" tools/compile_ptx.py
echo "== gpu_check: $([ $status = 0 ] && echo all passed || echo FAILURES above)"
exit $status
