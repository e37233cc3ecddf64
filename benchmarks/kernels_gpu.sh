#!/usr/bin/env bash
# The kernel suite on a GPU: `threadlab bench kernels` (every shipped solution: T_k, T_b,
# T_SOL, S, mean S) and the whole hack corpus, JSON results into $OUT. One command, from
# the repo root:  OUT=/tmp/out bash benchmarks/kernels_gpu.sh   (about 5-8 min on an H100)
# Needs python3 (>= 3.11) with torch + triton for CUDA; no network, no install.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
export OUT="${OUT:-$PWD/kernels-gpu-out}"
mkdir -p "$OUT"
# compiler caches in a fresh place: nothing from an earlier run is reused
export TRITON_CACHE_DIR="${TRITON_CACHE_DIR:-$(mktemp -d)/triton}"
export THREADLAB_DATA_DIR="${THREADLAB_DATA_DIR:-$OUT/data}"   # the cached GPU peaks go here
unset TRITON_INTERPRET
"$PY" - <<'PY'
import sys, torch, triton
print(f"python {sys.version.split()[0]}  torch {torch.__version__}  triton {triton.__version__}  "
      f"cuda {torch.version.cuda}  gpu {torch.cuda.get_device_name() if torch.cuda.is_available() else 'NONE'}")
PY
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,power.draw,temperature.gpu --format=csv > "$OUT/nvidia-smi.csv" 2>&1 || true
"$PY" benchmarks/kernels_gpu.py "$@" 2>&1 | tee "$OUT/log.txt"
