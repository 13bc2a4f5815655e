#!/usr/bin/env bash
# The whole device check in one command, for a lent GPU machine (no package
# registry there): the native check (bench/gpu_check.sh: CUDA build, test_cuda
# against the CPU backend, every other CTest test, the GPU benchmark table),
# then the Python front end on the GPU (bench/gpu_python_check.sh), reusing the
# same CMake tree so CUDA is compiled once. Logs go to $OUT when set.
#
#   bash bench/gpu_session.sh
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export JOBS="${JOBS:-$(nproc)}"
build="${PYAGG_GPU_BUILD_DIR:-build/gpu}"
t0=$(date +%s)
rc=0
PYAGG_GPU_BUILD_DIR="$build" bash bench/gpu_check.sh || rc=$?
echo
echo "===== [$(( $(date +%s) - t0 ))s] Python front end on the GPU ====="
prc=0
PYAGG_BUILD_DIR="$build" PYTHONUNBUFFERED=1 timeout 240 bash bench/gpu_python_check.sh \
  > "${OUT:-/tmp}/gpu_python.log" 2>&1 || prc=$?
tail -n 40 "${OUT:-/tmp}/gpu_python.log"
echo "gpu_session: native check exit $rc, Python check exit $prc, total $(( $(date +%s) - t0 ))s"
(( rc == 0 && prc == 0 ))
