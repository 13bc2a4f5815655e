#!/usr/bin/env bash
# pyagg demo (the README's first command): Byzantine-resilient training, after AggregaThor.
#
#   1. a real MPI cluster (mpiexec, the venv's MPICH): 1 parameter server + 5 workers, one of
#      them Byzantine (Gaussian attack), gradients over LossyMPI's UDP transport, Multi-Krum;
#   2. AggregaThor's claim: 1 Byzantine worker out of 19 poisons plain averaging while
#      Multi-Krum and Bulyan keep learning (local launcher: the same server code, workers
#      simulated in one process), one comparison plot + a markdown table.
#
# About 2-4 minutes on a 2-core machine. Outputs under ${PYAGG_DEMO_OUT:-runs/demo}.
# Environment: the project's venv (.venv, created by scripts/setup_env.sh when missing).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
VENV="${PYAGG_VENV:-$here/.venv}"
OUT="${PYAGG_DEMO_OUT:-runs/demo}"
t0=$(date +%s)

if ! "$VENV/bin/python" -c "import pyagg, lossympi, mpi4py, tensorflow, sklearn, matplotlib" >/dev/null 2>&1; then
  echo "[demo] setting up the environment (scripts/setup_env.sh)"
  scripts/setup_env.sh
fi
PY="$VENV/bin/python"
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
export TF_ENABLE_ONEDNN_OPTS=0 TF_CPP_MIN_LOG_LEVEL=2 OMP_NUM_THREADS=1

transport=udp
udp_ok="from pyagg.cluster.transport import lossympi_available as a; raise SystemExit(0 if a('udp') else 1)"
if ! "$PY" -c "$udp_ok"; then
  echo "[demo] LossyMPI's UDP transport is not built: using --transport mpi (build it with scripts/dev_build.sh)"
  transport=mpi
fi

echo
echo "=== 1/2  MPI cluster: 1 server + 5 workers (1 Byzantine, gaussian attack), $transport transport, multi-krum"
"$PY" -m pyagg.train --launcher mpi --transport "$transport" --workers 5 --byzantine 1 --attack gaussian \
  --rule multi-krum --optimizer momentum --lr 0.1 --steps 100 --eval-every 10 --deadline 2 --overwrite \
  --out "$OUT/cluster"

echo
echo "=== 2/2  1 Byzantine out of 19 workers: average vs multi-krum vs bulyan (local launcher)"
"$PY" -m pyagg.experiment byzantine --workers 19 --byzantine 1 --rules average,multi-krum,bulyan \
  --attacks none,corrupt_inputs,sign_flip:scale=100,nan --steps 200 --out "$OUT/byzantine"

t1=$(date +%s)
echo
echo "=== done in $((t1 - t0)) s"
echo "cluster run:    $OUT/cluster/summary.json, $OUT/cluster/metrics.csv, $OUT/cluster/accuracy.png"
echo "1-of-19 table:  $OUT/byzantine/results.md"
echo "1-of-19 plot:   $OUT/byzantine/comparison.png"
echo "more:           pyagg experiment overhead   (time per step of each rule vs averaging at n=19)"
