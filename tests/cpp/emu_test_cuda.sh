#!/usr/bin/env bash
# Builds and runs test_cuda against the CPU emulator of the CUDA subset
# (engine/cuda/emu.cuh) on a machine WITHOUT a GPU: every engine/cuda/*.cu is
# compiled as C++ with -DPYAGG_CUDA_EMULATE (kernels run on the host, each
# block's threads as fibers, shuffled between barriers, dynamic shared memory
# poisoned with NaN bytes) and linked with the CPU objects of a CUDA-on CMake
# build (the ISA-dispatched CPU kernels need that build's generated headers and
# private objects, so emu.cuh's one-line g++ recipe no longer links).
#
#   cmake -S . -B build/gpu -G Ninja -DPYAGG_WITH_CUDA=ON -DPYAGG_BUILD_TF=OFF \
#       -DCMAKE_BUILD_TYPE=Release -DPYAGG_BUILD_TESTS=ON && cmake --build build/gpu
#   tests/cpp/emu_test_cuda.sh [build/gpu]          # all of test_cuda
#   PYAGG_TEST_FILTER=coordinate tests/cpp/emu_test_cuda.sh   # one group of cases
#
# Objects go to <build>/emu (recompiled when a .cu/.cuh is newer); exit status
# = test_cuda's. Takes ~1 min to build and ~2 min to run on 2 cores.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
G="${1:-build/gpu}"
E="$G/emu"
if [[ ! -f "$G/build.ninja" ]]; then
  echo "emu_test_cuda: $G is not a CUDA-on Ninja build (see the header)" >&2
  exit 2
fi
grep -q "^build libpyagg_engine.so:.*engine/cuda/" "$G/build.ninja" || {
  echo "emu_test_cuda: $G was configured without PYAGG_WITH_CUDA=ON" >&2
  exit 2
}
cmake --build "$G" --target pyagg_engine >/dev/null
mkdir -p "$E"
FL=(-std=c++17 -O2 -fopenmp -fPIC -march=native -Iengine/include -Iengine/src "-I$G/generated" -Itests/cpp
    -DPYAGG_CUDA_EMULATE -DNDEBUG)
jobs_max="${JOBS:-$(nproc 2>/dev/null || echo 2)}"
objs=()
for f in engine/cuda/*.cu; do
  o="$E/$(basename "$f" .cu).o"
  objs+=("$o")
  stale=0
  [[ -f "$o" ]] || stale=1
  for dep in "$f" engine/cuda/*.cuh engine/src/common/*.h; do [[ "$dep" -nt "$o" ]] && stale=1; done
  if [[ $stale -eq 1 ]]; then
    g++ "${FL[@]}" -x c++ -c "$f" -o "$o" &
    while [[ $(jobs -r | wc -l) -ge $jobs_max ]]; do sleep 0.5; done
  fi
done
wait
mapfile -t cpuobjs < <(grep "^build libpyagg_engine.so:" "$G/build.ninja" | sed 's/ | .*//' | tr ' ' '\n' |
  grep '\.o$' | grep -v 'engine/cuda/' | sed "s#^#$G/#")
extra=()
sed -n '/^build libpyagg_engine.so:/,/^$/p' "$G/build.ninja" | grep -q "LINK_LIBRARIES.*sodium" && extra+=(-lsodium)
g++ -shared -fopenmp -o "$E/libpyagg_engine.so" "${cpuobjs[@]}" "${objs[@]}" "${extra[@]}" -lpthread
g++ "${FL[@]}" -c tests/cpp/test_cuda.cpp -o "$E/test_cuda.o"
g++ -fopenmp -o "$E/test_cuda_emu" "$E/test_cuda.o" "-Wl,-rpath,$root/$E" "-L$E" -lpyagg_engine
PYAGG_EMU=1 "$E/test_cuda_emu"
