#!/usr/bin/env bash
# GPU check: ONE prepared command for a machine with an NVIDIA GPU (sized for
# an H200 box with 16 cores, < 5 minutes in all). Native only: needs CUDA
# (nvcc), CMake >= 3.24, ninja and a C++17 compiler with OpenMP; no Python
# package, no TensorFlow, no MPI.
#
#   bench/gpu_check.sh            # from the repository root (or anywhere)
#
# Steps (each with its own time limit, each logged):
#   1. nvidia-smi -L and the toolchain versions;
#   2. configure + build in build/gpu: -G Ninja -DPYAGG_WITH_CUDA=ON
#      -DPYAGG_BUILD_TF=OFF -DCMAKE_BUILD_TYPE=Release, -j$(nproc);
#   3. test_cuda with PYAGG_TEST_GPU=1 (the CUDA backend against the CPU
#      backend: every rule, both dtypes; fails instead of skipping without a
#      GPU), then every other CTest test (CPU backend, API, transport);
#   4. gpu_bench: every rule at n=20,f=4,d=1e7 and n=100,f=20,d=1e6 (float32),
#      GB/s of input read and the ratio to the measured device copy bandwidth,
#      each result verified once against the CPU backend;
#   5. a summary (also printed when a step fails or times out).
# Logs go to $OUT (when set, e.g. by a remote runner) or build/gpu/logs.
# Exit status: 0 when the build, every test and every benchmark check passed.
#
# Environment knobs: JOBS (default: nproc), PYAGG_GPU_BUILD_DIR (build/gpu),
# GPU_CHECK_SKIP_BENCH=1, GPU_CHECK_BENCH_ARGS (extra gpu_bench arguments).
set -euo pipefail

t0=$(date +%s)
elapsed() { echo $(( $(date +%s) - t0 )); }
step() { printf '\n===== [%4ss] %s =====\n' "$(elapsed)" "$*"; }

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
build="${PYAGG_GPU_BUILD_DIR:-build/gpu}"
jobs="${JOBS:-$(nproc 2>/dev/null || echo 16)}"
logs="${OUT:-$build/logs}"
mkdir -p "$logs"

status_build="not run"; status_cuda_tests="not run"; status_cpu_tests="not run"; status_bench="not run"
t_build=0; t_tests=0; t_bench=0
rc=0
summarized=0

summary() {
  summarized=1
  step "summary"
  printf '%-20s %s\n' "device" "$( (nvidia-smi -L 2>/dev/null || echo '?') | head -n 1)"
  printf '%-20s %s (%ss)\n' "build" "$status_build" "$t_build"
  printf '%-20s %s\n' "CUDA tests" "$status_cuda_tests"
  printf '%-20s %s (%ss for both test steps)\n' "other tests (ctest)" "$status_cpu_tests" "$t_tests"
  printf '%-20s %s (%ss)\n' "GPU benchmark" "$status_bench" "$t_bench"
  if [[ -f "$logs/gpu_bench.log" ]] && grep -q '==== summary' "$logs/gpu_bench.log"; then
    echo
    sed -n '/==== summary/,$p' "$logs/gpu_bench.log"
  fi
  printf '\ntotal %ss; logs in %s; exit status %s\n' "$(elapsed)" "$logs" "$rc"
}
# An unexpected failure (set -e) still prints what was done.
on_exit() {
  local st=$?
  if [[ $summarized -eq 0 ]]; then
    rc=$(( st == 0 ? 1 : st ))
    echo "gpu_check: stopped unexpectedly (exit $st)" >&2
    summary
  fi
}
trap on_exit EXIT

# ---------------------------------------------------------------- 1. device ---
step "device and toolchain"
nvidia-smi -L 2>&1 || echo "gpu_check: nvidia-smi failed: no NVIDIA driver/GPU here" >&2
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.memory --format=csv 2>/dev/null ||
  true
command -v nvcc >/dev/null || export PATH="/usr/local/cuda/bin:$PATH"
for tool in nvcc cmake ninja timeout; do
  if ! command -v "$tool" >/dev/null; then
    echo "gpu_check: '$tool' not found on PATH ($PATH)" >&2
    status_build="FAILED ($tool missing)"
    rc=2
    summary
    exit 2
  fi
done
(nvcc --version | tail -n 2) || true
(cmake --version | head -n 1) || true
echo "ninja $(ninja --version 2>&1 || true)"
("${CXX:-c++}" --version 2>&1 | head -n 1) || true
echo "jobs: $jobs"

# ----------------------------------------------------------------- 2. build ---
step "configure + build ($build)"
tb=$(date +%s)
brc=0
{
  timeout 150 cmake -S . -B "$build" -G Ninja -DPYAGG_WITH_CUDA=ON -DPYAGG_BUILD_TF=OFF \
    -DCMAKE_BUILD_TYPE=Release -DPYAGG_BUILD_TESTS=ON -DPYAGG_BUILD_BENCH=ON &&
    timeout 240 cmake --build "$build" -j "$jobs"
} 2>&1 | tee "$logs/build.log" || brc=$?
t_build=$(( $(date +%s) - tb ))
if [[ $brc -ne 0 ]]; then
  if [[ $brc -eq 124 ]]; then
    status_build="TIMED OUT (see $logs/build.log)"
  else
    status_build="FAILED (exit $brc, see $logs/build.log)"
  fi
  rc=1
  summary
  exit 1
fi
status_build="ok"

# ----------------------------------------------------------------- 3. tests ---
tt=$(date +%s)
step "CUDA tests: test_cuda with PYAGG_TEST_GPU=1"
crc=0
PYAGG_TEST_GPU=1 timeout 180 "$build/tests/cpp/test_cuda" 2>&1 | tee "$logs/test_cuda.log" || crc=$?
if [[ $crc -eq 0 ]]; then
  status_cuda_tests="ok: $(grep -E '^compared ' "$logs/test_cuda.log" | tail -n 1 || true)"
elif [[ $crc -eq 124 ]]; then
  status_cuda_tests="TIMED OUT after 180 s (see $logs/test_cuda.log)"
  rc=1
else
  nfail=$(grep -cE '^\[ FAIL \]' "$logs/test_cuda.log" || true)
  first=$(grep -m1 -E '^FAIL|CHECK failed' "$logs/test_cuda.log" | cut -c1-160 || true)
  status_cuda_tests="FAILED (exit $crc; $nfail failed case(s); first: ${first:-?}; see $logs/test_cuda.log)"
  rc=1
fi

step "other CTest tests (CPU backend, API, transport)"
trc=0
(cd "$build" && PYAGG_TEST_GPU=1 timeout 240 ctest --output-on-failure -E '^test_cuda$' -j 4 --timeout 200) 2>&1 |
  tee "$logs/ctest.log" || trc=$?
t_tests=$(( $(date +%s) - tt ))
ctest_line="$(grep -E 'tests passed|tests failed' "$logs/ctest.log" | tail -n 1 || true)"
if [[ $trc -eq 0 ]]; then
  status_cpu_tests="ok: $ctest_line"
else
  status_cpu_tests="FAILED (exit $trc): $ctest_line"
  rc=1
fi

# ------------------------------------------------------------- 4. benchmark ---
if [[ "${GPU_CHECK_SKIP_BENCH:-0}" != "1" ]]; then
  step "GPU benchmark"
  tbb=$(date +%s)
  # CPU verification stops being started once the whole check passes ~240 s.
  budget=$(( 240 - $(elapsed) ))
  (( budget < 20 )) && budget=20
  grc=0
  # shellcheck disable=SC2086
  timeout 200 "$build/bench/gpu_bench" --verify-budget "$budget" ${GPU_CHECK_BENCH_ARGS:-} 2>&1 |
    tee "$logs/gpu_bench.log" || grc=$?
  t_bench=$(( $(date +%s) - tbb ))
  if [[ $grc -eq 0 ]]; then
    status_bench="ok"
  elif [[ $grc -eq 124 ]]; then
    status_bench="TIMED OUT after 200 s (partial log: $logs/gpu_bench.log)"
    rc=1
  else
    status_bench="FAILED (exit $grc, see $logs/gpu_bench.log)"
    rc=1
  fi
fi

summary
exit $rc
