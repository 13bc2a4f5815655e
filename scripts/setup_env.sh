#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install everything the
# tests and the demo need: system libraries (libsodium, nftables), Python packages
# (numpy, Cython, mpi4py + MPICH, TensorFlow CPU, pytest...), then build pyagg.
# Idempotent: a second run only rebuilds what changed.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
VENV="${PYAGG_VENV:-$here/.venv}"
PY="${PYTHON:-python3}"

# --- system packages (libsodium for LossyMPI MACs, nftables for loss tests, clang for sanitizers/fuzzing) ---
need_apt=()
if ! { [ -f /usr/include/sodium.h ] || pkg-config --exists libsodium 2>/dev/null; }; then need_apt+=(libsodium-dev); fi
command -v nft >/dev/null 2>&1 || need_apt+=(nftables)
command -v ethtool >/dev/null 2>&1 || need_apt+=(ethtool)    # bench/netlab: offloads off
command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
# clang (libFuzzer, ASan/UBSan/TSan) + libomp for the sanitizer and fuzz
# builds that scripts/test.sh runs (scripts/sanitize.sh, scripts/fuzz.sh);
# not needed when they are skipped locally (PYAGG_SKIP_SANITIZERS=1, CI unset).
if [ "${CI:-}" = true ] || [ "${PYAGG_SKIP_SANITIZERS:-0}" != 1 ]; then
  if ! command -v clang++ >/dev/null 2>&1; then
    need_apt+=(clang libomp-dev)
  elif ! echo 'int main(){return 0;}' | clang++ -fopenmp -x c++ - -o /dev/null >/dev/null 2>&1; then
    need_apt+=(libomp-dev)
  fi
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[setup] apt-get install ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "[setup] missing system packages: ${need_apt[*]} (install them, e.g. apt-get install ${need_apt[*]})" >&2
    exit 1
  fi
fi

# --- Python environment ---
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating venv $VENV"
  "$PY" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip
python -m pip install -q -r requirements-dev.txt
# --- build and install pyagg (editable: C++ engine via CMake, Cython, TF op) ---
echo "[setup] building pyagg"
python -m pip install -q --no-build-isolation -e . 
python -c "import pyagg, json; print('[setup] pyagg', json.dumps(pyagg.build_info()))"
