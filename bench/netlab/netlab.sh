#!/usr/bin/env bash
# The network lab in one root command (see bench/netlab/matrix.py for what it measures):
#   sudo bench/netlab/netlab.sh [--quick] [matrix.py options]
# The lab's namespaces (nl<pid>-*) are always deleted: by matrix.py itself, and
# by the trap below if it dies (any namespace whose creating process is gone).
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
py="${PYTHON:-}"
if [ -z "$py" ]; then
  if [ -x "$root/.venv/bin/python" ]; then py="$root/.venv/bin/python"; else py="$(command -v python3)"; fi
fi
cleanup() {
  "$py" - "$here" <<'PY'
import sys
sys.path.insert(0, sys.argv[1])
import topo
left = topo.remove_stale()
if left:
    print("netlab: removed", " ".join(left), file=sys.stderr)
PY
}
trap cleanup EXIT
trap 'exit 130' INT TERM
if [ "$(id -u)" != 0 ]; then echo "netlab: run as root (network namespaces, tc, nftables)" >&2; exit 2; fi
cd "$root"
PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" "$py" "$here/matrix.py" "$@"
