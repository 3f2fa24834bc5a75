#!/usr/bin/env bash
# The GPU checks of one lent device session, as one script (device time is scarce):
# kernels built with CUDA, the CUDA kernel tests, every method on the GPU (tests/gpu/test_gpu.py),
# the kernel benchmark and the round-time benchmark on the GPU. Each step has its own time
# limit so a slow or failing one leaves time for the rest; logs go to $OUT (or ./gpu_out).
#
#   bash bench/gpu_check.sh [STEP ...]   steps: build kernels grouped kerrors methods kbench rbench
#   bash bench/gpu_check.sh --quick [--dry-run]   the 7-minute check of issue 28 (bench/gpu_quick.sh)
#   (METHODS_K=EXPR selects tests/gpu/test_gpu.py tests with pytest -k)
#
# Python packages the GPU image lacks (mpich, mpi4py built for it, pytest-mpi) are taken from
# ./.whl when present (pip download ... -d .whl, see docs/hpc.md), installed under build/pfx.
set -u
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--quick" ]; then
    shift
    exec bash bench/gpu_quick.sh "$@"
fi
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
STEPS=${*:-build kernels grouped kerrors methods kbench rbench}
PY=${PYTHON:-python3}
if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --ignore-installed \
        --prefix build/pfx .whl/*.whl
    site=$PWD/build/pfx/lib/$("$PY" -c 'import sys; print("python%d.%d" % sys.version_info[:2])')/site-packages
    export PATH=$PWD/build/pfx/bin:$PATH PYTHONPATH=$site LD_LIBRARY_PATH=$PWD/build/pfx/lib:${LD_LIBRARY_PATH:-}
    export FEDNAS_MPI_MPIRUN=$PWD/build/pfx/bin/mpirun
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
step() { echo; echo "== $(date +%T) $1"; }
{
    step env
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    "$PY" -c 'import torch, mpi4py, h5py, platform; from mpi4py import MPI
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      torch.cuda.get_device_name(), "| mpi4py", mpi4py.__version__, MPI.Get_library_version().splitlines()[0],
      "| cores", __import__("os").cpu_count())'
} 2>&1 | tee "$OUT/env.log"
for s in $STEPS; do
    case $s in
    build)
        step "kernels: build (JIT, CPU + CUDA for sm_${TORCH_CUDA_ARCH_LIST})"
        timeout 300 "$PY" -c 'import time; t = time.time()
from fednas_mpi import kernels
from fednas_mpi.kernels import loader
r = kernels.load(); print(r); print("cuda kernels:", loader.has_cuda_kernels(), "in %.0f s" % (time.time() - t))'
        ;;
    kernels)
        step "kernels: tests on the GPU"
        timeout 240 "$PY" -m pytest -q -p no:cacheprovider tests/kernels/test_kernels.py --timeout 200 \
            -k "not bad_arguments"
        ;;
    grouped)
        step "the grouped supernet forward against the reference on the GPU (issue 17)"
        timeout 180 "$PY" -m pytest -q -p no:cacheprovider tests/nas/test_grouped.py --timeout 150 \
            -k "gpu"
        ;;
    kerrors)
        # alone: a C++ exception from the op once crashed the process under torch 2.11
        step "kernels: errors raised from C++ reach Python"
        timeout 120 "$PY" -m pytest -q -p no:cacheprovider tests/kernels/test_kernels.py --timeout 100 \
            -k "bad_arguments"
        ;;
    methods)
        step "every method on the GPU (tests/gpu/test_gpu.py)"
        timeout 420 "$PY" -m pytest -q -p no:cacheprovider -s tests/gpu/test_gpu.py --timeout 200 \
            -k "${METHODS_K:-}" \
            | grep -vE "^round |^fednas-mpi |^devices: |^done: |^$"
        ;;
    kbench)
        step "kernel benchmark, cuda"
        timeout 150 "$PY" bench/kernels.py --device cuda --reps 40
        ;;
    rbench)
        step "round-time benchmark: quickstart on the GPU, 1 GPU shared by the workers"
        timeout 300 "$PY" bench/runtime.py --config configs/quickstart.yaml --rounds 4 \
            --ranks 2 3 5 9 --set runtime.device=cuda
        ;;
    esac 2>&1 | tee "$OUT/$s.log"
done
