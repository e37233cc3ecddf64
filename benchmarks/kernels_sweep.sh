#!/usr/bin/env bash
# The kernel sweep on a GPU: each problem's shipped solution and up to 6 knob or variant
# alternatives, all through the real evaluator (benchmarks/kernels_sweep.py); $OUT/sweep.json
# and a line per result. One command, from anywhere:
#   OUT=/tmp/out bash benchmarks/kernels_sweep.sh            # [problem ...] to sweep only those
# SWEEP_DEADLINE_S (default 300) stops starting new evaluations; those running then finish
# (about a minute more), so with imports and the peaks the whole run is about 6-7 minutes.
# Then: python3 benchmarks/kernels_sweep_apply.py $OUT/sweep.json   (writes the winners back)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
export OUT="${OUT:-$PWD/kernels-sweep-out}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TRITON_CACHE_DIR="${TRITON_CACHE_DIR:-$(mktemp -d)/triton}"
export THREADLAB_DATA_DIR="${THREADLAB_DATA_DIR:-$OUT/data}"   # the cached GPU peaks go here
unset TRITON_INTERPRET
"$PY" -c 'import sys, torch, triton
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "NONE"
print(f"python {sys.version.split()[0]}  torch {torch.__version__}  triton {triton.__version__}  gpu {gpu}", flush=True)'
set +e
"$PY" -u benchmarks/kernels_sweep.py "$@" 2>&1 | tee "$OUT/sweep-log.txt"
rc=${PIPESTATUS[0]}
set -e
echo "exit $rc; results in $OUT/sweep.json (log: $OUT/sweep-log.txt)"
exit "$rc"
