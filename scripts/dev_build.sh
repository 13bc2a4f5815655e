#!/usr/bin/env bash
# Developer rebuild of the in-place Python package (engine .so, Cython module,
# TF op) under a lock, so concurrent rebuilds do not trample each other.
# Usage: scripts/dev_build.sh            (uses .venv)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
. "${PYAGG_VENV:-$here/.venv}/bin/activate"
exec 9>/tmp/pyagg-build.lock
flock 9
# CUDA is off for quick developer rebuilds unless asked for (CI builds it).
export PYAGG_CMAKE_ARGS="${PYAGG_CMAKE_ARGS:--DPYAGG_WITH_CUDA=OFF}"
python setup.py build_ext --inplace -q "$@"
