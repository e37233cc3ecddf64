#!/usr/bin/env bash
# The kernel suite on a GPU: every shipped solution checked, timed and scored (T_k, T_b,
# T_SOL, S, mean S), then the whole hack corpus; JSON results into $OUT, a line per problem
# and per hack as each starts and ends. One command, from anywhere:
#   OUT=/tmp/out bash benchmarks/kernels_gpu.sh           # [bench] [hacks] to run one part
# About 3-4 min on an H100 (see benchmarks/kernels_gpu.py: evaluations overlap, timing never
# does); KERNELS_DEADLINE_S (default 420) stops starting new ones after that many seconds.
# Needs python3 (>= 3.11) with torch + triton for CUDA; no network, no install.
# Knob and variant alternatives of the solutions, scored the same way: benchmarks/kernels_sweep.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
export OUT="${OUT:-$PWD/kernels-gpu-out}"
mkdir -p "$OUT"
# the repo's packages, whatever the caller's environment (the evaluator also hands this
# root to its worker processes explicitly)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# compiler caches in a fresh place: nothing from an earlier run is reused
export TRITON_CACHE_DIR="${TRITON_CACHE_DIR:-$(mktemp -d)/triton}"
export THREADLAB_DATA_DIR="${THREADLAB_DATA_DIR:-$OUT/data}"   # the cached GPU peaks go here
unset TRITON_INTERPRET
"$PY" - <<'PY'
import sys, torch, triton
print(f"python {sys.version.split()[0]}  torch {torch.__version__}  triton {triton.__version__}  "
      f"cuda {torch.version.cuda}  gpu {torch.cuda.get_device_name() if torch.cuda.is_available() else 'NONE'}",
      flush=True)
PY
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,power.draw,temperature.gpu --format=csv > "$OUT/nvidia-smi.csv" 2>&1 || true
set +e
"$PY" -u benchmarks/kernels_gpu.py "$@" 2>&1 | tee "$OUT/log.txt"
rc=${PIPESTATUS[0]}
set -e
echo "exit $rc; results in $OUT (bench.json, hacks.json, summary.json, log.txt)"
exit "$rc"
