#!/usr/bin/env bash
# GPU check of the Python front end (pyagg.aggregate(..., device="cuda"), GPU
# arrays, Aggregator state on the GPU) against the CPU backend, on a machine
# with a GPU and no package registry (numpy, Cython, setuptools, pytest).
# Builds the package in place with CUDA, then runs tests/test_cuda_python.py
# with PYAGG_TEST_GPU=1 (a missing GPU fails instead of skipping).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-python3}"
"$PY" -c "import sys, numpy, Cython, setuptools, pytest; print(sys.version.split()[0], 'numpy', numpy.__version__, 'Cython', Cython.__version__)"
command -v nvcc >/dev/null || export PATH="/usr/local/cuda/bin:$PATH"
export PYAGG_CMAKE_ARGS="-DPYAGG_WITH_CUDA=ON -DPYAGG_BUILD_TF=OFF -DPYAGG_BUILD_BENCH=OFF -DPYAGG_BUILD_TESTS=OFF"
export PYAGG_BUILD_JOBS="${JOBS:-$(nproc)}" PYAGG_BUILD_DIR="${PYAGG_BUILD_DIR:-build/gpu-py}"
t0=$(date +%s)
"$PY" setup.py build_ext --inplace -q > "${OUT:-/tmp}/gpu_python_build.log" 2>&1 || { tail -40 "${OUT:-/tmp}/gpu_python_build.log"; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s"
"$PY" -c "import pyagg, json; print(json.dumps(pyagg.build_info()))"
PYAGG_TEST_GPU=1 "$PY" -m pytest -q -p no:cacheprovider -o addopts="" tests/test_cuda_python.py tests/test_cuda_unavailable.py
