#!/usr/bin/env bash
# Sanitizer builds of the engine and its native tests, each in its own build
# directory, then CTest. Any sanitizer report fails the run.
#
#   scripts/sanitize.sh asan   build/asan: ASan + UBSan (-fno-sanitize-recover=undefined),
#                              every C++ test (ctest)
#   scripts/sanitize.sh tsan   build/tsan: TSan, OpenMP off, the transport tests only
#                              (ctest -R transport): the receiver is the threaded part;
#                              libgomp is not TSan-instrumented, so OpenMP regions would
#                              only give false positives.
#
# Compiler: clang++ when present (PYAGG_SAN_CXX overrides), else g++; for asan a
# clang without OpenMP (libomp-dev) falls back to g++, since the OpenMP code
# paths are part of what ASan must see. CUDA, TF and benchmarks are off: only
# what the C++ tests need is built. Extra ctest arguments may follow the mode.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"

mode="${1:-asan}"
[ $# -gt 0 ] && shift
case "$mode" in
  asan) sanitize="address,undefined"; openmp=ON; ctest_sel=() ;;
  tsan) sanitize="thread"; openmp=OFF; ctest_sel=(-R transport) ;;
  *) echo "usage: $0 asan|tsan [ctest args...]" >&2; exit 2 ;;
esac
build="${PYAGG_SAN_BUILD_DIR:-build/$mode}"
jobs="${PYAGG_JOBS:-2}"

pick_cxx() {
  if [ -n "${PYAGG_SAN_CXX:-}" ]; then echo "$PYAGG_SAN_CXX"; return; fi
  if command -v clang++ >/dev/null 2>&1; then
    if [ "$openmp" = OFF ] || echo 'int main(){return 0;}' |
        clang++ -fopenmp -x c++ - -o /dev/null >/dev/null 2>&1; then
      echo clang++; return
    fi
    echo "[sanitize] clang++ has no OpenMP (apt-get install libomp-dev): using g++ for $mode" >&2
  fi
  if command -v g++ >/dev/null 2>&1; then echo g++; return; fi
  echo "[sanitize] no C++ compiler (clang++ or g++) found" >&2
  exit 1
}
cxx="$(pick_cxx)"
case "$cxx" in
  *clang++*) cc="${cxx/clang++/clang}" ;;
  *g++*) cc="${cxx/g++/gcc}" ;;
  *) cc="${PYAGG_SAN_CC:-cc}" ;;
esac
echo "[sanitize] $mode: $sanitize with $cxx in $build"

# A compiler switch needs a fresh cache.
stamp="$build/.pyagg-sanitize-cxx"
if [ -d "$build" ] && [ "$(cat "$stamp" 2>/dev/null)" != "$cxx" ]; then
  echo "[sanitize] compiler changed (or unknown build dir): wiping $build"
  rm -rf "$build"
fi
mkdir -p "$build"
echo "$cxx" >"$stamp"

# -O1 -g without NDEBUG: asserts on, stacks readable, tests still quick.
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g" -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O1 -g" \
  -DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_C_COMPILER="$cc" \
  -DPYAGG_SANITIZE="$sanitize" -DPYAGG_WITH_OPENMP="$openmp" \
  -DPYAGG_WITH_CUDA=OFF -DPYAGG_BUILD_TF=OFF -DPYAGG_BUILD_BENCH=OFF -DPYAGG_NATIVE_ARCH=OFF \
  -DPYAGG_BUILD_TESTS=ON -DPYAGG_BUILD_FUZZ=OFF >"$build.configure.log" 2>&1 ||
  { cat "$build.configure.log" >&2; echo "[sanitize] configure failed" >&2; exit 1; }
grep -E "pyagg:" "$build.configure.log" || true
cmake --build "$build" -j "$jobs"

# Any report fails: ASan/UBSan halt at the first one, TSan exits 66 at the end;
# LeakSanitizer is on. (tests/cpp/CMakeLists.txt appends the same options per
# test, so a plain `ctest --test-dir build/asan` is just as strict.)
export ASAN_OPTIONS="halt_on_error=1:abort_on_error=0:detect_leaks=1:strict_string_checks=1:detect_stack_use_after_return=1:check_initialization_order=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
export TSAN_OPTIONS="second_deadlock_stack=1:exitcode=66${TSAN_OPTIONS:+:$TSAN_OPTIONS}"
if [ "$openmp" = ON ]; then export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"; fi

echo "[sanitize] ctest ${ctest_sel[*]:-(all)}"
ctest --test-dir "$build" --output-on-failure --no-tests=error -j "$jobs" ${ctest_sel[@]+"${ctest_sel[@]}"} "$@"
