#!/usr/bin/env bash
# Fuzzes the LossyMPI receiver's datagram path (tests/fuzz/fuzz_receiver.cpp,
# libFuzzer + ASan + UBSan, clang) for a given time and fails on any crash,
# sanitizer report or oracle violation.
#
#   scripts/fuzz.sh [seconds] [extra libFuzzer args...]    (default 60 s)
#
# Installs clang when missing (apt-get, as root), builds build/fuzz (engine
# instrumented for coverage, OpenMP/CUDA/TF/benchmarks/tests off), writes the
# seed corpus with the project's own sender into build/fuzz/seeds, and runs
# the fuzzer on build/fuzz/corpus (kept between runs: it grows) + the seeds.
# Crashing inputs land in build/fuzz/artifacts/; reproduce one with
#   build/fuzz/tests/fuzz/fuzz_receiver build/fuzz/artifacts/crash-...
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"

secs="${1:-60}"
[ $# -gt 0 ] && shift
case "$secs" in '' | *[!0-9]*) echo "usage: $0 [seconds] [libFuzzer args...]" >&2; exit 2 ;; esac
build="${PYAGG_FUZZ_BUILD_DIR:-build/fuzz}"
jobs="${PYAGG_JOBS:-2}"

if ! command -v clang++ >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[fuzz] apt-get install clang"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang >/dev/null
  else
    echo "[fuzz] clang++ (with libFuzzer) is required: apt-get install clang" >&2
    exit 1
  fi
fi

mkdir -p "$build"
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O2 -g" -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O2 -g" \
  -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_C_COMPILER=clang \
  -DPYAGG_BUILD_FUZZ=ON -DPYAGG_WITH_SODIUM=ON -DPYAGG_WITH_OPENMP=OFF \
  -DPYAGG_WITH_CUDA=OFF -DPYAGG_BUILD_TF=OFF -DPYAGG_BUILD_BENCH=OFF -DPYAGG_BUILD_TESTS=OFF \
  -DPYAGG_NATIVE_ARCH=OFF >"$build.configure.log" 2>&1 ||
  { cat "$build.configure.log" >&2; echo "[fuzz] configure failed" >&2; exit 1; }
cmake --build "$build" -j "$jobs" --target fuzz_receiver
bin="$build/tests/fuzz/fuzz_receiver"

rm -rf "$build/seeds"
mkdir -p "$build/seeds" "$build/corpus" "$build/artifacts"
PYAGG_FUZZ_WRITE_CORPUS="$build/seeds" "$bin"

export ASAN_OPTIONS="halt_on_error=1:abort_on_error=0:detect_leaks=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
log="$build/fuzz.log"
echo "[fuzz] $bin for ${secs}s (log: $log)"
set +e
# max_len: the largest seeds (2 steps x 3 workers x 5 chunks + END markers +
# REGISTERs) are about 4.9 KB; 5120 bytes hold 30-40 datagrams of these small
# configurations.
"$bin" -max_total_time="$secs" -max_len=5120 -timeout=10 -print_final_stats=1 \
  -artifact_prefix="$build/artifacts/" "$@" "$build/corpus" "$build/seeds" >"$log" 2>&1
rc=$?
set -e
grep -E "^#[0-9]+ +(INITED|DONE)|^stat::|ERROR|ORACLE|SUMMARY|^==[0-9]+==|Test unit written" "$log" | tail -30
execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
cov=$(grep -Eo "cov: [0-9]+ ft: [0-9]+" "$log" | tail -1)
echo "[fuzz] executions=${execs:-?} exec/s=${rate:-?} ${cov:-} corpus=$(ls "$build/corpus" | wc -l) rc=$rc"
if [ "$rc" -ne 0 ]; then
  tail -60 "$log" >&2
  if [ "$rc" -eq 72 ]; then
    echo "[fuzz] interrupted (rc=72)" >&2
  else
    echo "[fuzz] FAILED (rc=$rc): crashing input(s) in $build/artifacts/:" >&2
    ls "$build/artifacts/" >&2
  fi
  exit 1
fi
