#!/usr/bin/env bash
# The project's test command (README): installs everything from scratch if
# needed (system packages, venv, Python packages, the build), then runs the
# native tests (CTest) and the Python tests (pytest). Exit code 0 only when
# tests actually ran and passed.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
bash scripts/setup_env.sh
. "${PYAGG_VENV:-$here/.venv}/bin/activate"
export TF_ENABLE_ONEDNN_OPTS=0 TF_CPP_MIN_LOG_LEVEL=2 PYTHONDONTWRITEBYTECODE=1

build_dir=$(python - <<'PY'
import sys, sysconfig, pathlib
print(pathlib.Path("build") / f"cmake-{sys.implementation.cache_tag}-{sysconfig.get_platform()}")
PY
)
echo "== native tests (ctest in $build_dir)"
ctest --test-dir "$build_dir" --output-on-failure -j2

echo "== python tests (pytest)"
set +e
python -m pytest tests -q -p no:cacheprovider --timeout=900 "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure" >&2
  exit 1
fi
[ "$rc" -eq 0 ] || exit "$rc"

# Sanitizers and fuzzing (after the normal tests; any report or crash fails the
# run). Skippable locally with PYAGG_SKIP_SANITIZERS=1; CI (CI=true) always runs them.
if [ "${CI:-}" = true ] || [ "${PYAGG_SKIP_SANITIZERS:-0}" != 1 ]; then
  echo "== sanitizers: ASan + UBSan, native tests (scripts/sanitize.sh asan)"
  bash scripts/sanitize.sh asan
  echo "== fuzzing: LossyMPI receiver datagram path (scripts/fuzz.sh 60)"
  bash scripts/fuzz.sh 60
else
  echo "== sanitizers and fuzzing skipped (PYAGG_SKIP_SANITIZERS=1)"
fi
exit 0
